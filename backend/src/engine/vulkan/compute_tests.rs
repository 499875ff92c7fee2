// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Tests of the Vulkan engine's compute shaders (COMPARE, CRC32C, SHA-256),
//! every result checked against the software engine's. They need a Vulkan
//! device (lavapipe will do: Debian's `mesa-vulkan-drivers`); without one
//! they say so on stderr and pass, unless `ACCEL_VULKAN_REQUIRED=1`, which
//! makes them fail. A device whose compute path is off fails them: they
//! would compare the software engine with itself.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_accel_spec::op::COMPARE_EQUAL;
use virtio_accel_spec::Status;

use super::compute::Compute;
use super::gpu::Gpu;
use super::tests::{completions, list, no_device, noise};
use super::{VulkanEngine, COMPUTE_CHUNK, SHA_CHUNK};
use crate::command::Operation;
use crate::engine::software::SoftwareEngine;
use crate::engine::{run_blocking, Engine, Job, Share};
use crate::ops::{Outcome, CANCELLED};
use crate::sg::OwnedBuffers;

/// The engine, with its compute path in use, or `None` without a device.
fn engine() -> Option<VulkanEngine> {
    let engine = VulkanEngine::new(None).map_err(|e| no_device(&e)).ok()?;
    if !engine.runs_compute() {
        // The reason, which the engine logs.
        let gpu = Arc::new(Gpu::open(None).unwrap());
        let why = Compute::new(&gpu).and_then(|mut compute| compute.warm_up());
        panic!(
            "the compute shaders of {:?} are off: {why:?}",
            engine.device_name()
        );
    }
    Some(engine)
}

/// Runs the job `make` builds on `buffers` through `engine` and through a
/// software engine, each on its own copy of the buffers, and checks that
/// both give the same outcome and leave every buffer alike.
fn same_as_software(
    engine: &VulkanEngine,
    reference: &SoftwareEngine,
    buffers: &[Vec<u8>],
    what: &str,
    make: impl Fn(&Arc<OwnedBuffers>) -> Job,
) -> Outcome {
    let run = |engine: &dyn Engine| {
        let owned = OwnedBuffers::new(buffers.to_vec());
        let queue = engine.create_queue(4, Share::default()).unwrap();
        let done = run_blocking(&*queue, make(&owned)).unwrap();
        let bytes: Vec<Vec<u8>> = (0..buffers.len())
            .map(|i| owned.to_vec(i).unwrap())
            .collect();
        (done.outcome, bytes)
    };
    let (expected, expected_bytes) = run(reference);
    let (outcome, bytes) = run(engine);
    assert_eq!(outcome, expected, "{what}");
    assert!(bytes == expected_bytes, "{what}: buffers changed");
    outcome
}

/// The lengths every operation is tried with.
const LENGTHS: [usize; 10] = [0, 1, 3, 4, 63, 64, 65, 4096, 100_003, (1 << 20) + 5];

/// The result as a little-endian u64.
fn le64(outcome: &Outcome) -> u64 {
    u64::from_le_bytes(outcome.result[..8].try_into().unwrap())
}

#[test]
fn compare_matches_the_software_engine() {
    let Some(engine) = engine() else { return };
    let reference = SoftwareEngine::new(1).unwrap();
    for (seed, len) in LENGTHS.into_iter().enumerate() {
        let data = noise(len + 8, seed as u64);
        // Equal, then unequal at the first, the middle and the last byte.
        let mut cases = vec![(None, "equal")];
        if len > 0 {
            cases.extend([
                (Some(0), "first"),
                (Some(len / 2), "middle"),
                (Some(len - 1), "last"),
            ]);
        }
        for (differ, where_) in cases {
            for (a_at, b_at, seg) in [(0, 0, usize::MAX), (1, 3, 4096), (3, 2, 333)] {
                let mut other = vec![0u8; b_at];
                other.extend_from_slice(&data[..len]);
                other.extend_from_slice(&[0x5a; 8]);
                if let Some(at) = differ {
                    other[b_at + at] ^= 1 << (at % 8);
                }
                let mut first = vec![0u8; a_at];
                first.extend_from_slice(&data);
                let what =
                    format!("COMPARE of {len} ({where_}) at {a_at} and {b_at}, segments of {seg}");
                let outcome =
                    same_as_software(&engine, &reference, &[first, other], &what, |owned| {
                        let mut job = Job::new(Operation::Compare, 1);
                        job.push_input(list(owned, 0, a_at, len, seg));
                        job.push_input(list(owned, 1, b_at, len, seg.saturating_add(7)));
                        job
                    });
                let expected = differ.map_or(COMPARE_EQUAL, |at| at as u64);
                assert_eq!(
                    (outcome.status, le64(&outcome)),
                    (Status::Ok, expected),
                    "{what}"
                );
            }
        }
    }
}

