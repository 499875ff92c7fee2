// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Functional tests of the daemon over the real vhost-user socket: the daemon
//! runs in this process ([`Daemon::start`]) behind a unix socket, and the
//! driver plays the VMM and the guest, with memfd-backed guest RAM.
//!
//! - every operation on random inputs of many sizes, with direct, scattered
//!   and object buffers, checked against `accel_tests::reference`: status,
//!   `bytes_written`, `result`, every byte of the output (and of the memory
//!   around it) and the used length;
//! - objects: life cycle, destroy while busy, limits, bad addresses, objects
//!   over several memory regions;
//! - fences: numbering, cross-queue dependencies, FENCE_QUERY, FENCE_WAIT,
//!   invalid dependencies;
//! - feature subsets, out-of-order completion, disconnection and
//!   reconnection, device reset, memory table updates, and the configuration
//!   space.
//!
//! Each test starts its own daemon, so tests run in parallel. Random inputs
//! are seeded; a failing test prints its seed (replay with
//! `ACCEL_TEST_SEED=<seed>`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use accel_driver::memory::PAGE_SIZE;
use accel_driver::{
    Buffer, Completion, Device, DmaBuf, DmaMemory, OpenOptions, Request, Transport,
    DEFAULT_FEATURES,
};
use accel_tests::data::{self, TestRng};
use accel_tests::harness::{guest_ram, AccelDevice, Daemon, EXTERNAL_SOCKET_ENV};
use accel_tests::reference::{self, GzipHeader};
use vhost::vhost_user::VhostUserFrontend;
use vhost_user_accel::{Limits, SocketSource, TenantConfig};
use virtio_accel_spec::op::{OpParams, PARAMS_SIZE};
use virtio_accel_spec::request::RESULT_SIZE;
use virtio_accel_spec::{
    AesGcmParams, ControlCommand, Crc32cParams, CtrlReq, DeflateFormat, DeflateParams, Fence,
    FillParams, Op, Status, VirtioAccelConfig, VIRTIO_ACCEL_F_FENCES, VIRTIO_ACCEL_F_OBJECTS,
};
use vm_memory::endian::Le32;
use vm_memory::ByteValued;

/// Initial value of every output byte and of the memory around outputs.
const OUT_FILL: u8 = 0xA5;
/// Value of the memory around inputs.
const IN_FILL: u8 = 0x3C;
/// Guest RAM of most tests, in MiB.
const RAM_MIB: usize = 64;
/// Page size, as a `usize`.
const PAGE: usize = 4096;
const _: () = assert!(PAGE as u64 == PAGE_SIZE);
/// Deflate levels tried.
const LEVELS: [u8; 4] = [0, 1, 6, 9];
/// Inputs above this size are (de)compressed with one layout per case
/// (rotating), to keep the file fast.
const BIG: usize = 70_000;
/// Size of a response, the used length of a request without direct output.
const RESP: u64 = 64;
/// Bit of `VIRTIO_F_IN_ORDER`, which the device must not offer.
const VIRTIO_F_IN_ORDER: u32 = 35;

// ---------------------------------------------------------------------------
// Set-up.

/// A daemon, the guest memory and the device opened on it.
struct Rig {
    daemon: Daemon,
    mem: DmaMemory,
    dev: AccelDevice,
}

impl Rig {
    /// A fresh daemon with the default configuration and [`RAM_MIB`] of RAM.
    fn new() -> Rig {
        Rig::with(Daemon::start(), guest_ram(RAM_MIB))
    }

    /// Connects to `daemon` with `mem` as guest RAM.
    fn with(daemon: Daemon, mem: DmaMemory) -> Rig {
        let dev = daemon.connect(&mem);
        Rig { daemon, mem, dev }
    }
}

/// A daemon with a configuration other than the default, or `None` (the test
/// is skipped) when the tests run against an external daemon, whose
/// configuration is the default.
fn custom_daemon(test: &str, configure: impl FnOnce(&mut TenantConfig)) -> Option<Daemon> {
    if std::env::var_os(EXTERNAL_SOCKET_ENV).is_some() {
        eprintln!("{test}: skipped, it needs its own daemon configuration");
        return None;
    }
    Some(Daemon::start_with(configure))
}

/// `v` as a `usize` (the tests run on 64-bit hosts).
fn us(v: u64) -> usize {
    usize::try_from(v).unwrap()
}

/// A `result` field: `bytes`, then zeros.
fn result_of(bytes: &[u8]) -> [u8; RESULT_SIZE] {
    let mut out = [0; RESULT_SIZE];
    out[..bytes.len()].copy_from_slice(bytes);
    out
}

/// Panics with the first difference if `got != want` (without printing
/// megabytes of data).
fn assert_same(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let at = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let show = |v: &[u8]| {
        let end = (at + 8).min(v.len());
        format!("{:02x?}", &v[at.min(end)..end])
    };
    panic!(
        "{what}: {} bytes, {} expected; first difference at byte {at}: got {} want {}",
        got.len(),
        want.len(),
        show(got),
        show(want)
    );
}

/// A byte other than [`OUT_FILL`].
fn pattern_byte(rng: &mut TestRng) -> u8 {
    loop {
        let [b] = rng.array::<1>();
        if b != OUT_FILL {
            return b;
        }
    }
}

/// `total` split into `parts` non-empty pieces (fewer if `total` is smaller).
fn split(rng: &mut TestRng, total: usize, parts: usize) -> Vec<usize> {
    let parts = parts.min(total);
    if parts == 0 {
        return Vec::new();
    }
    let mut cuts = BTreeSet::new();
    while cuts.len() < parts - 1 {
        cuts.insert(1 + rng.below(total - 1));
    }
    let mut sizes = Vec::with_capacity(parts);
    let mut prev = 0;
    for cut in cuts.into_iter().chain([total]) {
        sizes.push(cut - prev);
        prev = cut;
    }
    sizes
}

/// The guest-physical pieces of bytes `offset..offset + len` of an object
/// made of `segments`.
fn object_pieces(segments: &[(u64, u64)], offset: u64, len: usize) -> Vec<(u64, usize)> {
    let end = offset + len as u64;
    let mut pieces = Vec::new();
    let mut start = 0u64;
    for &(gpa, seg_len) in segments {
        let from = offset.max(start);
        let to = end.min(start + seg_len);
        if from < to {
            pieces.push((gpa + (from - start), us(to - from)));
        }
        start += seg_len;
    }
    pieces
}

// ---------------------------------------------------------------------------
// Buffers in the three layouts.

/// Where the bytes of a request buffer live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// One direct descriptor.
    Direct,
    /// Several direct descriptors at odd addresses, with gaps between them,
    /// the first crossing a page boundary.
    Scattered,
    /// Bytes at a non-zero offset of an object of several segments, each at
    /// an odd address crossing a page boundary.
    Object,
}

const LAYOUTS: [Layout; 3] = [Layout::Direct, Layout::Scattered, Layout::Object];

/// Every layout for small sizes, one (rotating with `salt`) for big ones.
fn layouts_for(size: usize, salt: usize) -> Vec<Layout> {
    if size <= BIG {
        LAYOUTS.to_vec()
    } else {
        vec![LAYOUTS[salt % LAYOUTS.len()]]
    }
}

/// A buffer placed in guest memory, with the memory around it.
struct Placed {
    buffer: Buffer,
    /// The buffer's bytes, in order: `(gpa, len)`.
    pieces: Vec<(u64, usize)>,
    /// Allocations holding the pieces (and the filler around them).
    backing: Vec<DmaBuf>,
    /// The object, for [`Layout::Object`].
    handle: Option<u32>,
    /// Value of every backing byte outside the pieces.
    filler: u8,
}

/// Places a buffer of `len` bytes in `layout`, every byte around it (and in
/// it) set to `filler`.
fn place(rig: &Rig, rng: &mut TestRng, layout: Layout, len: usize, filler: u8) -> Placed {
    let (mem, dev) = (&rig.mem, &rig.dev);
    // An odd offset just below a page boundary.
    let odd_start = |rng: &mut TestRng| PAGE - 1 - 2 * rng.below(8);
    match layout {
        Layout::Direct => {
            let buf = mem.alloc(len + 64).unwrap();
            mem.fill(&buf, filler).unwrap();
            Placed {
                buffer: Buffer::Direct {
                    gpa: buf.gpa(),
                    len: len as u64,
                },
                pieces: vec![(buf.gpa(), len)],
                backing: vec![buf],
                handle: None,
                filler,
            }
        }
        Layout::Scattered => {
            let parts = 2 + rng.below(5);
            let sizes = split(rng, len, parts);
            let buf = mem.alloc_pages(len + 16 * parts + 2 * PAGE).unwrap();
            mem.fill(&buf, filler).unwrap();
            let mut pos = odd_start(rng);
            let mut pieces = Vec::with_capacity(sizes.len());
            for size in sizes {
                pieces.push((buf.gpa() + pos as u64, size));
                pos += size + 1 + 2 * rng.below(8);
            }
            let descriptors = pieces
                .iter()
                .map(|&(gpa, n)| (gpa, u32::try_from(n).unwrap()))
                .collect();
            Placed {
                buffer: Buffer::Scattered(descriptors),
                pieces,
                backing: vec![buf],
                handle: None,
                filler,
            }
        }
        Layout::Object => {
            let pad = 1 + rng.below(200);
            let total = pad + len + rng.below(100);
            let parts = 1 + rng.below(4);
            let mut backing = Vec::new();
            let mut segments = Vec::new();
            for size in split(rng, total, parts) {
                let buf = mem.alloc_pages(size + 2 * PAGE).unwrap();
                mem.fill(&buf, filler).unwrap();
                segments.push((buf.gpa() + odd_start(rng) as u64, size as u64));
                backing.push(buf);
            }
            let handle = dev.create_object(&segments).unwrap();
            Placed {
                buffer: Buffer::Object {
                    handle,
                    offset: pad as u64,
                    len: len as u64,
                },
                pieces: object_pieces(&segments, pad as u64, len),
                backing,
                handle: Some(handle),
                filler,
            }
        }
    }
}

impl Placed {
    fn len(&self) -> usize {
        self.pieces.iter().map(|p| p.1).sum()
    }

    fn is_object(&self) -> bool {
        self.handle.is_some()
    }

    /// Writes the buffer's bytes.
    fn write(&self, mem: &DmaMemory, data: &[u8]) {
        assert_eq!(data.len(), self.len());
        let mut at = 0;
        for &(gpa, n) in &self.pieces {
            mem.write_at(gpa, &data[at..at + n]).unwrap();
            at += n;
        }
    }

    /// Reads the buffer's bytes.
    fn read(&self, mem: &DmaMemory) -> Vec<u8> {
        let mut out = vec![0; self.len()];
        let mut at = 0;
        for &(gpa, n) in &self.pieces {
            mem.read_at(gpa, &mut out[at..at + n]).unwrap();
            at += n;
        }
        out
    }

    /// Checks every backing byte: the buffer starts with `content` (if given;
    /// otherwise the buffer's bytes are not checked), and every other byte,
    /// in the buffer after `content` or around it, still holds the filler.
    fn check(&self, mem: &DmaMemory, content: Option<&[u8]>, what: &str) {
        let got: Vec<Vec<u8>> = self
            .backing
            .iter()
            .map(|b| mem.read_vec(b, 0, b.len()).unwrap())
            .collect();
        let mut want: Vec<Vec<u8>> = self
            .backing
            .iter()
            .map(|b| vec![self.filler; b.len()])
            .collect();
        if let Some(c) = content {
            assert!(c.len() <= self.len(), "{what}: content longer than buffer");
        }
        let mut at = 0;
        for &(gpa, n) in &self.pieces {
            let (index, buf) = self
                .backing
                .iter()
                .enumerate()
                .find(|(_, b)| gpa >= b.gpa() && gpa + n as u64 <= b.gpa() + b.len() as u64)
                .unwrap();
            let off = us(gpa - buf.gpa());
            match content {
                Some(c) => {
                    let take = n.min(c.len().saturating_sub(at));
                    if take > 0 {
                        want[index][off..off + take].copy_from_slice(&c[at..at + take]);
                    }
                }
                None => {
                    let src = got[index][off..off + n].to_vec();
                    want[index][off..off + n].copy_from_slice(&src);
                }
            }
            at += n;
        }
        for (index, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_same(g, w, &format!("{what} (memory block {index})"));
        }
    }

    fn release(self, dev: &AccelDevice) {
        if let Some(handle) = self.handle {
            dev.destroy_object(handle).unwrap();
        }
    }
}

// ---------------------------------------------------------------------------
// Cases: one request and what the device must answer.

/// What the output buffer must hold after the request.
#[derive(Debug, Clone)]
enum OutCheck {
    /// Exactly these bytes written (`bytes_written` is their length), the
    /// rest untouched.
    Bytes(Vec<u8>),
    /// Nothing written.
    Untouched,
    /// Unspecified contents (but nothing written outside the buffer).
    Unspecified,
    /// A stream of the format that decodes to these bytes, the rest untouched.
    Stream(DeflateFormat, Vec<u8>),
}

#[derive(Debug, Clone)]
struct Case {
    label: String,
    op: Op,
    params: [u8; PARAMS_SIZE],
    inputs: Vec<Vec<u8>>,
    out_len: Option<usize>,
    status: Status,
    result: [u8; RESULT_SIZE],
    output: OutCheck,
}

impl Case {
    fn new(label: impl Into<String>, op: Op) -> Case {
        Case {
            label: label.into(),
            op,
            params: [0; PARAMS_SIZE],
            inputs: Vec::new(),
            out_len: None,
            status: Status::Ok,
            result: [0; RESULT_SIZE],
            output: OutCheck::Untouched,
        }
    }

    fn params(mut self, params: &impl OpParams) -> Case {
        self.params = params.to_params();
        self
    }

    fn input(mut self, data: Vec<u8>) -> Case {
        self.inputs.push(data);
        self
    }

    fn output(mut self, len: usize, check: OutCheck) -> Case {
        self.out_len = Some(len);
        self.output = check;
        self
    }

