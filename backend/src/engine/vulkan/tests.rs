// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Tests of the Vulkan engine, every result checked against the software
//! engine's, every byte of every buffer (the bytes around the job's are
//! guards). They need a Vulkan device (lavapipe will do: Debian's
//! `mesa-vulkan-drivers`); without one they say so on stderr and pass,
//! unless `ACCEL_VULKAN_REQUIRED=1`, which makes them fail.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_accel_spec::Status;

use super::gpu::Gpu;
use super::transfer::{record_copy, record_fill, Import, Order, Region, Transfer};
use super::{VulkanEngine, VulkanError, GPU_CHUNK};
use crate::command::Operation;
use crate::engine::software::SoftwareEngine;
use crate::engine::{run_blocking, Engine, HwCompletion, HwQueue, Job, Share};
use crate::ops::{Outcome, CANCELLED};
use crate::sg::{OwnedBuffers, SgList};

/// Says loudly that a test cannot run for lack of a device, or fails it if
/// `ACCEL_VULKAN_REQUIRED=1`.
pub(super) fn no_device(error: &VulkanError) {
    if std::env::var("ACCEL_VULKAN_REQUIRED").is_ok_and(|v| v == "1") {
        panic!("no usable Vulkan device ({error:?}), and ACCEL_VULKAN_REQUIRED=1");
    }
    let reason = crate::error_chain(error);
    // Straight to the file, past libtest's capture of `eprintln!`.
    let _ = writeln!(
        std::io::stderr(),
        "\n!!! SKIPPED: no usable Vulkan device: {reason}\n!!! (install libvulkan1 and \
         mesa-vulkan-drivers for lavapipe; ACCEL_VULKAN_REQUIRED=1 makes this a failure)\n"
    );
}

fn engine() -> Option<VulkanEngine> {
    VulkanEngine::new(None).map_err(|e| no_device(&e)).ok()
}

fn gpu() -> Option<Arc<Gpu>> {
    Gpu::open(None)
        .map(Arc::new)
        .map_err(|e| no_device(&e))
        .ok()
}

/// `len` bytes of xorshift noise from `seed`.
pub(super) fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect()
}

/// `len` bytes at `offset` of buffer `index`, in segments of `seg` bytes.
pub(super) fn list(
    owned: &Arc<OwnedBuffers>,
    index: usize,
    offset: usize,
    len: usize,
    seg: usize,
) -> SgList {
    owned.sg(index, seg).unwrap().slice(offset, len).unwrap()
}

/// The list of the `pieces` (offset, length) of buffer `index`, in that
/// order, which may share pages, bytes, or lie at any address.
fn pieces(owned: &Arc<OwnedBuffers>, index: usize, pieces: &[(usize, usize)]) -> SgList {
    let whole = owned.sg(index, usize::MAX).unwrap();
    let mut list = SgList::new();
    for &(at, len) in pieces {
        for seg in whole.slice(at, len).unwrap().segments() {
            // SAFETY: `seg` lies in buffer `index` of `owned`, as a segment
            // of a list over it, and the list holds a clone of `owned`.
            unsafe { list.push(*seg, owned) }.unwrap();
        }
    }
    list
}

/// Runs the job `make` builds on `buffers` through `engine` and through a
/// software engine, each on its own copy of the buffers, and checks that
/// both give the same outcome and leave every byte of every buffer alike.
fn same_as_software(
    engine: &VulkanEngine,
    buffers: &[Vec<u8>],
    what: &str,
    make: impl Fn(&Arc<OwnedBuffers>) -> Job,
) -> Outcome {
    compare(buffers, what, &make, |job| {
        let queue = engine.create_queue(4, Share::default()).unwrap();
        run_blocking(&*queue, job).unwrap().outcome
    })
}

/// As [`same_as_software`], the job run by `transfer` on the calling
/// thread, as the engine's GPU thread runs it.
fn transfer_same_as_software(
    transfer: &mut Transfer,
    buffers: &[Vec<u8>],
    what: &str,
    make: impl Fn(&Arc<OwnedBuffers>) -> Job,
) -> Outcome {
    compare(buffers, what, &make, |job| {
        let (outcome, imported) = transfer.run_job(&job, &|| false);
        assert_eq!(imported, 0, "{what}: no buffer here is a dma-buf");
        outcome
    })
}

