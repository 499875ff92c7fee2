// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Wire types of the virtio accelerator device.
//!
//! This crate is the single source of truth for the layouts described in
//! `spec/virtio-accel.md`; the daemon, the driver, the tests and the fuzzers all
//! use it. Section numbers in comments refer to that document.
//!
//! Map of the crate:
//! - the top level: device identity, feature bits, queue indices (§1–§4);
//! - [`config`]: the device configuration layout (§5);
//! - [`request`]: request-queue requests, buffer references, responses (§6);
//! - [`control`]: control-queue commands and responses (§7);
//! - [`op`]: operations, their capability bits and parameter blocks (§8);
//! - [`status`]: status codes (§9).
//!
//! Every wire struct is `#[repr(C)]`, has only little-endian fields and explicit
//! reserved fields, and its size is asserted at compile time. Wire values turn
//! into Rust enums only through `TryFrom`.

pub mod config;
pub mod control;
pub mod op;
pub mod request;
pub mod status;

pub use config::VirtioAccelConfig;
pub use control::{ControlCommand, CtrlReq, CtrlResp, MemSeg};
pub use op::{AesGcmParams, Crc32cParams, DeflateFormat, DeflateParams, FillParams, Op};
pub use request::{BufRef, Fence, Req, Resp};
pub use status::Status;

/// Virtio device ID of the accelerator (§2).
///
/// **Provisional**: the virtio specification has not assigned an ID for this
/// device. 63 is the highest ID a modern virtio-pci function can carry
/// (PCI device ID 0x1040 + 63 = 0x107f) and the specification leaves it
/// unassigned; crosvm's out-of-tree virtio-wayland device uses it too.
pub const VIRTIO_ID_ACCEL: u32 = 63;

/// Feature bit: memory objects and object buffer references (§3).
pub const VIRTIO_ACCEL_F_OBJECTS: u32 = 0;
/// Feature bit: fence dependencies in requests and the fence control commands (§3).
pub const VIRTIO_ACCEL_F_FENCES: u32 = 1;

/// Index of the control queue (§4).
pub const CONTROL_QUEUE: u16 = 0;
/// Index of the first request queue; request queue `n` is virtqueue `n + 1` (§4).
pub const FIRST_REQUEST_QUEUE: u16 = 1;

/// Highest number of request queues a device may report (§5).
pub const MAX_REQUEST_QUEUES: u16 = 64;

/// Object handle that names a direct buffer instead of an object (§6.3).
pub const DIRECT_HANDLE: u32 = 0;

/// Asserts at compile time that a wire struct has exactly the documented size.
macro_rules! assert_wire_size {
    ($ty:ty, $size:expr) => {
        const _: () = assert!(::core::mem::size_of::<$ty>() == $size);
    };
}
pub(crate) use assert_wire_size;

/// Implements `TryFrom<$repr>` for a fieldless enum whose discriminants are its wire values.
macro_rules! wire_enum {
    ($(#[$meta:meta])* pub enum $name:ident : $repr:ty, $err:ident { $($(#[$vmeta:meta])* $variant:ident = $value:expr,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr($repr)]
        pub enum $name {
            $($(#[$vmeta])* $variant = $value,)+
        }

        impl $name {
            /// Every value of this enum, in wire order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];
        }

        impl TryFrom<$repr> for $name {
            type Error = $err;

            fn try_from(value: $repr) -> Result<Self, Self::Error> {
                match value {
                    $($value => Ok($name::$variant),)+
                    other => Err($err(other)),
                }
            }
        }

        impl From<$name> for $repr {
            fn from(value: $name) -> $repr {
                value as $repr
            }
        }
    };
}
pub(crate) use wire_enum;
