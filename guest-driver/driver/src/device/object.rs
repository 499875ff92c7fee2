// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Registered objects (spec §7.1, §7.2) as owned handles: an [`Object`]
//! names guest memory by handle in requests and is destroyed when dropped.
//! The device defers the release of an object that queued or running
//! requests still use until their fences signal (§7.2), so dropping one
//! while requests that use it are in flight is safe.

use super::{Buffer, Device, Error, RequestError, Result};
use crate::memory::DmaBuf;
use crate::transport::Transport;

/// A live object of a device; destroyed (OBJECT_DESTROY) when dropped.
#[derive(Debug)]
pub struct Object<'d, T: Transport> {
    device: &'d Device<T>,
    handle: u32,
    len: u64,
    live: bool,
}

impl<T: Transport> Device<T> {
    /// Registers `buffers`, in this order, as the segments of one object
    /// (OBJECT_CREATE): offset 0 of the object is the start of `buffers[0]`.
    pub fn register(&self, buffers: &[&DmaBuf]) -> Result<Object<'_, T>> {
        let segments: Vec<(u64, u64)> = buffers
            .iter()
            .map(|buf| (buf.gpa(), buf.len() as u64))
            .collect();
        let handle = self.create_object(&segments)?;
        Ok(Object {
            device: self,
            handle,
            len: segments.iter().map(|&(_, len)| len).sum(),
            live: true,
        })
    }
}

impl<T: Transport> Object<'_, T> {
    /// The device's handle.
    pub fn handle(&self) -> u32 {
        self.handle
    }

    /// Size in bytes: the sum of its segments.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the object has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A request buffer naming bytes `offset..offset + len` of the object
    /// (§6.3); an error if the range falls outside it.
    pub fn range(&self, offset: u64, len: u64) -> Result<Buffer> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(Buffer::object(self.handle, offset, len)),
            _ => Err(Error::Request(RequestError::OutOfBounds {
                offset: usize::try_from(offset).unwrap_or(usize::MAX),
                len: usize::try_from(len).unwrap_or(usize::MAX),
                buf_len: usize::try_from(self.len).unwrap_or(usize::MAX),
            })),
        }
    }

    /// A request buffer naming the whole object.
    pub fn all(&self) -> Buffer {
        Buffer::object(self.handle, 0, self.len)
    }

    /// Destroys the object now, reporting the device's answer (dropping it
    /// does the same and only logs a failure).
    pub fn destroy(mut self) -> Result<()> {
        self.live = false;
        self.device.destroy_object(self.handle)
    }
}

impl<T: Transport> Drop for Object<'_, T> {
    fn drop(&mut self) {
        if self.live {
            if let Err(e) = self.device.destroy_object(self.handle) {
                log::warn!("object {}: OBJECT_DESTROY failed: {e}", self.handle);
            }
        }
    }
}
