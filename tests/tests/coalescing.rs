// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Completions the device defers while the driver's `used_event` lies ahead
//! (spec §6.4.2), over the real socket: they are not held back for long when
//! the driver looks at the used ring without moving its event.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use accel_driver::{Buffer, Request};
use accel_tests::data::TestRng;
use accel_tests::harness::{guest_ram, tenant, Daemon};
use vhost_user_accel::Config;
use virtio_accel_spec::{DeflateFormat, DeflateParams, Op};

/// Slow jobs in the batch: each has a worker of its own, and the lone
/// request a third.
const SLOW: usize = 2;
/// Bytes of text each slow job compresses at level 9: a fifth of a second
/// or more.
const SLOW_BYTES: usize = 8 << 20;
/// The token of the short request.
const LONE: u64 = 99;

/// One thread sleeps on the interrupt of a batch of slow jobs, so the
/// driver's `used_event` lies ahead; another submits a short request and
/// polls the used ring for it without moving that event (what §6.4.1 asks a
/// driver not to do). The device may defer the short request's completion
/// for the batch, but not by more than about 1 ms (§6.4.2), where the batch
/// takes a fifth of a second or more.
#[test]
fn a_completion_deferred_for_a_batch_comes_within_its_bound() {
    let config = Config {
        engine_threads: SLOW + 1,
        ..Config::with_tenants(vec![tenant("0")])
    };
    let daemon = Daemon::start_config(config).remove(0);
    let memory = guest_ram(64);
    let device = daemon.connect(&memory);
    let mut rng = TestRng::new("a_completion_deferred_for_a_batch_comes_within_its_bound");
    let params = DeflateParams {
        format: DeflateFormat::Raw.into(),
        level: 9,
        ..DeflateParams::default()
    };
    let buffers: Vec<_> = (0..SLOW)
        .map(|_| {
            let input = memory.alloc(SLOW_BYTES).unwrap();
            memory.write(&input, 0, &rng.text(SLOW_BYTES)).unwrap();
            (input, memory.alloc(SLOW_BYTES + (1 << 20)).unwrap())
        })
        .collect();
    let crc_input = memory.alloc(9).unwrap();
    memory.write(&crc_input, 0, b"123456789").unwrap();

    let started = Instant::now();
    for (token, (input, output)) in (0..).zip(&buffers) {
        let request = Request::new(Op::DeflateCompress)
            .params(&params)
            .input(Buffer::direct(input))
            .output(Buffer::direct(output));
        device.submit(0, &request, token).unwrap();
    }
    device.flush(0).unwrap();
    std::thread::scope(|scope| {
        let batch = scope.spawn(|| {
            let done = device.wait_batch(0, SLOW, Duration::from_secs(60)).unwrap();
            (done.len(), started.elapsed())
        });
        // Let the batch's thread ask for its interrupt and sleep.
        std::thread::sleep(Duration::from_millis(20));
        let lone = Instant::now();
        let crc = Request::new(Op::Crc32c).input(Buffer::direct(&crc_input));
        device.submit(0, &crc, LONE).unwrap();
        device.flush(0).unwrap();
        let done = loop {
            let found = device.poll(0).unwrap();
            if let Some(done) = found.into_iter().find(|c| c.token == LONE) {
                break done;
            }
            // Held for the batch, it would be taken with the batch.
            assert!(
                lone.elapsed() < Duration::from_secs(5),
                "no completion of the short request in 5 s"
            );
            std::thread::sleep(Duration::from_micros(50));
        };
        let lone = lone.elapsed();
        assert_eq!(done.check().unwrap().result_u32(), 0xe306_9283);
        let (count, batch_took) = batch.join().unwrap();
        assert_eq!(count, SLOW);
        assert!(
            batch_took > Duration::from_millis(100),
            "the batch took {batch_took:?}: too short to tell a held request"
        );
        assert!(
            lone < batch_took / 3,
            "the lone request took {lone:?}, the batch {batch_took:?}"
        );
    });
}
