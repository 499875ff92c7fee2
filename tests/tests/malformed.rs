// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The malformed-input battery, over the real vhost-user socket.
//!
//! Every defect that the specification lists for a request header, a buffer
//! reference, a descriptor chain, a control command and the available ring
//! (`spec/virtio-accel.md` §6.5, §7, §9, §10) is sent to the daemon, and the
//! exact status the specification requires is checked in the response (read
//! from guest memory when the driver API does not return it), together with
//! the rest of the response: used length, fence (every chain taken gets the
//! next sequence number of its queue, §6.2), zero `bytes_written` and
//! `result`, untouched output buffers (§6.5.2). After each case or batch of
//! cases, well-formed requests on the same queue must still succeed with the
//! right result: a defective request affects nothing else (§6.5.2, §12.2).
//!
//! Every wait has a timeout of a few seconds and every test runs under an
//! overall deadline, so a hanging daemon fails a test instead of blocking it.
//!
//! Where the specification allows several statuses (a request with several
//! defects, §6.5), a case accepts exactly the statuses of those defects.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use accel_driver::device::Error as DeviceError;
use accel_driver::virtqueue::{DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE};
use accel_driver::{
    feature, Buffer, Completion, ControlCompletion, Descriptor, DmaBuf, DmaMemory, RawDesc,
    RawNext, Request, Used, DEFAULT_FEATURES,
};
use accel_tests::data::TestRng;
use accel_tests::harness::{guest_ram, AccelDevice, Daemon, EXTERNAL_SOCKET_ENV};
use accel_tests::reference;
use vhost::vhost_user::message::VhostUserConfigFlags;
use vhost::vhost_user::VhostUserFrontend;
use vhost_user_accel::TenantConfig;
use virtio_accel_spec::op::PARAMS_SIZE;
use virtio_accel_spec::{
    AesGcmParams, BufRef, ControlCommand, Crc32cParams, CtrlReq, CtrlResp, DeflateFormat,
    DeflateParams, Fence, FillParams, Op, Req, Resp, Status, VIRTIO_ACCEL_F_FENCES,
    VIRTIO_ACCEL_F_OBJECTS,
};
use vm_memory::endian::{Le16, Le32, Le64};
use vm_memory::ByteValued;

/// Longest wait for one completion.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Longest run of one test.
const DEADLINE: Duration = Duration::from_secs(240);
/// Initial value of output buffers, to see whether the device wrote them.
const SENTINEL: u8 = 0xA5;
/// Guest RAM of most tests.
const RAM_MIB: usize = 64;
const MIB: u64 = 1 << 20;
/// The data of most CRC32C requests.
const TEXT: &[u8] = b"123456789";

const CREATE: u32 = 0x100;
const DESTROY: u32 = 0x101;
const QUERY: u32 = 0x200;
const WAIT: u32 = 0x201;
const _: () = {
    assert!(CREATE == ControlCommand::ObjectCreate as u32);
    assert!(DESTROY == ControlCommand::ObjectDestroy as u32);
    assert!(QUERY == ControlCommand::FenceQuery as u32);
    assert!(WAIT == ControlCommand::FenceWait as u32);
};

// ---- harness ----------------------------------------------------------------

/// Runs `body` on its own thread and fails if it does not end within
/// [`DEADLINE`] (a hung daemon), re-raising its panic otherwise.
fn within(name: &'static str, body: impl FnOnce() + Send + 'static) {
    let (done, finished) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            body();
            let _ = done.send(());
        })
        .unwrap();
    match finished.recv_timeout(DEADLINE) {
        Ok(()) => thread.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(panic) = thread.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{name} did not finish within {DEADLINE:?}: the daemon hangs")
        }
    }
}

/// A daemon with a configuration of its own, or `None` (the test is then
/// skipped) when the tests run against an external daemon
/// ([`EXTERNAL_SOCKET_ENV`]), whose configuration is the default one.
fn custom_daemon(name: &str, configure: impl FnOnce(&mut TenantConfig)) -> Option<Daemon> {
    if std::env::var_os(EXTERNAL_SOCKET_ENV).is_some() {
        eprintln!("{name}: skipped, it needs a daemon configuration of its own");
        return None;
    }
    Some(Daemon::start_with(configure))
}

fn status_name(raw: u32) -> String {
    match Status::try_from(raw) {
        Ok(status) => format!("{status:?}"),
        Err(_) => format!("unknown status {raw:#x}"),
    }
}

fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap()
}

/// Checks the response of a request that must fail with one of `allowed`.
fn check_failure(what: &str, used_len: u32, resp: &Resp, allowed: &[Status], fence: Fence) {
    let raw = u32::from(resp.status);
    assert!(
        used_len == 64,
        "{what}: used length {used_len}, expected 64 (status {})",
        status_name(raw)
    );
    assert!(
        allowed.iter().any(|&s| u32::from(s) == raw),
        "{what}: status {}, expected {allowed:?}",
        status_name(raw)
    );
    assert!(
        !allowed.contains(&Status::Ok),
        "test bug: {what} expects a failure"
    );
    assert_eq!(u32::from(resp.reserved), 0, "{what}: response reserved");
    assert_eq!(resp.fence, fence, "{what}: fence of the response");
    assert_eq!(u64::from(resp.bytes_written), 0, "{what}: bytes_written");
    assert_eq!(resp.result, [0; 32], "{what}: result of a failure");
}

/// Checks the response of a control command that must fail with one of `allowed`.
fn check_ctrl_failure(what: &str, done: &ControlCompletion, allowed: &[Status]) {
    check_ctrl_resp(what, done.used_len, &done.resp, allowed);
}

fn check_ctrl_resp(what: &str, used_len: u32, resp: &CtrlResp, allowed: &[Status]) {
    let raw = u32::from(resp.status);
    assert!(
        used_len == 16,
        "{what}: used length {used_len}, expected 16 (status {})",
        status_name(raw)
    );
    assert!(
        allowed.iter().any(|&s| u32::from(s) == raw),
        "{what}: status {}, expected {allowed:?}",
        status_name(raw)
    );
    assert_eq!(u32::from(resp.reserved), 0, "{what}: response reserved");
    if raw != 0 {
        assert_eq!(u64::from(resp.value), 0, "{what}: value of a failure");
    }
}

/// `(gpa, len, writable)` of all of `buf`.
fn rd(buf: &DmaBuf) -> (u64, u32, bool) {
    (buf.gpa(), len32(buf.len()), false)
}

fn wr(buf: &DmaBuf) -> (u64, u32, bool) {
    (buf.gpa(), len32(buf.len()), true)
}

/// The readable header block `Req | Fence* | BufRef*`.
fn block(req: Req, deps: &[Fence], refs: &[BufRef]) -> Vec<u8> {
    let mut bytes = req.as_slice().to_vec();
    for fence in deps {
        bytes.extend_from_slice(fence.as_slice());
    }
    for r in refs {
        bytes.extend_from_slice(r.as_slice());
    }
    bytes
}

fn ctrl_block(cmd: u32, count: u32, arg: u64, payload: &[u8]) -> Vec<u8> {
    let mut bytes = ctrl_header(cmd, count, arg).as_slice().to_vec();
    bytes.extend_from_slice(payload);
    bytes
}

fn ctrl_header(cmd: u32, count: u32, arg: u64) -> CtrlReq {
    CtrlReq {
        cmd: Le32::from(cmd),
        count: Le32::from(count),
        arg: Le64::from(arg),
    }
}

fn seg_bytes(segments: &[(u64, u64)]) -> Vec<u8> {
    segments
        .iter()
        .flat_map(|&(addr, len)| {
            virtio_accel_spec::MemSeg::new(addr, len)
                .as_slice()
                .to_vec()
        })
        .collect()
}

fn fence_bytes(fences: &[Fence]) -> Vec<u8> {
    fences.iter().flat_map(|f| f.as_slice().to_vec()).collect()
}

fn params_with(byte: usize, value: u8) -> [u8; PARAMS_SIZE] {
    let mut params = [0; PARAMS_SIZE];
    params[byte] = value;
    params
}

/// An indirect table of `(gpa, len, writable)` buffers, linked in order.
fn table(entries: &[(u64, u32, bool)]) -> Vec<Descriptor> {
    let n = entries.len();
    entries
        .iter()
        .enumerate()
        .map(|(i, &(addr, len, writable))| {
            let mut flags = if writable { DESC_F_WRITE } else { 0 };
            let mut next = 0;
            if i + 1 < n {
                flags |= DESC_F_NEXT;
                next = u16::try_from(i + 1).unwrap();
            }
            Descriptor::new(addr, len, flags, next)
        })
        .collect()
}

/// One connection to a daemon, with the expected fence numbering.
struct Ctx {
    mem: DmaMemory,
    dev: AccelDevice,
    /// Next sequence number of each request queue.
    seq: Vec<u64>,
    rng: TestRng,
    token: u64,
}

impl Ctx {
    fn open(daemon: &Daemon, mem: &DmaMemory, features: u64, name: &str) -> Ctx {
        let mut dev = daemon.connect_with(mem, features);
        dev.set_timeout(TIMEOUT);
        let queues = usize::from(dev.num_request_queues());
        Ctx {
            mem: mem.clone(),
            dev,
            seq: vec![1; queues],
            rng: TestRng::new(name),
            token: 0,
        }
    }

    fn max_segments(&self) -> u32 {
        u32::from(self.dev.config().max_segments)
    }

    fn max_deps(&self) -> u32 {
        u32::from(self.dev.config().max_deps)
    }

    fn max_buffer(&self) -> u64 {
        u64::from(self.dev.config().max_buffer_size)
    }

    fn max_object(&self) -> u64 {
        u64::from(self.dev.config().max_object_size)
    }

    fn queues(&self) -> u16 {
        u16::try_from(u32::from(self.dev.config().num_request_queues)).unwrap()
    }

    fn queue_size(&mut self, vq: u16) -> u16 {
        self.dev.raw_queue(vq).unwrap().size()
    }

    /// The fence the next chain of request queue `q` gets.
    fn next_fence(&mut self, q: u16) -> Fence {
        let slot = &mut self.seq[usize::from(q)];
        let fence = Fence::new(q, *slot);
        *slot += 1;
        fence
    }

    fn peek_fence(&self, q: u16) -> Fence {
        Fence::new(q, self.seq[usize::from(q)])
    }

    // ---- buffers -----------------------------------------------------------

    /// A buffer holding `bytes` (at least 1 byte long).
    fn stage(&self, bytes: &[u8]) -> DmaBuf {
        let buf = self.mem.alloc(bytes.len().max(1)).unwrap();
        self.mem.write(&buf, 0, bytes).unwrap();
        buf
    }

    /// A buffer of `len` bytes of [`SENTINEL`].
    fn space(&self, len: usize) -> DmaBuf {
        let buf = self.mem.alloc(len.max(1)).unwrap();
        self.mem.fill(&buf, SENTINEL).unwrap();
        buf
    }

    /// A response buffer of 64 bytes pre-filled with 0xff.
    fn resp_buf(&self) -> DmaBuf {
        let buf = self.mem.alloc(64).unwrap();
        self.mem.fill(&buf, 0xff).unwrap();
        buf
    }

    fn untouched(&self, buf: &DmaBuf, what: &str) {
        let bytes = self.mem.read_vec(buf, 0, buf.len()).unwrap();
        assert!(
            bytes.iter().all(|&b| b == SENTINEL),
            "{what}: the device modified an output buffer of a rejected request"
        );
    }

    fn untouched_resp(&self, buf: &DmaBuf, len: usize, what: &str) {
        let bytes = self.mem.read_vec(buf, 0, len).unwrap();
        assert!(
            bytes.iter().all(|&b| b == 0xff),
            "{what}: the device wrote into a response area it could not hold"
        );
    }

    // ---- requests through the driver --------------------------------------

    fn run(&mut self, q: u16, req: &Request) -> (Completion, Fence) {
        let fence = self.next_fence(q);
        let done = self
            .dev
            .run(q, req)
            .unwrap_or_else(|e| panic!("request on queue {q}: {e} ({e:?})"));
        (done, fence)
    }

    fn expect(&mut self, q: u16, what: &str, req: &Request, allowed: &[Status]) {
        let (done, fence) = self.run(q, req);
        check_failure(what, done.used_len, &done.resp, allowed, fence);
    }

    fn expect_ok(&mut self, q: u16, what: &str, req: &Request) -> Completion {
        let (done, fence) = self.run(q, req);
        assert!(
            done.is_ok(),
            "{what}: used length {}, status {}, expected Ok",
            done.used_len,
            status_name(u32::from(done.resp.status))
        );
        assert_eq!(done.fence(), fence, "{what}: fence");
        assert_eq!(u32::from(done.resp.reserved), 0, "{what}: reserved");
        done
    }

    fn expect_unanswered(&mut self, q: u16, what: &str, req: &Request) {
        let (done, _) = self.run(q, req);
        assert_eq!(done.used_len, 0, "{what}: used length");
        assert_eq!(
            done.resp.as_slice(),
            &[0xff; 64][..],
            "{what}: the device wrote into a response area it could not hold"
        );
    }

    /// `op` with its arity of direct buffers: each input is `input`, each
    /// output a fresh buffer of `out_len` sentinel bytes (returned).
    fn with_buffers(&self, op: Op, input: &DmaBuf, out_len: usize) -> (Request, Vec<DmaBuf>) {
        let (n_in, n_out) = op.arity();
        self.with_counts(op, usize::from(n_in), usize::from(n_out), input, out_len)
    }

    fn with_counts(
        &self,
        op: Op,
        n_in: usize,
        n_out: usize,
        input: &DmaBuf,
        out_len: usize,
    ) -> (Request, Vec<DmaBuf>) {
        let mut req = Request::new(op);
        for _ in 0..n_in {
            req = req.input(Buffer::direct(input));
        }
        let outs: Vec<DmaBuf> = (0..n_out).map(|_| self.space(out_len)).collect();
        for out in &outs {
            req = req.output(Buffer::direct(out));
        }
        (req, outs)
    }

    // ---- raw chains --------------------------------------------------------

    /// Makes `descs` available on virtqueue `vq`, kicks the device and waits
    /// for the chain's used entry.
    fn raw_chain(&mut self, vq: u16, what: &str, descs: &[RawDesc]) -> Used {
        self.token += 1;
        let token = self.token;
        let queue = self.dev.raw_queue(vq).unwrap();
        let head = queue.add_raw(descs, token).unwrap();
        queue.publish().unwrap();
        self.dev.notify(vq).unwrap();
        let used = self
            .dev
            .wait_used(vq, TIMEOUT)
            .unwrap_or_else(|e| panic!("{what}: {e} ({e:?})"))
            .unwrap_or_else(|| panic!("{what}: no used entry within {TIMEOUT:?}"));
        assert_eq!(
            (used.head, used.token),
            (head, token),
            "{what}: another chain came back"
        );
        used
    }

    /// A raw chain on request queue `q` whose response is in `resp`.
    fn raw_request(
        &mut self,
        q: u16,
        what: &str,
        descs: &[RawDesc],
        resp: &DmaBuf,
    ) -> (Used, Resp, Fence) {
        let fence = self.next_fence(q);
        let used = self.raw_chain(q + 1, what, descs);
        let resp = self.mem.read_obj::<Resp>(resp, 0).unwrap();
        (used, resp, fence)
    }

    fn expect_raw_descs(
        &mut self,
        q: u16,
        what: &str,
        descs: &[RawDesc],
        resp: &DmaBuf,
        allowed: &[Status],
    ) {
        let (used, resp, fence) = self.raw_request(q, what, descs, resp);
        check_failure(what, used.len, &resp, allowed, fence);
    }

    /// A malformed chain that the device may answer with one of `allowed`
    /// or return with used length 0 (nothing written).
    fn expect_raw_failure_or_unanswered(
        &mut self,
        q: u16,
        what: &str,
        descs: &[RawDesc],
        resp: &DmaBuf,
        allowed: &[Status],
    ) {
        let (used, got, fence) = self.raw_request(q, what, descs, resp);
        if used.len == 0 {
            self.untouched_resp(resp, 64, what);
        } else {
            check_failure(what, used.len, &got, allowed, fence);
        }
    }

    fn expect_raw_unanswered(&mut self, q: u16, what: &str, descs: &[RawDesc], resp: &DmaBuf) {
        let (used, _, _) = self.raw_request(q, what, descs, resp);
        assert_eq!(used.len, 0, "{what}: used length");
        self.untouched_resp(resp, 64, what);
    }

    /// A raw chain that must succeed without direct output; returns the response.
    fn expect_raw_ok(
        &mut self,
        q: u16,
        what: &str,
        descs: &[RawDesc],
        resp: &DmaBuf,
        used_len: u32,
    ) -> Resp {
        let (used, got, fence) = self.raw_request(q, what, descs, resp);
        assert_eq!(
            u32::from(got.status),
            0,
            "{what}: status {} (used length {})",
            status_name(u32::from(got.status)),
            used.len
        );
        assert_eq!(used.len, used_len, "{what}: used length");
        assert_eq!(got.fence, fence, "{what}: fence");
        got
    }

    /// A raw control chain; returns its used entry.
    fn raw_control(&mut self, what: &str, descs: &[RawDesc]) -> Used {
        self.raw_chain(0, what, descs)
    }

    fn expect_raw_ctrl(
        &mut self,
        what: &str,
        descs: &[RawDesc],
        resp: &DmaBuf,
        allowed: &[Status],
    ) {
        let used = self.raw_control(what, descs);
        let got = self.mem.read_obj::<CtrlResp>(resp, 0).unwrap();
        check_ctrl_resp(what, used.len, &got, allowed);
    }

    /// A raw control chain that must come back with used length 0, nothing
    /// written in `resp`.
    fn expect_raw_ctrl_unanswered(&mut self, what: &str, descs: &[RawDesc], resp: &DmaBuf) {
        let used = self.raw_control(what, descs);
        assert_eq!(used.len, 0, "{what}: used length");
        self.untouched_resp(resp, 16, what);
    }

    // ---- control commands --------------------------------------------------

    fn control(
        &self,
        what: &str,
        cmd: u32,
        count: u32,
        arg: u64,
        payload: &[u8],
    ) -> ControlCompletion {
        self.dev
            .control_raw(ctrl_header(cmd, count, arg), payload)
            .unwrap_or_else(|e| panic!("{what}: {e} ({e:?})"))
    }

    fn expect_ctrl(
        &self,
        what: &str,
        cmd: u32,
        count: u32,
        arg: u64,
        payload: &[u8],
        allowed: &[Status],
    ) {
        let done = self.control(what, cmd, count, arg, payload);
        check_ctrl_failure(what, &done, allowed);
    }