/// Runs the job `make` builds through `ours` and through a software engine,
/// and checks that both give the same outcome and the same bytes.
fn compare(
    buffers: &[Vec<u8>],
    what: &str,
    make: &dyn Fn(&Arc<OwnedBuffers>) -> Job,
    ours: impl FnOnce(Job) -> Outcome,
) -> Outcome {
    let reference = SoftwareEngine::new(1).unwrap();
    let bytes_of = |owned: &OwnedBuffers| -> Vec<Vec<u8>> {
        (0..buffers.len())
            .map(|i| owned.to_vec(i).unwrap())
            .collect()
    };
    let owned = OwnedBuffers::new(buffers.to_vec());
    let queue = reference.create_queue(4, Share::default()).unwrap();
    let expected = run_blocking(&*queue, make(&owned)).unwrap().outcome;
    let expected_bytes = bytes_of(&owned);
    let owned = OwnedBuffers::new(buffers.to_vec());
    let outcome = ours(make(&owned));
    let bytes = bytes_of(&owned);
    assert_eq!(outcome, expected, "{what}");
    for (index, (ours, theirs)) in bytes.iter().zip(&expected_bytes).enumerate() {
        let first = ours.iter().zip(theirs).position(|(a, b)| a != b);
        assert!(
            first.is_none(),
            "{what}: buffer {index} differs at byte {first:?}"
        );
    }
    outcome
}

const SIZES: [usize; 7] = [1, 3, 4, 4095, 4096, 65537, (1 << 20) + 3];
/// (input offset, output offset, segment size).
const LAYOUTS: [(usize, usize, usize); 4] =
    [(1, 3, 4096), (0, 2, 1000), (3, 0, usize::MAX), (2, 2, 333)];

#[test]
fn copy_matches_the_software_engine() {
    let Some(engine) = engine() else { return };
    for (seed, size) in SIZES.into_iter().enumerate() {
        for (src_at, dst_at, seg) in LAYOUTS {
            // An output as long, 5 bytes longer, and 1 byte shorter (no space).
            for extra in [0, 5, -1] {
                let dst_len = size.saturating_add_signed(extra);
                let buffers = [
                    noise(src_at + size + 7, seed as u64),
                    vec![0xaa; dst_at + size + 9],
                ];
                let what = format!(
                    "COPY of {size} at {src_at} -> {dst_len} at {dst_at}, segments of {seg}"
                );
                let outcome = same_as_software(&engine, &buffers, &what, |owned| {
                    let mut job = Job::new(Operation::Copy, 1);
                    job.push_input(list(owned, 0, src_at, size, seg));
                    job.push_output(list(owned, 1, dst_at, dst_len, seg.saturating_add(1)));
                    job
                });
                let status = if extra < 0 {
                    Status::NoSpace
                } else {
                    Status::Ok
                };
                assert_eq!(outcome.status, status, "{what}");
            }
        }
    }
}

#[test]
fn fill_matches_the_software_engine() {
    let Some(engine) = engine() else { return };
    for size in SIZES {
        for (at, pattern) in [(0, 0x00), (1, 0xff), (2, 0x5a), (3, size.to_le_bytes()[0])] {
            for seg in [4096, 333, usize::MAX] {
                let buffers = [vec![0xaa; at + size + 6]];
                let what = format!("FILL {pattern:#x} of {size} at {at}, segments of {seg}");
                let outcome = same_as_software(&engine, &buffers, &what, |owned| {
                    let mut job = Job::new(Operation::Fill { pattern }, 2);
                    job.push_output(list(owned, 0, at, size, seg));
                    job
                });
                assert_eq!(outcome.status, Status::Ok, "{what}");
            }
        }
    }
}

#[test]
fn other_operations_and_overlapping_copies_run_on_the_software_engine() {
    let Some(engine) = engine() else { return };
    let data = noise(100_003, 9);
    let crc = same_as_software(&engine, std::slice::from_ref(&data), "CRC32C", |owned| {
        let mut job = Job::new(Operation::Crc32c { seed: 7 }, 3);
        job.push_input(list(owned, 0, 1, 100_000, 4096));
        job
    });
    assert_eq!(crc.status, Status::Ok);
    same_as_software(&engine, std::slice::from_ref(&data), "SHA-256", |owned| {
        let mut job = Job::new(Operation::Sha256, 4);
        job.push_input(list(owned, 0, 0, 100_003, 1000));
        job
    });
    same_as_software(&engine, &[data], "overlapping COPY", |owned| {
        let mut job = Job::new(Operation::Copy, 5);
        job.push_input(list(owned, 0, 0, 50_000, 4096));
        job.push_output(list(owned, 0, 10, 50_000, 4096));
        job
    });
}

