// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! A tenant's process SIGKILLed again and again, at random points of a mixed
//! workload, is each time only a pause for the guest (spec §11.3): every
//! request completes exactly once, with status Ok, the right output and
//! result, and the fence its position in the ring gave it; no fence number
//! completes twice; numbering goes on across kills and starts from 1 after a
//! device reset; objects keep their handles and their bytes, and an object
//! command that a kill interrupted answers as it would have.
//!
//! Each test drives one tenant with one harness device (the front-end
//! playing stock QEMU or cloud-hypervisor v53, which start the rings again
//! at different indexes after a crash) through batches of 1 to 16 requests
//! over request queues 0 and 1: FILL, COPY, COMPARE, CRC-32C, SHA-256,
//! AES-256-GCM seal, deflate compression and decompression, some of them
//! reading the output of a request of the same or the other queue through a
//! dependency on its fence. Inputs and outputs are direct buffers or ranges
//! of objects (§6.3), often across segment boundaries: a pool of up to
//! [`MAX_OBJECTS`] objects of 1 to 3 segments each, at unaligned addresses of
//! guest memory kept for them ([`Arena`]), which the test creates and
//! destroys between batches and while batches run. Now and then it destroys
//! an object that the batch uses once FENCE_QUERY said that every request of
//! the batch naming it was taken (§7.2), before or after the batch's kill:
//! kills then land while destroyed objects are in use, by requests that may
//! run again after the kill and must still find them.
//!
//! Kills land after a random delay behind the last flush, just after the
//! first completion, between the submissions of a batch, while the device is
//! idle, twice before the VMM reconnects, again just after it reconnected
//! (while the device resumes), while an OBJECT_CREATE or OBJECT_DESTROY is
//! in flight, while the front-end sends the memory table again with a batch
//! in flight (as a VMM does when memory is plugged), and while the driver
//! resets the device. Each kind is a random choice of the plan; the last
//! two are forced once half of the kills are done if they have not
//! happened yet, and a test of [`COVERAGE_KILLS`] kills or more in which
//! one never happened fails.
//!
//! The harness's `create_object` and `destroy_object` cannot live through a
//! kill: they wait for the answer until the device's timeout, reconnecting
//! needs the device to itself, and an answer that comes after the timeout
//! is dropped. So those commands go as chains of the test's own on the
//! control queue ([`Run::control_across_kill`]): published and kicked, the
//! kill after a delay of 0 to about 2 ms, the reconnection, then the answer
//! read from the used ring. A create must answer Ok with a handle that no
//! other live object has and that reads the object's bytes (at once between
//! batches, else after the batch); a destroy must answer Ok, and its handle
//! is then gone. Now and then the driver resets the device between batches,
//! which ends every object.
//!
//! A memory table ([`Run::mem_table_across_kill`]) and a reset
//! ([`Run::reset_across_kill`]) are killed from another thread, 0 to about
//! 2 ms after the main thread began them; they may then fail, but a failure
//! that came before the kill fails the test. After the memory table the VMM
//! reconnects, and the batch completes as after any kill. After a reset the
//! device must be as just reset (fences from 1, no object), whether the
//! reset went through before the kill (the VMM then reconnects) or broke
//! (the VMM connects anew and the driver opens the device again).
//!
//! After each batch the test checks that every object of the pool holds
//! its bytes (the device's CRC-32C of the whole object is the host's), that
//! every handle destroyed since the last batch answers NoObject to a request
//! and to OBJECT_DESTROY, that no control command was answered twice, that
//! the daemon's `objects` and `object_bytes` gauges count exactly the pool
//! (no object lost, none created twice, none kept after its last use), and
//! that the daemon's log shows no refused resume (but see
//! [`Run::check_log`]), no process that ended otherwise than by the test's
//! SIGKILL, and no restart pause past the configured `max-restart-pause-ms`.
//!
//! The plan (batches, operations, sizes, objects, delays, kinds of kill)
//! comes from a seed, printed at the start; `KILLS_SEED=0x…` replays it (the
//! kills still race with the device, so a replay is likely, not certain, to
//! fail the same way). `KILLS_COUNT` sets the number of kills (200 by
//! default: three fifths under the QEMU model, the rest under
//! cloud-hypervisor's). A failure names the seed, the kill and the batch,
//! with the last events and the end of the daemon's log.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Display;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use accel_driver::{
    Buffer, Completion, Device, DmaBuf, DmaMemory, FrontendModel, OpenOptions, Request,
    VhostUserOptions, VhostUserTransport,
};
use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use sha2::Digest;
use virtio_accel_spec::op::COMPARE_EQUAL;
use virtio_accel_spec::request::RESULT_SIZE;
use virtio_accel_spec::{
    AesGcmParams, ControlCommand, Crc32cParams, CtrlReq, CtrlResp, DeflateFormat, DeflateParams,
    Fence, FillParams, MemSeg, Op, Status, CONTROL_QUEUE,
};
use vm_memory::ByteValued;

use support::{kill, Setup, Supervisor, PATIENCE};

/// Kills of both tests together unless `KILLS_COUNT` says otherwise.
const DEFAULT_KILLS: usize = 200;
/// Guest memory of the harness device.
const MEMORY: usize = 64 << 20;
/// Most bytes of buffers one batch allocates.
const BATCH_BYTES: usize = 40 << 20;
/// Requests of a batch, at most.
const MAX_BATCH: usize = 16;
/// How long after a batch completed a completion would be a duplicate.
const STRAY_WAIT: Duration = Duration::from_millis(50);
/// The byte the device must leave alone after an output's written prefix.
const CANARY: u8 = 0xc5;
/// Events kept for a failure's report.
const TRACE: usize = 40;
/// The daemon's `max-restart-pause-ms`: every restart waits that long.
const RESTART_PAUSE_MS: u64 = 20;
/// Live objects of the pool, at most.
const MAX_OBJECTS: usize = 8;
/// Slots of the [`Arena`]: each segment of an object takes one.
const ARENA_SLOTS: usize = 32;
/// How often in a hundred an input or output is a range of an object.
const OBJECT_PERCENT: usize = 30;
/// How often in a hundred an object command goes with a kill.
const CONTROL_KILL_PERCENT: usize = 20;
/// Tokens of the test's own control chains (their own counter from here).
const CONTROL_TOKENS: u64 = 1 << 62;
/// How long the daemon's gauges may lag behind what they count.
const GAUGE_PATIENCE: Duration = Duration::from_secs(5);
/// How often in a hundred the driver resets the device after a batch, and
/// how often it does so while the tenant's process is killed.
const RESET_PERCENT: usize = 5;
const RESET_KILL_PERCENT: usize = 8;
/// Timeout of the driver's commands while it opens the device across a
/// kill: cloud-hypervisor's model asks for the capabilities with a control
/// command (§7.5), whose answer a kill loses.
const REOPEN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the process that follows a kill during a reset may take to say
/// whether it resumed the device.
const VERDICT_WAIT: Duration = Duration::from_millis(200);
/// Kills of one test from which each kind of kill must have happened (the
/// plan forces a kind still missing once half of them are done).
const COVERAGE_KILLS: usize = 20;

type AccelDevice = Device<VhostUserTransport>;

/// SplitMix64: small, fast, and the same sequence on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap()
    }

    /// True `percent` times in a hundred.
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn byte(&mut self) -> u8 {
        self.next().to_le_bytes()[0]
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0; N];
        self.fill(&mut out);
        out
    }

    fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let bytes = self.next().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }

    /// `len` random bytes.
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = vec![0; len];
        self.fill(&mut out);
        out
    }

    /// `len` bytes that compress: words of a small vocabulary, with now and
    /// then a random byte.
    fn text(&mut self, len: usize) -> Vec<u8> {
        const WORDS: [&[u8]; 8] = [
            b"fence ",
            b"virtqueue ",
            b"resume ",
            b"kill ",
            b"tenant ",
            b"ring ",
            b"\n",
            b"0x",
        ];
        let mut out = Vec::with_capacity(len + 16);
        while out.len() < len {
            if self.chance(5) {
                out.push(self.byte());
            } else {
                out.extend_from_slice(WORDS[self.below(WORDS.len())]);
            }
        }
        out.truncate(len);
        out
    }

    /// A delay before a kill: mostly short, so that kills land while the
    /// device takes, runs and completes the batch.
    fn delay(&mut self) -> Duration {
        let micros = match self.below(10) {
            0..=3 => self.below(1_000),
            4..=6 => 1_000 + self.below(4_000),
            _ => 5_000 + self.below(15_000),
        };
        Duration::from_micros(micros as u64)
    }

    /// A delay of 0 to about 2 ms before a kill that races a message or a
    /// command: the kill lands before the device saw it, while it handles
    /// it, or after it answered.
    fn brief_delay(&mut self) -> Duration {
        match self.below(4) {
            0 => Duration::ZERO,
            1 | 2 => Duration::from_micros(self.below(150) as u64),
            _ => Duration::from_micros(150 + self.below(2_000) as u64),
        }
    }
}

/// Sizes of the data of one request.
struct Sizes {
    /// Largest input of the cheap operations.
    big: usize,
    /// Largest input of AES-GCM and deflate.
    costly: usize,
    /// Largest segment of an object (the size of a slot of the [`Arena`]).
    segment: usize,
}

impl Sizes {
    fn new() -> Self {
        // The daemon is built in the tests' profile: without optimisations
        // its digests, ciphers and deflate are many times slower.
        let scale = if cfg!(debug_assertions) { 16 } else { 1 };
        Sizes {
            big: (4 << 20) / scale,
            costly: (512 << 10) / scale,
            segment: (256 << 10) / scale.min(8),
        }
    }

    /// Mostly small, sometimes up to `max`.
    fn pick(rng: &mut Rng, max: usize) -> usize {
        let bound = match rng.below(10) {
            0..=4 => 4096,
            5..=7 => 64 << 10,
            _ => max,
        };
        1 + rng.below(bound.min(max))
    }
}

/// What a completed request must show.
struct Expect {
    /// The request, for messages.
    what: String,
    /// `result`, all of it.
    result: [u8; RESULT_SIZE],
    /// `bytes_written`, when the test knows it in advance.
    bytes_written: Option<u64>,
    /// Its output, if it has one.
    output: Option<Output>,
}

/// The output buffer of a request and what it must hold.
struct Output {
    target: Target,
    check: OutputCheck,
}

/// Where a request writes its output.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// A buffer of the batch, by index.
    Direct(usize),
    /// Bytes `offset..offset + len` of the object with test id `id`.
    Object {
        id: u64,
        handle: u32,
        offset: usize,
        len: usize,
    },
}

