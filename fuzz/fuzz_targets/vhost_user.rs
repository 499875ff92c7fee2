// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Sequences of vhost-user messages into the daemon's own connection code:
//! `vhost_user::Connection` (the daemon's vhost-user request handler and
//! the worker of its rings, with the accelerator backend), accepted on a
//! listening socket as `server.rs` does, with a fresh `AccelBackend` per input. The harness is
//! the VMM: it writes each message (with its descriptors, SCM_RIGHTS) on
//! the connection, reads the reply when one is due, and as the guest lays
//! out rings in memfd-backed guest memory and kicks them.
//!
//! Input (little-endian, zeros once it ends): a setup byte (bits 0-1:
//! 1 to 4 request queues; bits 2-3: the tenant's queue size, 64 << n), a
//! byte whose value modulo 4 is the gap in pages between the two guest
//! memory regions, then up to 64 steps as `vhost_user::Step::read` reads
//! them (a tag byte, bit 7 NEED_REPLY, then the action's fields).
//!
//! Checks: no panic, no ASan report, no hang (libFuzzer's timeout), and
//! every message either gets a well-formed reply where one is due (GET_*;
//! an acknowledgement when REPLY_ACK is negotiated and NEED_REPLY set; after
//! a raw message, the reply to a probe) or ends the connection, as
//! the daemon does after an error; no reply comes that was not
//! asked for; an error acknowledgement is followed by the end of the
//! connection; a memory table or an added region that its file does not
//! cover is refused; the answers to GET_FEATURES, GET_PROTOCOL_FEATURES,
//! GET_QUEUE_NUM, GET_VRING_BASE and GET_CONFIG say what the back-end
//! offers and echo the request; once the connection is over, its threads
//! are joined, nothing holds the backend any more, and no descriptor is
//! left open.

#![no_main]

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::Listener;
use vhost_user_accel::config::{SocketSource, TenantConfig};
use vhost_user_accel::device::TenantState;
use vhost_user_accel::engine::software::SoftwareEngine;
use vhost_user_accel::engine::Engine;
use vhost_user_accel::vhost_user::AccelBackend;
use vhost_user_accel::vhost_user::{Connection, ConnectionError};
use vhost_user_accel_fuzz::input::Reader;
use vhost_user_accel_fuzz::memory::{memfd, GuardedMemory};
use vhost_user_accel_fuzz::ring::{
    guest_memory, ChainSpec, DataArea, SplitRing, MAX_QUEUES, MAX_QUEUE_SIZE,
};
use vhost_user_accel_fuzz::vhost_user::{
    code, Action, Ended, FdMode, Frontend, RegionFile, RegionSpec, Reply, RingAddr, Step,
    FLAG_NEED_REPLY, FLAG_VERSION, MAX_STEPS, VMM_BASE, VRING_NOFD,
};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_CLOEXEC, EFD_NONBLOCK};

const PAGE: u64 = 0x1000;

/// The engine, shared by the connections one after the other as the
/// daemon's tenants share it. Its worker runs at the harness's own
/// priority: on a busy machine a niced worker would hold up every reset and
/// ring stop, which wait for the jobs in flight.
fn engine() -> &'static Arc<dyn Engine> {
    static ENGINE: OnceLock<Arc<dyn Engine>> = OnceLock::new();
    ENGINE.get_or_init(|| Arc::new(SoftwareEngine::with_priority(1, 0).expect("engine thread")))
}

/// The tenant's listening socket (abstract, so nothing is left on disk),
/// and its address.
fn listener() -> &'static Mutex<(Listener, SocketAddr)> {
    static LISTENER: OnceLock<Mutex<(Listener, SocketAddr)>> = OnceLock::new();
    LISTENER.get_or_init(|| {
        let name = format!("vhost-user-accel-fuzz-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name).expect("abstract name");
        let socket = UnixListener::bind_addr(&addr).expect("listening socket");
        Mutex::new((Listener::from(socket), addr))
    })
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

/// The number of open descriptors once it is back to `before`, or after a
/// second. An engine thread may drop the last reference to a hardware
/// queue, and so close its completion eventfd, a moment after the device
/// reaped the queue's last completion and was dropped.
fn settled_fds(before: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let open = open_fds();
        if open == before || Instant::now() > deadline {
            return open;
        }
        std::thread::yield_now();
    }
}

/// The memfd behind the guest memory, and the layout of its two regions:
/// (guest address, size, file offset).
struct GuestLayout {
    fd: RawFd,
    file_size: u64,
    regions: Vec<(u64, u64, u64)>,
}

