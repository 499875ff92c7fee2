// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! vhost-user transport: this process plays the VMM and the guest.
//!
//! [`VhostUserTransport`] connects to a vhost-user backend socket, shares the
//! [`DmaMemory`] memfd with it (`SET_MEM_TABLE`), and sets up each virtqueue
//! with a kick and a call eventfd. Negotiation at connect time:
//! `SET_OWNER`, `GET_FEATURES`, `GET_PROTOCOL_FEATURES` /
//! `SET_PROTOCOL_FEATURES` (the offered subset of CONFIG, MQ, REPLY_ACK and
//! RESET_DEVICE, by default), `GET_QUEUE_NUM` (with MQ). When REPLY_ACK is
//! negotiated every request asks for an acknowledgement, so backend errors
//! surface at the request that caused them.
//!
//! The models of QEMU and cloud-hypervisor also acknowledge
//! INFLIGHT_SHMFD when the backend offers it, as those VMMs do; only
//! cloud-hypervisor's then uses it: it asks the backend for an inflight
//! region (`GET_INFLIGHT_FD`) when it starts the rings and holds none,
//! hands the region it holds back (`SET_INFLIGHT_FD`) each time it starts
//! them, on a new connection too, and forgets it when the driver resets the
//! device ([`FrontendModel::CloudHypervisor`], [`InflightRegion`]).
//!
//! vhost-user ring addresses are addresses in the frontend's address space;
//! the transport translates the guest-physical ring addresses it is given.
//!
//! How it starts and stops the rings follows a [`FrontendModel`]: its own
//! order, or the exact message sequences of QEMU's and cloud-hypervisor's
//! generic vhost-user devices, so that tests meet the daemon as those VMMs do.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use thiserror::Error;
use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserInflight};
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_accel_spec::MAX_REQUEST_QUEUES;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::memory::{DmaMemory, MemoryRegion};
use crate::transport::poll_readable;
use crate::transport::{self, Transport};
use crate::virtqueue::QueueAddresses;

