// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! [`PciTransport`]: drives a modern virtio-pci function from userspace
//! (virtio 1.2 §4.1), the way DPDK and SPDK do without VFIO: BARs mapped from
//! sysfs `resourceN`, INTx through `uio_pci_generic` (or polling the used
//! rings, when asked to or when the function has no INTx line: see
//! [`InterruptMode`]), DMA to guest-physical addresses of [`DmaMemory`]
//! (hugepages, see [`DmaMemory::hugepages`]).
//!
//! Initialisation follows §3.1.1: reset, ACKNOWLEDGE, DRIVER, read the device
//! features ([`PciTransport::open`]); write the driver features, FEATURES_OK,
//! check it stuck ([`Transport::set_driver_features`]); program each queue
//! ([`Transport::setup_queue`]); DRIVER_OK ([`Transport::activate`]).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;
use virtio_accel_spec::VIRTIO_ID_ACCEL;
use virtio_bindings::virtio_config::{VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

use super::caps::{self, CapRegion, VirtioPciCaps};
use super::irq::{self, Intx, UioLine};
use super::layout::{common as cc, pci_header, *};
use super::regs::{self, MmioBar, Registers, Window};
use super::sysfs::{self, SYSFS_ROOT};
use crate::memory::DmaMemory;
use crate::transport::{self, Transport};
use crate::virtqueue::QueueAddresses;

/// Errors of the virtio-pci transport (and, through `From`, of its submodules).
#[derive(Debug, Error)]
pub enum Error {
    /// A sysfs operation failed.
    #[error(transparent)]
    Sysfs(#[from] sysfs::Error),
    /// The configuration space does not describe a usable virtio-pci function.
    #[error("invalid virtio-pci configuration space")]
    Caps(#[from] caps::Error),
    /// A register access or BAR mapping failed.
    #[error("virtio-pci register access failed")]
    Regs(#[from] regs::Error),
    /// Waiting for or acknowledging an interrupt failed.
    #[error("virtio-pci interrupt handling failed")]
    Irq(#[from] irq::Error),
    /// The function is a virtio device of another type.
    #[error("the function is virtio device type {0}, not the accelerator ({VIRTIO_ID_ACCEL})")]
    NotAccel(u16),
    /// A virtio structure lives in an I/O-port BAR, which sysfs cannot map.
    #[error("virtio structures in I/O-port BAR {0} are not supported")]
    IoBar(u8),
    /// `/dev/uioN` could not be opened.
    #[error("cannot open {}", path.display())]
    OpenUio {
        /// The device node.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The device did not read back status 0 after a reset.
    #[error("device status is {status:#x}, not 0, {waited:?} after a reset")]
    ResetTimeout {
        /// The last status read.
        status: u8,
        /// How long the driver waited.
        waited: Duration,
    },
    /// The driver asked for features the device does not offer.
    #[error("features {wanted:#x} are not all offered ({offered:#x})")]
    FeaturesNotOffered {
        /// What was asked for.
        wanted: u64,
        /// What the device offers (without transport bits).
        offered: u64,
    },
    /// The driver asked for transport or ring features this transport does
    /// not implement (packed rings, in-order, notification data, ...).
    #[error(
        "features {0:#x} are not implemented by this driver (only device-specific bits 0..=23, \
         VERSION_1, RING_EVENT_IDX and RING_INDIRECT_DESC can be acknowledged)"
    )]
    UnsupportedFeatures(u64),
    /// The device needs ACCESS_PLATFORM but DMA from the function is
    /// translated by an IOMMU, which this transport does not program.
    #[error(
        "the device offers ACCESS_PLATFORM and its IOMMU group has a '{domain}' domain: \
         this driver gives the device raw guest-physical addresses, which a translating \
         (v)IOMMU would not map; boot the guest with the IOMMU in passthrough mode \
         (iommu=pt, or an identity domain for the group) or without a vIOMMU"
    )]
    TranslatingIommu {
        /// `iommu_group/type` of the function.
        domain: String,
    },
    /// The device cleared FEATURES_OK: it refuses the feature set (§3.1.1 step 6).
    #[error("the device refused features {0:#x} (FEATURES_OK did not stick)")]
    FeaturesRefused(u64),
    /// Features were negotiated already, or not yet, for this call.
    #[error("{0}")]
    Sequence(&'static str),
    /// The queue size is zero, not a power of two, or above the device's maximum.
    #[error("virtqueue {queue}: size {size} is not a power of two in 1..={max}")]
    QueueSize {
        /// Virtqueue index.
        queue: u16,
        /// Requested size.
        size: u16,
        /// Device maximum (0: the queue is unavailable).
        max: u16,
    },
    /// The queue's notification address is outside the notification area.
    #[error("virtqueue {queue}: notification offset {offset:#x} is outside the notify area")]
    NotifyOutOfRange {
        /// Virtqueue index.
        queue: u16,
        /// Offset in the notify structure.
        offset: u64,
    },
    /// The device has no device-specific configuration structure.
    #[error("the device has no device configuration structure")]
    NoDeviceConfig,
    /// A configuration read falls outside the device configuration structure.
    #[error("configuration read {offset:#x}+{len:#x} is outside {size:#x} bytes")]
    ConfigOutOfRange {
        /// Offset.
        offset: u32,
        /// Length.
        len: usize,
        /// Size of the structure.
        size: u64,
    },
    /// `config_generation` kept changing while the configuration was read.
    #[error("device configuration changed during each of {0} reads")]
    ConfigUnstable(u32),
}

impl From<Error> for transport::Error {
    fn from(e: Error) -> Self {
        transport::Error::Backend(Box::new(e))
    }
}

/// Result of the transport's operations.
pub type Result<T> = std::result::Result<T, Error>;

/// Options of [`PciTransport::open`].
#[derive(Debug, Clone)]
pub struct PciOptions {
    /// Busy-poll instead of waiting for INTx: `wait_interrupt` sleeps
    /// `poll_interval` and reports a (possible) interrupt. `/dev/uioN` is not used.
    /// A function without an INTx line is polled in any case
    /// ([`InterruptMode::PollNoIntx`]).
    pub poll: bool,
    /// Sleep of one polling round.
    pub poll_interval: Duration,
    /// Where sysfs is mounted.
    pub sysfs_root: PathBuf,
    /// Where the device nodes are (`/dev`): `/dev/uioN` is opened here.
    pub dev_root: PathBuf,
    /// How long a reset may take before it is an error.
    pub reset_timeout: Duration,
}

impl Default for PciOptions {
    fn default() -> Self {
        PciOptions {
            poll: false,
            poll_interval: Duration::from_micros(20),
            sysfs_root: PathBuf::from(SYSFS_ROOT),
            dev_root: PathBuf::from("/dev"),
            reset_timeout: Duration::from_secs(1),
        }
    }
}

/// Feature bits the transport handles itself, acknowledged when offered.
///
/// `ACCESS_PLATFORM`: the device goes through the platform's DMA translation.
/// Without a translating IOMMU (no IOMMU group, or an identity domain) the
/// addresses the device needs are guest-physical addresses, which is what
/// this transport gives it; behind a translating IOMMU the transport refuses.
const TRANSPORT_FEATURES: u64 = 1 << VIRTIO_F_ACCESS_PLATFORM;

/// Feature bits a driver may ask for ([`Transport::set_driver_features`]):
/// device-specific bits 0..=23 and the transport features the split
/// virtqueues implement. Everything else (RING_PACKED, IN_ORDER,
/// ORDER_PLATFORM, SR_IOV, NOTIFICATION_DATA, RING_RESET, ...) is refused.
pub const DRIVER_FEATURES: u64 = ((1 << 24) - 1)
    | 1 << VIRTIO_F_VERSION_1
    | 1 << VIRTIO_RING_F_EVENT_IDX
    | 1 << VIRTIO_RING_F_INDIRECT_DESC;

/// Most attempts at a consistent configuration read (§2.5.1).
const CONFIG_RETRIES: u32 = 100;

/// The sysfs `irq` of a function whose pin the platform could not route
/// (Linux's `IRQ_NOTCONNECTED`); `uio_pci_generic` then takes no interrupt.
const IRQ_NOTCONNECTED: u32 = 1 << 31;

/// Why a function has no INTx line `uio_pci_generic` could deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoIntx {
    /// Its Interrupt Pin register reads 0: the VMM gave it no INTx pin
    /// (cloud-hypervisor's functions have MSI-X only).
    NoPin,
    /// It has a pin, but the kernel assigned it no IRQ (no routing for its
    /// slot): sysfs `irq` reads 0 or `IRQ_NOTCONNECTED`.
    NoIrq {
        /// The Interrupt Pin register (1: INTA# ... 4: INTD#).
        pin: u8,
        /// The sysfs `irq`.
        irq: u32,
    },
}

impl fmt::Display for NoIntx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            NoIntx::NoPin => f.write_str(
                "its interrupt pin register is 0: the VMM gives it MSI-X only, \
                 as cloud-hypervisor does",
            ),
            NoIntx::NoIrq {
                pin: pin @ 1..=4,
                irq,
            } => write!(
                f,
                "it has pin INT{}# but the kernel assigned it no IRQ (irq {irq})",
                char::from(b'A' + pin - 1)
            ),
            NoIntx::NoIrq { pin, irq } => write!(
                f,
                "its interrupt pin register reads {pin} and the kernel assigned it no IRQ \
                 (irq {irq})"
            ),
        }
    }
}

