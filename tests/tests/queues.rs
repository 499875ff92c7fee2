// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Every request queue is served, up to the most the daemon allows.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use accel_driver::{Buffer, Request};
use accel_tests::harness::{guest_ram, Daemon};
use vhost_user_accel::config::MAX_QUEUES;
use virtio_accel_spec::Op;

#[test]
fn all_request_queues_are_served_at_the_maximum_count() {
    let daemon = Daemon::start_with(|config| {
        config.request_queues = MAX_QUEUES;
        config.queue_size = 16;
    });
    let memory = guest_ram(16);
    let device = daemon.connect(&memory);
    assert_eq!(device.num_request_queues(), MAX_QUEUES);
    let data = memory.alloc(9).unwrap();
    memory.write(&data, 0, b"123456789").unwrap();
    for queue in 0..MAX_QUEUES {
        let done = device
            .run(
                queue,
                &Request::new(Op::Crc32c).input(Buffer::direct(&data)),
            )
            .unwrap()
            .check()
            .unwrap();
        assert_eq!(done.result_u32(), 0xe306_9283, "queue {queue}");
        assert_eq!(u16::from(done.fence().queue), queue);
    }
}
