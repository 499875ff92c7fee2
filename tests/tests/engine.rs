// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The direct engine path: every operation run through [`SoftwareEngine`]
//! (no virtio in between) over the interesting sizes and several
//! scatter-gather layouts, checked against the independent implementations of
//! `accel_tests::reference`; then many jobs at once through one queue, and
//! through several queues from several threads, to check that concurrency
//! changes nothing.
//!
//! Random inputs are seeded; a failing test prints its seed (replay with
//! `ACCEL_TEST_SEED=<seed>`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;

use accel_tests::data::{self, TestRng};
use accel_tests::reference::{self, GzipHeader, InflateError};
use rand::RngCore;
use vhost_user_accel::command::{Operation, ParamsError};
use vhost_user_accel::engine::software::SoftwareEngine;
use vhost_user_accel::engine::{self, Engine, EngineError, HwCompletion, HwQueue, Job, Share};
use vhost_user_accel::ops::Outcome;
use vhost_user_accel::sg::OwnedBuffers;
use virtio_accel_spec::op::{OpParams, COMPARE_EQUAL, PARAMS_SIZE};
use virtio_accel_spec::request::RESULT_SIZE;
use virtio_accel_spec::{
    AesGcmParams, Crc32cParams, DeflateFormat, DeflateParams, FillParams, Op, Status,
};
use vm_memory::endian::Le32;

/// Engine worker threads ("a handful").
const THREADS: usize = 4;
/// Hardware queue depth.
const DEPTH: usize = 1024;
/// A segment size that keeps a buffer in one segment.
const WHOLE: usize = usize::MAX;
/// Initial value of every output byte, to see what the engine wrote.
const SENTINEL: u8 = 0xA5;
/// Deflate levels tried.
const LEVELS: [u8; 4] = [0, 1, 6, 9];

/// Scatter-gather layouts: segment sizes of the buffers of a job in order
/// (inputs, then outputs), cycled when a job has more buffers.
const LAYOUTS: &[&[usize]] = &[
    &[1],
    &[7],
    &[4096],
    &[WHOLE],
    &[7, WHOLE],
    &[WHOLE, 1],
    &[4096, 7],
];

fn layout_name(layout: &[usize]) -> String {
    let names: Vec<String> = layout
        .iter()
        .map(|&s| {
            if s == WHOLE {
                "whole".to_owned()
            } else {
                s.to_string()
            }
        })
        .collect();
    format!("segs=[{}]", names.join(","))
}

fn formats() -> impl Iterator<Item = DeflateFormat> {
    DeflateFormat::ALL.iter().copied()
}

/// Inputs above this size are (de)compressed on one layout per (format,
/// level, kind), rotating with `salt` so that the layouts still vary: the
/// whole matrix at 1 MiB is slow in debug builds.
const BIG: usize = 70_000;

/// `(index in LAYOUTS, layout)` pairs to try for `size`.
fn layouts_for(size: usize, salt: usize) -> Vec<(usize, &'static [usize])> {
    if size <= BIG {
        LAYOUTS.iter().copied().enumerate().collect()
    } else {
        let index = salt % LAYOUTS.len();
        vec![(index, LAYOUTS[index])]
    }
}

// ---------------------------------------------------------------------------
// Operations from parameter blocks.

fn decode(op: Op, params: [u8; PARAMS_SIZE]) -> Operation {
    Operation::decode(op, &params).unwrap()
}

fn op_copy() -> Operation {
    decode(Op::Copy, [0; PARAMS_SIZE])
}

fn op_compare() -> Operation {
    decode(Op::Compare, [0; PARAMS_SIZE])
}

fn op_sha256() -> Operation {
    decode(Op::Sha256, [0; PARAMS_SIZE])
}

fn op_fill(pattern: u8) -> Operation {
    let params = FillParams {
        pattern,
        ..FillParams::default()
    };
    decode(Op::Fill, params.to_params())
}

fn op_crc32c(seed: u32) -> Operation {
    let params = Crc32cParams {
        seed: Le32::from(seed),
        ..Crc32cParams::default()
    };
    decode(Op::Crc32c, params.to_params())
}

fn op_seal(key: &[u8; 32], iv: &[u8; 12]) -> Operation {
    let params = AesGcmParams {
        key: *key,
        iv: *iv,
        ..AesGcmParams::default()
    };
    decode(Op::AesGcmSeal, params.to_params())
}

fn op_open(key: &[u8; 32], iv: &[u8; 12], tag: &[u8; 16]) -> Operation {
    let params = AesGcmParams {
        key: *key,
        iv: *iv,
        tag: *tag,
        ..AesGcmParams::default()
    };
    decode(Op::AesGcmOpen, params.to_params())
}

fn op_deflate(format: DeflateFormat, level: u8) -> Operation {
    let params = DeflateParams {
        format: format.into(),
        level,
        ..DeflateParams::default()
    };
    decode(Op::DeflateCompress, params.to_params())
}

fn op_inflate(format: DeflateFormat) -> Operation {
    let params = DeflateParams {
        format: format.into(),
        ..DeflateParams::default()
    };
    decode(Op::DeflateDecompress, params.to_params())
}

// ---------------------------------------------------------------------------
// Jobs, runs and checks.

/// An engine with one queue.
struct Rig {
    queue: Box<dyn HwQueue>,
    /// Kept alive (and dropped after the queue) for its worker threads.
    _engine: SoftwareEngine,
}

impl Rig {
    fn new() -> Self {
        let engine = SoftwareEngine::new(THREADS).unwrap();
        let queue = engine.create_queue(DEPTH, Share::default()).unwrap();
        Rig {
            queue,
            _engine: engine,
        }
    }

    fn run(&self, case: Case) -> Done {
        let (job, pending) = case.into_job(0);
        let completion = engine::run_blocking(&*self.queue, job).unwrap();
        assert_eq!(completion.cookie, 0, "{}: cookie", pending.label);
        pending.done(completion.outcome)
    }

    /// Runs `case` and checks it against `expected`; returns the run.
    fn check(&self, case: Case, expected: &Expected) -> Done {
        let done = self.run(case);
        done.check(expected);
        done
    }
}

/// One job to run: buffers are copied into [`OwnedBuffers`], outputs start
/// as they are given (usually all [`SENTINEL`]).
struct Case {
    label: String,
    operation: Operation,
    inputs: Vec<Vec<u8>>,
    outputs: Vec<Vec<u8>>,
    layout: &'static [usize],
}

impl Case {
    fn new(
        label: impl Into<String>,
        operation: Operation,
        inputs: Vec<Vec<u8>>,
        output_lens: &[usize],
        layout: &'static [usize],
    ) -> Self {
        Case {
            label: format!("{} {}", label.into(), layout_name(layout)),
            operation,
            inputs,
            outputs: output_lens.iter().map(|&n| vec![SENTINEL; n]).collect(),
            layout,
        }
    }