/// How [`PciTransport`] learns that the device used buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptMode {
    /// INTx through `/dev/uioN` (`uio_pci_generic`), on this IRQ.
    Intx {
        /// The function's IRQ (sysfs `irq`).
        irq: u32,
    },
    /// The used rings are polled, as [`PciOptions::poll`] asked.
    PollRequested,
    /// The used rings are polled because the function has no INTx line:
    /// `uio_pci_generic` logged "No IRQ assigned to device" when it bound the
    /// function, and `/dev/uioN` fails every wait with EIO.
    PollNoIntx(NoIntx),
}

impl fmt::Display for InterruptMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InterruptMode::Intx { irq } => write!(f, "INTx through uio_pci_generic, IRQ {irq}"),
            InterruptMode::PollRequested => f.write_str("polling the used rings, as asked"),
            InterruptMode::PollNoIntx(why) => {
                write!(f, "polling the used rings: no INTx line ({why})")
            }
        }
    }
}

impl InterruptMode {
    /// Decides how to wait for a function with Interrupt Pin register `pin`:
    /// poll when `poll` asks for it, or when the function has no INTx line,
    /// i.e. no pin, or an IRQ (`read_irq`, its sysfs `irq`, read only when it
    /// matters) that `uio_pci_generic` does not take (0, `IRQ_NOTCONNECTED`).
    pub(crate) fn choose(
        poll: bool,
        pin: u8,
        read_irq: impl FnOnce() -> sysfs::Result<u32>,
    ) -> Result<Self> {
        if poll {
            return Ok(InterruptMode::PollRequested);
        }
        if pin == 0 {
            return Ok(InterruptMode::PollNoIntx(NoIntx::NoPin));
        }
        Ok(match read_irq()? {
            irq @ (0 | IRQ_NOTCONNECTED) => InterruptMode::PollNoIntx(NoIntx::NoIrq { pin, irq }),
            irq => InterruptMode::Intx { irq },
        })
    }