/// Inputs of different lengths: the first difference if there is one
/// within the shorter, else the shorter's length.
#[test]
fn compare_of_different_lengths_matches_the_software_engine() {
    let Some(engine) = engine() else { return };
    let reference = SoftwareEngine::new(1).unwrap();
    let data = noise((1 << 20) + 100, 5);
    for (a_len, b_len, differ) in [
        (0, 1, None),
        (1, 0, None),
        (3, 4, None),
        (64, 63, None),
        (65, 4096, None),
        (4096, 4095, Some(4094)),
        ((1 << 20) + 5, 100_003, Some(100_002)),
        (COMPUTE_CHUNK + 5, COMPUTE_CHUNK, None),
        (COMPUTE_CHUNK, COMPUTE_CHUNK + 5, Some(COMPUTE_CHUNK - 1)),
        (
            COMPUTE_CHUNK + 7,
            COMPUTE_CHUNK + 9,
            Some(COMPUTE_CHUNK + 1),
        ),
    ] {
        let buffer = |len: usize| {
            let mut bytes: Vec<u8> = data.iter().copied().cycle().take(len + 1).collect();
            bytes.push(0);
            bytes
        };
        let a = buffer(a_len);
        let mut b = buffer(b_len);
        if let Some(at) = differ {
            b[at + 1] ^= 0x80;
        }
        let what = format!("COMPARE of {a_len} and {b_len}, differing at {differ:?}");
        let outcome = same_as_software(&engine, &reference, &[a, b], &what, |owned| {
            let mut job = Job::new(Operation::Compare, 2);
            job.push_input(list(owned, 0, 1, a_len, 65_536));
            job.push_input(list(owned, 1, 1, b_len, 4096));
            job
        });
        let expected = differ.unwrap_or(a_len.min(b_len)) as u64;
        assert_eq!(le64(&outcome), expected, "{what}");
    }
}

#[test]
fn crc32c_matches_the_software_engine() {
    let Some(engine) = engine() else { return };
    let reference = SoftwareEngine::new(1).unwrap();
    for (index, len) in LENGTHS.into_iter().enumerate() {
        let data = noise(len + 16, 100 + index as u64);
        for seed in [0, 0xffff_ffff, 0xe306_9283, 0x1234_5678] {
            for (at, seg) in [(0, usize::MAX), (1, 4096), (3, 333), (2, 1)] {
                if seg == 1 && len > 4096 {
                    // One-byte segments of a MiB: slow, and no new case.
                    continue;
                }
                let what = format!("CRC32C seed {seed:#x} of {len} at {at}, segments of {seg}");
                let outcome = same_as_software(
                    &engine,
                    &reference,
                    std::slice::from_ref(&data),
                    &what,
                    |owned| {
                        let mut job = Job::new(Operation::Crc32c { seed }, 3);
                        job.push_input(list(owned, 0, at, len, seg));
                        job
                    },
                );
                let expected = crc32c::crc32c_append(seed, &data[at..at + len]);
                assert_eq!(outcome.result[..4], expected.to_le_bytes(), "{what}");
            }
        }
    }
    // The spec's check value (§8.4).
    let owned = OwnedBuffers::new(vec![b"123456789".to_vec()]);
    let queue = engine.create_queue(1, Share::default()).unwrap();
    let mut job = Job::new(Operation::Crc32c { seed: 0 }, 4);
    job.push_input(list(&owned, 0, 0, 9, 2));
    let done = run_blocking(&*queue, job).unwrap();
    assert_eq!(done.outcome.result[..4], 0xe306_9283_u32.to_le_bytes());
}

/// Inputs of several chunks, the last one short, chain the register from
/// chunk to chunk.
#[test]
fn crc32c_and_sha256_across_chunks_match_the_software_engine() {
    let Some(engine) = engine() else { return };
    let reference = SoftwareEngine::new(1).unwrap();
    let len = 2 * COMPUTE_CHUNK + 12_345;
    let data = noise(len + 1, 77);
    same_as_software(
        &engine,
        &reference,
        std::slice::from_ref(&data),
        "CRC32C of 2 chunks and a bit",
        |owned| {
            let mut job = Job::new(Operation::Crc32c { seed: 99 }, 5);
            job.push_input(list(owned, 0, 1, len, 1 << 20));
            job
        },
    );
    for len in [SHA_CHUNK, SHA_CHUNK + 1, 3 * SHA_CHUNK - 56] {
        same_as_software(
            &engine,
            &reference,
            std::slice::from_ref(&data),
            &format!("SHA-256 of {len}"),
            |owned| {
                let mut job = Job::new(Operation::Sha256, 6);
                job.push_input(list(owned, 0, 1, len, 100_000));
                job
            },
        );
    }
}