    fn into_job(self, cookie: u64) -> (Job, Pending) {
        let num_in = self.inputs.len();
        let num_out = self.outputs.len();
        let buffers = OwnedBuffers::new(self.inputs.into_iter().chain(self.outputs).collect());
        let inputs: Vec<usize> = (0..num_in).collect();
        let outputs: Vec<usize> = (num_in..num_in + num_out).collect();
        let layout = self.layout;
        let job = buffers
            .job(
                self.operation,
                &inputs,
                &outputs,
                |index| layout[index % layout.len()],
                cookie,
            )
            .unwrap();
        let pending = Pending {
            label: self.label,
            buffers,
            num_in,
        };
        (job, pending)
    }
}

/// A submitted job's buffers, to read once it completes.
struct Pending {
    label: String,
    buffers: Arc<OwnedBuffers>,
    num_in: usize,
}

impl Pending {
    fn done(self, outcome: Outcome) -> Done {
        Done {
            label: self.label,
            outcome,
            buffers: self.buffers,
            num_in: self.num_in,
        }
    }
}

/// A completed job.
struct Done {
    label: String,
    outcome: Outcome,
    buffers: Arc<OwnedBuffers>,
    num_in: usize,
}

impl Done {
    fn output(&self, index: usize) -> Vec<u8> {
        self.buffers.to_vec(self.num_in + index).unwrap()
    }

    fn status(&self) -> Status {
        self.outcome.status
    }

    fn check(&self, expected: &Expected) {
        let label = &self.label;
        assert_eq!(
            self.outcome.status, expected.status,
            "{label}: status (outcome {:?})",
            self.outcome
        );
        if let Some(bytes_written) = expected.bytes_written {
            assert_eq!(
                self.outcome.bytes_written, bytes_written,
                "{label}: bytes_written"
            );
        }
        if let Some(result) = &expected.result {
            assert_eq!(&self.outcome.result, result, "{label}: result");
        }
        for (index, check) in expected.outputs.iter().enumerate() {
            let got = &self.output(index);
            let what = format!("{label}: output {index}");
            match check {
                OutputCheck::Exact(want) => assert_bytes(&what, got, want),
                OutputCheck::Untouched => assert_untouched(&what, got),
                OutputCheck::Inflates(format, data) => {
                    let n = usize::try_from(self.outcome.bytes_written).unwrap();
                    assert!(n <= got.len(), "{what}: wrote {n} > {}", got.len());
                    match reference::decompress(*format, &got[..n]) {
                        Ok(plain) => assert_bytes(&format!("{what} inflated"), &plain, data),
                        Err(e) => panic!("{what}: reference cannot inflate the {n} bytes: {e}"),
                    }
                    assert_untouched(&format!("{what} beyond bytes_written"), &got[n..]);
                }
            }
        }
    }
}

/// Compares byte strings without printing megabytes.
fn assert_bytes(what: &str, got: &[u8], want: &[u8]) {
    if got == want {
        return;
    }
    let at = got.iter().zip(want).position(|(a, b)| a != b);
    match at {
        Some(at) => panic!(
            "{what}: differs at byte {at} of {} (got {:#04x}, want {:#04x}; lengths {} vs {})",
            want.len(),
            got[at],
            want[at],
            got.len(),
            want.len()
        ),
        None => panic!(
            "{what}: length {} but want {} (common prefix equal)",
            got.len(),
            want.len()
        ),
    }
}

fn assert_untouched(what: &str, got: &[u8]) {
    if let Some(at) = got.iter().position(|&b| b != SENTINEL) {
        panic!(
            "{what}: byte {at} of {} was written ({:#04x})",
            got.len(),
            got[at]
        );
    }
}

/// What a job must produce.
#[derive(Debug, Clone)]
struct Expected {
    status: Status,
    bytes_written: Option<u64>,
    result: Option<[u8; RESULT_SIZE]>,
    outputs: Vec<OutputCheck>,
}

#[derive(Debug, Clone)]
enum OutputCheck {
    /// Exactly these bytes (whole buffer).
    Exact(Vec<u8>),
    /// Still all [`SENTINEL`].
    Untouched,
    /// The first `bytes_written` bytes inflate (strictly) to the data; the
    /// rest is untouched.
    Inflates(DeflateFormat, Vec<u8>),
}

impl Expected {
    fn ok(bytes_written: usize, result: &[u8], outputs: Vec<OutputCheck>) -> Self {
        let mut padded = [0; RESULT_SIZE];
        padded[..result.len()].copy_from_slice(result);
        Expected {
            status: Status::Ok,
            bytes_written: Some(bytes_written as u64),
            result: Some(padded),
            outputs,
        }
    }

    /// A failure: status only, outputs unchecked.
    fn failed(status: Status) -> Self {
        Expected {
            status,
            bytes_written: None,
            result: None,
            outputs: Vec::new(),
        }
    }

    /// A failure that must leave output 0 untouched.
    fn failed_untouched(status: Status) -> Self {
        Expected {
            outputs: vec![OutputCheck::Untouched],
            ..Expected::failed(status)
        }
    }
}

fn sentinel(len: usize) -> Vec<u8> {
    vec![SENTINEL; len]
}

// Expected outcomes, from the reference implementations.

fn expect_copy(src: &[u8], out_len: usize) -> Expected {
    let mut out = sentinel(out_len);
    match reference::copy(src, &mut out) {
        Ok(n) => Expected::ok(n, &[], vec![OutputCheck::Exact(out)]),
        Err(status) => Expected::failed(status),
    }
}

fn expect_fill(out_len: usize, pattern: u8) -> Expected {
    let mut out = sentinel(out_len);
    let n = reference::fill(&mut out, pattern);
    Expected::ok(n, &[], vec![OutputCheck::Exact(out)])
}

fn expect_compare(a: &[u8], b: &[u8]) -> Expected {
    Expected::ok(0, &reference::compare(a, b).to_le_bytes(), Vec::new())
}

fn expect_crc32c(seed: u32, data: &[u8]) -> Expected {
    Expected::ok(0, &reference::crc32c(seed, data).to_le_bytes(), Vec::new())
}

fn expect_sha256(data: &[u8]) -> Expected {
    Expected::ok(0, &reference::sha256(data), Vec::new())
}

fn expect_seal(
    key: &[u8; 32],
    iv: &[u8; 12],
    aad: &[u8],
    plain: &[u8],
    out_len: usize,
) -> Expected {
    if out_len < plain.len() {
        return Expected::failed(Status::NoSpace);
    }
    let (cipher, tag) = reference::aes256_gcm_seal(key, iv, aad, plain);
    let mut out = sentinel(out_len);
    out[..cipher.len()].copy_from_slice(&cipher);
    Expected::ok(plain.len(), &tag, vec![OutputCheck::Exact(out)])
}

fn expect_open(
    key: &[u8; 32],
    iv: &[u8; 12],
    aad: &[u8],
    cipher: &[u8],
    tag: &[u8; 16],
    out_len: usize,
) -> Expected {
    if out_len < cipher.len() {
        return Expected::failed(Status::NoSpace);
    }
    match reference::aes256_gcm_open(key, iv, aad, cipher, tag) {
        Some(plain) => {
            let mut out = sentinel(out_len);
            out[..plain.len()].copy_from_slice(&plain);
            Expected::ok(cipher.len(), &[], vec![OutputCheck::Exact(out)])
        }
        None => Expected::failed_untouched(Status::AuthFailed),
    }
}