/// Waits for completions of `queue` until `count` have come.
pub(super) fn completions(queue: &dyn HwQueue, count: usize) -> Vec<HwCompletion> {
    let mut done = Vec::new();
    while done.len() < count {
        queue.completion_event().read().unwrap();
        queue.reap(&mut done);
    }
    done
}

/// A COPY, a CRC32C (to the software engine) and a FILL in one batch
/// complete through the queue's one event.
#[test]
fn one_queue_and_one_event_for_both_parts() {
    let Some(engine) = engine() else { return };
    assert_eq!(
        engine.capabilities(),
        virtio_accel_spec::Op::all_capabilities()
    );
    let owned = OwnedBuffers::new(vec![noise(70_001, 3), vec![0; 70_001], vec![0; 5_003]]);
    let queue = engine.create_queue(3, Share::default()).unwrap();
    let mut copy = Job::new(Operation::Copy, 10);
    copy.push_input(list(&owned, 0, 0, 70_001, 4096));
    copy.push_output(list(&owned, 1, 0, 70_001, 4096));
    let mut crc = Job::new(Operation::Crc32c { seed: 0 }, 11);
    crc.push_input(list(&owned, 0, 0, 70_001, 4096));
    let mut fill = Job::new(Operation::Fill { pattern: 0x33 }, 12);
    fill.push_output(list(&owned, 2, 0, 5_003, 4096));
    queue.submit(&mut vec![copy, crc, fill]).unwrap();
    let mut refused = vec![Job::new(Operation::Fill { pattern: 0 }, 13)];
    assert!(
        queue.submit(&mut refused).is_err(),
        "a fourth job in a queue of three"
    );
    assert_eq!(refused.len(), 1);
    let mut done = completions(&*queue, 3);
    done.sort_by_key(|c| c.cookie);
    let cookies: Vec<u64> = done.iter().map(|c| c.cookie).collect();
    assert_eq!(cookies, [10, 11, 12]);
    assert!(
        done.iter().all(|c| c.outcome.status == Status::Ok),
        "{done:?}"
    );
    let data = owned.to_vec(0).unwrap();
    assert_eq!(
        done[1].outcome.result[..4],
        crc32c::crc32c(&data).to_le_bytes()
    );
    assert!(owned.to_vec(1).unwrap() == data);
    assert!(owned.to_vec(2).unwrap().iter().all(|&b| b == 0x33));
}

/// Cancelling a queue gives back the jobs that had not started, stops the
/// one on the device within a chunk or so, and leaves its output alone
/// once its completion is reaped.
#[test]
fn cancel_returns_the_queued_batch_and_stops_the_running_job() {
    const BIG: usize = 256 << 20;
    let Some(engine) = engine() else { return };
    let queue = engine.create_queue(16, Share::default()).unwrap();
    let owned = OwnedBuffers::new(vec![vec![0; BIG], vec![0; 4096]]);
    let mut big = Job::new(Operation::Fill { pattern: 0x77 }, 0);
    big.push_output(list(&owned, 0, 0, BIG, usize::MAX));
    let first_byte = list(&owned, 0, 0, 1, usize::MAX);
    queue.submit(&mut vec![big]).unwrap();
    // It has started once its first chunk is written; the other 63 take a
    // long while.
    let submitted = Instant::now();
    let mut byte = [0];
    while first_byte.read_into(&mut byte) == 1 && byte[0] != 0x77 {
        assert!(
            submitted.elapsed() < Duration::from_secs(10),
            "never started"
        );
        std::thread::yield_now();
    }
    let mut batch: Vec<Job> = (1..=5)
        .map(|cookie| {
            let mut job = Job::new(Operation::Fill { pattern: 1 }, cookie);
            job.push_output(list(&owned, 1, 0, 4096, 4096));
            job
        })
        .collect();
    queue.submit(&mut batch).unwrap();
    let cancelled = Instant::now();
    let mut returned: Vec<u64> = queue.cancel().iter().map(|job| job.cookie).collect();
    returned.sort_unstable();
    assert_eq!(returned, [1, 2, 3, 4, 5]);
    let done = completions(&*queue, 1);
    let stopped_after = cancelled.elapsed();
    assert_eq!((done[0].cookie, done[0].outcome.status), (0, CANCELLED));
    assert!(
        stopped_after < Duration::from_secs(1),
        "stopped after {stopped_after:?}"
    );
    let before = owned.to_vec(0).unwrap();
    assert!(
        before.contains(&0x77) && before.contains(&0),
        "partly filled"
    );
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        owned.to_vec(0).unwrap() == before,
        "written after its completion"
    );
    assert!(
        owned.to_vec(1).unwrap().iter().all(|&b| b == 0),
        "a returned job ran"
    );
    // Jobs submitted after the cancel run as usual.
    let mut after = Job::new(Operation::Fill { pattern: 2 }, 6);
    after.push_output(list(&owned, 1, 0, 4096, 4096));
    let done = run_blocking(&*queue, after).unwrap();
    assert_eq!(done.outcome.status, Status::Ok);
}