/// One segment of an object: a slot of the [`Arena`], and where in it.
#[derive(Debug, Clone, Copy)]
struct Segment {
    slot: usize,
    gpa: u64,
    len: usize,
}

/// An object of the pool, and the bytes it must hold.
struct Obj {
    /// The test's own name for it: handles may come again (§7.2).
    id: u64,
    handle: u32,
    segments: Vec<Segment>,
    /// Its bytes as the test wrote them and completed requests left them.
    data: Vec<u8>,
}

impl Obj {
    /// The pieces of bytes `offset..offset + len` of the object: where each
    /// lies in guest memory, its length, and where it starts in the range.
    fn pieces(&self, offset: usize, len: usize) -> Vec<(u64, usize, usize)> {
        let end = offset + len;
        let mut pieces = Vec::new();
        let mut start = 0;
        for segment in &self.segments {
            let segment_end = start + segment.len;
            let (from, to) = (offset.max(start), end.min(segment_end));
            if from < to {
                let gpa = segment.gpa + (from - start) as u64;
                pieces.push((gpa, to - from, from - offset));
            }
            start = segment_end;
        }
        pieces
    }

    /// Writes `bytes` at `offset`, in guest memory and in what it must hold.
    fn write(&mut self, memory: &DmaMemory, offset: usize, bytes: &[u8]) {
        for (gpa, len, at) in self.pieces(offset, bytes.len()) {
            memory.write_at(gpa, &bytes[at..at + len]).unwrap();
        }
        self.data[offset..offset + bytes.len()].copy_from_slice(bytes);
    }

    /// Bytes `offset..offset + len` as guest memory holds them.
    fn read(&self, memory: &DmaMemory, offset: usize, len: usize) -> Result<Vec<u8>, String> {
        let mut out = vec![0; len];
        for (gpa, piece, at) in self.pieces(offset, len) {
            ctx(
                memory.read_at(gpa, &mut out[at..at + piece]),
                format_args!("reading object {}", self.handle),
            )?;
        }
        Ok(out)
    }

    /// `(gpa, len)` of every segment, as OBJECT_CREATE takes them.
    fn pairs(&self) -> Vec<(u64, u64)> {
        self.segments
            .iter()
            .map(|s| (s.gpa, s.len as u64))
            .collect()
    }
}

/// Guest memory for the segments of objects, which outlive batches: one
/// allocation cut into [`ARENA_SLOTS`] slots, so that objects do not break
/// up the memory that batches allocate.
struct Arena {
    buf: DmaBuf,
    slot: usize,
    free: Vec<usize>,
}

impl Arena {
    fn new(memory: &DmaMemory, slot: usize) -> Arena {
        Arena {
            buf: memory.alloc(ARENA_SLOTS * slot).unwrap(),
            slot,
            free: (0..ARENA_SLOTS).collect(),
        }
    }

    /// A free slot, at random.
    fn take(&mut self, rng: &mut Rng) -> usize {
        let at = rng.below(self.free.len());
        self.free.swap_remove(at)
    }

    fn gpa(&self, slot: usize) -> u64 {
        self.buf.gpa() + (slot * self.slot) as u64
    }

    /// Frees the slots of `object`, whose memory the device no longer uses.
    fn release(&mut self, object: &Obj) {
        self.free.extend(object.segments.iter().map(|s| s.slot));
    }
}

enum OutputCheck {
    /// These bytes, then the canary up to the end of the buffer.
    Bytes(Vec<u8>),
    /// A stream of this format that decodes to these bytes, then the canary.
    Inflates(DeflateFormat, Vec<u8>),
}

/// One request of a batch.
struct Planned {
    token: u64,
    queue: u16,
    /// Submission round: requests that name a fence of another queue wait
    /// until it was issued, in a later round (§6.2).
    round: usize,
    request: Request,
    /// The request of the batch whose output it reads, after its fence.
    producer: Option<usize>,
    expect: Expect,
    /// The fence `submit` predicted.
    fence: Option<Fence>,
    /// Test ids of the objects it names.
    uses: Vec<u64>,
}

/// A batch: its buffers and requests.
struct Batch {
    bufs: Vec<DmaBuf>,
    requests: Vec<Planned>,
    /// Token of the first request.
    first_token: u64,
}

/// Where a batch gets its kill.
#[derive(Debug, Clone, Copy)]
enum KillPoint {
    /// None while it runs.
    None,
    /// After a delay behind the last flush.
    AfterFlush(Duration),
    /// After a delay behind the first completion.
    AfterFirst(Duration),
    /// After a delay (0 to about 2 ms) behind the start of a new memory
    /// table, which the front-end sends with the batch in flight.
    DuringMemTable(Duration),
}

/// Builds the requests of one batch.
struct Planner<'a> {
    rng: &'a mut Rng,
    memory: &'a DmaMemory,
    sizes: &'a Sizes,
    /// The pool: requests read and write ranges of its objects.
    objects: &'a mut [Obj],
    batch: Batch,
    bytes: usize,
    /// Per request: where its output is and the bytes it holds once the
    /// request completed, if known.
    produced: Vec<Option<(Target, Vec<u8>)>>,
    /// Per object (by test id): the ranges requests of the batch use, and
    /// whether one holds them alone (written by the device, or by the test
    /// for an input), so that no request reads bytes another one writes
    /// unless a dependency orders them, and none writes its own input.
    busy: HashMap<u64, Vec<(usize, usize, bool)>>,
    /// Objects the request being planned names.
    uses: Vec<u64>,
}

