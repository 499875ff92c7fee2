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

    fn expect_raw(
        &mut self,
        q: u16,
        what: &str,
        chain: &[(u64, u32, bool)],
        resp: &DmaBuf,
        allowed: &[Status],
    ) {
        self.expect_raw_descs(q, what, &RawDesc::chain(chain), resp, allowed);
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

// ---- request header (§6.1, §6.2, §6.5) --------------------------------------

#[test]
fn request_header_defects() {
    within("request_header_defects", || {
        let daemon = Daemon::start();
        let mem = guest_ram(RAM_MIB);
        let mut ctx = Ctx::open(&daemon, &mem, DEFAULT_FEATURES, "request_header_defects");
        ctx.check_alive(0);
        let text = b"123456789";
        let input = ctx.stage(text);
        let crc = Request::new(Op::Crc32c).input(Buffer::direct(&input));

        // Readable part shorter than the header: Invalid.
        let mut full = block(Req::new(Op::Crc32c), &[], &[BufRef::direct(9)]);
        full.extend_from_slice(text);
        for len in [1usize, 16, 40, 79] {
            let hdr = ctx.stage(&full[..len]);
            let resp = ctx.resp_buf();
            let what = format!("{len}-byte readable part");
            ctx.expect_raw(0, &what, &[rd(&hdr), wr(&resp)], &resp, &[Status::Invalid]);
        }
        {
            let a = ctx.stage(&full[..30]);
            let b = ctx.stage(&full[30..50]);
            let c = ctx.stage(&full[50..79]);
            let resp = ctx.resp_buf();
            let chain = [rd(&a), rd(&b), rd(&c), wr(&resp)];
            ctx.expect_raw(
                0,
                "79 bytes of header in 3 descriptors",
                &chain,
                &resp,
                &[Status::Invalid],
            );
            let resp = ctx.resp_buf();
            let chain = [(a.gpa(), 0, false), wr(&resp)];
            ctx.expect_raw(
                0,
                "one empty readable descriptor",
                &chain,
                &resp,
                &[Status::Invalid],
            );
            let resp = ctx.resp_buf();
            ctx.expect_raw(
                0,
                "no readable descriptor",
                &[wr(&resp)],
                &resp,
                &[Status::Invalid],
            );
            // The header is whole but its buffer reference is missing or cut.
            for len in [80usize, 81, 103] {
                let hdr = ctx.stage(&full[..len]);
                let resp = ctx.resp_buf();
                let what = format!("{len}-byte readable part (reference cut)");
                ctx.expect_raw(0, &what, &[rd(&hdr), wr(&resp)], &resp, &[Status::Invalid]);
            }
        }
        ctx.expect(
            0,
            "header without its buffer reference",
            &Request::new(Op::Crc32c).with_header(Req::new(Op::Crc32c)),
            &[Status::Invalid],
        );
        ctx.check_alive(0);

        // Unknown operations, and operations missing from `ops`: Unsupported.
        for op in [0u32, 10, 11, 31, 32, 0x100, 0x8000_0000, u32::MAX] {
            let what = format!("op {op:#x}");
            ctx.expect(0, &what, &Request::raw_op(op), &[Status::Unsupported]);
            let req = Request::raw_op(op).input(Buffer::direct(&input));
            ctx.expect(
                0,
                &format!("{what} with an input"),
                &req,
                &[Status::Unsupported],
            );
        }
        let ops = u32::from(ctx.dev.config().ops);
        for &op in Op::ALL {
            if ops & op.capability() == 0 {
                let (req, outs) = ctx.with_buffers(op, &input, 64);
                ctx.expect(
                    0,
                    &format!("{op:?} not in ops"),
                    &req,
                    &[Status::Unsupported],
                );
                outs.iter().for_each(|o| ctx.untouched(o, "op not in ops"));
            }
        }
        ctx.check_alive(0);

        // num_in / num_out not the operation's arity: Invalid.
        let arity_cases: &[(Op, usize, usize)] = &[
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
        for &(op, n_in, n_out) in arity_cases {
            let (req, outs) = ctx.with_counts(op, n_in, n_out, &input, 64);
            let what = format!("{op:?} with {n_in} inputs and {n_out} outputs");
            ctx.expect(0, &what, &req, &[Status::Invalid]);
            outs.iter().for_each(|o| ctx.untouched(o, &what));
        }
        let mut huge = Req::new(Op::Copy);
        huge.num_in = u8::MAX;
        huge.num_out = u8::MAX;
        let req = Request::new(Op::Copy).with_header(huge);
        ctx.expect(
            0,
            "255 inputs and 255 outputs, none given",
            &req,
            &[Status::Invalid],
        );
        ctx.check_alive(0);

        // A reserved byte of the header: Invalid.
        for i in 0..8 {
            let mut header = Req::new(Op::Crc32c);
            header.reserved[i] = 1 << i;
            let what = format!("header reserved byte {i}");
            ctx.expect(
                0,
                &what,
                &crc.clone().with_header(header),
                &[Status::Invalid],
            );
        }
        {
            let out = ctx.space(100);
            let mut header = Req::new(Op::Fill);
            header.reserved[7] = 0xff;
            let req = Request::new(Op::Fill)
                .output(Buffer::direct(&out))
                .with_header(header);
            ctx.expect(
                0,
                "FILL with a reserved header byte",
                &req,
                &[Status::Invalid],
            );
            ctx.untouched(&out, "FILL with a reserved header byte");
        }
        ctx.check_alive(0);

        // Invalid parameter blocks: a reserved byte, a field out of range.
        let param_cases: &[(&str, Op, usize, u8)] = &[
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
        for &(what, op, byte, value) in param_cases {
            let (req, outs) = ctx.with_buffers(op, &input, 256);
            let req = req.raw_params(params_with(byte, value));
            ctx.expect(0, what, &req, &[Status::Invalid]);
            outs.iter().for_each(|o| ctx.untouched(o, what));
        }
        ctx.check_alive(0);

        // Fields in range are accepted (the checks above are not overzealous).
        {
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
            assert_eq!(done.result_u32(), reference::crc32c(u32::MAX, text));

            let out = ctx.space(256);
            let params = DeflateParams {
                format: u8::from(DeflateFormat::Gzip),
                level: 9,
                ..DeflateParams::default()
            };
            let req = Request::new(Op::DeflateCompress)
                .params(&params)
                .input(Buffer::direct(&input))
                .output(Buffer::direct(&out));
            let done = ctx.expect_ok(0, "DEFLATE_COMPRESS gzip level 9", &req);
            let n = usize::try_from(done.bytes_written()).unwrap();
            let stream = ctx.mem.read_vec(&out, 0, n).unwrap();
            assert_eq!(
                reference::decompress(DeflateFormat::Gzip, &stream).unwrap(),
                text
            );

            // A non-zero tag is a parameter of AES_GCM_OPEN, not a reserved field.
            let out = ctx.space(64);
            let params = AesGcmParams {
                tag: [0x11; 16],
                ..AesGcmParams::default()
            };
            let req = Request::new(Op::AesGcmOpen)
                .params(&params)
                .input(Buffer::direct(&input))
                .input(Buffer::direct(&input))
                .output(Buffer::direct(&out));
            ctx.expect(
                0,
                "AES_GCM_OPEN with a wrong tag",
                &req,
                &[Status::AuthFailed],
            );
            ctx.untouched(&out, "AES_GCM_OPEN with a wrong tag");
        }
        ctx.check_alive(0);

        // Dependencies (§6.2).
        let max_deps = usize::try_from(ctx.max_deps()).unwrap();
        let signalled = ctx.expect_ok(0, "CRC32C to depend on", &crc).fence();
        let req = crc.clone().deps(vec![signalled; max_deps]);
        ctx.expect_ok(0, "max_deps dependencies", &req);
        let req = crc.clone().deps(vec![signalled; max_deps + 1]);
        ctx.expect(0, "max_deps + 1 dependencies", &req, &[Status::Limit]);
        {
            // 65535 dependencies and none given: both Limit and a short readable part.
            let mut header = Req::new(Op::Crc32c);
            header.num_deps = Le16::from(u16::MAX);
            let req = crc.clone().with_header(header);
            ctx.expect(
                0,
                "65535 dependencies, none given",
                &req,
                &[Status::Limit, Status::Invalid],
            );
        }
        {
            // Fewer fences than num_deps, and nothing after them: Invalid.
            let mut header = Req::new(Op::Crc32c);
            header.num_deps = Le16::from(2);
            let req = Request::new(Op::Crc32c).with_header(header).dep(signalled);
            ctx.expect(0, "2 dependencies, 1 given", &req, &[Status::Invalid]);
            let hdr = ctx.stage(&block(header, &[signalled], &[])[..90]);
            let resp = ctx.resp_buf();
            let chain = [rd(&hdr), wr(&resp)];
            ctx.expect_raw(
                0,
                "2 dependencies, the first one cut",
                &chain,
                &resp,
                &[Status::Invalid],
            );
        }
        for i in 0..6 {
            let mut dep = signalled;
            dep.reserved[i] = 1;
            let what = format!("dependency reserved byte {i}");
            ctx.expect(0, &what, &crc.clone().dep(dep), &[Status::Invalid]);
        }
        ctx.check_alive(0);
        // Dependencies naming no issued fence: NoFence.
        let queues = ctx.queues();
        let unissued_other = ctx.peek_fence(1);
        let no_fence_cases = [
            (
                "dependency on a queue that does not exist",
                Fence::new(queues, 1),
            ),
            ("dependency on queue 65535", Fence::new(u16::MAX, 1)),
            ("dependency with sequence number 0", Fence::new(0, 0)),
            (
                "dependency with sequence number 2^64-1",
                Fence::new(0, u64::MAX),
            ),
            (
                "dependency on a fence of queue 1 not yet issued",
                unissued_other,
            ),
        ];
        for (what, dep) in no_fence_cases {
            ctx.expect(0, what, &crc.clone().dep(dep), &[Status::NoFence]);
        }
        let own = ctx.peek_fence(0);
        ctx.expect(
            0,
            "dependency on its own fence",
            &crc.clone().dep(own),
            &[Status::NoFence],
        );
        let later = Fence::new(0, u64::from(ctx.peek_fence(0).seqno) + 1);
        ctx.expect(
            0,
            "dependency on a later fence",
            &crc.clone().dep(later),
            &[Status::NoFence],
        );
        // A valid dependency on another queue's fence is accepted.
        ctx.check_alive(1);
        let other = Fence::new(1, u64::from(ctx.peek_fence(1).seqno) - 1);
        ctx.expect_ok(
            0,
            "dependency on queue 1",
            &crc.clone().dep(other).dep(signalled),
        );
        ctx.check_alive(0);
        ctx.check_alive(1);
    });
}

// ---- buffer references (§6.3, §6.5) -----------------------------------------

/// The CRC32C header block with these references.
fn crc_block(refs: &[BufRef]) -> Vec<u8> {
    block(Req::new(Op::Crc32c), &[], refs)
}

#[test]
fn buffer_reference_defects() {
    within("buffer_reference_defects", || {
        let daemon = Daemon::start();
        let mem = guest_ram(RAM_MIB);
        let mut ctx = Ctx::open(&daemon, &mem, DEFAULT_FEATURES, "buffer_reference_defects");
        ctx.check_alive(0);
        let text = b"123456789";
        let data = ctx.stage(text);

        // Direct references with a non-zero offset, or a non-zero reserved field: Invalid.
        let bad_refs = [
            (
                "direct input with offset 4",
                BufRef {
                    offset: Le64::from(4),
                    ..BufRef::direct(5)
                },
            ),
            (
                "direct input with offset 2^64-1",
                BufRef {
                    offset: Le64::from(u64::MAX),
                    ..BufRef::direct(9)
                },
            ),
            (
                "direct input with reserved 1",
                BufRef {
                    reserved: Le32::from(1),
                    ..BufRef::direct(9)
                },
            ),
            (
                "direct input with reserved 2^31",
                BufRef {
                    reserved: Le32::from(0x8000_0000),
                    ..BufRef::direct(9)
                },
            ),
        ];
        for (what, r) in bad_refs {
            let hdr = ctx.stage(&crc_block(&[r]));
            let resp = ctx.resp_buf();
            ctx.expect_raw(
                0,
                what,
                &[rd(&hdr), rd(&data), wr(&resp)],
                &resp,
                &[Status::Invalid],
            );
        }
        for (what, r) in [
            (
                "direct output with offset 1",
                BufRef {
                    offset: Le64::from(1),
                    ..BufRef::direct(16)
                },
            ),
            (
                "direct output with reserved 1",
                BufRef {
                    reserved: Le32::from(1),
                    ..BufRef::direct(16)
                },
            ),
        ] {
            let hdr = ctx.stage(&block(Req::new(Op::Fill), &[], &[r]));
            let resp = ctx.resp_buf();
            let out = ctx.space(16);
            ctx.expect_raw(
                0,
                what,
                &[rd(&hdr), wr(&resp), wr(&out)],
                &resp,
                &[Status::Invalid],
            );
            ctx.untouched(&out, what);
        }
        ctx.check_alive(0);

        // Direct data beyond the chain: Range.
        {
            let hdr = ctx.stage(&crc_block(&[BufRef::direct(100)]));
            let half = ctx.stage(&[7; 50]);
            let resp = ctx.resp_buf();
            let what = "direct input of 100 bytes, 50 in the chain";
            ctx.expect_raw(
                0,
                what,
                &[rd(&hdr), rd(&half), wr(&resp)],
                &resp,
                &[Status::Range],
            );
            let hdr = ctx.stage(&crc_block(&[BufRef::direct(1)]));
            let resp = ctx.resp_buf();
            let what = "direct input of 1 byte, none in the chain";
            ctx.expect_raw(0, what, &[rd(&hdr), wr(&resp)], &resp, &[Status::Range]);
            let refs = [BufRef::direct(10), BufRef::direct(10)];
            let hdr = ctx.stage(&block(Req::new(Op::Compare), &[], &refs));
            let some = ctx.stage(&[1; 15]);
            let resp = ctx.resp_buf();
            let what = "COMPARE of 10 + 10 direct bytes, 15 in the chain";
            ctx.expect_raw(
                0,
                what,
                &[rd(&hdr), rd(&some), wr(&resp)],
                &resp,
                &[Status::Range],
            );

            let hdr = ctx.stage(&block(Req::new(Op::Fill), &[], &[BufRef::direct(100)]));
            let resp = ctx.resp_buf();
            let out = ctx.space(50);
            let what = "direct output of 100 bytes, 50 writable";
            ctx.expect_raw(
                0,
                what,
                &[rd(&hdr), wr(&resp), wr(&out)],
                &resp,
                &[Status::Range],
            );
            ctx.untouched(&out, what);
            let hdr = ctx.stage(&block(Req::new(Op::Fill), &[], &[BufRef::direct(1)]));
            let resp = ctx.resp_buf();
            let what = "direct output of 1 byte, no writable byte after the response";
            ctx.expect_raw(0, what, &[rd(&hdr), wr(&resp)], &resp, &[Status::Range]);
            let refs = [BufRef::direct(9), BufRef::direct(20)];
            let hdr = ctx.stage(&block(Req::new(Op::Copy), &[], &refs));
            let resp = ctx.resp_buf();
            let out = ctx.space(19);
            let what = "COPY to a direct output of 20 bytes, 19 writable";
            let chain = [rd(&hdr), rd(&data), wr(&resp), wr(&out)];
            ctx.expect_raw(0, what, &chain, &resp, &[Status::Range]);
            ctx.untouched(&out, what);
        }
        ctx.check_alive(0);

        // Bytes after the direct data are ignored; empty buffers are valid.
        {
            let hdr = ctx.stage(&crc_block(&[BufRef::direct(5)]));
            let resp = ctx.resp_buf();
            let descs = RawDesc::chain(&[rd(&hdr), rd(&data), wr(&resp)]);
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

            let params = FillParams {
                pattern: 0x5a,
                ..FillParams::default()
            };
            let req = Req::new(Op::Fill).with_params(&params);
            let hdr = ctx.stage(&block(req, &[], &[BufRef::direct(10)]));
            let resp = ctx.resp_buf();
            let out = ctx.space(20);
            let descs = RawDesc::chain(&[rd(&hdr), wr(&resp), wr(&out)]);
            let got = ctx.expect_raw_ok(0, "FILL of 10 of 20 writable bytes", &descs, &resp, 74);
            assert_eq!(u64::from(got.bytes_written), 10);
            let bytes = ctx.mem.read_vec(&out, 0, 20).unwrap();
            assert_eq!(bytes[..10], [0x5a; 10]);
            assert_eq!(bytes[10..], [SENTINEL; 10], "FILL wrote past its output");
        }

        // Object references (§6.3): an object of two segments of 2048 bytes.
        let content = ctx.rng.bytes(4096);
        let seg_a = ctx.stage(&content[..2048]);
        let seg_b = ctx.stage(&content[2048..]);
        let handle = ctx
            .dev
            .create_object(&[seg_a.segment(), seg_b.segment()])
            .unwrap();
        let destroyed = ctx.dev.create_object(&[seg_a.segment()]).unwrap();
        ctx.dev.destroy_object(destroyed).unwrap();
        let obj_crc = |offset: u64, len: u64| {
            Request::new(Op::Crc32c).input(Buffer::object(handle, offset, len))
        };
        for unknown in [0x1234_5678u32, u32::MAX, handle ^ 0x8000_0000, destroyed] {
            if unknown == handle {
                continue;
            }
            let what = format!("unknown handle {unknown:#x}");
            let req = Request::new(Op::Crc32c).input(Buffer::object(unknown, 0, 9));
            ctx.expect(0, &what, &req, &[Status::NoObject]);
            let req = Request::new(Op::Copy)
                .input(Buffer::direct(&data))
                .output(Buffer::object(unknown, 0, 9));
            ctx.expect(0, &format!("output to {what}"), &req, &[Status::NoObject]);
        }
        let range_cases: [(u64, u64); 7] = [
            (4000, 200),
            (0, 4097),
            (4096, 1),
            (4097, 0),
            (u64::MAX, 0),
            (u64::MAX, 1),
            (u64::MAX - 5, 10),
        ];
        for (offset, len) in range_cases {
            let what = format!("object bytes {offset:#x}+{len:#x} of 4096");
            ctx.expect(0, &what, &obj_crc(offset, len), &[Status::Range]);
        }
        {
            let params = FillParams {
                pattern: 0x77,
                ..FillParams::default()
            };
            let req = Request::new(Op::Fill)
                .params(&params)
                .output(Buffer::object(handle, 4090, 10));
            ctx.expect(
                0,
                "FILL of object bytes 4090+10 of 4096",
                &req,
                &[Status::Range],
            );
            let mut now = ctx.mem.read_vec(&seg_a, 0, 2048).unwrap();
            now.extend(ctx.mem.read_vec(&seg_b, 0, 2048).unwrap());
            assert!(now == content, "a rejected FILL modified the object");
        }
        for (offset, len) in [(4096u64, 0u64), (0, 4096), (2000, 100), (4095, 1)] {
            let what = format!("object bytes {offset}+{len} of 4096");
            let done = ctx.expect_ok(0, &what, &obj_crc(offset, len));
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
        // Past max_buffer_size and past the chain or the object: Limit or Range.
        let too_long = ctx.max_buffer() + 1;
        let req = obj_crc(0, too_long);
        ctx.expect(
            0,
            "object buffer longer than max_buffer_size",
            &req,
            &[Status::Limit, Status::Range],
        );
        let hdr = ctx.stage(&crc_block(&[BufRef::direct(u64::MAX)]));
        let resp = ctx.resp_buf();
        let what = "direct input of 2^64-1 bytes";
        ctx.expect_raw(
            0,
            what,
            &[rd(&hdr), rd(&data), wr(&resp)],
            &resp,
            &[Status::Limit, Status::Range],
        );
        ctx.check_alive(0);
        ctx.check_control_alive(0);
        ctx.dev.destroy_object(handle).unwrap();
        ctx.expect(0, "destroyed handle", &obj_crc(0, 9), &[Status::NoObject]);
        ctx.check_alive(0);
    });
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

        let req = Request::new(Op::Crc32c).input(Buffer::direct(&big));
        ctx.expect(
            0,
            "direct input of max_buffer_size + 1 bytes",
            &req,
            &[Status::Limit],
        );
        let req = Request::new(Op::Compare)
            .input(Buffer::direct(&exact))
            .input(Buffer::direct(&big));
        ctx.expect(
            0,
            "second COMPARE input over max_buffer_size",
            &req,
            &[Status::Limit],
        );
        let out = ctx.space(4097);
        let req = Request::new(Op::Fill).output(Buffer::direct(&out));
        ctx.expect(
            0,
            "direct output of max_buffer_size + 1 bytes",
            &req,
            &[Status::Limit],
        );
        ctx.untouched(&out, "direct output of max_buffer_size + 1 bytes");
        let out = ctx.space(4097);
        let req = Request::new(Op::Copy)
            .input(Buffer::direct(&exact))
            .output(Buffer::direct(&out));
        ctx.expect(
            0,
            "COPY to an output over max_buffer_size",
            &req,
            &[Status::Limit],
        );
        ctx.untouched(&out, "COPY to an output over max_buffer_size");

        let object = ctx.stage(&content);
        let handle = ctx.dev.create_object(&[object.segment()]).unwrap();
        let req = Request::new(Op::Crc32c).input(Buffer::object(handle, 0, 4097));
        ctx.expect(
            0,
            "object buffer of max_buffer_size + 1 bytes",
            &req,
            &[Status::Limit],
        );
        let req = Request::new(Op::Fill).output(Buffer::object(handle, 100, 4097));
        ctx.expect(
            0,
            "object output of max_buffer_size + 1 bytes",
            &req,
            &[Status::Limit],
        );
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

// ---- features not negotiated (§3.2) -----------------------------------------

#[test]
fn features_not_negotiated() {
    within("features_not_negotiated", || {
        let daemon = Daemon::start();
        let mem = guest_ram(RAM_MIB);
        let objects = feature(VIRTIO_ACCEL_F_OBJECTS);
        let fences = feature(VIRTIO_ACCEL_F_FENCES);
        let text = b"123456789";
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
            let data = ctx.stage(text);
            let crc = Request::new(Op::Crc32c).input(Buffer::direct(&data));
            let earlier = ctx.expect_ok(0, "CRC32C", &crc).fence();
            let seg = ctx.stage(&[3; 64]);
            if features & objects == 0 {
                for handle in [1u32, 2, u32::MAX] {
                    let what = format!("object input {handle:#x} {label}");
                    let req = Request::new(Op::Crc32c).input(Buffer::object(handle, 0, 9));
                    ctx.expect(0, &what, &req, &[Status::Unsupported]);
                    let what = format!("object output {handle:#x} {label}");
                    let req = Request::new(Op::Copy)
                        .input(Buffer::direct(&data))
                        .output(Buffer::object(handle, 0, 9));
                    ctx.expect(0, &what, &req, &[Status::Unsupported]);
                }
                let what = format!("OBJECT_CREATE {label}");
                ctx.expect_ctrl(
                    &what,
                    CREATE,
                    1,
                    0,
                    &seg_bytes(&[seg.segment()]),
                    &[Status::Unsupported],
                );
                let what = format!("OBJECT_DESTROY {label}");
                ctx.expect_ctrl(&what, DESTROY, 0, 1, &[], &[Status::Unsupported]);
            } else {
                let handle = ctx.dev.create_object(&[seg.segment()]).unwrap();
                let req = Request::new(Op::Crc32c).input(Buffer::object(handle, 0, 64));
                let done = ctx.expect_ok(0, "object input", &req);
                assert_eq!(done.result_u32(), reference::crc32c(0, &[3; 64]));
                ctx.dev.destroy_object(handle).unwrap();
            }
            if features & fences == 0 {
                let what = format!("a dependency {label}");
                ctx.expect(0, &what, &crc.clone().dep(earlier), &[Status::Unsupported]);
                let what = format!("FENCE_QUERY {label}");
                ctx.expect_ctrl(
                    &what,
                    QUERY,
                    1,
                    0,
                    earlier.as_slice(),
                    &[Status::Unsupported],
                );
                let what = format!("FENCE_WAIT {label}");
                ctx.expect_ctrl(
                    &what,
                    WAIT,
                    1,
                    0,
                    earlier.as_slice(),
                    &[Status::Unsupported],
                );
            } else {
                ctx.expect_ok(0, "a dependency", &crc.clone().dep(earlier));
                assert!(ctx.dev.query_fence(earlier).unwrap());
                ctx.dev.wait_fences(&[earlier]).unwrap();
            }
            ctx.check_alive(0);
            ctx.check_alive(1);
        }
    });
}

// ---- descriptor chains (§6.5, §10) ------------------------------------------

/// A raw descriptor from `(gpa, len, writable)` with `NEXT` pointing at `next`.
fn linked(seg: (u64, u32, bool), next: RawNext) -> RawDesc {
    let flags = if seg.2 { DESC_F_WRITE } else { 0 } | DESC_F_NEXT;
    RawDesc::new(seg.0, seg.1, flags, next)
}

fn indirect_desc(gpa: u64, len: u32) -> RawDesc {
    RawDesc::new(gpa, len, DESC_F_INDIRECT, RawNext::Following)
}

#[test]
fn descriptor_defects() {
    within("descriptor_defects", || {
        let daemon = Daemon::start();
        let mem = guest_ram(RAM_MIB);
        let mut ctx = Ctx::open(&daemon, &mem, DEFAULT_FEATURES, "descriptor_defects");
        ctx.check_alive(0);
        let ram_end = mem.size();
        let text = b"123456789";
        let crc9 = reference::crc32c(0, text).to_le_bytes();
        let hdr = ctx.stage(&crc_block(&[BufRef::direct(9)]));
        let data = ctx.stage(text);
        let size = ctx.queue_size(1);
        let max_seg = usize::try_from(ctx.max_segments()).unwrap();

        // A well-formed raw chain, for reference.
        let resp = ctx.resp_buf();
        let descs = RawDesc::chain(&[rd(&hdr), rd(&data), wr(&resp)]);
        let got = ctx.expect_raw_ok(0, "raw CRC32C", &descs, &resp, 64);
        assert_eq!(got.result[..4], crc9);

        // A readable descriptor after a writable one: Invalid, in the response.
        let resp = ctx.resp_buf();
        let chain = [rd(&hdr), wr(&resp), rd(&data)];
        ctx.expect_raw(
            0,
            "readable after writable",
            &chain,
            &resp,
            &[Status::Invalid],
        );
        {
            let fill = ctx.stage(&block(Req::new(Op::Fill), &[], &[BufRef::direct(16)]));
            let resp = ctx.resp_buf();
            let out = ctx.space(16);
            let chain = [rd(&fill), wr(&resp), rd(&data), wr(&out)];
            ctx.expect_raw(
                0,
                "FILL with readable between writables",
                &chain,
                &resp,
                &[Status::Invalid],
            );
            ctx.untouched(&out, "FILL with readable between writables");
        }
        ctx.check_alive(0);

        // More descriptors than max_segments: Limit, the response located in
        // the first max_segments descriptors, or used length 0.
        {
            let n = max_seg + 6;
            let fill = ctx.stage(&block(
                Req::new(Op::Fill),
                &[],
                &[BufRef::direct(8 * n as u64)],
            ));
            let resp = ctx.resp_buf();
            let outs: Vec<DmaBuf> = (0..n).map(|_| ctx.space(8)).collect();
            let mut chain = vec![rd(&fill), wr(&resp)];
            chain.extend(outs.iter().map(wr));
            ctx.expect_raw(
                0,
                "max_segments + 8 descriptors",
                &chain,
                &resp,
                &[Status::Limit],
            );
            outs.iter()
                .for_each(|o| ctx.untouched(o, "max_segments + 8 descriptors"));

            let head = ctx.stage(&crc_block(&[BufRef::direct(n as u64)]));
            let bytes = ctx.stage(&vec![9; n]);
            let resp = ctx.resp_buf();
            let mut chain = vec![rd(&head)];
            chain.extend((0..n).map(|i| (bytes.gpa() + i as u64, 1, false)));
            chain.push(wr(&resp));
            let what = "max_segments + 8 descriptors, response at the end";
            ctx.expect_raw_unanswered(0, what, &RawDesc::chain(&chain), &resp);

            // Exactly max_segments descriptors is fine.
            let n = max_seg - 2;
            let head = ctx.stage(&crc_block(&[BufRef::direct(n as u64)]));
            let bytes_data = ctx.rng.bytes(n);
            let bytes = ctx.stage(&bytes_data);
            let resp = ctx.resp_buf();
            let mut chain = vec![rd(&head)];
            chain.extend((0..n).map(|i| (bytes.gpa() + i as u64, 1, false)));
            chain.push(wr(&resp));
            let got = ctx.expect_raw_ok(
                0,
                "max_segments descriptors",
                &RawDesc::chain(&chain),
                &resp,
                64,
            );
            assert_eq!(
                got.result[..4],
                reference::crc32c(0, &bytes_data).to_le_bytes()
            );

            // An indirect table counts its entries.
            let n = max_seg - 1;
            let params = FillParams {
                pattern: 0x3c,
                ..FillParams::default()
            };
            let req = Req::new(Op::Fill).with_params(&params);
            let fill = ctx.stage(&block(req, &[], &[BufRef::direct(8 * n as u64)]));
            let resp = ctx.resp_buf();
            let outs: Vec<DmaBuf> = (0..n).map(|_| ctx.space(8)).collect();
            let mut entries = vec![rd(&fill), wr(&resp)];
            entries.extend(outs.iter().map(wr));
            let bytes = Descriptor::table_bytes(&table(&entries));
            let tab = ctx.stage(&bytes);
            let descs = [indirect_desc(tab.gpa(), len32(bytes.len()))];
            ctx.expect_raw_descs(
                0,
                "indirect table of max_segments + 1",
                &descs,
                &resp,
                &[Status::Limit],
            );
            outs.iter()
                .for_each(|o| ctx.untouched(o, "indirect table of max_segments + 1"));

            let n = max_seg - 2;
            let fill = ctx.stage(&block(req, &[], &[BufRef::direct(8 * n as u64)]));
            let resp = ctx.resp_buf();
            let outs: Vec<DmaBuf> = (0..n).map(|_| ctx.space(8)).collect();
            let mut entries = vec![rd(&fill), wr(&resp)];
            entries.extend(outs.iter().map(wr));
            let bytes = Descriptor::table_bytes(&table(&entries));
            let tab = ctx.stage(&bytes);
            let descs = [indirect_desc(tab.gpa(), len32(bytes.len()))];
            let used = len32(64 + 8 * n);
            ctx.expect_raw_ok(0, "indirect table of max_segments", &descs, &resp, used);
            for o in &outs {
                assert_eq!(ctx.mem.read_vec(o, 0, 8).unwrap(), [0x3c; 8]);
            }
        }
        ctx.check_alive(0);

        // Descriptors outside guest memory: BadAddress.
        let bad_inputs: [(&str, u64, u32); 6] = [
            ("input past the end of guest memory", ram_end + 0x1000, 9),
            ("input right at the end of guest memory", ram_end, 9),
            ("input straddling the end of guest memory", ram_end - 4, 9),
            ("input far away", 1 << 48, 9),
            ("input whose addr + len overflows", u64::MAX - 4, 9),
            ("input of 1 GiB from address 0", 0, 1 << 30),
        ];
        for (what, addr, len) in bad_inputs {
            let head = ctx.stage(&crc_block(&[BufRef::direct(9)]));
            let resp = ctx.resp_buf();
            let chain = [rd(&head), (addr, len, false), wr(&resp)];
            ctx.expect_raw(0, what, &chain, &resp, &[Status::BadAddress]);
        }
        {
            let resp = ctx.resp_buf();
            let chain = [(ram_end + 0x1000, 104, false), wr(&resp)];
            ctx.expect_raw(
                0,
                "header outside guest memory",
                &chain,
                &resp,
                &[Status::BadAddress],
            );
            let fill = ctx.stage(&block(Req::new(Op::Fill), &[], &[BufRef::direct(16)]));
            for (what, addr) in [
                ("output outside guest memory", ram_end + 0x1000),
                ("output straddling the end of guest memory", ram_end - 8),
                ("output whose addr + len overflows", u64::MAX - 8),
            ] {
                let resp = ctx.resp_buf();
                let chain = [rd(&fill), wr(&resp), (addr, 16, true)];
                ctx.expect_raw(0, what, &chain, &resp, &[Status::BadAddress]);
            }
            for (what, addr) in [
                ("response outside guest memory", ram_end + 0x1000),
                ("response straddling the end of guest memory", ram_end - 32),
                ("response whose addr + len overflows", u64::MAX - 31),
            ] {
                let resp = ctx.resp_buf();
                let descs = RawDesc::chain(&[rd(&hdr), rd(&data), (addr, 64, true)]);
                ctx.expect_raw_unanswered(0, what, &descs, &resp);
            }
        }
        ctx.check_alive(0);

        // `next` out of the table: Invalid.
        for next in [size, size + 1, u16::MAX] {
            let resp = ctx.resp_buf();
            let descs = [
                linked(rd(&hdr), RawNext::Following),
                linked(rd(&data), RawNext::Following),
                linked(wr(&resp), RawNext::Absolute(next)),
            ];
            let what = format!("next = {next} in a queue of {size}");
            ctx.expect_raw_descs(0, &what, &descs, &resp, &[Status::Invalid]);
            let resp = ctx.resp_buf();
            let descs = [linked(rd(&hdr), RawNext::Absolute(next))];
            ctx.expect_raw_unanswered(0, &format!("{what}, nothing writable"), &descs, &resp);
        }
        ctx.check_alive(0);

        // Indirect tables.
        {
            let resp = ctx.resp_buf();
            let entries = table(&[rd(&hdr), rd(&data), wr(&resp)]);
            let bytes = Descriptor::table_bytes(&entries);
            let good = ctx.stage(&bytes);
            let good_len = len32(bytes.len());
            let got = ctx.expect_raw_ok(
                0,
                "indirect table",
                &[indirect_desc(good.gpa(), good_len)],
                &resp,
                64,
            );
            assert_eq!(got.result[..4], crc9);

            for (what, addr) in [
                ("indirect table outside guest memory", ram_end + 0x1000),
                (
                    "indirect table straddling the end of guest memory",
                    ram_end - 16,
                ),
                ("indirect table whose addr + len overflows", u64::MAX - 16),
            ] {
                let resp = ctx.resp_buf();
                ctx.expect_raw_unanswered(0, what, &[indirect_desc(addr, 48)], &resp);
                // After a direct response: the chain is malformed or its
                // descriptor is outside guest memory.
                let resp = ctx.resp_buf();
                let descs = [
                    linked(rd(&hdr), RawNext::Following),
                    linked(rd(&data), RawNext::Following),
                    linked(wr(&resp), RawNext::Following),
                    indirect_desc(addr, 48),
                ];
                let what = format!("{what}, after the response");
                ctx.expect_raw_descs(
                    0,
                    &what,
                    &descs,
                    &resp,
                    &[Status::Invalid, Status::BadAddress],
                );
            }
            // 40 bytes of a table of three: the response's descriptor is not
            // among its two whole descriptors (§6.5).
            let resp = ctx.resp_buf();
            let what = "indirect table of 40 bytes";
            ctx.expect_raw_unanswered(0, what, &[indirect_desc(good.gpa(), 40)], &resp);
            let resp = ctx.resp_buf();
            let descs = [
                linked(rd(&hdr), RawNext::Following),
                linked(rd(&data), RawNext::Following),
                linked(wr(&resp), RawNext::Following),
                indirect_desc(good.gpa(), 40),
            ];
            ctx.expect_raw_descs(
                0,
                "indirect table of 40 bytes after the response",
                &descs,
                &resp,
                &[Status::Invalid],
            );
            let resp = ctx.resp_buf();
            ctx.expect_raw_unanswered(
                0,
                "empty indirect table",
                &[indirect_desc(good.gpa(), 0)],
                &resp,
            );

            // An indirect descriptor inside an indirect table.
            let resp = ctx.resp_buf();
            let inner_out = ctx.space(8);
            let inner = ctx.stage(&Descriptor::table_bytes(&table(&[wr(&inner_out)])));
            let mut entries = table(&[rd(&hdr), rd(&data), wr(&resp)]);
            entries[2] = Descriptor::new(resp.gpa(), 64, DESC_F_WRITE | DESC_F_NEXT, 3);
            entries.push(Descriptor::new(inner.gpa(), 16, DESC_F_INDIRECT, 0));
            let nested = ctx.stage(&Descriptor::table_bytes(&entries));
            let descs = [indirect_desc(nested.gpa(), 64)];
            ctx.expect_raw_descs(
                0,
                "nested indirect table",
                &descs,
                &resp,
                &[Status::Invalid],
            );
            ctx.untouched(&inner_out, "nested indirect table");

            // `next` past the end of an indirect table.
            let resp = ctx.resp_buf();
            let mut entries = table(&[rd(&hdr), rd(&data), wr(&resp)]);
            entries[2] = Descriptor::new(resp.gpa(), 64, DESC_F_WRITE | DESC_F_NEXT, 3);
            let past = ctx.stage(&Descriptor::table_bytes(&entries));
            let descs = [indirect_desc(past.gpa(), 48)];
            ctx.expect_raw_descs(
                0,
                "next past the end of an indirect table",
                &descs,
                &resp,
                &[Status::Invalid],
            );
        }
        ctx.check_alive(0);

        // Writable part shorter than 64 bytes: used length 0, nothing written.
        let crc = Request::new(Op::Crc32c).input(Buffer::direct(&data));
        for len in [0u32, 1, 32, 63] {
            let what = format!("{len}-byte response area");
            ctx.expect_unanswered(0, &what, &crc.clone().with_resp_len(len));
        }
        {
            let resp = ctx.resp_buf();
            let descs = RawDesc::chain(&[rd(&hdr), rd(&data), (resp.gpa(), 63, true)]);
            ctx.expect_raw_unanswered(0, "raw 63-byte response area", &descs, &resp);
            let resp = ctx.resp_buf();
            let descs = RawDesc::chain(&[rd(&hdr), (resp.gpa(), 16, true), rd(&data)]);
            ctx.expect_raw_unanswered(
                0,
                "16-byte response area, then a readable descriptor",
                &descs,
                &resp,
            );
            let resp = ctx.resp_buf();
            let descs = RawDesc::chain(&[rd(&hdr), rd(&data)]);
            ctx.expect_raw_unanswered(0, "no writable descriptor", &descs, &resp);
        }
        ctx.check_alive(0);

        // The parts are byte streams: a response split over descriptors, zero-length descriptors.
        {
            let resp = ctx.resp_buf();
            let chain = [
                rd(&hdr),
                rd(&data),
                (resp.gpa(), 32, true),
                (resp.gpa() + 32, 32, true),
            ];
            let got = ctx.expect_raw_ok(
                0,
                "response in two descriptors",
                &RawDesc::chain(&chain),
                &resp,
                64,
            );
            assert_eq!(got.result[..4], crc9);

            let resp = ctx.resp_buf();
            let pieces: Vec<(u64, u32, bool)> =
                (0..4).map(|i| (resp.gpa() + 16 * i, 16, true)).collect();
            let hdr_bytes = crc_block(&[BufRef::direct(9)]);
            let split = ctx.stage(&hdr_bytes);
            let mut chain = vec![
                (split.gpa(), 0, false),
                (split.gpa(), 1, false),
                (split.gpa() + 1, 0, false),
                (split.gpa() + 1, 78, false),
                (split.gpa() + 79, 20, false),
                (split.gpa() + 99, 5, false),
                (data.gpa(), 0, false),
                (data.gpa(), 4, false),
                (data.gpa() + 4, 5, false),
                (data.gpa(), 0, false),
                (resp.gpa(), 0, true),
            ];
            chain.extend(pieces);
            chain.push((resp.gpa(), 0, true));
            let got = ctx.expect_raw_ok(
                0,
                "chain with zero-length descriptors",
                &RawDesc::chain(&chain),
                &resp,
                64,
            );
            assert_eq!(got.result[..4], crc9);

            // The response ends inside the descriptor where the output begins.
            let params = FillParams {
                pattern: 0xe1,
                ..FillParams::default()
            };
            let fill = ctx.stage(&block(
                Req::new(Op::Fill).with_params(&params),
                &[],
                &[BufRef::direct(16)],
            ));
            let area = ctx.space(96);
            let chain = [
                rd(&fill),
                (area.gpa(), 40, true),
                (area.gpa() + 40, 30, true),
                (area.gpa() + 70, 26, true),
            ];
            let (used, _, fence) = ctx.raw_request(
                0,
                "FILL sharing a descriptor with the response",
                &RawDesc::chain(&chain),
                &area,
            );
            let got = ctx.mem.read_obj::<Resp>(&area, 0).unwrap();
            assert_eq!(
                u32::from(got.status),
                0,
                "FILL sharing a descriptor with the response: {}",
                status_name(u32::from(got.status))
            );
            assert_eq!(got.fence, fence);
            assert_eq!(used.len, 80);
            let bytes = ctx.mem.read_vec(&area, 64, 32).unwrap();
            assert_eq!(bytes[..16], [0xe1; 16]);
            assert_eq!(bytes[16..], [SENTINEL; 16]);
        }
        ctx.check_alive(0);
        ctx.check_alive(1);
        ctx.check_control_alive(0);
    });
}

/// `DESC_F_INDIRECT` with other flags, pointing at the table at `gpa`.
fn indirect_with(gpa: u64, len: u32, flags: u16) -> RawDesc {
    RawDesc::new(gpa, len, DESC_F_INDIRECT | flags, RawNext::Following)
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
        let text = b"123456789";
        let crc9 = reference::crc32c(0, text).to_le_bytes();
        // Header, buffer reference and data in one readable buffer.
        let mut bytes = crc_block(&[BufRef::direct(9)]);
        bytes.extend_from_slice(text);
        let whole = ctx.stage(&bytes);

        // A table of two descriptors, given 32 bytes: well-formed.
        let resp = ctx.resp_buf();
        let tab = ctx.stage(&Descriptor::table_bytes(&table(&[rd(&whole), wr(&resp)])));
        let descs = [indirect_desc(tab.gpa(), 32)];
        let got = ctx.expect_raw_ok(0, "indirect table of 32 bytes", &descs, &resp, 64);
        assert_eq!(got.result[..4], crc9);
        // The same table given 40 or 47 bytes: its two whole descriptors
        // hold the response; the trailing bytes make the chain malformed.
        for len in [40u32, 47] {
            let resp = ctx.resp_buf();
            let tab = ctx.stage(&Descriptor::table_bytes(&table(&[rd(&whole), wr(&resp)])));
            let what = format!("indirect table of {len} bytes holding the response");
            let descs = [indirect_desc(tab.gpa(), len)];
            ctx.expect_raw_descs(0, &what, &descs, &resp, &[Status::Invalid]);
        }
        ctx.check_alive(0);

        // INDIRECT with NEXT: malformed; the table is walked (it holds the
        // response), the descriptor after it is not.
        let params = FillParams {
            pattern: 0x5a,
            ..FillParams::default()
        };
        let fill_req = Req::new(Op::Fill).with_params(&params);
        let fill = ctx.stage(&block(fill_req, &[], &[BufRef::direct(16)]));
        {
            let resp = ctx.resp_buf();
            let out = ctx.space(16);
            let after = ctx.space(16);
            let entries = table(&[rd(&fill), wr(&resp), wr(&out)]);
            let tab = ctx.stage(&Descriptor::table_bytes(&entries));
            let descs = [
                indirect_with(tab.gpa(), 48, DESC_F_NEXT),
                RawDesc::chain(&[wr(&after)])[0],
            ];
            let what = "indirect descriptor with NEXT, output in the table";
            ctx.expect_raw_descs(0, what, &descs, &resp, &[Status::Invalid]);
            ctx.untouched(&out, what);
            ctx.untouched(&after, what);

            let resp = ctx.resp_buf();
            let out = ctx.space(16);
            let tab = ctx.stage(&Descriptor::table_bytes(&table(&[rd(&fill), wr(&resp)])));
            let descs = [
                indirect_with(tab.gpa(), 32, DESC_F_NEXT),
                RawDesc::chain(&[wr(&out)])[0],
            ];
            let what = "indirect descriptor with NEXT to the output";
            ctx.expect_raw_descs(0, what, &descs, &resp, &[Status::Invalid]);
            ctx.untouched(&out, what);
        }
        ctx.check_alive(0);

        // WRITE on a descriptor that points to a table is ignored (virtio
        // 1.2, 2.7.5.3.2): the chain is well-formed, also after a readable
        // descriptor.
        {
            let resp = ctx.resp_buf();
            let tab = ctx.stage(&Descriptor::table_bytes(&table(&[rd(&whole), wr(&resp)])));
            let descs = [indirect_with(tab.gpa(), 32, DESC_F_WRITE)];
            let what = "indirect table marked writable";
            let got = ctx.expect_raw_ok(0, what, &descs, &resp, 64);
            assert_eq!(got.result[..4], crc9, "{what}");

            let hdr = ctx.stage(&crc_block(&[BufRef::direct(9)]));
            let data = ctx.stage(text);
            let resp = ctx.resp_buf();
            let tab = ctx.stage(&Descriptor::table_bytes(&table(&[rd(&data), wr(&resp)])));
            let descs = [
                linked(rd(&hdr), RawNext::Following),
                indirect_with(tab.gpa(), 32, DESC_F_WRITE),
            ];
            let what = "indirect table marked writable after a readable descriptor";
            let got = ctx.expect_raw_ok(0, what, &descs, &resp, 64);
            assert_eq!(got.result[..4], crc9, "{what}");

            let resp = ctx.resp_buf();
            let out = ctx.space(16);
            let tab = ctx.stage(&Descriptor::table_bytes(&table(&[wr(&resp), wr(&out)])));
            let descs = [
                linked(rd(&fill), RawNext::Following),
                indirect_with(tab.gpa(), 32, DESC_F_WRITE),
            ];
            let what = "FILL with its writable part in a table marked writable";
            ctx.expect_raw_ok(0, what, &descs, &resp, 80);
            assert_eq!(ctx.mem.read_vec(&out, 0, 16).unwrap(), [0x5a; 16], "{what}");
        }
        ctx.check_alive(0);

        // The control queue locates its 16-byte response the same way.
        {
            let issued = ctx
                .expect_ok(
                    0,
                    "CRC32C",
                    &Request::new(Op::Crc32c).input(Buffer::direct(&whole)),
                )
                .fence();
            let query = ctx.stage(&ctrl_block(QUERY, 1, 0, issued.as_slice()));
            let resp = ctx.resp_buf();
            let entries = table(&[rd(&query), (resp.gpa(), 16, true)]);
            let tab = ctx.stage(&Descriptor::table_bytes(&entries));
            let descs = [indirect_desc(tab.gpa(), 32)];
            ctx.expect_raw_ctrl("control: indirect table", &descs, &resp, &[Status::Ok]);
            for (what, len, flags) in [
                ("control: indirect table of 40 bytes", 40, 0),
                ("control: indirect descriptor with NEXT", 32, DESC_F_NEXT),
            ] {
                let resp = ctx.resp_buf();
                let entries = table(&[rd(&query), (resp.gpa(), 16, true)]);
                let tab = ctx.stage(&Descriptor::table_bytes(&entries));
                let descs = [indirect_with(tab.gpa(), len, flags)];
                ctx.expect_raw_ctrl(what, &descs, &resp, &[Status::Invalid]);
            }
        }
        ctx.check_alive(0);
        ctx.check_alive(1);
        ctx.check_control_alive(0);
    });
}

#[test]
fn descriptor_loops() {
    within("descriptor_loops", || {
        let daemon = Daemon::start();
        let mem = guest_ram(RAM_MIB);
        let mut ctx = Ctx::open(&daemon, &mem, DEFAULT_FEATURES, "descriptor_loops");
        ctx.check_alive(0);
        let hdr = ctx.stage(&crc_block(&[BufRef::direct(9)]));
        let data = ctx.stage(b"123456789");
        let out = ctx.space(8);
        let out2 = ctx.space(8);

        // A loop is a malformed chain (§6.5): Invalid in the response, or used
        // length 0; never a hang. Every case runs; the mismatches are
        // reported together at the end.
        let mut failures: Vec<String> = Vec::new();
        let mut check = |ctx: &mut Ctx, what: &str, descs: &[RawDesc], resp: &DmaBuf| {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                ctx.expect_raw_failure_or_unanswered(0, what, descs, resp, &[Status::Invalid]);
            }));
            if let Err(panic) = outcome {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| format!("{what}: panicked"));
                failures.push(message);
            }
        };
        let resp = ctx.resp_buf();
        let descs = [
            linked(rd(&hdr), RawNext::Following),
            linked(rd(&data), RawNext::Following),
            linked(wr(&resp), RawNext::Desc(2)),
        ];
        check(
            &mut ctx,
            "response descriptor linked to itself",
            &descs,
            &resp,
        );
        let resp = ctx.resp_buf();
        let descs = [
            linked(rd(&hdr), RawNext::Following),
            linked(rd(&data), RawNext::Following),
            linked(wr(&resp), RawNext::Following),
            linked(wr(&out), RawNext::Desc(2)),
        ];
        check(
            &mut ctx,
            "two writable descriptors in a loop",
            &descs,
            &resp,
        );
        let resp = ctx.resp_buf();
        let descs = [
            linked(rd(&hdr), RawNext::Following),
            linked(rd(&data), RawNext::Following),
            linked(wr(&resp), RawNext::Following),
            linked(wr(&out), RawNext::Following),
            linked(wr(&out2), RawNext::Desc(3)),
        ];
        check(
            &mut ctx,
            "loop between two output descriptors",
            &descs,
            &resp,
        );
        let resp = ctx.resp_buf();
        let descs = [
            linked(rd(&hdr), RawNext::Following),
            linked(rd(&data), RawNext::Following),
            linked(wr(&resp), RawNext::Desc(0)),
        ];
        check(&mut ctx, "chain looping back to its head", &descs, &resp);
        // A loop inside an indirect table.
        let resp = ctx.resp_buf();
        let mut entries = table(&[rd(&hdr), rd(&data), wr(&resp)]);
        entries[2] = Descriptor::new(resp.gpa(), 64, DESC_F_WRITE | DESC_F_NEXT, 2);
        let looped = ctx.stage(&Descriptor::table_bytes(&entries));
        let descs = [indirect_desc(looped.gpa(), 48)];
        check(&mut ctx, "loop in an indirect table", &descs, &resp);
        ctx.untouched(&out, "loops");
        ctx.untouched(&out2, "loops");

        // Nothing writable: used length 0.
        let resp = ctx.resp_buf();
        let descs = [
            linked(rd(&hdr), RawNext::Following),
            linked(rd(&data), RawNext::Desc(1)),
        ];
        ctx.expect_raw_unanswered(0, "readable descriptor linked to itself", &descs, &resp);
        ctx.check_alive(0);
        ctx.check_alive(1);
        ctx.check_control_alive(0);
        assert!(
            failures.is_empty(),
            "{} of 5 loop cases failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
    });
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
        let big_seg = (big.gpa(), len32(big.len()), true);
        let params = FillParams {
            pattern: 0x42,
            ..FillParams::default()
        };
        let fill = ctx.stage(&block(
            Req::new(Op::Fill).with_params(&params),
            &[],
            &[BufRef::direct(1000)],
        ));

        // 64 + 1000 + 63 * 64 MiB < 4 GiB: the unused writable bytes are ignored.
        let resp = ctx.resp_buf();
        let out = ctx.space(1000);
        let mut chain = vec![rd(&fill), wr(&resp), wr(&out)];
        chain.extend(std::iter::repeat_n(big_seg, 63));
        ctx.expect_raw_ok(
            0,
            "chain just under 4 GiB",
            &RawDesc::chain(&chain),
            &resp,
            1064,
        );
        assert_eq!(ctx.mem.read_vec(&out, 0, 1000).unwrap(), vec![0x42; 1000]);

        // 64 more MiB: 4 GiB or more in total is Invalid.
        let resp = ctx.resp_buf();
        let out = ctx.space(1000);
        let mut chain = vec![rd(&fill), wr(&resp), wr(&out)];
        chain.extend(std::iter::repeat_n(big_seg, 64));
        ctx.expect_raw(
            0,
            "chain of more than 4 GiB",
            &chain,
            &resp,
            &[Status::Invalid],
        );
        ctx.untouched(&out, "chain of more than 4 GiB");

        // The same with readable descriptors, the response after them: the
        // walk goes on past 4 GiB to the response (§6.5).
        let hdr = ctx.stage(&crc_block(&[BufRef::direct(9)]));
        let data = ctx.stage(b"123456789");
        let big_in = (big.gpa(), len32(big.len()), false);
        let resp = ctx.resp_buf();
        let mut chain = vec![rd(&hdr), rd(&data)];
        chain.extend(std::iter::repeat_n(big_in, 64));
        chain.push(wr(&resp));
        ctx.expect_raw(
            0,
            "readable part of more than 4 GiB",
            &chain,
            &resp,
            &[Status::Invalid],
        );
        // And in an indirect table.
        let resp = ctx.resp_buf();
        let mut entries = vec![rd(&hdr), rd(&data)];
        entries.extend(std::iter::repeat_n(big_in, 64));
        entries.push(wr(&resp));
        let bytes = Descriptor::table_bytes(&table(&entries));
        let tab = ctx.stage(&bytes);
        ctx.expect_raw_descs(
            0,
            "indirect table of more than 4 GiB",
            &[indirect_desc(tab.gpa(), len32(bytes.len()))],
            &resp,
            &[Status::Invalid],
        );
        ctx.check_alive(0);
    });
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
        let text = b"123456789";
        let hdr = ctx.stage(&crc_block(&[BufRef::direct(9)]));
        let cases: [(&str, u64); 5] = [
            ("input in the hole", 16 * MIB + 0x1000),
            ("input from the first region into the hole", 16 * MIB - 4),
            ("input from the hole into the second region", 32 * MIB - 4),
            ("input at the start of the hole", 16 * MIB),
            ("input past the last region", 64 * MIB),
        ];
        for (what, addr) in cases {
            let resp = ctx.resp_buf();
            let chain = [rd(&hdr), (addr, 9, false), wr(&resp)];
            ctx.expect_raw(0, what, &chain, &resp, &[Status::BadAddress]);
            let what = format!("OBJECT_CREATE with an {what}");
            ctx.expect_ctrl(
                &what,
                CREATE,
                1,
                0,
                &seg_bytes(&[(addr, 9)]),
                &[Status::BadAddress],
            );
        }
        {
            let resp = ctx.resp_buf();
            let descs = RawDesc::chain(&[
                rd(&hdr),
                (16 * MIB + 0x1000, 9, false),
                (16 * MIB + 0x2000, 64, true),
            ]);
            ctx.expect_raw_unanswered(0, "response in the hole", &descs, &resp);
            ctx.expect_raw_unanswered(
                0,
                "indirect table in the hole",
                &[indirect_desc(16 * MIB + 0x1000, 48)],
                &resp,
            );
        }
        ctx.check_alive(0);

        // Across two adjacent regions is all guest memory.
        // The allocator hands out ranges inside one region: reserve both halves.
        let below = mem.alloc_at(48 * MIB - 64, 64).unwrap();
        let above = mem.alloc_at(48 * MIB, 64).unwrap();
        mem.write_at(48 * MIB - 4, text).unwrap();
        let resp = ctx.resp_buf();
        let descs = RawDesc::chain(&[rd(&hdr), (48 * MIB - 4, 9, false), wr(&resp)]);
        let got = ctx.expect_raw_ok(0, "input across two adjacent regions", &descs, &resp, 64);
        assert_eq!(got.result[..4], reference::crc32c(0, text).to_le_bytes());
        let handle = ctx.dev.create_object(&[(48 * MIB - 4, 9)]).unwrap();
        let req = Request::new(Op::Crc32c).input(Buffer::object(handle, 0, 9));
        let done = ctx.expect_ok(0, "object across two adjacent regions", &req);
        assert_eq!(done.result_u32(), reference::crc32c(0, text));
        ctx.dev.destroy_object(handle).unwrap();
        drop((below, above));
        ctx.check_alive(0);
        ctx.check_control_alive(0);
    });
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