    fn expect_ctrl_ok(&self, what: &str, cmd: u32, count: u32, arg: u64, payload: &[u8]) -> u64 {
        let done = self.control(what, cmd, count, arg, payload);
        check_ctrl_resp(what, done.used_len, &done.resp, &[Status::Ok]);
        done.value()
    }

    // ---- liveness ----------------------------------------------------------

    /// A CRC32C and a COPY of random data on request queue `q` succeed with
    /// the right results and fences.
    fn check_alive(&mut self, q: u16) {
        let max = usize::try_from(self.max_buffer().min(4096)).unwrap();
        let len = 1 + self.rng.below(max);
        let data = self.rng.bytes(len);
        let input = self.stage(&data);
        let crc = Request::new(Op::Crc32c).input(Buffer::direct(&input));
        let done = self.expect_ok(q, "well-formed CRC32C", &crc);
        assert_eq!(done.used_len, 64, "well-formed CRC32C: used length");
        assert_eq!(
            done.result_u32(),
            reference::crc32c(0, &data),
            "well-formed CRC32C: result"
        );
        let out = self.space(len);
        let copy = Request::new(Op::Copy)
            .input(Buffer::direct(&input))
            .output(Buffer::direct(&out));
        let done = self.expect_ok(q, "well-formed COPY", &copy);
        assert_eq!(
            done.bytes_written(),
            len as u64,
            "well-formed COPY: bytes_written"
        );
        assert_eq!(
            done.used_len,
            64 + len32(len),
            "well-formed COPY: used length"
        );
        assert_eq!(
            self.mem.read_vec(&out, 0, len).unwrap(),
            data,
            "well-formed COPY: output"
        );
    }

    /// Objects and fences still work: create an object, read it in a
    /// request on queue `q`, query and wait for that request's fence,
    /// destroy the object.
    fn check_control_alive(&mut self, q: u16) {
        let data = self.rng.bytes(300);
        let buf = self.stage(&data);
        let handle = self
            .dev
            .create_object(&[buf.segment()])
            .unwrap_or_else(|e| panic!("well-formed OBJECT_CREATE: {e:?}"));
        let req = Request::new(Op::Crc32c).input(Buffer::object(handle, 0, 300));
        let done = self.expect_ok(q, "CRC32C of an object", &req);
        assert_eq!(done.result_u32(), reference::crc32c(0, &data));
        assert!(self.dev.query_fence(done.fence()).unwrap());
        self.dev.wait_fences(&[done.fence(), done.fence()]).unwrap();
        self.dev
            .destroy_object(handle)
            .unwrap_or_else(|e| panic!("well-formed OBJECT_DESTROY: {e:?}"));
    }
}

// ---- tables of cases --------------------------------------------------------

/// The answer a case must get.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// A response with one of these statuses: a failure on a request queue;
    /// on the control queue possibly Ok (a well-formed chain among
    /// malformed ones).
    Status(&'static [Status]),
    /// Used length 0 and nothing written: the chain has no room for a
    /// response.
    Nothing,
    /// One of these statuses, or used length 0 (§6.5 lets the device give up
    /// on a loop).
    StatusOrNothing(&'static [Status]),
}

const INVALID: Expect = Expect::Status(&[Status::Invalid]);
const UNSUPPORTED: Expect = Expect::Status(&[Status::Unsupported]);
const NO_OBJECT: Expect = Expect::Status(&[Status::NoObject]);
const NO_FENCE: Expect = Expect::Status(&[Status::NoFence]);
const RANGE: Expect = Expect::Status(&[Status::Range]);
const BAD_ADDRESS: Expect = Expect::Status(&[Status::BadAddress]);
const LIMIT: Expect = Expect::Status(&[Status::Limit]);
/// Past max_buffer_size and past the chain or the object at once.
const LIMIT_OR_RANGE: Expect = Expect::Status(&[Status::Limit, Status::Range]);
/// A well-formed control chain.
const ANSWERED_OK: Expect = Expect::Status(&[Status::Ok]);

/// The chain a case sends.
enum Chain {
    /// A request through the driver.
    Request(Request),
    /// Raw descriptors on request queue 0, answered in the case's response
    /// buffer.
    Raw(Vec<RawDesc>),
    /// A control command through the driver: `(cmd, count, arg, payload)`.
    Command(u32, u32, u64, Vec<u8>),
    /// Raw descriptors on the control queue, answered in the case's response
    /// buffer.
    RawCommand(Vec<RawDesc>),
}

/// A case's chain, with the buffers it points into.
struct Sent {
    chain: Chain,
    /// Output buffers that the device must leave as they were ([`SENTINEL`]).
    untouched: Vec<DmaBuf>,
    /// Other buffers of the chain, kept until it is answered.
    held: Vec<DmaBuf>,
}

impl Sent {
    fn new(chain: Chain) -> Sent {
        Sent {
            chain,
            untouched: Vec::new(),
            held: Vec::new(),
        }
    }

    fn request(req: Request) -> Sent {
        Sent::new(Chain::Request(req))
    }

    /// A raw request chain of `(gpa, len, writable)` buffers, linked in order.
    fn raw(buffers: &[(u64, u32, bool)]) -> Sent {
        Sent::descs(RawDesc::chain(buffers))
    }

    /// A raw request chain of these descriptors.
    fn descs(descs: impl Into<Vec<RawDesc>>) -> Sent {
        Sent::new(Chain::Raw(descs.into()))
    }

    /// A raw control chain of `(gpa, len, writable)` buffers, linked in order.
    fn raw_command(buffers: &[(u64, u32, bool)]) -> Sent {
        Sent::command_descs(RawDesc::chain(buffers))
    }

    /// A raw control chain of these descriptors.
    fn command_descs(descs: impl Into<Vec<RawDesc>>) -> Sent {
        Sent::new(Chain::RawCommand(descs.into()))
    }

    fn untouched(mut self, outputs: impl IntoIterator<Item = DmaBuf>) -> Sent {
        self.untouched.extend(outputs);
        self
    }

    fn holding(mut self, buffers: impl IntoIterator<Item = DmaBuf>) -> Sent {
        self.held.extend(buffers);
        self
    }
}

/// Builds a case's chain, given the context and the case's response buffer
/// (64 bytes of 0xff, the response area of raw chains).
type Build<'a> = Box<dyn FnOnce(&mut Ctx, &DmaBuf) -> Sent + 'a>;

/// A row of a table: a named chain and the answer it must get. The chain is
/// built when the case runs, so that it sees the fences issued before it.
struct Case<'a> {
    name: String,
    expect: Expect,
    build: Build<'a>,
}

impl<'a> Case<'a> {
    fn new(
        name: impl Into<String>,
        expect: Expect,
        build: impl FnOnce(&mut Ctx, &DmaBuf) -> Sent + 'a,
    ) -> Case<'a> {
        Case {
            name: name.into(),
            expect,
            build: Box::new(build),
        }
    }

    /// A case that sends `req` through the driver.
    fn request(name: impl Into<String>, expect: Expect, req: Request) -> Case<'a> {
        Case::new(name, expect, move |_, _| Sent::request(req))
    }

    /// A case that sends a control command through the driver.
    fn command(
        name: impl Into<String>,
        expect: Expect,
        cmd: u32,
        count: u32,
        arg: u64,
        payload: &[u8],
    ) -> Case<'a> {
        let payload = payload.to_vec();
        Case::new(name, expect, move |_, _| {
            Sent::new(Chain::Command(cmd, count, arg, payload))
        })
    }
}

/// A row of a table of control commands: `(name, expect, count, arg, payload)`.
type CommandRow<'a> = (&'a str, Expect, u32, u64, &'a [u8]);

/// Cases that send the control command `cmd` with the fields of each row.
fn command_cases(cmd: u32, rows: &[CommandRow]) -> Vec<Case<'static>> {
    rows.iter()
        .map(|&(what, expect, count, arg, payload)| {
            Case::command(what, expect, cmd, count, arg, payload)
        })
        .collect()
}

impl Ctx {
    fn run_cases(&mut self, cases: Vec<Case<'_>>) {
        for case in cases {
            self.run_case(case);
        }
    }

    /// Builds the case's chain, sends it (a request on request queue 0) and
    /// checks its answer and its untouched outputs.
    fn run_case(&mut self, case: Case<'_>) {
        let Case {
            name,
            expect,
            build,
        } = case;
        let what = name.as_str();
        let resp = self.resp_buf();
        let Sent {
            chain,
            untouched,
            held,
        } = build(self, &resp);
        match (chain, expect) {
            (Chain::Request(req), Expect::Status(allowed)) => self.expect(0, what, &req, allowed),
            (Chain::Request(req), Expect::Nothing) => self.expect_unanswered(0, what, &req),
            (Chain::Raw(descs), Expect::Status(allowed)) => {
                self.expect_raw_descs(0, what, &descs, &resp, allowed)
            }
            (Chain::Raw(descs), Expect::Nothing) => {
                self.expect_raw_unanswered(0, what, &descs, &resp)
            }
            (Chain::Raw(descs), Expect::StatusOrNothing(allowed)) => {
                self.expect_raw_failure_or_unanswered(0, what, &descs, &resp, allowed)
            }
            (Chain::Command(cmd, count, arg, payload), Expect::Status(allowed)) => {
                self.expect_ctrl(what, cmd, count, arg, &payload, allowed)
            }
            (Chain::RawCommand(descs), Expect::Status(allowed)) => {
                self.expect_raw_ctrl(what, &descs, &resp, allowed)
            }
            (Chain::RawCommand(descs), Expect::Nothing) => {
                self.expect_raw_ctrl_unanswered(what, &descs, &resp)
            }
            (_, expect) => panic!("test bug: {what} cannot be checked for {expect:?}"),
        }
        for out in &untouched {
            self.untouched(out, what);
        }
        // The chain pointed into these until now.
        drop(held);
    }
}

// ---- chains used by several tests ------------------------------------------

/// The CRC32C header block with these references.
fn crc_block(refs: &[BufRef]) -> Vec<u8> {
    block(Req::new(Op::Crc32c), &[], refs)
}

/// The readable part of a CRC32C of [`TEXT`]: header, buffer reference, data.
fn crc_readable_part() -> Vec<u8> {
    [crc_block(&[BufRef::direct(9)]), TEXT.to_vec()].concat()
}

/// The CRC32C of [`TEXT`], as in the result of a response.
fn crc_of_text() -> [u8; 4] {
    reference::crc32c(0, TEXT).to_le_bytes()
}

/// The header block of a FILL of `pattern` into one direct output of `len` bytes.
fn fill_block(pattern: u8, len: u64) -> Vec<u8> {
    let params = FillParams {
        pattern,
        ..FillParams::default()
    };
    let req = Req::new(Op::Fill).with_params(&params);
    block(req, &[], &[BufRef::direct(len)])
}

/// A raw chain of the header block `header` alone, then the response.
fn header_alone(header: Vec<u8>) -> impl FnOnce(&mut Ctx, &DmaBuf) -> Sent {
    move |ctx, resp| {
        let hdr = ctx.stage(&header);
        Sent::raw(&[rd(&hdr), wr(resp)]).holding([hdr])
    }
}

/// A raw CRC32C of `data` through the buffer reference `r`.
fn crc_through(r: BufRef, data: &DmaBuf) -> impl FnOnce(&mut Ctx, &DmaBuf) -> Sent + '_ {
    move |ctx, resp| {
        let hdr = ctx.stage(&crc_block(&[r]));
        Sent::raw(&[rd(&hdr), rd(data), wr(resp)]).holding([hdr])
    }
}

/// A FILL into `n` outputs of 8 sentinel bytes: its header block (the
/// FILL of `pattern`) and its outputs.
fn fill_of_outputs(ctx: &Ctx, pattern: u8, n: usize) -> (DmaBuf, Vec<DmaBuf>) {
    let fill = ctx.stage(&fill_block(pattern, 8 * n as u64));
    let outs = (0..n).map(|_| ctx.space(8)).collect();
    (fill, outs)
}

/// The buffers of a FILL chain: its header block, the response, the outputs.
fn fill_chain(fill: &DmaBuf, resp: &DmaBuf, outs: &[DmaBuf]) -> Vec<(u64, u32, bool)> {
    [rd(fill), wr(resp)]
        .into_iter()
        .chain(outs.iter().map(wr))
        .collect()
}

/// A raw FILL into `n` outputs of 8 bytes, which must stay untouched.
fn fill_into_outputs(n: usize) -> impl FnOnce(&mut Ctx, &DmaBuf) -> Sent {
    move |ctx, resp| {
        let (fill, outs) = fill_of_outputs(ctx, 0, n);
        Sent::raw(&fill_chain(&fill, resp, &outs))
            .holding([fill])
            .untouched(outs)
    }
}

/// A raw descriptor from `(gpa, len, writable)` with `NEXT` pointing at `next`.
fn linked(seg: (u64, u32, bool), next: RawNext) -> RawDesc {
    let flags = if seg.2 { DESC_F_WRITE } else { 0 } | DESC_F_NEXT;
    RawDesc::new(seg.0, seg.1, flags, next)
}

fn indirect_desc(gpa: u64, len: u32) -> RawDesc {
    RawDesc::new(gpa, len, DESC_F_INDIRECT, RawNext::Following)
}

/// `DESC_F_INDIRECT` with other flags, pointing at the table at `gpa`.
fn indirect_with(gpa: u64, len: u32, flags: u16) -> RawDesc {
    RawDesc::new(gpa, len, DESC_F_INDIRECT | flags, RawNext::Following)
}

/// Stages an indirect table of `(gpa, len, writable)` buffers, linked in order.
fn stage_table(ctx: &Ctx, entries: &[(u64, u32, bool)]) -> DmaBuf {
    ctx.stage(&Descriptor::table_bytes(&table(entries)))
}

/// An indirect descriptor pointing at all of the table `tab`.
fn indirect_to(tab: &DmaBuf) -> RawDesc {
    indirect_desc(tab.gpa(), len32(tab.len()))
}

/// The 16-byte control response area at the start of `resp`.
fn ctrl_wr(resp: &DmaBuf) -> (u64, u32, bool) {
    (resp.gpa(), 16, true)
}

/// A raw CRC32C of [`TEXT`]: its header block and its data, in two buffers.
struct RawCrc {
    hdr: DmaBuf,
    data: DmaBuf,
}

impl RawCrc {
    fn stage(ctx: &Ctx) -> RawCrc {
        RawCrc {
            hdr: ctx.stage(&crc_block(&[BufRef::direct(9)])),
            data: ctx.stage(TEXT),
        }
    }

    /// The header and the data, linked by NEXT to `rest`.
    fn linked_to(&self, rest: &[RawDesc]) -> Vec<RawDesc> {
        let mut descs = vec![
            linked(rd(&self.hdr), RawNext::Following),
            linked(rd(&self.data), RawNext::Following),
        ];
        descs.extend_from_slice(rest);
        descs
    }

    /// Indirect table entries of the header, the data and the response
    /// `resp`, whose NEXT points at entry `next`.
    fn entries_with_response_next(&self, resp: &DmaBuf, next: u16) -> Vec<Descriptor> {
        let mut entries = table(&[rd(&self.hdr), rd(&self.data), wr(resp)]);
        entries[2] = Descriptor::new(resp.gpa(), 64, DESC_F_WRITE | DESC_F_NEXT, next);
        entries
    }
}

// ---- request header (§6.1, §6.2, §6.5) --------------------------------------

#[test]
fn request_header_defects() {
    within("request_header_defects", || {
        let daemon = Daemon::start();
        let mem = guest_ram(RAM_MIB);
        let mut ctx = Ctx::open(&daemon, &mem, DEFAULT_FEATURES, "request_header_defects");
        ctx.check_alive(0);
        let input = ctx.stage(TEXT);
        let crc = Request::new(Op::Crc32c).input(Buffer::direct(&input));
        let offered = u32::from(ctx.dev.config().ops);
        for cases in [
            short_header_cases(),
            unsupported_op_cases(offered, &input),
            arity_cases(&input),
            reserved_header_cases(&crc),
            parameter_block_cases(&input),
        ] {
            ctx.run_cases(cases);
            ctx.check_alive(0);
        }
        fields_in_range_are_accepted(&mut ctx, &input, &crc);
        ctx.check_alive(0);
        dependency_defects(&mut ctx, &crc);
    });
}

/// The first `len` bytes of a CRC32C's readable part, in one descriptor.
fn readable_prefix(len: usize) -> impl FnOnce(&mut Ctx, &DmaBuf) -> Sent {
    header_alone(crc_readable_part()[..len].to_vec())
}

/// A readable part shorter than the header, or than its buffer reference: Invalid.
fn short_header_cases() -> Vec<Case<'static>> {
    let mut cases: Vec<Case> = [1, 16, 40, 79]
        .map(|len| {
            Case::new(
                format!("{len}-byte readable part"),
                INVALID,
                readable_prefix(len),
            )
        })
        .into();
    cases.extend([
        Case::new(
            "79 bytes of header in 3 descriptors",
            INVALID,
            |ctx, resp| {
                let part = crc_readable_part();
                let pieces =
                    [&part[..30], &part[30..50], &part[50..79]].map(|bytes| ctx.stage(bytes));
                let [a, b, c] = &pieces;
                Sent::raw(&[rd(a), rd(b), rd(c), wr(resp)]).holding(pieces)
            },
        ),
        Case::new("one empty readable descriptor", INVALID, |ctx, resp| {
            let hdr = ctx.stage(&crc_readable_part()[..30]);
            Sent::raw(&[(hdr.gpa(), 0, false), wr(resp)]).holding([hdr])
        }),
        Case::new("no readable descriptor", INVALID, |_, resp| {
            Sent::raw(&[wr(resp)])
        }),
    ]);
    // The header is whole but its buffer reference is missing or cut.
    cases.extend([80, 81, 103].map(|len| {
        let what = format!("{len}-byte readable part (reference cut)");
        Case::new(what, INVALID, readable_prefix(len))
    }));
    let header_only = Request::new(Op::Crc32c).with_header(Req::new(Op::Crc32c));
    cases.push(Case::request(
        "header without its buffer reference",
        INVALID,
        header_only,
    ));
    cases
}

/// Unknown operations, and operations missing from `offered` (the `ops` of
/// the configuration): Unsupported.
fn unsupported_op_cases(offered: u32, input: &DmaBuf) -> Vec<Case<'_>> {
    let mut cases = Vec::new();
    for op in [0u32, 10, 11, 31, 32, 0x100, 0x8000_0000, u32::MAX] {
        let what = format!("op {op:#x}");
        let with_input = Request::raw_op(op).input(Buffer::direct(input));
        cases.push(Case::request(&what, UNSUPPORTED, Request::raw_op(op)));
        cases.push(Case::request(
            format!("{what} with an input"),
            UNSUPPORTED,
            with_input,
        ));
    }
    for &op in Op::ALL.iter().filter(|op| offered & op.capability() == 0) {
        cases.push(Case::new(
            format!("{op:?} not in ops"),
            UNSUPPORTED,
            move |ctx, _| {
                let (req, outs) = ctx.with_buffers(op, input, 64);
                Sent::request(req).untouched(outs)
            },
        ));
    }
    cases
}

