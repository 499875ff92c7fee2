// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Driver for the virtio accelerator device (`virtio-accel`).
//!
//! The driver is one transport-agnostic core plus transports. In this process
//! the driver plays the guest: its "guest RAM" is a memfd that the transport
//! shares with the device.
//!
//! Map of the crate:
//! - [`memory`]: [`DmaMemory`], memfd-backed guest memory regions at chosen
//!   guest-physical addresses, and [`DmaBuf`], buffers allocated in them;
//! - [`virtqueue`]: [`SplitQueue`], the driver side of a split virtqueue
//!   (descriptors, indirect tables, event-index notification suppression,
//!   and a raw API to build malformed chains);
//! - [`transport`]: the [`Transport`] trait the core needs from a transport,
//!   and the two transports side by side:
//!   - [`transport::vhost_user`]: [`VhostUserTransport`], a vhost-user
//!     frontend that plays the VMM toward a vhost-user backend;
//!   - [`transport::pci`]: [`PciTransport`], a modern virtio-pci transport
//!     from Linux userspace (`uio_pci_generic`, sysfs BARs, hugepage DMA
//!     memory from [`DmaMemory::hugepages`]), plus listing and binding of
//!     devices;
//! - [`device`]: [`Device`], the accelerator protocol over any transport:
//!   feature negotiation, control commands (objects, fences), requests,
//!   completions, and raw queue access for fault tests;
//! - [`kernel`]: [`KernelDevice`], the device through the guest kernel's
//!   `virtio_accel` module and its accel node (`/dev/accel/accelN`): GEM
//!   objects, dma-bufs, sync_file and syncobj fences, result records.
//!
//! A minimal session:
//!
//! ```no_run
//! use accel_driver::{Buffer, Device, DmaMemory, Request, VhostUserTransport, DEFAULT_FEATURES};
//! use virtio_accel_spec::Op;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let memory = DmaMemory::new(64 << 20)?;
//! let transport = VhostUserTransport::connect("/tmp/accel.sock", &memory)?;
//! let device = Device::open(transport, DEFAULT_FEATURES)?;
//! let data = memory.alloc(9)?;
//! memory.write(&data, 0, b"123456789")?;
//! let done = device.run(0, &Request::new(Op::Crc32c).input(Buffer::direct(&data)))?.check()?;
//! assert_eq!(done.result_u32(), 0xe306_9283);
//!
//! // The dma-buf model: an object over guest buffers, destroyed when dropped.
//! // `submit` returns the request's fence at once, so a second request can
//! // depend on the first before either has run.
//! let copy_of = memory.alloc(9)?;
//! let object = device.register(&[&data])?;
//! let copied = device.submit(0, &Request::new(Op::Copy).input(object.all()).output(Buffer::direct(&copy_of)), 1)?;
//! let crc = Request::new(Op::Crc32c).dep(copied).input(Buffer::direct(&copy_of));
//! device.submit(0, &crc, 2)?;
//! device.flush(0)?;
//! let finished = device.wait_batch(0, 2, std::time::Duration::from_secs(5))?;
//! assert!(finished.iter().all(|c| c.is_ok()));
//! # Ok(())
//! # }
//! ```
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::cast_possible_truncation
    )
)]

pub mod device;
pub mod kernel;
pub mod memory;
pub mod transport;
pub mod virtqueue;

#[cfg(test)]
mod testing;

pub use device::{
    feature, Buffer, Completion, ControlCompletion, Device, Object, OpenOptions, Request,
    CAPABILITIES, DEFAULT_FEATURES,
};
pub use kernel::KernelDevice;
pub use memory::{DmaBuf, DmaMemory, MemoryRegion};
pub use transport::pci::{PciOptions, PciTransport};
pub use transport::vhost_user::{
    FrontendModel, VhostUserOptions, VhostUserTransport, CLOUD_HYPERVISOR_FEATURES,
};
pub use transport::Transport;
pub use virtqueue::{Descriptor, QueueAddresses, RawDesc, RawNext, SplitQueue, Used};