/// An OBJECT_CREATE case: what, segments, status.
type SegCase = (&'static str, Vec<(u64, u64)>, Status);

#[test]
fn control_queue_defects() {
    within("control_queue_defects", || {
        let daemon = Daemon::start();
        let mem = guest_ram(RAM_MIB);
        let mut ctx = Ctx::open(&daemon, &mem, DEFAULT_FEATURES, "control_queue_defects");
        ctx.check_alive(0);
        ctx.check_control_alive(0);
        let ram_end = mem.size();
        let max_seg = ctx.max_segments();
        let max_deps = ctx.max_deps();
        let queues = ctx.queues();
        let data = ctx.stage(b"123456789");
        let crc = Request::new(Op::Crc32c).input(Buffer::direct(&data));
        let issued = ctx.expect_ok(0, "CRC32C", &crc).fence();
        let seg = ctx.stage(&[0x11; 256]);

        // Chain-level defects and short parts, on raw chains.
        {
            let query = ctx.stage(&ctrl_block(QUERY, 1, 0, issued.as_slice()));
            for len in [1usize, 8, 15] {
                let resp = ctx.resp_buf();
                let what = format!("{len}-byte control header");
                let descs =
                    RawDesc::chain(&[(query.gpa(), len32(len), false), (resp.gpa(), 16, true)]);
                ctx.expect_raw_ctrl(&what, &descs, &resp, &[Status::Invalid]);
            }
            let resp = ctx.resp_buf();
            let descs = RawDesc::chain(&[(query.gpa(), 0, false), (resp.gpa(), 16, true)]);
            ctx.expect_raw_ctrl(
                "empty readable descriptor",
                &descs,
                &resp,
                &[Status::Invalid],
            );
            let resp = ctx.resp_buf();
            let descs = RawDesc::chain(&[(resp.gpa(), 16, true)]);
            ctx.expect_raw_ctrl("no readable descriptor", &descs, &resp, &[Status::Invalid]);
            // A header cut short is not decoded at all: an unknown command in
            // its first bytes is Invalid, not Unsupported (§7).
            let unknown = ctx.stage(&ctrl_block(0xdead, 0, 0, &[]));
            let u = unknown.gpa();
            for (what, pieces) in [
                ("4-byte header of an unknown command", vec![(u, 4, false)]),
                (
                    "15-byte header of an unknown command in two descriptors",
                    vec![(u, 8, false), (u + 8, 7, false)],
                ),
            ] {
                let resp = ctx.resp_buf();
                let mut chain = pieces;
                chain.push((resp.gpa(), 16, true));
                ctx.expect_raw_ctrl(what, &RawDesc::chain(&chain), &resp, &[Status::Invalid]);
            }
            let resp = ctx.resp_buf();
            let descs = RawDesc::chain(&[(u, 16, false), (resp.gpa(), 16, true)]);
            ctx.expect_raw_ctrl(
                "16-byte header of an unknown command",
                &descs,
                &resp,
                &[Status::Unsupported],
            );
            let resp = ctx.resp_buf();
            let descs = RawDesc::chain(&[(query.gpa(), 20, false), (resp.gpa(), 16, true)]);
            ctx.expect_raw_ctrl(
                "FENCE_QUERY with its fence cut",
                &descs,
                &resp,
                &[Status::Invalid],
            );

            // No room for the response: used length 0, nothing written.
            for len in [0u32, 1, 8, 15] {
                let resp = ctx.resp_buf();
                let what = format!("{len}-byte control response area");
                let mut chain = vec![rd(&query)];
                if len > 0 {
                    chain.push((resp.gpa(), len, true));
                }
                let used = ctx.raw_control(&what, &RawDesc::chain(&chain));
                assert_eq!(used.len, 0, "{what}: used length");
                ctx.untouched_resp(&resp, 16, &what);
            }
            // The response is a byte stream too.
            let resp = ctx.resp_buf();
            let descs = RawDesc::chain(&[
                rd(&query),
                (resp.gpa(), 5, true),
                (resp.gpa() + 5, 11, true),
            ]);
            let used = ctx.raw_control("control response in two descriptors", &descs);
            let got = ctx.mem.read_obj::<CtrlResp>(&resp, 0).unwrap();
            check_ctrl_resp(
                "control response in two descriptors",
                used.len,
                &got,
                &[Status::Ok],
            );
            assert_eq!(u64::from(got.value), 1);
            // So is the readable part: a fence split over three descriptors.
            let resp = ctx.resp_buf();
            let g = query.gpa();
            let chain = [
                (g, 10, false),
                (g + 10, 0, false),
                (g + 10, 11, false),
                (g + 21, 11, false),
                wr(&resp),
            ];
            let used = ctx.raw_control(
                "FENCE_QUERY split over descriptors",
                &RawDesc::chain(&chain),
            );
            let got = ctx.mem.read_obj::<CtrlResp>(&resp, 0).unwrap();
            check_ctrl_resp(
                "FENCE_QUERY split over descriptors",
                used.len,
                &got,
                &[Status::Ok],
            );

            let header = ctx.stage(&ctrl_block(QUERY, 1, 0, &[]));
            let fence = ctx.stage(issued.as_slice());
            let resp = ctx.resp_buf();
            let descs = RawDesc::chain(&[rd(&header), (resp.gpa(), 16, true), rd(&fence)]);
            ctx.expect_raw_ctrl(
                "control: readable after writable",
                &descs,
                &resp,
                &[Status::Invalid],
            );
            let resp = ctx.resp_buf();
            let descs = RawDesc::chain(&[
                rd(&header),
                (ram_end + 0x1000, 16, false),
                (resp.gpa(), 16, true),
            ]);
            ctx.expect_raw_ctrl(
                "control: fence outside guest memory",
                &descs,
                &resp,
                &[Status::BadAddress],
            );
            let resp = ctx.resp_buf();
            let descs = RawDesc::chain(&[
                rd(&header),
                (ram_end - 8, 16, false),
                (resp.gpa(), 16, true),
            ]);
            ctx.expect_raw_ctrl(
                "control: fence straddling the end of memory",
                &descs,
                &resp,
                &[Status::BadAddress],
            );
            let descs = RawDesc::chain(&[rd(&query), (ram_end, 16, true)]);
            let used = ctx.raw_control("control response outside guest memory", &descs);
            assert_eq!(
                used.len, 0,
                "control response outside guest memory: used length"
            );

            let n = usize::try_from(max_seg).unwrap() + 6;
            let resp = ctx.resp_buf();
            let mut chain = vec![rd(&query), (resp.gpa(), 16, true)];
            chain.extend((0..n).map(|i| (seg.gpa() + i as u64, 1, true)));
            ctx.expect_raw_ctrl(
                "control chain of max_segments + 8",
                &RawDesc::chain(&chain),
                &resp,
                &[Status::Limit],
            );
            let resp = ctx.resp_buf();
            let mut chain = vec![rd(&header)];
            chain.extend((0..n).map(|i| (fence.gpa() + (i % 16) as u64, 1, false)));
            chain.push((resp.gpa(), 16, true));
            let used = ctx.raw_control(
                "control chain of max_segments + 8, response last",
                &RawDesc::chain(&chain),
            );
            assert_eq!(
                used.len, 0,
                "control chain of max_segments + 8, response last: used length"
            );
            ctx.untouched_resp(
                &resp,
                16,
                "control chain of max_segments + 8, response last",
            );

            let size = ctx.queue_size(0);
            let resp = ctx.resp_buf();
            let descs = [
                linked(rd(&query), RawNext::Following),
                linked((resp.gpa(), 16, true), RawNext::Absolute(size)),
            ];
            ctx.expect_raw_ctrl(
                "control: next out of the table",
                &descs,
                &resp,
                &[Status::Invalid],
            );
            let resp = ctx.resp_buf();
            let descs = [
                linked(rd(&query), RawNext::Following),
                linked((resp.gpa(), 16, true), RawNext::Desc(0)),
            ];
            ctx.expect_raw_ctrl(
                "control: loop back to the head",
                &descs,
                &resp,
                &[Status::Invalid],
            );
        }
        ctx.check_control_alive(0);

        // Unknown commands: Unsupported.
        // 0x001 is CAPABILITIES.
        for cmd in [
            0u32,
            2,
            0xff,
            0x102,
            0x1ff,
            0x202,
            0x300,
            0x8000_0100,
            u32::MAX,
        ] {
            let what = format!("command {cmd:#x}");
            ctx.expect_ctrl(&what, cmd, 0, 0, &[], &[Status::Unsupported]);
            ctx.expect_ctrl(&what, cmd, 1, 7, issued.as_slice(), &[Status::Unsupported]);
        }
        ctx.check_control_alive(0);

        // OBJECT_CREATE (§7.1).
        let one = seg_bytes(&[seg.segment()]);
        ctx.expect_ctrl(
            "OBJECT_CREATE count 0",
            CREATE,
            0,
            0,
            &[],
            &[Status::Invalid],
        );
        ctx.expect_ctrl(
            "OBJECT_CREATE count 0 with a segment",
            CREATE,
            0,
            0,
            &one,
            &[Status::Invalid],
        );
        for arg in [1u64, 0x100, u64::MAX] {
            let what = format!("OBJECT_CREATE arg {arg:#x}");
            ctx.expect_ctrl(&what, CREATE, 1, arg, &one, &[Status::Invalid]);
        }
        let many = seg_bytes(&vec![(seg.gpa(), 1); usize::try_from(max_seg).unwrap() + 1]);
        ctx.expect_ctrl(
            "OBJECT_CREATE max_segments + 1 segments",
            CREATE,
            max_seg + 1,
            0,
            &many,
            &[Status::Limit],
        );
        ctx.expect_ctrl(
            "OBJECT_CREATE count 2^32-1",
            CREATE,
            u32::MAX,
            0,
            &[],
            &[Status::Limit],
        );
        let handle = ctx.expect_ctrl_ok(
            "OBJECT_CREATE max_segments segments",
            CREATE,
            max_seg,
            0,
            &many[..many.len() - 16],
        );
        ctx.dev
            .destroy_object(u32::try_from(handle).unwrap())
            .unwrap();
        ctx.expect_ctrl(
            "OBJECT_CREATE count 2, one segment",
            CREATE,
            2,
            0,
            &one,
            &[Status::Invalid],
        );
        ctx.expect_ctrl(
            "OBJECT_CREATE count 2, 1.5 segments",
            CREATE,
            2,
            0,
            &seg_bytes(&[seg.segment(), seg.segment()])[..24],
            &[Status::Invalid],
        );
        let seg_cases: [SegCase; 9] = [
            ("segment of length 0", vec![(seg.gpa(), 0)], Status::Invalid),
            (
                "second segment of length 0",
                vec![seg.segment(), (seg.gpa(), 0)],
                Status::Invalid,
            ),
            (
                "segment past the end of guest memory",
                vec![(ram_end + 0x1000, 16)],
                Status::BadAddress,
            ),
            (
                "segment right at the end of guest memory",
                vec![(ram_end, 1)],
                Status::BadAddress,
            ),
            (
                "segment straddling the end of guest memory",
                vec![(ram_end - 8, 16)],
                Status::BadAddress,
            ),
            (
                "segment whose addr + len overflows",
                vec![(u64::MAX - 7, 16)],
                Status::BadAddress,
            ),
            (
                "segment ending at 2^64",
                vec![(u64::MAX, 1)],
                Status::BadAddress,
            ),
            (
                "segment of 2^64-1 bytes",
                vec![(1, u64::MAX)],
                Status::BadAddress,
            ),
            (
                "second segment outside guest memory",
                vec![seg.segment(), (ram_end + 0x1000, 16)],
                Status::BadAddress,
            ),
        ];
        for (what, segments, status) in seg_cases {
            let count = len32(segments.len());
            ctx.expect_ctrl(
                &format!("OBJECT_CREATE: {what}"),
                CREATE,
                count,
                0,
                &seg_bytes(&segments),
                &[status],
            );
        }
        // The total length over max_object_size: Limit; exactly it: Ok.
        let max_object = ctx.max_object();
        let per = max_object / u64::from(max_seg);
        if per < ram_end && max_object % u64::from(max_seg) == 0 {
            let exact = seg_bytes(&vec![(0, per); usize::try_from(max_seg).unwrap()]);
            let handle = ctx.expect_ctrl_ok(
                "OBJECT_CREATE of max_object_size bytes",
                CREATE,
                max_seg,
                0,
                &exact,
            );
            ctx.dev
                .destroy_object(u32::try_from(handle).unwrap())
                .unwrap();
            let mut over = vec![(0, per); usize::try_from(max_seg).unwrap()];
            over[0].1 += 1;
            let what = "OBJECT_CREATE of max_object_size + 1 bytes";
            ctx.expect_ctrl(
                what,
                CREATE,
                max_seg,
                0,
                &seg_bytes(&over),
                &[Status::Limit],
            );
        } else {
            eprintln!("max_object_size {max_object} cannot be reached with {max_seg} segments in {ram_end} bytes: skipped");
        }
        ctx.check_control_alive(0);
        ctx.check_alive(0);

        // OBJECT_DESTROY (§7.2).
        let live = ctx.dev.create_object(&[seg.segment()]).unwrap();
        let use_live = Request::new(Op::Crc32c).input(Buffer::object(live, 0, 256));
        ctx.expect_ctrl(
            "OBJECT_DESTROY count 1",
            DESTROY,
            1,
            u64::from(live),
            issued.as_slice(),
            &[Status::Invalid],
        );
        ctx.expect_ctrl(
            "OBJECT_DESTROY count 2^32-1",
            DESTROY,
            u32::MAX,
            u64::from(live),
            &[],
            &[Status::Invalid],
        );
        let done = ctx.expect_ok(0, "object after rejected OBJECT_DESTROYs", &use_live);
        assert_eq!(done.result_u32(), reference::crc32c(0, &[0x11; 256]));
        let unknown: u32 = if live == 0x00c0_ffee {
            0x00c0_ffef
        } else {
            0x00c0_ffee
        };
        for (what, arg) in [
            ("handle 0", 0u64),
            ("handle 2^32 + live handle", (1 << 32) | u64::from(live)),
            ("handle 2^63 + live handle", (1 << 63) | u64::from(live)),
            ("handle 2^64-1", u64::MAX),
            ("unknown handle", u64::from(unknown)),
        ] {
            ctx.expect_ctrl(
                &format!("OBJECT_DESTROY {what}"),
                DESTROY,
                0,
                arg,
                &[],
                &[Status::NoObject],
            );
        }
        ctx.expect_ok(0, "object after OBJECT_DESTROY of other handles", &use_live);
        // Readable bytes after the last entry are ignored.
        ctx.expect_ctrl_ok(
            "OBJECT_DESTROY with trailing bytes",
            DESTROY,
            0,
            u64::from(live),
            &[0xee; 16],
        );
        ctx.expect_ctrl(
            "OBJECT_DESTROY twice",
            DESTROY,
            0,
            u64::from(live),
            &[],
            &[Status::NoObject],
        );
        ctx.expect(0, "destroyed object", &use_live, &[Status::NoObject]);
        ctx.check_control_alive(0);

        // FENCE_QUERY (§7.3).
        let two = fence_bytes(&[issued, issued]);
        ctx.expect_ctrl("FENCE_QUERY count 0", QUERY, 0, 0, &[], &[Status::Invalid]);
        ctx.expect_ctrl(
            "FENCE_QUERY count 0 with a fence",
            QUERY,
            0,
            0,
            issued.as_slice(),
            &[Status::Invalid],
        );
        ctx.expect_ctrl("FENCE_QUERY count 2", QUERY, 2, 0, &two, &[Status::Invalid]);
        ctx.expect_ctrl(
            "FENCE_QUERY count 2^32-1",
            QUERY,
            u32::MAX,
            0,
            &two,
            &[Status::Invalid],
        );
        ctx.expect_ctrl(
            "FENCE_QUERY without its fence",
            QUERY,
            1,
            0,
            &[],
            &[Status::Invalid],
        );
        ctx.expect_ctrl(
            "FENCE_QUERY arg 1",
            QUERY,
            1,
            1,
            issued.as_slice(),
            &[Status::Invalid],
        );
        for i in 0..6 {
            let mut fence = issued;
            fence.reserved[i] = 0x40;
            let what = format!("FENCE_QUERY fence reserved byte {i}");
            ctx.expect_ctrl(&what, QUERY, 1, 0, fence.as_slice(), &[Status::Invalid]);
        }
        let never = [
            ("not yet issued", ctx.peek_fence(0)),
            ("sequence number 2^64-1", Fence::new(0, u64::MAX)),
            ("sequence number 0", Fence::new(0, 0)),
            ("never used queue", ctx.peek_fence(1)),
            ("queue that does not exist", Fence::new(queues, 1)),
            ("queue 65535", Fence::new(u16::MAX, 1)),
        ];
        for (what, fence) in never {
            let what = format!("FENCE_QUERY: fence {what}");
            ctx.expect_ctrl(&what, QUERY, 1, 0, fence.as_slice(), &[Status::NoFence]);
        }
        assert_eq!(
            ctx.expect_ctrl_ok(
                "FENCE_QUERY of an issued fence",
                QUERY,
                1,
                0,
                issued.as_slice()
            ),
            1
        );

        // FENCE_WAIT (§7.4).
        let deps = usize::try_from(max_deps).unwrap();
        ctx.expect_ctrl("FENCE_WAIT count 0", WAIT, 0, 0, &[], &[Status::Invalid]);
        ctx.expect_ctrl(
            "FENCE_WAIT count 0 with a fence",
            WAIT,
            0,
            0,
            issued.as_slice(),
            &[Status::Invalid],
        );
        ctx.expect_ctrl(
            "FENCE_WAIT arg 1",
            WAIT,
            1,
            1,
            issued.as_slice(),
            &[Status::Invalid],
        );
        let over = fence_bytes(&vec![issued; deps + 1]);
        ctx.expect_ctrl(
            "FENCE_WAIT max_deps + 1 fences",
            WAIT,
            max_deps + 1,
            0,
            &over,
            &[Status::Limit],
        );
        ctx.expect_ctrl(
            "FENCE_WAIT count 2^32-1",
            WAIT,
            u32::MAX,
            0,
            &[],
            &[Status::Limit],
        );
        assert_eq!(
            ctx.expect_ctrl_ok("FENCE_WAIT max_deps fences", WAIT, max_deps, 0, &over[16..]),
            0
        );
        ctx.expect_ctrl(
            "FENCE_WAIT count 2, one fence",
            WAIT,
            2,
            0,
            issued.as_slice(),
            &[Status::Invalid],
        );
        for i in 0..6 {
            let mut fence = issued;
            fence.reserved[i] = 1;
            let what = format!("FENCE_WAIT fence reserved byte {i}");
            ctx.expect_ctrl(
                &what,
                WAIT,
                2,
                0,
                &fence_bytes(&[issued, fence]),
                &[Status::Invalid],
            );
        }
        let never = [
            ("not yet issued", ctx.peek_fence(0)),
            ("sequence number 0", Fence::new(0, 0)),
            ("never used queue", ctx.peek_fence(1)),
            ("queue that does not exist", Fence::new(queues, 1)),
        ];
        for (what, fence) in never {
            let what = format!("FENCE_WAIT: fence {what}");
            ctx.expect_ctrl(&what, WAIT, 1, 0, fence.as_slice(), &[Status::NoFence]);
            let what = format!("{what}, after a good one");
            ctx.expect_ctrl(
                &what,
                WAIT,
                2,
                0,
                &fence_bytes(&[issued, fence]),
                &[Status::NoFence],
            );
        }
        ctx.check_alive(0);
        ctx.check_alive(1);
        ctx.check_control_alive(0);
    });
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

        let over = seg_bytes(&[(g, 4096), (g + 4096, 4096), (g, 1)]);
        ctx.expect_ctrl(
            "OBJECT_CREATE of max_object_size + 1 bytes",
            CREATE,
            3,
            0,
            &over,
            &[Status::Limit],
        );
        let over = seg_bytes(&[(g, 8192), (g, 8192)]);
        ctx.expect_ctrl(
            "OBJECT_CREATE of 2 * max_object_size bytes",
            CREATE,
            2,
            0,
            &over,
            &[Status::Limit],
        );
        let handle = ctx.expect_ctrl_ok(
            "OBJECT_CREATE of max_object_size bytes",
            CREATE,
            2,
            0,
            &seg_bytes(&[(g, 4096), (g + 4096, 4096)]),
        );
        ctx.dev
            .destroy_object(u32::try_from(handle).unwrap())
            .unwrap();
        let nine = seg_bytes(&[(g, 16); 9]);
        ctx.expect_ctrl(
            "OBJECT_CREATE of 9 segments",
            CREATE,
            9,
            0,
            &nine,
            &[Status::Limit],
        );
        let handle = ctx.expect_ctrl_ok("OBJECT_CREATE of 8 segments", CREATE, 8, 0, &nine[16..]);
        ctx.dev
            .destroy_object(u32::try_from(handle).unwrap())
            .unwrap();

        // max_objects live objects: NoResources; a destroyed one frees its slot.
        let handles: Vec<u32> = (0..3)
            .map(|_| ctx.dev.create_object(&[(g, 64)]).unwrap())
            .collect();
        let one = seg_bytes(&[(g, 64)]);
        ctx.expect_ctrl(
            "OBJECT_CREATE past max_objects",
            CREATE,
            1,
            0,
            &one,
            &[Status::NoResources],
        );
        ctx.expect_ctrl(
            "OBJECT_CREATE past max_objects, again",
            CREATE,
            1,
            0,
            &one,
            &[Status::NoResources],
        );
        ctx.dev.destroy_object(handles[1]).unwrap();
        let again = ctx.dev.create_object(&[(g, 64)]).unwrap();
        for &h in [handles[0], handles[2], again].iter() {
            let req = Request::new(Op::Crc32c).input(Buffer::object(h, 0, 64));
            let done = ctx.expect_ok(0, "CRC32C of a live object", &req);
            assert_eq!(done.result_u32(), reference::crc32c(0, &[0x22; 64]));
            ctx.dev.destroy_object(h).unwrap();
        }

        // max_deps: FENCE_WAIT and request dependencies.
        let data = ctx.stage(b"123456789");
        let crc = Request::new(Op::Crc32c).input(Buffer::direct(&data));
        let f = ctx.expect_ok(0, "CRC32C", &crc).fence();
        ctx.expect_ctrl(
            "FENCE_WAIT of 3 fences",
            WAIT,
            3,
            0,
            &fence_bytes(&[f, f, f]),
            &[Status::Limit],
        );
        ctx.expect_ctrl_ok("FENCE_WAIT of 2 fences", WAIT, 2, 0, &fence_bytes(&[f, f]));
        ctx.expect(
            0,
            "3 dependencies",
            &crc.clone().deps([f, f, f]),
            &[Status::Limit],
        );
        ctx.expect_ok(0, "2 dependencies", &crc.clone().deps([f, f]));

        // max_segments: chains of requests.
        let fill = ctx.stage(&block(Req::new(Op::Fill), &[], &[BufRef::direct(56)]));
        let resp = ctx.resp_buf();
        let outs: Vec<DmaBuf> = (0..7).map(|_| ctx.space(8)).collect();
        let mut chain = vec![rd(&fill), wr(&resp)];
        chain.extend(outs.iter().map(wr));
        ctx.expect_raw(
            0,
            "request chain of 9 descriptors",
            &chain,
            &resp,
            &[Status::Limit],
        );
        outs.iter()
            .for_each(|o| ctx.untouched(o, "request chain of 9 descriptors"));
        chain.pop();
        let fill = ctx.stage(&block(Req::new(Op::Fill), &[], &[BufRef::direct(48)]));
        chain[0] = rd(&fill);
        let resp = ctx.resp_buf();
        chain[1] = wr(&resp);
        ctx.expect_raw_ok(
            0,
            "request chain of 8 descriptors",
            &RawDesc::chain(&chain),
            &resp,
            112,
        );
        ctx.check_alive(0);
        ctx.check_control_alive(0);
    });
}