/// The recording of COPY and FILL on host memory imported in place, at
/// every alignment, split into regions at different points on each side:
/// the path the guest's segments take once they can be imported.
#[test]
fn unaligned_host_memory_imported_in_place() {
    let Some(gpu) = gpu() else { return };
    let mut transfer = Transfer::new(&gpu).unwrap();
    let table = transfer.table();
    for (src_at, dst_at, len) in [
        (1, 3, 1),
        (2, 1, 3),
        (0, 0, 4),
        (3, 1, 4095),
        (1, 2, 4096),
        (5, 7, 65537),
    ] {
        let src = noise(src_at + len + 16, len as u64);
        let mut dst = vec![0xaa_u8; dst_at + len + 16];
        let dst_addr = dst.as_mut_ptr() as usize + dst_at;
        // SAFETY: both vectors outlive the imports, dropped at the end of
        // the iteration, and are neither moved nor reallocated meanwhile.
        let (from, to) = unsafe {
            (
                Import::host(&gpu, src.as_ptr() as usize + src_at, len).unwrap(),
                Import::host(&gpu, dst_addr, len).unwrap(),
            )
        };
        let split = |import: &Import, at: usize| {
            let at = at.min(len) as u64;
            [import.region(0, at), import.region(at, len as u64 - at)]
        };
        let (from, to, pieces) = (split(&from, len / 3), split(&to, len / 2 + 1), (from, to));
        transfer
            .run(|device, cmd| record_copy(device, cmd, &from, &to, Order::Any))
            .unwrap();
        let mut expected = vec![0xaa_u8; dst.len()];
        expected[dst_at..dst_at + len].copy_from_slice(&src[src_at..src_at + len]);
        assert!(dst == expected, "COPY of {len} from {src_at} to {dst_at}");

        let fill: [Region; 2] = to;
        transfer
            .run(|device, cmd| record_fill(device, cmd, &fill, 0xc3, table, Order::Any))
            .unwrap();
        drop(pieces);
        expected[dst_at..dst_at + len].fill(0xc3);
        assert!(dst == expected, "FILL of {len} at {dst_at}");
    }
}

#[test]
fn device_selection_errors_list_the_devices() {
    let first = match Gpu::open(Some("0")) {
        Ok(gpu) => gpu.name.clone(),
        Err(error) => return no_device(&error),
    };
    for selector in ["4096", "no such device, surely"] {
        match Gpu::open(Some(selector)) {
            Err(VulkanError::NoMatch { devices, .. }) => {
                assert!(devices.contains(&format!("0: {first}")), "{devices}");
            }
            other => panic!("{selector:?}: {other:?}"),
        }
    }
    let part: String = first.chars().take(4).collect::<String>().to_uppercase();
    assert_eq!(Gpu::open(Some(&part)).unwrap().name, first);
}