impl Planner<'_> {
    /// A buffer of `len` bytes holding `data` (or filled with `fill`).
    fn buf(&mut self, len: usize, data: Option<&[u8]>, fill: u8) -> usize {
        let buf = self.memory.alloc(len).unwrap();
        self.memory.fill(&buf, fill).unwrap();
        if let Some(data) = data {
            self.memory.write(&buf, 0, data).unwrap();
        }
        self.bytes += len;
        self.batch.bufs.push(buf);
        self.batch.bufs.len() - 1
    }

    fn direct(&self, buf: usize) -> Buffer {
        Buffer::direct(&self.batch.bufs[buf])
    }

    fn size(&mut self, max: usize) -> usize {
        let room = BATCH_BYTES.saturating_sub(self.bytes) / 4;
        Sizes::pick(self.rng, max.min(room.max(64)))
    }

    /// Claims bytes `offset..offset + len` of object `index` for a request:
    /// false if another request of the batch holds them alone, or if `alone`
    /// and another one uses them at all.
    fn claim(&mut self, index: usize, offset: usize, len: usize, alone: bool) -> bool {
        let ranges = self.busy.entry(self.objects[index].id).or_default();
        let end = offset + len;
        let clash = ranges
            .iter()
            .any(|&(from, to, held)| offset < to && from < end && (alone || held));
        if !clash {
            ranges.push((offset, end, alone));
            self.uses.push(self.objects[index].id);
        }
        !clash
    }

    /// A range of `len` bytes of some object of the pool, claimed (see
    /// [`Planner::claim`]): the object's index and the offset.
    fn object_range(&mut self, len: usize, alone: bool) -> Option<(usize, usize)> {
        for _ in 0..4 {
            if self.objects.is_empty() {
                return None;
            }
            let index = self.rng.below(self.objects.len());
            let size = self.objects[index].data.len();
            if size < len {
                continue;
            }
            let offset = self.rng.below(size - len + 1);
            if self.claim(index, offset, len, alone) {
                return Some((index, offset));
            }
        }
        None
    }

    /// An input holding `data`: a buffer of the batch or, now and then, a
    /// range of an object, written now.
    fn input(&mut self, data: &[u8]) -> Buffer {
        if self.rng.chance(OBJECT_PERCENT) {
            if let Some((index, offset)) = self.object_range(data.len(), true) {
                let object = &mut self.objects[index];
                object.write(self.memory, offset, data);
                return Buffer::object(object.handle, offset as u64, data.len() as u64);
            }
        }
        let buf = self.buf(data.len(), Some(data), 0);
        self.direct(buf)
    }

    /// An input of up to `max` bytes of any value: now and then bytes an
    /// object holds already, else new random ones (see [`Planner::input`]).
    fn any_input(&mut self, max: usize) -> (Buffer, Vec<u8>) {
        if !self.objects.is_empty() && self.rng.chance(OBJECT_PERCENT) {
            let index = self.rng.below(self.objects.len());
            let size = self.objects[index].data.len();
            // Often long, so that it spans segments.
            let len = if self.rng.chance(50) {
                1 + self.rng.below(size.min(max))
            } else {
                Sizes::pick(self.rng, size.min(max))
            };
            let offset = self.rng.below(size - len + 1);
            if self.claim(index, offset, len, false) {
                let object = &self.objects[index];
                let data = object.data[offset..offset + len].to_vec();
                return (
                    Buffer::object(object.handle, offset as u64, len as u64),
                    data,
                );
            }
        }
        let n = self.size(max);
        let data = self.rng.bytes(n);
        (self.input(&data), data)
    }

    /// An output of `len` bytes, filled with `fill` until the request
    /// writes it: a buffer of the batch or, now and then, a range of an
    /// object.
    fn output(&mut self, len: usize, fill: u8) -> Target {
        if self.rng.chance(OBJECT_PERCENT) {
            if let Some((index, offset)) = self.object_range(len, true) {
                let object = &mut self.objects[index];
                object.write(self.memory, offset, &vec![fill; len]);
                return Target::Object {
                    id: object.id,
                    handle: object.handle,
                    offset,
                    len,
                };
            }
        }
        Target::Direct(self.buf(len, None, fill))
    }

    /// The buffer reference of an output.
    fn target(&self, target: Target) -> Buffer {
        match target {
            Target::Direct(buf) => self.direct(buf),
            Target::Object {
                handle,
                offset,
                len,
                ..
            } => Buffer::object(handle, offset as u64, len as u64),
        }
    }

    /// Adds a request with `token`: one reading the output of an earlier
    /// request of the batch, or one of its own.
    fn add(&mut self, token: u64) {
        let queue = u16::try_from(self.rng.below(2)).unwrap();
        let producers: Vec<usize> = (0..self.produced.len())
            .filter(|&i| self.produced[i].is_some())
            .collect();
        if !producers.is_empty() && self.rng.chance(30) {
            let producer = producers[self.rng.below(producers.len())];
            self.consumer(token, queue, producer);
        } else {
            self.independent(token, queue);
        }
    }

    /// A request of its own.
    fn independent(&mut self, token: u64, queue: u16) {
        let big = self.sizes.big;
        let costly = self.sizes.costly;
        let (request, expect, produced) = match self.rng.below(8) {
            0 => {
                let n = self.size(big);
                let pattern = self.rng.byte();
                let out = self.output(n, !pattern);
                let bytes = vec![pattern; n];
                let request = Request::new(Op::Fill)
                    .params(&FillParams {
                        pattern,
                        ..FillParams::default()
                    })
                    .output(self.target(out));
                let expect = expect(format!("FILL {n} B with {pattern:#x}"))
                    .written(n)
                    .output(out, OutputCheck::Bytes(bytes.clone()));
                (request, expect, Some((out, bytes)))
            }
            1 => {
                let (input, data) = self.any_input(big);
                let n = data.len();
                let extra = self.rng.below(65);
                let out = self.output(n + extra, CANARY);
                let request = Request::new(Op::Copy).input(input).output(self.target(out));
                let expect = expect(format!("COPY {n} B into {} B", n + extra))
                    .written(n)
                    .output(out, OutputCheck::Bytes(data.clone()));
                (request, expect, Some((out, data)))
            }
            2 => {
                let (input, data) = self.any_input(big);
                let seed = if self.rng.chance(50) {
                    0
                } else {
                    u32::from_le_bytes(self.rng.array())
                };
                (crc_request(seed, input), crc_expect(seed, &data), None)
            }
            3 => {
                let (input, data) = self.any_input(big);
                (sha_request(input), sha_expect(&data), None)
            }
            4 => {
                let (a_input, a) = self.any_input(big);
                let n = a.len();
                let (b, answer) = match self.rng.below(3) {
                    0 => (a.clone(), COMPARE_EQUAL),
                    1 => {
                        let at = self.rng.below(n);
                        let mut b = a.clone();
                        b[at] ^= 1 << self.rng.below(8);
                        (b, at as u64)
                    }
                    _ => {
                        let short = self.rng.below(n);
                        (a[..short.max(1)].to_vec(), short.max(1) as u64)
                    }
                };
                let b_input = self.input(&b);
                let answer = if b.len() == n && b == a {
                    COMPARE_EQUAL
                } else {
                    answer
                };
                let request = Request::new(Op::Compare).input(a_input).input(b_input);
                let expect = expect(format!("COMPARE {n} B with {} B", b.len()))
                    .result(&answer.to_le_bytes())
                    .written(0);
                (request, expect, None)
            }
            5 => {
                let (plain_input, plain) = self.any_input(costly);
                let n = plain.len();
                let aad_len = 1 + self.rng.below(48);
                let aad = self.rng.bytes(aad_len);
                let key: [u8; 32] = self.rng.array();
                let iv: [u8; 12] = self.rng.array();
                let mut cipher = plain.clone();
                let tag = Aes256Gcm::new(&key.into())
                    .encrypt_in_place_detached(Nonce::from_slice(&iv), &aad, &mut cipher)
                    .unwrap();
                let aad_input = self.input(&aad);
                let extra = self.rng.below(33);
                let out = self.output(n + extra, CANARY);
                let request = Request::new(Op::AesGcmSeal)
                    .params(&AesGcmParams {
                        key,
                        iv,
                        ..AesGcmParams::default()
                    })
                    .input(aad_input)
                    .input(plain_input)
                    .output(self.target(out));
                let expect = expect(format!("AES-GCM seal of {n} B, aad {} B", aad.len()))
                    .result(tag.as_slice())
                    .written(n)
                    .output(out, OutputCheck::Bytes(cipher.clone()));
                (request, expect, Some((out, cipher)))
            }
            6 => {
                let n = self.size(costly);
                let data = self.rng.text(n);
                let format = DeflateFormat::ALL[self.rng.below(DeflateFormat::ALL.len())];
                let level = u8::try_from(self.rng.below(10)).unwrap();
                let input = self.input(&data);
                let out = self.output(n + n / 8 + 1024, CANARY);
                let request = Request::new(Op::DeflateCompress)
                    .params(&DeflateParams {
                        format: format.into(),
                        level,
                        ..DeflateParams::default()
                    })
                    .input(input)
                    .output(self.target(out));
                let expect = expect(format!("deflate {n} B, {format:?} level {level}"))
                    .output(out, OutputCheck::Inflates(format, data));
                (request, expect, None)
            }
            _ => {
                let n = self.size(costly);
                let data = self.rng.text(n);
                let format = DeflateFormat::ALL[self.rng.below(DeflateFormat::ALL.len())];
                let level = u32::try_from(self.rng.below(10)).unwrap();
                let packed = compress(format, level, &data);
                let input = self.input(&packed);
                let extra = self.rng.below(65);
                let out = self.output(n + extra, CANARY);
                let request = Request::new(Op::DeflateDecompress)
                    .params(&DeflateParams {
                        format: format.into(),
                        ..DeflateParams::default()
                    })
                    .input(input)
                    .output(self.target(out));
                let what = format!(
                    "inflate {} B ({format:?}) into {} B",
                    packed.len(),
                    n + extra
                );
                let expect = expect(what)
                    .result(&(packed.len() as u64).to_le_bytes())
                    .written(n)
                    .output(out, OutputCheck::Bytes(data.clone()));
                (request, expect, Some((out, data)))
            }
        };
        self.push(token, queue, request, expect, produced, None);
    }

    /// A request that reads the output of request `producer`, after its fence.
    fn consumer(&mut self, token: u64, queue: u16, producer: usize) {
        let (source, data) = self.produced[producer].clone().unwrap();
        let n = data.len();
        let input = match source {
            Target::Direct(buf) => Buffer::direct_range(&self.batch.bufs[buf], 0, n).unwrap(),
            Target::Object {
                id, handle, offset, ..
            } => {
                // The producer holds these bytes; the dependency orders them.
                self.uses.push(id);
                Buffer::object(handle, offset as u64, n as u64)
            }
        };
        let of = format!("the output of request {producer}");
        let (request, expect, produced) = match self.rng.below(3) {
            0 => {
                let out = self.output(n, CANARY);
                let request = Request::new(Op::Copy).input(input).output(self.target(out));
                let expect = expect(format!("COPY of {of}, {n} B"))
                    .written(n)
                    .output(out, OutputCheck::Bytes(data.clone()));
                (request, expect, Some((out, data)))
            }
            1 => (sha_request(input), sha_expect(&data).on(&of), None),
            _ => (crc_request(0, input), crc_expect(0, &data).on(&of), None),
        };
        self.push(token, queue, request, expect, produced, Some(producer));
    }

    fn push(
        &mut self,
        token: u64,
        queue: u16,
        request: Request,
        expect: Expect,
        produced: Option<(Target, Vec<u8>)>,
        producer: Option<usize>,
    ) {
        let mut uses = std::mem::take(&mut self.uses);
        uses.sort_unstable();
        uses.dedup();
        let mut planned = Planned {
            token,
            queue,
            round: 0,
            request,
            producer,
            expect,
            fence: None,
            uses,
        };
        if let Some(producer) = producer {
            let source = &self.batch.requests[producer];
            // A fence of another queue may be named only once it was
            // issued (§6.2): in a later round, after FENCE_QUERY says so.
            planned.round = source.round + usize::from(source.queue != queue);
            planned.expect.what += &format!(" (queue {queue} after queue {})", source.queue);
        }
        if !planned.uses.is_empty() {
            let handles: Vec<String> = planned
                .uses
                .iter()
                .filter_map(|id| self.objects.iter().find(|o| o.id == *id))
                .map(|o| o.handle.to_string())
                .collect();
            planned.expect.what += &format!(" [objects {}]", handles.join(", "));
        }
        self.batch.requests.push(planned);
        self.produced.push(produced);
    }
}

fn expect(what: String) -> Expect {
    Expect {
        what,
        result: [0; RESULT_SIZE],
        bytes_written: None,
        output: None,
    }
}

impl Expect {
    fn result(mut self, bytes: &[u8]) -> Self {
        self.result[..bytes.len()].copy_from_slice(bytes);
        self
    }

    fn written(mut self, n: usize) -> Self {
        self.bytes_written = Some(n as u64);
        self
    }

    fn output(mut self, target: Target, check: OutputCheck) -> Self {
        self.output = Some(Output { target, check });
        self
    }

    fn on(mut self, of: &str) -> Self {
        self.what += &format!(" of {of}");
        self
    }
}

fn crc_request(seed: u32, input: Buffer) -> Request {
    Request::new(Op::Crc32c)
        .params(&Crc32cParams {
            seed: seed.into(),
            ..Crc32cParams::default()
        })
        .input(input)
}

fn crc_expect(seed: u32, data: &[u8]) -> Expect {
    expect(format!("CRC-32C of {} B, seed {seed:#x}", data.len()))
        .result(&crc32c::crc32c_append(seed, data).to_le_bytes())
        .written(0)
}

fn sha_request(input: Buffer) -> Request {
    Request::new(Op::Sha256).input(input)
}

fn sha_expect(data: &[u8]) -> Expect {
    expect(format!("SHA-256 of {} B", data.len()))
        .result(&sha2::Sha256::digest(data))
        .written(0)
}

/// `data` compressed by the host's zlib.
fn compress(format: DeflateFormat, level: u32, data: &[u8]) -> Vec<u8> {
    let level = flate2::Compression::new(level);
    match format {
        DeflateFormat::Raw => {
            let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), level);
            encoder.write_all(data).unwrap();
            encoder.finish().unwrap()
        }
        DeflateFormat::Zlib => {
            let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), level);
            encoder.write_all(data).unwrap();
            encoder.finish().unwrap()
        }
        DeflateFormat::Gzip => {
            let mut encoder = flate2::write::GzEncoder::new(Vec::new(), level);
            encoder.write_all(data).unwrap();
            encoder.finish().unwrap()
        }
    }
}

/// `stream` decoded by the host's zlib, or why not.
fn decompress(format: DeflateFormat, stream: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let read = match format {
        DeflateFormat::Raw => flate2::read::DeflateDecoder::new(stream).read_to_end(&mut out),
        DeflateFormat::Zlib => flate2::read::ZlibDecoder::new(stream).read_to_end(&mut out),
        DeflateFormat::Gzip => flate2::read::GzDecoder::new(stream).read_to_end(&mut out),
    };
    read.map(|_| out).map_err(|e| e.to_string())
}

/// `result` with the failure's context.
fn ctx<T, E: Display>(result: Result<T, E>, what: impl Display) -> Result<T, String> {
    result.map_err(|e| format!("{what}: {e}"))
}