/// Operations with a wrong number of inputs or outputs: `(op, inputs, outputs)`.
const WRONG_ARITIES: [(Op, usize, usize); 22] = [
    (Op::Copy, 1, 0),
    (Op::Copy, 0, 1),
    (Op::Copy, 2, 1),
    (Op::Copy, 1, 2),
    (Op::Fill, 0, 0),
    (Op::Fill, 1, 1),
    (Op::Fill, 0, 2),
    (Op::Compare, 1, 0),
    (Op::Compare, 3, 0),
    (Op::Compare, 2, 1),
    (Op::Crc32c, 0, 0),
    (Op::Crc32c, 2, 0),
    (Op::Crc32c, 1, 1),
    (Op::Sha256, 0, 0),
    (Op::Sha256, 1, 1),
    (Op::AesGcmSeal, 1, 1),
    (Op::AesGcmSeal, 2, 0),
    (Op::AesGcmOpen, 2, 2),
    (Op::AesGcmOpen, 3, 1),
    (Op::DeflateCompress, 1, 0),
    (Op::DeflateCompress, 0, 1),
    (Op::DeflateDecompress, 2, 1),
];

/// `num_in` / `num_out` not the operation's arity: Invalid.
fn arity_cases(input: &DmaBuf) -> Vec<Case<'_>> {
    let mut cases: Vec<Case> = WRONG_ARITIES
        .iter()
        .map(|&(op, n_in, n_out)| {
            let what = format!("{op:?} with {n_in} inputs and {n_out} outputs");
            Case::new(what, INVALID, move |ctx, _| {
                let (req, outs) = ctx.with_counts(op, n_in, n_out, input, 64);
                Sent::request(req).untouched(outs)
            })
        })
        .collect();
    let mut huge = Req::new(Op::Copy);
    huge.num_in = u8::MAX;
    huge.num_out = u8::MAX;
    let req = Request::new(Op::Copy).with_header(huge);
    cases.push(Case::request(
        "255 inputs and 255 outputs, none given",
        INVALID,
        req,
    ));
    cases
}

/// A reserved byte of the header: Invalid.
fn reserved_header_cases(crc: &Request) -> Vec<Case<'static>> {
    let mut cases: Vec<Case> = (0..8)
        .map(|i| {
            let mut header = Req::new(Op::Crc32c);
            header.reserved[i] = 1 << i;
            let req = crc.clone().with_header(header);
            Case::request(format!("header reserved byte {i}"), INVALID, req)
        })
        .collect();
    cases.push(Case::new(
        "FILL with a reserved header byte",
        INVALID,
        |ctx, _| {
            let out = ctx.space(100);
            let mut header = Req::new(Op::Fill);
            header.reserved[7] = 0xff;
            let req = Request::new(Op::Fill)
                .output(Buffer::direct(&out))
                .with_header(header);
            Sent::request(req).untouched([out])
        },
    ));
    cases
}

/// Parameter blocks with a reserved byte set or a field out of range:
/// `(name, op, byte, value)`.
const BAD_PARAMS: [(&str, Op, usize, u8); 27] = [
    ("COPY params byte 0", Op::Copy, 0, 1),
    ("COPY params byte 63", Op::Copy, 63, 0x80),
    ("COMPARE params byte 17", Op::Compare, 17, 1),
    ("SHA256 params byte 0", Op::Sha256, 0, 1),
    ("SHA256 params byte 63", Op::Sha256, 63, 1),
    ("CRC32C reserved byte 4", Op::Crc32c, 4, 1),
    ("CRC32C reserved byte 63", Op::Crc32c, 63, 1),
    ("FILL reserved byte 1", Op::Fill, 1, 1),
    ("FILL reserved byte 2", Op::Fill, 2, 0xff),
    ("FILL reserved byte 63", Op::Fill, 63, 1),
    ("DEFLATE_COMPRESS format 3", Op::DeflateCompress, 0, 3),
    ("DEFLATE_COMPRESS format 255", Op::DeflateCompress, 0, 0xff),
    ("DEFLATE_COMPRESS level 10", Op::DeflateCompress, 1, 10),
    ("DEFLATE_COMPRESS level 255", Op::DeflateCompress, 1, 0xff),
    (
        "DEFLATE_COMPRESS reserved byte 2",
        Op::DeflateCompress,
        2,
        1,
    ),
    (
        "DEFLATE_COMPRESS reserved byte 63",
        Op::DeflateCompress,
        63,
        1,
    ),
    ("DEFLATE_DECOMPRESS level 1", Op::DeflateDecompress, 1, 1),
    ("DEFLATE_DECOMPRESS level 9", Op::DeflateDecompress, 1, 9),
    ("DEFLATE_DECOMPRESS format 3", Op::DeflateDecompress, 0, 3),
    (
        "DEFLATE_DECOMPRESS reserved byte 2",
        Op::DeflateDecompress,
        2,
        1,
    ),
    (
        "DEFLATE_DECOMPRESS reserved byte 63",
        Op::DeflateDecompress,
        63,
        1,
    ),
    ("AES_GCM_SEAL tag byte 0", Op::AesGcmSeal, 48, 1),
    ("AES_GCM_SEAL tag byte 15", Op::AesGcmSeal, 63, 0x80),
    ("AES_GCM_SEAL reserved byte 0", Op::AesGcmSeal, 44, 1),
    ("AES_GCM_SEAL reserved byte 3", Op::AesGcmSeal, 47, 1),
    ("AES_GCM_OPEN reserved byte 0", Op::AesGcmOpen, 44, 1),
    ("AES_GCM_OPEN reserved byte 3", Op::AesGcmOpen, 47, 0xff),
];

/// Invalid parameter blocks: Invalid. A non-zero tag is a parameter of
/// AES_GCM_OPEN, not a reserved field: a wrong one fails authentication.
fn parameter_block_cases(input: &DmaBuf) -> Vec<Case<'_>> {
    let mut cases: Vec<Case> = BAD_PARAMS
        .iter()
        .map(|&(what, op, byte, value)| {
            Case::new(what, INVALID, move |ctx, _| {
                let (req, outs) = ctx.with_buffers(op, input, 256);
                Sent::request(req.raw_params(params_with(byte, value))).untouched(outs)
            })
        })
        .collect();
    let auth_failed = Expect::Status(&[Status::AuthFailed]);
    cases.push(Case::new(
        "AES_GCM_OPEN with a wrong tag",
        auth_failed,
        move |ctx, _| {
            let out = ctx.space(64);
            let params = AesGcmParams {
                tag: [0x11; 16],
                ..AesGcmParams::default()
            };
            let req = Request::new(Op::AesGcmOpen)
                .params(&params)
                .input(Buffer::direct(input))
                .input(Buffer::direct(input))
                .output(Buffer::direct(&out));
            Sent::request(req).untouched([out])
        },
    ));
    cases
}

/// Fields in range are accepted (the checks above are not overzealous).
fn fields_in_range_are_accepted(ctx: &mut Ctx, input: &DmaBuf, crc: &Request) {
    let out = ctx.space(100);
    let params = FillParams {
        pattern: 0xff,
        ..FillParams::default()
    };
    let req = Request::new(Op::Fill)
        .params(&params)
        .output(Buffer::direct(&out));
    let done = ctx.expect_ok(0, "FILL pattern 0xff", &req);
    assert_eq!(done.bytes_written(), 100);
    assert_eq!(ctx.mem.read_vec(&out, 0, 100).unwrap(), vec![0xff; 100]);

    let params = Crc32cParams {
        seed: Le32::from(u32::MAX),
        ..Crc32cParams::default()
    };
    let done = ctx.expect_ok(0, "CRC32C seed 0xffffffff", &crc.clone().params(&params));
    assert_eq!(done.result_u32(), reference::crc32c(u32::MAX, TEXT));

    let out = ctx.space(256);
    let params = DeflateParams {
        format: u8::from(DeflateFormat::Gzip),
        level: 9,
        ..DeflateParams::default()
    };
    let req = Request::new(Op::DeflateCompress)
        .params(&params)
        .input(Buffer::direct(input))
        .output(Buffer::direct(&out));
    let done = ctx.expect_ok(0, "DEFLATE_COMPRESS gzip level 9", &req);
    let n = usize::try_from(done.bytes_written()).unwrap();
    let stream = ctx.mem.read_vec(&out, 0, n).unwrap();
    assert_eq!(
        reference::decompress(DeflateFormat::Gzip, &stream).unwrap(),
        TEXT
    );
}

/// Dependencies (§6.2): max_deps of them are accepted, malformed ones and
/// ones naming no issued fence refused, one on another queue accepted.
fn dependency_defects(ctx: &mut Ctx, crc: &Request) {
    let max_deps = usize::try_from(ctx.max_deps()).unwrap();
    let signalled = ctx.expect_ok(0, "CRC32C to depend on", crc).fence();
    let req = crc.clone().deps(vec![signalled; max_deps]);
    ctx.expect_ok(0, "max_deps dependencies", &req);
    ctx.run_cases(malformed_dependency_cases(crc, signalled, max_deps));
    ctx.check_alive(0);
    ctx.run_cases(no_fence_cases(crc));
    // A valid dependency on another queue's fence is accepted.
    ctx.check_alive(1);
    let other = Fence::new(1, u64::from(ctx.peek_fence(1).seqno) - 1);
    let req = crc.clone().dep(other).dep(signalled);
    ctx.expect_ok(0, "dependency on queue 1", &req);
    ctx.check_alive(0);
    ctx.check_alive(1);
}

/// Dependencies that are too many, fewer than `num_deps` or with a
/// reserved byte set.
fn malformed_dependency_cases(
    crc: &Request,
    signalled: Fence,
    max_deps: usize,
) -> Vec<Case<'static>> {
    let mut all_missing = Req::new(Op::Crc32c);
    all_missing.num_deps = Le16::from(u16::MAX);
    let mut two = Req::new(Op::Crc32c);
    two.num_deps = Le16::from(2);
    let mut cases = vec![
        Case::request(
            "max_deps + 1 dependencies",
            LIMIT,
            crc.clone().deps(vec![signalled; max_deps + 1]),
        ),
        // Both Limit and a short readable part.
        Case::request(
            "65535 dependencies, none given",
            Expect::Status(&[Status::Limit, Status::Invalid]),
            crc.clone().with_header(all_missing),
        ),
        // Fewer fences than num_deps, and nothing after them: Invalid.
        Case::request(
            "2 dependencies, 1 given",
            INVALID,
            Request::new(Op::Crc32c).with_header(two).dep(signalled),
        ),
        Case::new(
            "2 dependencies, the first one cut",
            INVALID,
            header_alone(block(two, &[signalled], &[])[..90].to_vec()),
        ),
    ];
    cases.extend((0..6).map(|i| {
        let mut dep = signalled;
        dep.reserved[i] = 1;
        Case::request(
            format!("dependency reserved byte {i}"),
            INVALID,
            crc.clone().dep(dep),
        )
    }));
    cases
}

/// The fence a dependency names, read when its case runs.
type FenceOf = fn(&Ctx) -> Fence;

/// Dependencies naming no issued fence: NoFence.
fn no_fence_cases(crc: &Request) -> Vec<Case<'_>> {
    let deps: [(&str, FenceOf); 7] = [
        ("dependency on a queue that does not exist", |ctx| {
            Fence::new(ctx.queues(), 1)
        }),
        ("dependency on queue 65535", |_| Fence::new(u16::MAX, 1)),
        ("dependency with sequence number 0", |_| Fence::new(0, 0)),
        ("dependency with sequence number 2^64-1", |_| {
            Fence::new(0, u64::MAX)
        }),
        ("dependency on a fence of queue 1 not yet issued", |ctx| {
            ctx.peek_fence(1)
        }),
        ("dependency on its own fence", |ctx| ctx.peek_fence(0)),
        ("dependency on a later fence", |ctx| {
            Fence::new(0, u64::from(ctx.peek_fence(0).seqno) + 1)
        }),
    ];
    deps.map(move |(what, dep)| {
        Case::new(what, NO_FENCE, move |ctx, _| {
            Sent::request(crc.clone().dep(dep(ctx)))
        })
    })
    .into()
}

// ---- buffer references (§6.3, §6.5) -----------------------------------------

#[test]
fn buffer_reference_defects() {
    within("buffer_reference_defects", || {
        let daemon = Daemon::start();
        let mem = guest_ram(RAM_MIB);
        let mut ctx = Ctx::open(&daemon, &mem, DEFAULT_FEATURES, "buffer_reference_defects");
        ctx.check_alive(0);
        let data = ctx.stage(TEXT);
        for cases in [bad_direct_reference_cases(&data), direct_range_cases(&data)] {
            ctx.run_cases(cases);
            ctx.check_alive(0);
        }
        short_direct_buffers_are_accepted(&mut ctx, &data);
        object_reference_defects(&mut ctx, &data);
    });
}

/// A raw FILL through the buffer reference `r` into `out_len` writable
/// bytes, which must stay untouched.
fn fill_through(r: BufRef, out_len: usize) -> impl FnOnce(&mut Ctx, &DmaBuf) -> Sent {
    move |ctx, resp| {
        let hdr = ctx.stage(&block(Req::new(Op::Fill), &[], &[r]));
        let out = ctx.space(out_len);
        Sent::raw(&[rd(&hdr), wr(resp), wr(&out)])
            .holding([hdr])
            .untouched([out])
    }
}

/// Direct references with a non-zero offset, or a non-zero reserved field: Invalid.
fn bad_direct_reference_cases(data: &DmaBuf) -> Vec<Case<'_>> {
    let with_offset = |offset: u64, len: u64| BufRef {
        offset: Le64::from(offset),
        ..BufRef::direct(len)
    };
    let with_reserved = |reserved: u32, len: u64| BufRef {
        reserved: Le32::from(reserved),
        ..BufRef::direct(len)
    };
    let inputs = [
        ("direct input with offset 4", with_offset(4, 5)),
        ("direct input with offset 2^64-1", with_offset(u64::MAX, 9)),
        ("direct input with reserved 1", with_reserved(1, 9)),
        (
            "direct input with reserved 2^31",
            with_reserved(0x8000_0000, 9),
        ),
    ];
    let outputs = [
        ("direct output with offset 1", with_offset(1, 16)),
        ("direct output with reserved 1", with_reserved(1, 16)),
    ];
    let inputs = inputs.map(|(what, r)| Case::new(what, INVALID, crc_through(r, data)));
    let outputs = outputs.map(|(what, r)| Case::new(what, INVALID, fill_through(r, 16)));
    inputs.into_iter().chain(outputs).collect()
}

/// Direct data beyond the chain: Range.
fn direct_range_cases(data: &DmaBuf) -> Vec<Case<'_>> {
    vec![
        Case::new(
            "direct input of 100 bytes, 50 in the chain",
            RANGE,
            |ctx, resp| {
                let hdr = ctx.stage(&crc_block(&[BufRef::direct(100)]));
                let half = ctx.stage(&[7; 50]);
                Sent::raw(&[rd(&hdr), rd(&half), wr(resp)]).holding([hdr, half])
            },
        ),
        Case::new(
            "direct input of 1 byte, none in the chain",
            RANGE,
            header_alone(crc_block(&[BufRef::direct(1)])),
        ),
        Case::new(
            "COMPARE of 10 + 10 direct bytes, 15 in the chain",
            RANGE,
            |ctx, resp| {
                let refs = [BufRef::direct(10), BufRef::direct(10)];
                let hdr = ctx.stage(&block(Req::new(Op::Compare), &[], &refs));
                let some = ctx.stage(&[1; 15]);
                Sent::raw(&[rd(&hdr), rd(&some), wr(resp)]).holding([hdr, some])
            },
        ),
        Case::new(
            "direct output of 100 bytes, 50 writable",
            RANGE,
            fill_through(BufRef::direct(100), 50),
        ),
        Case::new(
            "direct output of 1 byte, no writable byte after the response",
            RANGE,
            header_alone(block(Req::new(Op::Fill), &[], &[BufRef::direct(1)])),
        ),
        Case::new(
            "COPY to a direct output of 20 bytes, 19 writable",
            RANGE,
            move |ctx, resp| {
                let refs = [BufRef::direct(9), BufRef::direct(20)];
                let hdr = ctx.stage(&block(Req::new(Op::Copy), &[], &refs));
                let out = ctx.space(19);
                Sent::raw(&[rd(&hdr), rd(data), wr(resp), wr(&out)])
                    .holding([hdr])
                    .untouched([out])
            },
        ),
    ]
}

/// Bytes after the direct data are ignored; empty buffers are valid.
fn short_direct_buffers_are_accepted(ctx: &mut Ctx, data: &DmaBuf) {
    let hdr = ctx.stage(&crc_block(&[BufRef::direct(5)]));
    let resp = ctx.resp_buf();
    let descs = RawDesc::chain(&[rd(&hdr), rd(data), wr(&resp)]);
    let got = ctx.expect_raw_ok(0, "CRC32C of 5 of 9 readable bytes", &descs, &resp, 64);
    assert_eq!(
        got.result[..4],
        reference::crc32c(0, b"12345").to_le_bytes()
    );

    let hdr = ctx.stage(&crc_block(&[BufRef::direct(0)]));
    let resp = ctx.resp_buf();
    let descs = RawDesc::chain(&[rd(&hdr), wr(&resp)]);
    let got = ctx.expect_raw_ok(0, "CRC32C of an empty direct input", &descs, &resp, 64);
    assert_eq!(got.result, [0; 32]);

    let hdr = ctx.stage(&fill_block(0x5a, 10));
    let resp = ctx.resp_buf();
    let out = ctx.space(20);
    let descs = RawDesc::chain(&[rd(&hdr), wr(&resp), wr(&out)]);
    let got = ctx.expect_raw_ok(0, "FILL of 10 of 20 writable bytes", &descs, &resp, 74);
    assert_eq!(u64::from(got.bytes_written), 10);
    let bytes = ctx.mem.read_vec(&out, 0, 20).unwrap();
    assert_eq!(bytes[..10], [0x5a; 10]);
    assert_eq!(bytes[10..], [SENTINEL; 10], "FILL wrote past its output");
}