/// A successful compression whose output inflates back to `data`.
fn expect_deflate(format: DeflateFormat, data: &[u8]) -> Expected {
    Expected {
        status: Status::Ok,
        bytes_written: None,
        result: Some([0; RESULT_SIZE]),
        outputs: vec![OutputCheck::Inflates(format, data.to_vec())],
    }
}

/// Decompression of `input` (one stream, maybe followed by other bytes) into
/// `out_len` bytes, as the reference sees it.
fn expect_inflate(format: DeflateFormat, input: &[u8], out_len: usize) -> Expected {
    match reference::decompress_prefix(format, input, out_len) {
        Ok(inflated) => {
            let mut out = sentinel(out_len);
            out[..inflated.data.len()].copy_from_slice(&inflated.data);
            // The result is the stream's length in the input (§8.9).
            let consumed = (inflated.consumed as u64).to_le_bytes();
            Expected::ok(
                inflated.data.len(),
                &consumed,
                vec![OutputCheck::Exact(out)],
            )
        }
        Err(InflateError::TooLarge) => Expected::failed(Status::NoSpace),
        Err(_) => Expected::failed(Status::BadData),
    }
}

/// Room for any deflate output of `len` bytes (stored blocks add 5 bytes per
/// 64 KiB, framing at most a few dozen).
fn deflate_bound(len: usize) -> usize {
    len + len / 16 + 1024
}

// ---------------------------------------------------------------------------
// Known vectors.

#[test]
fn known_vectors() {
    let rig = Rig::new();
    let check_vector = |label: &str, operation: Operation, input: &[u8], result: &[u8]| {
        let mut padded = [0; RESULT_SIZE];
        padded[..result.len()].copy_from_slice(result);
        for layout in LAYOUTS {
            let done = rig.run(Case::new(
                label,
                operation.clone(),
                vec![input.to_vec()],
                &[],
                layout,
            ));
            assert_eq!(done.status(), Status::Ok, "{}", done.label);
            assert_eq!(done.outcome.result, padded, "{}", done.label);
            assert_eq!(done.outcome.bytes_written, 0, "{}", done.label);
        }
    };

    let check = 0xE306_9283_u32;
    assert_eq!(reference::crc32c(0, b"123456789"), check);
    check_vector(
        "crc32c(123456789)",
        op_crc32c(0),
        b"123456789",
        &check.to_le_bytes(),
    );
    // Continuation: the CRC of "1234" as seed, then "56789".
    let seed = reference::crc32c(0, b"1234");
    check_vector(
        "crc32c(1234 | 56789)",
        op_crc32c(seed),
        b"56789",
        &check.to_le_bytes(),
    );
    // RFC 3720 B.4: 32 bytes of zeros and of ones.
    check_vector(
        "crc32c(zeros)",
        op_crc32c(0),
        &[0; 32],
        &0x8A91_36AA_u32.to_le_bytes(),
    );
    check_vector(
        "crc32c(ones)",
        op_crc32c(0),
        &[0xFF; 32],
        &0x62A8_AB43_u32.to_le_bytes(),
    );
    check_vector("crc32c(empty)", op_crc32c(0), b"", &[0; 4]);
    check_vector(
        "crc32c(empty, seed)",
        op_crc32c(0xDEAD_BEEF),
        b"",
        &0xDEAD_BEEF_u32.to_le_bytes(),
    );

    let abc: [u8; 32] = [
        0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde, 0x5d, 0xae, 0x22,
        0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00,
        0x15, 0xad,
    ];
    assert_eq!(reference::sha256(b"abc"), abc);
    check_vector("sha256(abc)", op_sha256(), b"abc", &abc);
    let empty: [u8; 32] = [
        0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9,
        0x24, 0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52,
        0xb8, 0x55,
    ];
    assert_eq!(reference::sha256(b""), empty);
    check_vector("sha256(empty)", op_sha256(), b"", &empty);
    // FIPS 180-2 two-block message.
    let two_block: [u8; 32] = [
        0x24, 0x8d, 0x6a, 0x61, 0xd2, 0x06, 0x38, 0xb8, 0xe5, 0xc0, 0x26, 0x93, 0x0c, 0x3e, 0x60,
        0x39, 0xa3, 0x3c, 0xe4, 0x59, 0x64, 0xff, 0x21, 0x67, 0xf6, 0xec, 0xed, 0xd4, 0x19, 0xdb,
        0x06, 0xc1,
    ];
    let message = b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    assert_eq!(reference::sha256(message), two_block);
    check_vector("sha256(two blocks)", op_sha256(), message, &two_block);
}

