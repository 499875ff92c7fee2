// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Reconnecting VMs leak nothing: after many connect/disconnect cycles the
//! daemon holds as many file descriptors and memory mappings as after the
//! first one, and no object. (Its own test binary, whose tests run one at a
//! time, so that nothing else opens descriptors meanwhile.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Mutex;
use std::time::{Duration, Instant};

use accel_driver::{Buffer, Request};
use accel_tests::harness::{guest_ram, Daemon};
use virtio_accel_spec::{Op, Status};

/// Held by each test: they count the process's descriptors.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

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
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
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

fn open_maps() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .count()
}

/// Eight tenants' VMs at once, each registering an object: connect, run,
/// disconnect.
fn eight_vms(tenants: &[Daemon]) {
    std::thread::scope(|scope| {
        for daemon in tenants {
            scope.spawn(move || {
                let memory = guest_ram(4);
                let device = daemon.connect(&memory);
                let data = memory.alloc(4096).unwrap();
                let handle = device.create_object(&[(data.gpa(), 4096)]).unwrap();
                let request = Request::new(Op::Sha256).input(Buffer::object(handle, 0, 4096));
                let done = device.run(0, &request).unwrap();
                assert_eq!(done.status(), Ok(Status::Ok));
                device.into_transport().disconnect();
            });
        }
    });
}

#[test]
fn tenants_coming_and_going_together_leak_nothing() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let tenants = Daemon::start_tenants(8);
    eight_vms(&tenants);
    let (fds, maps) = (settled(), open_maps());
    for _ in 0..10 {
        eight_vms(&tenants);
    }
    let after = settle_at_most(fds);
    assert!(
        after <= fds,
        "{after} descriptors after 88 VMs, {fds} after the first 8"
    );
    // A guest RAM mapping left behind per connection would show as 80 more;
    // malloc arenas and cached thread stacks may add a few.
    let maps_after = open_maps();
    assert!(
        maps_after <= maps + 32,
        "{maps_after} mappings, {maps} after the first 8"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    for daemon in &tenants {
        let Some(stats) = daemon.stats() else {
            continue;
        };
        while stats.held() != (0, 0) {
            assert!(
                Instant::now() < deadline,
                "objects still held: {:?}",
                stats.held()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