    fn fails(mut self, status: Status) -> Case {
        self.status = status;
        self
    }

    fn result(mut self, bytes: &[u8]) -> Case {
        self.result = result_of(bytes);
        self
    }
}

/// Runs `case` on request queue `queue`, buffer `i` in layout
/// `layouts[i % layouts.len()]`, and checks everything the device produced.
fn run_case(rig: &Rig, rng: &mut TestRng, case: &Case, layouts: &[Layout], queue: u16) {
    let label = format!("{} on queue {queue}, layouts {layouts:?}", case.label);
    let layout_of = |i: usize| layouts[i % layouts.len()];
    let inputs: Vec<Placed> = case
        .inputs
        .iter()
        .enumerate()
        .map(|(i, data)| {
            let placed = place(rig, rng, layout_of(i), data.len(), IN_FILL);
            placed.write(&rig.mem, data);
            placed
        })
        .collect();
    let output = case
        .out_len
        .map(|len| place(rig, rng, layout_of(case.inputs.len()), len, OUT_FILL));
    let mut request = Request::new(case.op).raw_params(case.params);
    for placed in &inputs {
        request = request.input(placed.buffer.clone());
    }
    if let Some(placed) = &output {
        request = request.output(placed.buffer.clone());
    }
    let done = rig
        .dev
        .run(queue, &request)
        .unwrap_or_else(|e| panic!("{label}: {e:?}"));

    assert!(
        done.used_len >= 64,
        "{label}: used length {}",
        done.used_len
    );
    assert_eq!(done.status(), Ok(case.status), "{label}: status");
    assert_eq!(u32::from(done.resp.reserved), 0, "{label}: reserved");
    assert_eq!(u16::from(done.fence().queue), queue, "{label}: fence queue");
    assert_eq!(done.fence().reserved, [0; 6], "{label}: fence reserved");
    assert_ne!(u64::from(done.fence().seqno), 0, "{label}: fence seqno");
    assert_eq!(done.result(), &case.result, "{label}: result");

    let written = done.bytes_written();
    let expected_written = match &case.output {
        _ if case.status != Status::Ok => Some(0),
        OutCheck::Bytes(bytes) => Some(bytes.len() as u64),
        OutCheck::Stream(..) => None,
        OutCheck::Untouched | OutCheck::Unspecified => Some(0),
    };
    match expected_written {
        Some(n) => assert_eq!(written, n, "{label}: bytes_written"),
        None => assert!(
            written <= case.out_len.unwrap_or(0) as u64,
            "{label}: bytes_written {written} beyond the output"
        ),
    }
    let direct_output = output.as_ref().is_some_and(|p| !p.is_object());
    let used = if case.status == Status::Ok && direct_output {
        RESP + written
    } else {
        RESP
    };
    assert_eq!(u64::from(done.used_len), used, "{label}: used length");

    for (i, (placed, data)) in inputs.iter().zip(&case.inputs).enumerate() {
        placed.check(
            &rig.mem,
            Some(data),
            &format!("{label}: input {i} modified"),
        );
    }
    if let Some(placed) = &output {
        let what = format!("{label}: output");
        match &case.output {
            OutCheck::Bytes(bytes) => placed.check(&rig.mem, Some(bytes), &what),
            OutCheck::Untouched => placed.check(&rig.mem, Some(&[][..]), &what),
            OutCheck::Unspecified => placed.check(&rig.mem, None, &what),
            OutCheck::Stream(format, data) => {
                let stream = placed.read(&rig.mem)[..us(written)].to_vec();
                match reference::decompress(*format, &stream) {
                    Ok(decoded) => assert_same(&decoded, data, &format!("{what} decoded")),
                    Err(e) => panic!("{what}: {written}-byte stream does not decode: {e}"),
                }
                placed.check(&rig.mem, Some(&stream), &what);
            }
        }
    }
    for placed in inputs.into_iter().chain(output) {
        placed.release(&rig.dev);
    }
}

/// Runs `case` with every layout of `layouts`, alternating request queues.
fn run_layouts(rig: &Rig, rng: &mut TestRng, case: &Case, layouts: &[Layout], salt: usize) {
    for (i, &layout) in layouts.iter().enumerate() {
        run_case(rig, rng, case, &[layout], u16::from((salt + i) % 2 == 1));
    }
}

fn fill_params(pattern: u8) -> FillParams {
    FillParams {
        pattern,
        ..FillParams::default()
    }
}

fn crc_params(seed: u32) -> Crc32cParams {
    Crc32cParams {
        seed: Le32::from(seed),
        ..Crc32cParams::default()
    }
}

fn gcm_params(key: [u8; 32], iv: [u8; 12], tag: [u8; 16]) -> AesGcmParams {
    AesGcmParams {
        key,
        iv,
        tag,
        ..AesGcmParams::default()
    }
}

fn deflate_params(format: DeflateFormat, level: u8) -> DeflateParams {
    DeflateParams {
        format: format.into(),
        level,
        ..DeflateParams::default()
    }
}

/// Room for any deflate stream of `n` bytes at any level.
fn deflate_bound(n: usize) -> usize {
    n + n / 8 + 1024
}

// ---------------------------------------------------------------------------
// 1. Every operation, every size, every layout.

#[test]
fn copy_all_sizes_and_layouts() {
    let rig = Rig::new();
    let mut rng = TestRng::new("copy_all_sizes_and_layouts");
    let sizes = data::sizes(&mut rng);
    for (salt, &n) in sizes.iter().enumerate() {
        let src = rng.data(n);
        let extra = rng.below(3);
        let case = Case::new(format!("copy {n} B into {} B", n + extra), Op::Copy)
            .input(src.clone())
            .output(n + extra, OutCheck::Bytes(src.clone()));
        run_layouts(&rig, &mut rng, &case, &LAYOUTS, salt);
        if n > 0 {
            let case = Case::new(format!("copy {n} B into {} B", n - 1), Op::Copy)
                .input(src)
                .output(n - 1, OutCheck::Untouched)
                .fails(Status::NoSpace);
            run_layouts(&rig, &mut rng, &case, &LAYOUTS, salt);
        }
    }
    // Chains of exactly max_segments descriptors (header, response and one
    // descriptor per byte run), and one more: Limit, nothing written.
    let max = us(u64::from(u32::from(rig.dev.config().max_segments)));
    let src = rng.data(4 * max);
    let src_buf = rig.mem.alloc(src.len()).unwrap();
    rig.mem.write(&src_buf, 0, &src).unwrap();
    let out_buf = rig.mem.alloc(src.len()).unwrap();
    for descriptors in [max, max + 1] {
        rig.mem.fill(&out_buf, OUT_FILL).unwrap();
        let runs = descriptors - 2;
        let (ins, outs) = (runs / 2, runs - runs / 2);
        // `ins` runs of 3 bytes, then `outs` runs of 3 bytes.
        let run = |buf: &DmaBuf, count: usize| {
            Buffer::Scattered((0..count).map(|i| (buf.gpa() + 4 * i as u64, 3)).collect())
        };
        let copy = Request::new(Op::Copy)
            .input(run(&src_buf, ins))
            .output(run(&out_buf, outs));
        let done = rig.dev.run(0, &copy).unwrap();
        let got = rig.mem.read_vec(&out_buf, 0, src.len()).unwrap();
        if descriptors == max {
            let done = done.check().unwrap();
            assert_eq!(done.bytes_written(), 3 * ins as u64);
            let gathered: Vec<u8> = (0..ins)
                .flat_map(|i| src[4 * i..4 * i + 3].to_vec())
                .collect();
            let mut want = vec![OUT_FILL; src.len()];
            for (i, chunk) in gathered.chunks(3).enumerate() {
                want[4 * i..4 * i + chunk.len()].copy_from_slice(chunk);
            }
            assert_same(&got, &want, &format!("copy over {descriptors} descriptors"));
        } else {
            assert_rejected(&done, Status::Limit, &format!("{descriptors} descriptors"));
            assert_same(
                &got,
                &vec![OUT_FILL; src.len()],
                "output of a rejected chain",
            );
        }
    }

    // Mixed layouts: each direction in another layout.
    for n in [4097, 65536 + 7] {
        let src = rng.data(n);
        for (a, b) in [
            (Layout::Direct, Layout::Object),
            (Layout::Object, Layout::Scattered),
            (Layout::Scattered, Layout::Direct),
            (Layout::Object, Layout::Object),
        ] {
            let case = Case::new(format!("copy {n} B (mixed)"), Op::Copy)
                .input(src.clone())
                .output(n, OutCheck::Bytes(src.clone()));
            run_case(&rig, &mut rng, &case, &[a, b], 0);
        }
    }
}

#[test]
fn fill_all_sizes_and_layouts() {
    let rig = Rig::new();
    let mut rng = TestRng::new("fill_all_sizes_and_layouts");
    let sizes = data::sizes(&mut rng);
    for (salt, &n) in sizes.iter().enumerate() {
        let pattern = pattern_byte(&mut rng);
        let case = Case::new(format!("fill {n} B with {pattern:#04x}"), Op::Fill)
            .params(&fill_params(pattern))
            .output(n, OutCheck::Bytes(vec![pattern; n]));
        run_layouts(&rig, &mut rng, &case, &LAYOUTS, salt);
    }
}

#[test]
fn compare_all_sizes_and_layouts() {
    let rig = Rig::new();
    let mut rng = TestRng::new("compare_all_sizes_and_layouts");
    let sizes = data::sizes(&mut rng);
    for (salt, &n) in sizes.iter().enumerate() {
        let a = rng.data(n);
        let mut variants = vec![("equal", a.clone())];
        if n > 0 {
            let mut b = a.clone();
            let at = rng.below(n);
            b[at] ^= pattern_byte(&mut rng) | 1;
            variants.push(("one byte differs", b));
            let mut b = a.clone();
            b[n - 1] ^= 0x80;
            variants.push(("last byte differs", b));
            variants.push(("proper prefix", a[..rng.below(n)].to_vec()));
        }
        let mut longer = a.clone();
        let more = 1 + rng.below(9);
        longer.extend_from_slice(&rng.bytes(more));
        variants.push(("longer", longer));
        for (name, b) in variants {
            for (x, y) in [(&a, &b), (&b, &a)] {
                let expected = reference::compare(x, y);
                let case = Case::new(
                    format!("compare {} B with {} B ({name})", x.len(), y.len()),
                    Op::Compare,
                )
                .input(x.clone())
                .input(y.clone())
                .result(&expected.to_le_bytes());
                run_layouts(&rig, &mut rng, &case, &LAYOUTS, salt);
            }
        }
    }
}

#[test]
fn crc32c_all_sizes_and_layouts() {
    let rig = Rig::new();
    let mut rng = TestRng::new("crc32c_all_sizes_and_layouts");
    let sizes = data::sizes(&mut rng);
    for (salt, &n) in sizes.iter().enumerate() {
        let input = rng.data(n);
        let nonzero = nonzero_u32(&mut rng);
        for seed in [0, nonzero] {
            let crc = reference::crc32c(seed, &input);
            let case = Case::new(format!("crc32c of {n} B, seed {seed:#x}"), Op::Crc32c)
                .params(&crc_params(seed))
                .input(input.clone())
                .result(&crc.to_le_bytes());
            run_layouts(&rig, &mut rng, &case, &LAYOUTS, salt);
        }
    }
    // Known answer, and a CRC continued in pieces.
    let case = Case::new("crc32c of 123456789", Op::Crc32c)
        .input(b"123456789".to_vec())
        .result(&0xE306_9283u32.to_le_bytes());
    run_layouts(&rig, &mut rng, &case, &LAYOUTS, 0);
    let case = Case::new("crc32c of 56789 after 1234", Op::Crc32c)
        .params(&crc_params(reference::crc32c(0, b"1234")))
        .input(b"56789".to_vec())
        .result(&0xE306_9283u32.to_le_bytes());
    run_layouts(&rig, &mut rng, &case, &LAYOUTS, 0);
}

/// A random `u32` other than zero.
fn nonzero_u32(rng: &mut TestRng) -> u32 {
    loop {
        let v = u32::from_le_bytes(rng.array::<4>());
        if v != 0 {
            return v;
        }
    }
}

#[test]
fn sha256_all_sizes_and_layouts() {
    let rig = Rig::new();
    let mut rng = TestRng::new("sha256_all_sizes_and_layouts");
    let sizes = data::sizes(&mut rng);
    for (salt, &n) in sizes.iter().enumerate() {
        let input = rng.data(n);
        let case = Case::new(format!("sha256 of {n} B"), Op::Sha256)
            .input(input.clone())
            .result(&reference::sha256(&input));
        run_layouts(&rig, &mut rng, &case, &LAYOUTS, salt);
    }
    let case = Case::new("sha256 of abc", Op::Sha256)
        .input(b"abc".to_vec())
        .result(&reference::sha256(b"abc"));
    run_layouts(&rig, &mut rng, &case, &LAYOUTS, 0);
}