#[test]
fn sha256_matches_the_software_engine() {
    let Some(engine) = engine() else { return };
    let reference = SoftwareEngine::new(1).unwrap();
    for len in [
        0,
        1,
        3,
        55,
        56,
        63,
        64,
        65,
        119,
        120,
        127,
        128,
        4096,
        (1 << 20) + 1,
    ] {
        let data = noise(len + 8, len as u64);
        for (at, seg) in [(0, usize::MAX), (3, 4096), (1, 61)] {
            let what = format!("SHA-256 of {len} at {at}, segments of {seg}");
            let outcome = same_as_software(
                &engine,
                &reference,
                std::slice::from_ref(&data),
                &what,
                |owned| {
                    let mut job = Job::new(Operation::Sha256, 7);
                    job.push_input(list(owned, 0, at, len, seg));
                    job
                },
            );
            assert_eq!(outcome.status, Status::Ok, "{what}");
        }
    }
    // The spec's check value (§8.5).
    let owned = OwnedBuffers::new(vec![b"abc".to_vec()]);
    let queue = engine.create_queue(1, Share::default()).unwrap();
    let mut job = Job::new(Operation::Sha256, 8);
    job.push_input(list(&owned, 0, 0, 3, 1));
    let done = run_blocking(&*queue, job).unwrap();
    assert_eq!(done.outcome.result[..4], [0xba, 0x78, 0x16, 0xbf]);
}

/// A batch of jobs for the compute shaders, the transfer queue and the
/// software engine (AES-GCM, deflate, an overlapping COPY) completes through
/// the queue's one event, each as the software engine completes it alone.
#[test]
fn a_batch_mixing_device_and_forwarded_jobs() {
    let Some(engine) = engine() else { return };
    let reference = SoftwareEngine::new(1).unwrap();
    let buffers = vec![
        noise(70_001, 3),
        noise(70_001, 3),
        vec![0; 70_001],
        vec![0; 5_003],
        vec![0; 70_017],
        noise(100, 4),
        noise(100, 5),
    ];
    let key = Box::new(crate::command::GcmKey::new([1; 32], [2; 12]));
    let make = |owned: &Arc<OwnedBuffers>| {
        let mut jobs = Vec::new();
        let mut compare = Job::new(Operation::Compare, 10);
        compare.push_input(list(owned, 0, 0, 70_001, 4096));
        compare.push_input(list(owned, 1, 0, 70_001, 333));
        jobs.push(compare);
        let mut crc = Job::new(Operation::Crc32c { seed: 5 }, 11);
        crc.push_input(list(owned, 0, 1, 70_000, 4096));
        jobs.push(crc);
        let mut copy = Job::new(Operation::Copy, 12);
        copy.push_input(list(owned, 0, 0, 70_001, 4096));
        copy.push_output(list(owned, 2, 0, 70_001, 4096));
        jobs.push(copy);
        let mut sha = Job::new(Operation::Sha256, 13);
        sha.push_input(list(owned, 1, 2, 69_999, 1000));
        jobs.push(sha);
        let mut seal = Job::new(Operation::AesGcmSeal(key.clone()), 14);
        seal.push_input(list(owned, 5, 0, 100, 4096));
        seal.push_input(list(owned, 0, 0, 70_001, 4096));
        seal.push_output(list(owned, 4, 0, 70_017, 4096));
        jobs.push(seal);
        let mut fill = Job::new(Operation::Fill { pattern: 0x33 }, 15);
        fill.push_output(list(owned, 3, 0, 5_003, 4096));
        jobs.push(fill);
        let mut overlapping = Job::new(Operation::Copy, 16);
        overlapping.push_input(list(owned, 6, 0, 90, 4096));
        overlapping.push_output(list(owned, 6, 10, 90, 4096));
        jobs.push(overlapping);
        jobs
    };
    let run = |engine: &dyn Engine| {
        let owned = OwnedBuffers::new(buffers.clone());
        let mut jobs = make(&owned);
        let count = jobs.len();
        let queue = engine.create_queue(count, Share::default()).unwrap();
        queue.submit(&mut jobs).unwrap();
        let mut done = completions(&*queue, count);
        done.sort_by_key(|c| c.cookie);
        let outcomes: Vec<(u64, Outcome)> = done.iter().map(|c| (c.cookie, c.outcome)).collect();
        let bytes: Vec<Vec<u8>> = (0..buffers.len())
            .map(|i| owned.to_vec(i).unwrap())
            .collect();
        (outcomes, bytes)
    };
    let (expected, expected_bytes) = run(&reference);
    let (outcomes, bytes) = run(&engine);
    assert_eq!(outcomes, expected);
    assert!(bytes == expected_bytes, "buffers differ");
    assert!(outcomes.iter().all(|(_, o)| o.status == Status::Ok));
}

