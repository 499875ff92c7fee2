//! Reconnecting VMs leak nothing: after many connect/disconnect cycles the
//! daemon holds as many file descriptors as after the first one. (Its own test
//! binary, so no other test opens descriptors meanwhile.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use accel_driver::{Buffer, Request};
use accel_tests::harness::{guest_ram, Daemon};
use virtio_accel_spec::Op;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// One VM: connect, run a job, disconnect.
fn one_vm(daemon: &Daemon) {
    let memory = guest_ram(4);
    let device = daemon.connect(&memory);
    let data = memory.alloc(64).unwrap();
    device
        .run(0, &Request::new(Op::Sha256).input(Buffer::direct(&data)))
        .unwrap()
        .check()
        .unwrap();
    device.into_transport().disconnect();
}

/// Waits until the descriptor count is at most `limit` (the daemon tears a
/// connection down asynchronously); returns the last count seen.
fn settle_at_most(limit: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let count = open_fds();
        if count <= limit || Instant::now() > deadline {
            return count;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The descriptor count once it has stopped changing for a while.
fn settled() -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = open_fds();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let count = open_fds();
        if count == last || Instant::now() > deadline {
            return count;
        }
        last = count;
    }
}

#[test]
fn reconnecting_vms_leak_no_descriptors() {
    let daemon = Daemon::start();
    one_vm(&daemon);
    let baseline = settled();
    for _ in 0..20 {
        one_vm(&daemon);
    }
    let after = settle_at_most(baseline);
    assert!(
        after <= baseline,
        "{} descriptors after 20 VMs, {baseline} after the first",
        after
    );
}