#[test]
fn aes_gcm_all_sizes_and_layouts() {
    let rig = Rig::new();
    let mut rng = TestRng::new("aes_gcm_all_sizes_and_layouts");
    let sizes = data::sizes(&mut rng);
    for (salt, &n) in sizes.iter().enumerate() {
        let key = rng.array::<32>();
        let iv = rng.array::<12>();
        let aad_len = [0, 1, 16, 17, 13 + rng.below(300)][rng.below(5)];
        let aad = rng.bytes(aad_len);
        let plain = rng.data(n);
        let (cipher, tag) = reference::aes256_gcm_seal(&key, &iv, &aad, &plain);
        let extra = rng.below(3);
        let what = format!("{n} B, aad {aad_len} B");

        let seal = Case::new(format!("seal {what}"), Op::AesGcmSeal)
            .params(&gcm_params(key, iv, [0; 16]))
            .input(aad.clone())
            .input(plain.clone())
            .output(n + extra, OutCheck::Bytes(cipher.clone()))
            .result(&tag);
        run_layouts(&rig, &mut rng, &seal, &LAYOUTS, salt);

        let open = Case::new(format!("open {what}"), Op::AesGcmOpen)
            .params(&gcm_params(key, iv, tag))
            .input(aad.clone())
            .input(cipher.clone())
            .output(n + extra, OutCheck::Bytes(plain.clone()));
        run_layouts(&rig, &mut rng, &open, &LAYOUTS, salt);

        // A flipped tag bit: AuthFailed, the output untouched.
        let mut bad_tag = tag;
        bad_tag[rng.below(16)] ^= 1 << rng.below(8);
        let case = Case::new(format!("open {what}, flipped tag"), Op::AesGcmOpen)
            .params(&gcm_params(key, iv, bad_tag))
            .input(aad.clone())
            .input(cipher.clone())
            .output(n, OutCheck::Untouched)
            .fails(Status::AuthFailed);
        run_layouts(&rig, &mut rng, &case, &LAYOUTS, salt);

        if n > 0 {
            let mut bad = cipher.clone();
            bad[rng.below(n)] ^= 1 << rng.below(8);
            let case = Case::new(format!("open {what}, flipped ciphertext"), Op::AesGcmOpen)
                .params(&gcm_params(key, iv, tag))
                .input(aad.clone())
                .input(bad)
                .output(n, OutCheck::Untouched)
                .fails(Status::AuthFailed);
            run_layouts(&rig, &mut rng, &case, &LAYOUTS, salt);

            let case = Case::new(format!("seal {what} into {} B", n - 1), Op::AesGcmSeal)
                .params(&gcm_params(key, iv, [0; 16]))
                .input(aad.clone())
                .input(plain.clone())
                .output(n - 1, OutCheck::Untouched)
                .fails(Status::NoSpace);
            run_layouts(&rig, &mut rng, &case, &LAYOUTS, salt);

            let case = Case::new(format!("open {what} into {} B", n - 1), Op::AesGcmOpen)
                .params(&gcm_params(key, iv, tag))
                .input(aad.clone())
                .input(cipher.clone())
                .output(n - 1, OutCheck::Untouched)
                .fails(Status::NoSpace);
            run_layouts(&rig, &mut rng, &case, &LAYOUTS, salt);
        }
        if aad_len > 0 {
            let mut bad = aad.clone();
            bad[rng.below(aad_len)] ^= 0x10;
            let case = Case::new(format!("open {what}, flipped aad"), Op::AesGcmOpen)
                .params(&gcm_params(key, iv, tag))
                .input(bad)
                .input(cipher.clone())
                .output(n, OutCheck::Untouched)
                .fails(Status::AuthFailed);
            run_layouts(&rig, &mut rng, &case, &LAYOUTS, salt);
        }
    }
    // The example of §8.6.
    let (key, iv) = ([0; 32], [0; 12]);
    let cipher = hex("cea7403d4d606b6e074ec5d3baf39d18");
    let tag = hex("d0d1c8a799996bf0265b98b5d48ab919");
    let case = Case::new("seal, spec example", Op::AesGcmSeal)
        .params(&gcm_params(key, iv, [0; 16]))
        .input(Vec::new())
        .input(vec![0; 16])
        .output(16, OutCheck::Bytes(cipher))
        .result(&tag);
    run_layouts(&rig, &mut rng, &case, &LAYOUTS, 0);
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn deflate_compress_all_formats_levels_sizes_and_layouts() {
    let rig = Rig::new();
    let mut rng = TestRng::new("deflate_compress_all_formats_levels_sizes_and_layouts");
    let mut salt = 0;
    for &n in data::FIXED_SIZES {
        for format in DeflateFormat::ALL.iter().copied() {
            for level in LEVELS {
                salt += 1;
                let input = rng.data(n);
                let case = Case::new(
                    format!("compress {n} B, {format:?} level {level}"),
                    Op::DeflateCompress,
                )
                .params(&deflate_params(format, level))
                .input(input.clone())
                .output(deflate_bound(n), OutCheck::Stream(format, input));
                run_layouts(&rig, &mut rng, &case, &layouts_for(n, salt), salt);
            }
        }
    }
}

#[test]
fn deflate_compress_no_space() {
    let rig = Rig::new();
    let mut rng = TestRng::new("deflate_compress_no_space");
    let mut salt = 0;
    for &n in data::FIXED_SIZES {
        for format in DeflateFormat::ALL.iter().copied() {
            salt += 1;
            let level = LEVELS[salt % LEVELS.len()];
            // Random bytes do not compress: a stream of them needs more
            // than n/2 bytes; and no stream fits in one byte.
            let out = if n >= 64 { n / 2 } else { 1 };
            let case = Case::new(
                format!("compress {n} random B into {out} B, {format:?} level {level}"),
                Op::DeflateCompress,
            )
            .params(&deflate_params(format, level))
            .input(rng.bytes(n))
            .output(out, OutCheck::Unspecified)
            .fails(Status::NoSpace);
            run_layouts(&rig, &mut rng, &case, &layouts_for(n, salt), salt);
        }
    }
}

#[test]
fn deflate_compress_exact_fit() {
    // The stream fits an output of exactly its size (and the software
    // engine is deterministic, so it makes the same stream again).
    let rig = Rig::new();
    let mut rng = TestRng::new("deflate_compress_exact_fit");
    for (salt, &n) in [0, 1, 4096, 65536 + 7, 200_000].iter().enumerate() {
        for format in DeflateFormat::ALL.iter().copied() {
            let level = LEVELS[(salt + usize::from(u8::from(format))) % LEVELS.len()];
            let input = rng.data(n);
            let src = place(&rig, &mut rng, Layout::Direct, n, IN_FILL);
            src.write(&rig.mem, &input);
            let out = rig.mem.alloc(deflate_bound(n)).unwrap();
            let request = Request::new(Op::DeflateCompress)
                .params(&deflate_params(format, level))
                .input(src.buffer.clone())
                .output(Buffer::direct(&out));
            let done = rig.dev.run(0, &request).unwrap().check().unwrap();
            let size = us(done.bytes_written());
            let stream = rig.mem.read_vec(&out, 0, size).unwrap();
            assert_eq!(
                reference::decompress(format, &stream).unwrap(),
                input,
                "{n} B {format:?} level {level}"
            );
            let case = Case::new(
                format!("compress {n} B into exactly {size} B, {format:?} level {level}"),
                Op::DeflateCompress,
            )
            .params(&deflate_params(format, level))
            .input(input.clone())
            .output(size, OutCheck::Bytes(stream));
            run_layouts(&rig, &mut rng, &case, &LAYOUTS, salt);
        }
    }
}

#[test]
fn deflate_decompress_all_formats_levels_sizes_and_layouts() {
    let rig = Rig::new();
    let mut rng = TestRng::new("deflate_decompress_all_formats_levels_sizes_and_layouts");
    let mut salt = 0;
    for &n in data::FIXED_SIZES {
        for format in DeflateFormat::ALL.iter().copied() {
            for level in LEVELS {
                salt += 1;
                if n > BIG && salt % LEVELS.len() != 0 {
                    continue; // one level per format at 1 MiB
                }
                let input = rng.data(n);
                let packed = reference::compress(format, level, &input);
                let extra = rng.below(3);
                let case = Case::new(
                    format!(
                        "decompress {} B ({format:?} level {level}) into {} B",
                        packed.len(),
                        n + extra
                    ),
                    Op::DeflateDecompress,
                )
                .params(&deflate_params(format, 0))
                .result(&(packed.len() as u64).to_le_bytes())
                .input(packed)
                .output(n + extra, OutCheck::Bytes(input));
                run_layouts(&rig, &mut rng, &case, &layouts_for(n, salt), salt);
            }
        }
    }
}

#[test]
fn deflate_decompress_headers_and_trailing_bytes() {
    let rig = Rig::new();
    let mut rng = TestRng::new("deflate_decompress_headers_and_trailing_bytes");
    for (salt, &n) in [0, 1, 4097, 65536 + 7].iter().enumerate() {
        let input = rng.data(n);
        // A gzip member with every optional header field.
        let packed = reference::compress_gzip(&GzipHeader::full(), 6, &input);
        let case = Case::new(
            format!("decompress gzip with full header, {n} B"),
            Op::DeflateDecompress,
        )
        .params(&deflate_params(DeflateFormat::Gzip, 0))
        .result(&(packed.len() as u64).to_le_bytes())
        .input(packed)
        .output(n, OutCheck::Bytes(input.clone()));
        run_layouts(&rig, &mut rng, &case, &LAYOUTS, salt);
        // Two gzip members: only the first is decoded, and the result says
        // where the second starts (§8.9).
        let second_len = 1 + rng.below(1000);
        let second = rng.data(second_len);
        let mut packed = reference::compress(DeflateFormat::Gzip, 6, &input);
        let first_len = packed.len() as u64;
        packed.extend_from_slice(&reference::compress(DeflateFormat::Gzip, 6, &second));
        let case = Case::new(
            format!("decompress the first of two gzip members, {n} B"),
            Op::DeflateDecompress,
        )
        .params(&deflate_params(DeflateFormat::Gzip, 0))
        .result(&first_len.to_le_bytes())
        .input(packed)
        .output(n + second.len(), OutCheck::Bytes(input.clone()));
        run_layouts(&rig, &mut rng, &case, &LAYOUTS, salt);
        // Bytes after the end of the stream are not decoded.
        for format in DeflateFormat::ALL.iter().copied() {
            let mut packed = reference::compress(format, 1, &input);
            let stream_len = packed.len() as u64;
            let garbage = 1 + rng.below(100);
            packed.extend_from_slice(&rng.bytes(garbage));
            let case = Case::new(
                format!("decompress {format:?} {n} B followed by {garbage} B"),
                Op::DeflateDecompress,
            )
            .params(&deflate_params(format, 0))
            .result(&stream_len.to_le_bytes())
            .input(packed)
            .output(n, OutCheck::Bytes(input.clone()));
            run_layouts(&rig, &mut rng, &case, &LAYOUTS, salt);
        }
    }
}

#[test]
fn deflate_decompress_errors() {
    let rig = Rig::new();
    let mut rng = TestRng::new("deflate_decompress_errors");
    let mut salt = 0;
    for &n in data::FIXED_SIZES {
        for format in DeflateFormat::ALL.iter().copied() {
            salt += 1;
            let level = LEVELS[salt % LEVELS.len()];
            let input = rng.data(n);
            let packed = reference::compress(format, level, &input);
            let layouts = layouts_for(n, salt);
            let bad_data = |label: String, stream: Vec<u8>| {
                assert!(
                    reference::decompress_prefix(format, &stream, usize::MAX).is_err(),
                    "{label}: the reference decodes it"
                );
                Case::new(label, Op::DeflateDecompress)
                    .params(&deflate_params(format, 0))
                    .input(stream)
                    .output(n + 16, OutCheck::Unspecified)
                    .fails(Status::BadData)
            };
            let what = format!("{format:?} level {level}, {n} B");

            if n > 0 {
                let case = Case::new(
                    format!("decompress {what} into {} B", n - 1),
                    Op::DeflateDecompress,
                )
                .params(&deflate_params(format, 0))
                .input(packed.clone())
                .output(n - 1, OutCheck::Unspecified)
                .fails(Status::NoSpace);
                run_layouts(&rig, &mut rng, &case, &layouts, salt);
            }

            // Truncated: one byte short, half, nothing.
            for cut in [packed.len() - 1, packed.len() / 2, 0] {
                let case = bad_data(
                    format!("decompress {what} cut to {cut} B"),
                    packed[..cut].to_vec(),
                );
                run_layouts(&rig, &mut rng, &case, &layouts, salt);
            }

            // Corrupt: the first deflate block of reserved type 3.
            let start = match format {
                DeflateFormat::Raw => 0,
                DeflateFormat::Zlib => 2,
                DeflateFormat::Gzip => reference::gzip_header_len(&packed).unwrap(),
            };
            let mut bad = packed.clone();
            bad[start] |= 0b110;
            let case = bad_data(format!("decompress {what}, block type 3"), bad);
            run_layouts(&rig, &mut rng, &case, &layouts, salt);

            // Corrupt framing and check values.
            let mut corrupt = Vec::new();
            match format {
                DeflateFormat::Raw => {}
                DeflateFormat::Zlib => {
                    let mut bad = packed.clone();
                    bad[0] ^= 0x01; // breaks the header check
                    corrupt.push(("bad header", bad));
                    let mut bad = packed.clone();
                    let last = bad.len() - 1;
                    bad[last] ^= 0x01;
                    corrupt.push(("bad adler-32", bad));
                }
                DeflateFormat::Gzip => {
                    let mut bad = packed.clone();
                    bad[0] ^= 0xff;
                    corrupt.push(("bad magic", bad));
                    let mut bad = packed.clone();
                    let at = bad.len() - 8;
                    bad[at] ^= 0x01;
                    corrupt.push(("bad crc-32", bad));
                    let mut bad = packed.clone();
                    let last = bad.len() - 1;
                    bad[last] ^= 0x01;
                    corrupt.push(("bad isize", bad));
                }
            }
            for (name, bad) in corrupt {
                let case = bad_data(format!("decompress {what}, {name}"), bad);
                run_layouts(&rig, &mut rng, &case, &layouts, salt);
            }
        }
    }
    // A zlib stream that needs a preset dictionary: not supported, BadData.
    let raw = reference::compress(DeflateFormat::Raw, 6, b"dictionary");
    let mut fdict = vec![0x78, 0x20, 1, 2, 3, 4];
    fdict.extend_from_slice(&raw);
    let case = Case::new("decompress zlib with FDICT", Op::DeflateDecompress)
        .params(&deflate_params(DeflateFormat::Zlib, 0))
        .input(fdict)
        .output(100, OutCheck::Unspecified)
        .fails(Status::BadData);
    run_layouts(&rig, &mut rng, &case, &LAYOUTS, 0);
}

// ---------------------------------------------------------------------------
// 2. Objects.

/// Runs a CRC32C of `buffer` on queue 0.
fn crc_of(dev: &AccelDevice, buffer: Buffer) -> Completion {
    dev.run(0, &Request::new(Op::Crc32c).input(buffer)).unwrap()
}

fn control_status(result: accel_driver::device::Result<impl std::fmt::Debug>) -> Status {
    match result {
        Ok(value) => panic!("control command succeeded with {value:?}"),
        Err(e) => e
            .status()
            .unwrap_or_else(|| panic!("control command failed without a status: {e:?}")),
    }
}

/// Checks that a request was rejected with `status` before execution.
fn assert_rejected(done: &Completion, status: Status, what: &str) {
    assert_eq!(done.status(), Ok(status), "{what}: status");
    assert_eq!(done.used_len, 64, "{what}: used length");
    assert_eq!(done.bytes_written(), 0, "{what}: bytes_written");
    assert_eq!(done.result(), &[0; RESULT_SIZE], "{what}: result");
}

#[test]
fn object_life_cycle() {
    let rig = Rig::new();
    let mut rng = TestRng::new("object_life_cycle");
    let mem = &rig.mem;
    let data = rng.data(20_000);
    let bufs: Vec<DmaBuf> = [7000, 5000, 8000]
        .iter()
        .map(|&n| mem.alloc_pages(n + PAGE).unwrap())
        .collect();
    let segments: Vec<(u64, u64)> = bufs
        .iter()
        .zip([7000u64, 5000, 8000])
        .map(|(b, n)| (b.gpa() + 4093, n))
        .collect();
    let mut at = 0;
    for &(gpa, n) in &segments {
        mem.write_at(gpa, &data[at..at + us(n)]).unwrap();
        at += us(n);
    }
    let handle = rig.dev.create_object(&segments).unwrap();
    assert_ne!(handle, 0);

    // Handles are distinct among live objects.
    let others: Vec<u32> = (0..10)
        .map(|_| rig.dev.create_object(&segments[..1]).unwrap())
        .collect();
    let mut all: BTreeSet<u32> = others.iter().copied().collect();
    all.insert(handle);
    assert_eq!(all.len(), 11, "handles {all:?}");
    assert!(!all.contains(&0));

    // Whole object, a range across segments, an empty range at the end.
    let done = crc_of(&rig.dev, Buffer::object(handle, 0, 20_000));
    assert_eq!(
        done.check().unwrap().result_u32(),
        reference::crc32c(0, &data)
    );
    let done = crc_of(&rig.dev, Buffer::object(handle, 6000, 7000));
    assert_eq!(
        done.check().unwrap().result_u32(),
        reference::crc32c(0, &data[6000..13_000])
    );
    let done = crc_of(&rig.dev, Buffer::object(handle, 20_000, 0));
    assert_eq!(done.check().unwrap().result_u32(), 0);

    // Write into the object across a segment boundary.
    let fill = Request::new(Op::Fill)
        .params(&fill_params(0x77))
        .output(Buffer::object(handle, 11_000, 2000));
    let done = rig.dev.run(1, &fill).unwrap().check().unwrap();
    assert_eq!(done.bytes_written(), 2000);
    assert_eq!(done.used_len, 64, "object output: used length 64");
    let mut want = data.clone();
    want[11_000..13_000].fill(0x77);
    let done = crc_of(&rig.dev, Buffer::object(handle, 0, 20_000));
    assert_eq!(
        done.check().unwrap().result_u32(),
        reference::crc32c(0, &want)
    );
    let mut got = vec![0; 3000];
    mem.read_at(segments[1].0 + 4000, &mut got[..1000]).unwrap();
    mem.read_at(segments[2].0, &mut got[1000..]).unwrap();
    assert_same(&got, &want[11_000..14_000], "object after fill");

    // Ranges beyond the object.
    for (offset, len) in [(0, 20_001), (19_999, 2), (20_001, 0), (u64::MAX, 2)] {
        let done = crc_of(&rig.dev, Buffer::object(handle, offset, len));
        assert_rejected(&done, Status::Range, &format!("range {offset}+{len}"));
    }

    // OBJECT_DESTROY of a value above 32 bits names no object (and does
    // not destroy the object of its low 32 bits).
    let done = rig
        .dev
        .control_raw(
            CtrlReq::new(
                ControlCommand::ObjectDestroy,
                0,
                (1 << 32) | u64::from(handle),
            ),
            &[],
        )
        .unwrap();
    assert_eq!(done.used_len, 16);
    assert_eq!(
        done.status(),
        Ok(Status::NoObject),
        "destroy of 2^32 + handle"
    );
    assert_eq!(done.value(), 0);
    crc_of(&rig.dev, Buffer::object(handle, 0, 1))
        .check()
        .unwrap();

    // Destroy, then use: NoObject; destroy again: NoObject.
    rig.dev.destroy_object(handle).unwrap();
    let done = crc_of(&rig.dev, Buffer::object(handle, 0, 10));
    assert_rejected(&done, Status::NoObject, "use after destroy");
    let out = mem.alloc(100).unwrap();
    mem.fill(&out, OUT_FILL).unwrap();
    let copy = Request::new(Op::Copy)
        .input(Buffer::object(handle, 0, 100))
        .output(Buffer::direct(&out));
    let done = rig.dev.run(0, &copy).unwrap();
    assert_rejected(&done, Status::NoObject, "copy from destroyed object");
    assert_eq!(mem.read_vec(&out, 0, 100).unwrap(), vec![OUT_FILL; 100]);
    assert_eq!(
        control_status(rig.dev.destroy_object(handle)),
        Status::NoObject
    );
    assert_eq!(control_status(rig.dev.destroy_object(0)), Status::NoObject);
    assert_eq!(
        control_status(rig.dev.destroy_object(0xdead_beef)),
        Status::NoObject
    );
    // A destroyed handle is not handed out again soon (§7.1.2, SHOULD).
    let fresh = rig.dev.create_object(&segments).unwrap();
    assert_ne!(fresh, handle, "destroyed handle reused at once");
    assert!(!others.contains(&fresh));
    rig.dev.destroy_object(fresh).unwrap();
    // The other objects still work.
    for &h in &others {
        let done = crc_of(&rig.dev, Buffer::object(h, 0, 7000));
        assert_eq!(
            done.check().unwrap().result_u32(),
            reference::crc32c(0, &want[..7000])
        );
        rig.dev.destroy_object(h).unwrap();
    }
    // A handle of a live object in a request on the other queue, once more.
    let h = rig.dev.create_object(&segments).unwrap();
    let done = rig
        .dev
        .run(
            1,
            &Request::new(Op::Sha256).input(Buffer::object(h, 1, 19_999)),
        )
        .unwrap()
        .check()
        .unwrap();
    assert_eq!(done.result(), &reference::sha256(&want[1..]));
    // Two inputs naming the same bytes, or overlapping ranges of one object.
    for (a, b) in [(0, 0), (0, 1), (6990, 7000)] {
        let compare = Request::new(Op::Compare)
            .input(Buffer::object(h, a, 5000))
            .input(Buffer::object(h, b, 5000));
        let done = rig.dev.run(0, &compare).unwrap().check().unwrap();
        let (a, b) = (us(a), us(b));
        assert_eq!(
            done.result_u64(),
            reference::compare(&want[a..a + 5000], &want[b..b + 5000]),
            "compare {a} with {b}"
        );
    }
    // A copy between disjoint ranges of one object.
    let copy = Request::new(Op::Copy)
        .input(Buffer::object(h, 100, 6000))
        .output(Buffer::object(h, 13_000, 7000));
    let done = rig.dev.run(1, &copy).unwrap().check().unwrap();
    assert_eq!(done.bytes_written(), 6000);
    want.copy_within(100..6100, 13_000);
    let done = rig
        .dev
        .run(
            0,
            &Request::new(Op::Sha256).input(Buffer::object(h, 0, 20_000)),
        )
        .unwrap()
        .check()
        .unwrap();
    assert_eq!(done.result(), &reference::sha256(&want));
    rig.dev.destroy_object(h).unwrap();
}

#[test]
fn destroy_while_busy() {
    let rig = Rig::new();
    let mut rng = TestRng::new("destroy_while_busy");
    let mem = &rig.mem;
    const JOBS: usize = 5;
    let n = 1 << 20;
    let data = rng.text(n);
    let bound = deflate_bound(n);

    // Source object: two segments; destination object: one segment.
    let src_a = mem.alloc_pages(n / 2 + PAGE).unwrap();
    let src_b = mem.alloc_pages(n / 2 + PAGE).unwrap();
    mem.write_at(src_a.gpa() + 1, &data[..n / 2]).unwrap();
    mem.write_at(src_b.gpa() + 3, &data[n / 2..]).unwrap();
    let src = rig
        .dev
        .create_object(&[
            (src_a.gpa() + 1, (n / 2) as u64),
            (src_b.gpa() + 3, (n / 2) as u64),
        ])
        .unwrap();
    let dst_buf = mem.alloc_pages(bound + PAGE).unwrap();
    mem.fill(&dst_buf, OUT_FILL).unwrap();
    let dst = rig
        .dev
        .create_object(&[(dst_buf.gpa() + 5, bound as u64)])
        .unwrap();

    // A chain of slow jobs on queue 0 (fresh queue: job k gets seqno k), each
    // waiting for the previous one; the last writes into the object `dst`.
    let outs: Vec<DmaBuf> = (0..JOBS - 1).map(|_| mem.alloc(bound).unwrap()).collect();
    for k in 0..JOBS {
        let format = DeflateFormat::ALL[k % 3];
        let output = match outs.get(k) {
            Some(out) => Buffer::direct(out),
            None => Buffer::object(dst, 0, bound as u64),
        };
        let mut request = Request::new(Op::DeflateCompress)
            .params(&deflate_params(format, 9))
            .input(Buffer::object(src, 0, n as u64))
            .output(output);
        if k > 0 {
            request = request.dep(Fence::new(0, k as u64));
        }
        rig.dev.submit(0, &request, k as u64).unwrap();
    }
    rig.dev.flush(0).unwrap();

    // Make sure the device has taken (and validated) the last job.
    let last = Fence::new(0, JOBS as u64);
    assert!(
        !await_issued(&rig.dev, last),
        "the chain of {JOBS} jobs finished too fast"
    );

    // Destroy both objects while the jobs are queued or running: at once Ok.
    let start = Instant::now();
    rig.dev.destroy_object(src).unwrap();
    rig.dev.destroy_object(dst).unwrap();
    let took = start.elapsed();
    assert!(
        !rig.dev.query_fence(last).unwrap(),
        "OBJECT_DESTROY waited for the jobs ({took:?})"
    );
    // New requests can no longer name them.
    let done = crc_of(&rig.dev, Buffer::object(src, 0, 1));
    assert_rejected(&done, Status::NoObject, "use of a destroyed busy object");

    // The queued jobs complete correctly.
    let mut completions = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while completions.len() < JOBS && Instant::now() < deadline {
        completions.extend(rig.dev.wait(0, Duration::from_secs(1)).unwrap());
    }
    assert_eq!(completions.len(), JOBS, "completions {completions:?}");
    for done in completions {
        let k = us(done.token);
        let done = done.check().unwrap_or_else(|e| panic!("job {k}: {e:?}"));
        assert_eq!(u64::from(done.fence().seqno), k as u64 + 1);
        let size = us(done.bytes_written());
        let format = DeflateFormat::ALL[k % 3];
        let stream = match outs.get(k) {
            Some(out) => {
                assert_eq!(u64::from(done.used_len), RESP + size as u64);
                mem.read_vec(out, 0, size).unwrap()
            }
            None => {
                assert_eq!(done.used_len, 64);
                let mut image = mem.read_vec(&dst_buf, 0, dst_buf.len()).unwrap();
                let stream = image[5..5 + size].to_vec();
                image[5..5 + size].fill(OUT_FILL);
                assert!(
                    image.iter().all(|&b| b == OUT_FILL),
                    "job {k}: wrote outside its output"
                );
                stream
            }
        };
        let decoded = reference::decompress(format, &stream)
            .unwrap_or_else(|e| panic!("job {k}: output does not decode: {e}"));
        assert_same(&decoded, &data, &format!("job {k} decoded"));
    }
}

#[test]
fn object_segments_must_be_guest_memory() {
    // Guest memory with a hole: [0, 32 MiB) and [4 GiB, 4 GiB + 16 MiB).
    let high = 1u64 << 32;
    let mem = DmaMemory::with_regions(&[(0, 32 << 20), (high, 16 << 20)]).unwrap();
    let rig = Rig::with(Daemon::start(), mem);
    let low = rig.mem.alloc(4096).unwrap();
    let good = (low.gpa(), 4096);
    let low_end = 32u64 << 20;
    let high_end = high + (16 << 20);
    let bad_segments: &[(&str, Vec<(u64, u64)>)] = &[
        ("in the hole", vec![(1 << 31, 4096)]),
        ("across the end of region 0", vec![(low_end - 100, 200)]),
        ("across the start of region 1", vec![(high - 1, 2)]),
        ("beyond the end of memory", vec![(high_end, 4096)]),
        ("across the end of memory", vec![(high_end - 1, 2)]),
        ("overflowing", vec![(u64::MAX - 10, 100)]),
        ("second segment bad", vec![good, (high_end + 4096, 1)]),
        ("last of three bad", vec![good, good, (low_end, 1)]),
    ];
    for (what, segments) in bad_segments {
        assert_eq!(
            control_status(rig.dev.create_object(segments)),
            Status::BadAddress,
            "{what}"
        );
    }
    // Malformed lists.
    assert_eq!(
        control_status(rig.dev.create_object(&[])),
        Status::Invalid,
        "no segment"
    );
    assert_eq!(
        control_status(rig.dev.create_object(&[good, (low.gpa(), 0)])),
        Status::Invalid,
        "empty segment"
    );
    // Nothing was created by the failures: a good object still works.
    let h = rig.dev.create_object(&[good]).unwrap();
    crc_of(&rig.dev, Buffer::object(h, 0, 4096))
        .check()
        .unwrap();
}

#[test]
fn object_segment_and_size_limits() {
    let Some(daemon) = custom_daemon("object_segment_and_size_limits", |config| {
        config.limits.max_object_size = 1 << 20;
    }) else {
        return;
    };
    let rig = Rig::with(daemon, guest_ram(RAM_MIB));
    let max_segments = u32::from(rig.dev.config().max_segments) as usize;
    assert_eq!(u64::from(rig.dev.config().max_object_size), 1 << 20);
    let buf = rig.mem.alloc(64 * (max_segments + 1)).unwrap();
    let data: Vec<u8> = (0..buf.len())
        .map(|i| u8::try_from(i * 7 % 251).unwrap())
        .collect();
    rig.mem.write(&buf, 0, &data).unwrap();
    // Segments of 64 bytes in reverse order.
    let segments: Vec<(u64, u64)> = (0..=max_segments)
        .rev()
        .map(|i| (buf.gpa() + 64 * i as u64, 64))
        .collect();
    assert_eq!(
        control_status(rig.dev.create_object(&segments)),
        Status::Limit,
        "{} segments",
        max_segments + 1
    );
    let h = rig.dev.create_object(&segments[1..]).unwrap();
    let mut want = Vec::new();
    for &(gpa, len) in &segments[1..] {
        let at = us(gpa - buf.gpa());
        want.extend_from_slice(&data[at..at + us(len)]);
    }
    let done = crc_of(&rig.dev, Buffer::object(h, 0, want.len() as u64));
    assert_eq!(
        done.check().unwrap().result_u32(),
        reference::crc32c(0, &want)
    );
    rig.dev.destroy_object(h).unwrap();

    // Object size: exactly max_object_size is fine, one byte more is Limit.
    let big = rig.mem.alloc((1 << 20) + 1).unwrap();
    let h = rig.dev.create_object(&[(big.gpa(), 1 << 20)]).unwrap();
    rig.dev.destroy_object(h).unwrap();
    let h = rig
        .dev
        .create_object(&[(big.gpa(), 1000), (big.gpa() + 1000, (1 << 20) - 1000)])
        .unwrap();
    rig.dev.destroy_object(h).unwrap();
    assert_eq!(
        control_status(rig.dev.create_object(&[(big.gpa(), (1 << 20) + 1)])),
        Status::Limit
    );
    assert_eq!(
        control_status(
            rig.dev
                .create_object(&[(big.gpa(), 1 << 19), (big.gpa() + (1 << 19), (1 << 19) + 1)])
        ),
        Status::Limit
    );
}

#[test]
fn max_objects_reached() {
    const MAX: u32 = 4;
    let Some(daemon) = custom_daemon("max_objects_reached", |config| {
        config.limits.max_objects = MAX;
    }) else {
        return;
    };
    let rig = Rig::with(daemon, guest_ram(16));
    assert_eq!(u32::from(rig.dev.config().max_objects), MAX);
    let buf = rig.mem.alloc(4096).unwrap();
    let mut handles: Vec<u32> = (0..MAX)
        .map(|_| rig.dev.create_object(&[buf.segment()]).unwrap())
        .collect();
    for _ in 0..3 {
        assert_eq!(
            control_status(rig.dev.create_object(&[buf.segment()])),
            Status::NoResources
        );
    }
    // The live objects still work; a failed create leaves nothing behind.
    for &h in &handles {
        crc_of(&rig.dev, Buffer::object(h, 0, 4096))
            .check()
            .unwrap();
    }
    // Destroying one (unused) makes room for exactly one more.
    let gone = handles.remove(1);
    rig.dev.destroy_object(gone).unwrap();
    handles.push(rig.dev.create_object(&[buf.segment()]).unwrap());
    assert_eq!(
        control_status(rig.dev.create_object(&[buf.segment()])),
        Status::NoResources
    );
    for h in handles {
        rig.dev.destroy_object(h).unwrap();
    }
    let again: Vec<u32> = (0..MAX)
        .map(|_| rig.dev.create_object(&[buf.segment()]).unwrap())
        .collect();
    assert_eq!(again.len(), MAX as usize);
}

#[test]
fn objects_spanning_memory_regions() {
    // Two regions with a hole between them, and two adjacent ones.
    let high = 1u64 << 32;
    let adjacent = 48u64 << 20;
    let mem = DmaMemory::with_regions(&[
        (0, 32 << 20),
        (adjacent, 16 << 20),
        (adjacent + (16 << 20), 16 << 20),
        (high, 32 << 20),
    ])
    .unwrap();
    let rig = Rig::with(Daemon::start(), mem);
    let mut rng = TestRng::new("objects_spanning_memory_regions");
    let mem = &rig.mem;

    // Segment 0 at the very end of region 0, segment 1 in the high region.
    let tail = mem.alloc_at((32 << 20) - 8192, 8192).unwrap();
    let head = mem.alloc_at(high, 8192).unwrap();
    let segments = [(tail.gpa() + 3, 8189), (head.gpa(), 6000)];
    let data = rng.data(8189 + 6000);
    mem.write_at(segments[0].0, &data[..8189]).unwrap();
    mem.write_at(segments[1].0, &data[8189..]).unwrap();
    let h = rig.dev.create_object(&segments).unwrap();
    let done = crc_of(&rig.dev, Buffer::object(h, 100, 10_000));
    assert_eq!(
        done.check().unwrap().result_u32(),
        reference::crc32c(0, &data[100..10_100])
    );
    // Copy a direct buffer of the high region into the object, across the regions.
    let src = mem.alloc_at(high + (1 << 20), 5000).unwrap();
    let fresh = rng.bytes(5000);
    mem.write(&src, 0, &fresh).unwrap();
    let copy = Request::new(Op::Copy)
        .input(Buffer::direct(&src))
        .output(Buffer::object(h, 6000, 5000));
    rig.dev.run(1, &copy).unwrap().check().unwrap();
    let mut want = data.clone();
    want[6000..11_000].copy_from_slice(&fresh);
    let done = rig
        .dev
        .run(
            0,
            &Request::new(Op::Sha256).input(Buffer::object(h, 0, want.len() as u64)),
        )
        .unwrap()
        .check()
        .unwrap();
    assert_eq!(done.result(), &reference::sha256(&want));
    rig.dev.destroy_object(h).unwrap();

    // Adjacent regions: a segment, and a direct buffer, crossing from one
    // into the next are entirely guest memory.
    let boundary = adjacent + (16 << 20);
    let _left = mem.alloc_at(boundary - 4096, 4096).unwrap();
    let _right = mem.alloc_at(boundary, 4096).unwrap();
    let data = rng.data(200);
    mem.write_at(boundary - 100, &data).unwrap();
    let direct = crc_of(
        &rig.dev,
        Buffer::Direct {
            gpa: boundary - 100,
            len: 200,
        },
    );
    assert_eq!(
        direct.status(),
        Ok(Status::Ok),
        "direct buffer across adjacent regions"
    );
    assert_eq!(direct.result_u32(), reference::crc32c(0, &data));
    let h = rig
        .dev
        .create_object(&[(boundary - 100, 200)])
        .unwrap_or_else(|e| panic!("object segment across adjacent regions: {e:?}"));
    let done = crc_of(&rig.dev, Buffer::object(h, 0, 200));
    assert_eq!(
        done.check().unwrap().result_u32(),
        reference::crc32c(0, &data)
    );
}

// ---------------------------------------------------------------------------
// 3. Fences.

/// A small CRC request over `buf`.
fn small_crc(buf: &DmaBuf) -> Request {
    Request::new(Op::Crc32c).input(Buffer::direct(buf))
}

/// A slow request: deflate level 9 of `input` into `output`.
fn slow_job(input: &DmaBuf, output: &DmaBuf) -> Request {
    Request::new(Op::DeflateCompress)
        .params(&deflate_params(DeflateFormat::Zlib, 9))
        .input(Buffer::direct(input))
        .output(Buffer::direct(output))
}

/// Waits until the device has issued `fence` (FENCE_QUERY answers Ok) and
/// returns whether it had signalled.
fn await_issued(dev: &AccelDevice, fence: Fence) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match dev.query_fence(fence) {
            Ok(signalled) => return signalled,
            Err(e) if e.status() == Some(Status::NoFence) && Instant::now() < deadline => {
                std::thread::yield_now();
            }
            Err(e) => panic!("FENCE_QUERY {fence:?}: {e:?}"),
        }
    }
}