    /// Whether the used rings are polled.
    pub fn polls(&self) -> bool {
        !matches!(self, InterruptMode::Intx { .. })
    }
}

#[derive(Debug)]
enum Wait {
    Poll(Duration),
    Intx(Intx),
}

/// A modern virtio-pci function driven from userspace.
#[derive(Debug)]
pub struct PciTransport {
    memory: DmaMemory,
    common: Window,
    notify: Window,
    notify_multiplier: u64,
    isr: Window,
    device: Option<Window>,
    reset_timeout: Duration,
    /// All feature bits the device offers.
    offered: u64,
    /// Negotiated features (driver's plus transport bits), after FEATURES_OK.
    negotiated: Option<u64>,
    num_queues: u16,
    /// Maximum size of each queue, read after FEATURES_OK.
    queue_max: Vec<u16>,
    /// Notification offset of each set-up queue.
    queue_notify: Vec<Option<u64>>,
    wait: Wait,
    /// How `wait` was chosen.
    interrupts: InterruptMode,
    /// Features were written since the last reset: negotiating again needs
    /// a reset first (§3.1.1).
    needs_reset: bool,
    /// Type of the function's IOMMU domain when it translates DMA (see
    /// [`sysfs::dma_is_direct`]); `None`: device addresses are physical.
    translating_iommu: Option<String>,
    /// The exclusive locks on the function (sysfs `config`, `/dev/uioN`),
    /// held for the transport's lifetime; released after the reset on drop.
    _locks: Vec<File>,
}

