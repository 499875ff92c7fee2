// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! What the device core needs from a transport (vhost-user, virtio-pci, ...).
//!
//! A transport moves feature bits and configuration, tells the device where a
//! queue's rings are, delivers notifications (driver to device) and waits for
//! interrupts (device to driver). It knows nothing of the accelerator protocol.
//! Queue indices are virtqueue indices (0 = control queue).
//!
//! The transports: [`vhost_user`] (the VMM's part, on the host: tests and
//! benchmarks) and [`pci`] (virtio-pci from a guest's userspace). The
//! kernel module's device node is not a transport: [`crate::kernel`] drives
//! the device through it instead.

pub mod pci;
pub mod vhost_user;

use std::io;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::memory::DmaMemory;
use crate::virtqueue::QueueAddresses;

/// Errors a transport reports.
#[derive(Debug, Error)]
pub enum Error {
    /// The queue index is beyond what the transport or device supports.
    #[error("virtqueue {0} does not exist")]
    InvalidQueue(u16),
    /// The queue has not been set up.
    #[error("virtqueue {0} is not set up")]
    QueueNotReady(u16),
    /// The transport-specific layer failed.
    #[error("transport failure")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Result of transport operations.
pub type Result<T> = std::result::Result<T, Error>;

/// The operations the device core needs from a transport.
///
/// Set-up methods take `&mut self`; [`notify`](Transport::notify) and
/// [`wait_interrupt`](Transport::wait_interrupt) take `&self` so that several
/// threads can drive different queues at once.
pub trait Transport {
    /// The guest memory the device may access; queues and buffers live in it.
    fn memory(&self) -> &DmaMemory;

    /// Virtio feature bits the device offers (transport-private bits removed).
    fn device_features(&self) -> u64;

    /// Acknowledges `features` (a subset of [`device_features`](Transport::device_features)).
    /// Must precede [`setup_queue`](Transport::setup_queue).
    fn set_driver_features(&mut self, features: u64) -> Result<()>;

    /// Number of virtqueues the transport can set up.
    fn max_queues(&self) -> u16;

    /// Largest size the device accepts for virtqueue `queue`.
    fn max_queue_size(&self, queue: u16) -> Result<u16>;

    /// Reads `buf.len()` bytes of device configuration at `offset`.
    fn read_config(&mut self, offset: u32, buf: &mut [u8]) -> Result<()>;

    /// Gives the device virtqueue `queue`'s rings and enables it.
    fn setup_queue(&mut self, queue: u16, addrs: &QueueAddresses) -> Result<()>;

    /// Marks the driver ready once every queue is set up (`DRIVER_OK`).
    fn activate(&mut self) -> Result<()>;

    /// Notifies the device that virtqueue `queue` has new available buffers.
    fn notify(&self, queue: u16) -> Result<()>;

    /// Waits up to `timeout` (forever if `None`) for an interrupt of virtqueue
    /// `queue` and consumes it. Returns `false` on timeout.
    fn wait_interrupt(&self, queue: u16, timeout: Option<Duration>) -> Result<bool>;

    /// Stops the device and forgets every queue; the transport may be set up again.
    fn reset(&mut self) -> Result<()>;
}

/// A boxed transport is a transport, so a tool can pick one at run time
/// (`Device<Box<dyn Transport + Send>>`).
impl<T: Transport + ?Sized> Transport for Box<T> {
    fn memory(&self) -> &DmaMemory {
        (**self).memory()
    }

    fn device_features(&self) -> u64 {
        (**self).device_features()
    }

    fn set_driver_features(&mut self, features: u64) -> Result<()> {
        (**self).set_driver_features(features)
    }

    fn max_queues(&self) -> u16 {
        (**self).max_queues()
    }

    fn max_queue_size(&self, queue: u16) -> Result<u16> {
        (**self).max_queue_size(queue)
    }

    fn read_config(&mut self, offset: u32, buf: &mut [u8]) -> Result<()> {
        (**self).read_config(offset, buf)
    }

    fn setup_queue(&mut self, queue: u16, addrs: &QueueAddresses) -> Result<()> {
        (**self).setup_queue(queue, addrs)
    }

    fn activate(&mut self) -> Result<()> {
        (**self).activate()
    }

    fn notify(&self, queue: u16) -> Result<()> {
        (**self).notify(queue)
    }

    fn wait_interrupt(&self, queue: u16, timeout: Option<Duration>) -> Result<bool> {
        (**self).wait_interrupt(queue, timeout)
    }

    fn reset(&mut self) -> Result<()> {
        (**self).reset()
    }
}

/// Waits until `fd` (an eventfd or a uio node) is readable or `deadline` passes; `Ok(false)` on timeout.
pub(crate) fn poll_readable(fd: i32, deadline: Option<Instant>) -> io::Result<bool> {
    loop {
        let timeout_ms = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                i32::try_from(left.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
            }
        };
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid, initialised pollfd that lives across the
        // call, matching the count of 1; the result is checked.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n > 0 {
            if pfd.revents & (libc::POLLERR | libc::POLLNVAL) != 0 {
                return Err(io::Error::other("poll reports an error on the descriptor"));
            }
            return Ok(true);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(false);
        }
    }
}