/// Object references (§6.3), to an object of two segments of 2048 bytes.
fn object_reference_defects(ctx: &mut Ctx, data: &DmaBuf) {
    let content = ctx.rng.bytes(4096);
    let seg_a = ctx.stage(&content[..2048]);
    let seg_b = ctx.stage(&content[2048..]);
    let handle = ctx
        .dev
        .create_object(&[seg_a.segment(), seg_b.segment()])
        .unwrap();
    let destroyed = ctx.dev.create_object(&[seg_a.segment()]).unwrap();
    ctx.dev.destroy_object(destroyed).unwrap();
    let max_buffer = ctx.max_buffer();
    ctx.run_cases(object_cases(handle, destroyed, data, max_buffer));
    let mut now = ctx.mem.read_vec(&seg_a, 0, 2048).unwrap();
    now.extend(ctx.mem.read_vec(&seg_b, 0, 2048).unwrap());
    assert!(now == content, "a rejected FILL modified the object");
    object_ranges_are_accepted(ctx, handle, &content);
    ctx.check_alive(0);
    ctx.check_control_alive(0);
    ctx.dev.destroy_object(handle).unwrap();
    let req = Request::new(Op::Crc32c).input(Buffer::object(handle, 0, 9));
    ctx.run_case(Case::request("destroyed handle", NO_OBJECT, req));
    ctx.check_alive(0);
}

/// Unknown handles: NoObject; bytes outside the object of 4096 bytes
/// `handle`: Range; past max_buffer_size and past the chain or the object:
/// Limit or Range.
fn object_cases(handle: u32, destroyed: u32, data: &DmaBuf, max_buffer: u64) -> Vec<Case<'_>> {
    let obj_crc = |offset, len| Request::new(Op::Crc32c).input(Buffer::object(handle, offset, len));
    let mut cases = Vec::new();
    let unknown_handles = [0x1234_5678u32, u32::MAX, handle ^ 0x8000_0000, destroyed];
    for unknown in unknown_handles.into_iter().filter(|&h| h != handle) {
        let what = format!("unknown handle {unknown:#x}");
        let input = Request::new(Op::Crc32c).input(Buffer::object(unknown, 0, 9));
        let output = Request::new(Op::Copy)
            .input(Buffer::direct(data))
            .output(Buffer::object(unknown, 0, 9));
        cases.push(Case::request(&what, NO_OBJECT, input));
        cases.push(Case::request(
            format!("output to {what}"),
            NO_OBJECT,
            output,
        ));
    }
    let outside: [(u64, u64); 7] = [
        (4000, 200),
        (0, 4097),
        (4096, 1),
        (4097, 0),
        (u64::MAX, 0),
        (u64::MAX, 1),
        (u64::MAX - 5, 10),
    ];
    cases.extend(outside.map(|(offset, len)| {
        let what = format!("object bytes {offset:#x}+{len:#x} of 4096");
        Case::request(what, RANGE, obj_crc(offset, len))
    }));
    let params = FillParams {
        pattern: 0x77,
        ..FillParams::default()
    };
    let fill = Request::new(Op::Fill)
        .params(&params)
        .output(Buffer::object(handle, 4090, 10));
    cases.extend([
        Case::request("FILL of object bytes 4090+10 of 4096", RANGE, fill),
        Case::request(
            "object buffer longer than max_buffer_size",
            LIMIT_OR_RANGE,
            obj_crc(0, max_buffer + 1),
        ),
        Case::new(
            "direct input of 2^64-1 bytes",
            LIMIT_OR_RANGE,
            crc_through(BufRef::direct(u64::MAX), data),
        ),
    ]);
    cases
}

/// Ranges inside the object `handle` of `content` are accepted.
fn object_ranges_are_accepted(ctx: &mut Ctx, handle: u32, content: &[u8]) {
    for (offset, len) in [(4096u64, 0u64), (0, 4096), (2000, 100), (4095, 1)] {
        let what = format!("object bytes {offset}+{len} of 4096");
        let req = Request::new(Op::Crc32c).input(Buffer::object(handle, offset, len));
        let done = ctx.expect_ok(0, &what, &req);
        let (start, end) = (
            usize::try_from(offset).unwrap(),
            usize::try_from(offset + len).unwrap(),
        );
        assert_eq!(
            done.result_u32(),
            reference::crc32c(0, &content[start..end]),
            "{what}"
        );
    }
}

#[test]
fn buffer_size_limit() {
    within("buffer_size_limit", || {
        let Some(daemon) = custom_daemon("buffer_size_limit", |config| {
            config.limits.max_buffer_size = 4096;
            config.limits.max_object_size = 16384;
        }) else {
            return;
        };
        let mem = guest_ram(RAM_MIB);
        let mut ctx = Ctx::open(&daemon, &mem, DEFAULT_FEATURES, "buffer_size_limit");
        assert_eq!(ctx.max_buffer(), 4096);
        ctx.check_alive(0);
        let content = ctx.rng.bytes(8192);
        let big = ctx.stage(&content[..4097]);
        let exact = ctx.stage(&content[..4096]);
        let object = ctx.stage(&content);
        let handle = ctx.dev.create_object(&[object.segment()]).unwrap();
        ctx.run_cases(over_max_buffer_cases(&big, &exact, handle));
        assert!(
            ctx.mem.read_vec(&object, 0, 8192).unwrap() == content,
            "a rejected FILL modified the object"
        );

        let done = ctx.expect_ok(
            0,
            "object buffer of max_buffer_size bytes",
            &Request::new(Op::Crc32c).input(Buffer::object(handle, 100, 4096)),
        );
        assert_eq!(done.result_u32(), reference::crc32c(0, &content[100..4196]));
        let done = ctx.expect_ok(
            0,
            "direct input of max_buffer_size bytes",
            &Request::new(Op::Crc32c).input(Buffer::direct(&exact)),
        );
        assert_eq!(done.result_u32(), reference::crc32c(0, &content[..4096]));
        ctx.check_alive(0);
        ctx.check_control_alive(0);
    });
}

/// Buffers of max_buffer_size + 1 bytes (`big`, or 4097 bytes of the object
/// `handle`), `exact` having max_buffer_size bytes: Limit.
fn over_max_buffer_cases<'a>(big: &'a DmaBuf, exact: &'a DmaBuf, handle: u32) -> Vec<Case<'a>> {
    let compare = Request::new(Op::Compare)
        .input(Buffer::direct(exact))
        .input(Buffer::direct(big));
    let requests = [
        (
            "direct input of max_buffer_size + 1 bytes",
            Request::new(Op::Crc32c).input(Buffer::direct(big)),
        ),
        ("second COMPARE input over max_buffer_size", compare),
        (
            "object buffer of max_buffer_size + 1 bytes",
            Request::new(Op::Crc32c).input(Buffer::object(handle, 0, 4097)),
        ),
        (
            "object output of max_buffer_size + 1 bytes",
            Request::new(Op::Fill).output(Buffer::object(handle, 100, 4097)),
        ),
    ];
    let mut cases: Vec<Case> = requests
        .map(|(what, req)| Case::request(what, LIMIT, req))
        .into();
    cases.extend([
        Case::new(
            "direct output of max_buffer_size + 1 bytes",
            LIMIT,
            |ctx, _| {
                let out = ctx.space(4097);
                Sent::request(Request::new(Op::Fill).output(Buffer::direct(&out))).untouched([out])
            },
        ),
        Case::new(
            "COPY to an output over max_buffer_size",
            LIMIT,
            move |ctx, _| {
                let out = ctx.space(4097);
                let req = Request::new(Op::Copy)
                    .input(Buffer::direct(exact))
                    .output(Buffer::direct(&out));
                Sent::request(req).untouched([out])
            },
        ),
    ]);
    cases
}

// ---- features not negotiated (§3.2) -----------------------------------------

#[test]
fn features_not_negotiated() {
    within("features_not_negotiated", || {
        let daemon = Daemon::start();
        let mem = guest_ram(RAM_MIB);
        let objects = feature(VIRTIO_ACCEL_F_OBJECTS);
        let fences = feature(VIRTIO_ACCEL_F_FENCES);
        for (features, label) in [
            (DEFAULT_FEATURES & !objects, "without OBJECTS"),
            (DEFAULT_FEATURES & !fences, "without FENCES"),
            (
                DEFAULT_FEATURES & !objects & !fences,
                "without OBJECTS and FENCES",
            ),
        ] {
            let mut ctx = Ctx::open(&daemon, &mem, features, "features_not_negotiated");
            assert_eq!(
                ctx.dev.features() & (objects | fences),
                features & (objects | fences)
            );
            ctx.check_alive(0);
            let data = ctx.stage(TEXT);
            let crc = Request::new(Op::Crc32c).input(Buffer::direct(&data));
            let earlier = ctx.expect_ok(0, "CRC32C", &crc).fence();
            let seg = ctx.stage(&[3; 64]);
            if features & objects == 0 {
                ctx.run_cases(without_objects_cases(label, &data, &seg));
            } else {
                objects_are_served(&mut ctx, &seg);
            }
            if features & fences == 0 {
                ctx.run_cases(without_fences_cases(label, &crc, earlier));
            } else {
                fences_are_served(&mut ctx, &crc, earlier);
            }
            ctx.check_alive(0);
            ctx.check_alive(1);
        }
    });
}

/// Object buffers and object commands without OBJECTS: Unsupported.
fn without_objects_cases(label: &str, data: &DmaBuf, seg: &DmaBuf) -> Vec<Case<'static>> {
    let mut cases = Vec::new();
    for handle in [1u32, 2, u32::MAX] {
        let input = Request::new(Op::Crc32c).input(Buffer::object(handle, 0, 9));
        let output = Request::new(Op::Copy)
            .input(Buffer::direct(data))
            .output(Buffer::object(handle, 0, 9));
        let what = format!("object input {handle:#x} {label}");
        cases.push(Case::request(what, UNSUPPORTED, input));
        let what = format!("object output {handle:#x} {label}");
        cases.push(Case::request(what, UNSUPPORTED, output));
    }
    let segment = seg_bytes(&[seg.segment()]);
    let what = format!("OBJECT_CREATE {label}");
    cases.push(Case::command(what, UNSUPPORTED, CREATE, 1, 0, &segment));
    let what = format!("OBJECT_DESTROY {label}");
    cases.push(Case::command(what, UNSUPPORTED, DESTROY, 0, 1, &[]));
    cases
}

/// Dependencies and fence commands without FENCES: Unsupported.
fn without_fences_cases(label: &str, crc: &Request, earlier: Fence) -> Vec<Case<'static>> {
    let fence = earlier.as_slice();
    vec![
        Case::request(
            format!("a dependency {label}"),
            UNSUPPORTED,
            crc.clone().dep(earlier),
        ),
        Case::command(
            format!("FENCE_QUERY {label}"),
            UNSUPPORTED,
            QUERY,
            1,
            0,
            fence,
        ),
        Case::command(
            format!("FENCE_WAIT {label}"),
            UNSUPPORTED,
            WAIT,
            1,
            0,
            fence,
        ),
    ]
}

fn objects_are_served(ctx: &mut Ctx, seg: &DmaBuf) {
    let handle = ctx.dev.create_object(&[seg.segment()]).unwrap();
    let req = Request::new(Op::Crc32c).input(Buffer::object(handle, 0, 64));
    let done = ctx.expect_ok(0, "object input", &req);
    assert_eq!(done.result_u32(), reference::crc32c(0, &[3; 64]));
    ctx.dev.destroy_object(handle).unwrap();
}

fn fences_are_served(ctx: &mut Ctx, crc: &Request, earlier: Fence) {
    ctx.expect_ok(0, "a dependency", &crc.clone().dep(earlier));
    assert!(ctx.dev.query_fence(earlier).unwrap());
    ctx.dev.wait_fences(&[earlier]).unwrap();
}

// ---- descriptor chains (§6.5, §10) ------------------------------------------

#[test]
fn descriptor_defects() {
    within("descriptor_defects", || {
        let daemon = Daemon::start();
        let mem = guest_ram(RAM_MIB);
        let mut ctx = Ctx::open(&daemon, &mem, DEFAULT_FEATURES, "descriptor_defects");
        ctx.check_alive(0);
        let ram_end = mem.size();
        let f = RawCrc::stage(&ctx);
        let size = ctx.queue_size(1);
        let max_seg = usize::try_from(ctx.max_segments()).unwrap();

        // A well-formed raw chain, for reference.
        let resp = ctx.resp_buf();
        let descs = RawDesc::chain(&[rd(&f.hdr), rd(&f.data), wr(&resp)]);
        let got = ctx.expect_raw_ok(0, "raw CRC32C", &descs, &resp, 64);
        assert_eq!(got.result[..4], crc_of_text());

        ctx.run_cases(readable_after_writable_cases(&f));
        ctx.check_alive(0);
        ctx.run_cases(too_many_descriptors_cases(max_seg));
        max_segments_descriptors_are_accepted(&mut ctx, max_seg);
        ctx.check_alive(0);
        for cases in [
            outside_memory_cases(&f, ram_end),
            next_out_of_the_table_cases(&f, size),
        ] {
            ctx.run_cases(cases);
            ctx.check_alive(0);
        }
        let (good, _good_resp) = accepted_indirect_table(&mut ctx, &f);
        for cases in [
            indirect_table_cases(&f, &good, ram_end),
            no_room_for_the_response_cases(&f),
        ] {
            ctx.run_cases(cases);
            ctx.check_alive(0);
        }
        split_parts_are_accepted(&mut ctx, &f);
        output_sharing_the_response_descriptor_is_accepted(&mut ctx);
        ctx.check_alive(0);
        ctx.check_alive(1);
        ctx.check_control_alive(0);
    });
}

/// A readable descriptor after a writable one: Invalid, in the response.
fn readable_after_writable_cases(f: &RawCrc) -> Vec<Case<'_>> {
    vec![
        Case::new("readable after writable", INVALID, move |_, resp| {
            Sent::raw(&[rd(&f.hdr), wr(resp), rd(&f.data)])
        }),
        Case::new(
            "FILL with readable between writables",
            INVALID,
            move |ctx, resp| {
                let fill = ctx.stage(&fill_block(0, 16));
                let out = ctx.space(16);
                Sent::raw(&[rd(&fill), wr(resp), rd(&f.data), wr(&out)])
                    .holding([fill])
                    .untouched([out])
            },
        ),
    ]
}

/// A CRC32C of `bytes` in one descriptor per byte, the response last:
/// the chain and the buffers it points into.
fn crc_bytewise(ctx: &Ctx, bytes: &[u8], resp: &DmaBuf) -> (Vec<RawDesc>, [DmaBuf; 2]) {
    let n = bytes.len();
    let head = ctx.stage(&crc_block(&[BufRef::direct(n as u64)]));
    let data = ctx.stage(bytes);
    let mut chain = vec![rd(&head)];
    chain.extend((0..n).map(|i| (data.gpa() + i as u64, 1, false)));
    chain.push(wr(resp));
    (RawDesc::chain(&chain), [head, data])
}

/// More descriptors than max_segments: Limit, the response located in the
/// first max_segments descriptors, or used length 0. An indirect table
/// counts its entries.
fn too_many_descriptors_cases(max_seg: usize) -> Vec<Case<'static>> {
    let n = max_seg + 6;
    vec![
        Case::new("max_segments + 8 descriptors", LIMIT, fill_into_outputs(n)),
        Case::new(
            "max_segments + 8 descriptors, response at the end",
            Expect::Nothing,
            move |ctx, resp| {
                let (descs, buffers) = crc_bytewise(ctx, &vec![9; n], resp);
                Sent::descs(descs).holding(buffers)
            },
        ),
        Case::new(
            "indirect table of max_segments + 1",
            LIMIT,
            move |ctx, resp| {
                let (fill, outs) = fill_of_outputs(ctx, 0x3c, max_seg - 1);
                let tab = stage_table(ctx, &fill_chain(&fill, resp, &outs));
                Sent::descs([indirect_to(&tab)])
                    .holding([fill, tab])
                    .untouched(outs)
            },
        ),
    ]
}

/// Exactly max_segments descriptors is fine, in the chain or in an
/// indirect table.
fn max_segments_descriptors_are_accepted(ctx: &mut Ctx, max_seg: usize) {
    let n = max_seg - 2;
    let bytes = ctx.rng.bytes(n);
    let resp = ctx.resp_buf();
    let (descs, _buffers) = crc_bytewise(ctx, &bytes, &resp);
    let got = ctx.expect_raw_ok(0, "max_segments descriptors", &descs, &resp, 64);
    assert_eq!(got.result[..4], reference::crc32c(0, &bytes).to_le_bytes());

    let resp = ctx.resp_buf();
    let (fill, outs) = fill_of_outputs(ctx, 0x3c, n);
    let tab = stage_table(ctx, &fill_chain(&fill, &resp, &outs));
    let used = len32(64 + 8 * n);
    let what = "indirect table of max_segments";
    ctx.expect_raw_ok(0, what, &[indirect_to(&tab)], &resp, used);
    for o in &outs {
        assert_eq!(ctx.mem.read_vec(o, 0, 8).unwrap(), [0x3c; 8], "{what}");
    }
}

/// Descriptors outside guest memory: BadAddress; the response there: used
/// length 0.
fn outside_memory_cases(f: &RawCrc, ram_end: u64) -> Vec<Case<'_>> {
    let inputs: [(&str, u64, u32); 6] = [
        ("input past the end of guest memory", ram_end + 0x1000, 9),
        ("input right at the end of guest memory", ram_end, 9),
        ("input straddling the end of guest memory", ram_end - 4, 9),
        ("input far away", 1 << 48, 9),
        ("input whose addr + len overflows", u64::MAX - 4, 9),
        ("input of 1 GiB from address 0", 0, 1 << 30),
    ];
    let outputs = [
        ("output outside guest memory", ram_end + 0x1000),
        ("output straddling the end of guest memory", ram_end - 8),
        ("output whose addr + len overflows", u64::MAX - 8),
    ];
    let responses = [
        ("response outside guest memory", ram_end + 0x1000),
        ("response straddling the end of guest memory", ram_end - 32),
        ("response whose addr + len overflows", u64::MAX - 31),
    ];
    let mut cases: Vec<Case> = inputs
        .map(move |(what, addr, len)| {
            Case::new(what, BAD_ADDRESS, move |_, resp| {
                Sent::raw(&[rd(&f.hdr), (addr, len, false), wr(resp)])
            })
        })
        .into();
    cases.push(Case::new(
        "header outside guest memory",
        BAD_ADDRESS,
        move |_, resp| Sent::raw(&[(ram_end + 0x1000, 104, false), wr(resp)]),
    ));
    cases.extend(outputs.map(|(what, addr)| {
        Case::new(what, BAD_ADDRESS, move |ctx, resp| {
            let fill = ctx.stage(&fill_block(0, 16));
            Sent::raw(&[rd(&fill), wr(resp), (addr, 16, true)]).holding([fill])
        })
    }));
    cases.extend(responses.map(move |(what, addr)| {
        Case::new(what, Expect::Nothing, move |_, _| {
            Sent::raw(&[rd(&f.hdr), rd(&f.data), (addr, 64, true)])
        })
    }));
    cases
}