/// Runs `action` while another thread SIGKILLs process `pid` after `delay`;
/// returns what `action` returned and when the signal was sent.
fn kill_during<T>(pid: u32, delay: Duration, action: impl FnOnce() -> T) -> (T, Instant) {
    std::thread::scope(|scope| {
        let killer = scope.spawn(move || {
            std::thread::sleep(delay);
            let at = Instant::now();
            kill(pid, libc::SIGKILL);
            at
        });
        let result = action();
        let at = killer
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (result, at)
    })
}

/// Resets `device` (closes it, then opens it again with `options`): fences
/// start from 1, and no object is left.
fn reopen(device: AccelDevice, options: &OpenOptions) -> Result<AccelDevice, String> {
    let transport = ctx(device.close(), "resetting the device")?;
    ctx(
        Device::open_with(transport, options),
        "opening the device after a reset",
    )
}

/// One test's run: the daemon, the device, the plan and what was seen.
struct Run {
    label: &'static str,
    seed: u64,
    rng: Rng,
    supervisor: Supervisor,
    socket: PathBuf,
    options: VhostUserOptions,
    memory: DmaMemory,
    device: Option<AccelDevice>,
    sizes: Sizes,
    /// Kills so far.
    kills: usize,
    /// Batches so far.
    batches: usize,
    requests: usize,
    resets: usize,
    /// Device instances (resets) so far, and the fences completed in each.
    epoch: usize,
    completed_fences: HashSet<(usize, u16, u64)>,
    next_token: u64,
    trace: VecDeque<String>,
    /// How much of the daemon's log was looked at.
    log_seen: usize,
    /// The batch after which the device was last reset.
    reset_at: Option<usize>,
    /// Resumes refused because of a reset (see [`Run::check_log`]).
    overtaken: usize,
    /// Reconnections that failed and were tried again.
    reconnect_retries: usize,
    /// When the first kill since the batch's last completion came, while
    /// the batch had requests in flight.
    killed_at: Option<Instant>,
    /// From such kills to the next completion: the pause the guest saw.
    pauses: Vec<Duration>,
    /// Guest memory of the objects' segments.
    arena: Arena,
    /// The pool: live objects.
    objects: Vec<Obj>,
    /// Objects destroyed during the batch, which its requests may still
    /// use: their memory is freed once it completed.
    retiring: Vec<Obj>,
    /// Handles destroyed since the last look, which must answer NoObject.
    graveyard: Vec<u32>,
    next_object_id: u64,
    next_control_token: u64,
    /// Objects created and destroyed, destroyed while requests used them,
    /// object commands killed in flight, requests naming objects.
    created: usize,
    destroyed: usize,
    destroyed_in_use: usize,
    control_kills: usize,
    /// Object commands killed in flight that the device had not answered
    /// just before the kill.
    control_kills_unanswered: usize,
    object_requests: usize,
    /// The kills the run is for.
    target_kills: usize,
    /// Kills while the front-end sent a memory table, and those in which
    /// the exchange failed (the kill landed before or during it).
    mem_table_kills: usize,
    mem_table_failed: usize,
    reset_kills: ResetKills,
}

/// Kills during a reset of the device, and what the process after each one
/// said of the device it found.
#[derive(Default)]
struct ResetKills {
    count: usize,
    /// Those in which closing or opening the device failed: the VMM
    /// connected anew and the driver opened the device again.
    broken: usize,
    /// The process after the kill resumed the device (the reset had been
    /// recorded), or refused to (it found the state from before the reset
    /// and started afresh), or said neither within [`VERDICT_WAIT`].
    resumed: usize,
    refused: usize,
    silent: usize,
    /// The first line of each verdict.
    examples: Vec<String>,
}

impl Run {
    fn new(label: &'static str, model: FrontendModel, seed: u64) -> Run {
        let supervisor = Supervisor::start_with(
            label,
            1,
            Setup {
                settings: &format!("max-restart-pause-ms = {RESTART_PAUSE_MS}\n"),
                tenant_settings: "queues = 2\n",
                ..Setup::default()
            },
        );
        let socket = supervisor.socket("t0");
        let memory = DmaMemory::new(MEMORY).unwrap();
        let options = VhostUserOptions::of(model);
        let transport = VhostUserTransport::connect_with(&socket, &memory, &options).unwrap();
        let device = Device::open_with(transport, &OpenOptions::default()).unwrap();
        assert_eq!(device.num_request_queues(), 2);
        let sizes = Sizes::new();
        let arena = Arena::new(&memory, sizes.segment);
        Run {
            label,
            seed,
            rng: Rng(seed),
            supervisor,
            socket,
            options,
            memory,
            device: Some(device),
            sizes,
            kills: 0,
            batches: 0,
            requests: 0,
            resets: 0,
            epoch: 0,
            completed_fences: HashSet::new(),
            next_token: 1,
            trace: VecDeque::new(),
            log_seen: 0,
            reset_at: None,
            overtaken: 0,
            reconnect_retries: 0,
            killed_at: None,
            pauses: Vec::new(),
            arena,
            objects: Vec::new(),
            retiring: Vec::new(),
            graveyard: Vec::new(),
            next_object_id: 1,
            next_control_token: CONTROL_TOKENS,
            created: 0,
            destroyed: 0,
            destroyed_in_use: 0,
            control_kills: 0,
            control_kills_unanswered: 0,
            object_requests: 0,
            target_kills: 0,
            mem_table_kills: 0,
            mem_table_failed: 0,
            reset_kills: ResetKills::default(),
        }
    }

    fn device(&self) -> &AccelDevice {
        self.device.as_ref().unwrap()
    }

    fn event(&mut self, text: String) {
        if self.trace.len() == TRACE {
            self.trace.pop_front();
        }
        self.trace.push_back(text);
    }