/// Collects `count` completions of `queue`.
fn collect(dev: &AccelDevice, queue: u16, count: usize) -> Vec<Completion> {
    let mut all = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while all.len() < count && Instant::now() < deadline {
        all.extend(dev.wait(queue, Duration::from_secs(1)).unwrap());
    }
    assert_eq!(all.len(), count, "completions of queue {queue}");
    all
}

#[test]
fn fences_are_numbered_per_queue() {
    let rig = Rig::new();
    let buf = rig.mem.alloc(100).unwrap();
    let queues = rig.dev.num_request_queues();
    assert!(queues >= 2);
    // One at a time, interleaved over the queues.
    for k in 1..=5u64 {
        for q in 0..queues {
            let done = rig.dev.run(q, &small_crc(&buf)).unwrap().check().unwrap();
            assert_eq!(done.fence(), Fence::new(q, k));
        }
    }
    // A batch: the k-th chain made available gets the next number, whatever
    // the completion order; failing requests count too.
    let bad = Request::new(Op::Crc32c); // no input: Invalid
    let good = small_crc(&buf);
    let mut predicted = Vec::new();
    for i in 0..20u64 {
        let request = if i % 5 == 3 { &bad } else { &good };
        predicted.push(rig.dev.submit(0, request, i).unwrap());
    }
    rig.dev.flush(0).unwrap();
    let done = collect(&rig.dev, 0, 20);
    for c in &done {
        assert_eq!(c.fence(), Fence::new(0, 6 + c.token), "token {}", c.token);
        // The driver knew the fence at submission (§6.2).
        let index = usize::try_from(c.token).unwrap();
        assert_eq!(c.fence(), predicted[index], "token {}", c.token);
        let want = if c.token % 5 == 3 {
            Status::Invalid
        } else {
            Status::Ok
        };
        assert_eq!(c.status(), Ok(want), "token {}", c.token);
    }
    // Queue 1 was not disturbed.
    let done = rig.dev.run(1, &small_crc(&buf)).unwrap();
    assert_eq!(done.fence(), Fence::new(1, 6));
}