fn window(bars: &[Option<Arc<dyn Registers>>; 6], r: &CapRegion) -> Result<Window> {
    let regs = bars[usize::from(r.bar)]
        .clone()
        .ok_or(regs::Error::OutOfBounds {
            offset: r.offset.into(),
            width: 0,
            len: 0,
        })?;
    Ok(Window::new(regs, r.offset.into(), r.length.into())?)
}

// A device core may run queues from several threads, and tools box the transport.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<PciTransport>();
};

impl PciTransport {
    /// Opens the virtio-accel function `bdf`, which must be bound to
    /// `uio_pci_generic` (see [`bind_uio`](super::bind_uio)): locks it
    /// against other users ([`sysfs::lock_device`]; fails with
    /// [`sysfs::Error::InUse`] if another process holds it), maps its BARs,
    /// enables memory decoding, resets it, enables bus mastering and reads its
    /// features.
    pub fn open(bdf: &str, memory: &DmaMemory, options: &PciOptions) -> Result<Self> {
        let root = options.sysfs_root.as_path();
        let uio = sysfs::require_uio(root, bdf)?;
        // Before anything touches the device: another process may be using it.
        let mut locks = vec![sysfs::lock_device(root, bdf)?];
        let config = sysfs::read_config(root, bdf)?;
        let bars = sysfs::bars(root, bdf)?;
        let caps = caps::parse(&config, &bars.map(|b| Some(b.size)))?;
        if u32::from(caps.virtio_id) != VIRTIO_ID_ACCEL {
            return Err(Error::NotAccel(caps.virtio_id));
        }
        let mut mapped: [Option<Arc<dyn Registers>>; 6] = Default::default();
        for r in [
            Some(caps.common),
            Some(caps.notify),
            Some(caps.isr),
            caps.device,
        ]
        .into_iter()
        .flatten()
        {
            let i = usize::from(r.bar);
            if bars[i].is_io() {
                return Err(Error::IoBar(r.bar));
            }
            if mapped[i].is_none() {
                let path = sysfs::resource_path(root, bdf, r.bar);
                mapped[i] = Some(Arc::new(MmioBar::open(&path)?));
            }
        }
        let domain = sysfs::iommu_domain_type(root, bdf)?;
        let interrupts = InterruptMode::choose(options.poll, interrupt_pin(&config), || {
            sysfs::intx_irq(root, bdf)
        })?;
        let wait = if interrupts.polls() {
            None
        } else {
            let node = uio_node(&options.dev_root, &uio);
            let config = sysfs::device_dir(root, bdf).join("config");
            let (line, lock) = open_uio(&node, &config, bdf)?;
            locks.push(lock);
            Some(line)
        };
        let mut t = bring_up(
            &mut |bits| Ok(sysfs::set_command_bits(root, bdf, bits)?),
            || Self::with_registers(memory, &caps, &mapped, options.reset_timeout),
        )?;
        log::debug!("{bdf}: memory decoding and bus mastering enabled");
        t._locks = locks;
        if !sysfs::dma_is_direct(domain.as_deref()) {
            t.translating_iommu = domain;
        }
        t.wait = match wait {
            None => Wait::Poll(options.poll_interval),
            Some(line) => Wait::Intx(Intx::new(Box::new(line), t.num_queues)?),
        };
        t.interrupts = interrupts;
        log::info!(
            "{bdf}: virtio-pci accel, {} queues, features {:#x}, {interrupts}{}",
            t.num_queues,
            t.offered,
            if interrupts.polls() {
                format!(", a round every {:?}", options.poll_interval)
            } else {
                String::new()
            }
        );
        Ok(t)
    }

