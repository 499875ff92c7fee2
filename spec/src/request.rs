// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Request-queue requests, buffer references, fences and responses (§6).

use vm_memory::endian::{Le16, Le32, Le64};
use vm_memory::ByteValued;

use crate::op::{OpParams, PARAMS_SIZE};
use crate::{assert_wire_size, Op, Status};

/// Header of a request on a request queue: the first bytes of the chain (§6.1).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Req {
    /// An [`Op`] value.
    pub op: Le32,
    /// Number of [`Fence`]s that follow the header.
    pub num_deps: Le16,
    /// Number of input [`BufRef`]s that follow the fences.
    pub num_in: u8,
    /// Number of output [`BufRef`]s that follow the inputs.
    pub num_out: u8,
    /// Reserved, zero.
    pub reserved: [u8; 8],
    /// Operation parameters (§8), zero where the operation has none.
    pub params: [u8; PARAMS_SIZE],
}
assert_wire_size!(Req, 80);

impl Req {
    /// A header for `op` with the operation's arity, no dependencies and zero parameters.
    pub fn new(op: Op) -> Self {
        let (num_in, num_out) = op.arity();
        Req {
            op: Le32::from(u32::from(op)),
            num_deps: Le16::from(0),
            num_in,
            num_out,
            reserved: [0; 8],
            params: [0; PARAMS_SIZE],
        }
    }

    /// Sets the parameter block.
    pub fn with_params<P: OpParams>(mut self, params: &P) -> Self {
        self.params = params.to_params();
        self
    }

    /// Decodes the parameter block as `P`.
    pub fn params<P: OpParams>(&self) -> P {
        P::from_params(&self.params)
    }
}

impl Default for Req {
    /// An all-zero header (operation 0 is invalid).
    fn default() -> Self {
        Req {
            op: Le32::from(0),
            num_deps: Le16::from(0),
            num_in: 0,
            num_out: 0,
            reserved: [0; 8],
            params: [0; PARAMS_SIZE],
        }
    }
}

/// A fence: a point on the timeline of one request queue (§6.2).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    /// Sequence number on the queue's timeline; the first request gets 1.
    pub seqno: Le64,
    /// Request queue index (0 for virtqueue 1).
    pub queue: Le16,
    /// Reserved, zero.
    pub reserved: [u8; 6],
}
assert_wire_size!(Fence, 16);

impl Fence {
    /// The fence `seqno` of request queue `queue`.
    pub fn new(queue: u16, seqno: u64) -> Self {
        Fence {
            seqno: Le64::from(seqno),
            queue: Le16::from(queue),
            reserved: [0; 6],
        }
    }
}

/// A reference to one input or output buffer of a request (§6.3).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BufRef {
    /// An object handle, or [`DIRECT_HANDLE`](crate::DIRECT_HANDLE) for data in the chain.
    pub handle: Le32,
    /// Reserved, zero.
    pub reserved: Le32,
    /// Offset in the object; zero for a direct buffer.
    pub offset: Le64,
    /// Length in bytes.
    pub len: Le64,
}
assert_wire_size!(BufRef, 24);

impl BufRef {
    /// `len` bytes of the chain itself (§6.3).
    pub fn direct(len: u64) -> Self {
        BufRef::object(crate::DIRECT_HANDLE, 0, len)
    }

    /// `len` bytes at `offset` of object `handle` (§6.3).
    pub fn object(handle: u32, offset: u64, len: u64) -> Self {
        BufRef {
            handle: Le32::from(handle),
            reserved: Le32::from(0),
            offset: Le64::from(offset),
            len: Le64::from(len),
        }
    }
}

/// Size of the operation-specific result in a response (§6.4).
pub const RESULT_SIZE: usize = 32;

/// Response to a request: the first bytes of the device-writable part (§6.4).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Resp {
    /// A [`Status`] value.
    pub status: Le32,
    /// Reserved, zero.
    pub reserved: Le32,
    /// The fence the device gave this request.
    pub fence: Fence,
    /// Bytes written to the output buffer.
    pub bytes_written: Le64,
    /// Operation-specific result (§8).
    pub result: [u8; RESULT_SIZE],
}
assert_wire_size!(Resp, 64);

impl Resp {
    /// A response with `status` and nothing else.
    pub fn with_status(status: Status) -> Self {
        Resp {
            status: Le32::from(u32::from(status)),
            ..Resp::default()
        }
    }
}

// SAFETY: each of these types is `repr(C)`, made only of byte arrays,
// little-endian integer wrappers and other such structs, has no padding (its
// size is asserted to be the sum of its fields), and any bit pattern is valid.
unsafe impl ByteValued for Req {}
// SAFETY: as for `Req` above.
unsafe impl ByteValued for Fence {}
// SAFETY: as for `Req` above.
unsafe impl ByteValued for BufRef {}
// SAFETY: as for `Req` above.
unsafe impl ByteValued for Resp {}