#[test]
fn a_full_queue_pushes_back_until_completions_are_reaped() {
    let daemon = Daemon::start_with(|config| config.queue_size = 8);
    let mem = guest_ram(16);
    let dev = daemon.connect(&mem);
    let buf = mem.alloc(4096).unwrap();
    mem.fill(&buf, 7).unwrap();
    let want = reference::crc32c(0, &[7; 4096]);
    let crc = Request::new(Op::Crc32c)
        .params(&Crc32cParams::default())
        .input(Buffer::direct(&buf));
    let (total, mut submitted, mut finished, mut refusals) = (200u64, 0u64, 0u64, 0);
    while finished < total {
        while submitted < total {
            match dev.submit(0, &crc, submitted) {
                Ok(_) => submitted += 1,
                Err(accel_driver::device::Error::QueueFull { .. }) => {
                    refusals += 1;
                    break;
                }
                Err(e) => panic!("submit: {e}"),
            }
        }
        dev.flush(0).unwrap();
        for done in dev.wait(0, Duration::from_secs(10)).unwrap() {
            assert_eq!(done.check().unwrap().result_u32(), want);
            finished += 1;
        }
    }
    assert!(refusals > 0, "an 8-entry queue never filled up");
    assert_eq!(dev.in_flight(0).unwrap(), 0);
}

#[test]
fn registered_objects_name_ranges_and_die_when_dropped() {
    let rig = Rig::new();
    let (a, b) = (rig.mem.alloc(3000).unwrap(), rig.mem.alloc(5000).unwrap());
    rig.mem.fill(&a, 1).unwrap();
    rig.mem.fill(&b, 2).unwrap();
    let handle;
    {
        let object = rig.dev.register(&[&a, &b]).unwrap();
        handle = object.handle();
        assert_eq!(object.len(), 8000);
        assert!(object.range(7000, 1001).is_err(), "past the end");
        assert!(object.range(u64::MAX, 2).is_err(), "overflowing");
        let crc = Request::new(Op::Crc32c)
            .params(&Crc32cParams::default())
            .input(object.range(2990, 20).unwrap());
        let done = rig.dev.run(0, &crc).unwrap().check().unwrap();
        let want: Vec<u8> = [1u8; 10].iter().chain(&[2u8; 10]).copied().collect();
        assert_eq!(done.result_u32(), reference::crc32c(0, &want));
    }
    // Dropped: the handle is gone.
    let stale = Request::new(Op::Crc32c)
        .params(&Crc32cParams::default())
        .input(Buffer::object(handle, 0, 10));
    assert_eq!(
        rig.dev.run(0, &stale).unwrap().status(),
        Ok(Status::NoObject)
    );
    // Explicit destruction reports the device's answer.
    let object = rig.dev.register(&[&a]).unwrap();
    object.destroy().unwrap();
}

#[test]
fn predicted_fences_chain_a_batch_submitted_at_once() {
    let rig = Rig::new();
    let len = 4 << 20;
    let (a, b) = (rig.mem.alloc(len).unwrap(), rig.mem.alloc(len).unwrap());
    rig.mem.fill(&a, 0).unwrap();
    // fill a -> copy a to b -> CRC of b, each depending on the previous one
    // by the fence `submit` predicted, all made available in one flush.
    let fill = Request::new(Op::Fill)
        .params(&fill_params(0x3c))
        .output(Buffer::direct(&a));
    let filled = rig.dev.submit(0, &fill, 1).unwrap();
    let copy = Request::new(Op::Copy)
        .dep(filled)
        .input(Buffer::direct(&a))
        .output(Buffer::direct(&b));
    let copied = rig.dev.submit(0, &copy, 2).unwrap();
    let crc = Request::new(Op::Crc32c)
        .params(&Crc32cParams::default())
        .dep(copied)
        .input(Buffer::direct(&b));
    rig.dev.submit(0, &crc, 3).unwrap();
    rig.dev.flush(0).unwrap();
    let done = collect(&rig.dev, 0, 3);
    for c in &done {
        assert_eq!(c.status(), Ok(Status::Ok), "token {}", c.token);
    }
    let crc_done = done.iter().find(|c| c.token == 3).unwrap();
    assert_eq!(
        crc_done.result_u32(),
        reference::crc32c(0, &vec![0x3c; len])
    );
}