/// `next` out of the table: Invalid, or used length 0 when nothing is
/// writable.
fn next_out_of_the_table_cases(f: &RawCrc, size: u16) -> Vec<Case<'_>> {
    [size, size + 1, u16::MAX]
        .into_iter()
        .flat_map(move |next| {
            let what = format!("next = {next} in a queue of {size}");
            [
                Case::new(&what, INVALID, move |_, resp| {
                    Sent::descs(f.linked_to(&[linked(wr(resp), RawNext::Absolute(next))]))
                }),
                Case::new(
                    format!("{what}, nothing writable"),
                    Expect::Nothing,
                    move |_, _| Sent::descs([linked(rd(&f.hdr), RawNext::Absolute(next))]),
                ),
            ]
        })
        .collect()
}

/// Stages an indirect table of `f`'s CRC32C and checks that it is
/// accepted; returns the table and its response buffer.
fn accepted_indirect_table(ctx: &mut Ctx, f: &RawCrc) -> (DmaBuf, DmaBuf) {
    let resp = ctx.resp_buf();
    let tab = stage_table(ctx, &[rd(&f.hdr), rd(&f.data), wr(&resp)]);
    let got = ctx.expect_raw_ok(0, "indirect table", &[indirect_to(&tab)], &resp, 64);
    assert_eq!(got.result[..4], crc_of_text());
    (tab, resp)
}

/// Indirect tables outside guest memory, cut, empty, nested, or with
/// `next` past their end; `good` is a well-formed table of three
/// descriptors.
fn indirect_table_cases<'a>(f: &'a RawCrc, good: &'a DmaBuf, ram_end: u64) -> Vec<Case<'a>> {
    let after_response = move |resp: &DmaBuf, table: RawDesc| {
        Sent::descs(f.linked_to(&[linked(wr(resp), RawNext::Following), table]))
    };
    let mut cases = Vec::new();
    for (what, addr) in [
        ("indirect table outside guest memory", ram_end + 0x1000),
        (
            "indirect table straddling the end of guest memory",
            ram_end - 16,
        ),
        ("indirect table whose addr + len overflows", u64::MAX - 16),
    ] {
        cases.push(Case::new(what, Expect::Nothing, move |_, _| {
            Sent::descs([indirect_desc(addr, 48)])
        }));
        // After a direct response: the chain is malformed or its
        // descriptor is outside guest memory.
        cases.push(Case::new(
            format!("{what}, after the response"),
            Expect::Status(&[Status::Invalid, Status::BadAddress]),
            move |_, resp| after_response(resp, indirect_desc(addr, 48)),
        ));
    }
    // 40 bytes of a table of three: the response's descriptor is not
    // among its two whole descriptors (§6.5).
    let cut = indirect_desc(good.gpa(), 40);
    cases.extend([
        Case::new(
            "indirect table of 40 bytes",
            Expect::Nothing,
            move |_, _| Sent::descs([cut]),
        ),
        Case::new(
            "indirect table of 40 bytes after the response",
            INVALID,
            move |_, resp| after_response(resp, cut),
        ),
        Case::new("empty indirect table", Expect::Nothing, move |_, _| {
            Sent::descs([indirect_desc(good.gpa(), 0)])
        }),
        // An indirect descriptor inside an indirect table.
        Case::new("nested indirect table", INVALID, move |ctx, resp| {
            let inner_out = ctx.space(8);
            let inner = stage_table(ctx, &[wr(&inner_out)]);
            let mut entries = f.entries_with_response_next(resp, 3);
            entries.push(Descriptor::new(inner.gpa(), 16, DESC_F_INDIRECT, 0));
            let nested = ctx.stage(&Descriptor::table_bytes(&entries));
            Sent::descs([indirect_desc(nested.gpa(), 64)])
                .holding([inner, nested])
                .untouched([inner_out])
        }),
        Case::new(
            "next past the end of an indirect table",
            INVALID,
            move |ctx, resp| {
                let entries = f.entries_with_response_next(resp, 3);
                let past = ctx.stage(&Descriptor::table_bytes(&entries));
                Sent::descs([indirect_desc(past.gpa(), 48)]).holding([past])
            },
        ),
    ]);
    cases
}

/// Writable part shorter than 64 bytes: used length 0, nothing written.
fn no_room_for_the_response_cases(f: &RawCrc) -> Vec<Case<'_>> {
    let crc = Request::new(Op::Crc32c).input(Buffer::direct(&f.data));
    let mut cases: Vec<Case> = [0u32, 1, 32, 63]
        .map(|len| {
            let what = format!("{len}-byte response area");
            Case::request(what, Expect::Nothing, crc.clone().with_resp_len(len))
        })
        .into();
    cases.extend([
        Case::new(
            "raw 63-byte response area",
            Expect::Nothing,
            move |_, resp| Sent::raw(&[rd(&f.hdr), rd(&f.data), (resp.gpa(), 63, true)]),
        ),
        Case::new(
            "16-byte response area, then a readable descriptor",
            Expect::Nothing,
            move |_, resp| Sent::raw(&[rd(&f.hdr), (resp.gpa(), 16, true), rd(&f.data)]),
        ),
        Case::new("no writable descriptor", Expect::Nothing, move |_, _| {
            Sent::raw(&[rd(&f.hdr), rd(&f.data)])
        }),
    ]);
    cases
}

/// The parts are byte streams: a response split over descriptors,
/// zero-length descriptors.
fn split_parts_are_accepted(ctx: &mut Ctx, f: &RawCrc) {
    let resp = ctx.resp_buf();
    let chain = [
        rd(&f.hdr),
        rd(&f.data),
        (resp.gpa(), 32, true),
        (resp.gpa() + 32, 32, true),
    ];
    let descs = RawDesc::chain(&chain);
    let got = ctx.expect_raw_ok(0, "response in two descriptors", &descs, &resp, 64);
    assert_eq!(got.result[..4], crc_of_text());

    let resp = ctx.resp_buf();
    let split = ctx.stage(&crc_block(&[BufRef::direct(9)]));
    let (s, d, r) = (split.gpa(), f.data.gpa(), resp.gpa());
    let mut chain = vec![
        (s, 0, false),
        (s, 1, false),
        (s + 1, 0, false),
        (s + 1, 78, false),
        (s + 79, 20, false),
        (s + 99, 5, false),
        (d, 0, false),
        (d, 4, false),
        (d + 4, 5, false),
        (d, 0, false),
        (r, 0, true),
    ];
    chain.extend((0..4).map(|i| (r + 16 * i, 16, true)));
    chain.push((r, 0, true));
    let descs = RawDesc::chain(&chain);
    let got = ctx.expect_raw_ok(0, "chain with zero-length descriptors", &descs, &resp, 64);
    assert_eq!(got.result[..4], crc_of_text());
}

/// The response ends inside the descriptor where the output begins.
fn output_sharing_the_response_descriptor_is_accepted(ctx: &mut Ctx) {
    let what = "FILL sharing a descriptor with the response";
    let fill = ctx.stage(&fill_block(0xe1, 16));
    let area = ctx.space(96);
    let chain = [
        rd(&fill),
        (area.gpa(), 40, true),
        (area.gpa() + 40, 30, true),
        (area.gpa() + 70, 26, true),
    ];
    let (used, _, fence) = ctx.raw_request(0, what, &RawDesc::chain(&chain), &area);
    let got = ctx.mem.read_obj::<Resp>(&area, 0).unwrap();
    assert_eq!(
        u32::from(got.status),
        0,
        "{what}: {}",
        status_name(u32::from(got.status))
    );
    assert_eq!(got.fence, fence);
    assert_eq!(used.len, 80);
    let bytes = ctx.mem.read_vec(&area, 64, 32).unwrap();
    assert_eq!(bytes[..16], [0xe1; 16]);
    assert_eq!(bytes[16..], [SENTINEL; 16]);
}

/// §6.5: the response is located as soon as the walk reaches 64 writable
/// bytes; every other defect of the chain is reported in it, not by used
/// length 0. Indirect descriptors: trailing bytes of a table, NEXT and WRITE.
#[test]
fn response_located_in_malformed_chains() {
    within("response_located_in_malformed_chains", || {
        let daemon = Daemon::start();
        let mem = guest_ram(RAM_MIB);
        let name = "response_located_in_malformed_chains";
        let mut ctx = Ctx::open(&daemon, &mem, DEFAULT_FEATURES, name);
        ctx.check_alive(0);
        // Header, buffer reference and data in one readable buffer.
        let whole = ctx.stage(&crc_readable_part());
        let fill = ctx.stage(&fill_block(0x5a, 16));

        // A table of two descriptors, given 32 bytes: well-formed.
        let resp = ctx.resp_buf();
        let tab = stage_table(&ctx, &[rd(&whole), wr(&resp)]);
        let what = "indirect table of 32 bytes";
        let got = ctx.expect_raw_ok(0, what, &[indirect_to(&tab)], &resp, 64);
        assert_eq!(got.result[..4], crc_of_text());
        for cases in [
            trailing_table_bytes_cases(&whole),
            indirect_with_next_cases(&fill),
        ] {
            ctx.run_cases(cases);
            ctx.check_alive(0);
        }
        writable_indirect_descriptors_are_ignored(&mut ctx, &whole, &fill);
        ctx.check_alive(0);

        let crc = Request::new(Op::Crc32c).input(Buffer::direct(&whole));
        let issued = ctx.expect_ok(0, "CRC32C", &crc).fence();
        ctx.run_cases(control_table_cases(issued));
        ctx.check_alive(0);
        ctx.check_alive(1);
        ctx.check_control_alive(0);
    });
}

/// The table of two descriptors given 40 or 47 bytes: its two whole
/// descriptors hold the response; the trailing bytes make the chain
/// malformed.
fn trailing_table_bytes_cases(whole: &DmaBuf) -> Vec<Case<'_>> {
    [40, 47]
        .map(move |len| {
            let what = format!("indirect table of {len} bytes holding the response");
            Case::new(what, INVALID, move |ctx, resp| {
                let tab = stage_table(ctx, &[rd(whole), wr(resp)]);
                Sent::descs([indirect_desc(tab.gpa(), len)]).holding([tab])
            })
        })
        .into()
}

/// INDIRECT with NEXT: malformed; the table is walked (it holds the
/// response), the descriptor after it is not.
fn indirect_with_next_cases(fill: &DmaBuf) -> Vec<Case<'_>> {
    vec![
        Case::new(
            "indirect descriptor with NEXT, output in the table",
            INVALID,
            move |ctx, resp| {
                let out = ctx.space(16);
                let after = ctx.space(16);
                let tab = stage_table(ctx, &[rd(fill), wr(resp), wr(&out)]);
                let descs = [
                    indirect_with(tab.gpa(), 48, DESC_F_NEXT),
                    RawDesc::chain(&[wr(&after)])[0],
                ];
                Sent::descs(descs).holding([tab]).untouched([out, after])
            },
        ),
        Case::new(
            "indirect descriptor with NEXT to the output",
            INVALID,
            move |ctx, resp| {
                let out = ctx.space(16);
                let tab = stage_table(ctx, &[rd(fill), wr(resp)]);
                let descs = [
                    indirect_with(tab.gpa(), 32, DESC_F_NEXT),
                    RawDesc::chain(&[wr(&out)])[0],
                ];
                Sent::descs(descs).holding([tab]).untouched([out])
            },
        ),
    ]
}

/// WRITE on a descriptor that points to a table is ignored (virtio 1.2,
/// 2.7.5.3.2): the chain is well-formed, also after a readable descriptor.
fn writable_indirect_descriptors_are_ignored(ctx: &mut Ctx, whole: &DmaBuf, fill: &DmaBuf) {
    let resp = ctx.resp_buf();
    let tab = stage_table(ctx, &[rd(whole), wr(&resp)]);
    let descs = [indirect_with(tab.gpa(), 32, DESC_F_WRITE)];
    let what = "indirect table marked writable";
    let got = ctx.expect_raw_ok(0, what, &descs, &resp, 64);
    assert_eq!(got.result[..4], crc_of_text(), "{what}");

    let f = RawCrc::stage(ctx);
    let resp = ctx.resp_buf();
    let tab = stage_table(ctx, &[rd(&f.data), wr(&resp)]);
    let descs = [
        linked(rd(&f.hdr), RawNext::Following),
        indirect_with(tab.gpa(), 32, DESC_F_WRITE),
    ];
    let what = "indirect table marked writable after a readable descriptor";
    let got = ctx.expect_raw_ok(0, what, &descs, &resp, 64);
    assert_eq!(got.result[..4], crc_of_text(), "{what}");

    let resp = ctx.resp_buf();
    let out = ctx.space(16);
    let tab = stage_table(ctx, &[wr(&resp), wr(&out)]);
    let descs = [
        linked(rd(fill), RawNext::Following),
        indirect_with(tab.gpa(), 32, DESC_F_WRITE),
    ];
    let what = "FILL with its writable part in a table marked writable";
    ctx.expect_raw_ok(0, what, &descs, &resp, 80);
    assert_eq!(ctx.mem.read_vec(&out, 0, 16).unwrap(), [0x5a; 16], "{what}");
}

/// A FENCE_QUERY of `fence` in an indirect table given `len` bytes, its
/// descriptor with `flags` besides INDIRECT.
fn query_in_table(fence: Fence, len: u32, flags: u16) -> impl FnOnce(&mut Ctx, &DmaBuf) -> Sent {
    move |ctx, resp| {
        let query = ctx.stage(&ctrl_block(QUERY, 1, 0, fence.as_slice()));
        let tab = stage_table(ctx, &[rd(&query), ctrl_wr(resp)]);
        Sent::command_descs([indirect_with(tab.gpa(), len, flags)]).holding([query, tab])
    }
}

/// The control queue locates its 16-byte response the same way.
fn control_table_cases(issued: Fence) -> Vec<Case<'static>> {
    vec![
        Case::new(
            "control: indirect table",
            ANSWERED_OK,
            query_in_table(issued, 32, 0),
        ),
        Case::new(
            "control: indirect table of 40 bytes",
            INVALID,
            query_in_table(issued, 40, 0),
        ),
        Case::new(
            "control: indirect descriptor with NEXT",
            INVALID,
            query_in_table(issued, 32, DESC_F_NEXT),
        ),
    ]
}

#[test]
fn descriptor_loops() {
    within("descriptor_loops", || {
        let daemon = Daemon::start();
        let mem = guest_ram(RAM_MIB);
        let mut ctx = Ctx::open(&daemon, &mem, DEFAULT_FEATURES, "descriptor_loops");
        ctx.check_alive(0);
        let f = RawCrc::stage(&ctx);
        let out = ctx.space(8);
        let out2 = ctx.space(8);

        // A loop is a malformed chain (§6.5): Invalid in the response, or used
        // length 0; never a hang. Every case runs; the mismatches are
        // reported together at the end.
        let cases = loop_cases(&f, &out, &out2);
        let count = cases.len();
        let failures: Vec<String> = cases
            .into_iter()
            .filter_map(|case| failure_of(&mut ctx, case))
            .collect();
        ctx.untouched(&out, "loops");
        ctx.untouched(&out2, "loops");

        // Nothing writable: used length 0.
        let descs = [
            linked(rd(&f.hdr), RawNext::Following),
            linked(rd(&f.data), RawNext::Desc(1)),
        ];
        let what = "readable descriptor linked to itself";
        ctx.run_case(Case::new(what, Expect::Nothing, |_, _| Sent::descs(descs)));
        ctx.check_alive(0);
        ctx.check_alive(1);
        ctx.check_control_alive(0);
        assert!(
            failures.is_empty(),
            "{} of {count} loop cases failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
    });
}

/// Loops through the response, through the outputs `out` and `out2`, back
/// to the head, and inside an indirect table.
fn loop_cases<'a>(f: &'a RawCrc, out: &'a DmaBuf, out2: &'a DmaBuf) -> Vec<Case<'a>> {
    const LOOP: Expect = Expect::StatusOrNothing(&[Status::Invalid]);
    vec![
        Case::new(
            "response descriptor linked to itself",
            LOOP,
            move |_, resp| Sent::descs(f.linked_to(&[linked(wr(resp), RawNext::Desc(2))])),
        ),
        Case::new(
            "two writable descriptors in a loop",
            LOOP,
            move |_, resp| {
                Sent::descs(f.linked_to(&[
                    linked(wr(resp), RawNext::Following),
                    linked(wr(out), RawNext::Desc(2)),
                ]))
            },
        ),
        Case::new(
            "loop between two output descriptors",
            LOOP,
            move |_, resp| {
                Sent::descs(f.linked_to(&[
                    linked(wr(resp), RawNext::Following),
                    linked(wr(out), RawNext::Following),
                    linked(wr(out2), RawNext::Desc(3)),
                ]))
            },
        ),
        Case::new("chain looping back to its head", LOOP, move |_, resp| {
            Sent::descs(f.linked_to(&[linked(wr(resp), RawNext::Desc(0))]))
        }),
        // A loop inside an indirect table.
        Case::new("loop in an indirect table", LOOP, move |ctx, resp| {
            let entries = f.entries_with_response_next(resp, 2);
            let looped = ctx.stage(&Descriptor::table_bytes(&entries));
            Sent::descs([indirect_desc(looped.gpa(), 48)]).holding([looped])
        }),
    ]
}

/// Runs `case`; returns the message of its failure, if it fails.
fn failure_of(ctx: &mut Ctx, case: Case<'_>) -> Option<String> {
    let name = case.name.clone();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ctx.run_case(case)));
    let panic = outcome.err()?;
    let message = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| format!("{name}: panicked"));
    Some(message)
}

#[test]
fn chain_of_4_gib_or_more() {
    within("chain_of_4_gib_or_more", || {
        let Some(daemon) = custom_daemon("chain_of_4_gib_or_more", |config| {
            config.limits.max_segments = 128
        }) else {
            return;
        };
        let mem = guest_ram(80);
        let mut ctx = Ctx::open(&daemon, &mem, DEFAULT_FEATURES, "chain_of_4_gib_or_more");
        ctx.check_alive(0);
        let big = mem.alloc_pages(64 << 20).unwrap();
        let fill = ctx.stage(&fill_block(0x42, 1000));

        // 64 + 1000 + 63 * 64 MiB < 4 GiB: the unused writable bytes are ignored.
        let resp = ctx.resp_buf();
        let out = ctx.space(1000);
        let mut chain = vec![rd(&fill), wr(&resp), wr(&out)];
        chain.extend(std::iter::repeat_n(wr(&big), 63));
        let descs = RawDesc::chain(&chain);
        ctx.expect_raw_ok(0, "chain just under 4 GiB", &descs, &resp, 1064);
        assert_eq!(ctx.mem.read_vec(&out, 0, 1000).unwrap(), vec![0x42; 1000]);

        let f = RawCrc::stage(&ctx);
        ctx.run_cases(over_4_gib_cases(&fill, &big, &f));
        ctx.check_alive(0);
    });
}

