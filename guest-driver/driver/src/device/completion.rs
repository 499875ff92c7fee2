// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Completed requests and control commands, as the driver reports them.

use virtio_accel_spec::request::RESULT_SIZE;
use virtio_accel_spec::status::UnknownStatus;
use virtio_accel_spec::{CtrlResp, Fence, Resp, Status};
use vm_memory::ByteValued;

use super::request::RESP_SIZE;
use super::Error;

/// Size of a control response.
pub const CTRL_RESP_SIZE: u32 = 16;
const _: () = assert!(std::mem::size_of::<CtrlResp>() == CTRL_RESP_SIZE as usize);

/// A completed request.
///
/// If the device wrote less than a response (`used_len < 64`), `resp` holds
/// what the response area contained, which the driver pre-fills with `0xff`
/// (so `status` is not a valid status then).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// Token given at submission.
    pub token: u64,
    /// The response block.
    pub resp: Resp,
    /// Length the device put in the used ring.
    pub used_len: u32,
}

/// Decodes a wire block from possibly unaligned, possibly short bytes.
fn decode<T: ByteValued + Default>(bytes: &[u8]) -> T {
    let mut val = T::default();
    let n = bytes.len().min(std::mem::size_of::<T>());
    val.as_mut_slice()[..n].copy_from_slice(&bytes[..n]);
    val
}

impl Completion {
    pub(crate) fn from_raw(token: u64, used_len: u32, resp: &[u8]) -> Self {
        Completion {
            token,
            resp: decode(resp),
            used_len,
        }
    }

    /// The response status.
    pub fn status(&self) -> Result<Status, UnknownStatus> {
        Status::try_from(u32::from(self.resp.status))
    }

    /// Whether the device wrote a response with status Ok.
    pub fn is_ok(&self) -> bool {
        self.used_len >= RESP_SIZE && self.status() == Ok(Status::Ok)
    }

    /// The fence the device gave the request.
    pub fn fence(&self) -> Fence {
        self.resp.fence
    }

    /// Bytes written to the output.
    pub fn bytes_written(&self) -> u64 {
        u64::from(self.resp.bytes_written)
    }

    /// The operation-specific result.
    pub fn result(&self) -> &[u8; RESULT_SIZE] {
        &self.resp.result
    }

    /// The first 4 result bytes, little-endian (CRC32C).
    pub fn result_u32(&self) -> u32 {
        let r = &self.resp.result;
        u32::from_le_bytes([r[0], r[1], r[2], r[3]])
    }

    /// The first 8 result bytes, little-endian (COMPARE).
    pub fn result_u64(&self) -> u64 {
        let r = &self.resp.result;
        u64::from_le_bytes([r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]])
    }

    /// `Ok(self)` if the device wrote a full response with status Ok, else
    /// the error carrying the status.
    pub fn check(self) -> Result<Self, Error> {
        if self.used_len < RESP_SIZE {
            return Err(Error::ShortResponse {
                used_len: self.used_len,
                expected: RESP_SIZE,
            });
        }
        match self.status() {
            Ok(Status::Ok) => Ok(self),
            Ok(status) => Err(Error::Status(status)),
            Err(UnknownStatus(raw)) => Err(Error::UnknownStatus(raw)),
        }
    }
}

/// A completed control command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlCompletion {
    /// The response block (pre-filled with `0xff` by the driver).
    pub resp: CtrlResp,
    /// Length the device put in the used ring.
    pub used_len: u32,
}

impl ControlCompletion {
    pub(crate) fn from_raw(used_len: u32, resp: &[u8]) -> Self {
        ControlCompletion {
            resp: decode(resp),
            used_len,
        }
    }

    /// The response status.
    pub fn status(&self) -> Result<Status, UnknownStatus> {
        Status::try_from(u32::from(self.resp.status))
    }

    /// The response value.
    pub fn value(&self) -> u64 {
        u64::from(self.resp.value)
    }

    /// The value if the device wrote a full response with status Ok, else
    /// the error carrying the status.
    pub fn check(&self) -> Result<u64, Error> {
        if self.used_len < CTRL_RESP_SIZE {
            return Err(Error::ShortResponse {
                used_len: self.used_len,
                expected: CTRL_RESP_SIZE,
            });
        }
        match self.status() {
            Ok(Status::Ok) => Ok(self.value()),
            Ok(status) => Err(Error::Status(status)),
            Err(UnknownStatus(raw)) => Err(Error::UnknownStatus(raw)),
        }
    }
}