    /// How the transport waits for the device: INTx, or polling and why.
    pub fn interrupt_mode(&self) -> InterruptMode {
        self.interrupts
    }

    /// A transport over already mapped BARs (`bars[i]`: BAR `i`), polling.
    /// Resets the device, sets ACKNOWLEDGE and DRIVER and reads its features.
    pub fn with_registers(
        memory: &DmaMemory,
        caps: &VirtioPciCaps,
        bars: &[Option<Arc<dyn Registers>>; 6],
        reset_timeout: Duration,
    ) -> Result<Self> {
        let mut t = PciTransport {
            memory: memory.clone(),
            common: window(bars, &caps.common)?,
            notify: window(bars, &caps.notify)?,
            notify_multiplier: caps.notify_off_multiplier.into(),
            isr: window(bars, &caps.isr)?,
            device: caps.device.as_ref().map(|d| window(bars, d)).transpose()?,
            reset_timeout,
            offered: 0,
            negotiated: None,
            num_queues: 0,
            queue_max: Vec::new(),
            queue_notify: Vec::new(),
            wait: Wait::Poll(PciOptions::default().poll_interval),
            interrupts: InterruptMode::PollRequested,
            needs_reset: false,
            translating_iommu: None,
            _locks: Vec::new(),
        };
        t.init()?;
        Ok(t)
    }

    /// Pretends the function's DMA goes through a translating IOMMU domain.
    #[cfg(test)]
    pub(crate) fn set_translating_iommu(&mut self, domain: &str) {
        self.translating_iommu = Some(domain.to_string());
    }

    #[cfg(test)]
    pub(crate) fn set_intx(&mut self, line: Box<dyn irq::IrqLine>) -> Result<()> {
        self.wait = Wait::Intx(Intx::new(line, self.num_queues)?);
        self.interrupts = InterruptMode::Intx { irq: 0 };
        Ok(())
    }

    /// The device status register (§2.1).
    pub fn status(&self) -> Result<u8> {
        Ok(self.common.read8(cc::DEVICE_STATUS)?)
    }

    /// Every feature bit the device offers, transport bits included.
    pub fn offered_features(&self) -> u64 {
        self.offered
    }

    /// Negotiated features (transport bits included), once FEATURES_OK stuck.
    pub fn negotiated_features(&self) -> Option<u64> {
        self.negotiated
    }

    fn set_status(&self, status: u8) -> Result<()> {
        Ok(self.common.write8(cc::DEVICE_STATUS, status)?)
    }