// ---- available ring abuse (§6.5, §12.2) -------------------------------------

#[test]
fn available_ring_abuse() {
    within("available_ring_abuse", || {
        let daemon = Daemon::start();
        let mem = guest_ram(RAM_MIB);
        let text = b"123456789";

        // 1. Heads past the queue size on request queue 1 (virtqueue 2). The
        // device consumes them and issues them fences; it may then stop the
        // queue (§6.5). Nothing else may suffer.
        {
            let mut ctx = Ctx::open(&daemon, &mem, DEFAULT_FEATURES, "available_ring_abuse/head");
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
            let data = ctx.stage(text);
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
                    assert_eq!(done.result_u32(), reference::crc32c(0, text));
                }
                Err(DeviceError::Timeout { .. }) => {
                    eprintln!(
                        "the device stopped request queue 1 after bad heads (allowed by §6.5)"
                    );
                }
                Err(e) => panic!("queue 1 after bad heads: {e} ({e:?})"),
            }
            ctx.check_alive(0);
            ctx.check_control_alive(0);
        }

        // 1b. A bad head followed, in the same batch, by a malformed and a
        // well-formed chain. The device may stop the queue at the bad head,
        // but every chain it takes gets a fence, and a chain whose fence has
        // signalled must come back in the used ring (§6.2).
        {
            let mut ctx = Ctx::open(
                &daemon,
                &mem,
                DEFAULT_FEATURES,
                "available_ring_abuse/head-then",
            );
            ctx.check_alive(1);
            let data = ctx.stage(text);
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
            let signalled = |ctx: &Ctx, fence: Fence| {
                let got = ctx.control(
                    "FENCE_QUERY after a bad head",
                    QUERY,
                    1,
                    0,
                    fence.as_slice(),
                );
                got.status() == Ok(Status::Ok) && got.value() == 1
            };
            eprintln!(
                "after a bad head: fence {} signalled: {}; malformed chain returned: {}, well-formed chain returned: {}",
                u64::from(bad.seqno),
                signalled(&ctx, bad),
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
                        !signalled(&ctx, fence),
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
                assert_eq!(c.result_u32(), reference::crc32c(0, text));
            }
        }

        // 2. avail->idx more than the queue size ahead on request queue 0.
        {
            let mut ctx = Ctx::open(&daemon, &mem, DEFAULT_FEATURES, "available_ring_abuse/idx");
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

        // 3. avail->idx moved backwards, on request queue 1 and the control queue.
        {
            let mut ctx = Ctx::open(&daemon, &mem, DEFAULT_FEATURES, "available_ring_abuse/back");
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

        // 4. A new connection on the same socket gets a working, fresh device:
        // every queue works and fence numbering restarts at 1 (§11).
        let mut ctx = Ctx::open(
            &daemon,
            &mem,
            DEFAULT_FEATURES,
            "available_ring_abuse/fresh",
        );
        for q in 0..ctx.queues() {
            ctx.check_alive(q);
        }
        ctx.check_control_alive(0);
        // And a connection that goes away with chains in flight is no problem either.
        let data = ctx.stage(text);
        for q in 0..ctx.queues() {
            let crc = Request::new(Op::Crc32c).input(Buffer::direct(&data));
            for token in 0..32 {
                ctx.dev.submit(q, &crc, token).unwrap();
            }
            ctx.dev.flush(q).unwrap();
        }
        drop(ctx);
        let mut ctx = Ctx::open(
            &daemon,
            &mem,
            DEFAULT_FEATURES,
            "available_ring_abuse/after",
        );
        for q in 0..ctx.queues() {
            ctx.check_alive(q);
        }
        ctx.check_control_alive(0);
    });
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

#[test]
fn flood_of_malformed_requests() {
    const TOTAL: usize = 10_000;
    const BATCH: usize = 64;
    within("flood_of_malformed_requests", || {
        let daemon = Daemon::start();
        let mem = guest_ram(RAM_MIB);
        let mut ctx = Ctx::open(
            &daemon,
            &mem,
            DEFAULT_FEATURES,
            "flood_of_malformed_requests",
        );
        let (q, vq) = (0u16, 1u16);
        ctx.check_alive(q);
        let ram_end = mem.size();
        let text = b"123456789";
        let data = ctx.stage(text);
        let object = ctx.stage(&[0x33; 4096]);
        let handle = ctx.dev.create_object(&[object.segment()]).unwrap();
        let signalled = ctx
            .expect_ok(
                q,
                "CRC32C",
                &Request::new(Op::Crc32c).input(Buffer::direct(&data)),
            )
            .fence();
        let max_deps = usize::try_from(ctx.max_deps()).unwrap();
        let crc = Request::new(Op::Crc32c).input(Buffer::direct(&data));
        let mut reserved_header = Req::new(Op::Crc32c);
        reserved_header.reserved[3] = 1;
        let mut reserved_fence = signalled;
        reserved_fence.reserved[5] = 1;
        let deflate = DeflateParams {
            level: 10,
            ..DeflateParams::default()
        };
        let good_hdr = ctx.stage(&crc_block(&[BufRef::direct(9)]));
        let range_hdr = ctx.stage(&crc_block(&[BufRef::direct(100)]));
        let reserved_hdr = ctx.stage(&crc_block(&[BufRef {
            reserved: Le32::from(7),
            ..BufRef::direct(9)
        }]));

        let mut expected: HashMap<u64, (Junk, Fence)> = HashMap::new();
        let mut raw_resps: HashMap<u64, DmaBuf> = HashMap::new();
        let mut counts = [0usize; JUNK.len()];
        let mut next_token = 0u64;
        let start = Instant::now();
        while usize::try_from(next_token).unwrap() < TOTAL {
            let n = BATCH.min(TOTAL - usize::try_from(next_token).unwrap());
            for _ in 0..n {
                let kind_index = ctx.rng.below(JUNK.len());
                let kind = JUNK[kind_index];
                counts[kind_index] += 1;
                let token = next_token;
                next_token += 1;
                let fence = ctx.next_fence(q);
                expected.insert(token, (kind, fence));
                if kind.is_raw() {
                    let resp = ctx.resp_buf();
                    let chain: Vec<RawDesc> = match kind {
                        Junk::ReadableAfterWritable => {
                            RawDesc::chain(&[rd(&good_hdr), wr(&resp), rd(&data)])
                        }
                        Junk::BadAddress => RawDesc::chain(&[
                            rd(&good_hdr),
                            (ram_end + 0x1000, 9, false),
                            wr(&resp),
                        ]),
                        Junk::ShortHeader => {
                            RawDesc::chain(&[(good_hdr.gpa(), 40, false), wr(&resp)])
                        }
                        Junk::NextOutOfRange => vec![
                            linked(rd(&good_hdr), RawNext::Following),
                            linked(rd(&data), RawNext::Following),
                            linked(wr(&resp), RawNext::Absolute(u16::MAX)),
                        ],
                        Junk::DirectRange => {
                            RawDesc::chain(&[rd(&range_hdr), rd(&data), wr(&resp)])
                        }
                        _ => RawDesc::chain(&[rd(&reserved_hdr), rd(&data), wr(&resp)]),
                    };
                    ctx.dev
                        .raw_queue(vq)
                        .unwrap()
                        .add_raw(&chain, token)
                        .unwrap();
                    raw_resps.insert(token, resp);
                    continue;
                }
                let req = match kind {
                    Junk::UnknownOp => Request::raw_op([0, 10, 0x77, u32::MAX][ctx.rng.below(4)]),
                    Junk::Arity => Request::new(Op::Crc32c),
                    Junk::HeaderReserved => crc.clone().with_header(reserved_header),
                    Junk::ParamReserved => crc.clone().raw_params(params_with(10, 1)),
                    Junk::DeflateLevel => Request::new(Op::DeflateCompress)
                        .params(&deflate)
                        .input(Buffer::direct(&data))
                        .output(Buffer::object(handle, 0, 4096)),
                    Junk::UnknownHandle => {
                        Request::new(Op::Crc32c).input(Buffer::object(handle ^ 0x4000_0000, 0, 9))
                    }
                    Junk::ObjectRange => {
                        Request::new(Op::Crc32c).input(Buffer::object(handle, 4000, 200))
                    }
                    Junk::NoFence => crc.clone().dep(Fence::new(q, u64::MAX)),
                    Junk::TooManyDeps => crc.clone().deps(vec![signalled; max_deps + 1]),
                    Junk::FenceReserved => crc.clone().dep(reserved_fence),
                    _ => crc.clone().with_resp_len(len32(ctx.rng.below(64))),
                };
                ctx.dev.submit(q, &req, token).unwrap();
            }
            ctx.dev.flush(q).unwrap();

            // Collect the whole batch.
            let deadline = Instant::now() + TIMEOUT;
            let mut pending = n;
            while pending > 0 {
                let mut check = |token: u64, used_len: u32, resp: &Resp| {
                    let (kind, fence) = expected
                        .remove(&token)
                        .unwrap_or_else(|| panic!("flood: unexpected token {token}"));
                    let what = format!("flood entry {token} ({kind:?})");
                    match kind.status() {
                        Some(status) => check_failure(&what, used_len, resp, &[status], fence),
                        None => {
                            assert_eq!(used_len, 0, "{what}: used length");
                        }
                    }
                };
                for done in ctx.dev.poll(q).unwrap() {
                    check(done.token, done.used_len, &done.resp);
                    pending -= 1;
                }
                while let Some(used) = ctx.dev.wait_used(vq, Duration::ZERO).unwrap() {
                    let buf = raw_resps.remove(&used.token).unwrap();
                    let resp = ctx.mem.read_obj::<Resp>(&buf, 0).unwrap();
                    check(used.token, used.len, &resp);
                    pending -= 1;
                }
                if pending == 0 {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "flood: {pending} of {n} requests not completed within {TIMEOUT:?} (entries {:?})",
                    expected.values().map(|(k, f)| (*k, u64::from(f.seqno))).collect::<Vec<_>>()
                );
                for done in ctx.dev.wait(q, Duration::from_millis(20)).unwrap() {
                    check(done.token, done.used_len, &done.resp);
                    pending -= 1;
                }
            }
        }
        eprintln!(
            "flood: {TOTAL} malformed requests in {:?}; kinds {:?}",
            start.elapsed(),
            JUNK.iter().zip(counts).collect::<Vec<_>>()
        );
        assert!(expected.is_empty() && raw_resps.is_empty());
        assert_eq!(
            ctx.mem.read_vec(&object, 0, 4096).unwrap(),
            vec![0x33; 4096],
            "the flood modified an object"
        );

        // The daemon still serves this queue, the others and the control queue.
        ctx.check_alive(q);
        ctx.check_alive(1);
        ctx.check_control_alive(0);
        ctx.dev.destroy_object(handle).unwrap();
        drop(ctx);
        let mut ctx = Ctx::open(
            &daemon,
            &mem,
            DEFAULT_FEATURES,
            "flood_of_malformed_requests/after",
        );
        ctx.check_alive(0);
        ctx.check_control_alive(0);
    });
}
