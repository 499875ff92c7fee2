//! Which device to open and how: a vhost-user socket (the host transport:
//! this process plays the VMM, its memfd-backed memory the guest's RAM) or a
//! virtio-pci function (the guest transport).

use std::path::{Path, PathBuf};
use std::time::Duration;

use accel_driver::pci::{self, PciDeviceInfo, SYSFS_ROOT};
use accel_driver::{
    Device, DmaMemory, OpenOptions, PciOptions, PciTransport, Transport, VhostUserTransport,
};
use thiserror::Error;

/// A device on whichever transport was chosen.
pub type AnyDevice = Device<Box<dyn Transport + Send>>;

/// Errors of opening a device.
#[derive(Debug, Error)]
pub enum Error {
    /// The DMA memory could not be set up.
    #[error("cannot set up {mib} MiB of DMA memory")]
    Memory {
        /// Size asked for.
        mib: usize,
        /// Cause.
        #[source]
        source: accel_driver::memory::Error,
    },
    /// The vhost-user connection failed.
    #[error("cannot connect to the vhost-user socket {path}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: accel_driver::vhost_user::Error,
    },
    /// The virtio-pci function could not be found or used.
    #[error("virtio-pci")]
    Pci(#[from] pci::Error),
    /// No virtio-accel PCI function is present.
    #[error(
        "no virtio-accel PCI device (vendor 1af4, device {:04x}) in {SYSFS_ROOT}/bus/pci/devices",
        pci::layout::ACCEL_PCI_DEVICE_ID
    )]
    NoPciDevice,
    /// Several are present and none was chosen.
    #[error("several virtio-accel PCI devices ({0}): choose one with --pci")]
    SeveralPciDevices(String),
    /// The device did not initialise.
    #[error("cannot initialise the device")]
    Open(#[source] accel_driver::device::Error),
}

/// Where the device is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A daemon's vhost-user socket.
    VhostUser(PathBuf),
    /// A virtio-pci function bound to `uio_pci_generic`: the one at
    /// `address`, or the only one present.
    Pci {
        /// `domain:bus:device.function`.
        address: Option<String>,
        /// Busy-poll the used rings instead of waiting for INTx.
        poll: bool,
    },
}

/// The virtio-accel PCI functions of this machine.
pub fn pci_devices() -> Result<Vec<PciDeviceInfo>, Error> {
    Ok(pci::list_devices(Path::new(SYSFS_ROOT)).map_err(pci::Error::from)?)
}

/// `address`, or the address of the only virtio-accel PCI function.
pub fn pci_address(address: Option<&str>) -> Result<String, Error> {
    if let Some(address) = address {
        return Ok(address.to_string());
    }
    let devices = pci_devices()?;
    match devices.as_slice() {
        [] => Err(Error::NoPciDevice),
        [only] => Ok(only.bdf.clone()),
        several => Err(Error::SeveralPciDevices(
            several
                .iter()
                .map(|d| d.bdf.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        )),
    }
}

impl Target {
    /// Opens the device with `memory_bytes` of DMA memory (rounded up to
    /// whole MiB), asking for every feature the driver knows.
    pub fn open(&self, memory_bytes: usize, timeout: Duration) -> Result<AnyDevice, Error> {
        let mib = memory_bytes.div_ceil(1 << 20).max(1);
        let options = OpenOptions {
            timeout,
            ..OpenOptions::default()
        };
        let transport: Box<dyn Transport + Send> = match self {
            Target::VhostUser(path) => {
                let memory =
                    DmaMemory::new(mib << 20).map_err(|source| Error::Memory { mib, source })?;
                let transport = VhostUserTransport::connect(path, &memory).map_err(|source| {
                    Error::Connect {
                        path: path.clone(),
                        source,
                    }
                })?;
                Box::new(transport)
            }
            Target::Pci { address, poll } => {
                let bdf = pci_address(address.as_deref())?;
                let memory = DmaMemory::hugepages(mib << 20)
                    .map_err(|source| Error::Memory { mib, source })?;
                let options = PciOptions {
                    poll: *poll,
                    ..PciOptions::default()
                };
                Box::new(PciTransport::open(&bdf, &memory, &options)?)
            }
        };
        Device::open_with(transport, &options).map_err(Error::Open)
    }
}
