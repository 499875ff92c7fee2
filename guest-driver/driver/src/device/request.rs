// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Request building: the header block and the chain layout.
//!
//! A request becomes one chain:
//!
//! ```text
//! readable:  [Req | Fence * deps | BufRef * (in + out)]  (one small driver buffer)
//!            [direct input data ...]                       (the caller's buffers, zero copy)
//! writable:  [Resp, 64 bytes]                              (same driver buffer, after the header)
//!            [direct output data ...]                      (the caller's buffers)
//! ```

use smallvec::SmallVec;
use thiserror::Error;
use virtio_accel_spec::op::{OpParams, PARAMS_SIZE};
use virtio_accel_spec::{BufRef, Fence, Op, Req, Resp};
use vm_memory::endian::{Le16, Le32};
use vm_memory::ByteValued;

use crate::memory::DmaBuf;

/// Descriptors `(gpa, len)` of one direction of a chain; requests of up to
/// eight pieces build it without allocating.
pub type Segments = SmallVec<[(u64, u32); 8]>;

/// A header block: inline up to 256 bytes (a header, two dependencies and
/// five buffer references).
pub(crate) type HeaderBytes = SmallVec<[u8; 256]>;

/// Errors of request building.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Error {
    /// More dependencies than the header can count.
    #[error("{0} dependencies do not fit the 16-bit count")]
    TooManyDeps(usize),
    /// More buffers of one direction than the header can count.
    #[error("{0} buffers do not fit the 8-bit count")]
    TooManyBuffers(usize),
    /// A buffer range falls outside its [`DmaBuf`].
    #[error("range {offset:#x}+{len:#x} is outside a buffer of {buf_len:#x} bytes")]
    OutOfBounds {
        /// Offset in the buffer.
        offset: usize,
        /// Length of the range.
        len: usize,
        /// Length of the buffer.
        buf_len: usize,
    },
}

/// Size of the response block.
pub const RESP_SIZE: u32 = 64;
const _: () = assert!(std::mem::size_of::<Resp>() == RESP_SIZE as usize);

/// Largest length one descriptor carries when a direct buffer is split.
pub const MAX_DESC_LEN: u64 = 1 << 31;

/// One input or output buffer of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Buffer {
    /// Data in the chain, at guest-physical `gpa` (one descriptor, or several
    /// if `len` exceeds [`MAX_DESC_LEN`]).
    Direct {
        /// Guest-physical address.
        gpa: u64,
        /// Length in bytes.
        len: u64,
    },
    /// Data in the chain, scattered over several descriptors `(gpa, len)`.
    Scattered(Vec<(u64, u32)>),
    /// Bytes `offset..offset + len` of an object.
    Object {
        /// Object handle.
        handle: u32,
        /// Offset in the object.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
}

impl Buffer {
    /// All of `buf`, in the chain.
    pub fn direct(buf: &DmaBuf) -> Self {
        Buffer::Direct {
            gpa: buf.gpa(),
            len: buf.len() as u64,
        }
    }

    /// Bytes `offset..offset + len` of `buf`, in the chain.
    pub fn direct_range(buf: &DmaBuf, offset: usize, len: usize) -> Result<Self, Error> {
        let gpa = buf.range(offset, len).ok_or(Error::OutOfBounds {
            offset,
            len,
            buf_len: buf.len(),
        })?;
        Ok(Buffer::Direct {
            gpa,
            len: len as u64,
        })
    }

    /// Bytes `offset..offset + len` of object `handle`.
    pub fn object(handle: u32, offset: u64, len: u64) -> Self {
        Buffer::Object {
            handle,
            offset,
            len,
        }
    }

    /// Length the buffer reference announces.
    pub fn len(&self) -> u64 {
        match self {
            Buffer::Direct { len, .. } | Buffer::Object { len, .. } => *len,
            Buffer::Scattered(segs) => segs.iter().map(|&(_, l)| u64::from(l)).sum(),
        }
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The buffer reference of the header.
    pub fn buf_ref(&self) -> BufRef {
        match *self {
            Buffer::Object {
                handle,
                offset,
                len,
            } => BufRef::object(handle, offset, len),
            _ => BufRef::direct(self.len()),
        }
    }

    /// Descriptors `(gpa, len)` the buffer contributes to the chain
    /// (none for an object; zero-length pieces are left out).
    pub fn segments(&self) -> Vec<(u64, u32)> {
        let mut segs = Segments::new();
        self.append_segments(&mut segs);
        segs.into_vec()
    }

    fn append_segments(&self, out: &mut Segments) {
        match self {
            Buffer::Object { .. } => {}
            Buffer::Scattered(segs) => out.extend(segs.iter().copied().filter(|&(_, l)| l > 0)),
            &Buffer::Direct { gpa, len } => {
                let mut done = 0;
                while done < len {
                    let n = (len - done).min(MAX_DESC_LEN);
                    // n <= MAX_DESC_LEN < 2^32.
                    out.push((gpa + done, u32::try_from(n).unwrap_or(u32::MAX)));
                    done += n;
                }
            }
        }
    }
}

/// A request for a request queue, built step by step.
///
/// The header's counts follow the buffers and dependencies given, so a
/// request with the wrong number of buffers for its operation is possible
/// (and the device answers Invalid). [`Request::with_header`] overrides the
/// header entirely for fault tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    op: u32,
    params: [u8; PARAMS_SIZE],
    deps: Vec<Fence>,
    inputs: Vec<Buffer>,
    outputs: Vec<Buffer>,
    header: Option<Req>,
    resp_len: u32,
}