/// Cancelling a queue stops a long SHA-256 and a long CRC32C between two
/// chunks: their completions come within a fraction of a second, and the
/// jobs queued behind them come back.
#[test]
fn cancel_stops_a_big_compute_job() {
    const BIG: usize = 512 << 20;
    let Some(engine) = engine() else { return };
    let owned = OwnedBuffers::new(vec![vec![0x11; BIG]]);
    for operation in [Operation::Sha256, Operation::Crc32c { seed: 0 }] {
        let queue = engine.create_queue(4, Share::default()).unwrap();
        let small = |cookie| {
            let mut job = Job::new(operation.clone(), cookie);
            job.push_input(list(&owned, 0, 0, 4096, 4096));
            job
        };
        let mut big = Job::new(operation.clone(), 0);
        big.push_input(list(&owned, 0, 0, BIG, usize::MAX));
        queue.submit(&mut vec![small(9), big, small(1)]).unwrap();
        // The big job starts as soon as the first one has completed; let
        // it run a few chunks (at several GB/s it would still take 100 ms).
        assert_eq!(completions(&*queue, 1)[0].cookie, 9);
        std::thread::sleep(Duration::from_millis(20));
        let cancelled = Instant::now();
        let returned: Vec<u64> = queue.cancel().iter().map(|job| job.cookie).collect();
        assert_eq!(returned, [1], "{operation:?}");
        let done = completions(&*queue, 1);
        let stopped_after = cancelled.elapsed();
        assert_eq!(
            (done[0].cookie, done[0].outcome.status),
            (0, CANCELLED),
            "{operation:?}"
        );
        assert!(
            stopped_after < Duration::from_millis(500),
            "{operation:?} stopped after {stopped_after:?}"
        );
        // Jobs submitted after the cancel run as usual.
        let done = run_blocking(&*queue, small(2)).unwrap();
        assert_eq!(done.outcome.status, Status::Ok);
    }
}

/// Runs a job of each shader after the engine's warm-up between two
/// marks on stderr, for `strace -f` to show the system calls a dispatch
/// makes once the engine is up (none may be one that the sandbox refuses,
/// such as an executable mapping).
#[test]
#[ignore = "a probe for strace, not a check"]
fn dispatches_after_warm_up() {
    let Some(engine) = engine() else { return };
    let owned = OwnedBuffers::new(vec![noise(3 << 20, 1), noise(3 << 20, 1)]);
    let queue = engine.create_queue(1, Share::default()).unwrap();
    let _ = writeln!(std::io::stderr(), "=== DISPATCHES BEGIN ===");
    for operation in [
        Operation::Compare,
        Operation::Crc32c { seed: 0 },
        Operation::Sha256,
    ] {
        let mut job = Job::new(operation.clone(), 0);
        job.push_input(list(&owned, 0, 1, (3 << 20) - 1, 4096));
        if operation == Operation::Compare {
            job.push_input(list(&owned, 1, 1, (3 << 20) - 1, 4096));
        }
        let done = run_blocking(&*queue, job).unwrap();
        assert_eq!(done.outcome.status, Status::Ok);
    }
    let _ = writeln!(std::io::stderr(), "=== DISPATCHES END ===");
}

/// Throughput of each shader beside the software engine's, printed (run
/// with `--ignored --nocapture`; lavapipe runs on the CPU).
#[test]
#[ignore = "a measurement, not a check"]
fn compute_throughput() {
    const LEN: usize = 64 << 20;
    let Some(engine) = engine() else { return };
    let reference = SoftwareEngine::new(1).unwrap();
    let owned = OwnedBuffers::new(vec![noise(LEN, 1), noise(LEN, 1)]);
    let cases: [(&str, Operation, usize); 3] = [
        ("COMPARE", Operation::Compare, 2),
        ("CRC32C", Operation::Crc32c { seed: 0 }, 1),
        ("SHA-256", Operation::Sha256, 1),
    ];
    for (name, operation, inputs) in cases {
        for (which, engine) in [("vulkan", &engine as &dyn Engine), ("software", &reference)] {
            let queue = engine.create_queue(1, Share::default()).unwrap();
            let mut job = Job::new(operation.clone(), 0);
            for index in 0..inputs {
                job.push_input(list(&owned, index, 0, LEN, 1 << 20));
            }
            let started = Instant::now();
            let done = run_blocking(&*queue, job).unwrap();
            let took = started.elapsed();
            assert_eq!(done.outcome.status, Status::Ok);
            let rate = LEN as f64 / took.as_secs_f64() / 1e6;
            let _ = writeln!(
                std::io::stderr(),
                "{name:8} {which:8} {:>8.1} MB/s ({took:?} for 64 MiB)",
                rate
            );
        }
    }
}