#[test]
fn the_errors_say_what_is_missing_and_where() {
    let error = VulkanError::Unsupported {
        device: "Some GPU".to_owned(),
        missing: "VK_EXT_external_memory_host",
    };
    assert_eq!(
        error.to_string(),
        "Vulkan device \"Some GPU\" lacks VK_EXT_external_memory_host, which the engine needs"
    );
}

/// A transfer for the tests that run jobs on it directly (not warmed up:
/// its staging buffers are all zero).
fn transfer() -> Option<(Arc<Gpu>, Transfer)> {
    let gpu = gpu()?;
    let transfer = Transfer::new(&gpu).unwrap();
    Some((gpu, transfer))
}

/// Proof of zero copy: COPY and FILL jobs of guest-like lists (page-sized
/// segments at odd addresses, one long segment, over more than one chunk),
/// with the engine's default choice of path,
/// give the software engine's bytes, while the engine counts every chunk
/// imported in place and none staged, and its staging buffers, through
/// which any CPU copy of the job's bytes would go, are still all zero:
/// the device read and wrote the job's own memory.
#[test]
fn zero_copy_reads_and_writes_the_jobs_memory_in_place() {
    let Some((_gpu, mut transfer)) = transfer() else {
        return;
    };
    let mut chunks = 0;
    for (size, src_at, dst_at, seg) in [
        (2 * GPU_CHUNK, 1, 3, 4096),
        ((1 << 20) + 3, 3, 0, usize::MAX),
        (65537, 2, 2, 8192),
        (16_390, 1, 2, 4096),
    ] {
        let buffers = [
            noise(src_at + size + 7, size as u64),
            vec![0xaa; dst_at + size + 9],
        ];
        let what = format!("COPY of {size} at {src_at} -> {dst_at}, segments of {seg}");
        let outcome = transfer_same_as_software(&mut transfer, &buffers, &what, |owned| {
            let mut job = Job::new(Operation::Copy, 1);
            job.push_input(list(owned, 0, src_at, size, seg));
            job.push_output(list(owned, 1, dst_at, size, seg));
            job
        });
        assert_eq!(outcome.status, Status::Ok, "{what}");
        let what = format!("FILL of {size} at {dst_at}, segments of {seg}");
        let outcome = transfer_same_as_software(&mut transfer, &buffers, &what, |owned| {
            let mut job = Job::new(Operation::Fill { pattern: 0x6b }, 2);
            job.push_output(list(owned, 1, dst_at, size, seg));
            job
        });
        assert_eq!(outcome.status, Status::Ok, "{what}");
        chunks += 2 * size.div_ceil(GPU_CHUNK) as u64;
    }
    let counters = transfer.counters();
    assert_eq!(counters.in_place, chunks, "{counters:?}");
    assert!(counters.imports >= chunks, "{counters:?}");
    assert_eq!(
        (
            counters.staged,
            counters.staged_bytes,
            counters.import_failures
        ),
        (0, 0, 0),
        "{counters:?}"
    );
    assert!(
        transfer.staging_untouched(),
        "a job's bytes went through staging"
    );
}

