// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Which device to open and how: a vhost-user socket (the host transport:
//! this process plays the VMM, its memfd-backed memory the guest's RAM), a
//! virtio-pci function through `uio_pci_generic`, or the accel node of the
//! guest kernel's `virtio_accel` module (the guest transports). Without an
//! option, the node when the module drives a device, else the function
//! ([`Target::choose`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use accel_driver::kernel::{self, KernelNode, DEV_ROOT};
use accel_driver::transport::pci::{self, InterruptMode, PciDeviceInfo, SYSFS_ROOT};
use accel_driver::{
    Device, DmaMemory, KernelDevice, OpenOptions, PciOptions, PciTransport, Transport,
    VhostUserTransport,
};
use thiserror::Error;

use crate::accelerator::Accelerator;
use crate::args::Args;

/// The device of a virtqueue transport (vhost-user or virtio-pci).
pub type VirtioDevice = Device<Box<dyn Transport + Send>>;

/// A device on whichever transport was chosen.
pub enum AnyDevice {
    /// Virtqueues this process drives.
    Virtio(VirtioDevice),
    /// The accel node of the kernel's driver.
    Kernel(KernelDevice),
}

impl AnyDevice {
    /// The device as the commands use it.
    pub fn accelerator(&self) -> &dyn Accelerator {
        match self {
            AnyDevice::Virtio(device) => device,
            AnyDevice::Kernel(device) => device,
        }
    }
}

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
        source: accel_driver::transport::vhost_user::Error,
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
    /// The kernel transport failed.
    #[error("kernel transport")]
    Kernel(#[from] kernel::Error),
    /// `--kernel` without a node, and the module drives no device.
    #[error(
        "no accel node of the {} driver in {SYSFS_ROOT}/class/accel (is the module loaded \
         and bound?)",
        kernel::DRIVER_NAME
    )]
    NoKernelNode,
    /// Several nodes and none chosen.
    #[error(
        "several accel nodes of the {driver} driver ({0}): choose one with --kernel=NODE",
        driver = kernel::DRIVER_NAME
    )]
    SeveralKernelNodes(String),
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
        /// Busy-poll the used rings instead of waiting for INTx (a function
        /// without an INTx line is polled in any case, and `open` says so).
        poll: bool,
    },
    /// The accel node of the `virtio_accel` module.
    Kernel(PathBuf),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::VhostUser(path) => write!(f, "vhost-user, socket {}", path.display()),
            Target::Pci {
                address: Some(bdf), ..
            } => write!(f, "virtio-pci {bdf} through {}", pci::UIO_DRIVER),
            Target::Pci { address: None, .. } => {
                write!(f, "virtio-pci through {}", pci::UIO_DRIVER)
            }
            Target::Kernel(node) => {
                write!(
                    f,
                    "kernel, {} of the {} module",
                    node.display(),
                    kernel::DRIVER_NAME
                )
            }
        }
    }
}

/// The accel nodes of the `virtio_accel` module on this machine.
pub fn kernel_nodes() -> Result<Vec<KernelNode>, Error> {
    Ok(kernel::list_nodes(
        Path::new(SYSFS_ROOT),
        Path::new(DEV_ROOT),
    )?)
}