    /// Writes 0 to `device_status` and waits until it reads 0 (§4.1.4.3.1).
    fn device_reset(&self) -> Result<()> {
        self.set_status(0)?;
        let start = Instant::now();
        loop {
            let status = self.status()?;
            if status == 0 {
                return Ok(());
            }
            let waited = start.elapsed();
            if waited >= self.reset_timeout {
                return Err(Error::ResetTimeout { status, waited });
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// Reset, ACKNOWLEDGE, DRIVER, read features and the queue count.
    fn init(&mut self) -> Result<()> {
        self.device_reset()?;
        self.needs_reset = false;
        self.negotiated = None;
        self.queue_max.clear();
        self.queue_notify.clear();
        self.set_status(STATUS_ACKNOWLEDGE)?;
        self.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER)?;
        let c = &self.common;
        c.write32(cc::DEVICE_FEATURE_SELECT, 0)?;
        let low = c.read32(cc::DEVICE_FEATURE)?;
        c.write32(cc::DEVICE_FEATURE_SELECT, 1)?;
        let high = c.read32(cc::DEVICE_FEATURE)?;
        self.offered = u64::from(high) << 32 | u64::from(low);
        self.num_queues = c.read16(cc::NUM_QUEUES)?;
        Ok(())
    }

    fn negotiate(&mut self, features: u64) -> Result<()> {
        if self.negotiated.is_some() {
            return Err(Error::Sequence(
                "features are already negotiated: reset the transport first",
            ));
        }
        if self.needs_reset {
            // §3.1.1: after a failed negotiation (FAILED set, or FEATURES_OK
            // refused) the driver starts over from a reset.
            log::debug!("virtio-pci: resetting before negotiating again");
            self.init()?;
        }
        let unsupported = features & !DRIVER_FEATURES;
        if unsupported != 0 {
            return Err(Error::UnsupportedFeatures(unsupported));
        }
        let offered = self.offered & !TRANSPORT_FEATURES;
        if features & !offered != 0 {
            return Err(Error::FeaturesNotOffered {
                wanted: features,
                offered,
            });
        }
        let transport = self.offered & TRANSPORT_FEATURES;
        if transport & (1 << VIRTIO_F_ACCESS_PLATFORM) != 0 {
            if let Some(domain) = &self.translating_iommu {
                return Err(Error::TranslatingIommu {
                    domain: domain.clone(),
                });
            }
        }
        let all = features | transport;
        self.needs_reset = true;
        let c = &self.common;
        c.write32(cc::DRIVER_FEATURE_SELECT, 0)?;
        c.write32(cc::DRIVER_FEATURE, low32(all))?;
        c.write32(cc::DRIVER_FEATURE_SELECT, 1)?;
        c.write32(cc::DRIVER_FEATURE, low32(all >> 32))?;
        let status = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        self.set_status(status)?;
        if self.status()? & STATUS_FEATURES_OK == 0 {
            // §3.1.1 step 6: the device does not support this subset.
            self.set_status(status | STATUS_FAILED)?;
            return Err(Error::FeaturesRefused(all));
        }
        // §3.1.1 step 7: discover the virtqueues.
        let mut max = Vec::with_capacity(usize::from(self.num_queues));
        for q in 0..self.num_queues {
            c.write16(cc::QUEUE_SELECT, q)?;
            max.push(c.read16(cc::QUEUE_SIZE)?);
        }
        self.queue_max = max;
        self.queue_notify = vec![None; usize::from(self.num_queues)];
        self.negotiated = Some(all);
        Ok(())
    }

    fn program_queue(&mut self, queue: u16, addrs: &QueueAddresses) -> Result<()> {
        let max = self.queue_max[usize::from(queue)];
        if addrs.size == 0 || !addrs.size.is_power_of_two() || addrs.size > max {
            return Err(Error::QueueSize {
                queue,
                size: addrs.size,
                max,
            });
        }
        let c = &self.common;
        c.write16(cc::QUEUE_SELECT, queue)?;
        let notify_off = c.read16(cc::QUEUE_NOTIFY_OFF)?;
        let offset = u64::from(notify_off) * self.notify_multiplier;
        if offset + 2 > self.notify.len() {
            return Err(Error::NotifyOutOfRange { queue, offset });
        }
        c.write16(cc::QUEUE_SIZE, addrs.size)?;
        // INTx only: uio_pci_generic does not enable MSI-X (§4.1.5.1.2).
        c.write16(cc::QUEUE_MSIX_VECTOR, VIRTIO_MSI_NO_VECTOR)?;
        write64_split(c, cc::QUEUE_DESC, addrs.desc)?;
        write64_split(c, cc::QUEUE_DRIVER, addrs.avail)?;
        write64_split(c, cc::QUEUE_DEVICE, addrs.used)?;
        c.write16(cc::QUEUE_ENABLE, 1)?;
        self.queue_notify[usize::from(queue)] = Some(offset);
        Ok(())
    }

    fn read_device_config(&self, offset: u32, buf: &mut [u8]) -> Result<()> {
        let device = self.device.as_ref().ok_or(Error::NoDeviceConfig)?;
        let out_of_range = || Error::ConfigOutOfRange {
            offset,
            len: buf.len(),
            size: device.len(),
        };
        if u64::from(offset) + buf.len() as u64 > device.len() {
            return Err(out_of_range());
        }
        for _ in 0..CONFIG_RETRIES {
            let before = self.common.read8(cc::CONFIG_GENERATION)?;
            read_config_bytes(device, offset.into(), buf)?;
            let after = self.common.read8(cc::CONFIG_GENERATION)?;
            if before == after {
                return Ok(());
            }
        }
        Err(Error::ConfigUnstable(CONFIG_RETRIES))
    }

    fn queue_index(&self, queue: u16) -> transport::Result<usize> {
        if queue >= self.num_queues {
            return Err(transport::Error::InvalidQueue(queue));
        }
        Ok(usize::from(queue))
    }

    fn notify_offset(&self, queue: u16) -> transport::Result<u64> {
        self.queue_notify
            .get(self.queue_index(queue)?)
            .copied()
            .flatten()
            .ok_or(transport::Error::QueueNotReady(queue))
    }

    /// Reads ISR (acknowledging INTx), warning about configuration changes.
    fn ack(&self) -> regs::Result<u8> {
        let isr = self.isr.read8(0)?;
        if isr & ISR_CONFIG != 0 {
            let status = self.common.read8(cc::DEVICE_STATUS)?;
            if status & STATUS_DEVICE_NEEDS_RESET != 0 {
                log::error!("virtio-pci: the device needs a reset (status {status:#x})");
            } else {
                log::info!("virtio-pci: device configuration changed");
            }
        }
        Ok(isr)
    }
}

fn low32(v: u64) -> u32 {
    u32::from_le_bytes(v.to_le_bytes()[..4].try_into().unwrap_or([0; 4]))
}

/// Writes a 64-bit field as two 32-bit halves, low first (§4.1.3.1 allows it;
/// devices need not support 64-bit accesses).
fn write64_split(w: &Window, offset: u64, value: u64) -> regs::Result<()> {
    w.write32(offset, low32(value))?;
    w.write32(offset + 4, low32(value >> 32))
}

/// Reads device configuration with the widest naturally aligned accesses
/// (§4.1.3.1: 8-bit fields by 8-bit accesses, 16-bit by 16-bit, 32 and 64-bit
/// fields by 32-bit accesses).
fn read_config_bytes(w: &Window, mut offset: u64, buf: &mut [u8]) -> regs::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let left = buf.len() - done;
        let n = if offset % 4 == 0 && left >= 4 {
            buf[done..done + 4].copy_from_slice(&w.read32(offset)?.to_le_bytes());
            4
        } else if offset % 2 == 0 && left >= 2 {
            buf[done..done + 2].copy_from_slice(&w.read16(offset)?.to_le_bytes());
            2
        } else {
            buf[done] = w.read8(offset)?;
            1
        };
        done += n;
        offset += n as u64;
    }
    Ok(())
}