/// Lists whose segments share pages (with each other, and between input
/// and output), lie at odd addresses, come out of address order, alias
/// (an input read twice; an output written twice, where the last write
/// wins), imported in place (every chunk, however small its segments), and
/// through staging: the software engine's bytes each time.
#[test]
fn segments_sharing_pages_odd_addresses_and_aliases() {
    type Pieces = &'static [(usize, usize)];
    // (what, input pieces of buffer 0, output pieces of buffer `out`).
    const CASES: [(&str, Pieces, usize, Pieces); 6] = [
        (
            "out of order, sharing pages, odd addresses",
            &[
                (4095, 2),
                (1, 7),
                (4100, 3001),
                (8191, 1),
                (0, 1),
                (9000, 4000),
            ],
            1,
            &[(4090, 6), (5, 10), (4096, 6), (20, 1000), (12_289, 5990)],
        ),
        (
            "input and output interleaved in the same pages",
            &[(1, 100), (300, 50), (4095, 10), (4300, 1)],
            0,
            &[(150, 100), (400, 50), (4200, 10), (4301, 1)],
        ),
        (
            "an input read twice",
            &[(7, 3000), (1000, 3000)],
            1,
            &[(1, 6000)],
        ),
        (
            "an output written twice",
            &[(3, 1033)],
            1,
            &[(10, 500), (201, 500), (5000, 33)],
        ),
        (
            "an output in one page written three times",
            &[(0, 3000)],
            1,
            &[(1, 1000), (2, 1000), (3, 1000)],
        ),
        (
            "single bytes, each in its own word",
            &[(1, 1), (6, 1), (11, 1), (4097, 1)],
            1,
            &[(4099, 1), (3, 1), (8, 1), (13, 1)],
        ),
    ];
    let Some((_gpu, mut transfer)) = transfer() else {
        return;
    };
    for (path, under) in [("in place", 0), ("staged", usize::MAX)] {
        transfer.stage_segments_under(under);
        for (seed, (case, input, out, output)) in CASES.into_iter().enumerate() {
            let buffers = [noise(20_000, seed as u64), vec![0xaa; 20_000]];
            let what = format!("COPY, {case}, {path}");
            let outcome = transfer_same_as_software(&mut transfer, &buffers, &what, |owned| {
                let mut job = Job::new(Operation::Copy, 3);
                job.push_input(pieces(owned, 0, input));
                job.push_output(pieces(owned, out, output));
                job
            });
            assert_eq!(outcome.status, Status::Ok, "{what}");
            let what = format!("FILL, {case}, {path}");
            let outcome = transfer_same_as_software(&mut transfer, &buffers, &what, |owned| {
                let mut job = Job::new(Operation::Fill { pattern: 0x3c }, 4);
                job.push_output(pieces(owned, out, output));
                job
            });
            assert_eq!(outcome.status, Status::Ok, "{what}");
        }
        let counters = transfer.counters();
        let jobs = 2 * CASES.len() as u64;
        if under == 0 {
            assert_eq!(
                (counters.in_place, counters.staged),
                (jobs, 0),
                "{counters:?}"
            );
        } else {
            assert_eq!(
                (counters.in_place, counters.staged),
                (jobs, jobs),
                "{counters:?}"
            );
        }
    }
}

/// Segments that share pages, within a list and between the input and the
/// output, are imported once: one import for pages that adjoin.
#[test]
fn shared_pages_are_imported_once() {
    let Some((_gpu, mut transfer)) = transfer() else {
        return;
    };
    transfer.stage_segments_under(0);
    let owned = OwnedBuffers::new(vec![noise(20_000, 5)]);
    let mut job = Job::new(Operation::Copy, 5);
    // Bytes 1 to 12 300: four pages or so, whatever the buffer's alignment,
    // every one touched by a segment of one list or the other.
    job.push_input(pieces(&owned, 0, &[(1, 100), (4095, 10), (8000, 4300)]));
    job.push_output(pieces(&owned, 0, &[(150, 100), (300, 4300), (4500, 10)]));
    assert_eq!(transfer.run_job(&job, &|| false).0.status, Status::Ok);
    let counters = transfer.counters();
    assert_eq!(
        (counters.in_place, counters.imports),
        (1, 1),
        "{counters:?}"
    );
}

/// The engine's choice between the two paths ([`super::transfer::STAGE_SEGMENTS_UNDER`]):
/// lists of small pieces staged, of pages or longer imported in place, the
/// software engine's bytes either way.
#[test]
fn small_pieces_are_staged_and_pages_imported() {
    let Some((_gpu, mut transfer)) = transfer() else {
        return;
    };
    let buffers = [noise(70_000, 6), vec![0; 70_000]];
    for (seg, staged) in [
        (333, true),
        (1000, true),
        (4096, false),
        (usize::MAX, false),
    ] {
        let before = transfer.counters();
        let what = format!("COPY in segments of {seg}");
        transfer_same_as_software(&mut transfer, &buffers, &what, |owned| {
            let mut job = Job::new(Operation::Copy, 6);
            job.push_input(list(owned, 0, 1, 65_536, seg));
            job.push_output(list(owned, 1, 3, 65_536, seg));
            job
        });
        let after = transfer.counters();
        assert_eq!(after.staged - before.staged, u64::from(staged), "{what}");
        assert_eq!(
            after.in_place - before.in_place,
            u64::from(!staged),
            "{what}"
        );
    }
}

