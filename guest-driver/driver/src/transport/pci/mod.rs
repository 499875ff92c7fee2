// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! virtio-pci (modern) transport from Linux userspace, without VFIO.
//!
//! For a guest whose kernel has no `CONFIG_VFIO_NOIOMMU`, the way DPDK and SPDK
//! drive virtio devices: bind the function to `uio_pci_generic`
//! ([`bind_uio`]), map its BARs through sysfs `resourceN`, take INTx through
//! `/dev/uioN` (or poll the used rings: when asked to, and by itself when the
//! function has no INTx line, as under cloud-hypervisor; see
//! [`InterruptMode`]), and give the device guest-physical addresses of
//! hugepage-backed memory ([`DmaMemory::hugepages`](crate::DmaMemory::hugepages)).
//!
//! Modules:
//! - [`layout`]: the constants of virtio 1.2 §4.1 and of the PCI header;
//! - [`caps`]: finding and validating the virtio capabilities in configuration space;
//! - [`regs`]: register windows ([`Registers`]), `resourceN` mappings ([`MmioBar`]);
//! - [`sysfs`]: listing and binding functions, configuration space and BAR files;
//! - [`irq`]: INTx through uio, shared by every queue;
//! - [`transport`]: [`PciTransport`], the [`Transport`](crate::Transport) itself.
//!
//! ```no_run
//! use accel_driver::transport::pci::{self, PciOptions, PciTransport};
//! use accel_driver::{Device, DmaMemory, DEFAULT_FEATURES};
//! use std::path::Path;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let root = Path::new(pci::SYSFS_ROOT);
//! let dev = pci::list_devices(root)?.into_iter().next().ok_or("no virtio-accel device")?;
//! pci::bind_uio(root, &dev.bdf, false)?;
//! let memory = DmaMemory::hugepages(64 << 20)?;
//! let transport = PciTransport::open(&dev.bdf, &memory, &PciOptions::default())?;
//! let device = Device::open(transport, DEFAULT_FEATURES)?;
//! # drop(device);
//! # Ok(())
//! # }
//! ```

pub mod caps;
pub mod irq;
pub mod layout;
pub mod regs;
pub mod sysfs;
pub mod transport;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

pub use caps::{CapRegion, VirtioPciCaps};
pub use regs::{MmioBar, Registers, Width, Window};
pub use sysfs::{
    bind_commands, bind_uio, list_devices, require_uio, PciDeviceInfo, SYSFS_ROOT, UIO_DRIVER,
};
pub use transport::{Error, InterruptMode, NoIntx, PciOptions, PciTransport, Result};

/// Errors of [`list_devices`], [`bind_uio`] and [`bind_commands`] (convert into [`Error`]).
pub type SysfsError = sysfs::Error;