impl GuestLayout {
    fn of(guarded: &GuardedMemory) -> Self {
        let regions: Vec<(u64, u64, u64)> = guarded
            .mem
            .iter()
            .map(|region| {
                let offset = region.file_offset().map_or(0, |f| f.start());
                (region.start_addr().0, region.len(), offset)
            })
            .collect();
        let fd = guarded
            .mem
            .iter()
            .next()
            .and_then(|region| region.file_offset())
            .map(|f| f.file().as_raw_fd())
            .expect("guest memory is file-backed");
        let file_size = regions
            .iter()
            .map(|(_, size, offset)| offset + size)
            .max()
            .unwrap_or(0);
        GuestLayout {
            fd,
            file_size,
            regions,
        }
    }
}

fn event() -> EventFd {
    EventFd::new(EFD_NONBLOCK | EFD_CLOEXEC).expect("eventfd")
}

/// What the back-end's REPLY_ACK state is known to be: acknowledgements
/// are sent when GET_FEATURES has been answered (the features include
/// PROTOCOL_FEATURES) and the last SET_PROTOCOL_FEATURES had REPLY_ACK.
/// `None`: a garbage message may have changed it.
struct AckModel {
    features_read: Option<bool>,
    reply_ack: Option<bool>,
}

impl AckModel {
    fn acks(&self) -> Option<bool> {
        match (self.features_read, self.reply_ack) {
            (Some(false), _) | (_, Some(false)) => Some(false),
            (Some(true), Some(true)) => Some(true),
            _ => None,
        }
    }

    fn after_garbage(&mut self, code: u32) {
        if code == code::GET_FEATURES && self.features_read != Some(true) {
            self.features_read = None;
        }
        if code == code::SET_PROTOCOL_FEATURES {
            self.reply_ack = None;
        }
    }
}

/// A memory region as sent: guest address, size, VMM address, file
/// offset; its descriptor, the file the harness made for it (kept open
/// until sent), and whether that file covers it.
struct Region {
    fields: [u64; 4],
    fd: RawFd,
    _file: Option<File>,
    covered: bool,
}

/// The VMM and the guest of one connection.
struct Vmm<'a> {
    frontend: Frontend,
    guest: &'a GuardedMemory,
    layout: GuestLayout,
    features: u64,
    protocol_features: u64,
    num_queues: usize,
    /// The guest's rings, per queue, while its size is one the harness lays
    /// out.
    rings: Vec<Option<SplitRing>>,
    data: DataArea,
    /// The kick eventfd of each queue, as the VMM keeps it.
    kicks: Vec<Option<EventFd>>,
    acks: AckModel,
}