#[test]
fn cross_queue_dependency_orders_requests() {
    let rig = Rig::new();
    let mut rng = TestRng::new("cross_queue_dependency_orders_requests");
    let mem = &rig.mem;
    // The object the fill writes and the copy reads: 8 MiB in two segments.
    let size = 8usize << 20;
    let a = mem.alloc_pages(size / 2).unwrap();
    let b = mem.alloc_pages(size / 2).unwrap();
    let obj = rig.dev.create_object(&[a.segment(), b.segment()]).unwrap();
    let slow_in = mem.alloc(256 << 10).unwrap();
    mem.write(&slow_in, 0, &rng.text(256 << 10)).unwrap();
    let slow_out = mem.alloc(deflate_bound(256 << 10)).unwrap();
    let tail = 64usize << 10;
    let out = mem.alloc(tail + 16).unwrap();

    let (mut seq0, mut seq1) = (0u64, 0u64);
    let mut pending_seen = 0;
    let mut previous = 0u8;
    const ROUNDS: usize = 40;
    for round in 0..ROUNDS {
        let pattern = loop {
            let p = pattern_byte(&mut rng);
            if p != previous {
                break p;
            }
        };
        previous = pattern;
        // Queue 0: (sometimes) a slow job, then the fill depending on it.
        if round % 2 == 0 {
            rig.dev
                .submit(0, &slow_job(&slow_in, &slow_out), 1)
                .unwrap();
            seq0 += 1;
        }
        let mut fill = Request::new(Op::Fill)
            .params(&fill_params(pattern))
            .output(Buffer::object(obj, 0, size as u64));
        if round % 2 == 0 {
            fill = fill.dep(Fence::new(0, seq0));
        }
        rig.dev.submit(0, &fill, 2).unwrap();
        seq0 += 1;
        let fill_fence = Fence::new(0, seq0);
        rig.dev.flush(0).unwrap();
        // Name the fill's fence on queue 1 once it is issued.
        if !await_issued(&rig.dev, fill_fence) {
            pending_seen += 1;
        }
        mem.fill(&out, OUT_FILL).unwrap();
        let copy = Request::new(Op::Copy)
            .dep(fill_fence)
            .input(Buffer::object(obj, (size - tail) as u64, tail as u64))
            .output(Buffer::direct(&out));
        let done = rig.dev.run(1, &copy).unwrap();
        seq1 += 1;
        let done = done
            .check()
            .unwrap_or_else(|e| panic!("round {round}: {e:?}"));
        assert_eq!(done.fence(), Fence::new(1, seq1));
        let got = mem.read_vec(&out, 0, tail + 16).unwrap();
        let mut want = vec![pattern; tail];
        want.extend_from_slice(&[OUT_FILL; 16]);
        assert_same(
            &got,
            &want,
            &format!("round {round}: copy after the fill (pattern {pattern:#04x})"),
        );
        // The fill has signalled by now.
        assert!(rig.dev.query_fence(fill_fence).unwrap(), "round {round}");
        // Reap queue 0.
        let expected = if round % 2 == 0 { 2 } else { 1 };
        for c in collect(&rig.dev, 0, expected) {
            c.check().unwrap_or_else(|e| panic!("round {round}: {e:?}"));
        }
    }
    assert!(
        pending_seen > 0,
        "the copy never had to wait for the fill: the test proves nothing"
    );
}

#[test]
fn fence_query_and_wait() {
    let rig = Rig::new();
    let mut rng = TestRng::new("fence_query_and_wait");
    let mem = &rig.mem;
    let n = 1 << 20;
    let input = mem.alloc(n).unwrap();
    mem.write(&input, 0, &rng.text(n)).unwrap();
    let outs: Vec<DmaBuf> = (0..4)
        .map(|_| mem.alloc(deflate_bound(n)).unwrap())
        .collect();
    let small = mem.alloc(4096).unwrap();

    // Bad fences.
    let queues = rig.dev.num_request_queues();
    for fence in [
        Fence::new(0, 0),
        Fence::new(0, 1),
        Fence::new(1, 1),
        Fence::new(queues, 1),
        Fence::new(u16::MAX, 1),
    ] {
        assert_eq!(
            control_status(rig.dev.query_fence(fence)),
            Status::NoFence,
            "query {fence:?}"
        );
        assert_eq!(
            control_status(rig.dev.wait_fences(&[fence])),
            Status::NoFence,
            "wait {fence:?}"
        );
    }

    // Queue 0: three chained slow jobs (fences 1, 2, 3); queue 1: a small job.
    rig.dev.submit(0, &slow_job(&input, &outs[0]), 0).unwrap();
    for (k, out) in outs.iter().enumerate().take(3).skip(1) {
        let job = slow_job(&input, out).dep(Fence::new(0, k as u64));
        rig.dev.submit(0, &job, k as u64).unwrap();
    }
    rig.dev.flush(0).unwrap();
    rig.dev.run(1, &small_crc(&small)).unwrap().check().unwrap();
    let last = Fence::new(0, 3);
    assert!(
        !await_issued(&rig.dev, last),
        "three slow jobs done at once"
    );
    assert!(rig.dev.query_fence(Fence::new(1, 1)).unwrap());
    assert_eq!(
        control_status(rig.dev.query_fence(Fence::new(0, 4))),
        Status::NoFence,
        "not issued yet"
    );
    // A FENCE_WAIT pending on the slow jobs does not hold up other commands.
    let handle = std::thread::scope(|scope| {
        let waiter = scope.spawn(|| {
            rig.dev.wait_fences(&[
                Fence::new(0, 1),
                last,
                Fence::new(1, 1),
                last,
                Fence::new(0, 2),
            ])
        });
        std::thread::sleep(Duration::from_millis(5));
        let h = rig.dev.create_object(&[small.segment()]).unwrap();
        let finished = waiter.is_finished();
        let signalled = rig.dev.query_fence(last).unwrap();
        assert!(
            signalled || !finished,
            "FENCE_WAIT completed before its fence signalled"
        );
        waiter.join().unwrap().unwrap();
        h
    });
    // After FENCE_WAIT, every listed fence has signalled.
    for k in 1..=3 {
        assert!(rig.dev.query_fence(Fence::new(0, k)).unwrap(), "fence {k}");
    }
    // Waiting on signalled fences completes at once.
    rig.dev
        .wait_fences(&[Fence::new(0, 1), Fence::new(0, 1)])
        .unwrap();
    for c in collect(&rig.dev, 0, 3) {
        c.check().unwrap();
    }
    rig.dev.destroy_object(handle).unwrap();

    // FENCE_WAIT with more fences than max_deps: Limit.
    let max_deps = u32::from(rig.dev.config().max_deps) as usize;
    assert_eq!(
        control_status(rig.dev.wait_fences(&vec![Fence::new(1, 1); max_deps + 1])),
        Status::Limit
    );
    rig.dev
        .wait_fences(&vec![Fence::new(1, 1); max_deps])
        .unwrap();
}

#[test]
fn invalid_dependencies() {
    let rig = Rig::new();
    let mem = &rig.mem;
    let queues = rig.dev.num_request_queues();
    let out = mem.alloc(256).unwrap();
    mem.fill(&out, OUT_FILL).unwrap();
    let fill = |dep: Fence| {
        Request::new(Op::Fill)
            .params(&fill_params(0x11))
            .output(Buffer::direct(&out))
            .dep(dep)
    };
    // On a fresh queue 0 the first request gets seqno 1.
    let mut next = 1u64;
    let cases = [
        ("own fence", Fence::new(0, 1)),
        ("next fence of its queue", Fence::new(0, 3)),
        ("never issued, queue 1", Fence::new(1, 1000)),
        ("seqno 0", Fence::new(0, 0)),
        ("no such queue", Fence::new(queues, 1)),
    ];
    for (what, dep) in cases {
        let done = rig.dev.run(0, &fill(dep)).unwrap();
        assert_rejected(&done, Status::NoFence, what);
        assert_eq!(done.fence(), Fence::new(0, next), "{what}: its own fence");
        assert_eq!(
            mem.read_vec(&out, 0, 256).unwrap(),
            vec![OUT_FILL; 256],
            "{what}: output modified"
        );
        next += 1;
    }
    // Depending on the request's own number (the next seqno) after a batch.
    let done = rig.dev.run(0, &fill(Fence::new(0, next))).unwrap();
    assert_rejected(&done, Status::NoFence, "own fence");
    next += 1;
    // A dependency on a request that failed is satisfied: the request runs.
    let done = rig.dev.run(0, &fill(Fence::new(0, next - 1))).unwrap();
    done.check().unwrap();
    assert_eq!(mem.read_vec(&out, 0, 256).unwrap(), vec![0x11; 256]);
    // More dependencies than max_deps: Limit; exactly max_deps is fine.
    let max_deps = u32::from(rig.dev.config().max_deps) as usize;
    let buf = mem.alloc(10).unwrap();
    let done = rig
        .dev
        .run(
            1,
            &small_crc(&buf).deps(vec![Fence::new(0, 1); max_deps + 1]),
        )
        .unwrap();
    assert_rejected(&done, Status::Limit, "too many dependencies");
    let done = rig
        .dev
        .run(1, &small_crc(&buf).deps(vec![Fence::new(0, 1); max_deps]))
        .unwrap();
    done.check().unwrap();
}

#[test]
fn feature_subsets() {
    use accel_driver::feature;
    let daemon = Daemon::start();
    let mut rng = TestRng::new("feature_subsets");
    let version_1 = feature(32);
    let objects = feature(VIRTIO_ACCEL_F_OBJECTS);
    let fences = feature(VIRTIO_ACCEL_F_FENCES);
    let indirect = feature(28);
    let event_idx = feature(29);
    for wanted in [
        version_1,
        version_1 | objects,
        version_1 | fences,
        DEFAULT_FEATURES & !indirect,
        DEFAULT_FEATURES & !event_idx,
        DEFAULT_FEATURES,
    ] {
        let mem = guest_ram(16);
        let dev = daemon.connect_with(&mem, wanted);
        assert_eq!(dev.features(), wanted, "negotiated features");
        let what = format!("features {wanted:#x}");
        // Requests over several descriptors work with any subset.
        let data = rng.data(10_000);
        let src = mem.alloc(10_000).unwrap();
        mem.write(&src, 0, &data).unwrap();
        let out = mem.alloc(10_000).unwrap();
        let pieces = |buf: &DmaBuf| {
            Buffer::Scattered((0..10u64).map(|i| (buf.gpa() + 1000 * i, 1000)).collect())
        };
        for q in 0..dev.num_request_queues() {
            let copy = Request::new(Op::Copy)
                .input(pieces(&src))
                .output(pieces(&out));
            let done = dev.run(q, &copy).unwrap().check().unwrap();
            assert_eq!(done.used_len, 64 + 10_000, "{what}");
            assert_same(&mem.read_vec(&out, 0, 10_000).unwrap(), &data, &what);
        }
        // Objects only with VIRTIO_ACCEL_F_OBJECTS.
        let created = dev.create_object(&[src.segment()]);
        if wanted & objects != 0 {
            let h = created.unwrap();
            let done = crc_of(&dev, Buffer::object(h, 0, 10_000)).check().unwrap();
            assert_eq!(done.result_u32(), reference::crc32c(0, &data), "{what}");
            dev.destroy_object(h).unwrap();
        } else {
            assert_eq!(control_status(created), Status::Unsupported, "{what}");
            assert_eq!(
                control_status(dev.destroy_object(1)),
                Status::Unsupported,
                "{what}"
            );
            let done = crc_of(&dev, Buffer::object(1, 0, 1));
            assert_rejected(&done, Status::Unsupported, &format!("{what}: object"));
        }
        // Dependencies and fence commands only with VIRTIO_ACCEL_F_FENCES.
        let done = dev.run(0, &small_crc(&src).dep(Fence::new(0, 1))).unwrap();
        if wanted & fences != 0 {
            done.check().unwrap();
            assert!(dev.query_fence(Fence::new(0, 1)).unwrap());
            dev.wait_fences(&[Fence::new(0, 1)]).unwrap();
        } else {
            assert_rejected(&done, Status::Unsupported, &format!("{what}: dependency"));
            assert_eq!(
                control_status(dev.query_fence(Fence::new(0, 1))),
                Status::Unsupported,
                "{what}"
            );
            assert_eq!(
                control_status(dev.wait_fences(&[Fence::new(0, 1)])),
                Status::Unsupported,
                "{what}"
            );
        }
    }
}