/// What importing host memory costs next to what it saves: an import and
/// its release, the two CPU copies of the staging path, and a submission
/// that does nothing, at 4 KiB and 1 MiB. `cargo test --release -p
/// vhost-user-accel --lib import_cost -- --ignored --nocapture`.
#[test]
#[ignore = "a timing, not a check"]
fn import_cost() {
    const ROUNDS: u32 = 2000;
    let Some(gpu) = gpu() else { return };
    let mut transfer = Transfer::new(&gpu).unwrap();
    let started = Instant::now();
    for _ in 0..ROUNDS {
        transfer.run(|_, _| {}).unwrap();
    }
    let submit = started.elapsed() / ROUNDS;
    let mut report = format!("empty submission and wait: {submit:?}\n");
    for len in [4096, 1 << 20] {
        let src = noise(len + 4096, 1);
        let mut dst = vec![0_u8; len];
        let addr = src.as_ptr() as usize + 1;
        let started = Instant::now();
        for _ in 0..ROUNDS {
            // SAFETY: `src` outlives the import, dropped at once.
            drop(unsafe { Import::host(&gpu, addr, len) }.unwrap());
        }
        let import = started.elapsed() / ROUNDS;
        let started = Instant::now();
        for _ in 0..ROUNDS {
            dst.copy_from_slice(std::hint::black_box(&src[1..=len]));
            std::hint::black_box(&mut dst);
        }
        let copy = started.elapsed() / ROUNDS;
        report += &format!(
            "{len} bytes: import and release {import:?}, one CPU copy {copy:?} (staging \
             makes two)\n"
        );
    }
    // A chunk in segments of `seg` bytes, the output's one byte off the
    // input's (so twice as many pieces), both ways.
    const LEN: usize = (4 << 20) - 1;
    for seg in [333, 1024, 2048, 4096, usize::MAX] {
        for (path, under) in [("in place", 0), ("staged", usize::MAX)] {
            transfer.stage_segments_under(under);
            let owned = OwnedBuffers::new(vec![noise(4 << 20, 2), vec![0; 4 << 20]]);
            let mut copy = Job::new(Operation::Copy, 0);
            copy.push_input(list(&owned, 0, 0, LEN, seg));
            copy.push_output(list(&owned, 1, 1, LEN, seg));
            let mut fill = Job::new(Operation::Fill { pattern: 3 }, 1);
            fill.push_output(list(&owned, 1, 1, LEN, seg));
            let mut time = |job: &Job| {
                let started = Instant::now();
                for _ in 0..20 {
                    assert_eq!(transfer.run_job(job, &|| false).0.status, Status::Ok);
                }
                started.elapsed() / 20
            };
            let (copy, fill) = (time(&copy), time(&fill));
            report +=
                &format!("4 MiB in segments of {seg}, {path}: COPY {copy:?}, FILL {fill:?}\n");
        }
    }
    let _ = writeln!(std::io::stderr(), "{report}");
}

/// Once the device is lost, a job on it fails with DeviceError at once
/// (nothing is submitted: no wait for a device that may never answer), and
/// the queue sends new jobs to the software engine, whose results they get.
#[test]
fn a_lost_device_fails_its_jobs_and_new_ones_run_on_the_cpu() {
    let Some(engine) = engine() else { return };
    let Some((gpu, mut transfer)) = transfer() else {
        return;
    };
    gpu.mark_lost();
    let owned = OwnedBuffers::new(vec![noise(4096, 3), vec![0; 4096]]);
    let mut job = Job::new(Operation::Copy, 1);
    job.push_input(list(&owned, 0, 0, 4096, 4096));
    job.push_output(list(&owned, 1, 0, 4096, 4096));
    let started = Instant::now();
    let (outcome, _) = transfer.run_job(&job, &|| false);
    assert_eq!(outcome.status, Status::DeviceError);
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(
        owned.to_vec(1).unwrap().iter().all(|&b| b == 0),
        "the lost device wrote"
    );

    engine.shared.gpu.mark_lost();
    let buffers = [noise(65_537, 4), vec![0xaa; 65_540]];
    let outcome = same_as_software(&engine, &buffers, "COPY after the loss", |owned| {
        let mut job = Job::new(Operation::Copy, 1);
        job.push_input(list(owned, 0, 0, 65_537, 4096));
        job.push_output(list(owned, 1, 1, 65_537, 4096));
        job
    });
    assert_eq!(outcome.status, Status::Ok);
}