/// 64 more MiB: 4 GiB or more in total is Invalid. The same with readable
/// descriptors, the response after them: the walk goes on past 4 GiB to the
/// response (§6.5); and in an indirect table. `big` has 64 MiB.
fn over_4_gib_cases<'a>(fill: &'a DmaBuf, big: &'a DmaBuf, f: &'a RawCrc) -> Vec<Case<'a>> {
    let readable_over_4_gib = move |resp: &DmaBuf| {
        let mut chain = vec![rd(&f.hdr), rd(&f.data)];
        chain.extend(std::iter::repeat_n(rd(big), 64));
        chain.push(wr(resp));
        chain
    };
    vec![
        Case::new("chain of more than 4 GiB", INVALID, move |ctx, resp| {
            let out = ctx.space(1000);
            let mut chain = vec![rd(fill), wr(resp), wr(&out)];
            chain.extend(std::iter::repeat_n(wr(big), 64));
            Sent::raw(&chain).untouched([out])
        }),
        Case::new(
            "readable part of more than 4 GiB",
            INVALID,
            move |_, resp| Sent::raw(&readable_over_4_gib(resp)),
        ),
        Case::new(
            "indirect table of more than 4 GiB",
            INVALID,
            move |ctx, resp| {
                let tab = stage_table(ctx, &readable_over_4_gib(resp));
                Sent::descs([indirect_to(&tab)]).holding([tab])
            },
        ),
    ]
}

#[test]
fn addresses_in_holes() {
    within("addresses_in_holes", || {
        let daemon = Daemon::start();
        // [0, 16 MiB) and [32 MiB, 64 MiB) in two adjacent regions; a hole between.
        let mem =
            DmaMemory::with_regions(&[(0, 16 << 20), (32 * MIB, 16 << 20), (48 * MIB, 16 << 20)])
                .unwrap();
        let mut ctx = Ctx::open(&daemon, &mem, DEFAULT_FEATURES, "addresses_in_holes");
        ctx.check_alive(0);
        let hdr = ctx.stage(&crc_block(&[BufRef::direct(9)]));
        ctx.run_cases(hole_cases(&hdr));
        ctx.check_alive(0);
        adjacent_regions_are_one_memory(&mut ctx, &hdr);
        ctx.check_alive(0);
        ctx.check_control_alive(0);
    });
}

/// Inputs and object segments in the hole between the regions or past the
/// last one: BadAddress; a response or an indirect table in the hole: used
/// length 0.
fn hole_cases(hdr: &DmaBuf) -> Vec<Case<'_>> {
    let mut cases = Vec::new();
    for (what, addr) in [
        ("input in the hole", 16 * MIB + 0x1000),
        ("input from the first region into the hole", 16 * MIB - 4),
        ("input from the hole into the second region", 32 * MIB - 4),
        ("input at the start of the hole", 16 * MIB),
        ("input past the last region", 64 * MIB),
    ] {
        cases.push(Case::new(what, BAD_ADDRESS, move |_, resp| {
            Sent::raw(&[rd(hdr), (addr, 9, false), wr(resp)])
        }));
        let what = format!("OBJECT_CREATE with an {what}");
        let segment = seg_bytes(&[(addr, 9)]);
        cases.push(Case::command(what, BAD_ADDRESS, CREATE, 1, 0, &segment));
    }
    cases.push(Case::new(
        "response in the hole",
        Expect::Nothing,
        move |_, _| {
            Sent::raw(&[
                rd(hdr),
                (16 * MIB + 0x1000, 9, false),
                (16 * MIB + 0x2000, 64, true),
            ])
        },
    ));
    cases.push(Case::new(
        "indirect table in the hole",
        Expect::Nothing,
        |_, _| Sent::descs([indirect_desc(16 * MIB + 0x1000, 48)]),
    ));
    cases
}

/// Across two adjacent regions is all guest memory.
fn adjacent_regions_are_one_memory(ctx: &mut Ctx, hdr: &DmaBuf) {
    // The allocator hands out ranges inside one region: reserve both halves.
    let below = ctx.mem.alloc_at(48 * MIB - 64, 64).unwrap();
    let above = ctx.mem.alloc_at(48 * MIB, 64).unwrap();
    ctx.mem.write_at(48 * MIB - 4, TEXT).unwrap();
    let resp = ctx.resp_buf();
    let descs = RawDesc::chain(&[rd(hdr), (48 * MIB - 4, 9, false), wr(&resp)]);
    let got = ctx.expect_raw_ok(0, "input across two adjacent regions", &descs, &resp, 64);
    assert_eq!(got.result[..4], crc_of_text());
    let handle = ctx.dev.create_object(&[(48 * MIB - 4, 9)]).unwrap();
    let req = Request::new(Op::Crc32c).input(Buffer::object(handle, 0, 9));
    let done = ctx.expect_ok(0, "object across two adjacent regions", &req);
    assert_eq!(done.result_u32(), reference::crc32c(0, TEXT));
    ctx.dev.destroy_object(handle).unwrap();
    drop((below, above));
}

// ---- configuration reads (§5) -----------------------------------------------

/// Bytes of configuration a GET_CONFIG may name: vhost-user's limit on
/// offset + size, and the 4 KiB a virtio-pci device configuration window
/// spans (§5).
const CONFIG_WINDOW: usize = 4096;
/// Longest GET_CONFIG: a vhost-user message carries at most 4096 bytes, 12 of
/// them the offset, size and flags of the request.
const MAX_CONFIG_READ: usize = CONFIG_WINDOW - 12;
/// `VHOST_USER_GET_CONFIG`.
const GET_CONFIG: u32 = 24;

/// GET_CONFIG of `size` bytes at `offset` through the frontend library.
fn get_config(dev: &mut AccelDevice, offset: u32, size: u32) -> Result<Vec<u8>, vhost::Error> {
    let zeros = vec![0; size as usize];
    dev.transport_mut()
        .frontend()
        .get_config(offset, size, VhostUserConfigFlags::empty(), &zeros)
        .map(|(_, payload)| payload)
}

/// How the back-end answered a raw GET_CONFIG.
#[derive(Debug, PartialEq, Eq)]
enum RawReply {
    /// A reply: its offset, size and payload.
    Reply(u32, u32, Vec<u8>),
    /// The back-end closed the connection.
    Closed,
}

/// Sends a GET_CONFIG of `offset`, `size` and `payload` on the socket of
/// `dev` as raw bytes, past the checks of the frontend library, and reads
/// the reply.
fn raw_get_config(dev: &mut AccelDevice, offset: u32, size: u32, payload: usize) -> RawReply {
    let fd = dev.transport_mut().frontend().as_raw_fd();
    // SAFETY: `fd` is the frontend's socket, open while `dev` lives, which
    // is past the duplicate's creation.
    let socket = unsafe { BorrowedFd::borrow_raw(fd) };
    let mut socket = UnixStream::from(socket.try_clone_to_owned().unwrap());
    socket.set_read_timeout(Some(TIMEOUT)).unwrap();
    let body = 12 + len32(payload);
    let mut message: Vec<u8> = [GET_CONFIG, 1, body, offset, size, 0]
        .iter()
        .flat_map(|word| word.to_le_bytes())
        .collect();
    message.resize(message.len() + payload, 0);
    socket.write_all(&message).unwrap();
    let mut header = [0u8; 12];
    match socket.read_exact(&mut header) {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return RawReply::Closed,
        other => other.unwrap_or_else(|e| panic!("GET_CONFIG({offset}, {size}): no reply: {e}")),
    }
    let word = |bytes: &[u8], i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap());
    let mut reply = vec![0; word(&header, 8) as usize];
    socket.read_exact(&mut reply).unwrap();
    assert_eq!(word(&header, 0), GET_CONFIG, "reply to GET_CONFIG");
    RawReply::Reply(word(&reply, 0), word(&reply, 4), reply[12..].to_vec())
}

/// §5: every read of the configuration window, whatever its offset and
/// size, returns the structure's bytes and zero past them; a GET_CONFIG
/// vhost-user does not allow is refused without harm to the daemon.
#[test]
fn configuration_reads_of_any_offset_and_size() {
    within("configuration_reads_of_any_offset_and_size", || {
        let daemon = Daemon::start();
        let mem = guest_ram(16);
        let name = "configuration_reads_of_any_offset_and_size";
        let mut ctx = Ctx::open(&daemon, &mem, DEFAULT_FEATURES, name);
        let structure = ctx.dev.config().as_slice().to_vec();
        let mut window = structure.clone();
        window.resize(CONFIG_WINDOW, 0);
        let expect = |ctx: &mut Ctx, offset: usize, size: usize| {
            let got = get_config(&mut ctx.dev, len32(offset), len32(size))
                .unwrap_or_else(|e| panic!("GET_CONFIG({offset}, {size}): {e}"));
            assert_eq!(
                got,
                window[offset..offset + size],
                "GET_CONFIG({offset}, {size})"
            );
        };
        // Byte, word, dword and qword reads at every offset of the
        // structure and past it, aligned or not, and odd sizes.
        for offset in 0..structure.len() + 9 {
            for size in 1..=8 {
                expect(&mut ctx, offset, size);
            }
        }
        for (offset, size) in [
            (0, structure.len() + 1),
            (0, MAX_CONFIG_READ),
            (12, MAX_CONFIG_READ),
            (structure.len(), CONFIG_WINDOW - structure.len()),
            (2048, 2048),
            (4088, 8),
            (4095, 1),
        ] {
            expect(&mut ctx, offset, size);
        }
        // Reads that vhost-user does not allow: the frontend library does
        // not send them.
        for (offset, size) in [
            (0, 0),
            (0, 0x10000),
            (0, len32(MAX_CONFIG_READ) + 1),
            (4090, 10),
            (4096, 1),
            (u32::MAX, 2),
        ] {
            assert!(
                get_config(&mut ctx.dev, offset, size).is_err(),
                "GET_CONFIG({offset}, {size}) was accepted"
            );
        }
        // The same checks on raw messages.
        assert_eq!(
            raw_get_config(&mut ctx.dev, 3, 5, 5),
            RawReply::Reply(3, 5, window[3..8].to_vec()),
            "raw GET_CONFIG(3, 5)"
        );
        expect(&mut ctx, 0, 4);
        ctx.check_alive(0);
        // Not valid vhost-user: the back-end answers with an error (a reply
        // of size 0) or closes the connection; the daemon serves on.
        for (offset, size, payload) in [(0, 0, 0), (0, 0x10000, 0), (4090, 10, 10)] {
            let what = format!("raw GET_CONFIG({offset}, {size})");
            match raw_get_config(&mut ctx.dev, offset, size, payload) {
                RawReply::Closed => {
                    eprintln!("{what}: the back-end closed the connection");
                    ctx = Ctx::open(&daemon, &mem, DEFAULT_FEATURES, name);
                }
                RawReply::Reply(_, got, bytes) => {
                    assert_eq!((got, bytes.len()), (0, 0), "{what}: an error reply");
                }
            }
            assert_eq!(ctx.dev.config().as_slice(), structure, "{what}");
            expect(&mut ctx, 1, 3);
            ctx.check_alive(0);
        }
    });
}

// ---- control queue (§7) -----------------------------------------------------

#[test]
fn control_queue_defects() {
    within("control_queue_defects", || {
        let daemon = Daemon::start();
        let mem = guest_ram(RAM_MIB);
        let mut ctx = Ctx::open(&daemon, &mem, DEFAULT_FEATURES, "control_queue_defects");
        ctx.check_alive(0);
        ctx.check_control_alive(0);
        let ram_end = mem.size();
        let data = ctx.stage(TEXT);
        let crc = Request::new(Op::Crc32c).input(Buffer::direct(&data));
        let issued = ctx.expect_ok(0, "CRC32C", &crc).fence();
        let seg = ctx.stage(&[0x11; 256]);

        // Chain-level defects and short parts, on raw chains.
        let parts = QueryParts::stage(&ctx, issued);
        let limits = ChainLimits {
            ram_end,
            max_seg: ctx.max_segments(),
            size: ctx.queue_size(0),
        };
        ctx.run_cases(short_control_part_cases(&parts));
        control_parts_are_byte_streams(&mut ctx, &parts.query);
        ctx.run_cases(malformed_control_chain_cases(&parts, &seg, &limits));
        ctx.check_control_alive(0);
        ctx.run_cases(unknown_command_cases(issued));
        ctx.check_control_alive(0);

        object_create_defects(&mut ctx, &seg, ram_end);
        object_destroy_defects(&mut ctx, &seg, issued);
        fence_query_defects(&mut ctx, issued);
        fence_wait_defects(&mut ctx, issued);
        ctx.check_alive(0);
        ctx.check_alive(1);
        ctx.check_control_alive(0);
    });
}

/// Buffers of raw control chains: a FENCE_QUERY whole, its header alone,
/// its fence alone, and the header of an unknown command.
struct QueryParts {
    query: DmaBuf,
    header: DmaBuf,
    fence: DmaBuf,
    unknown: DmaBuf,
}

impl QueryParts {
    fn stage(ctx: &Ctx, fence: Fence) -> QueryParts {
        QueryParts {
            query: ctx.stage(&ctrl_block(QUERY, 1, 0, fence.as_slice())),
            header: ctx.stage(&ctrl_block(QUERY, 1, 0, &[])),
            fence: ctx.stage(fence.as_slice()),
            unknown: ctx.stage(&ctrl_block(0xdead, 0, 0, &[])),
        }
    }
}

/// What bounds a control chain: the end of guest memory, max_segments and
/// the size of the control queue.
struct ChainLimits {
    ram_end: u64,
    max_seg: u32,
    size: u16,
}

/// Control headers cut short: Invalid; no room for the response: used
/// length 0, nothing written. A header cut short is not decoded at all: an
/// unknown command in its first bytes is Invalid, not Unsupported (§7).
fn short_control_part_cases(p: &QueryParts) -> Vec<Case<'_>> {
    let (q, u) = (p.query.gpa(), p.unknown.gpa());
    let header = |what: &str, expect, pieces: &[(u64, u32, bool)]| {
        let pieces = pieces.to_vec();
        Case::new(what, expect, move |_, resp| {
            Sent::raw_command(&[pieces, vec![ctrl_wr(resp)]].concat())
        })
    };
    let mut cases: Vec<Case> = [1, 8, 15]
        .map(|len| {
            header(
                &format!("{len}-byte control header"),
                INVALID,
                &[(q, len, false)],
            )
        })
        .into();
    cases.extend([
        header("empty readable descriptor", INVALID, &[(q, 0, false)]),
        header("no readable descriptor", INVALID, &[]),
        header(
            "4-byte header of an unknown command",
            INVALID,
            &[(u, 4, false)],
        ),
        header(
            "15-byte header of an unknown command in two descriptors",
            INVALID,
            &[(u, 8, false), (u + 8, 7, false)],
        ),
        header(
            "16-byte header of an unknown command",
            UNSUPPORTED,
            &[(u, 16, false)],
        ),
        header("FENCE_QUERY with its fence cut", INVALID, &[(q, 20, false)]),
    ]);
    cases.extend([0, 1, 8, 15].map(move |len| {
        let what = format!("{len}-byte control response area");
        Case::new(what, Expect::Nothing, move |_, resp| {
            let mut chain = vec![rd(&p.query)];
            if len > 0 {
                chain.push((resp.gpa(), len, true));
            }
            Sent::raw_command(&chain)
        })
    }));
    cases
}

/// The response is a byte stream too; so is the readable part: a fence
/// split over three descriptors.
fn control_parts_are_byte_streams(ctx: &mut Ctx, query: &DmaBuf) {
    let what = "control response in two descriptors";
    let resp = ctx.resp_buf();
    let descs = RawDesc::chain(&[rd(query), (resp.gpa(), 5, true), (resp.gpa() + 5, 11, true)]);
    let used = ctx.raw_control(what, &descs);
    let got = ctx.mem.read_obj::<CtrlResp>(&resp, 0).unwrap();
    check_ctrl_resp(what, used.len, &got, &[Status::Ok]);
    assert_eq!(u64::from(got.value), 1);

    let resp = ctx.resp_buf();
    let g = query.gpa();
    let chain = [
        (g, 10, false),
        (g + 10, 0, false),
        (g + 10, 11, false),
        (g + 21, 11, false),
        wr(&resp),
    ];
    let what = "FENCE_QUERY split over descriptors";
    ctx.expect_raw_ctrl(what, &RawDesc::chain(&chain), &resp, &[Status::Ok]);
}

/// Control chains with a readable descriptor after a writable one, a
/// descriptor outside guest memory, too many descriptors, `next` out of
/// the table, a loop: the status of the defect, or used length 0 without
/// room for the response. `seg` has bytes to write.
fn malformed_control_chain_cases<'a>(
    p: &'a QueryParts,
    seg: &'a DmaBuf,
    limits: &ChainLimits,
) -> Vec<Case<'a>> {
    let ChainLimits {
        ram_end,
        max_seg,
        size,
    } = *limits;
    let n = usize::try_from(max_seg).unwrap() + 6;
    vec![
        Case::new(
            "control: readable after writable",
            INVALID,
            move |_, resp| Sent::raw_command(&[rd(&p.header), ctrl_wr(resp), rd(&p.fence)]),
        ),
        Case::new(
            "control: fence outside guest memory",
            BAD_ADDRESS,
            move |_, resp| {
                Sent::raw_command(&[rd(&p.header), (ram_end + 0x1000, 16, false), ctrl_wr(resp)])
            },
        ),
        Case::new(
            "control: fence straddling the end of memory",
            BAD_ADDRESS,
            move |_, resp| {
                Sent::raw_command(&[rd(&p.header), (ram_end - 8, 16, false), ctrl_wr(resp)])
            },
        ),
        Case::new(
            "control response outside guest memory",
            Expect::Nothing,
            move |_, _| Sent::raw_command(&[rd(&p.query), (ram_end, 16, true)]),
        ),
        Case::new(
            "control chain of max_segments + 8",
            LIMIT,
            move |_, resp| {
                let mut chain = vec![rd(&p.query), ctrl_wr(resp)];
                chain.extend((0..n).map(|i| (seg.gpa() + i as u64, 1, true)));
                Sent::raw_command(&chain)
            },
        ),
        Case::new(
            "control chain of max_segments + 8, response last",
            Expect::Nothing,
            move |_, resp| {
                let mut chain = vec![rd(&p.header)];
                chain.extend((0..n).map(|i| (p.fence.gpa() + (i % 16) as u64, 1, false)));
                chain.push(ctrl_wr(resp));
                Sent::raw_command(&chain)
            },
        ),
        Case::new("control: next out of the table", INVALID, move |_, resp| {
            Sent::command_descs([
                linked(rd(&p.query), RawNext::Following),
                linked(ctrl_wr(resp), RawNext::Absolute(size)),
            ])
        }),
        Case::new("control: loop back to the head", INVALID, move |_, resp| {
            Sent::command_descs([
                linked(rd(&p.query), RawNext::Following),
                linked(ctrl_wr(resp), RawNext::Desc(0)),
            ])
        }),
    ]
}