fn u32s(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn u64s(values: &[u64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

impl Vmm<'_> {
    /// Sends a message that is answered only by an acknowledgement, and
    /// reads it if one is due. An error acknowledgement must end the
    /// connection.
    fn message(
        &self,
        code: u32,
        need_reply: bool,
        body: &[u8],
        fds: &[RawFd],
    ) -> Result<(), Ended> {
        let flags = FLAG_VERSION | if need_reply { FLAG_NEED_REPLY } else { 0 };
        self.frontend.send(code, flags, body, fds)?;
        if !need_reply {
            return Ok(());
        }
        match self.acks.acks() {
            Some(true) => {
                if self.frontend.expect_ack(code)? != 0 {
                    self.frontend.expect_end();
                    return Err(Ended);
                }
            }
            Some(false) => {}
            None => self.probe(code)?,
        }
        Ok(())
    }

    /// Syncs with the back-end after a message whose replies cannot be
    /// foretold (see [`Frontend::probe`]).
    fn probe(&self, code: u32) -> Result<(), Ended> {
        let reply = self.frontend.probe(code)?;
        assert_eq!(reply.u64(), self.protocol_features, "GET_PROTOCOL_FEATURES");
        Ok(())
    }

    /// Sends a GET_* message and reads its reply.
    fn request(&self, code: u32, need_reply: bool, body: &[u8]) -> Result<Reply, Ended> {
        let flags = FLAG_VERSION | if need_reply { FLAG_NEED_REPLY } else { 0 };
        self.frontend.send(code, flags, body, &[])?;
        self.frontend.expect_reply(code)
    }

    /// What a region spec stands for: its fields, its descriptor (and its
    /// file, when the harness made one for it), and whether the file covers
    /// it.
    fn region(&self, spec: &RegionSpec) -> Region {
        let (fields, file, file_size) = match *spec {
            RegionSpec::Guest(index) => {
                let (guest_addr, size, offset) = self.layout.regions[usize::from(index & 1)];
                let fields = [guest_addr, size, VMM_BASE + guest_addr, offset];
                (fields, None, self.layout.file_size)
            }
            RegionSpec::Custom {
                file,
                guest_addr,
                size,
                offset,
                user_addr,
            } => {
                let user_addr = user_addr.unwrap_or(VMM_BASE.wrapping_add(guest_addr));
                let fields = [guest_addr, u64::from(size), user_addr, u64::from(offset)];
                match file {
                    RegionFile::Guest => (fields, None, self.layout.file_size),
                    RegionFile::Fresh { pages, sealed } => {
                        let size = u64::from(pages) * PAGE;
                        (fields, Some(memfd(size, sealed).expect("memfd")), size)
                    }
                }
            }
        };
        let [_, size, _, offset] = fields;
        Region {
            fd: file.as_ref().map_or(self.layout.fd, File::as_raw_fd),
            covered: offset + size <= file_size,
            fields,
            _file: file,
        }
    }

    /// A memory table with a region that its file does not cover must be
    /// refused (issue 11, spec §12.4), and the refusal ends the connection:
    /// nothing answers the probe that follows.
    fn expect_refused(&self, sent: Result<(), Ended>) -> Result<(), Ended> {
        sent?;
        self.frontend
            .send(code::GET_PROTOCOL_FEATURES, FLAG_VERSION, &[], &[])?;
        if let Ok(reply) = self.frontend.read_reply() {
            panic!(
                "a region past the end of its file was accepted (the next message got a reply to {})",
                reply.code
            );
        }
        Err(Ended)
    }

    fn set_mem_table(
        &self,
        need_reply: bool,
        specs: &[RegionSpec],
        fd_delta: i8,
    ) -> Result<(), Ended> {
        let regions: Vec<Region> = specs.iter().map(|spec| self.region(spec)).collect();
        let mut body = u32s(&[regions.len() as u32, 0]);
        regions.iter().for_each(|r| body.extend(u64s(&r.fields)));
        let mut fds: Vec<RawFd> = regions.iter().map(|r| r.fd).collect();
        match fd_delta {
            0 => {}
            -1 => {
                fds.pop();
            }
            _ => fds.push(self.layout.fd),
        }
        let sent = self.message(code::SET_MEM_TABLE, need_reply, &body, &fds);
        if regions.iter().all(|r| r.covered) {
            sent
        } else {
            self.expect_refused(sent)
        }
    }

    /// ADD_MEM_REG (with the region's file) or REM_MEM_REG (without).
    fn single_region(&self, code: u32, need_reply: bool, spec: &RegionSpec) -> Result<(), Ended> {
        let region = self.region(spec);
        let mut body = u64s(&[0]);
        body.extend(u64s(&region.fields));
        if code == code::REM_MEM_REG {
            return self.message(code, need_reply, &body, &[]);
        }
        let sent = self.message(code, need_reply, &body, &[region.fd]);
        if region.covered {
            sent
        } else {
            self.expect_refused(sent)
        }
    }

    fn set_vring_fd(
        &mut self,
        code: u32,
        need_reply: bool,
        index: u8,
        mode: FdMode,
    ) -> Result<(), Ended> {
        let flag = match mode {
            FdMode::NoFd | FdMode::NoFdButAttached => VRING_NOFD,
            FdMode::Event | FdMode::Missing => 0,
        };
        let eventfd = matches!(mode, FdMode::Event | FdMode::NoFdButAttached).then(event);
        let fds: Vec<RawFd> = eventfd.iter().map(AsRawFd::as_raw_fd).collect();
        self.message(code, need_reply, &u64s(&[u64::from(index) | flag]), &fds)?;
        if code == code::SET_VRING_KICK && mode == FdMode::Event {
            if let Some(kick) = self.kicks.get_mut(usize::from(index)) {
                *kick = eventfd;
            }
        }
        Ok(())
    }

    /// The guest places `chain` on queue `index`'s rings (while fewer
    /// chains than entries are outstanding), makes it available and kicks.
    fn kick(&mut self, index: u8, chain: &ChainSpec) {
        let mem = &self.guest.mem;
        if let Some(ring) = self
            .rings
            .get_mut(usize::from(index))
            .and_then(Option::as_mut)
        {
            if ring.published.iter().sum::<u32>() < u32::from(ring.size) {
                let (head, _) = ring.place(mem, &mut self.data, chain);
                ring.publish(mem, head);
            }
        }
        if let Some(kick) = self.kicks.get(usize::from(index)).and_then(Option::as_ref) {
            kick.write(1).expect("kick");
        }
    }

    fn step(&mut self, step: &Step) -> Result<(), Ended> {
        let need = step.need_reply;
        match &step.action {
            Action::GetFeatures => {
                let reply = self.request(code::GET_FEATURES, need, &[])?;
                assert_eq!(reply.u64(), self.features, "GET_FEATURES");
                self.acks.features_read = Some(true);
            }
            Action::SetFeatures(features) => {
                let value = features.value(self.features);
                self.message(code::SET_FEATURES, need, &u64s(&[value]), &[])?;
            }
            Action::SetOwner => self.message(code::SET_OWNER, need, &[], &[])?,
            Action::ResetOwner => self.message(code::RESET_OWNER, need, &[], &[])?,
            Action::GetProtocolFeatures => {
                let reply = self.request(code::GET_PROTOCOL_FEATURES, need, &[])?;
                assert_eq!(reply.u64(), self.protocol_features, "GET_PROTOCOL_FEATURES");
            }
            Action::SetProtocolFeatures(features) => {
                let value = features.value(self.protocol_features);
                // The back-end takes the new REPLY_ACK state before it
                // acknowledges this very message.
                self.acks.reply_ack =
                    Some(value & VhostUserProtocolFeatures::REPLY_ACK.bits() != 0);
                self.message(code::SET_PROTOCOL_FEATURES, need, &u64s(&[value]), &[])?;
            }
            Action::GetQueueNum => {
                let reply = self.request(code::GET_QUEUE_NUM, need, &[])?;
                assert_eq!(reply.u64(), self.num_queues as u64, "GET_QUEUE_NUM");
            }
            Action::SetMemTable { regions, fd_delta } => {
                self.set_mem_table(need, regions, *fd_delta)?
            }
            Action::SetVringNum { index, num } => {
                let (index, num) = (*index, *num);
                if let Some(ring) = self.rings.get_mut(usize::from(index)) {
                    *ring = (num.is_power_of_two() && num <= MAX_QUEUE_SIZE)
                        .then(|| SplitRing::new(u16::from(index), num));
                }
                self.message(
                    code::SET_VRING_NUM,
                    need,
                    &u32s(&[u32::from(index), u32::from(num)]),
                    &[],
                )?;
            }
            Action::SetVringAddr { index, addr } => {
                let (flags, desc, used, avail, log) = match *addr {
                    RingAddr::Laid => {
                        let ring = SplitRing::new(u16::from(*index), 1);
                        (
                            0,
                            VMM_BASE + ring.desc_table,
                            VMM_BASE + ring.used_ring,
                            VMM_BASE + ring.avail_ring,
                            0,
                        )
                    }
                    RingAddr::Raw {
                        flags,
                        desc,
                        used,
                        avail,
                        log,
                    } => (flags, desc, used, avail, log),
                };
                let mut body = u32s(&[u32::from(*index), flags]);
                body.extend(u64s(&[desc, used, avail, log]));
                self.message(code::SET_VRING_ADDR, need, &body, &[])?;
            }
            Action::SetVringBase { index, num } => {
                self.message(
                    code::SET_VRING_BASE,
                    need,
                    &u32s(&[u32::from(*index), *num]),
                    &[],
                )?;
            }
            Action::GetVringBase { index } => {
                let reply =
                    self.request(code::GET_VRING_BASE, need, &u32s(&[u32::from(*index), 0]))?;
                assert_eq!(reply.body.len(), 8, "GET_VRING_BASE reply size");
                assert_eq!(reply.u32_at(0), u32::from(*index), "GET_VRING_BASE index");
            }
            Action::SetVringFd { code, index, fd } => {
                self.set_vring_fd(*code, need, *index, *fd)?
            }
            Action::SetVringEnable { index, num } => {
                self.message(
                    code::SET_VRING_ENABLE,
                    need,
                    &u32s(&[u32::from(*index), u32::from(*num)]),
                    &[],
                )?;
            }
            Action::GetConfig {
                offset,
                size,
                flags,
            } => {
                let mut body = u32s(&[*offset, u32::from(*size), *flags]);
                body.resize(body.len() + usize::from(*size), 0);
                let reply = self.request(code::GET_CONFIG, need, &body)?;
                let returned = reply
                    .body
                    .len()
                    .checked_sub(12)
                    .expect("GET_CONFIG reply has its header");
                assert_eq!(reply.u32_at(0), *offset, "GET_CONFIG offset");
                assert_eq!(reply.u32_at(4) as usize, returned, "GET_CONFIG size");
                assert_eq!(reply.u32_at(8), *flags, "GET_CONFIG flags");
                assert!(
                    returned == 0 || returned == usize::from(*size),
                    "GET_CONFIG of {size} bytes answered with {returned}"
                );
            }
            Action::SetConfig {
                offset,
                flags,
                data,
            } => {
                let mut body = u32s(&[*offset, data.len() as u32, *flags]);
                body.extend_from_slice(data);
                self.message(code::SET_CONFIG, need, &body, &[])?;
            }
            Action::ResetDevice => self.message(code::RESET_DEVICE, need, &[], &[])?,
            Action::GetMaxMemSlots => {
                let reply = self.request(code::GET_MAX_MEM_SLOTS, need, &[])?;
                reply.u64();
            }
            Action::AddMemReg(spec) => self.single_region(code::ADD_MEM_REG, need, spec)?,
            Action::RemMemReg(spec) => self.single_region(code::REM_MEM_REG, need, spec)?,
            Action::Kick { index, chain } => self.kick(*index, chain),
            Action::Garbage {
                code,
                flags,
                body,
                fds,
            } => {
                let events: Vec<EventFd> = (0..*fds).map(|_| event()).collect();
                let raw: Vec<RawFd> = events.iter().map(AsRawFd::as_raw_fd).collect();
                self.frontend.send(*code, *flags, body, &raw)?;
                self.acks.after_garbage(*code);
                self.probe(*code)?;
            }
        }
        Ok(())
    }
}

/// A fresh backend and its connection, accepted on the tenant's socket as
/// the server does, and the VMM's end of it.
fn connect(config: TenantConfig) -> (Arc<RwLock<AccelBackend>>, Connection, UnixStream) {
    let tenant = TenantState::new(0, &config);
    let backend = AccelBackend::new(config, engine(), tenant).expect("backend");
    let backend = Arc::new(RwLock::new(backend));
    let mut connection = Connection::new("vhost-user-accel-fuzz".into(), &backend).expect("daemon");
    let mut listening = listener().lock().unwrap_or_else(PoisonError::into_inner);
    let (listener, addr) = &mut *listening;
    let socket = UnixStream::connect_addr(addr).expect("connect");
    connection.start(listener).expect("accept");
    (backend, connection, socket)
}

/// After the connection: its thread is joined (it has seen the end of the
/// connection, or ended it), its worker stopped, and the backend drained
/// as the server does; nothing may hold the backend any more.
fn disconnect(backend: Arc<RwLock<AccelBackend>>, mut connection: Connection) {
    if let Err(ConnectionError::Panicked) = connection.wait() {
        panic!("the connection's thread panicked");
    }
    drop(connection);
    backend
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .disconnect();
    assert_eq!(
        Arc::strong_count(&backend),
        1,
        "something still holds the backend of a connection that is over"
    );
}

fn run(data: &[u8]) {
    let mut r = Reader::new(data);
    let setup = r.u8();
    let mut config = TenantConfig::new("fuzz", SocketSource::Fd(-1));
    config.request_queues = 1 + u16::from(setup % 4);
    config.queue_size = 64u16 << ((setup >> 2) % 4);
    let Ok(guest) = guest_memory(r.u8() % 4) else {
        return;
    };
    let (backend, connection, socket) = connect(config);
    let (features, protocol_features, num_queues) = {
        let backend = backend.read().unwrap_or_else(PoisonError::into_inner);
        let protocol = AccelBackend::protocol_features() | VhostUserProtocolFeatures::REPLY_ACK;
        (
            AccelBackend::features(),
            protocol.bits(),
            backend.num_queues(),
        )
    };
    let mut vmm = Vmm {
        frontend: Frontend::new(socket),
        layout: GuestLayout::of(&guest),
        guest: &guest,
        features,
        protocol_features,
        num_queues,
        rings: (0..num_queues.min(usize::from(MAX_QUEUES)))
            .map(|_| None)
            .collect(),
        data: DataArea::default(),
        kicks: (0..num_queues).map(|_| None).collect(),
        acks: AckModel {
            features_read: Some(false),
            reply_ack: Some(false),
        },
    };
    let (mut steps, mut ended) = (0, false);
    while !ended && steps < MAX_STEPS && !r.is_empty() {
        ended = vmm.step(&Step::read(&mut r)).is_err();
        steps += 1;
    }
    if !ended {
        vmm.frontend.finish();
    }
    disconnect(backend, connection);
}

fuzz_target!(|data: &[u8]| {
    // The shared parts first, so that they do not count as descriptors of
    // the input.
    engine();
    listener();
    let before = open_fds();
    run(data);
    assert_eq!(
        settled_fds(before),
        before,
        "descriptors left open by a connection"
    );
});