/// §7.5: CAPABILITIES enables the capabilities the device has among those
/// asked for (other bits are ignored), answers every capability enabled
/// (negotiated ones included), only adds, and a device reset forgets it.
#[test]
fn capabilities_are_enabled_on_the_control_queue_until_a_reset() {
    use accel_driver::feature;
    use virtio_accel_spec::{ControlCommand, CtrlReq};

    let daemon = Daemon::start();
    let mem = guest_ram(16);
    let objects = feature(VIRTIO_ACCEL_F_OBJECTS);
    let fences = feature(VIRTIO_ACCEL_F_FENCES);
    let seg = mem.alloc(4096).unwrap().segment();
    let capabilities = |dev: &AccelDevice, count: u32, asked: u64| {
        let done = dev
            .control_raw(
                CtrlReq::new(ControlCommand::Capabilities, count, asked),
                &[],
            )
            .unwrap();
        (
            Status::try_from(u32::from(done.resp.status)).unwrap(),
            u64::from(done.resp.value),
        )
    };
    let version_1 = feature(32);
    let dev = daemon.connect_with(&mem, version_1 | fences);
    assert_eq!(dev.capabilities(), fences);
    assert_eq!(
        control_status(dev.create_object(&[seg])),
        Status::Unsupported
    );
    assert_eq!(capabilities(&dev, 0, 0), (Status::Ok, fences), "a query");
    assert_eq!(capabilities(&dev, 1, objects).0, Status::Invalid, "count");
    assert_eq!(
        capabilities(&dev, 0, objects | feature(40)),
        (Status::Ok, objects | fences)
    );
    let handle = dev.create_object(&[seg]).unwrap();
    assert_eq!(
        capabilities(&dev, 0, 0),
        (Status::Ok, objects | fences),
        "capabilities are only added"
    );
    dev.destroy_object(handle).unwrap();
    let transport = dev.close().unwrap();
    let options = accel_driver::OpenOptions {
        features: version_1,
        ..Default::default()
    };
    let dev = AccelDevice::open_with(transport, &options).unwrap();
    assert_eq!(
        capabilities(&dev, 0, 0),
        (Status::Ok, 0),
        "forgotten at the reset"
    );
    assert_eq!(
        control_status(dev.create_object(&[seg])),
        Status::Unsupported
    );
}

// ---------------------------------------------------------------------------
// 4. Out-of-order completion.

#[test]
fn completes_out_of_order() {
    let rig = Rig::new();
    let mut rng = TestRng::new("completes_out_of_order");
    let mem = &rig.mem;
    let offered = rig.dev.transport().device_features();
    assert_eq!(
        offered & (1 << VIRTIO_F_IN_ORDER),
        0,
        "VIRTIO_F_IN_ORDER offered"
    );

    const SMALL: usize = 32;
    let n = 1 << 20;
    let text = rng.text(n);
    let big_in = mem.alloc(n).unwrap();
    mem.write(&big_in, 0, &text).unwrap();
    let big_out = mem.alloc(deflate_bound(n)).unwrap();
    let smalls: Vec<(DmaBuf, u32)> = (0..SMALL)
        .map(|_| {
            let len = 64 + rng.below(4000);
            let data = rng.bytes(len);
            let buf = mem.alloc(len).unwrap();
            mem.write(&buf, 0, &data).unwrap();
            (buf, reference::crc32c(0, &data))
        })
        .collect();

    let mut seq = 0u64;
    let mut overtaken = false;
    for attempt in 0..5 {
        rig.dev.submit(0, &slow_job(&big_in, &big_out), 0).unwrap();
        for (i, (buf, _)) in smalls.iter().enumerate() {
            rig.dev.submit(0, &small_crc(buf), i as u64 + 1).unwrap();
        }
        rig.dev.flush(0).unwrap();
        let order = collect(&rig.dev, 0, SMALL + 1);
        for c in &order {
            let c = c.check().unwrap();
            assert_eq!(c.fence(), Fence::new(0, seq + 1 + c.token));
            if c.token == 0 {
                let stream = mem.read_vec(&big_out, 0, us(c.bytes_written())).unwrap();
                assert_same(
                    &reference::decompress(DeflateFormat::Zlib, &stream).unwrap(),
                    &text,
                    "big job",
                );
            } else {
                assert_eq!(c.result_u32(), smalls[us(c.token) - 1].1);
            }
        }
        seq += SMALL as u64 + 1;
        let big_at = order.iter().position(|c| c.token == 0).unwrap();
        eprintln!("attempt {attempt}: the big job completed at position {big_at}");
        if big_at > 0 {
            overtaken = true;
            break;
        }
    }
    assert!(
        overtaken,
        "the big job completed first in every attempt: no out-of-order completion"
    );
}

// ---------------------------------------------------------------------------
// 5. Disconnection and reconnection.

#[test]
fn disconnect_and_reconnect() {
    let daemon = Daemon::start();
    let mut rng = TestRng::new("disconnect_and_reconnect");
    // Memory and buffers of old connections stay alive until the end: the
    // daemon may still be finishing their jobs.
    let mut graveyard: Vec<(DmaMemory, Vec<DmaBuf>)> = Vec::new();
    let mut old_handles: Vec<u32> = Vec::new();
    for round in 0..4 {
        let mem = guest_ram(32);
        let dev = daemon.connect(&mem);
        let queues = dev.num_request_queues();
        let small = mem.alloc(64).unwrap();
        let data = rng.bytes(64);
        mem.write(&small, 0, &data).unwrap();

        // Old handles are dead (before any object of this connection exists).
        for &h in &old_handles {
            let done = crc_of(&dev, Buffer::object(h, 0, 1));
            assert_rejected(&done, Status::NoObject, &format!("round {round}: old {h}"));
        }
        // Fences restart at 1 on every queue (the old-handle requests above
        // took the first numbers of queue 0).
        let first0 = 1 + old_handles.len() as u64;
        for q in 0..queues {
            let done = dev.run(q, &small_crc(&small)).unwrap().check().unwrap();
            let want = if q == 0 { first0 } else { 1 };
            assert_eq!(done.fence(), Fence::new(q, want), "round {round}");
            assert_eq!(done.result_u32(), reference::crc32c(0, &data));
        }
        if !old_handles.is_empty() {
            assert_eq!(
                control_status(dev.destroy_object(old_handles[0])),
                Status::NoObject
            );
        }

        // Objects and jobs of this connection.
        let n = 512 << 10;
        let text = rng.text(n);
        let src = mem.alloc(n).unwrap();
        mem.write(&src, 0, &text).unwrap();
        let handles: Vec<u32> = (0..3)
            .map(|i| {
                dev.create_object(&[(src.gpa() + i as u64, (n - 8) as u64)])
                    .unwrap()
            })
            .collect();
        for (i, &h) in handles.iter().enumerate() {
            let done = crc_of(&dev, Buffer::object(h, 0, 1000)).check().unwrap();
            assert_eq!(done.result_u32(), reference::crc32c(0, &text[i..i + 1000]));
        }
        // Queue slow jobs on every queue, and leave with them in flight.
        let mut bufs = vec![src, small];
        for q in 0..queues {
            for k in 0..3 {
                let out = mem.alloc(deflate_bound(n)).unwrap();
                let request = Request::new(Op::DeflateCompress)
                    .params(&deflate_params(DeflateFormat::Gzip, 9))
                    .input(Buffer::object(handles[k % 3], 0, (n - 8) as u64))
                    .output(Buffer::direct(&out));
                dev.submit(q, &request, k as u64).unwrap();
                bufs.push(out);
            }
            dev.flush(q).unwrap();
        }
        if round % 2 == 0 {
            // Let the device take them first.
            await_issued(&dev, Fence::new(queues - 1, 4));
        }
        eprintln!(
            "round {round}: leaving with {} and {} requests in flight",
            dev.in_flight(0).unwrap(),
            dev.in_flight(queues - 1).unwrap()
        );
        if round % 2 == 0 {
            dev.into_transport().disconnect();
        } else {
            drop(dev);
        }
        old_handles = handles;
        graveyard.push((mem, bufs));
    }
    // A final connection works normally.
    let mem = guest_ram(16);
    let dev = daemon.connect(&mem);
    let buf = mem.alloc(9).unwrap();
    mem.write(&buf, 0, b"123456789").unwrap();
    let done = dev.run(1, &small_crc(&buf)).unwrap().check().unwrap();
    assert_eq!(done.result_u32(), 0xE306_9283);
    assert_eq!(done.fence(), Fence::new(1, 1));
}

#[test]
fn reset_completes_taken_requests_and_forgets_state() {
    let daemon = Daemon::start();
    let mut rng = TestRng::new("reset_completes_taken_requests_and_forgets_state");
    let mem = guest_ram(RAM_MIB);
    let dev = daemon.connect(&mem);
    let n = 512 << 10;
    let text = rng.text(n);
    let src = mem.alloc(n).unwrap();
    mem.write(&src, 0, &text).unwrap();
    let handle = dev.create_object(&[src.segment()]).unwrap();
    let small = mem.alloc(64).unwrap();

    // Slow jobs on both queues, chained on queue 0, all taken by the device.
    let mut jobs = Vec::new();
    for q in 0..2u16 {
        for k in 0..3u64 {
            let out = mem.alloc(deflate_bound(n)).unwrap();
            mem.fill(&out, OUT_FILL).unwrap();
            let mut request = Request::new(Op::DeflateCompress)
                .params(&deflate_params(DeflateFormat::Raw, 9))
                .input(Buffer::object(handle, 0, n as u64))
                .output(Buffer::direct(&out));
            if q == 0 && k > 0 {
                request = request.dep(Fence::new(0, k));
            }
            dev.submit(q, &request, k).unwrap();
            jobs.push(out);
        }
        dev.flush(q).unwrap();
    }
    assert!(!await_issued(&dev, Fence::new(0, 3)), "jobs done too fast");
    await_issued(&dev, Fence::new(1, 3));

    // Reset: the rings are stopped (GET_VRING_BASE), then RESET_DEVICE.
    let transport = dev.close().unwrap();
    let after_reset: Vec<Vec<u8>> = jobs
        .iter()
        .map(|out| mem.read_vec(out, 0, out.len()).unwrap())
        .collect();
    // The device completed what it had taken before acknowledging the stop
    // (§11, SHOULD): every output holds a complete stream.
    for (i, image) in after_reset.iter().enumerate() {
        let inflated = reference::decompress_prefix(DeflateFormat::Raw, image, n)
            .unwrap_or_else(|e| panic!("job {i}: no complete stream after the reset: {e}"));
        assert_same(&inflated.data, &text, &format!("job {i}"));
    }
    // After the reset the device no longer touches guest memory.
    std::thread::sleep(Duration::from_millis(100));
    for (i, (out, image)) in jobs.iter().zip(&after_reset).enumerate() {
        let now = mem.read_vec(out, 0, out.len()).unwrap();
        assert_same(
            &now,
            image,
            &format!("job {i} output changed after the reset"),
        );
    }

    // The same connection, set up again: a new device instance.
    let options = OpenOptions {
        features: DEFAULT_FEATURES,
        queue_size: Some(TenantConfig::new("0", SocketSource::Fd(-1)).queue_size),
        timeout: Duration::from_secs(20),
        ..OpenOptions::default()
    };
    let dev = Device::open_with(transport, &options).unwrap();
    let done = crc_of(&dev, Buffer::object(handle, 0, 1));
    assert_rejected(&done, Status::NoObject, "handle from before the reset");
    assert_eq!(done.fence(), Fence::new(0, 1), "fences restart at 1");
    let done = dev.run(1, &small_crc(&small)).unwrap().check().unwrap();
    assert_eq!(done.fence(), Fence::new(1, 1), "fences restart at 1");
    assert_eq!(
        control_status(dev.query_fence(Fence::new(0, 2))),
        Status::NoFence
    );
    let h = dev.create_object(&[src.segment()]).unwrap();
    let done = crc_of(&dev, Buffer::object(h, 0, n as u64))
        .check()
        .unwrap();
    assert_eq!(done.result_u32(), reference::crc32c(0, &text));
}

// ---------------------------------------------------------------------------
// 6. Memory table update.

#[test]
fn memory_table_change_with_requests_in_flight() {
    let high = 1u64 << 32;
    let mem = DmaMemory::with_regions(&[(0, 32 << 20), (high, 32 << 20)]).unwrap();
    let rig = Rig::with(Daemon::start(), mem);
    let mut rng = TestRng::new("memory_table_change_with_requests_in_flight");
    let mem = &rig.mem;
    let n = 1 << 20;
    let text = rng.text(n);
    let src = mem.alloc_at(high, n).unwrap();
    mem.write(&src, 0, &text).unwrap();
    let outs: Vec<DmaBuf> = (0..4)
        .map(|i| {
            mem.alloc_at(high + ((2 + 2 * i) << 20), deflate_bound(n))
                .unwrap()
        })
        .collect();
    for (k, out) in outs.iter().enumerate() {
        let mut job = slow_job(&src, out);
        if k > 0 {
            job = job.dep(Fence::new(0, k as u64));
        }
        rig.dev.submit(0, &job, k as u64).unwrap();
    }
    rig.dev.flush(0).unwrap();
    assert!(
        !await_issued(&rig.dev, Fence::new(0, 4)),
        "jobs done too fast"
    );
    // Unplug the region the running jobs use.
    let regions = mem.regions().to_vec();
    rig.dev
        .transport()
        .set_mem_table_regions(&regions[..1])
        .unwrap();
    // Every request completes, with the right output or BadAddress.
    for c in collect(&rig.dev, 0, outs.len()) {
        let k = us(c.token);
        match c.status() {
            Ok(Status::Ok) => {
                let stream = mem.read_vec(&outs[k], 0, us(c.bytes_written())).unwrap();
                let decoded = reference::decompress(DeflateFormat::Zlib, &stream)
                    .unwrap_or_else(|e| panic!("job {k}: {e}"));
                assert_same(&decoded, &text, &format!("job {k}"));
            }
            Ok(Status::BadAddress) => assert_rejected(&c, Status::BadAddress, "job"),
            other => panic!("job {k}: status {other:?}"),
        }
    }
    let done = crc_of(&rig.dev, Buffer::direct(&src));
    assert_rejected(&done, Status::BadAddress, "after the unplug");
    rig.dev.transport().set_mem_table().unwrap();
    let done = crc_of(&rig.dev, Buffer::direct(&src)).check().unwrap();
    assert_eq!(done.result_u32(), reference::crc32c(0, &text));
}