impl Request {
    /// A request for `op` with zero parameters and no buffers.
    pub fn new(op: Op) -> Self {
        Self::raw_op(u32::from(op))
    }

    /// A request with any operation code, even an unknown one.
    pub fn raw_op(op: u32) -> Self {
        Request {
            op,
            params: [0; PARAMS_SIZE],
            deps: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            header: None,
            resp_len: RESP_SIZE,
        }
    }

    /// Sets the parameter block.
    pub fn params<P: OpParams>(mut self, params: &P) -> Self {
        self.params = params.to_params();
        self
    }

    /// Sets the raw parameter bytes.
    pub fn raw_params(mut self, params: [u8; PARAMS_SIZE]) -> Self {
        self.params = params;
        self
    }

    /// Adds a dependency.
    pub fn dep(mut self, fence: Fence) -> Self {
        self.deps.push(fence);
        self
    }

    /// Adds dependencies.
    pub fn deps(mut self, fences: impl IntoIterator<Item = Fence>) -> Self {
        self.deps.extend(fences);
        self
    }

    /// Adds an input buffer.
    pub fn input(mut self, buffer: Buffer) -> Self {
        self.inputs.push(buffer);
        self
    }

    /// Adds an output buffer.
    pub fn output(mut self, buffer: Buffer) -> Self {
        self.outputs.push(buffer);
        self
    }

    /// Uses `header` verbatim instead of the computed one (fault tests).
    pub fn with_header(mut self, header: Req) -> Self {
        self.header = Some(header);
        self
    }

    /// Sets the length of the writable response descriptor (default 64; 0
    /// leaves it out), to test short responses.
    pub fn with_resp_len(mut self, len: u32) -> Self {
        self.resp_len = len.min(RESP_SIZE);
        self
    }

    /// Dependencies.
    pub fn dependencies(&self) -> &[Fence] {
        &self.deps
    }

    /// Input buffers.
    pub fn inputs(&self) -> &[Buffer] {
        &self.inputs
    }

    /// Output buffers.
    pub fn outputs(&self) -> &[Buffer] {
        &self.outputs
    }

    /// Length of the writable response descriptor.
    pub fn resp_len(&self) -> u32 {
        self.resp_len
    }

    /// The header as it will be sent.
    pub fn header(&self) -> Result<Req, Error> {
        if let Some(header) = self.header {
            return Ok(header);
        }
        let num_deps =
            u16::try_from(self.deps.len()).map_err(|_| Error::TooManyDeps(self.deps.len()))?;
        let num_in = u8::try_from(self.inputs.len())
            .map_err(|_| Error::TooManyBuffers(self.inputs.len()))?;
        let num_out = u8::try_from(self.outputs.len())
            .map_err(|_| Error::TooManyBuffers(self.outputs.len()))?;
        Ok(Req {
            op: Le32::from(self.op),
            num_deps: Le16::from(num_deps),
            num_in,
            num_out,
            reserved: [0; 8],
            params: self.params,
        })
    }

    /// The readable header block: `Req | Fence * deps | BufRef * (in + out)`.
    pub fn encode_header(&self) -> Result<Vec<u8>, Error> {
        Ok(self.header_bytes()?.into_vec())
    }

    /// The header block in a buffer that needs no allocation for requests
    /// of a few buffers (the submission path).
    pub(crate) fn header_bytes(&self) -> Result<HeaderBytes, Error> {
        let header = self.header()?;
        let mut bytes = HeaderBytes::new();
        bytes.extend_from_slice(header.as_slice());
        for fence in &self.deps {
            bytes.extend_from_slice(fence.as_slice());
        }
        for buffer in self.inputs.iter().chain(&self.outputs) {
            bytes.extend_from_slice(buffer.buf_ref().as_slice());
        }
        Ok(bytes)
    }