/// Unknown commands, with and without a payload: Unsupported. 0x001 is
/// CAPABILITIES.
fn unknown_command_cases(issued: Fence) -> Vec<Case<'static>> {
    let commands = [
        0u32,
        2,
        0xff,
        0x102,
        0x1ff,
        0x202,
        0x300,
        0x8000_0100,
        u32::MAX,
    ];
    commands
        .into_iter()
        .flat_map(|cmd| {
            let what = format!("command {cmd:#x}");
            [
                Case::command(&what, UNSUPPORTED, cmd, 0, 0, &[]),
                Case::command(
                    format!("{what} with a fence"),
                    UNSUPPORTED,
                    cmd,
                    1,
                    7,
                    issued.as_slice(),
                ),
            ]
        })
        .collect()
}

/// OBJECT_CREATE (§7.1): malformed ones refused; max_segments segments
/// and max_object_size bytes accepted, one more refused.
fn object_create_defects(ctx: &mut Ctx, seg: &DmaBuf, ram_end: u64) {
    let max_seg = ctx.max_segments();
    let many = seg_bytes(&vec![(seg.gpa(), 1); usize::try_from(max_seg).unwrap() + 1]);
    ctx.run_cases(object_create_cases(seg, ram_end, max_seg, &many));
    let what = "OBJECT_CREATE max_segments segments";
    let handle = ctx.expect_ctrl_ok(what, CREATE, max_seg, 0, &many[..many.len() - 16]);
    ctx.dev
        .destroy_object(u32::try_from(handle).unwrap())
        .unwrap();
    max_object_size_is_the_limit(ctx, ram_end);
    ctx.check_control_alive(0);
    ctx.check_alive(0);
}

/// OBJECT_CREATE with a bad count, a bad argument, too many segments
/// (`many` holds max_segments + 1 segments) or a bad segment.
fn object_create_cases(
    seg: &DmaBuf,
    ram_end: u64,
    max_seg: u32,
    many: &[u8],
) -> Vec<Case<'static>> {
    let one = seg_bytes(&[seg.segment()]);
    let two = seg_bytes(&[seg.segment(), seg.segment()]);
    let mut cases = command_cases(
        CREATE,
        &[
            ("OBJECT_CREATE count 0", INVALID, 0, 0, &[]),
            ("OBJECT_CREATE count 0 with a segment", INVALID, 0, 0, &one),
            ("OBJECT_CREATE arg 0x1", INVALID, 1, 1, &one),
            ("OBJECT_CREATE arg 0x100", INVALID, 1, 0x100, &one),
            (
                "OBJECT_CREATE arg 0xffffffffffffffff",
                INVALID,
                1,
                u64::MAX,
                &one,
            ),
            (
                "OBJECT_CREATE max_segments + 1 segments",
                LIMIT,
                max_seg + 1,
                0,
                many,
            ),
            ("OBJECT_CREATE count 2^32-1", LIMIT, u32::MAX, 0, &[]),
            ("OBJECT_CREATE count 2, one segment", INVALID, 2, 0, &one),
            (
                "OBJECT_CREATE count 2, 1.5 segments",
                INVALID,
                2,
                0,
                &two[..24],
            ),
        ],
    );
    let bad_segments = [
        ("segment of length 0", vec![(seg.gpa(), 0)], INVALID),
        (
            "second segment of length 0",
            vec![seg.segment(), (seg.gpa(), 0)],
            INVALID,
        ),
        (
            "segment past the end of guest memory",
            vec![(ram_end + 0x1000, 16)],
            BAD_ADDRESS,
        ),
        (
            "segment right at the end of guest memory",
            vec![(ram_end, 1)],
            BAD_ADDRESS,
        ),
        (
            "segment straddling the end of guest memory",
            vec![(ram_end - 8, 16)],
            BAD_ADDRESS,
        ),
        (
            "segment whose addr + len overflows",
            vec![(u64::MAX - 7, 16)],
            BAD_ADDRESS,
        ),
        ("segment ending at 2^64", vec![(u64::MAX, 1)], BAD_ADDRESS),
        ("segment of 2^64-1 bytes", vec![(1, u64::MAX)], BAD_ADDRESS),
        (
            "second segment outside guest memory",
            vec![seg.segment(), (ram_end + 0x1000, 16)],
            BAD_ADDRESS,
        ),
    ];
    cases.extend(bad_segments.map(|(what, segments, expect)| {
        let what = format!("OBJECT_CREATE: {what}");
        let count = len32(segments.len());
        Case::command(what, expect, CREATE, count, 0, &seg_bytes(&segments))
    }));
    cases
}

/// The total length over max_object_size: Limit; exactly it: Ok.
fn max_object_size_is_the_limit(ctx: &mut Ctx, ram_end: u64) {
    let max_seg = ctx.max_segments();
    let max_object = ctx.max_object();
    let per = max_object / u64::from(max_seg);
    if per >= ram_end || max_object % u64::from(max_seg) != 0 {
        eprintln!("max_object_size {max_object} cannot be reached with {max_seg} segments in {ram_end} bytes: skipped");
        return;
    }
    let segments = vec![(0, per); usize::try_from(max_seg).unwrap()];
    let what = "OBJECT_CREATE of max_object_size bytes";
    let handle = ctx.expect_ctrl_ok(what, CREATE, max_seg, 0, &seg_bytes(&segments));
    ctx.dev
        .destroy_object(u32::try_from(handle).unwrap())
        .unwrap();
    let mut over = segments;
    over[0].1 += 1;
    let what = "OBJECT_CREATE of max_object_size + 1 bytes";
    ctx.run_case(Case::command(
        what,
        LIMIT,
        CREATE,
        max_seg,
        0,
        &seg_bytes(&over),
    ));
}

/// OBJECT_DESTROY (§7.2): every refused one leaves the object of `seg`
/// usable; readable bytes after the last entry are ignored; a destroyed
/// object is gone.
fn object_destroy_defects(ctx: &mut Ctx, seg: &DmaBuf, issued: Fence) {
    let live = ctx.dev.create_object(&[seg.segment()]).unwrap();
    let use_live = Request::new(Op::Crc32c).input(Buffer::object(live, 0, 256));
    for case in refused_destroy_cases(live, issued) {
        ctx.run_case(case);
        let done = ctx.expect_ok(0, "object after a refused OBJECT_DESTROY", &use_live);
        assert_eq!(done.result_u32(), reference::crc32c(0, &[0x11; 256]));
    }
    let arg = u64::from(live);
    ctx.expect_ctrl_ok(
        "OBJECT_DESTROY with trailing bytes",
        DESTROY,
        0,
        arg,
        &[0xee; 16],
    );
    ctx.run_cases(vec![
        Case::command("OBJECT_DESTROY twice", NO_OBJECT, DESTROY, 0, arg, &[]),
        Case::request("destroyed object", NO_OBJECT, use_live),
    ]);
    ctx.check_control_alive(0);
}

/// OBJECT_DESTROY with a count: Invalid; of handles other than `live`:
/// NoObject.
fn refused_destroy_cases(live: u32, issued: Fence) -> Vec<Case<'static>> {
    let unknown: u32 = if live == 0x00c0_ffee {
        0x00c0_ffef
    } else {
        0x00c0_ffee
    };
    let live = u64::from(live);
    command_cases(
        DESTROY,
        &[
            (
                "OBJECT_DESTROY count 1",
                INVALID,
                1,
                live,
                issued.as_slice(),
            ),
            ("OBJECT_DESTROY count 2^32-1", INVALID, u32::MAX, live, &[]),
            ("OBJECT_DESTROY handle 0", NO_OBJECT, 0, 0, &[]),
            (
                "OBJECT_DESTROY handle 2^32 + live handle",
                NO_OBJECT,
                0,
                (1 << 32) | live,
                &[],
            ),
            (
                "OBJECT_DESTROY handle 2^63 + live handle",
                NO_OBJECT,
                0,
                (1 << 63) | live,
                &[],
            ),
            ("OBJECT_DESTROY handle 2^64-1", NO_OBJECT, 0, u64::MAX, &[]),
            (
                "OBJECT_DESTROY unknown handle",
                NO_OBJECT,
                0,
                u64::from(unknown),
                &[],
            ),
        ],
    )
}

/// Fences that were never issued: `(what, fence)`, the last two only
/// for FENCE_QUERY.
fn never_issued(ctx: &Ctx) -> [(&'static str, Fence); 6] {
    [
        ("not yet issued", ctx.peek_fence(0)),
        ("sequence number 0", Fence::new(0, 0)),
        ("never used queue", ctx.peek_fence(1)),
        ("queue that does not exist", Fence::new(ctx.queues(), 1)),
        ("sequence number 2^64-1", Fence::new(0, u64::MAX)),
        ("queue 65535", Fence::new(u16::MAX, 1)),
    ]
}

/// FENCE_QUERY (§7.3): a bad count, argument or fence refused; the issued
/// fence has signalled.
fn fence_query_defects(ctx: &mut Ctx, issued: Fence) {
    let cases = fence_query_cases(issued, never_issued(ctx));
    ctx.run_cases(cases);
    let what = "FENCE_QUERY of an issued fence";
    assert_eq!(ctx.expect_ctrl_ok(what, QUERY, 1, 0, issued.as_slice()), 1);
}

/// FENCE_QUERY with a bad count or argument, or a reserved byte of its
/// fence set: Invalid; of a fence never issued: NoFence.
fn fence_query_cases(issued: Fence, never: [(&str, Fence); 6]) -> Vec<Case<'static>> {
    let fence = issued.as_slice();
    let two = fence_bytes(&[issued, issued]);
    let mut cases = command_cases(
        QUERY,
        &[
            ("FENCE_QUERY count 0", INVALID, 0, 0, &[]),
            ("FENCE_QUERY count 0 with a fence", INVALID, 0, 0, fence),
            ("FENCE_QUERY count 2", INVALID, 2, 0, &two),
            ("FENCE_QUERY count 2^32-1", INVALID, u32::MAX, 0, &two),
            ("FENCE_QUERY without its fence", INVALID, 1, 0, &[]),
            ("FENCE_QUERY arg 1", INVALID, 1, 1, fence),
        ],
    );
    cases.extend((0..6).map(|i| {
        let mut reserved = issued;
        reserved.reserved[i] = 0x40;
        let what = format!("FENCE_QUERY fence reserved byte {i}");
        Case::command(what, INVALID, QUERY, 1, 0, reserved.as_slice())
    }));
    cases.extend(never.map(|(what, fence)| {
        let what = format!("FENCE_QUERY: fence {what}");
        Case::command(what, NO_FENCE, QUERY, 1, 0, fence.as_slice())
    }));
    cases
}

/// FENCE_WAIT (§7.4): a bad count, argument or fence refused; max_deps
/// fences that have signalled are waited for.
fn fence_wait_defects(ctx: &mut Ctx, issued: Fence) {
    let max_deps = ctx.max_deps();
    let [never @ .., _, _] = never_issued(ctx);
    ctx.run_cases(fence_wait_cases(issued, max_deps, never));
    let all = fence_bytes(&vec![issued; usize::try_from(max_deps).unwrap()]);
    let what = "FENCE_WAIT max_deps fences";
    assert_eq!(ctx.expect_ctrl_ok(what, WAIT, max_deps, 0, &all), 0);
}

/// FENCE_WAIT with a bad count or argument, or a reserved byte of a fence
/// set: Invalid; more than max_deps fences: Limit; a fence never issued,
/// alone or after a good one: NoFence.
fn fence_wait_cases(issued: Fence, max_deps: u32, never: [(&str, Fence); 4]) -> Vec<Case<'static>> {
    let fence = issued.as_slice();
    let over = fence_bytes(&vec![issued; usize::try_from(max_deps).unwrap() + 1]);
    let mut cases = command_cases(
        WAIT,
        &[
            ("FENCE_WAIT count 0", INVALID, 0, 0, &[]),
            ("FENCE_WAIT count 0 with a fence", INVALID, 0, 0, fence),
            ("FENCE_WAIT arg 1", INVALID, 1, 1, fence),
            (
                "FENCE_WAIT max_deps + 1 fences",
                LIMIT,
                max_deps + 1,
                0,
                &over,
            ),
            ("FENCE_WAIT count 2^32-1", LIMIT, u32::MAX, 0, &[]),
            ("FENCE_WAIT count 2, one fence", INVALID, 2, 0, fence),
        ],
    );
    cases.extend((0..6).map(|i| {
        let mut reserved = issued;
        reserved.reserved[i] = 1;
        let what = format!("FENCE_WAIT fence reserved byte {i}");
        Case::command(what, INVALID, WAIT, 2, 0, &fence_bytes(&[issued, reserved]))
    }));
    for (what, never) in never {
        let what = format!("FENCE_WAIT: fence {what}");
        let after_good = fence_bytes(&[issued, never]);
        cases.push(Case::command(&what, NO_FENCE, WAIT, 1, 0, never.as_slice()));
        let what = format!("{what}, after a good one");
        cases.push(Case::command(what, NO_FENCE, WAIT, 2, 0, &after_good));
    }
    cases
}

#[test]
fn control_limits() {
    within("control_limits", || {
        let Some(daemon) = custom_daemon("control_limits", |config| {
            config.limits.max_segments = 8;
            config.limits.max_objects = 3;
            config.limits.max_object_size = 8192;
            config.limits.max_deps = 2;
        }) else {
            return;
        };
        let mem = guest_ram(RAM_MIB);
        let mut ctx = Ctx::open(&daemon, &mem, DEFAULT_FEATURES, "control_limits");
        assert_eq!(
            (ctx.max_segments(), ctx.max_deps(), ctx.max_object()),
            (8, 2, 8192)
        );
        ctx.check_alive(0);
        let area = ctx.stage(&[0x22; 8192]);
        let g = area.gpa();
        ctx.run_cases(object_size_limit_cases(g));
        for (what, segments) in [
            (
                "OBJECT_CREATE of max_object_size bytes",
                vec![(g, 4096), (g + 4096, 4096)],
            ),
            ("OBJECT_CREATE of 8 segments", vec![(g, 16); 8]),
        ] {
            let count = len32(segments.len());
            let handle = ctx.expect_ctrl_ok(what, CREATE, count, 0, &seg_bytes(&segments));
            ctx.dev
                .destroy_object(u32::try_from(handle).unwrap())
                .unwrap();
        }
        object_count_limit(&mut ctx, g);
        dependency_count_limit(&mut ctx);
        segment_count_limit(&mut ctx);
        ctx.check_alive(0);
        ctx.check_control_alive(0);
    });
}

/// Objects over max_object_size (8192) or max_segments (8), of the bytes
/// at `g`: Limit.
fn object_size_limit_cases(g: u64) -> Vec<Case<'static>> {
    let over: [(&str, Vec<(u64, u64)>); 3] = [
        (
            "OBJECT_CREATE of max_object_size + 1 bytes",
            vec![(g, 4096), (g + 4096, 4096), (g, 1)],
        ),
        (
            "OBJECT_CREATE of 2 * max_object_size bytes",
            vec![(g, 8192), (g, 8192)],
        ),
        ("OBJECT_CREATE of 9 segments", vec![(g, 16); 9]),
    ];
    over.map(|(what, segments)| {
        let count = len32(segments.len());
        Case::command(what, LIMIT, CREATE, count, 0, &seg_bytes(&segments))
    })
    .into()
}

/// max_objects (3) live objects: NoResources; a destroyed one frees its slot.
fn object_count_limit(ctx: &mut Ctx, g: u64) {
    let handles: Vec<u32> = (0..3)
        .map(|_| ctx.dev.create_object(&[(g, 64)]).unwrap())
        .collect();
    let one = seg_bytes(&[(g, 64)]);
    let no_resources = Expect::Status(&[Status::NoResources]);
    ctx.run_cases(command_cases(
        CREATE,
        &[
            ("OBJECT_CREATE past max_objects", no_resources, 1, 0, &one),
            (
                "OBJECT_CREATE past max_objects, again",
                no_resources,
                1,
                0,
                &one,
            ),
        ],
    ));
    ctx.dev.destroy_object(handles[1]).unwrap();
    let again = ctx.dev.create_object(&[(g, 64)]).unwrap();
    for h in [handles[0], handles[2], again] {
        let req = Request::new(Op::Crc32c).input(Buffer::object(h, 0, 64));
        let done = ctx.expect_ok(0, "CRC32C of a live object", &req);
        assert_eq!(done.result_u32(), reference::crc32c(0, &[0x22; 64]));
        ctx.dev.destroy_object(h).unwrap();
    }
}

/// max_deps (2): FENCE_WAIT and request dependencies.
fn dependency_count_limit(ctx: &mut Ctx) {
    let data = ctx.stage(TEXT);
    let crc = Request::new(Op::Crc32c).input(Buffer::direct(&data));
    let f = ctx.expect_ok(0, "CRC32C", &crc).fence();
    ctx.run_cases(vec![
        Case::command(
            "FENCE_WAIT of 3 fences",
            LIMIT,
            WAIT,
            3,
            0,
            &fence_bytes(&[f, f, f]),
        ),
        Case::request("3 dependencies", LIMIT, crc.clone().deps([f, f, f])),
    ]);
    ctx.expect_ctrl_ok("FENCE_WAIT of 2 fences", WAIT, 2, 0, &fence_bytes(&[f, f]));
    ctx.expect_ok(0, "2 dependencies", &crc.clone().deps([f, f]));
}

/// max_segments (8): chains of requests.
fn segment_count_limit(ctx: &mut Ctx) {
    let what = "request chain of 9 descriptors";
    ctx.run_case(Case::new(what, LIMIT, fill_into_outputs(7)));
    let resp = ctx.resp_buf();
    let (fill, outs) = fill_of_outputs(ctx, 0, 6);
    let descs = RawDesc::chain(&fill_chain(&fill, &resp, &outs));
    ctx.expect_raw_ok(0, "request chain of 8 descriptors", &descs, &resp, 112);
}

