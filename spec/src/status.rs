// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Status codes (§9).

use thiserror::Error;

use crate::wire_enum;

/// A status value that no version of the specification defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("unknown status {0}")]
pub struct UnknownStatus(pub u32);

wire_enum! {
    /// Outcome of a request or a control command, in `status` of the response (§9).
    pub enum Status: u32, UnknownStatus {
        /// The request completed.
        Ok = 0,
        /// The request is malformed: a bad header, a bad layout, reserved fields set.
        Invalid = 1,
        /// The operation or command is unknown, not offered, or its feature not negotiated.
        Unsupported = 2,
        /// An object handle names no live object.
        NoObject = 3,
        /// A fence names no fence that the device has issued, or a request names its own fence.
        NoFence = 4,
        /// An offset or length falls outside an object or outside the chain.
        Range = 5,
        /// A guest-physical address falls outside guest memory.
        BadAddress = 6,
        /// The request exceeds a limit of the configuration (§5).
        Limit = 7,
        /// An output buffer is too small for the result.
        NoSpace = 8,
        /// Compressed input is corrupt or truncated.
        BadData = 9,
        /// AES-GCM authentication failed.
        AuthFailed = 10,
        /// Temporarily out of quota; the driver may retry later.
        Busy = 11,
        /// The device cannot hold another object.
        NoResources = 12,
        /// The device failed internally.
        DeviceError = 13,
        /// The device restarted while the request ran (a new back-end process took over) and
        /// could not safely run it again: its output overlaps its input and may have been
        /// partly written. The output buffers' contents are unspecified; objects and fences
        /// are unaffected. The driver may resubmit it only if it still has the intact input.
        Interrupted = 14,
    }
}

impl Status {
    /// Whether the status reports success.
    pub fn is_ok(self) -> bool {
        self == Status::Ok
    }
}