/// Sets memory decoding, runs `init` (which resets the device and waits for
/// status 0), and only then sets bus mastering, so that a device left running
/// by a previous driver cannot DMA before it is reset. `set_command` sets
/// command register bits and returns the previous value.
pub(crate) fn bring_up<T>(
    set_command: &mut dyn FnMut(u16) -> Result<u16>,
    init: impl FnOnce() -> Result<T>,
) -> Result<T> {
    set_command(pci_header::COMMAND_MEMORY)?;
    let t = init()?;
    set_command(pci_header::COMMAND_BUS_MASTER)?;
    Ok(t)
}

/// The node of `uio` (`/dev/uioN`, as sysfs names it) under `dev_root`.
fn uio_node(dev_root: &Path, uio: &Path) -> PathBuf {
    uio.file_name()
        .map_or_else(|| uio.to_path_buf(), |name| dev_root.join(name))
}

/// Opens `/dev/uioN` and locks it exclusively for `bdf`, and opens the
/// function's `config` (at `config`) to unmask INTx; returns the line and a
/// second descriptor of the node that holds the lock.
fn open_uio(path: &Path, config: &Path, bdf: &str) -> Result<(UioLine, File)> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| match source.kind() {
            io::ErrorKind::PermissionDenied => Error::Sysfs(sysfs::Error::PermissionDenied {
                path: path.to_path_buf(),
                source,
            }),
            _ => Error::OpenUio {
                path: path.to_path_buf(),
                source,
            },
        })?;
    let lock = file.try_clone().map_err(|source| Error::OpenUio {
        path: path.to_path_buf(),
        source,
    })?;
    sysfs::lock_file(&lock, path, bdf)?;
    let config_file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(config)
        .map_err(|source| Error::OpenUio {
            path: config.to_path_buf(),
            source,
        })?;
    Ok((UioLine::new(file, config_file), lock))
}