    /// Panics with `message`, the seed, where the run was, and the end of
    /// the daemon's log.
    fn fail(&self, message: &str) -> ! {
        let log = self.supervisor.log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(60)..].join("\n");
        let trace: Vec<&str> = self.trace.iter().map(String::as_str).collect();
        // The supervisor's directory goes with it: keep the whole log.
        let kept = std::env::temp_dir().join(format!(
            "vhost-user-accel-{}-{:x}.log",
            self.label, self.seed
        ));
        let kept = match std::fs::write(&kept, &log) {
            Ok(()) => format!("the whole log is in {}", kept.display()),
            Err(e) => format!("cannot keep the log in {}: {e}", kept.display()),
        };
        panic!(
            "{}: seed {:#x} (KILLS_SEED={:#x} replays the plan), after kill {} in batch {}: \
             {message}\n--- last events:\n{}\n--- end of the daemon's log ({kept}):\n{tail}",
            self.label,
            self.seed,
            self.seed,
            self.kills,
            self.batches,
            trace.join("\n")
        );
    }

    /// Runs batches until `kills` kills; returns the time taken.
    fn run(&mut self, kills: usize) -> Duration {
        let started = Instant::now();
        self.target_kills = kills;
        while self.kills < kills {
            if let Err(message) = self.batch() {
                self.fail(&message);
            }
        }
        if let Err(message) = self.check_log() {
            self.fail(&message);
        }
        started.elapsed()
    }

    /// Kills the tenant's process (and with `double` the one started after
    /// it, before the VMM could reconnect), then reconnects as the VMM does.
    fn kill_and_reconnect(&mut self, why: &str, double: bool) -> Result<(), String> {
        let pid = self.current_pid()?;
        kill(pid, libc::SIGKILL);
        self.killed(pid, Instant::now(), why);
        self.reconnect_after_kill(pid, double)
    }

    /// Counts and logs the SIGKILL of process `pid`, sent `at`.
    fn killed(&mut self, pid: u32, at: Instant, why: &str) {
        self.killed_at.get_or_insert(at);
        self.kills += 1;
        self.event(format!("kill {}: process {pid}, {why}", self.kills));
    }

    /// After the kill of process `pid` (and with `double` the one started
    /// after it, before the VMM could reconnect), reconnects as the VMM
    /// does; now and then kills again at once, while the device resumes.
    fn reconnect_after_kill(&mut self, pid: u32, double: bool) -> Result<(), String> {
        if double {
            let next = self.next_pid(pid)?;
            kill(next, libc::SIGKILL);
            let why = format!("started after {pid}, before the VMM reconnected");
            self.killed(next, Instant::now(), &why);
        }
        self.reconnect(double)?;
        if self.rng.chance(15) {
            let delay = Duration::from_micros(self.rng.below(5_000) as u64);
            std::thread::sleep(delay);
            let pid = self.current_pid()?;
            kill(pid, libc::SIGKILL);
            let why = format!("{delay:?} after the VMM reconnected");
            self.killed(pid, Instant::now(), &why);
            self.reconnect(false)?;
        }
        Ok(())
    }

    /// Whether a kind of kill that happened `count` times must be forced:
    /// it never happened, and half of the run's kills are done.
    fn overdue(&self, count: usize) -> bool {
        count == 0 && self.kills * 2 >= self.target_kills
    }

    /// Sends the memory table again, as a VMM does when memory is plugged,
    /// with the batch in flight (the device completes the requests it took
    /// before it answers, §11), while another thread SIGKILLs the tenant's
    /// process after `delay`; then reconnects as the VMM does. The exchange
    /// fails where the kill lands first or during it; a failure before the
    /// kill fails the test.
    fn mem_table_across_kill(&mut self, delay: Duration) -> Result<(), String> {
        let pid = self.current_pid()?;
        let device = self.device();
        let ((sent, ended), at) = kill_during(pid, delay, || {
            (device.transport().set_mem_table(), Instant::now())
        });
        let how = match sent {
            Ok(()) => String::from("answered before the kill"),
            Err(e) if ended < at => {
                return Err(format!("SET_MEM_TABLE failed before the kill: {e}"))
            }
            Err(e) => {
                self.mem_table_failed += 1;
                format!("which failed: {e}")
            }
        };
        self.mem_table_kills += 1;
        self.killed(pid, at, &format!("{delay:?} into a SET_MEM_TABLE, {how}"));
        let double = self.rng.chance(10);
        self.reconnect_after_kill(pid, double)
    }

    /// Reconnects as the VMM does. With `raced`, a process was killed while
    /// it waited for a connection, and may have taken this one before it
    /// died (the kernel hands a pending connection over before it looks at
    /// the signal): the VMM then reconnects again.
    fn reconnect(&mut self, raced: bool) -> Result<(), String> {
        let (socket, options) = (self.socket.clone(), self.options.clone());
        let mut attempts = 0;
        loop {
            attempts += 1;
            let device = self.device.as_mut().unwrap();
            match device.transport_mut().reconnect(&socket, &options) {
                Ok(bases) => {
                    self.event(format!("reconnected, rings started at {bases:?}"));
                    return Ok(());
                }
                Err(e) if raced && attempts < 5 => {
                    self.reconnect_retries += 1;
                    self.event(format!("reconnecting failed ({e}), again"));
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(format!("reconnecting, {attempts} times: {e}")),
            }
        }
    }

    /// The process serving the tenant (waited for).
    fn current_pid(&self) -> Result<u32, String> {
        self.pid_where(|_| true)
    }

    /// The process started after `pid` (waited for).
    fn next_pid(&self, pid: u32) -> Result<u32, String> {
        self.pid_where(|p| p != pid)
    }

    fn pid_where(&self, wanted: impl Fn(u32) -> bool) -> Result<u32, String> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(pid) = self.supervisor.find_tenant_pid("t0").filter(|&p| wanted(p)) {
                return Ok(pid);
            }
            if Instant::now() > deadline {
                return Err(format!("no new process for the tenant in {PATIENCE:?}"));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Plans a batch.
    fn plan(&mut self) -> Batch {
        let count = 1 + self.rng.below(MAX_BATCH);
        let first_token = self.next_token;
        let mut planner = Planner {
            rng: &mut self.rng,
            memory: &self.memory,
            sizes: &self.sizes,
            objects: &mut self.objects,
            batch: Batch {
                bufs: Vec::new(),
                requests: Vec::new(),
                first_token,
            },
            bytes: 0,
            produced: Vec::new(),
            busy: HashMap::new(),
            uses: Vec::new(),
        };
        for token in first_token..first_token + count as u64 {
            planner.add(token);
        }
        self.next_token += count as u64;
        planner.batch
    }

    /// One batch: objects created and destroyed, requests submitted in
    /// rounds, objects created and destroyed again, killed where the plan
    /// says, collected, checked, the objects checked; then maybe a kill
    /// while idle, and maybe a reset, with or without a kill during it.
    fn batch(&mut self) -> Result<(), String> {
        self.batches += 1;
        self.objects_between_batches()?;
        // Kills from now on land with requests of this batch in flight.
        self.killed_at = None;
        let mut batch = self.plan();
        self.object_requests += batch.requests.iter().filter(|r| !r.uses.is_empty()).count();
        let rounds = batch.requests.iter().map(|r| r.round).max().unwrap_or(0) + 1;
        let point = self.kill_point();
        let per_queue = |q| batch.requests.iter().filter(|r| r.queue == q).count();
        self.event(format!(
            "batch {}: tokens {}.., {} on queue 0, {} on queue 1, {rounds} rounds, {point:?}",
            self.batches,
            batch.first_token,
            per_queue(0),
            per_queue(1)
        ));
        let mut done: HashMap<u64, Completion> = HashMap::new();
        for round in 0..rounds {
            if round > 0 {
                if self.rng.chance(25) {
                    let double = self.rng.chance(10);
                    self.kill_and_reconnect(&format!("before round {round}"), double)?;
                }
                self.wait_issued(&batch, round)?;
            }
            self.submit(&mut batch, round)?;
        }
        let objects_first = self.rng.chance(70);
        if objects_first {
            self.objects_during_batch(&batch)?;
        }
        match point {
            KillPoint::None => {}
            KillPoint::AfterFlush(delay) => {
                std::thread::sleep(delay);
                let double = self.rng.chance(10);
                self.kill_and_reconnect(&format!("{delay:?} after the last flush"), double)?;
            }
            KillPoint::AfterFirst(delay) => {
                self.first_completion(&batch, &mut done)?;
                std::thread::sleep(delay);
                let double = self.rng.chance(10);
                let why = format!("{delay:?} after the first completion");
                self.kill_and_reconnect(&why, double)?;
            }
            KillPoint::DuringMemTable(delay) => self.mem_table_across_kill(delay)?,
        }
        if !objects_first {
            self.objects_during_batch(&batch)?;
        }
        self.collect(&batch, &mut done)?;
        self.check(&batch, &done)?;
        self.requests += batch.requests.len();
        self.settle_outputs(&batch, &done)?;
        drop(batch);
        for object in std::mem::take(&mut self.retiring) {
            self.arena.release(&object);
        }
        self.check_objects()?;
        self.check_log()?;
        if self.rng.chance(20) {
            let double = self.rng.chance(10);
            self.kill_and_reconnect("while the device is idle", double)?;
        }
        let roll = self.rng.below(100);
        if roll < RESET_PERCENT {
            self.reset()?;
        } else if roll < RESET_PERCENT + RESET_KILL_PERCENT || self.overdue(self.reset_kills.count)
        {
            self.reset_across_kill()?;
        }
        Ok(())
    }

    /// Where the batch gets its kill; a kill during SET_MEM_TABLE when one
    /// is [`Run::overdue`].
    fn kill_point(&mut self) -> KillPoint {
        if self.overdue(self.mem_table_kills) {
            return KillPoint::DuringMemTable(self.rng.brief_delay());
        }
        match self.rng.below(20) {
            0..=2 => KillPoint::None,
            3..=4 => KillPoint::AfterFlush(Duration::ZERO),
            5..=11 => KillPoint::AfterFlush(self.rng.delay()),
            12..=17 => KillPoint::AfterFirst(Duration::from_micros(self.rng.below(3_000) as u64)),
            _ => KillPoint::DuringMemTable(self.rng.brief_delay()),
        }
    }

    /// Submits the requests of `round` and flushes both queues.
    fn submit(&mut self, batch: &mut Batch, round: usize) -> Result<(), String> {
        let device = self.device.as_ref().unwrap();
        for index in 0..batch.requests.len() {
            let planned = &batch.requests[index];
            if planned.round != round {
                continue;
            }
            let mut request = planned.request.clone();
            if let Some(producer) = planned.producer {
                request = request.dep(batch.requests[producer].fence.unwrap());
            }
            let fence = ctx(
                device.submit(planned.queue, &request, planned.token),
                format_args!("submitting {}", planned.expect.what),
            )?;
            batch.requests[index].fence = Some(fence);
        }
        let mut queues = [0u16, 1];
        if self.rng.chance(50) {
            queues.reverse();
        }
        let device = self.device.as_ref().unwrap();
        for queue in queues {
            ctx(device.flush(queue), format_args!("flushing queue {queue}"))?;
        }
        Ok(())
    }

    /// Waits until the fences of other queues that requests of `round` name
    /// were issued: until FENCE_QUERY answers Ok rather than NoFence.
    fn wait_issued(&self, batch: &Batch, round: usize) -> Result<(), String> {
        let named = batch
            .requests
            .iter()
            .filter(|r| r.round == round)
            .filter_map(|r| {
                batch
                    .requests
                    .get(r.producer?)
                    .filter(|p| p.queue != r.queue)
            });
        for producer in named {
            self.wait_fence_issued(producer.fence.unwrap())?;
        }
        Ok(())
    }

    /// Waits for the first completion of the batch.
    fn first_completion(
        &mut self,
        batch: &Batch,
        done: &mut HashMap<u64, Completion>,
    ) -> Result<(), String> {
        let deadline = Instant::now() + PATIENCE;
        while done.is_empty() {
            for queue in 0..2 {
                self.pull(batch, done, queue, Duration::from_millis(1))?;
            }
            if Instant::now() > deadline {
                return Err(format!("no completion in {PATIENCE:?}"));
            }
        }
        Ok(())
    }

    /// Files the completions of `queue` (waiting up to `timeout` for one).
    fn pull(
        &mut self,
        batch: &Batch,
        done: &mut HashMap<u64, Completion>,
        queue: u16,
        timeout: Duration,
    ) -> Result<(), String> {
        let device = self.device.as_ref().unwrap();
        let completions = ctx(
            device.wait(queue, timeout),
            format_args!("waiting on queue {queue}"),
        )?;
        if let Some(killed_at) = self.killed_at.filter(|_| !completions.is_empty()) {
            self.pauses.push(killed_at.elapsed());
            self.killed_at = None;
        }
        for completion in completions {
            let token = completion.token;
            if token < batch.first_token {
                return Err(format!(
                    "request {token} of an earlier batch completed again: {completion:?}"
                ));
            }
            let Some(planned) = batch.requests.iter().find(|r| r.token == token) else {
                return Err(format!("a completion with unknown token {token}"));
            };
            if planned.queue != queue {
                return Err(format!("request {token} completed on queue {queue}"));
            }
            if let Some(first) = done.insert(token, completion) {
                return Err(format!(
                    "request {token} ({}) completed twice: {first:?}, then {completion:?}",
                    planned.expect.what
                ));
            }
        }
        Ok(())
    }

    /// Collects the rest of the batch, then waits for strays.
    fn collect(
        &mut self,
        batch: &Batch,
        done: &mut HashMap<u64, Completion>,
    ) -> Result<(), String> {
        let deadline = Instant::now() + PATIENCE;
        while done.len() < batch.requests.len() {
            for queue in 0..2 {
                let waiting = batch
                    .requests
                    .iter()
                    .any(|r| r.queue == queue && !done.contains_key(&r.token));
                if waiting {
                    self.pull(batch, done, queue, Duration::from_millis(5))?;
                }
            }
            if Instant::now() > deadline {
                let missing: Vec<String> = batch
                    .requests
                    .iter()
                    .filter(|r| !done.contains_key(&r.token))
                    .map(|r| format!("{} {} on queue {}", r.token, r.expect.what, r.queue))
                    .collect();
                return Err(format!(
                    "{} of {} requests never completed in {PATIENCE:?}: {}",
                    missing.len(),
                    batch.requests.len(),
                    missing.join("; ")
                ));
            }
        }
        std::thread::sleep(STRAY_WAIT);
        let device = self.device.as_ref().unwrap();
        for queue in 0..2 {
            let strays = ctx(device.poll(queue), "polling for strays")?;
            if !strays.is_empty() {
                return Err(format!(
                    "completions after the whole batch had completed: {strays:?}"
                ));
            }
        }
        Ok(())
    }

    /// Checks every completion of the batch.
    fn check(&mut self, batch: &Batch, done: &HashMap<u64, Completion>) -> Result<(), String> {
        for planned in &batch.requests {
            let completion = done[&planned.token];
            let what = &planned.expect.what;
            let token = planned.token;
            let status = completion.status();
            if !matches!(status, Ok(Status::Ok)) {
                return Err(format!(
                    "request {token} ({what}) ended with {status:?}: {completion:?}"
                ));
            }
            let fence = completion.fence();
            if Some(fence) != planned.fence {
                return Err(format!(
                    "request {token} ({what}) completed with {fence:?}, {:?} predicted",
                    planned.fence
                ));
            }
            let key = (self.epoch, planned.queue, u64::from(fence.seqno));
            if !self.completed_fences.insert(key) {
                return Err(format!(
                    "request {token} ({what}): fence {} of queue {} completed before",
                    key.2, key.1
                ));
            }
            let written = completion.bytes_written();
            if planned.expect.bytes_written.is_some_and(|n| n != written) {
                return Err(format!(
                    "request {token} ({what}) wrote {written} bytes, {:?} expected",
                    planned.expect.bytes_written
                ));
            }
            let used = u64::from(completion.used_len);
            let direct_output = planned
                .expect
                .output
                .as_ref()
                .is_some_and(|o| matches!(o.target, Target::Direct(_)));
            let used_expected = if direct_output { 64 + written } else { 64 };
            if used != used_expected {
                return Err(format!(
                    "request {token} ({what}): used length {used}, {used_expected} expected"
                ));
            }
            if completion.result() != &planned.expect.result {
                return Err(format!(
                    "request {token} ({what}): result {:02x?}, {:02x?} expected",
                    completion.result(),
                    planned.expect.result
                ));
            }
            if let Some(output) = &planned.expect.output {
                self.check_output(batch, token, what, output, written)?;
            }
        }
        Ok(())
    }

    fn check_output(
        &self,
        batch: &Batch,
        token: u64,
        what: &str,
        output: &Output,
        written: u64,
    ) -> Result<(), String> {
        let bytes = self.read_output(batch, output.target)?;
        let written = usize::try_from(written).unwrap();
        if written > bytes.len() {
            return Err(format!(
                "request {token} ({what}) wrote {written} bytes into {}",
                bytes.len()
            ));
        }
        let (prefix, rest) = bytes.split_at(written);
        match &output.check {
            OutputCheck::Bytes(expected) => {
                if prefix != expected.as_slice() {
                    let at = prefix.iter().zip(expected).position(|(a, b)| a != b);
                    return Err(format!(
                        "request {token} ({what}): wrong output, first difference at {at:?}"
                    ));
                }
            }
            OutputCheck::Inflates(format, expected) => {
                let decoded = decompress(*format, prefix)
                    .map_err(|e| format!("request {token} ({what}): the stream is bad: {e}"))?;
                if &decoded != expected {
                    return Err(format!(
                        "request {token} ({what}): the stream decodes to other data"
                    ));
                }
            }
        }
        // FILL writes all of its output; the others leave the rest alone.
        if let Some(at) = rest.iter().position(|&b| b != CANARY) {
            return Err(format!(
                "request {token} ({what}): byte {} after the {written} written was changed",
                written + at
            ));
        }
        Ok(())
    }

    /// The output of a request as guest memory holds it.
    fn read_output(&self, batch: &Batch, target: Target) -> Result<Vec<u8>, String> {
        match target {
            Target::Direct(buf) => {
                let buf = &batch.bufs[buf];
                ctx(self.memory.read_vec(buf, 0, buf.len()), "reading an output")
            }
            Target::Object {
                id, offset, len, ..
            } => self
                .objects
                .iter()
                .chain(&self.retiring)
                .find(|o| o.id == id)
                .ok_or_else(|| format!("object #{id} is lost"))?
                .read(&self.memory, offset, len),
        }
    }

    /// What the objects of the pool hold now that the batch completed: the
    /// outputs written into them.
    fn settle_outputs(
        &mut self,
        batch: &Batch,
        done: &HashMap<u64, Completion>,
    ) -> Result<(), String> {
        for planned in &batch.requests {
            let Some(Output {
                target: Target::Object { id, offset, .. },
                ..
            }) = planned.expect.output
            else {
                continue;
            };
            let written = usize::try_from(done[&planned.token].bytes_written()).unwrap();
            if let Some(object) = self.objects.iter_mut().find(|o| o.id == id) {
                let bytes = object.read(&self.memory, offset, written)?;
                object.data[offset..offset + written].copy_from_slice(&bytes);
            }
        }
        Ok(())
    }

    /// Between batches: objects created while the pool is empty, else now
    /// and then one; now and then one destroyed.
    fn objects_between_batches(&mut self) -> Result<(), String> {
        let creates = if self.objects.is_empty() {
            1 + self.rng.below(3)
        } else {
            usize::from(self.rng.chance(35))
        };
        for _ in 0..creates {
            let across_kill = self.rng.chance(CONTROL_KILL_PERCENT);
            self.create_object(across_kill, false)?;
        }
        if !self.objects.is_empty() && self.rng.chance(20) {
            let index = self.rng.below(self.objects.len());
            let across_kill = self.rng.chance(CONTROL_KILL_PERCENT);
            self.destroy_object(index, across_kill, false, "between batches")?;
        }
        Ok(())
    }

    /// While the batch runs (every request submitted): now and then an
    /// object that it uses destroyed once each of its requests that name it
    /// was taken, one it does not use destroyed, one created.
    fn objects_during_batch(&mut self, batch: &Batch) -> Result<(), String> {
        let used: Vec<u64> = self
            .objects
            .iter()
            .map(|o| o.id)
            .filter(|id| batch.requests.iter().any(|r| r.uses.contains(id)))
            .collect();
        if !used.is_empty() && self.rng.chance(40) {
            let id = used[self.rng.below(used.len())];
            let users: Vec<&Planned> = batch
                .requests
                .iter()
                .filter(|r| r.uses.contains(&id))
                .collect();
            for user in &users {
                self.wait_fence_issued(user.fence.unwrap())?;
            }
            let index = self.objects.iter().position(|o| o.id == id).unwrap();
            let tokens: Vec<u64> = users.iter().map(|r| r.token).collect();
            let why = format!("while requests {tokens:?} that use it were taken");
            let across_kill = self.rng.chance(CONTROL_KILL_PERCENT);
            self.destroy_object(index, across_kill, true, &why)?;
            self.destroyed_in_use += 1;
        }
        let unused: Vec<usize> = (0..self.objects.len())
            .filter(|&i| !used.contains(&self.objects[i].id))
            .collect();
        if !unused.is_empty() && self.rng.chance(15) {
            let index = unused[self.rng.below(unused.len())];
            let across_kill = self.rng.chance(CONTROL_KILL_PERCENT);
            self.destroy_object(
                index,
                across_kill,
                true,
                "during a batch that does not use it",
            )?;
        }
        if self.rng.chance(20) {
            let across_kill = self.rng.chance(CONTROL_KILL_PERCENT);
            self.create_object(across_kill, true)?;
        }
        Ok(())
    }

    /// Creates an object of 1 to 3 segments of random bytes (if the pool
    /// and the arena have room), with OBJECT_CREATE sent by the harness or,
    /// `across_kill`, across a kill. Outside a batch, an object created
    /// across a kill is read through its handle at once.
    fn create_object(&mut self, across_kill: bool, in_batch: bool) -> Result<(), String> {
        let count = match self.rng.below(10) {
            0..=4 => 1,
            5..=7 => 2,
            _ => 3,
        };
        if self.objects.len() >= MAX_OBJECTS || self.arena.free.len() < count {
            return Ok(());
        }
        let slot_len = self.arena.slot;
        let mut segments = Vec::with_capacity(count);
        let mut data = Vec::new();
        for _ in 0..count {
            let slot = self.arena.take(&mut self.rng);
            let len = if self.rng.chance(25) {
                slot_len
            } else {
                1 + self.rng.below(slot_len)
            };
            let gpa = self.arena.gpa(slot) + self.rng.below(slot_len - len + 1) as u64;
            let bytes = self.rng.bytes(len);
            ctx(self.memory.write_at(gpa, &bytes), "writing an object")?;
            data.extend_from_slice(&bytes);
            segments.push(Segment { slot, gpa, len });
        }
        let mut object = Obj {
            id: self.next_object_id,
            handle: 0,
            segments,
            data,
        };
        self.next_object_id += 1;
        let pairs = object.pairs();
        let what = format!(
            "OBJECT_CREATE of {} B in {count} segments {pairs:x?}",
            object.data.len()
        );
        object.handle = if across_kill {
            let payload: Vec<u8> = pairs
                .iter()
                .flat_map(|&(gpa, len)| MemSeg::new(gpa, len).as_slice().to_vec())
                .collect();
            let count = u32::try_from(count).unwrap();
            let resp = self.control_across_kill(
                CtrlReq::new(ControlCommand::ObjectCreate, count, 0),
                &payload,
                &what,
            )?;
            let status = Status::try_from(u32::from(resp.status));
            let value = u64::from(resp.value);
            match (status, u32::try_from(value)) {
                (Ok(Status::Ok), Ok(handle)) if handle != 0 => handle,
                _ => {
                    return Err(format!(
                        "{what}, across a kill, answered {status:?} with value {value:#x}"
                    ))
                }
            }
        } else {
            ctx(self.device().create_object(&pairs), &what)?
        };
        let handle = object.handle;
        if self.objects.iter().any(|o| o.handle == handle) {
            return Err(format!(
                "{what} answered handle {handle}, which a live object has"
            ));
        }
        let how = if across_kill { ", across a kill" } else { "" };
        self.event(format!("{what}{how}: handle {handle}"));
        self.created += 1;
        self.objects.push(object);
        if across_kill && !in_batch {
            self.verify_object(self.objects.len() - 1)?;
        }
        Ok(())
    }

    /// The device's CRC-32C of the whole of object `index` is the host's.
    fn verify_object(&self, index: usize) -> Result<(), String> {
        let object = &self.objects[index];
        let size = object.data.len() as u64;
        let request = crc_request(0, Buffer::object(object.handle, 0, size));
        let queue = u16::try_from(index % 2).unwrap();
        let completion = ctx(
            self.device().run(queue, &request),
            format_args!("reading object {}", object.handle),
        )?;
        let want = crc32c::crc32c(&object.data);
        match completion.status() {
            Ok(Status::Ok) if completion.result()[..4] == want.to_le_bytes() => Ok(()),
            status => Err(format!(
                "object {} ({size} B) just created: CRC-32C {status:?} {:02x?}, {want:#010x} \
                 expected",
                object.handle,
                &completion.result()[..4]
            )),
        }
    }

    /// Destroys object `index` of the pool, with OBJECT_DESTROY sent by the
    /// harness or, `across_kill`, across a kill. Its handle must then be
    /// gone; `in_batch`, requests of the batch may still use its memory,
    /// which is freed once the batch completed.
    fn destroy_object(
        &mut self,
        index: usize,
        across_kill: bool,
        in_batch: bool,
        why: &str,
    ) -> Result<(), String> {
        let handle = self.objects[index].handle;
        let what = format!("OBJECT_DESTROY of object {handle} {why}");
        if across_kill {
            let header = CtrlReq::new(ControlCommand::ObjectDestroy, 0, u64::from(handle));
            let resp = self.control_across_kill(header, &[], &what)?;
            let status = Status::try_from(u32::from(resp.status));
            if !matches!(status, Ok(Status::Ok)) || u64::from(resp.value) != 0 {
                return Err(format!(
                    "{what}, across a kill, answered {status:?} with value {:#x}",
                    u64::from(resp.value)
                ));
            }
        } else {
            ctx(self.device().destroy_object(handle), &what)?;
        }
        let how = if across_kill { ", across a kill" } else { "" };
        self.event(format!("{what}{how}: done"));
        self.destroyed += 1;
        let object = self.objects.swap_remove(index);
        self.graveyard.push(handle);
        if in_batch {
            self.retiring.push(object);
        } else {
            self.arena.release(&object);
        }
        Ok(())
    }

    /// Sends a control command on a chain of the test's own, kills the
    /// tenant's process a moment after the kick (maybe before the device
    /// took the chain, maybe while it runs the command, maybe after it
    /// answered), reconnects, and returns the answer from the used ring.
    fn control_across_kill(
        &mut self,
        header: CtrlReq,
        payload: &[u8],
        what: &str,
    ) -> Result<CtrlResp, String> {
        let mut bytes = header.as_slice().to_vec();
        bytes.extend_from_slice(payload);
        let resp_at = bytes.len().div_ceil(64) * 64;
        let resp_len = std::mem::size_of::<CtrlResp>();
        let buf = ctx(self.memory.alloc(resp_at + resp_len), "a control chain")?;
        ctx(self.memory.write(&buf, 0, &bytes), "a control chain")?;
        ctx(
            self.memory.write(&buf, resp_at, &vec![0xff; resp_len]),
            "a control chain",
        )?;
        let token = self.next_control_token;
        self.next_control_token += 1;
        let readable = [(buf.gpa(), u32::try_from(bytes.len()).unwrap())];
        let writable = [(buf.gpa() + resp_at as u64, u32::try_from(resp_len).unwrap())];
        let device = self.device.as_mut().unwrap();
        let ring = ctx(device.raw_queue(CONTROL_QUEUE), "the control queue")?;
        let head = ctx(
            ring.add(&readable, &writable, token),
            "adding a control chain",
        )?;
        ctx(ring.publish(), "publishing a control chain")?;
        ctx(device.notify(CONTROL_QUEUE), "kicking the control queue")?;
        let delay = self.rng.brief_delay();
        std::thread::sleep(delay);
        self.control_kills += 1;
        // Whether the device answered already, just before the kill.
        let device = self.device.as_mut().unwrap();
        let ring = ctx(device.raw_queue(CONTROL_QUEUE), "the control queue")?;
        if !ctx(ring.has_used(), "the control queue")? {
            self.control_kills_unanswered += 1;
        }
        let double = self.rng.chance(10);
        self.kill_and_reconnect(&format!("{delay:?} after the kick of {what}"), double)?;
        let used = ctx(
            self.device().wait_used(CONTROL_QUEUE, PATIENCE),
            format_args!("waiting for the answer to {what}"),
        )?
        .ok_or_else(|| format!("{what} had no answer in {PATIENCE:?} after the kill"))?;
        if used.head != head || used.token != token {
            return Err(format!(
                "{what} (head {head}): the control queue returned {used:?}"
            ));
        }
        if used.len as usize != resp_len {
            return Err(format!("{what} was answered with used length {}", used.len));
        }
        ctx(self.memory.read_obj(&buf, resp_at), "reading an answer")
    }

    /// Waits until `fence` was issued: until FENCE_QUERY answers Ok rather
    /// than NoFence.
    fn wait_fence_issued(&self, fence: Fence) -> Result<(), String> {
        let device = self.device();
        let deadline = Instant::now() + PATIENCE;
        loop {
            match device.query_fence(fence) {
                Ok(_) => return Ok(()),
                Err(e) if e.status() == Some(Status::NoFence) => {}
                Err(e) => return Err(format!("FENCE_QUERY of {fence:?}: {e}")),
            }
            if Instant::now() > deadline {
                return Err(format!("{fence:?} was never issued"));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// After a batch: no control command answered twice; each object of the
    /// pool holds its bytes; each handle destroyed since the last look
    /// answers NoObject to a request and to OBJECT_DESTROY; the daemon's
    /// gauges count the pool.
    fn check_objects(&mut self) -> Result<(), String> {
        let device = self.device.as_ref().unwrap();
        let again = ctx(
            device.wait_used(CONTROL_QUEUE, Duration::ZERO),
            "looking at the control queue",
        )?;
        if let Some(used) = again {
            return Err(format!("a control chain was returned again: {used:?}"));
        }
        let live: HashSet<u32> = self.objects.iter().map(|o| o.handle).collect();
        let mut dead = std::mem::take(&mut self.graveyard);
        dead.retain(|h| !live.contains(h));
        dead.sort_unstable();
        dead.dedup();
        let queue = u16::try_from(self.rng.below(2)).unwrap();
        // Token, fence, what, the status and CRC-32C expected.
        let mut checks: Vec<(u64, Fence, String, Status, u32)> = Vec::new();
        let reads = self.objects.iter().map(|o| {
            let size = o.data.len() as u64;
            let what = format!("CRC-32C of the whole object {} ({size} B)", o.handle);
            (o.handle, size, what, Status::Ok, crc32c::crc32c(&o.data))
        });
        let refusals = dead.iter().map(|&h| {
            let what = format!("CRC-32C of destroyed object {h}");
            (h, 1, what, Status::NoObject, 0)
        });
        for (handle, size, what, status, crc) in reads.chain(refusals).collect::<Vec<_>>() {
            let token = self.next_token;
            self.next_token += 1;
            let request = crc_request(0, Buffer::object(handle, 0, size));
            let fence = ctx(device.submit(queue, &request, token), &what)?;
            checks.push((token, fence, what, status, crc));
        }
        ctx(device.flush(queue), format_args!("flushing queue {queue}"))?;
        let mut done: HashMap<u64, Completion> = HashMap::new();
        let deadline = Instant::now() + PATIENCE;
        while done.len() < checks.len() {
            let completions = ctx(
                device.wait(queue, Duration::from_millis(5)),
                "waiting for the objects' checks",
            )?;
            for completion in completions {
                let token = completion.token;
                if !checks.iter().any(|c| c.0 == token) {
                    return Err(format!("a completion with unknown token {token}"));
                }
                if let Some(first) = done.insert(token, completion) {
                    return Err(format!(
                        "request {token} completed twice: {first:?}, then {completion:?}"
                    ));
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} of {} checks of objects never completed",
                    checks.len() - done.len(),
                    checks.len()
                ));
            }
        }
        for (token, fence, what, status, crc) in checks {
            let completion = done[&token];
            let got = completion.status();
            if got != Ok(status) {
                return Err(format!(
                    "{what} ended with {got:?}, {status:?} expected: {completion:?}"
                ));
            }
            if completion.fence() != fence {
                return Err(format!(
                    "{what} completed with {:?}, {fence:?} predicted",
                    completion.fence()
                ));
            }
            let key = (self.epoch, queue, u64::from(fence.seqno));
            if !self.completed_fences.insert(key) {
                return Err(format!("{what}: fence {} completed before", key.2));
            }
            if completion.result()[..4] != crc.to_le_bytes() {
                return Err(format!(
                    "{what}: CRC-32C {:02x?}, {crc:#010x} expected: the object's bytes changed",
                    &completion.result()[..4]
                ));
            }
        }
        for handle in dead {
            match device.destroy_object(handle) {
                Err(e) if e.status() == Some(Status::NoObject) => {}
                other => {
                    return Err(format!(
                        "OBJECT_DESTROY of destroyed object {handle} answered {other:?}"
                    ))
                }
            }
        }
        self.check_gauges()
    }

    /// The daemon's `objects` and `object_bytes` gauges count the pool.
    fn check_gauges(&self) -> Result<(), String> {
        let want = (
            self.objects.len() as u64,
            self.objects
                .iter()
                .map(|o| o.data.len() as u64)
                .sum::<u64>(),
        );
        let deadline = Instant::now() + GAUGE_PATIENCE;
        loop {
            let metrics = self.supervisor.metrics();
            let got = (gauge(&metrics, "objects"), gauge(&metrics, "object_bytes"));
            if got == (Some(want.0), Some(want.1)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the daemon holds {:?} objects of {:?} bytes; the pool has {} of {}",
                    got.0, got.1, want.0, want.1
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Resets the device (close and open again): fences start from 1, and
    /// every object is gone.
    fn reset(&mut self) -> Result<(), String> {
        let device = self.device.take().unwrap();
        self.device = Some(reopen(device, &OpenOptions::default())?);
        self.reset_done("");
        Ok(())
    }

    /// Resets the device while another thread SIGKILLs the tenant's process
    /// after 0 to about 2 ms: before the rings stop, while they stop, while
    /// the driver opens the device again, or after. Where closing or
    /// opening failed (after the kill; a failure before it fails the test),
    /// the transport went with the device: the VMM connects anew, which
    /// starts no ring of a device the driver reset, and the driver opens
    /// the device again ([`Run::connect_and_open`]). Where both went
    /// through, the process died after them: the VMM reconnects. Either way
    /// the device must then be as just reset.
    fn reset_across_kill(&mut self) -> Result<(), String> {
        let delay = self.rng.brief_delay();
        let pid = self.current_pid()?;
        let mark = self.supervisor.log().len();
        let device = self.device.take().unwrap();
        let options = OpenOptions {
            timeout: REOPEN_TIMEOUT,
            ..OpenOptions::default()
        };
        let ((reopened, ended), at) =
            kill_during(pid, delay, || (reopen(device, &options), Instant::now()));
        self.reset_kills.count += 1;
        match reopened {
            Ok(mut device) => {
                device.set_timeout(OpenOptions::default().timeout);
                self.device = Some(device);
                let why = format!("{delay:?} into a reset, which went through");
                self.killed(pid, at, &why);
                let double = self.rng.chance(10);
                self.reconnect_after_kill(pid, double)?;
            }
            Err(e) if ended < at => return Err(format!("{e}, before the kill")),
            Err(e) => {
                self.reset_kills.broken += 1;
                self.killed(
                    pid,
                    at,
                    &format!("{delay:?} into a reset, which failed: {e}"),
                );
                self.device = Some(self.connect_and_open()?);
            }
        }
        let verdict = self.verdict_after(pid, mark);
        self.reset_done(&format!(" across a kill: the next process {verdict}"));
        Ok(())
    }

    /// After a kill broke a reset: connects anew as the VMM does (the
    /// handshake only) and opens the device.
    fn connect_and_open(&self) -> Result<AccelDevice, String> {
        let what = "after a kill during a reset";
        let transport = ctx(
            VhostUserTransport::connect_with(&self.socket, &self.memory, &self.options),
            format_args!("connecting anew {what}"),
        )?;
        ctx(
            Device::open_with(transport, &OpenOptions::default()),
            format_args!("opening the device {what}"),
        )
    }

    /// The driver's side of a reset: a new instance of the device, whose
    /// fences start from 1, without objects.
    fn reset_done(&mut self, how: &str) {
        self.epoch += 1;
        self.resets += 1;
        self.reset_at = Some(self.batches);
        self.event(format!("reset the device (instance {}){how}", self.epoch));
        for object in std::mem::take(&mut self.objects) {
            self.graveyard.push(object.handle);
            self.arena.release(&object);
        }
    }

    /// What the process after `pid`, killed during a reset, said of the
    /// device it found: the first verdict in the daemon's log after byte
    /// `mark` and the line that says `pid` was killed (the process it
    /// follows may not have said its own yet), waited for up to
    /// [`VERDICT_WAIT`]. Counted in [`Run::reset_kills`], the first line of
    /// each kind kept.
    fn verdict_after(&mut self, pid: u32, mark: usize) -> &'static str {
        let deadline = Instant::now() + VERDICT_WAIT;
        let death = format!("process {pid} was killed");
        let line = loop {
            let log = self.supervisor.log();
            // Whole lines only: the process may be writing the next one.
            let end = log.rfind('\n').map_or(mark, |at| at + 1);
            let text = log.get(mark..end).unwrap_or_default();
            let found = text.find(&death).and_then(|at| {
                text[at..]
                    .lines()
                    .skip(1)
                    .find(|l| l.contains("resumed the device") || l.contains("cannot resume"))
                    .map(String::from)
            });
            if found.is_some() || Instant::now() > deadline {
                break found;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let kills = &mut self.reset_kills;
        let (count, said) = match &line {
            Some(l) if l.contains("resumed the device") => (&mut kills.resumed, "resumed it"),
            Some(_) => (&mut kills.refused, "started afresh"),
            None => (&mut kills.silent, "said nothing"),
        };
        *count += 1;
        if let Some(line) = line.filter(|_| *count == 1) {
            kills.examples.push(line);
        }
        said
    }

    /// The daemon resumed every time since the last look at its log.
    ///
    /// One refusal is let pass, and counted, in the batch after a reset of
    /// the device: a reset that the front-end does not pass on as
    /// `RESET_DEVICE` (every ring stopped, then started again at index 0)
    /// is seen by the device at the first kick after it, and recorded only
    /// then (a process waiting to resume judges it as soon as the rings
    /// start again). A process killed before that kick leaves the record of
    /// the device before the reset, which its successor finds inconsistent
    /// with the rings at index 0: it starts afresh, which is what the driver
    /// expects after a reset, and says why in the log. After a kill that
    /// broke a reset, the rings are set up anew at index 0 while the record
    /// may hold a command taken and not answered on them (cloud-hypervisor's
    /// CAPABILITIES): the refusal then says that the driver made nothing
    /// available ([`set_up_anew`]).
    ///
    /// A process that ended otherwise than by this test's SIGKILL fails it,
    /// and so does a restart after a longer pause than `max-restart-pause-ms`.
    fn check_log(&mut self) -> Result<(), String> {
        let log = self.supervisor.log();
        // Whole lines only: the process may be writing the next one.
        let end = log.rfind('\n').map_or(self.log_seen, |at| at + 1);
        let new = log.get(self.log_seen..end).unwrap_or_default();
        self.log_seen = end.max(self.log_seen);
        let lines: Vec<&str> = new.lines().collect();
        let reset_lately = self
            .reset_at
            .is_some_and(|batch| self.batches.saturating_sub(batch) <= 1);
        let mut refused = Vec::new();
        for line in lines {
            if line.contains("earlier device instance") {
                refused.push(line);
            } else if line.contains("cannot resume") {
                if reset_lately && set_up_anew(line) {
                    self.overtaken += 1;
                } else {
                    refused.push(line);
                }
            } else if line.contains("restarting it in") {
                if !line.contains("killed by SIGKILL") {
                    return Err(format!("a tenant's process ended on its own:\n{line}"));
                }
                if !line.ends_with(&format!("restarting it in {RESTART_PAUSE_MS}ms")) {
                    return Err(format!("a pause past max-restart-pause-ms:\n{line}"));
                }
            }
        }
        if !refused.is_empty() {
            return Err(format!(
                "the device did not resume:\n{}",
                refused.join("\n")
            ));
        }
        Ok(())
    }

    /// Fails the run if a kind of kill never happened in a run of `kills`
    /// kills, [`COVERAGE_KILLS`] or more; says so below that.
    fn check_coverage(&self, kills: usize) {
        let kinds = [
            ("during SET_MEM_TABLE", self.mem_table_kills),
            ("during a reset", self.reset_kills.count),
        ];
        for (kind, _) in kinds.into_iter().filter(|&(_, count)| count == 0) {
            if kills >= COVERAGE_KILLS {
                self.fail(&format!("no kill {kind} in {} kills", self.kills));
            }
            eprintln!(
                "{}: no kill {kind}: {kills} kills are too few to require one",
                self.label
            );
        }
    }

    /// Totals of "N what" over the daemon's resume lines.
    fn resume_totals(&self) -> (usize, [u64; 3]) {
        let log = self.supervisor.log();
        let mut totals = [0u64; 3];
        let mut resumes = 0;
        for line in log.lines().filter(|l| l.contains("resumed the device")) {
            resumes += 1;
            let words: Vec<&str> = line.split_whitespace().collect();
            for (total, marker) in totals
                .iter_mut()
                .zip(["completions", "requests", "interrupted"])
            {
                if let Some(at) = words.iter().position(|w| *w == marker) {
                    *total += at
                        .checked_sub(1)
                        .and_then(|i| words[i].parse::<u64>().ok())
                        .unwrap_or(0);
                }
            }
        }
        (resumes, totals)
    }
}

/// Whether the daemon's refusal to resume, `line`, says that a ring the
/// record shows used is at index 0, as a driver sets it up after a reset.
fn set_up_anew(line: &str) -> bool {
    line.contains("used index 0 in the ring") || line.contains("made available up to 0")
}

/// The value of gauge `name` of tenant `t0` in the daemon's metrics.
fn gauge(metrics: &str, name: &str) -> Option<u64> {
    let prefix = format!("vhost_user_accel_{name}{{tenant=\"t0\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|value| value.trim().parse().ok())
}

/// The seed: `KILLS_SEED` (decimal or 0x hex), else from the clock.
fn seed() -> u64 {
    if let Ok(text) = std::env::var("KILLS_SEED") {
        let text = text.trim();
        let parsed = match text.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => text.parse(),
        };
        return parsed.unwrap_or_else(|e| panic!("KILLS_SEED={text:?}: {e}"));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    now.as_secs() ^ (u64::from(now.subsec_nanos()) << 20) ^ (u64::from(std::process::id()) << 48)
}

/// Kills of the QEMU and cloud-hypervisor runs.
fn kills() -> (usize, usize) {
    let total = std::env::var("KILLS_COUNT").map_or(DEFAULT_KILLS, |text| {
        text.trim()
            .parse()
            .unwrap_or_else(|e| panic!("KILLS_COUNT={text:?}: {e}"))
    });
    let qemu = total * 3 / 5;
    (qemu, total - qemu)
}

fn kills_at_random_points(label: &'static str, model: FrontendModel, kills: usize) {
    if kills == 0 {
        return;
    }
    let seed = seed();
    eprintln!("{label}: seed {seed:#x} (KILLS_SEED={seed:#x} replays the plan), {kills} kills");
    let mut run = Run::new(label, model, seed);
    let took = run.run(kills);
    let (resumes, [republished, rerun, interrupted]) = run.resume_totals();
    run.pauses.sort_unstable();
    let quantile = |q: usize| {
        run.pauses
            .get(run.pauses.len() * q / 100)
            .map_or(String::from("-"), |pause| format!("{pause:.1?}"))
    };
    eprintln!(
        "{label}: from a kill under requests in flight to the next completion, over {} \
         kills: p50 {}, p99 {}, max {}",
        run.pauses.len(),
        quantile(50),
        quantile(99),
        run.pauses
            .last()
            .map_or(String::from("-"), |pause| format!("{pause:.1?}"))
    );
    eprintln!(
        "{label}: {} kills over {} batches ({} requests, {} resets) in {took:?}; \
         the daemon resumed {resumes} times, published {republished} completions again, \
         ran {rerun} requests again, interrupted {interrupted}; {} resumes refused after a \
         reset, {} reconnections tried again; {} requests named objects, {} objects created, \
         {} destroyed ({} while in use), {} object commands killed in flight ({} of them \
         unanswered just before the kill)",
        run.kills,
        run.batches,
        run.requests,
        run.resets,
        run.overtaken,
        run.reconnect_retries,
        run.object_requests,
        run.created,
        run.destroyed,
        run.destroyed_in_use,
        run.control_kills,
        run.control_kills_unanswered
    );
    let resets = &run.reset_kills;
    eprintln!(
        "{label}: {} kills during SET_MEM_TABLE ({} of the exchanges failed), {} during a \
         reset ({} of them broke it: connected anew and opened again); the process after a \
         kill during a reset resumed the device {} times, started afresh {} times, said \
         nothing {} times",
        run.mem_table_kills,
        run.mem_table_failed,
        resets.count,
        resets.broken,
        resets.resumed,
        resets.refused,
        resets.silent
    );
    for line in &resets.examples {
        eprintln!("{label}: after a kill during a reset: {line}");
    }
    if interrupted != 0 {
        run.fail("a request whose output does not overlap its input was interrupted");
    }
    run.check_coverage(kills);
    let device = run.device.take().unwrap();
    device.into_transport().disconnect();
}

#[test]
fn kills_at_random_points_are_pauses_for_stock_qemu() {
    let model = FrontendModel::Qemu {
        forwards_reset: false,
    };
    kills_at_random_points("kills-qemu", model, kills().0);
}

#[test]
fn kills_at_random_points_are_pauses_for_cloud_hypervisor() {
    kills_at_random_points("kills-ch", FrontendModel::CloudHypervisor, kills().1);
}