    /// Length of the header block.
    pub fn header_len(&self) -> usize {
        std::mem::size_of::<Req>()
            + std::mem::size_of::<Fence>() * self.deps.len()
            + std::mem::size_of::<BufRef>() * (self.inputs.len() + self.outputs.len())
    }

    /// Direct input descriptors, in order.
    pub fn input_segments(&self) -> Segments {
        Self::chain_segments(&self.inputs)
    }

    /// Direct output descriptors, in order.
    pub fn output_segments(&self) -> Segments {
        Self::chain_segments(&self.outputs)
    }

    fn chain_segments(buffers: &[Buffer]) -> Segments {
        let mut segs = Segments::new();
        for buffer in buffers {
            buffer.append_segments(&mut segs);
        }
        segs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::DmaMemory;
    use virtio_accel_spec::{Crc32cParams, DIRECT_HANDLE};

    #[test]
    fn header_block_decodes_back() {
        let mem = DmaMemory::new(1 << 16).unwrap();
        let input = mem.alloc(100).unwrap();
        let params = Crc32cParams {
            seed: Le32::from(0xdead_beef),
            ..Default::default()
        };
        let req = Request::new(Op::Copy)
            .params(&params)
            .dep(Fence::new(0, 7))
            .dep(Fence::new(1, 9))
            .input(Buffer::direct_range(&input, 10, 50).unwrap())
            .output(Buffer::object(42, 4096, 50));
        let bytes = req.encode_header().unwrap();
        assert_eq!(bytes.len(), 80 + 2 * 16 + 2 * 24);
        assert_eq!(bytes.len(), req.header_len());

        let mut hdr = Req::new(Op::Fill);
        hdr.as_mut_slice().copy_from_slice(&bytes[..80]);
        assert_eq!(u32::from(hdr.op), u32::from(Op::Copy));
        assert_eq!(u16::from(hdr.num_deps), 2);
        assert_eq!((hdr.num_in, hdr.num_out), (1, 1));
        assert_eq!(hdr.reserved, [0; 8]);
        assert_eq!(u32::from(hdr.params::<Crc32cParams>().seed), 0xdead_beef);

        let mut f = Fence::default();
        f.as_mut_slice().copy_from_slice(&bytes[80..96]);
        assert_eq!(f, Fence::new(0, 7));
        f.as_mut_slice().copy_from_slice(&bytes[96..112]);
        assert_eq!(f, Fence::new(1, 9));

        let mut b = BufRef::default();
        b.as_mut_slice().copy_from_slice(&bytes[112..136]);
        assert_eq!(u32::from(b.handle), DIRECT_HANDLE);
        assert_eq!(u64::from(b.offset), 0);
        assert_eq!(u64::from(b.len), 50);
        b.as_mut_slice().copy_from_slice(&bytes[136..160]);
        assert_eq!(b, BufRef::object(42, 4096, 50));

        assert_eq!(req.input_segments().as_slice(), [(input.gpa() + 10, 50)]);
        assert!(req.output_segments().is_empty());
    }

    #[test]
    fn counts_follow_buffers_and_override_wins() {
        let req = Request::new(Op::Crc32c)
            .input(Buffer::Direct { gpa: 0, len: 1 })
            .input(Buffer::Direct { gpa: 0, len: 1 });
        let h = req.header().unwrap();
        assert_eq!((h.num_in, h.num_out), (2, 0));
        let mut raw = Req::new(Op::Crc32c);
        raw.reserved[3] = 1;
        let req = req.with_header(raw);
        assert_eq!(req.header().unwrap(), raw);
        assert_eq!(&req.encode_header().unwrap()[..80], raw.as_slice());
        assert!(
            Buffer::direct_range(&DmaMemory::new(4096).unwrap().alloc(8).unwrap(), 4, 5).is_err()
        );
    }

    #[test]
    fn segments_split_scatter_and_skip_empty() {
        let big = Buffer::Direct {
            gpa: 0x1000,
            len: MAX_DESC_LEN * 2 + 5,
        };
        let segs = big.segments();
        assert_eq!(segs.len(), 3);
        assert_eq!(segs[2], (0x1000 + 2 * MAX_DESC_LEN, 5));
        assert!(Buffer::Direct {
            gpa: 0x1000,
            len: 0
        }
        .segments()
        .is_empty());
        let sc = Buffer::Scattered(vec![(0x1000, 3), (0x2000, 0), (0x3000, 4)]);
        assert_eq!(sc.len(), 7);
        assert_eq!(sc.segments(), vec![(0x1000, 3), (0x3000, 4)]);
        assert_eq!(sc.buf_ref(), BufRef::direct(7));
        assert!(Buffer::object(1, 0, 9).segments().is_empty());
    }
}