/// The only node of `nodes`.
fn only_node(nodes: &[KernelNode]) -> Result<PathBuf, Error> {
    match nodes {
        [] => Err(Error::NoKernelNode),
        [only] => Ok(only.node.clone()),
        several => Err(Error::SeveralKernelNodes(
            several
                .iter()
                .map(|n| n.node.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        )),
    }
}

/// The line `accelctl` writes to stderr when the function `bdf` is polled
/// because it has no INTx line (under cloud-hypervisor), `None` otherwise:
/// `uio_pci_generic` cannot deliver its interrupts, so the transport polls by
/// itself instead of failing, and the user learns why.
pub fn no_intx_notice(bdf: &str, mode: InterruptMode) -> Option<String> {
    match mode {
        InterruptMode::PollNoIntx(why) => Some(format!(
            "accelctl: {bdf} has no INTx line ({why}): polling the used rings"
        )),
        InterruptMode::Intx { .. } | InterruptMode::PollRequested => None,
    }
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
    /// The target `args` name, or else the node of the `virtio_accel`
    /// module when it drives a device (`nodes` lists them, read only when
    /// needed), or else the virtio-pci function.
    pub fn choose(
        args: &Args,
        nodes: impl FnOnce() -> Result<Vec<KernelNode>, Error>,
    ) -> Result<Target, Error> {
        if let Some(socket) = &args.vhost_user {
            return Ok(Target::VhostUser(socket.clone()));
        }
        let pci = Target::Pci {
            address: args.pci.clone(),
            poll: args.poll,
        };
        match &args.kernel {
            Some(Some(node)) => Ok(Target::Kernel(node.clone())),
            Some(None) => only_node(&nodes()?).map(Target::Kernel),
            None if args.pci.is_some() => Ok(pci),
            None => {
                let nodes = nodes()?;
                if nodes.is_empty() {
                    Ok(pci)
                } else {
                    only_node(&nodes).map(Target::Kernel)
                }
            }
        }
    }

    /// Opens the device with `memory_bytes` of DMA memory (rounded up to
    /// whole MiB; the kernel transport needs none), asking for every
    /// feature the driver knows.
    pub fn open(&self, memory_bytes: usize, timeout: Duration) -> Result<AnyDevice, Error> {
        let mib = memory_bytes.div_ceil(1 << 20).max(1);
        let options = OpenOptions {
            timeout,
            ..OpenOptions::default()
        };
        let transport: Box<dyn Transport + Send> = match self {
            Target::Kernel(node) => {
                let mut device = KernelDevice::open(node)?;
                device.set_timeout(timeout);
                return Ok(AnyDevice::Kernel(device));
            }
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
                let transport = PciTransport::open(&bdf, &memory, &options)?;
                if let Some(notice) = no_intx_notice(&bdf, transport.interrupt_mode()) {
                    eprintln!("{notice}");
                }
                Box::new(transport)
            }
        };
        Device::open_with(transport, &options)
            .map(AnyDevice::Virtio)
            .map_err(Error::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use accel_driver::transport::pci::NoIntx;
    use clap::Parser;

    fn node(n: u32) -> KernelNode {
        KernelNode {
            name: format!("accel{n}"),
            node: PathBuf::from(format!("/dev/accel/accel{n}")),
            virtio: Some(format!("virtio{n}")),
            pci: Some(format!("0000:00:0{n}.0")),
        }
    }

    fn choose(line: &[&str], nodes: &[KernelNode]) -> Result<Target, Error> {
        let args = Args::try_parse_from(line).unwrap();
        Target::choose(&args, || Ok(nodes.to_vec()))
    }

    #[test]
    fn the_module_node_is_chosen_when_the_module_drives_a_device() {
        let one = [node(0)];
        let kernel = |n: u32| Target::Kernel(PathBuf::from(format!("/dev/accel/accel{n}")));
        let pci = |address: Option<&str>| Target::Pci {
            address: address.map(str::to_string),
            poll: false,
        };
        assert_eq!(choose(&["accelctl", "list"], &one).unwrap(), kernel(0));
        assert_eq!(choose(&["accelctl", "list"], &[]).unwrap(), pci(None));
        assert_eq!(
            choose(&["accelctl", "--pci", "0000:00:04.0", "list"], &one).unwrap(),
            pci(Some("0000:00:04.0")),
            "--pci picks uio_pci_generic even with the module bound"
        );
        assert_eq!(
            choose(&["accelctl", "--kernel=/dev/accel/accel7", "list"], &one).unwrap(),
            kernel(7)
        );
        assert_eq!(
            choose(&["accelctl", "--kernel", "list"], &one).unwrap(),
            kernel(0)
        );
        assert!(matches!(
            choose(&["accelctl", "--kernel", "list"], &[]),
            Err(Error::NoKernelNode)
        ));
        let two = [node(0), node(1)];
        assert!(matches!(
            choose(&["accelctl", "selftest"], &two),
            Err(Error::SeveralKernelNodes(list)) if list == "/dev/accel/accel0, /dev/accel/accel1"
        ));
        assert_eq!(
            choose(&["accelctl", "--vhost-user", "/tmp/s", "list"], &two).unwrap(),
            Target::VhostUser(PathBuf::from("/tmp/s"))
        );
        let unread = Target::choose(
            &Args::try_parse_from(["accelctl", "--vhost-user", "/tmp/s", "list"]).unwrap(),
            || panic!("sysfs read for a vhost-user target"),
        );
        assert!(unread.is_ok());
    }

    #[test]
    fn targets_say_which_transport_they_are() {
        assert_eq!(
            Target::Kernel(PathBuf::from("/dev/accel/accel0")).to_string(),
            "kernel, /dev/accel/accel0 of the virtio_accel module"
        );
        let pci = Target::Pci {
            address: Some("0000:00:04.0".into()),
            poll: true,
        };
        assert_eq!(
            pci.to_string(),
            "virtio-pci 0000:00:04.0 through uio_pci_generic"
        );
    }

    #[test]
    fn only_a_function_without_intx_is_announced() {
        let bdf = "0000:00:04.0";
        assert_eq!(
            no_intx_notice(bdf, InterruptMode::PollNoIntx(NoIntx::NoPin)).as_deref(),
            Some(
                "accelctl: 0000:00:04.0 has no INTx line (its interrupt pin register is 0: \
                 the VMM gives it MSI-X only, as cloud-hypervisor does): polling the used rings"
            )
        );
        let unrouted = no_intx_notice(
            bdf,
            InterruptMode::PollNoIntx(NoIntx::NoIrq { pin: 1, irq: 0 }),
        );
        assert!(
            unrouted.as_deref().is_some_and(|n| n.contains("INTA#")),
            "{unrouted:?}"
        );
        assert_eq!(no_intx_notice(bdf, InterruptMode::Intx { irq: 11 }), None);
        assert_eq!(
            no_intx_notice(bdf, InterruptMode::PollRequested),
            None,
            "--poll is a choice"
        );
    }
}