/// Errors of the vhost-user transport.
#[derive(Debug, Error)]
pub enum Error {
    /// The socket could not be connected to.
    #[error("cannot connect to vhost-user socket {path}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A vhost-user request failed or was refused.
    #[error("vhost-user {request} failed")]
    Request {
        /// The request.
        request: &'static str,
        /// Cause.
        #[source]
        source: vhost::Error,
    },
    /// The backend does not offer `VHOST_USER_F_PROTOCOL_FEATURES`.
    #[error("backend does not offer VHOST_USER_F_PROTOCOL_FEATURES")]
    NoProtocolFeatures,
    /// The backend does not offer a protocol feature the transport needs.
    #[error("backend does not offer protocol feature {0}")]
    MissingProtocolFeature(&'static str),
    /// The backend reports more queues than a virtqueue index can name.
    #[error("backend reports {0} queues")]
    TooManyQueues(u64),
    /// An eventfd could not be created.
    #[error("cannot create an eventfd")]
    EventFd(#[source] io::Error),
    /// The kick eventfd could not be written.
    #[error("cannot kick virtqueue {queue}")]
    Kick {
        /// Virtqueue index.
        queue: u16,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Waiting on the call eventfd failed.
    #[error("cannot wait for an interrupt of virtqueue {queue}")]
    Wait {
        /// Virtqueue index.
        queue: u16,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A ring address is not backed by guest memory.
    #[error("ring of virtqueue {queue} at {gpa:#x} is not in guest memory")]
    RingAddress {
        /// Virtqueue index.
        queue: u16,
        /// Guest-physical address.
        gpa: u64,
    },
    /// A ring was named that the device core has not set up.
    #[error("virtqueue {0} is not set up")]
    NotSetUp(u16),
    /// `GET_VRING_BASE` answered an index a split ring cannot have.
    #[error("GET_VRING_BASE of virtqueue {queue} answered {base}")]
    BadBase {
        /// Virtqueue index.
        queue: u16,
        /// The answer.
        base: u32,
    },
    /// The configuration reply has the wrong size.
    #[error("GET_CONFIG returned {got} bytes, {expected} expected")]
    ConfigSize {
        /// Bytes asked for.
        expected: usize,
        /// Bytes received.
        got: usize,
    },
}

impl From<Error> for transport::Error {
    fn from(e: Error) -> Self {
        transport::Error::Backend(Box::new(e))
    }
}

/// Result of this module's operations.
pub type Result<T> = std::result::Result<T, Error>;

fn request(request: &'static str) -> impl FnOnce(vhost::Error) -> Error {
    move |source| Error::Request { request, source }
}

/// The transport feature bits cloud-hypervisor's generic vhost-user device
/// passes between driver and back-end (its `DEFAULT_VIRTIO_FEATURES`, v53):
/// INDIRECT_DESC, EVENT_IDX, VERSION_1, IN_ORDER, ORDER_PLATFORM,
/// NOTIFICATION_DATA, and vhost-user's PROTOCOL_FEATURES and LOG_ALL.
pub const CLOUD_HYPERVISOR_FEATURES: u64 = (1 << 28)
    | (1 << 29)
    | (1 << 32)
    | (1 << 35)
    | (1 << 36)
    | (1 << 38)
    | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    | VhostUserVirtioFeatures::LOG_ALL.bits();

/// Whose message sequences the transport sends to start and stop the rings
/// (spec §11.2 tells a reset from a pause by them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FrontendModel {
    /// This crate's own: `SET_FEATURES` and `SET_MEM_TABLE` at FEATURES_OK,
    /// each ring set up (`NUM`, `ADDR`, `BASE`, `CALL`, `KICK`, `ENABLE` 1) as
    /// the device core sets it up; a stop is `ENABLE` 0 and `GET_VRING_BASE`
    /// ring by ring, and a reset sends `RESET_DEVICE` after it when
    /// negotiated.
    #[default]
    Own,
    /// QEMU's generic vhost-user device (`vhost_dev_start` at DRIVER_OK):
    /// `SET_FEATURES`, `SET_MEM_TABLE`, per ring `NUM`, `BASE`, `ADDR`,
    /// `KICK`, `CALL`; then `ENABLE` 1 on every ring and `CALL` again on
    /// each. A stop (`vhost_dev_stop`): `ENABLE` 0 on every ring, then
    /// `GET_VRING_BASE` on each. It acknowledges INFLIGHT_SHMFD when offered
    /// (QEMU 10.0 acknowledges every protocol feature it knows) but never
    /// sends `GET_INFLIGHT_FD` or `SET_INFLIGHT_FD`: only its block and SCSI
    /// devices do.
    Qemu {
        /// Whether a reset then sends `RESET_DEVICE` (the project's QEMU
        /// patch); stock QEMU sends none.
        forwards_reset: bool,
    },
    /// cloud-hypervisor's generic vhost-user device (v53): the driver is
    /// offered only [`CLOUD_HYPERVISOR_FEATURES`] of the back-end's bits. At
    /// DRIVER_OK: `SET_FEATURES`, `SET_MEM_TABLE`, `NUM` on every ring; with
    /// INFLIGHT_SHMFD acknowledged, `GET_INFLIGHT_FD` if it holds no
    /// inflight region (`num_queues`: the rings set up; `queue_size`: the
    /// size of the first), keeping the region answered, then always
    /// `SET_INFLIGHT_FD` with the region it holds; then per ring `ADDR`,
    /// `BASE`, `CALL`, `KICK`; then `ENABLE` 1 on every ring. A stop:
    /// `ENABLE` 0 and `GET_VRING_BASE`, ring by ring. No `RESET_DEVICE`. The
    /// region outlives the connection (after a reconnection it sends
    /// `SET_INFLIGHT_FD` only, with the same region); a reset of the device
    /// by the driver drops it, so that the next start asks for one again.
    CloudHypervisor,
}

/// Connection options.
#[derive(Debug, Clone)]
pub struct VhostUserOptions {
    /// Size of every virtqueue the device core may set up (the backend's
    /// `--queue-size`; the vhost-user protocol has no way to ask for it).
    pub queue_size: u16,
    /// Protocol features to acknowledge, when offered.
    pub protocol_features: VhostUserProtocolFeatures,
    /// How long to retry connecting while the socket does not exist or refuses.
    pub connect_timeout: Duration,
    /// Whose message sequences to send.
    pub model: FrontendModel,
}

impl VhostUserOptions {
    /// The options of a VMM `model`, with the protocol features it
    /// acknowledges among ours (cloud-hypervisor does not know
    /// `RESET_DEVICE`), and INFLIGHT_SHMFD for both VMMs, which acknowledge
    /// it (only cloud-hypervisor's model then sends its messages).
    pub fn of(model: FrontendModel) -> Self {
        let defaults = VhostUserOptions::default();
        let inflight = VhostUserProtocolFeatures::INFLIGHT_SHMFD;
        let protocol_features = match model {
            FrontendModel::CloudHypervisor => {
                (defaults.protocol_features - VhostUserProtocolFeatures::RESET_DEVICE) | inflight
            }
            FrontendModel::Qemu { .. } => defaults.protocol_features | inflight,
            FrontendModel::Own => defaults.protocol_features,
        };
        VhostUserOptions {
            protocol_features,
            model,
            ..defaults
        }
    }
}

impl Default for VhostUserOptions {
    fn default() -> Self {
        VhostUserOptions {
            queue_size: 256,
            protocol_features: VhostUserProtocolFeatures::CONFIG
                | VhostUserProtocolFeatures::MQ
                | VhostUserProtocolFeatures::REPLY_ACK
                | VhostUserProtocolFeatures::RESET_DEVICE,
            connect_timeout: Duration::from_secs(5),
            model: FrontendModel::Own,
        }
    }
}

/// The messages that describe one ring to the back-end.
#[derive(Debug, Clone, Copy)]
enum RingMessage {
    Num,
    Addr,
    Base,
    Call,
    Kick,
}

/// A virtqueue the device core has set up.
#[derive(Debug)]
struct QueueEvents {
    /// Its ring addresses, guest-physical.
    addrs: QueueAddresses,
    kick: EventFd,
    call: EventFd,
    kicks: AtomicU64,
    interrupts: AtomicU64,
}

/// Notification counters of one queue, for benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Kicks the driver sent to the device.
    pub kicks: u64,
    /// Interrupts (used-buffer notifications) the driver has consumed.
    pub interrupts: u64,
}

/// An inflight region as cloud-hypervisor holds it: the file and the sizes
/// of a `GET_INFLIGHT_FD` answer, sent back as they are with
/// `SET_INFLIGHT_FD` (the front-end never maps it). Tests may put any file
/// and sizes in its place ([`VhostUserTransport::replace_inflight_region`]).
#[derive(Debug)]
pub struct InflightRegion {
    /// The region's file.
    pub file: File,
    /// Its size, as the back-end said.
    pub mmap_size: u64,
    /// Where it begins in the file, as the back-end said.
    pub mmap_offset: u64,
    /// The virtqueues it is for.
    pub num_queues: u16,
    /// Their size.
    pub queue_size: u16,
}

impl InflightRegion {
    fn message(&self) -> VhostUserInflight {
        VhostUserInflight {
            mmap_size: self.mmap_size,
            mmap_offset: self.mmap_offset,
            num_queues: self.num_queues,
            queue_size: self.queue_size,
        }
    }
}

/// A vhost-user frontend session with one backend.
pub struct VhostUserTransport {
    frontend: Frontend,
    memory: DmaMemory,
    backend_features: u64,
    protocol_features: VhostUserProtocolFeatures,
    num_queues: u16,
    queue_size: u16,
    queues: Vec<Option<QueueEvents>>,
    model: FrontendModel,
    /// The features the driver accepted, for models that send them at DRIVER_OK.
    driver_features: u64,
    /// The inflight region held (cloud-hypervisor's model), across
    /// reconnections, until the driver resets the device.
    inflight: Option<InflightRegion>,
}

/// Virtio feature bit that vhost-user borrows for protocol features.
const PROTOCOL_FEATURES_BIT: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

fn connect_socket(path: &Path, timeout: Duration) -> Result<UnixStream> {
    let deadline = Instant::now() + timeout;
    loop {
        match UnixStream::connect(path) {
            Ok(stream) => return Ok(stream),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(source) => {
                return Err(Error::Connect {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    }
}

/// Describes a region of the memfd `fd` to the backend.
// With vhost's `xen` feature the struct has more fields, hence the update syntax.
#[allow(clippy::needless_update)]
fn region_info(r: &MemoryRegion, fd: RawFd) -> VhostUserMemoryRegionInfo {
    VhostUserMemoryRegionInfo {
        guest_phys_addr: r.gpa,
        memory_size: r.size,
        userspace_addr: r.host_addr,
        mmap_offset: r.file_offset,
        mmap_handle: fd,
        ..Default::default()
    }
}

impl std::fmt::Debug for VhostUserTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostUserTransport")
            .field(
                "backend_features",
                &format_args!("{:#x}", self.backend_features),
            )
            .field("protocol_features", &self.protocol_features)
            .field("num_queues", &self.num_queues)
            .field("queue_size", &self.queue_size)
            .field("model", &self.model)
            .field("inflight", &self.inflight)
            .finish_non_exhaustive()
    }
}

impl VhostUserTransport {
    /// Connects with default [`VhostUserOptions`].
    pub fn connect(socket_path: impl AsRef<Path>, memory: &DmaMemory) -> Result<Self> {
        Self::connect_with(socket_path, memory, &VhostUserOptions::default())
    }

    /// Connects to the backend at `socket_path` (retrying while it does not
    /// listen yet) and negotiates protocol features.
    pub fn connect_with(
        socket_path: impl AsRef<Path>,
        memory: &DmaMemory,
        options: &VhostUserOptions,
    ) -> Result<Self> {
        let stream = connect_socket(socket_path.as_ref(), options.connect_timeout)?;
        Self::from_stream(stream, memory, options)
    }

    /// Negotiates over an already connected socket.
    pub fn from_stream(
        stream: UnixStream,
        memory: &DmaMemory,
        options: &VhostUserOptions,
    ) -> Result<Self> {
        let max_queues = u64::from(MAX_REQUEST_QUEUES) + 1;
        let mut frontend = Frontend::from_stream(stream, max_queues);
        frontend.set_owner().map_err(request("SET_OWNER"))?;
        let backend_features = frontend.get_features().map_err(request("GET_FEATURES"))?;
        if backend_features & PROTOCOL_FEATURES_BIT == 0 {
            return Err(Error::NoProtocolFeatures);
        }
        let offered = frontend
            .get_protocol_features()
            .map_err(request("GET_PROTOCOL_FEATURES"))?;
        let acked = offered & options.protocol_features;
        frontend
            .set_protocol_features(acked)
            .map_err(request("SET_PROTOCOL_FEATURES"))?;
        if !acked.contains(VhostUserProtocolFeatures::CONFIG) {
            return Err(Error::MissingProtocolFeature("CONFIG"));
        }
        let num_queues = if acked.contains(VhostUserProtocolFeatures::MQ) {
            let n = frontend.get_queue_num().map_err(request("GET_QUEUE_NUM"))?;
            u16::try_from(n)
                .ok()
                .filter(|&n| u64::from(n) <= max_queues)
                .ok_or(Error::TooManyQueues(n))?
        } else {
            // Without MQ the backend cannot say; let the device configuration decide.
            MAX_REQUEST_QUEUES + 1
        };
        if acked.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        log::debug!(
            "vhost-user: features {backend_features:#x}, protocol features {acked:?}, {num_queues} queues"
        );
        Ok(VhostUserTransport {
            frontend,
            memory: memory.clone(),
            backend_features,
            protocol_features: acked,
            num_queues,
            queue_size: options.queue_size,
            queues: (0..num_queues).map(|_| None).collect(),
            model: options.model,
            driver_features: 0,
            inflight: None,
        })
    }

    /// The vhost-user frontend, for raw protocol requests in tests.
    pub fn frontend(&mut self) -> &mut Frontend {
        &mut self.frontend
    }

    /// Feature bits exactly as `GET_FEATURES` returned them.
    pub fn backend_features(&self) -> u64 {
        self.backend_features
    }

    /// Protocol features acknowledged.
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.protocol_features
    }

    /// The inflight region the transport holds: what `GET_INFLIGHT_FD`
    /// answered (cloud-hypervisor's model, INFLIGHT_SHMFD acknowledged),
    /// unless a test replaced it.
    pub fn inflight_region(&self) -> Option<&InflightRegion> {
        self.inflight.as_ref()
    }

    /// Puts `region` in place of the inflight region held (`None`: none,
    /// so that the next start of the rings asks for one), returning the one
    /// held before. The model sends the new one with `SET_INFLIGHT_FD` the
    /// next time it starts the rings ([`VhostUserTransport::start_rings`],
    /// [`VhostUserTransport::reconnect`]), whatever it is: tests hand the
    /// back-end bogus regions so.
    pub fn replace_inflight_region(
        &mut self,
        region: Option<InflightRegion>,
    ) -> Option<InflightRegion> {
        std::mem::replace(&mut self.inflight, region)
    }

    /// The call eventfd of virtqueue `queue`, once set up.
    pub fn call_event(&self, queue: u16) -> Option<&EventFd> {
        self.events(queue).ok().map(|e| &e.call)
    }

    /// The kick eventfd of virtqueue `queue`, once set up.
    pub fn kick_event(&self, queue: u16) -> Option<&EventFd> {
        self.events(queue).ok().map(|e| &e.kick)
    }

    /// Sends the whole memory table of the transport's [`DmaMemory`] again.
    pub fn set_mem_table(&self) -> Result<()> {
        self.set_mem_table_regions(self.memory.regions())
    }

    /// Sends a memory table of exactly `regions` (backed by the memfd at their
    /// file offsets), e.g. a subset of the memory to unplug a region, or
    /// deliberately wrong regions for fault tests.
    pub fn set_mem_table_regions(&self, regions: &[MemoryRegion]) -> Result<()> {
        let fd = self.memory.file().as_raw_fd();
        let infos: Vec<VhostUserMemoryRegionInfo> =
            regions.iter().map(|r| region_info(r, fd)).collect();
        self.frontend
            .set_mem_table(&infos)
            .map_err(request("SET_MEM_TABLE"))?;
        Ok(())
    }

    /// Closes the connection; the backend sees a disconnect.
    pub fn disconnect(self) {
        drop(self);
    }

    /// Notification counters of `queue` (kicks sent, interrupts consumed).
    pub fn queue_stats(&self, queue: u16) -> Option<QueueStats> {
        let events = self.queues.get(usize::from(queue))?.as_ref()?;
        Some(QueueStats {
            kicks: events.kicks.load(Ordering::Relaxed),
            interrupts: events.interrupts.load(Ordering::Relaxed),
        })
    }

    fn events(&self, queue: u16) -> transport::Result<&QueueEvents> {
        self.queues
            .get(usize::from(queue))
            .ok_or(transport::Error::InvalidQueue(queue))?
            .as_ref()
            .ok_or(transport::Error::QueueNotReady(queue))
    }

    fn host_addr(&self, queue: u16, gpa: u64) -> Result<u64> {
        self.memory
            .host_address(gpa)
            .ok_or(Error::RingAddress { queue, gpa })
    }
}

/// Ring setup and teardown in the order of the transport's [`FrontendModel`].
impl VhostUserTransport {
    /// The virtqueues set up, in index order.
    fn set_up(&self) -> Vec<u16> {
        (0u16..)
            .zip(&self.queues)
            .filter_map(|(index, queue)| queue.as_ref().map(|_| index))
            .collect()
    }

    fn send_features_and_memory(&self) -> Result<()> {
        self.frontend
            .set_features(self.driver_features | PROTOCOL_FEATURES_BIT)
            .map_err(request("SET_FEATURES"))?;
        self.set_mem_table()
    }

    fn ring(&self, queue: u16) -> Result<&QueueEvents> {
        self.queues
            .get(usize::from(queue))
            .and_then(Option::as_ref)
            .ok_or(Error::NotSetUp(queue))
    }

    /// Describes virtqueue `queue` to the back-end, to start at `base`:
    /// every message but `ENABLE`, in the model's order (cloud-hypervisor
    /// sends `NUM` for every ring before, [`VhostUserTransport::start_rings`]).
    fn send_ring(&self, queue: u16, base: u16) -> Result<()> {
        use RingMessage::{Addr, Base, Call, Kick, Num};
        let order: &[RingMessage] = match self.model {
            FrontendModel::Own => &[Num, Addr, Base, Call, Kick],
            FrontendModel::Qemu { .. } => &[Num, Base, Addr, Kick, Call],
            FrontendModel::CloudHypervisor => &[Addr, Base, Call, Kick],
        };
        order
            .iter()
            .try_for_each(|&message| self.send_ring_message(queue, message, base))
    }

    fn send_ring_message(&self, queue: u16, message: RingMessage, base: u16) -> Result<()> {
        let ring = self.ring(queue)?;
        let (f, index) = (&self.frontend, usize::from(queue));
        match message {
            RingMessage::Num => f
                .set_vring_num(index, ring.addrs.size)
                .map_err(request("SET_VRING_NUM")),
            RingMessage::Addr => f
                .set_vring_addr(index, &self.vring_config(queue, &ring.addrs)?)
                .map_err(request("SET_VRING_ADDR")),
            RingMessage::Base => f
                .set_vring_base(index, base)
                .map_err(request("SET_VRING_BASE")),
            RingMessage::Call => f
                .set_vring_call(index, &ring.call)
                .map_err(request("SET_VRING_CALL")),
            RingMessage::Kick => f
                .set_vring_kick(index, &ring.kick)
                .map_err(request("SET_VRING_KICK")),
        }
    }

    /// `SET_VRING_ADDR`'s description of a ring: addresses in this process.
    fn vring_config(&self, queue: u16, addrs: &QueueAddresses) -> Result<VringConfigData> {
        Ok(VringConfigData {
            queue_max_size: addrs.size,
            queue_size: addrs.size,
            flags: 0,
            desc_table_addr: self.host_addr(queue, addrs.desc)?,
            used_ring_addr: self.host_addr(queue, addrs.used)?,
            avail_ring_addr: self.host_addr(queue, addrs.avail)?,
            log_addr: None,
        })
    }

    fn enable_ring(&mut self, queue: u16, enable: bool) -> Result<()> {
        self.frontend
            .set_vring_enable(usize::from(queue), enable)
            .map_err(request("SET_VRING_ENABLE"))
    }

    /// cloud-hypervisor's inflight messages, between `NUM` and the rest of
    /// each ring: `GET_INFLIGHT_FD` unless a region is held, then
    /// `SET_INFLIGHT_FD` with the one held. Nothing unless INFLIGHT_SHMFD
    /// was acknowledged on this connection, or no ring is set up.
    fn send_inflight(&mut self, rings: &[u16]) -> Result<()> {
        if !self
            .protocol_features
            .contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD)
        {
            return Ok(());
        }
        let Some(&first) = rings.first() else {
            return Ok(());
        };
        if self.inflight.is_none() {
            let asked = VhostUserInflight {
                mmap_size: 0,
                mmap_offset: 0,
                // At most MAX_REQUEST_QUEUES + 1 rings are ever set up.
                num_queues: u16::try_from(rings.len()).unwrap_or(u16::MAX),
                queue_size: self.ring(first)?.addrs.size,
            };
            let (info, file) = self
                .frontend
                .get_inflight_fd(&asked)
                .map_err(request("GET_INFLIGHT_FD"))?;
            self.inflight = Some(InflightRegion {
                file,
                mmap_size: info.mmap_size,
                mmap_offset: info.mmap_offset,
                num_queues: info.num_queues,
                queue_size: info.queue_size,
            });
        }
        let Some(region) = &self.inflight else {
            return Ok(());
        };
        let (message, fd) = (region.message(), region.file.as_raw_fd());
        self.frontend
            .set_inflight_fd(&message, fd)
            .map_err(request("SET_INFLIGHT_FD"))
    }

    /// Starts every virtqueue set up, at `bases` (one per ring, in index
    /// order), as the model does at DRIVER_OK or when it resumes a paused
    /// VM: with the features and the memory table first, except for the
    /// transport's own model, which sent them at FEATURES_OK; for
    /// cloud-hypervisor, with the inflight region after the rings' `NUM`.
    pub fn start_rings(&mut self, bases: &[u16]) -> Result<()> {
        let rings = self.set_up();
        if self.model != FrontendModel::Own {
            self.send_features_and_memory()?;
        }
        if self.model == FrontendModel::CloudHypervisor {
            for &queue in &rings {
                self.send_ring_message(queue, RingMessage::Num, 0)?;
            }
            self.send_inflight(&rings)?;
        }
        for (&queue, &base) in rings.iter().zip(bases) {
            self.send_ring(queue, base)?;
            if self.model == FrontendModel::Own {
                self.enable_ring(queue, true)?;
            }
        }
        if self.model != FrontendModel::Own {
            for &queue in &rings {
                self.enable_ring(queue, true)?;
            }
        }
        if let FrontendModel::Qemu { .. } = self.model {
            // QEMU unmasks the guest notifiers: the call eventfds once more.
            for &queue in &rings {
                self.send_ring_message(queue, RingMessage::Call, 0)?;
            }
        }
        Ok(())
    }

    /// Connects again to the back-end at `socket_path` after the connection
    /// broke (its process ended, and it or its supervisor listens again), as
    /// the model's VMM does (spec §11): the handshake of
    /// [`VhostUserTransport::connect_with`] (retrying while nothing listens
    /// yet), then the features, the memory table and every ring set up,
    /// started where the model starts it: QEMU and this crate's model at the
    /// ring's used index (QEMU's `GET_VRING_BASE` on the broken connection
    /// failed, so it rewinds to what the guest has seen completed),
    /// cloud-hypervisor v53 at its available index, handing back the
    /// inflight region it holds (`SET_INFLIGHT_FD` only). Returns those
    /// indexes, in ring order. The driver's rings and memory stay as they
    /// are.
    pub fn reconnect(
        &mut self,
        socket_path: impl AsRef<Path>,
        options: &VhostUserOptions,
    ) -> Result<Vec<u16>> {
        let stream = connect_socket(socket_path.as_ref(), options.connect_timeout)?;
        let fresh = Self::from_stream(stream, &self.memory, options)?;
        self.frontend = fresh.frontend;
        self.backend_features = fresh.backend_features;
        self.protocol_features = fresh.protocol_features;
        let bases = self
            .set_up()
            .into_iter()
            .map(|queue| self.resume_index(queue))
            .collect::<Result<Vec<u16>>>()?;
        if self.model == FrontendModel::Own {
            self.send_features_and_memory()?;
        }
        self.start_rings(&bases)?;
        Ok(bases)
    }

    /// Where the model's VMM starts ring `queue` again after reconnecting:
    /// the `idx` of its used ring, or of its available ring for
    /// cloud-hypervisor, read from guest memory.
    fn resume_index(&self, queue: u16) -> Result<u16> {
        let addrs = self.ring(queue)?.addrs;
        let ring = match self.model {
            FrontendModel::CloudHypervisor => addrs.avail,
            FrontendModel::Own | FrontendModel::Qemu { .. } => addrs.used,
        };
        // Both rings begin with `flags: le16, idx: le16`.
        let mut idx = [0u8; 2];
        self.memory
            .read_at(ring + 2, &mut idx)
            .map_err(|_| Error::RingAddress { queue, gpa: ring })?;
        Ok(u16::from_le_bytes(idx))
    }

    /// Stops every virtqueue set up, as the model does when the driver
    /// resets the device or the VM pauses; returns where each ring stopped
    /// (`GET_VRING_BASE`), in index order. The rings stay described, so
    /// that [`VhostUserTransport::start_rings`] can start them again.
    pub fn stop_rings(&mut self) -> Result<Vec<u16>> {
        let rings = self.set_up();
        if let FrontendModel::Qemu { .. } = self.model {
            for &queue in &rings {
                self.enable_ring(queue, false)?;
            }
        }
        let mut bases = Vec::with_capacity(rings.len());
        for &queue in &rings {
            if !matches!(self.model, FrontendModel::Qemu { .. }) {
                self.enable_ring(queue, false)?;
            }
            let base = self
                .frontend
                .get_vring_base(usize::from(queue))
                .map_err(request("GET_VRING_BASE"))?;
            // A split ring's index is 16 bits; the message carries 32.
            bases.push(u16::try_from(base).map_err(|_| Error::BadBase { queue, base })?);
        }
        Ok(bases)
    }
}

impl Transport for VhostUserTransport {
    fn memory(&self) -> &DmaMemory {
        &self.memory
    }

    fn device_features(&self) -> u64 {
        let passed = match self.model {
            FrontendModel::CloudHypervisor => CLOUD_HYPERVISOR_FEATURES,
            FrontendModel::Own | FrontendModel::Qemu { .. } => u64::MAX,
        };
        self.backend_features & passed & !PROTOCOL_FEATURES_BIT
    }

    fn set_driver_features(&mut self, features: u64) -> transport::Result<()> {
        self.driver_features = features;
        if self.model == FrontendModel::Own {
            self.send_features_and_memory()?;
        }
        Ok(())
    }

    fn max_queues(&self) -> u16 {
        self.num_queues
    }

    fn max_queue_size(&self, queue: u16) -> transport::Result<u16> {
        if queue >= self.num_queues {
            return Err(transport::Error::InvalidQueue(queue));
        }
        Ok(self.queue_size)
    }

    fn read_config(&mut self, offset: u32, buf: &mut [u8]) -> transport::Result<()> {
        let size = u32::try_from(buf.len()).map_err(|_| Error::ConfigSize {
            expected: buf.len(),
            got: 0,
        })?;
        let zeros = vec![0u8; buf.len()];
        let (_, payload) = self
            .frontend
            .get_config(offset, size, VhostUserConfigFlags::empty(), &zeros)
            .map_err(request("GET_CONFIG"))?;
        if payload.len() != buf.len() {
            return Err(Error::ConfigSize {
                expected: buf.len(),
                got: payload.len(),
            }
            .into());
        }
        buf.copy_from_slice(&payload);
        Ok(())
    }

    fn setup_queue(&mut self, queue: u16, addrs: &QueueAddresses) -> transport::Result<()> {
        if queue >= self.num_queues {
            return Err(transport::Error::InvalidQueue(queue));
        }
        // Checked now, so that a ring outside the memory fails at its setup.
        self.vring_config(queue, addrs)?;
        self.queues[usize::from(queue)] = Some(QueueEvents {
            addrs: *addrs,
            kick: EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?,
            call: EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?,
            kicks: AtomicU64::new(0),
            interrupts: AtomicU64::new(0),
        });
        if self.model == FrontendModel::Own {
            self.send_ring(queue, 0)?;
            self.enable_ring(queue, true)?;
        }
        Ok(())
    }

    fn activate(&mut self) -> transport::Result<()> {
        if self.model == FrontendModel::Own {
            return Ok(());
        }
        let zeros = vec![0; self.set_up().len()];
        Ok(self.start_rings(&zeros)?)
    }

    fn notify(&self, queue: u16) -> transport::Result<()> {
        let events = self.events(queue)?;
        events
            .kick
            .write(1)
            .map_err(|source| Error::Kick { queue, source })?;
        events.kicks.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn wait_interrupt(&self, queue: u16, timeout: Option<Duration>) -> transport::Result<bool> {
        let call = &self.events(queue)?.call;
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let ready = poll_readable(call.as_raw_fd(), deadline)
                .map_err(|source| Error::Wait { queue, source })?;
            if !ready {
                return Ok(false);
            }
            match call.read() {
                Ok(count) => {
                    // The eventfd adds up notifications sent while nobody waited.
                    self.events(queue)?
                        .interrupts
                        .fetch_add(count, Ordering::Relaxed);
                    return Ok(true);
                }
                // Another thread consumed it first: keep waiting.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(source) => return Err(Error::Wait { queue, source }.into()),
            }
        }
    }

    fn reset(&mut self) -> transport::Result<()> {
        self.stop_rings()?;
        self.queues.iter_mut().for_each(|queue| *queue = None);
        let sends_reset = match self.model {
            FrontendModel::Own => true,
            FrontendModel::Qemu { forwards_reset } => forwards_reset,
            FrontendModel::CloudHypervisor => {
                // Its device reset drops the worker that holds the region.
                self.inflight = None;
                false
            }
        };
        if sends_reset
            && self
                .protocol_features
                .contains(VhostUserProtocolFeatures::RESET_DEVICE)
        {
            self.frontend
                .reset_device()
                .map_err(request("RESET_DEVICE"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_times_out_and_wakes() {
        let fd = EventFd::new(EFD_NONBLOCK).unwrap();
        let start = Instant::now();
        let deadline = Some(start + Duration::from_millis(30));
        assert!(!poll_readable(fd.as_raw_fd(), deadline).unwrap());
        assert!(start.elapsed() >= Duration::from_millis(30));
        fd.write(1).unwrap();
        assert!(poll_readable(fd.as_raw_fd(), deadline).unwrap());
    }

    #[test]
    fn connect_to_missing_socket_fails_after_timeout() {
        let mem = DmaMemory::new(1 << 16).unwrap();
        let options = VhostUserOptions {
            connect_timeout: Duration::from_millis(50),
            ..Default::default()
        };
        let err = VhostUserTransport::connect_with("/nonexistent/accel.sock", &mem, &options)
            .unwrap_err();
        assert!(matches!(err, Error::Connect { .. }));
    }

    use std::io::{Read, Write};
    use std::os::unix::fs::MetadataExt;
    use std::sync::{Arc, Mutex};
    use vhost::vhost_user::message::FrontendReq;
    use vmm_sys_util::sock_ctrl_msg::ScmSocket;

    /// A message a [`fake_backend`] received.
    #[derive(Debug, Clone)]
    struct Received {
        request: u32,
        body: Vec<u8>,
        /// The file that came with it, as (device, inode).
        file: Option<(u64, u64)>,
        /// For `GET_INFLIGHT_FD`: the file it answered with.
        answered: Option<(u64, u64)>,
    }

    type Log = Arc<Mutex<Vec<Received>>>;

    fn file_id(file: &File) -> (u64, u64) {
        let meta = file.metadata().unwrap();
        (meta.dev(), meta.ino())
    }

    const INFLIGHT_SIZE: u64 = 4096;

    /// Plays a back-end on `stream` until the front-end hangs up: offers
    /// CONFIG, MQ (3 queues), REPLY_ACK, and INFLIGHT_SHMFD if `inflight`;
    /// answers `GET_INFLIGHT_FD` with a new memfd of [`INFLIGHT_SIZE`]
    /// bytes each time; acknowledges the rest; logs every message in `log`
    /// before it answers.
    fn fake_backend(stream: UnixStream, inflight: bool, log: Log) {
        let mut stream = stream;
        loop {
            let mut header = [0u8; 12];
            let (n, file) = stream.recv_with_fd(&mut header).unwrap();
            if n == 0 {
                return;
            }
            stream.read_exact(&mut header[n..]).unwrap();
            let word = |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().unwrap());
            let (request, flags, size) = (word(0), word(4), word(8));
            let mut body = vec![0u8; size as usize];
            stream.read_exact(&mut body).unwrap();
            let mut received = Received {
                request,
                body: body.clone(),
                file: file.as_ref().map(file_id),
                answered: None,
            };
            let mut given = None;
            let reply: Option<Vec<u8>> = match request {
                r if r == FrontendReq::GET_FEATURES as u32 => Some(
                    ((1u64 << 32) | PROTOCOL_FEATURES_BIT)
                        .to_le_bytes()
                        .to_vec(),
                ),
                r if r == FrontendReq::GET_PROTOCOL_FEATURES as u32 => {
                    let mut offered = VhostUserProtocolFeatures::CONFIG
                        | VhostUserProtocolFeatures::MQ
                        | VhostUserProtocolFeatures::REPLY_ACK;
                    if inflight {
                        offered |= VhostUserProtocolFeatures::INFLIGHT_SHMFD;
                    }
                    Some(offered.bits().to_le_bytes().to_vec())
                }
                r if r == FrontendReq::GET_QUEUE_NUM as u32 => Some(3u64.to_le_bytes().to_vec()),
                // VhostUserVringState: the index, then the base.
                r if r == FrontendReq::GET_VRING_BASE as u32 => {
                    Some([&body[..4], &[0u8; 4][..]].concat())
                }
                r if r == FrontendReq::GET_INFLIGHT_FD as u32 => {
                    // A memfd of its own for each answer.
                    let region = DmaMemory::new(INFLIGHT_SIZE as usize)
                        .unwrap()
                        .file()
                        .try_clone()
                        .unwrap();
                    received.answered = Some(file_id(&region));
                    // mmap_size, mmap_offset, then num_queues and queue_size echoed.
                    let mut reply = INFLIGHT_SIZE.to_le_bytes().to_vec();
                    reply.extend_from_slice(&0u64.to_le_bytes());
                    reply.extend_from_slice(&body[16..20]);
                    reply.resize(body.len(), 0);
                    given = Some(region);
                    Some(reply)
                }
                _ if flags & VhostUserHeaderFlag::NEED_REPLY.bits() != 0 => {
                    Some(0u64.to_le_bytes().to_vec())
                }
                _ => None,
            };
            log.lock().unwrap().push(received);
            if let Some(reply) = reply {
                let size = u32::try_from(reply.len()).unwrap();
                let mut message = request.to_le_bytes().to_vec();
                // Version 1, a reply.
                message.extend_from_slice(&(0x1u32 | 0x4).to_le_bytes());
                message.extend_from_slice(&size.to_le_bytes());
                message.extend_from_slice(&reply);
                match &given {
                    Some(region) => {
                        stream
                            .send_with_fd(&message[..], region.as_raw_fd())
                            .unwrap();
                    }
                    None => stream.write_all(&message).unwrap(),
                }
            }
        }
    }

    /// A transport of `model` connected to a new [`fake_backend`], with
    /// three rings of 16 set up, and the back-end's log.
    fn fake_transport(
        model: FrontendModel,
        inflight: bool,
        memory: &DmaMemory,
    ) -> (VhostUserTransport, Log) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let log = Log::default();
        let backend_log = Arc::clone(&log);
        std::thread::spawn(move || fake_backend(theirs, inflight, backend_log));
        let options = VhostUserOptions::of(model);
        let mut transport = VhostUserTransport::from_stream(ours, memory, &options).unwrap();
        set_up_rings(&mut transport, memory);
        (transport, log)
    }

    fn set_up_rings(transport: &mut VhostUserTransport, memory: &DmaMemory) {
        transport.set_driver_features(1 << 32).unwrap();
        for queue in 0..3 {
            let gpa = memory.alloc_pages(4096).unwrap().gpa();
            let addrs = QueueAddresses {
                size: 16,
                desc: gpa,
                avail: gpa + 0x400,
                used: gpa + 0x800,
            };
            transport.setup_queue(queue, &addrs).unwrap();
        }
    }

    /// The messages logged since the last call, by request code.
    fn drain(log: &Log) -> Vec<Received> {
        std::mem::take(&mut *log.lock().unwrap())
    }

    fn codes(messages: &[Received]) -> Vec<u32> {
        messages.iter().map(|m| m.request).collect()
    }

    fn only(messages: &[Received], request: FrontendReq) -> Vec<Received> {
        messages
            .iter()
            .filter(|m| m.request == request as u32)
            .cloned()
            .collect()
    }

    #[test]
    fn cloud_hypervisor_asks_for_an_inflight_region_once_and_hands_it_back() {
        use FrontendReq as R;
        let memory = DmaMemory::new(1 << 20).unwrap();
        let (mut transport, log) = fake_transport(FrontendModel::CloudHypervisor, true, &memory);
        assert!(transport
            .protocol_features()
            .contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD));
        drain(&log);
        transport.activate().unwrap();
        let started = drain(&log);
        let mut expected = vec![R::SET_FEATURES, R::SET_MEM_TABLE];
        expected.extend([R::SET_VRING_NUM; 3]);
        expected.extend([R::GET_INFLIGHT_FD, R::SET_INFLIGHT_FD]);
        for _ in 0..3 {
            expected.extend([
                R::SET_VRING_ADDR,
                R::SET_VRING_BASE,
                R::SET_VRING_CALL,
                R::SET_VRING_KICK,
            ]);
        }
        expected.extend([R::SET_VRING_ENABLE; 3]);
        let expected: Vec<u32> = expected.into_iter().map(|r| r as u32).collect();
        assert_eq!(codes(&started), expected);
        // GET: mmap_size and mmap_offset 0, 3 queues of 16.
        let get = &only(&started, R::GET_INFLIGHT_FD)[0];
        assert_eq!(get.body[..16], [0; 16]);
        assert_eq!(get.body[16..20], [3, 0, 16, 0]);
        // SET: the answer's sizes and file, as they came.
        let set = &only(&started, R::SET_INFLIGHT_FD)[0];
        assert_eq!(set.body[..8], INFLIGHT_SIZE.to_le_bytes());
        assert_eq!(set.body[8..20], [0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 16, 0]);
        let region = get.answered.unwrap();
        assert_eq!(set.file, Some(region));
        let held = transport.inflight_region().unwrap();
        assert_eq!(file_id(&held.file), region);
        assert_eq!(
            (
                held.mmap_size,
                held.mmap_offset,
                held.num_queues,
                held.queue_size
            ),
            (INFLIGHT_SIZE, 0, 3, 16)
        );

        // A pause and a resume: SET only, the same region.
        let bases = transport.stop_rings().unwrap();
        transport.start_rings(&bases).unwrap();
        let resumed = drain(&log);
        assert!(only(&resumed, R::GET_INFLIGHT_FD).is_empty());
        let sets = only(&resumed, R::SET_INFLIGHT_FD);
        assert_eq!(sets.len(), 1);
        assert_eq!(sets[0].file, Some(region));

        // A new connection (a restarted back-end): SET only, the same region.
        let dir =
            std::env::temp_dir().join(format!("accel-driver-inflight-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("backend.sock");
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let second = Log::default();
        let second_log = Arc::clone(&second);
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            fake_backend(stream, true, second_log);
        });
        let options = VhostUserOptions::of(FrontendModel::CloudHypervisor);
        transport.reconnect(&path, &options).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let reconnected = drain(&second);
        assert!(only(&reconnected, R::GET_INFLIGHT_FD).is_empty());
        let sets = only(&reconnected, R::SET_INFLIGHT_FD);
        assert_eq!(sets.len(), 1);
        assert_eq!(sets[0].file, Some(region));
        let position = |r: R| reconnected.iter().position(|m| m.request == r as u32);
        assert!(position(R::SET_VRING_NUM) < position(R::SET_INFLIGHT_FD));
        assert!(position(R::SET_INFLIGHT_FD) < position(R::SET_VRING_ADDR));

        // A reset by the driver drops the region: the next start asks anew.
        transport.reset().unwrap();
        assert!(transport.inflight_region().is_none());
        set_up_rings(&mut transport, &memory);
        drain(&second);
        transport.activate().unwrap();
        let restarted = drain(&second);
        let get = &only(&restarted, R::GET_INFLIGHT_FD)[0];
        let sets = only(&restarted, R::SET_INFLIGHT_FD);
        assert_eq!(sets.len(), 1);
        assert_eq!(sets[0].file, get.answered);
        assert_ne!(get.answered, Some(region));
    }

    #[test]
    fn a_replaced_inflight_region_is_sent_as_it_is() {
        let memory = DmaMemory::new(1 << 20).unwrap();
        let (mut transport, log) = fake_transport(FrontendModel::CloudHypervisor, true, &memory);
        let null = File::open("/dev/null").unwrap();
        let null_id = file_id(&null);
        let bogus = InflightRegion {
            file: null,
            mmap_size: 12345,
            mmap_offset: 8,
            num_queues: 7,
            queue_size: 9,
        };
        assert!(transport.replace_inflight_region(Some(bogus)).is_none());
        transport.activate().unwrap();
        let started = drain(&log);
        assert!(only(&started, FrontendReq::GET_INFLIGHT_FD).is_empty());
        let set = &only(&started, FrontendReq::SET_INFLIGHT_FD)[0];
        assert_eq!(set.file, Some(null_id));
        assert_eq!(set.body[..8], 12345u64.to_le_bytes());
        assert_eq!(set.body[8..16], 8u64.to_le_bytes());
        assert_eq!(set.body[16..20], [7, 0, 9, 0]);
        let old = transport.replace_inflight_region(None).unwrap();
        assert_eq!(file_id(&old.file), null_id);
    }

    #[test]
    fn qemu_acknowledges_inflight_but_never_sends_it_and_nobody_sends_it_unoffered() {
        let qemu = FrontendModel::Qemu {
            forwards_reset: false,
        };
        for (model, offered) in [
            (qemu, true),
            (FrontendModel::Own, true),
            (FrontendModel::CloudHypervisor, false),
        ] {
            let memory = DmaMemory::new(1 << 20).unwrap();
            let (mut transport, log) = fake_transport(model, offered, &memory);
            assert_eq!(
                transport
                    .protocol_features()
                    .contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD),
                offered && model != FrontendModel::Own,
                "{model:?}"
            );
            transport.activate().unwrap();
            let bases = transport.stop_rings().unwrap();
            transport.start_rings(&bases).unwrap();
            transport.reset().unwrap();
            let sent = drain(&log);
            assert!(sent
                .iter()
                .all(|m| m.request != FrontendReq::GET_INFLIGHT_FD as u32
                    && m.request != FrontendReq::SET_INFLIGHT_FD as u32));
            assert!(
                sent.iter()
                    .any(|m| m.request == FrontendReq::SET_VRING_ENABLE as u32),
                "{model:?}"
            );
            assert!(transport.inflight_region().is_none());
        }
    }
}