#[test]
fn aes_gcm_known_vector() {
    // NIST GCM test case 16 (AES-256, 60-byte plaintext, 20-byte AAD).
    let key: [u8; 32] = hex("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308")
        .try_into()
        .unwrap();
    let iv: [u8; 12] = hex("cafebabefacedbaddecaf888").try_into().unwrap();
    let plain = hex(concat!(
        "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72",
        "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39"
    ));
    let aad = hex("feedfacedeadbeeffeedfacedeadbeefabaddad2");
    let cipher = hex(concat!(
        "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa",
        "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662"
    ));
    let tag: [u8; 16] = hex("76fc6ece0f4e1768cddf8853bb2d551b").try_into().unwrap();
    assert_eq!(
        reference::aes256_gcm_seal(&key, &iv, &aad, &plain),
        (cipher.clone(), tag)
    );
    let rig = Rig::new();
    for layout in LAYOUTS {
        rig.check(
            Case::new(
                "seal(nist16)",
                op_seal(&key, &iv),
                vec![aad.clone(), plain.clone()],
                &[plain.len()],
                layout,
            ),
            &Expected::ok(plain.len(), &tag, vec![OutputCheck::Exact(cipher.clone())]),
        );
        rig.check(
            Case::new(
                "open(nist16)",
                op_open(&key, &iv, &tag),
                vec![aad.clone(), cipher.clone()],
                &[cipher.len()],
                layout,
            ),
            &Expected::ok(cipher.len(), &[], vec![OutputCheck::Exact(plain.clone())]),
        );
    }
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

// ---------------------------------------------------------------------------
// Per-operation sweeps: every size, every layout.

#[test]
fn copy_every_size_and_layout() {
    let mut rng = TestRng::new("copy");
    let rig = Rig::new();
    for size in data::sizes(&mut rng) {
        let src = rng.data(size);
        for &layout in LAYOUTS {
            let mut out_lens = vec![size, size + 13];
            if size > 0 {
                out_lens.push(size - 1);
                out_lens.push(0);
            }
            for out_len in out_lens {
                let expected = expect_copy(&src, out_len);
                if out_len < size {
                    assert_eq!(expected.status, Status::NoSpace);
                }
                rig.check(
                    Case::new(
                        format!("copy {size} -> {out_len}"),
                        op_copy(),
                        vec![src.clone()],
                        &[out_len],
                        layout,
                    ),
                    &expected,
                );
            }
        }
    }
}

#[test]
fn fill_every_size_and_layout() {
    let mut rng = TestRng::new("fill");
    let rig = Rig::new();
    for size in data::sizes(&mut rng) {
        for &layout in LAYOUTS {
            for pattern in [
                0,
                0xFF,
                loop {
                    let p: u8 = rng.array::<1>()[0];
                    if p != SENTINEL {
                        break p;
                    }
                },
            ] {
                rig.check(
                    Case::new(
                        format!("fill {size} with {pattern:#04x}"),
                        op_fill(pattern),
                        Vec::new(),
                        &[size],
                        layout,
                    ),
                    &expect_fill(size, pattern),
                );
            }
        }
    }
}

#[test]
fn compare_every_size_and_layout() {
    let mut rng = TestRng::new("compare");
    let rig = Rig::new();
    for size in data::sizes(&mut rng) {
        let a = rng.data(size);
        // (name, second input, expected offset)
        let mut variants: Vec<(String, Vec<u8>, u64)> =
            vec![("equal".into(), a.clone(), COMPARE_EQUAL)];
        if size > 0 {
            let mut offsets = vec![0, size - 1, size / 2, rng.below(size)];
            offsets.dedup();
            for at in offsets {
                let mut b = a.clone();
                b[at] ^= 1 << rng.below(8);
                variants.push((format!("differ@{at}"), b, at as u64));
            }
            for prefix in [0, size / 2, size - 1] {
                variants.push((
                    format!("prefix {prefix}"),
                    a[..prefix].to_vec(),
                    prefix as u64,
                ));
            }
            // A later difference does not hide an earlier one.
            if size > 2 {
                let mut b = a.clone();
                b[1] ^= 0x80;
                b[size - 1] ^= 0x80;
                variants.push(("differ@1 and last".into(), b, 1));
            }
        }
        let mut longer = a.clone();
        longer.push(0);
        variants.push(("longer".into(), longer, size as u64));
        for (name, b, offset) in variants {
            // Check the reference itself against the brief's semantics first.
            assert_eq!(reference::compare(&a, &b), offset, "reference {name}");
            assert_eq!(
                reference::compare(&b, &a),
                offset,
                "reference {name} swapped"
            );
            for &layout in LAYOUTS {
                for (x, y, order) in [(&a, &b, "a,b"), (&b, &a, "b,a")] {
                    rig.check(
                        Case::new(
                            format!("compare {size} {name} ({order})"),
                            op_compare(),
                            vec![x.clone(), y.clone()],
                            &[],
                            layout,
                        ),
                        &expect_compare(x, y),
                    );
                }
            }
        }
    }
}

#[test]
fn crc32c_every_size_and_layout() {
    let mut rng = TestRng::new("crc32c");
    let rig = Rig::new();
    for size in data::sizes(&mut rng) {
        let input = rng.bytes(size);
        let nonzero = loop {
            let seed = rng.next_u32();
            if seed != 0 {
                break seed;
            }
        };
        for seed in [0, nonzero, u32::MAX] {
            let expected = expect_crc32c(seed, &input);
            for &layout in LAYOUTS {
                rig.check(
                    Case::new(
                        format!("crc32c {size} seed {seed:#x}"),
                        op_crc32c(seed),
                        vec![input.clone()],
                        &[],
                        layout,
                    ),
                    &expected,
                );
            }
        }
        // Continuation through the engine: CRC(a) as the seed of CRC(b).
        let split = rng.below(size + 1);
        let first = rig.run(Case::new(
            format!("crc32c {size} first {split}"),
            op_crc32c(0),
            vec![input[..split].to_vec()],
            &[],
            &[7],
        ));
        let seed = u32::from_le_bytes(first.outcome.result[..4].try_into().unwrap());
        rig.check(
            Case::new(
                format!("crc32c {size} rest after {split}"),
                op_crc32c(seed),
                vec![input[split..].to_vec()],
                &[],
                &[4096],
            ),
            &expect_crc32c(0, &input),
        );
    }
}

#[test]
fn sha256_every_size_and_layout() {
    let mut rng = TestRng::new("sha256");
    let rig = Rig::new();
    for size in data::sizes(&mut rng) {
        let input = rng.data(size);
        let expected = expect_sha256(&input);
        for &layout in LAYOUTS {
            rig.check(
                Case::new(
                    format!("sha256 {size}"),
                    op_sha256(),
                    vec![input.clone()],
                    &[],
                    layout,
                ),
                &expected,
            );
        }
    }
}

/// AAD lengths tried with each plaintext size (cycled over the layouts).
const AAD_LENS: &[usize] = &[0, 13, 16, 4097];

#[test]
fn aes_gcm_seal_every_size_and_layout() {
    let mut rng = TestRng::new("aes-gcm-seal");
    let rig = Rig::new();
    for size in data::sizes(&mut rng) {
        let plain = rng.data(size);
        let (key, iv) = (rng.array::<32>(), rng.array::<12>());
        for (index, &layout) in LAYOUTS.iter().enumerate() {
            let aad = rng.bytes(AAD_LENS[index % AAD_LENS.len()]);
            let mut out_lens = vec![size, size + 5];
            if size > 0 {
                out_lens.push(size - 1);
            }
            for out_len in out_lens {
                let expected = expect_seal(&key, &iv, &aad, &plain, out_len);
                rig.check(
                    Case::new(
                        format!("seal {size} aad {} -> {out_len}", aad.len()),
                        op_seal(&key, &iv),
                        vec![aad.clone(), plain.clone()],
                        &[out_len],
                        layout,
                    ),
                    &expected,
                );
            }
        }
    }
}

#[test]
fn aes_gcm_open_every_size_and_layout() {
    let mut rng = TestRng::new("aes-gcm-open");
    let rig = Rig::new();
    for size in data::sizes(&mut rng) {
        let plain = rng.data(size);
        let (key, iv) = (rng.array::<32>(), rng.array::<12>());
        for (index, &layout) in LAYOUTS.iter().enumerate() {
            let aad = rng.bytes(AAD_LENS[index % AAD_LENS.len()]);
            let (cipher, tag) = reference::aes256_gcm_seal(&key, &iv, &aad, &plain);
            let open = |label: &str,
                        aad: &[u8],
                        cipher: &[u8],
                        tag: &[u8; 16],
                        iv: &[u8; 12],
                        out_len: usize| {
                rig.check(
                    Case::new(
                        format!("open {size} aad {} {label} -> {out_len}", aad.len()),
                        op_open(&key, iv, tag),
                        vec![aad.to_vec(), cipher.to_vec()],
                        &[out_len],
                        layout,
                    ),
                    &expect_open(&key, iv, aad, cipher, tag, out_len),
                )
            };
            // Restores the plaintext.
            let done = open("valid", &aad, &cipher, &tag, &iv, size);
            assert_bytes(&done.label, &done.output(0), &plain);
            open("valid, larger output", &aad, &cipher, &tag, &iv, size + 9);
            if size > 0 {
                open("output too small", &aad, &cipher, &tag, &iv, size - 1);
            }
            // Any tampering: AuthFailed, output untouched.
            let bit = rng.below(128);
            let mut bad_tag = tag;
            bad_tag[bit / 8] ^= 1 << (bit % 8);
            let done = open("flipped tag bit", &aad, &cipher, &bad_tag, &iv, size);
            assert_eq!(done.status(), Status::AuthFailed, "{}", done.label);
            if size > 0 {
                let mut bad = cipher.clone();
                let at = rng.below(size);
                bad[at] ^= 1 << rng.below(8);
                let done = open("flipped ciphertext bit", &aad, &bad, &tag, &iv, size);
                assert_eq!(done.status(), Status::AuthFailed, "{}", done.label);
                let done = open(
                    "truncated ciphertext",
                    &aad,
                    &cipher[..size - 1],
                    &tag,
                    &iv,
                    size,
                );
                assert_eq!(done.status(), Status::AuthFailed, "{}", done.label);
            }
            if !aad.is_empty() {
                let mut bad = aad.clone();
                let at = rng.below(bad.len());
                bad[at] ^= 0x01;
                let done = open("flipped aad bit", &bad, &cipher, &tag, &iv, size);
                assert_eq!(done.status(), Status::AuthFailed, "{}", done.label);
            }
            let mut bad_iv = iv;
            bad_iv[11] ^= 0x80;
            let done = open("other iv", &aad, &cipher, &tag, &bad_iv, size);
            assert_eq!(done.status(), Status::AuthFailed, "{}", done.label);
        }
    }
}

#[test]
fn deflate_compress_every_format_level_size_and_layout() {
    let mut rng = TestRng::new("deflate");
    let rig = Rig::new();
    for size in data::sizes(&mut rng) {
        let inputs = [("text", rng.text(size)), ("random", rng.bytes(size))];
        for (k, (kind, input)) in inputs.iter().enumerate() {
            for (f, format) in formats().enumerate() {
                for (l, level) in LEVELS.into_iter().enumerate() {
                    let salt = (k * 3 + f) * LEVELS.len() + l;
                    for (index, layout) in layouts_for(size, salt) {
                        let label = format!("deflate {format:?} level {level} {kind} {size}");
                        let done = rig.check(
                            Case::new(
                                label.clone(),
                                op_deflate(format, level),
                                vec![input.clone()],
                                &[deflate_bound(size)],
                                layout,
                            ),
                            &expect_deflate(format, input),
                        );
                        // Exact fit and one byte short, on some layouts.
                        let exact_fit = if size > BIG {
                            salt % 6 == 0
                        } else {
                            index % 3 == 0
                        };
                        if !exact_fit {
                            continue;
                        }
                        let n = usize::try_from(done.outcome.bytes_written).unwrap();
                        let compressed = done.output(0)[..n].to_vec();
                        rig.check(
                            Case::new(
                                format!("{label} exact output {n}"),
                                op_deflate(format, level),
                                vec![input.clone()],
                                &[n],
                                layout,
                            ),
                            &Expected::ok(n, &[], vec![OutputCheck::Exact(compressed)]),
                        );
                        rig.check(
                            Case::new(
                                format!("{label} output {}", n - 1),
                                op_deflate(format, level),
                                vec![input.clone()],
                                &[n - 1],
                                layout,
                            ),
                            &Expected::failed(Status::NoSpace),
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn deflate_compress_output_too_small() {
    let mut rng = TestRng::new("deflate-nospace");
    let rig = Rig::new();
    for size in [0, 1, 100, 70_000] {
        let input = rng.bytes(size);
        for format in formats() {
            for level in LEVELS {
                let mut out_lens = vec![0, 1, size / 2];
                out_lens.dedup();
                for out_len in out_lens {
                    for &layout in &LAYOUTS[..4] {
                        rig.check(
                            Case::new(
                                format!(
                                    "deflate {format:?} level {level} random {size} -> {out_len}"
                                ),
                                op_deflate(format, level),
                                vec![input.clone()],
                                &[out_len],
                                layout,
                            ),
                            &Expected::failed(Status::NoSpace),
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn deflate_decompress_every_format_size_and_layout() {
    let mut rng = TestRng::new("inflate");
    let rig = Rig::new();
    for size in data::sizes(&mut rng) {
        let inputs = [("text", rng.text(size)), ("random", rng.bytes(size))];
        for (k, (kind, input)) in inputs.iter().enumerate() {
            for (f, format) in formats().enumerate() {
                for (index, layout) in layouts_for(size, f * 2 + k) {
                    // A different reference level per layout (miniz 10 = "uber").
                    let level = [0, 1, 6, 9, 10][index % 5];
                    let compressed = reference::compress(format, level, input);
                    let label = format!(
                        "inflate {format:?} {kind} {size} (ref level {level}, {} bytes)",
                        compressed.len()
                    );
                    let mut out_lens = vec![size, size + 17];
                    if size > 0 {
                        out_lens.push(size - 1);
                    }
                    for out_len in out_lens {
                        let expected = expect_inflate(format, &compressed, out_len);
                        let want = if out_len >= size {
                            Status::Ok
                        } else {
                            Status::NoSpace
                        };
                        assert_eq!(expected.status, want, "{label}: reference");
                        rig.check(
                            Case::new(
                                format!("{label} -> {out_len}"),
                                op_inflate(format),
                                vec![compressed.clone()],
                                &[out_len],
                                layout,
                            ),
                            &expected,
                        );
                    }
                }
            }
        }
    }
}

/// Sizes around the engine's 64 KiB streaming chunk, for both directions,
/// with exact-fit outputs.
#[test]
fn deflate_stream_chunk_boundaries() {
    let mut rng = TestRng::new("deflate-chunks");
    let rig = Rig::new();
    for size in [65_535, 65_536, 65_537, 131_071, 131_072, 131_073] {
        for (kind, input) in [("text", rng.text(size)), ("random", rng.bytes(size))] {
            for format in formats() {
                for level in [0, 1] {
                    let layout = LAYOUTS[rng.below(LAYOUTS.len())];
                    let label = format!("deflate {format:?} level {level} {kind} {size}");
                    let done = rig.check(
                        Case::new(
                            label.clone(),
                            op_deflate(format, level),
                            vec![input.clone()],
                            &[deflate_bound(size)],
                            layout,
                        ),
                        &expect_deflate(format, &input),
                    );
                    let n = usize::try_from(done.outcome.bytes_written).unwrap();
                    let compressed = done.output(0)[..n].to_vec();
                    rig.check(
                        Case::new(
                            format!("{label} exact output {n}"),
                            op_deflate(format, level),
                            vec![input.clone()],
                            &[n],
                            layout,
                        ),
                        &Expected::ok(n, &[], vec![OutputCheck::Exact(compressed.clone())]),
                    );
                    // The engine inflates its own output and the reference's.
                    let theirs = reference::compress(format, level, &input);
                    for (whose, stream) in [("engine", compressed), ("reference", theirs)] {
                        for out_len in [size, size - 1] {
                            rig.check(
                                Case::new(
                                    format!("inflate {whose} {label} -> {out_len}"),
                                    op_inflate(format),
                                    vec![stream.clone()],
                                    &[out_len],
                                    layout,
                                ),
                                &expect_inflate(format, &stream, out_len),
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn deflate_decompress_gzip_header_fields() {
    let mut rng = TestRng::new("gzip-headers");
    let rig = Rig::new();
    let input = rng.text(5000);
    let full = GzipHeader::full();
    for mask in 0..32u32 {
        let header = GzipHeader {
            text: mask & 1 != 0,
            extra: (mask & 2 != 0).then(|| full.extra.clone().unwrap()),
            name: (mask & 4 != 0).then(|| full.name.clone().unwrap()),
            comment: (mask & 8 != 0).then(|| full.comment.clone().unwrap()),
            header_crc: mask & 16 != 0,
            ..full.clone()
        };
        let compressed = reference::compress_gzip(&header, 6, &input);
        assert_eq!(
            reference::decompress(DeflateFormat::Gzip, &compressed).unwrap(),
            input
        );
        for &layout in &LAYOUTS[..4] {
            rig.check(
                Case::new(
                    format!("inflate gzip header {header:?}"),
                    op_inflate(DeflateFormat::Gzip),
                    vec![compressed.clone()],
                    &[input.len()],
                    layout,
                ),
                &Expected::ok(
                    input.len(),
                    &(compressed.len() as u64).to_le_bytes(),
                    vec![OutputCheck::Exact(input.clone())],
                ),
            );
        }
    }
    // A large FEXTRA, spanning the engine's input chunks.
    let header = GzipHeader {
        extra: Some(rng.bytes(65_535)),
        ..GzipHeader::minimal()
    };
    let compressed = reference::compress_gzip(&header, 6, &input);
    let consumed = (compressed.len() as u64).to_le_bytes();
    rig.check(
        Case::new(
            "inflate gzip 64 KiB extra field",
            op_inflate(DeflateFormat::Gzip),
            vec![compressed],
            &[input.len()],
            &[7],
        ),
        &Expected::ok(
            input.len(),
            &consumed,
            vec![OutputCheck::Exact(input.clone())],
        ),
    );
}

/// Hand-made invalid streams, each with a reason.
fn corrupt_streams(rng: &mut TestRng) -> Vec<(String, DeflateFormat, Vec<u8>)> {
    let input = rng.text(20_000);
    let mut cases = Vec::new();
    let mut add = |name: &str, format: DeflateFormat, bytes: Vec<u8>| {
        assert!(
            reference::decompress_prefix(format, &bytes, usize::MAX).is_err(),
            "reference accepts corrupt case {name}"
        );
        cases.push((name.to_owned(), format, bytes));
    };
    use DeflateFormat::{Gzip, Raw, Zlib};
    // Raw: reserved block type 3; stored block with LEN != !NLEN; a
    // distance before the start of the output (fixed Huffman).
    add("raw reserved block type", Raw, vec![0x07, 0x00, 0x00]);
    add(
        "raw stored len/nlen mismatch",
        Raw,
        vec![0x01, 0x05, 0x00, 0x00, 0x00, 1, 2, 3, 4, 5],
    );
    add(
        "raw distance too far back",
        Raw,
        vec![0x03, 0x02, 0x00, 0x00],
    );
    for format in formats() {
        let good = reference::compress(format, 6, &input);
        let n = good.len();
        match format {
            Raw => {}
            Zlib => {
                let mut bad = good.clone();
                bad[1] ^= 0x01;
                add("zlib header check", Zlib, bad);
                let mut bad = good.clone();
                bad[0] = (bad[0] & 0xF0) | 0x07;
                add("zlib method 7", Zlib, bad);
                let mut bad = good.clone();
                bad[n - 1] ^= 0x01;
                add("zlib adler-32", Zlib, bad);
            }
            Gzip => {
                let mut bad = good.clone();
                bad[0] = 0x1e;
                add("gzip magic", Gzip, bad);
                let mut bad = good.clone();
                bad[2] = 7;
                add("gzip method", Gzip, bad);
                let mut bad = good.clone();
                bad[3] |= 0x20;
                add("gzip reserved flag", Gzip, bad);
                let mut bad = good.clone();
                bad[n - 8] ^= 0x01;
                add("gzip crc-32", Gzip, bad);
                let mut bad = good.clone();
                bad[n - 2] ^= 0x01;
                add("gzip isize", Gzip, bad);
                let mut header = GzipHeader::full().encode();
                let at = header.len() - 1;
                header[at] ^= 0x01;
                let raw = reference::compress(Raw, 6, &input);
                let mut bad = header;
                bad.extend_from_slice(&raw);
                bad.extend_from_slice(&reference::crc32_ieee(0, &input).to_le_bytes());
                bad.extend_from_slice(&u32::try_from(input.len()).unwrap().to_le_bytes());
                add("gzip header crc", Gzip, bad);
            }
        }
        // Truncations, including the empty input and the trailer.
        let mut cuts = vec![0, 1, 2, n / 2, n - 4, n - 1];
        cuts.dedup();
        for cut in cuts {
            add(
                &format!("{format:?} truncated to {cut} of {n}"),
                format,
                good[..cut].to_vec(),
            );
        }
    }
    cases
}

#[test]
fn deflate_decompress_corrupt_and_truncated_is_bad_data() {
    let mut rng = TestRng::new("inflate-bad");
    let rig = Rig::new();
    for (name, format, bytes) in corrupt_streams(&mut rng) {
        for &layout in LAYOUTS {
            rig.check(
                Case::new(
                    format!("inflate {name}"),
                    op_inflate(format),
                    vec![bytes.clone()],
                    &[64 * 1024],
                    layout,
                ),
                &Expected::failed(Status::BadData),
            );
        }
    }
    // Truncation of large streams at every engine chunk boundary region.
    let input = rng.bytes(200_000);
    for format in formats() {
        let good = reference::compress(format, 1, &input);
        for cut in [
            65_535,
            65_536,
            65_537,
            131_072,
            good.len() - 8,
            good.len() - 1,
        ] {
            rig.check(
                Case::new(
                    format!("inflate {format:?} random 200000 truncated to {cut}"),
                    op_inflate(format),
                    vec![good[..cut].to_vec()],
                    &[input.len() + 1],
                    &[WHOLE],
                ),
                &Expected::failed(Status::BadData),
            );
        }
    }
}

/// Random bit flips in valid streams: the engine must agree with the
/// reference decoder (same output when it accepts; BadData or NoSpace when it
/// rejects).
#[test]
fn deflate_decompress_bit_flips_agree_with_reference() {
    let mut rng = TestRng::new("inflate-flips");
    let rig = Rig::new();
    let inputs = [rng.text(20_000), rng.bytes(3000)];
    let mut tally: HashMap<String, usize> = HashMap::new();
    for input in &inputs {
        for format in formats() {
            for level in [1, 6, 9] {
                let good = reference::compress(format, level, input);
                for _ in 0..100 {
                    let mut bad = good.clone();
                    let bit = rng.below(bad.len() * 8);
                    bad[bit / 8] ^= 1 << (bit % 8);
                    let out_len = input.len() + 4096;
                    let reference = reference::decompress_prefix(format, &bad, out_len);
                    let done = rig.run(Case::new(
                        format!(
                            "inflate {format:?} level {level} {} bytes, bit {bit} flipped",
                            good.len()
                        ),
                        op_inflate(format),
                        vec![bad],
                        &[out_len],
                        &[WHOLE],
                    ));
                    let label = &done.label;
                    match (&reference, done.status()) {
                        (Ok(inflated), Status::Ok) => {
                            let n = inflated.data.len();
                            assert_eq!(done.outcome.bytes_written, n as u64, "{label}");
                            assert_bytes(label, &done.output(0)[..n], &inflated.data);
                            assert_untouched(label, &done.output(0)[n..]);
                        }
                        (Err(_), Status::BadData | Status::NoSpace) => {}
                        (reference, status) => panic!(
                            "{label}: engine {status:?} (outcome {:?}) but reference {:?}",
                            done.outcome,
                            reference.as_ref().map(|i| (i.data.len(), i.consumed))
                        ),
                    }
                    let key = match &reference {
                        Ok(_) => "accepted".to_owned(),
                        Err(e) => format!("{e:?}"),
                    };
                    *tally.entry(key).or_default() += 1;
                }
            }
        }
    }
    eprintln!("bit flips: {tally:?}");
}

// ---------------------------------------------------------------------------
// Parameter blocks.

#[test]
fn params_decode_rejects_reserved_bytes_and_bad_values() {
    for op in Op::ALL.iter().copied() {
        // The last byte is reserved in every parameter block but OPEN's,
        // where it is part of the tag; OPEN's reserved bytes are 44..48.
        let reserved_at = if op == Op::AesGcmOpen {
            44
        } else {
            PARAMS_SIZE - 1
        };
        let mut params = [0; PARAMS_SIZE];
        params[reserved_at] = 1;
        assert!(
            matches!(
                Operation::decode(op, &params),
                Err(ParamsError::ReservedNotZero(_))
            ),
            "{op:?}"
        );
    }
    for op in [Op::Copy, Op::Compare, Op::Sha256] {
        let mut params = [0; PARAMS_SIZE];
        params[0] = 1;
        assert!(Operation::decode(op, &params).is_err(), "{op:?}");
    }
    // Seal: the tag field is reserved.
    let seal = AesGcmParams {
        tag: [1; 16],
        ..AesGcmParams::default()
    };
    assert!(Operation::decode(Op::AesGcmSeal, &seal.to_params()).is_err());
    let open = AesGcmParams {
        reserved: [1, 0, 0, 0],
        ..AesGcmParams::default()
    };
    assert!(Operation::decode(Op::AesGcmOpen, &open.to_params()).is_err());
    let deflate = |format: u8, level: u8| DeflateParams {
        format,
        level,
        ..DeflateParams::default()
    };
    assert!(matches!(
        Operation::decode(Op::DeflateCompress, &deflate(0, 10).to_params()),
        Err(ParamsError::Level(10))
    ));
    assert!(matches!(
        Operation::decode(Op::DeflateCompress, &deflate(3, 6).to_params()),
        Err(ParamsError::Format(_))
    ));
    assert!(Operation::decode(Op::DeflateDecompress, &deflate(3, 0).to_params()).is_err());
    assert!(Operation::decode(Op::DeflateDecompress, &deflate(1, 6).to_params()).is_err());
    for format in 0..3 {
        for level in 0..=9 {
            assert!(
                Operation::decode(Op::DeflateCompress, &deflate(format, level).to_params()).is_ok()
            );
        }
        assert!(Operation::decode(Op::DeflateDecompress, &deflate(format, 0).to_params()).is_ok());
    }
    assert!(Operation::decode(Op::Crc32c, &op_crc32c_params(u32::MAX)).is_ok());
}

fn op_crc32c_params(seed: u32) -> [u8; PARAMS_SIZE] {
    Crc32cParams {
        seed: Le32::from(seed),
        ..Crc32cParams::default()
    }
    .to_params()
}

// ---------------------------------------------------------------------------
// Concurrency.

/// A random job of any operation, with what it must produce.
fn random_case(rng: &mut TestRng, label: &str) -> (Case, Expected) {
    let size = match rng.below(8) {
        0 => 0,
        1 => 1 + rng.below(64),
        2 => 4096,
        3 => 65_536 + 7,
        _ => rng.below(70_000),
    };
    let layout = LAYOUTS[rng.below(LAYOUTS.len())];
    let input = rng.data(size);
    let op = Op::ALL[rng.below(Op::ALL.len())];
    let name = format!("{label} {} {size}", op.name());
    let case = |operation: Operation, inputs: Vec<Vec<u8>>, outputs: &[usize]| {
        Case::new(name.clone(), operation, inputs, outputs, layout)
    };
    match op {
        Op::Copy => {
            let out_len = size + rng.below(3) * 7;
            (
                case(op_copy(), vec![input.clone()], &[out_len]),
                expect_copy(&input, out_len),
            )
        }
        Op::Fill => {
            let pattern = rng.array::<1>()[0];
            (
                case(op_fill(pattern), Vec::new(), &[size]),
                expect_fill(size, pattern),
            )
        }
        Op::Compare => {
            let mut other = input.clone();
            match rng.below(3) {
                0 => {}
                1 if size > 0 => {
                    let at = rng.below(size);
                    other[at] ^= 0x40;
                }
                _ => other.truncate(rng.below(size + 1)),
            }
            let expected = expect_compare(&input, &other);
            (case(op_compare(), vec![input, other], &[]), expected)
        }
        Op::Crc32c => {
            let seed = rng.array::<4>();
            let seed = u32::from_le_bytes(seed);
            let expected = expect_crc32c(seed, &input);
            (case(op_crc32c(seed), vec![input], &[]), expected)
        }
        Op::Sha256 => {
            let expected = expect_sha256(&input);
            (case(op_sha256(), vec![input], &[]), expected)
        }
        Op::AesGcmSeal => {
            let (key, iv) = (rng.array::<32>(), rng.array::<12>());
            let aad_len = rng.below(100);
            let aad = rng.bytes(aad_len);
            let expected = expect_seal(&key, &iv, &aad, &input, size);
            (
                case(op_seal(&key, &iv), vec![aad, input], &[size]),
                expected,
            )
        }
        Op::AesGcmOpen => {
            let (key, iv) = (rng.array::<32>(), rng.array::<12>());
            let aad_len = rng.below(100);
            let aad = rng.bytes(aad_len);
            let (cipher, mut tag) = reference::aes256_gcm_seal(&key, &iv, &aad, &input);
            if rng.below(4) == 0 {
                tag[rng.below(16)] ^= 0x10;
            }
            let expected = expect_open(&key, &iv, &aad, &cipher, &tag, size);
            (
                case(op_open(&key, &iv, &tag), vec![aad, cipher], &[size]),
                expected,
            )
        }
        Op::DeflateCompress => {
            let format = DeflateFormat::ALL[rng.below(3)];
            let level = LEVELS[rng.below(LEVELS.len())];
            let expected = expect_deflate(format, &input);
            (
                case(
                    op_deflate(format, level),
                    vec![input],
                    &[deflate_bound(size)],
                ),
                expected,
            )
        }
        Op::DeflateDecompress => {
            let format = DeflateFormat::ALL[rng.below(3)];
            let compressed = reference::compress(format, [1, 6, 9][rng.below(3)], &input);
            let out_len = match rng.below(4) {
                0 => size.saturating_sub(1),
                1 => size + 100,
                _ => size,
            };
            let expected = expect_inflate(format, &compressed, out_len);
            (
                case(op_inflate(format), vec![compressed], &[out_len]),
                expected,
            )
        }
    }
}

/// Submits `cases` to `queue`, all in one vector or (`batched`) in random
/// batches with reaping in between, then waits for every completion and
/// checks it by cookie. Returns how many completions arrived at a different
/// position than their job's submission.
fn run_concurrently(
    queue: &dyn HwQueue,
    rng: &mut TestRng,
    cases: Vec<(Case, Expected)>,
    batched: bool,
) -> usize {
    let total = cases.len();
    let mut pending: HashMap<u64, (Pending, Expected)> = HashMap::new();
    let mut jobs = Vec::new();
    let mut order = Vec::new();
    for (index, (case, expected)) in cases.into_iter().enumerate() {
        // Sparse, non-sequential cookies.
        let cookie = (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let (job, p) = case.into_job(cookie);
        jobs.push(job);
        order.push(cookie);
        assert!(pending.insert(cookie, (p, expected)).is_none());
    }
    let mut completions: Vec<HwCompletion> = Vec::new();
    if batched {
        while !jobs.is_empty() {
            let take = (1 + rng.below(32)).min(jobs.len());
            let mut batch: Vec<Job> = jobs.drain(..take).collect();
            queue.submit(&mut batch).unwrap();
            assert!(batch.is_empty(), "submit drains the batch");
            queue.reap(&mut completions);
        }
    } else {
        queue.submit(&mut jobs).unwrap();
        assert!(jobs.is_empty(), "submit drains the vector");
    }
    let mut seen = Vec::with_capacity(total);
    let mut check = |completions: &mut Vec<HwCompletion>, seen: &mut Vec<u64>| {
        for completion in completions.drain(..) {
            let (p, expected) = pending
                .remove(&completion.cookie)
                .unwrap_or_else(|| panic!("unknown or repeated cookie {:#x}", completion.cookie));
            p.done(completion.outcome).check(&expected);
            seen.push(completion.cookie);
        }
    };
    check(&mut completions, &mut seen);
    while seen.len() < total {
        queue.completion_event().read().unwrap();
        queue.reap(&mut completions);
        check(&mut completions, &mut seen);
    }
    // Nothing more arrives.
    queue.reap(&mut completions);
    assert!(completions.is_empty(), "extra completions: {completions:?}");
    seen.iter().zip(&order).filter(|(a, b)| a != b).count()
}

#[test]
fn many_jobs_in_one_submission() {
    let mut rng = TestRng::new("concurrent-one-vec");
    let rig = Rig::new();
    let cases: Vec<_> = (0..400)
        .map(|i| random_case(&mut rng, &format!("job {i}")))
        .collect();
    let out_of_order = run_concurrently(&*rig.queue, &mut rng, cases, false);
    eprintln!("{out_of_order} of 400 completions at another position than submitted");
}

#[test]
fn many_jobs_in_batches_with_interleaved_reaping() {
    let mut rng = TestRng::new("concurrent-batches");
    let rig = Rig::new();
    for round in 0..3 {
        let cases: Vec<_> = (0..200)
            .map(|i| random_case(&mut rng, &format!("round {round} job {i}")))
            .collect();
        run_concurrently(&*rig.queue, &mut rng, cases, true);
    }
}

#[test]
fn many_queues_from_many_threads() {
    let mut rng = TestRng::new("concurrent-queues");
    let engine = SoftwareEngine::new(THREADS).unwrap();
    let forks: Vec<TestRng> = (0..4).map(|i| rng.fork(&format!("thread {i}"))).collect();
    std::thread::scope(|scope| {
        for (t, mut rng) in forks.into_iter().enumerate() {
            let engine = &engine;
            scope.spawn(move || {
                let queue = engine.create_queue(DEPTH, Share::default()).unwrap();
                for round in 0..2 {
                    let cases: Vec<_> = (0..100)
                        .map(|i| {
                            random_case(&mut rng, &format!("thread {t} round {round} job {i}"))
                        })
                        .collect();
                    run_concurrently(&*queue, &mut rng, cases, round == 1);
                }
            });
        }
    });
}

/// The same large jobs, run alone and then all at once, give identical bytes
/// (deflate output included: the compressor is deterministic).
#[test]
fn concurrency_gives_the_same_results_as_sequential_runs() {
    let mut rng = TestRng::new("concurrent-determinism");
    let rig = Rig::new();
    let input = rng.text(300_000);
    let make = |i: usize| {
        let format = DeflateFormat::ALL[i % 3];
        let level = LEVELS[i % LEVELS.len()];
        Case::new(
            format!("deflate {format:?} level {level} #{i}"),
            op_deflate(format, level),
            vec![input.clone()],
            &[deflate_bound(input.len())],
            LAYOUTS[i % LAYOUTS.len()],
        )
    };
    let count = 24;
    let sequential: Vec<(u64, Vec<u8>)> = (0..count)
        .map(|i| {
            let done = rig.run(make(i));
            assert_eq!(done.status(), Status::Ok, "{}", done.label);
            let n = usize::try_from(done.outcome.bytes_written).unwrap();
            (done.outcome.bytes_written, done.output(0)[..n].to_vec())
        })
        .collect();
    let cases = (0..count)
        .map(|i| {
            let (n, bytes) = &sequential[i];
            let mut out = bytes.clone();
            out.resize(deflate_bound(input.len()), SENTINEL);
            (
                make(i),
                Expected {
                    status: Status::Ok,
                    bytes_written: Some(*n),
                    result: Some([0; RESULT_SIZE]),
                    outputs: vec![OutputCheck::Exact(out)],
                },
            )
        })
        .collect();
    run_concurrently(&*rig.queue, &mut rng, cases, false);
}

#[test]
fn submission_beyond_queue_depth_is_refused() {
    let engine = SoftwareEngine::new(1).unwrap();
    let queue = engine.create_queue(4, Share::default()).unwrap();
    let make = |n: usize| -> Vec<Job> {
        (0..n)
            .map(|i| {
                Case::new("fill", op_fill(1), Vec::new(), &[16], &[WHOLE])
                    .into_job(i as u64)
                    .0
            })
            .collect()
    };
    let mut jobs = make(5);
    assert!(matches!(
        queue.submit(&mut jobs),
        Err(EngineError::QueueFull)
    ));
    assert_eq!(jobs.len(), 5, "a refused batch stays with the caller");
    let mut jobs = make(4);
    queue.submit(&mut jobs).unwrap();
    let mut done = Vec::new();
    while done.len() < 4 {
        queue.completion_event().read().unwrap();
        queue.reap(&mut done);
    }
    let mut cookies: Vec<u64> = done.iter().map(|c| c.cookie).collect();
    cookies.sort_unstable();
    assert_eq!(cookies, [0, 1, 2, 3]);
    assert!(done.iter().all(|c| c.outcome.status == Status::Ok));
    // An empty submission is fine.
    queue.submit(&mut Vec::new()).unwrap();
    assert!(!engine.name().is_empty());
    assert_eq!(engine.capabilities(), Op::all_capabilities());
}
