// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Control-queue commands and responses (§7).

use thiserror::Error;
use vm_memory::endian::{Le32, Le64};
use vm_memory::ByteValued;

use crate::{assert_wire_size, wire_enum, Status};

/// A command value that no version of the specification defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("unknown control command {0:#x}")]
pub struct UnknownCommand(pub u32);

wire_enum! {
    /// Control commands, in `cmd` of a [`CtrlReq`] (§7).
    pub enum ControlCommand: u32, UnknownCommand {
        /// §7.5: enable capabilities (objects, fences) and learn which are enabled.
        Capabilities = 0x001,
        /// §7.1: make an object of guest memory segments.
        ObjectCreate = 0x100,
        /// §7.2: destroy an object; its memory is released once the requests using it complete.
        ObjectDestroy = 0x101,
        /// §7.3: ask whether a fence has signalled.
        FenceQuery = 0x200,
        /// §7.4: complete when every listed fence has signalled.
        FenceWait = 0x201,
    }
}

/// Header of a control command: the first bytes of the chain (§7).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CtrlReq {
    /// A [`ControlCommand`] value.
    pub cmd: Le32,
    /// Number of [`MemSeg`]s or [`Fence`](crate::Fence)s that follow.
    pub count: Le32,
    /// Command argument: the capabilities asked for by CAPABILITIES, the
    /// handle for OBJECT_DESTROY, else zero.
    pub arg: Le64,
}
assert_wire_size!(CtrlReq, 16);

impl CtrlReq {
    /// A header for `cmd` followed by `count` entries, with argument `arg`.
    pub fn new(cmd: ControlCommand, count: u32, arg: u64) -> Self {
        CtrlReq {
            cmd: Le32::from(u32::from(cmd)),
            count: Le32::from(count),
            arg: Le64::from(arg),
        }
    }
}

/// One guest-physical range of an object (§7.1).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MemSeg {
    /// Guest-physical address.
    pub addr: Le64,
    /// Length in bytes, not zero.
    pub len: Le64,
}
assert_wire_size!(MemSeg, 16);

impl MemSeg {
    /// The range of `len` bytes at guest-physical `addr`.
    pub fn new(addr: u64, len: u64) -> Self {
        MemSeg {
            addr: Le64::from(addr),
            len: Le64::from(len),
        }
    }
}

/// Response to a control command: the device-writable part of the chain (§7).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CtrlResp {
    /// A [`Status`] value.
    pub status: Le32,
    /// Reserved, zero.
    pub reserved: Le32,
    /// CAPABILITIES: the capabilities enabled. OBJECT_CREATE: the new handle.
    /// FENCE_QUERY: 1 if signalled, else 0.
    pub value: Le64,
}
assert_wire_size!(CtrlResp, 16);

impl CtrlResp {
    /// A response with `status` and `value`.
    pub fn new(status: Status, value: u64) -> Self {
        CtrlResp {
            status: Le32::from(u32::from(status)),
            reserved: Le32::from(0),
            value: Le64::from(value),
        }
    }
}

// SAFETY: each of these types is `repr(C)`, made only of little-endian integer
// wrappers, has no padding (its size is asserted to be the sum of its fields),
// and any bit pattern is a valid value.
unsafe impl ByteValued for CtrlReq {}
// SAFETY: as for `CtrlReq` above.
unsafe impl ByteValued for MemSeg {}
// SAFETY: as for `CtrlReq` above.
unsafe impl ByteValued for CtrlResp {}