impl Transport for PciTransport {
    fn memory(&self) -> &DmaMemory {
        &self.memory
    }

    fn device_features(&self) -> u64 {
        self.offered & !TRANSPORT_FEATURES
    }

    fn set_driver_features(&mut self, features: u64) -> transport::Result<()> {
        Ok(self.negotiate(features)?)
    }

    fn max_queues(&self) -> u16 {
        self.num_queues
    }

    fn max_queue_size(&self, queue: u16) -> transport::Result<u16> {
        let index = self.queue_index(queue)?;
        self.queue_max.get(index).copied().ok_or_else(|| {
            Error::Sequence("queue sizes are known after feature negotiation").into()
        })
    }

    fn read_config(&mut self, offset: u32, buf: &mut [u8]) -> transport::Result<()> {
        Ok(self.read_device_config(offset, buf)?)
    }

    fn setup_queue(&mut self, queue: u16, addrs: &QueueAddresses) -> transport::Result<()> {
        self.queue_index(queue)?;
        if self.negotiated.is_none() {
            return Err(Error::Sequence("set the driver features before the queues").into());
        }
        Ok(self.program_queue(queue, addrs)?)
    }

    fn activate(&mut self) -> transport::Result<()> {
        if self.negotiated.is_none() {
            return Err(Error::Sequence("set the driver features before DRIVER_OK").into());
        }
        self.set_status(
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        )?;
        Ok(())
    }

    fn notify(&self, queue: u16) -> transport::Result<()> {
        let offset = self.notify_offset(queue)?;
        // §4.1.5.2: the 16-bit queue index at the queue's notification address.
        self.notify.write16(offset, queue).map_err(Error::from)?;
        Ok(())
    }

    fn wait_interrupt(&self, queue: u16, timeout: Option<Duration>) -> transport::Result<bool> {
        self.notify_offset(queue)?;
        match &self.wait {
            Wait::Poll(interval) => {
                if let Some(t) = timeout.filter(|t| t < interval) {
                    std::thread::sleep(t);
                    return Ok(false);
                }
                std::thread::sleep(*interval);
                Ok(true)
            }
            Wait::Intx(intx) => {
                let deadline = timeout.map(|t| Instant::now() + t);
                Ok(intx
                    .wait(queue, deadline, &|| self.ack())
                    .map_err(Error::from)?)
            }
        }
    }

    /// Resets the device, then sets ACKNOWLEDGE and DRIVER again and re-reads
    /// the features, so that the transport can be set up again.
    fn reset(&mut self) -> transport::Result<()> {
        Ok(self.init()?)
    }
}

impl Drop for PciTransport {
    /// Resets the device so that it stops using the memory, which may be freed.
    fn drop(&mut self) {
        if let Err(e) = self.device_reset() {
            log::error!("virtio-pci: reset on close failed: {e}");
        }
    }
}

/// The function's Interrupt Pin register (0: none, as under
/// cloud-hypervisor, whose functions offer MSI-X only, which
/// `uio_pci_generic` cannot deliver); 0 if the configuration space is too
/// short to hold it.
fn interrupt_pin(config: &[u8]) -> u8 {
    config.get(pci_header::INTERRUPT_PIN).copied().unwrap_or(0)
}