#[test]
fn memory_table_update() {
    let high = 1u64 << 32;
    let mem = DmaMemory::with_regions(&[(0, 32 << 20), (high, 16 << 20)]).unwrap();
    let rig = Rig::with(Daemon::start(), mem);
    let mut rng = TestRng::new("memory_table_update");
    let mem = &rig.mem;
    let hi = mem.alloc_at(high + 4096, 65536).unwrap();
    let hi_data = rng.bytes(65536);
    mem.write(&hi, 0, &hi_data).unwrap();
    let lo = mem.alloc(65536).unwrap();
    let lo_data = rng.bytes(65536);
    mem.write(&lo, 0, &lo_data).unwrap();
    let hi_obj = rig
        .dev
        .create_object(&[(hi.gpa() + 3, 1000), (lo.gpa(), 1000)])
        .unwrap();
    let lo_obj = rig.dev.create_object(&[lo.segment()]).unwrap();
    let hi_obj_crc = {
        let mut v = hi_data[3..1003].to_vec();
        v.extend_from_slice(&lo_data[..1000]);
        reference::crc32c(0, &v)
    };

    let check_all_work = |when: &str| {
        let done = crc_of(&rig.dev, Buffer::direct(&hi));
        assert_eq!(done.status(), Ok(Status::Ok), "{when}: direct high");
        assert_eq!(done.result_u32(), reference::crc32c(0, &hi_data));
        let done = crc_of(&rig.dev, Buffer::object(hi_obj, 0, 2000));
        assert_eq!(done.status(), Ok(Status::Ok), "{when}: object high");
        assert_eq!(done.result_u32(), hi_obj_crc);
        let done = crc_of(&rig.dev, Buffer::direct(&lo));
        assert_eq!(
            done.check().unwrap().result_u32(),
            reference::crc32c(0, &lo_data)
        );
    };
    check_all_work("before");

    // Unplug the high region.
    let regions = mem.regions().to_vec();
    assert_eq!(regions.len(), 2);
    rig.dev
        .transport()
        .set_mem_table_regions(&regions[..1])
        .unwrap();

    let done = crc_of(&rig.dev, Buffer::direct(&hi));
    assert_rejected(
        &done,
        Status::BadAddress,
        "direct input in the removed region",
    );
    let done = crc_of(&rig.dev, Buffer::object(hi_obj, 0, 2000));
    assert_rejected(&done, Status::BadAddress, "object in the removed region");
    // A range of the object entirely in the remaining region: the spec
    // allows BadAddress (the object's memory is not all guest memory) or
    // the right answer.
    let done = crc_of(&rig.dev, Buffer::object(hi_obj, 1000, 1000));
    match done.status() {
        Ok(Status::BadAddress) => assert_rejected(&done, Status::BadAddress, "object part"),
        _ => assert_eq!(
            done.check().unwrap().result_u32(),
            reference::crc32c(0, &lo_data[..1000])
        ),
    }
    let fill = Request::new(Op::Fill)
        .params(&fill_params(0x99))
        .output(Buffer::direct(&hi));
    let done = rig.dev.run(1, &fill).unwrap();
    assert_rejected(
        &done,
        Status::BadAddress,
        "direct output in the removed region",
    );
    let copy = Request::new(Op::Copy)
        .input(Buffer::direct_range(&lo, 0, 2000).unwrap())
        .output(Buffer::object(hi_obj, 0, 2000));
    let done = rig.dev.run(1, &copy).unwrap();
    assert_rejected(
        &done,
        Status::BadAddress,
        "object output in the removed region",
    );
    assert_same(
        &mem.read_vec(&hi, 0, 65536).unwrap(),
        &hi_data,
        "removed region written",
    );
    assert_eq!(
        control_status(rig.dev.create_object(&[hi.segment()])),
        Status::BadAddress
    );
    // Everything in the remaining region still works.
    let done = crc_of(&rig.dev, Buffer::direct(&lo));
    assert_eq!(
        done.check().unwrap().result_u32(),
        reference::crc32c(0, &lo_data)
    );
    let done = crc_of(&rig.dev, Buffer::object(lo_obj, 0, 65536));
    assert_eq!(
        done.check().unwrap().result_u32(),
        reference::crc32c(0, &lo_data)
    );
    let out = mem.alloc(65536).unwrap();
    let copy = Request::new(Op::Copy)
        .input(Buffer::object(lo_obj, 0, 65536))
        .output(Buffer::direct(&out));
    rig.dev.run(0, &copy).unwrap().check().unwrap();
    assert_same(&mem.read_vec(&out, 0, 65536).unwrap(), &lo_data, "copy");

    // Plug it back: everything works again.
    rig.dev.transport().set_mem_table().unwrap();
    check_all_work("after");
    let h = rig.dev.create_object(&[hi.segment()]).unwrap();
    let done = crc_of(&rig.dev, Buffer::object(h, 0, 65536));
    assert_eq!(
        done.check().unwrap().result_u32(),
        reference::crc32c(0, &hi_data)
    );
}

// ---------------------------------------------------------------------------
// 7. Configuration.

#[test]
fn default_config_matches_the_daemon() {
    let rig = Rig::new();
    let expected =
        TenantConfig::new("0", SocketSource::Fd(-1)).device_config(Op::all_capabilities());
    assert_eq!(*rig.dev.config(), expected);
    assert_eq!(u32::from(rig.dev.config().ops), 0x3FE, "all 9 operations");
    let features = rig.dev.transport().device_features();
    let want = (1 << VIRTIO_ACCEL_F_OBJECTS)
        | (1 << VIRTIO_ACCEL_F_FENCES)
        | (1 << 28) // INDIRECT_DESC
        | (1 << 29) // EVENT_IDX
        | (1 << 32); // VERSION_1
    assert_eq!(features, want, "offered features {features:#x}");
    assert_eq!(features & (1 << VIRTIO_F_IN_ORDER), 0);
    assert!(rig.daemon.socket().exists());
}

#[test]
fn config_matches_a_custom_configuration() {
    let limits = Limits {
        max_segments: 33,
        max_deps: 5,
        max_objects: 17,
        max_object_size: 3 << 20,
        max_buffer_size: 5 << 20,
    };
    let Some(daemon) = custom_daemon("config_matches_a_custom_configuration", |config| {
        config.request_queues = 3;
        config.queue_size = 128;
        config.limits = limits;
    }) else {
        return;
    };
    let mut rig = Rig::with(daemon, guest_ram(16));
    let config = *rig.dev.config();
    let want = VirtioAccelConfig {
        num_request_queues: 3.into(),
        ops: Op::all_capabilities().into(),
        max_segments: 33.into(),
        max_deps: 5.into(),
        max_objects: 17.into(),
        max_inflight: 128.into(),
        max_object_size: (3u64 << 20).into(),
        max_buffer_size: (5u64 << 20).into(),
    };
    assert_eq!(config, want);
    assert_eq!(rig.dev.num_request_queues(), 3);
    assert_eq!(rig.dev.transport().max_queues(), 4, "GET_QUEUE_NUM");

    // GET_CONFIG of each field at its offset.
    let bytes = want.as_slice().to_vec();
    for (offset, size) in [
        (0, 4),
        (4, 4),
        (8, 4),
        (12, 4),
        (16, 4),
        (20, 4),
        (24, 8),
        (32, 8),
    ] {
        let mut buf = vec![0; size];
        rig.dev
            .transport_mut()
            .read_config(u32::try_from(offset).unwrap(), &mut buf)
            .unwrap();
        assert_eq!(buf, bytes[offset..offset + size], "config at {offset}");
    }

    // Every request queue works; fence numbers are per queue.
    let buf = rig.mem.alloc(100).unwrap();
    for q in 0..3 {
        let done = rig.dev.run(q, &small_crc(&buf)).unwrap().check().unwrap();
        assert_eq!(done.fence(), Fence::new(q, 1));
    }
    // FENCE_QUERY of a queue beyond the configured ones: NoFence.
    assert_eq!(
        control_status(rig.dev.query_fence(Fence::new(3, 1))),
        Status::NoFence
    );
    // The limits are the ones enforced.
    let done = rig
        .dev
        .run(0, &small_crc(&buf).deps(vec![Fence::new(2, 1); 6]))
        .unwrap();
    assert_rejected(&done, Status::Limit, "6 dependencies");
    let segs: Vec<(u64, u64)> = (0..34).map(|i| (buf.gpa() + i, 1)).collect();
    assert_eq!(control_status(rig.dev.create_object(&segs)), Status::Limit);
    rig.dev.create_object(&segs[..33]).unwrap();
    let big = rig.mem.alloc((5 << 20) + 1).unwrap();
    let done = crc_of(&rig.dev, Buffer::direct(&big));
    assert_rejected(&done, Status::Limit, "buffer over max_buffer_size");
    let done = crc_of(
        &rig.dev,
        Buffer::Direct {
            gpa: big.gpa(),
            len: 5 << 20,
        },
    );
    done.check().unwrap();
    assert_eq!(
        control_status(rig.dev.create_object(&[(big.gpa(), (3 << 20) + 1)])),
        Status::Limit
    );
}

// ---------------------------------------------------------------------------
// 8. Polling.

/// Lone requests one after another: with polling on, the device takes some
/// by polling its request rings after the last completion, without waiting
/// for the kick (`polls_total`), and each completes with the right CRC; with
/// polling off it never polls. (Whether a given request is taken by a poll
/// depends on timing, so the test asks for some out of many, which a device
/// that polls gets on any machine.)
#[test]
fn lone_requests_are_taken_by_polling_when_it_is_on() {
    const REQUESTS: usize = 400;
    for poll_us in [1000, 0] {
        let test = "lone_requests_are_taken_by_polling_when_it_is_on";
        let Some(daemon) = custom_daemon(test, |config| config.poll_us = poll_us) else {
            return;
        };
        let rig = Rig::with(daemon, guest_ram(RAM_MIB));
        let input = rig.mem.alloc(4096).unwrap();
        rig.mem.fill_at(input.gpa(), 4096, 0x5a).unwrap();
        let want = reference::crc32c(0, &[0x5a; 4096]);
        for _ in 0..REQUESTS {
            let done = crc_of(&rig.dev, Buffer::direct(&input)).check().unwrap();
            assert_eq!(done.result_u32(), want);
        }
        let polls = rig.daemon.stats().unwrap().polled_count();
        if poll_us == 0 {
            assert_eq!(polls, 0, "polling is off");
        } else {
            assert!(polls > 0, "no poll took a request in {REQUESTS}");
        }
    }
}

/// A ring the front-end disabled is not served by polls either: its kick is
/// ignored, and a request made available on it stays there, while the
/// worker polls after that kick, until the ring is enabled again.
#[test]
fn polling_never_takes_from_a_disabled_ring() {
    let test = "polling_never_takes_from_a_disabled_ring";
    let Some(daemon) = custom_daemon(test, |config| config.poll_us = 1000) else {
        return;
    };
    let Rig {
        daemon,
        mem,
        dev: mut device,
    } = Rig::with(daemon, guest_ram(RAM_MIB));
    let input = mem.alloc(4096).unwrap();
    let request = Request::new(Op::Crc32c).input(Buffer::direct(&input));
    // Lone requests open the polling window.
    for _ in 0..200 {
        device.run(0, &request).unwrap().check().unwrap();
    }
    let stats = daemon.stats().unwrap();
    assert!(stats.polled_count() > 0, "the window never opened");
    // Virtqueue 1 is request queue 0.
    let frontend = device.transport_mut().frontend();
    frontend.set_vring_enable(1, false).unwrap();
    let polls = stats.polled_count();
    device.submit(0, &request, 7).unwrap();
    device.flush(0).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        device.poll(0).unwrap().is_empty(),
        "a disabled ring was served"
    );
    assert_eq!(stats.polled_count(), polls, "a disabled ring was polled");
    device
        .transport_mut()
        .frontend()
        .set_vring_enable(1, true)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let done = loop {
        // Kicks while disabled were dropped: kick again.
        device.flush(0).unwrap();
        device.transport_mut().notify(1).unwrap();
        if let Some(done) = device.poll(0).unwrap().pop() {
            break done;
        }
        assert!(Instant::now() < deadline, "the request never completed");
        std::thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(done.token, 7);
    done.check().unwrap();
}

/// An object whose memory udmabuf cannot take stays plain guest memory,
/// works as ever, and its reason is counted (spec §7.1.3). This guest RAM
/// is a memfd not sealed against shrinking: where this process can open
/// `/dev/udmabuf` (as the in-process daemon then does), a page-aligned
/// object is `unsealed` and one off a page boundary `unaligned`; elsewhere
/// (the CI machines have no udmabuf) both are `no_device`. Real dma-bufs
/// are made and used in `tests/vm_dmabuf.rs`.
#[test]
fn objects_that_are_not_dma_bufs_are_counted_by_reason() {
    use vhost_user_accel::dmabuf::Fallback;
    let test = "objects_that_are_not_dma_bufs_are_counted_by_reason";
    let Some(daemon) = custom_daemon(test, |_| {}) else {
        return;
    };
    let rig = Rig::with(daemon, guest_ram(RAM_MIB));
    let stats = rig.daemon.stats().unwrap();
    let udmabuf = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/udmabuf")
        .is_ok();
    let expected_reasons = if udmabuf {
        [Fallback::Unsealed, Fallback::Unaligned]
    } else {
        [Fallback::NoDevice, Fallback::NoDevice]
    };
    let page = rig.mem.alloc_pages(2 * PAGE).unwrap();
    let data = TestRng::new(test).data(2 * PAGE);
    rig.mem.write_at(page.gpa(), &data).unwrap();
    let counts = || Fallback::ALL.map(|reason| stats.dmabuf_fallbacks(reason));
    let mut expected = counts();
    let segments = [(page.gpa(), 2 * PAGE as u64), (page.gpa() + 1, 100)];
    let mut handles = Vec::new();
    for (segment, reason) in segments.iter().zip(expected_reasons) {
        handles.push(rig.dev.create_object(&[*segment]).unwrap());
        expected[reason.index()] += 1;
        assert_eq!(counts(), expected, "fallbacks by reason after {segment:x?}");
    }
    assert_eq!(stats.dmabuf_objects(), 0);
    let done = crc_of(&rig.dev, Buffer::object(handles[0], 0, 2 * PAGE as u64));
    assert_eq!(
        done.check().unwrap().result_u32(),
        reference::crc32c(0, &data)
    );
}