// ---- available ring abuse (§6.5, §12.2) -------------------------------------

#[test]
fn available_ring_abuse() {
    within("available_ring_abuse", || {
        let daemon = Daemon::start();
        let mem = guest_ram(RAM_MIB);
        let abuses: [(&str, Abuse); 4] = [
            ("head", heads_past_the_queue_size),
            ("head-then", chains_after_a_bad_head),
            ("idx", avail_idx_far_ahead),
            ("back", avail_idx_backwards),
        ];
        for (name, abuse) in abuses {
            let name = format!("available_ring_abuse/{name}");
            abuse(&mut Ctx::open(&daemon, &mem, DEFAULT_FEATURES, &name));
        }
        fresh_connections_work(&daemon, &mem);
    });
}

/// One abuse of the available rings, on a connection of its own.
type Abuse = fn(&mut Ctx);

/// Heads past the queue size on request queue 1 (virtqueue 2). The device
/// consumes them and issues them fences; it may then stop the queue (§6.5).
/// Nothing else may suffer.
fn heads_past_the_queue_size(ctx: &mut Ctx) {
    ctx.check_alive(1);
    let queue = ctx.dev.raw_queue(2).unwrap();
    let size = queue.size();
    queue.push_avail_raw(size).unwrap();
    queue.push_avail_raw(u16::MAX).unwrap();
    queue.publish().unwrap();
    ctx.dev.notify(2).unwrap();
    ctx.check_alive(0);
    ctx.check_control_alive(0);
    ctx.seq[1] += 2;
    let data = ctx.stage(TEXT);
    let crc = Request::new(Op::Crc32c).input(Buffer::direct(&data));
    let fence = ctx.next_fence(1);
    match ctx.dev.run(1, &crc) {
        Ok(done) => {
            assert!(
                done.is_ok(),
                "queue 1 after bad heads: status {}",
                status_name(u32::from(done.resp.status))
            );
            assert_eq!(
                done.fence(),
                fence,
                "queue 1 after bad heads: the two bad heads got no fences"
            );
            assert_eq!(done.result_u32(), reference::crc32c(0, TEXT));
        }
        Err(DeviceError::Timeout { .. }) => {
            eprintln!("the device stopped request queue 1 after bad heads (allowed by §6.5)");
        }
        Err(e) => panic!("queue 1 after bad heads: {e} ({e:?})"),
    }
    ctx.check_alive(0);
    ctx.check_control_alive(0);
}

/// A bad head followed, in the same batch, by a malformed and a
/// well-formed chain. The device may stop the queue at the bad head, but
/// every chain it takes gets a fence, and a chain whose fence has signalled
/// must come back in the used ring (§6.2).
fn chains_after_a_bad_head(ctx: &mut Ctx) {
    ctx.check_alive(1);
    let data = ctx.stage(TEXT);
    let bad = ctx.next_fence(1);
    let junk_fence = ctx.next_fence(1);
    let good_fence = ctx.next_fence(1);
    let queue = ctx.dev.raw_queue(2).unwrap();
    let size = queue.size();
    queue.push_avail_raw(size + 1).unwrap();
    let junk = Request::raw_op(0);
    let good = Request::new(Op::Crc32c).input(Buffer::direct(&data));
    ctx.dev.submit(1, &junk, 1).unwrap();
    ctx.dev.submit(1, &good, 2).unwrap();
    ctx.dev.flush(1).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    let mut done: HashMap<u64, Completion> = HashMap::new();
    while done.len() < 2 && Instant::now() < deadline {
        for c in ctx.dev.wait(1, Duration::from_millis(50)).unwrap() {
            done.insert(c.token, c);
        }
    }
    ctx.check_alive(0);
    ctx.check_control_alive(0);
    eprintln!(
        "after a bad head: fence {} signalled: {}; malformed chain returned: {}, well-formed chain returned: {}",
        u64::from(bad.seqno),
        has_signalled(ctx, bad),
        done.contains_key(&1),
        done.contains_key(&2)
    );
    for (token, fence, what) in [
        (1u64, junk_fence, "malformed chain after a bad head"),
        (2, good_fence, "well-formed chain after a bad head"),
    ] {
        match done.get(&token) {
            Some(c) => assert_eq!(c.fence(), fence, "{what}: fence"),
            None => assert!(
                !has_signalled(ctx, fence),
                "{what}: its fence {fence:?} has signalled but the chain never came back in the used ring"
            ),
        }
    }
    if let Some(c) = done.get(&1) {
        check_failure(
            "malformed chain after a bad head",
            c.used_len,
            &c.resp,
            &[Status::Unsupported],
            junk_fence,
        );
    }
    if let Some(c) = done.get(&2) {
        assert!(c.is_ok(), "well-formed chain after a bad head");
        assert_eq!(c.result_u32(), reference::crc32c(0, TEXT));
    }
}

/// Whether FENCE_QUERY says that `fence` has signalled.
fn has_signalled(ctx: &Ctx, fence: Fence) -> bool {
    let got = ctx.control(
        "FENCE_QUERY after a bad head",
        QUERY,
        1,
        0,
        fence.as_slice(),
    );
    got.status() == Ok(Status::Ok) && got.value() == 1
}

/// avail->idx more than the queue size ahead on request queue 0.
fn avail_idx_far_ahead(ctx: &mut Ctx) {
    ctx.check_alive(0);
    ctx.check_alive(1);
    let queue = ctx.dev.raw_queue(1).unwrap();
    let jump = queue.avail_idx().wrapping_add(queue.size()).wrapping_add(7);
    queue.write_avail_idx_raw(jump).unwrap();
    ctx.dev.notify(1).unwrap();
    ctx.check_alive(1);
    ctx.check_control_alive(1);
    ctx.dev.notify(1).unwrap();
    let queue = ctx.dev.raw_queue(1).unwrap();
    queue
        .write_avail_idx_raw(jump.wrapping_add(0x8000))
        .unwrap();
    ctx.dev.notify(1).unwrap();
    ctx.check_alive(1);
    ctx.check_control_alive(1);
}

/// avail->idx moved backwards, on request queue 1 and the control queue.
fn avail_idx_backwards(ctx: &mut Ctx) {
    ctx.check_alive(1);
    ctx.check_control_alive(0);
    let queue = ctx.dev.raw_queue(2).unwrap();
    let back = queue.avail_idx().wrapping_sub(2);
    queue.write_avail_idx_raw(back).unwrap();
    ctx.dev.notify(2).unwrap();
    ctx.check_alive(0);
    ctx.check_control_alive(0);
    let queue = ctx.dev.raw_queue(0).unwrap();
    let back = queue.avail_idx().wrapping_sub(1);
    queue.write_avail_idx_raw(back).unwrap();
    ctx.dev.notify(0).unwrap();
    ctx.check_alive(0);
}

/// A new connection on the same socket gets a working, fresh device: every
/// queue works and fence numbering restarts at 1 (§11). And a connection
/// that goes away with chains in flight is no problem either.
fn fresh_connections_work(daemon: &Daemon, mem: &DmaMemory) {
    let name = "available_ring_abuse/fresh";
    let mut ctx = Ctx::open(daemon, mem, DEFAULT_FEATURES, name);
    for q in 0..ctx.queues() {
        ctx.check_alive(q);
    }
    ctx.check_control_alive(0);
    let data = ctx.stage(TEXT);
    for q in 0..ctx.queues() {
        let crc = Request::new(Op::Crc32c).input(Buffer::direct(&data));
        for token in 0..32 {
            ctx.dev.submit(q, &crc, token).unwrap();
        }
        ctx.dev.flush(q).unwrap();
    }
    drop(ctx);
    let name = "available_ring_abuse/after";
    let mut ctx = Ctx::open(daemon, mem, DEFAULT_FEATURES, name);
    for q in 0..ctx.queues() {
        ctx.check_alive(q);
    }
    ctx.check_control_alive(0);
}

// ---- a flood of malformed requests ------------------------------------------

/// The kinds of malformed request the flood mixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Junk {
    UnknownOp,
    Arity,
    HeaderReserved,
    ParamReserved,
    DeflateLevel,
    UnknownHandle,
    ObjectRange,
    NoFence,
    TooManyDeps,
    FenceReserved,
    NoRoom,
    ReadableAfterWritable,
    BadAddress,
    ShortHeader,
    NextOutOfRange,
    DirectRange,
    BufRefReserved,
}

const JUNK: [Junk; 17] = [
    Junk::UnknownOp,
    Junk::Arity,
    Junk::HeaderReserved,
    Junk::ParamReserved,
    Junk::DeflateLevel,
    Junk::UnknownHandle,
    Junk::ObjectRange,
    Junk::NoFence,
    Junk::TooManyDeps,
    Junk::FenceReserved,
    Junk::NoRoom,
    Junk::ReadableAfterWritable,
    Junk::BadAddress,
    Junk::ShortHeader,
    Junk::NextOutOfRange,
    Junk::DirectRange,
    Junk::BufRefReserved,
];

impl Junk {
    /// The status the device must answer; `None` for used length 0.
    fn status(self) -> Option<Status> {
        match self {
            Junk::UnknownOp => Some(Status::Unsupported),
            Junk::UnknownHandle => Some(Status::NoObject),
            Junk::ObjectRange | Junk::DirectRange => Some(Status::Range),
            Junk::NoFence => Some(Status::NoFence),
            Junk::TooManyDeps => Some(Status::Limit),
            Junk::BadAddress => Some(Status::BadAddress),
            Junk::NoRoom => None,
            Junk::Arity
            | Junk::HeaderReserved
            | Junk::ParamReserved
            | Junk::DeflateLevel
            | Junk::FenceReserved
            | Junk::ReadableAfterWritable
            | Junk::ShortHeader
            | Junk::NextOutOfRange
            | Junk::BufRefReserved => Some(Status::Invalid),
        }
    }

    fn is_raw(self) -> bool {
        matches!(
            self,
            Junk::ReadableAfterWritable
                | Junk::BadAddress
                | Junk::ShortHeader
                | Junk::NextOutOfRange
                | Junk::DirectRange
                | Junk::BufRefReserved
        )
    }
}

/// The buffers, object and fence the flood's requests name, on request
/// queue 0 (virtqueue 1).
struct Flood {
    ram_end: u64,
    data: DmaBuf,
    /// 4096 bytes of 0x33, the segment of `handle`.
    object: DmaBuf,
    handle: u32,
    signalled: Fence,
    max_deps: usize,
    /// Header blocks of raw CRC32Cs of `data`: well-formed, with a reference
    /// past the chain, with a reserved field of the reference set.
    good_hdr: DmaBuf,
    range_hdr: DmaBuf,
    reserved_hdr: DmaBuf,
}

impl Flood {
    fn stage(ctx: &mut Ctx, ram_end: u64) -> Flood {
        let data = ctx.stage(TEXT);
        let object = ctx.stage(&[0x33; 4096]);
        let handle = ctx.dev.create_object(&[object.segment()]).unwrap();
        let crc = Request::new(Op::Crc32c).input(Buffer::direct(&data));
        let signalled = ctx.expect_ok(0, "CRC32C", &crc).fence();
        let reserved = BufRef {
            reserved: Le32::from(7),
            ..BufRef::direct(9)
        };
        Flood {
            ram_end,
            data,
            object,
            handle,
            signalled,
            max_deps: usize::try_from(ctx.max_deps()).unwrap(),
            good_hdr: ctx.stage(&crc_block(&[BufRef::direct(9)])),
            range_hdr: ctx.stage(&crc_block(&[BufRef::direct(100)])),
            reserved_hdr: ctx.stage(&crc_block(&[reserved])),
        }
    }

    /// The raw chain of a raw `kind`, answered in `resp`.
    fn raw_chain(&self, kind: Junk, resp: &DmaBuf) -> Vec<RawDesc> {
        let (hdr, data) = (&self.good_hdr, &self.data);
        match kind {
            Junk::ReadableAfterWritable => RawDesc::chain(&[rd(hdr), wr(resp), rd(data)]),
            Junk::BadAddress => {
                RawDesc::chain(&[rd(hdr), (self.ram_end + 0x1000, 9, false), wr(resp)])
            }
            Junk::ShortHeader => RawDesc::chain(&[(hdr.gpa(), 40, false), wr(resp)]),
            Junk::NextOutOfRange => vec![
                linked(rd(hdr), RawNext::Following),
                linked(rd(data), RawNext::Following),
                linked(wr(resp), RawNext::Absolute(u16::MAX)),
            ],
            Junk::DirectRange => RawDesc::chain(&[rd(&self.range_hdr), rd(data), wr(resp)]),
            _ => RawDesc::chain(&[rd(&self.reserved_hdr), rd(data), wr(resp)]),
        }
    }

    /// The request of a `kind` sent through the driver.
    fn request(&self, kind: Junk, rng: &mut TestRng) -> Request {
        let crc = Request::new(Op::Crc32c).input(Buffer::direct(&self.data));
        match kind {
            Junk::UnknownOp => Request::raw_op([0, 10, 0x77, u32::MAX][rng.below(4)]),
            Junk::Arity => Request::new(Op::Crc32c),
            Junk::HeaderReserved => {
                let mut header = Req::new(Op::Crc32c);
                header.reserved[3] = 1;
                crc.with_header(header)
            }
            Junk::ParamReserved => crc.raw_params(params_with(10, 1)),
            Junk::DeflateLevel => {
                let deflate = DeflateParams {
                    level: 10,
                    ..DeflateParams::default()
                };
                Request::new(Op::DeflateCompress)
                    .params(&deflate)
                    .input(Buffer::direct(&self.data))
                    .output(Buffer::object(self.handle, 0, 4096))
            }
            Junk::UnknownHandle => {
                let unknown = Buffer::object(self.handle ^ 0x4000_0000, 0, 9);
                Request::new(Op::Crc32c).input(unknown)
            }
            Junk::ObjectRange => {
                Request::new(Op::Crc32c).input(Buffer::object(self.handle, 4000, 200))
            }
            Junk::NoFence => crc.dep(Fence::new(0, u64::MAX)),
            Junk::TooManyDeps => crc.deps(vec![self.signalled; self.max_deps + 1]),
            Junk::FenceReserved => {
                let mut reserved = self.signalled;
                reserved.reserved[5] = 1;
                crc.dep(reserved)
            }
            _ => crc.with_resp_len(len32(rng.below(64))),
        }
    }
}

/// The chains of one batch of the flood, until they are answered.
#[derive(Default)]
struct Batch {
    /// Kind and fence of each token.
    expected: HashMap<u64, (Junk, Fence)>,
    /// Response buffers of the raw chains.
    raw_resps: HashMap<u64, DmaBuf>,
}

impl Batch {
    /// Makes a chain of `kind` available on request queue 0 (not yet kicked).
    fn add(&mut self, ctx: &mut Ctx, flood: &Flood, kind: Junk, token: u64) {
        let fence = ctx.next_fence(0);
        self.expected.insert(token, (kind, fence));
        if kind.is_raw() {
            let resp = ctx.resp_buf();
            let chain = flood.raw_chain(kind, &resp);
            ctx.dev
                .raw_queue(1)
                .unwrap()
                .add_raw(&chain, token)
                .unwrap();
            self.raw_resps.insert(token, resp);
        } else {
            let req = flood.request(kind, &mut ctx.rng);
            ctx.dev.submit(0, &req, token).unwrap();
        }
    }

    fn check(&mut self, token: u64, used_len: u32, resp: &Resp) {
        let (kind, fence) = self
            .expected
            .remove(&token)
            .unwrap_or_else(|| panic!("flood: unexpected token {token}"));
        let what = format!("flood entry {token} ({kind:?})");
        match kind.status() {
            Some(status) => check_failure(&what, used_len, resp, &[status], fence),
            None => assert_eq!(used_len, 0, "{what}: used length"),
        }
    }

    /// Collects and checks every answer of the batch.
    fn collect(&mut self, ctx: &mut Ctx) {
        let n = self.expected.len();
        let deadline = Instant::now() + TIMEOUT;
        loop {
            for done in ctx.dev.poll(0).unwrap() {
                self.check(done.token, done.used_len, &done.resp);
            }
            while let Some(used) = ctx.dev.wait_used(1, Duration::ZERO).unwrap() {
                let buf = self.raw_resps.remove(&used.token).unwrap();
                let resp = ctx.mem.read_obj::<Resp>(&buf, 0).unwrap();
                self.check(used.token, used.len, &resp);
            }
            if self.expected.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "flood: {} of {n} requests not completed within {TIMEOUT:?} (entries {:?})",
                self.expected.len(),
                self.expected
                    .values()
                    .map(|(k, f)| (*k, u64::from(f.seqno)))
                    .collect::<Vec<_>>()
            );
            for done in ctx.dev.wait(0, Duration::from_millis(20)).unwrap() {
                self.check(done.token, done.used_len, &done.resp);
            }
        }
        assert!(self.raw_resps.is_empty());
    }
}

#[test]
fn flood_of_malformed_requests() {
    const TOTAL: u64 = 10_000;
    const BATCH: usize = 64;
    within("flood_of_malformed_requests", || {
        let daemon = Daemon::start();
        let mem = guest_ram(RAM_MIB);
        let name = "flood_of_malformed_requests";
        let mut ctx = Ctx::open(&daemon, &mem, DEFAULT_FEATURES, name);
        ctx.check_alive(0);
        let flood = Flood::stage(&mut ctx, mem.size());
        let mut counts = [0usize; JUNK.len()];
        let start = Instant::now();
        let tokens: Vec<u64> = (0..TOTAL).collect();
        for tokens in tokens.chunks(BATCH) {
            let mut batch = Batch::default();
            for &token in tokens {
                let kind_index = ctx.rng.below(JUNK.len());
                counts[kind_index] += 1;
                batch.add(&mut ctx, &flood, JUNK[kind_index], token);
            }
            ctx.dev.flush(0).unwrap();
            batch.collect(&mut ctx);
        }
        eprintln!(
            "flood: {TOTAL} malformed requests in {:?}; kinds {:?}",
            start.elapsed(),
            JUNK.iter().zip(counts).collect::<Vec<_>>()
        );
        assert_eq!(
            ctx.mem.read_vec(&flood.object, 0, 4096).unwrap(),
            vec![0x33; 4096],
            "the flood modified an object"
        );

        // The daemon still serves this queue, the others and the control queue.
        ctx.check_alive(0);
        ctx.check_alive(1);
        ctx.check_control_alive(0);
        ctx.dev.destroy_object(flood.handle).unwrap();
        drop(ctx);
        let name = "flood_of_malformed_requests/after";
        let mut ctx = Ctx::open(&daemon, &mem, DEFAULT_FEATURES, name);
        ctx.check_alive(0);
        ctx.check_control_alive(0);
    });
}
