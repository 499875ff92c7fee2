// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! One process per tenant, as an operator and a VMM see it: a tenant's
//! process that dies (SIGKILL in the middle of a batch, SIGBUS from guest
//! memory its VMM truncated) costs its own VM a reconnection and nothing
//! more; the neighbour keeps completing requests throughout, the supervisor
//! restarts the process behind the same socket, and the counters carry on.
//! A VMM that reconnects to the new process (the harness front-end playing
//! QEMU or cloud-hypervisor) finds the device where the killed process left
//! it, its requests in flight completed once and its objects kept (spec
//! §11.3); `record.rs` has the records it cannot trust.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use accel_driver::{
    Buffer, Device, DmaMemory, FrontendModel, OpenOptions, Request, VhostUserOptions,
    VhostUserTransport, DEFAULT_FEATURES,
};
use sha2::Digest;
use vhost_user_accel::arbiter::SLOW_STEPS;
use virtio_accel_spec::{Op, Status};

use support::{
    assert_interrupted, fill_request, kill, queue_digests, submit_digests, submit_poison,
    write_config, Setup, Supervisor, PATIENCE,
};

type AccelDevice = Device<VhostUserTransport>;

fn connect(socket: &Path, memory: &DmaMemory) -> AccelDevice {
    let transport = VhostUserTransport::connect(socket, memory).unwrap();
    Device::open(transport, DEFAULT_FEATURES).unwrap()
}

/// One CRC-32C of "123456789" on `device`, checked.
fn crc_check(device: &AccelDevice, memory: &DmaMemory) {
    let data = memory.alloc(9).unwrap();
    memory.write(&data, 0, b"123456789").unwrap();
    let completion = device
        .run(0, &Request::new(Op::Crc32c).input(Buffer::direct(&data)))
        .unwrap()
        .check()
        .unwrap();
    assert_eq!(completion.result_u32(), 0xe306_9283);
}

/// Connects to `socket` (retrying while its new process starts) and checks a
/// request end to end; panics after `PATIENCE`.
fn serves_again(socket: &Path) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let memory = DmaMemory::new(4 << 20).unwrap();
        let attempt = std::panic::catch_unwind(|| {
            let device = connect(socket, &memory);
            crc_check(&device, &memory);
            device.into_transport().disconnect();
        });
        if attempt.is_ok() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} never served again",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs checked requests on `socket` until `stop`, counting them in `done`;
/// any failure fails the test.
fn neighbour(socket: &Path, stop: &AtomicBool, done: &AtomicU64) {
    let memory = DmaMemory::new(4 << 20).unwrap();
    let device = connect(socket, &memory);
    while !stop.load(Ordering::Relaxed) {
        crc_check(&device, &memory);
        done.fetch_add(1, Ordering::Relaxed);
    }
    device.into_transport().disconnect();
}

/// Sets its flag when dropped, so that a failing test stops its neighbour
/// thread instead of waiting for it forever.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Submits a batch of `count` SHA-256 digests of 8 MiB on `device` and
/// returns once the first has completed, the rest still queued or running.
fn start_batch(device: &AccelDevice, memory: &DmaMemory, count: usize) {
    let src = memory.alloc(8 << 20).unwrap();
    let request = Request::new(Op::Sha256).input(Buffer::direct(&src));
    for _ in 0..count {
        device.submit(0, &request, 0).unwrap();
    }
    device.flush(0).unwrap();
    let first = device.wait(0, Duration::from_secs(10)).unwrap();
    assert!(
        !first.is_empty() && first.len() < count,
        "{} of {count} done",
        first.len()
    );
}

/// Runs `trouble` (to t0) while a neighbour VM on `other` keeps completing
/// checked requests. `trouble` gets the neighbour's count of completions and
/// returns it as it was when the trouble began; the neighbour must have
/// completed more by the time `trouble` returns.
fn beside_a_neighbour(other: &Path, trouble: impl FnOnce(&AtomicU64) -> u64) {
    let stop = AtomicBool::new(false);
    let done = AtomicU64::new(0);
    std::thread::scope(|scope| {
        let worker = scope.spawn(|| neighbour(other, &stop, &done));
        let _stop = StopOnDrop(&stop);
        let before = trouble(&done);
        let during = done.load(Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
        worker.join().unwrap();
        assert!(
            during > before,
            "the neighbour stalled while t0 was in trouble"
        );
    });
}

#[test]
fn a_killed_tenant_process_is_restarted_and_its_neighbour_never_notices() {
    let supervisor = Supervisor::start("kill", 2);
    let (victim, other) = (supervisor.socket("t0"), supervisor.socket("t1"));
    beside_a_neighbour(&other, |done| {
        let memory = DmaMemory::new(32 << 20).unwrap();
        let device = connect(&victim, &memory);
        crc_check(&device, &memory);
        start_batch(&device, &memory, 64);
        let before = done.load(Ordering::Relaxed);
        let pid = supervisor.tenant_pid("t0");
        kill(pid, libc::SIGKILL);
        // The victim's VM reconnects and is served by a new process.
        drop(device);
        serves_again(&victim);
        assert_ne!(supervisor.tenant_pid("t0"), pid);
        before
    });
    let log = supervisor.log();
    assert!(
        log.contains("was killed by SIGKILL (9); restarting it in 100ms"),
        "{log}"
    );
    supervisor.wait_for_metric("vhost_user_accel_process_restarts_total{tenant=\"t0\"} 1");
    supervisor.wait_for_metric("vhost_user_accel_process_restarts_total{tenant=\"t1\"} 0");
    // Counters carry on across processes: t0's requests before the kill
    // (a CRC and at least one digest) and the CRC after it.
    let metrics = supervisor.metrics();
    assert!(ok_requests(&metrics, "t1") > 0, "{metrics}");
    assert!(ok_requests(&metrics, "t0") >= 3, "{metrics}");
}

/// Requests of a burst of `count` CRC-32C jobs on `socket` that its quota
/// refused with Busy (retrying the connection while a new process starts).
fn busy_in_a_burst(socket: &Path, count: usize) -> usize {
    let memory = DmaMemory::new(4 << 20).unwrap();
    let device = connect_when_served(socket, &memory);
    let data = memory.alloc(9).unwrap();
    let request = Request::new(Op::Crc32c).input(Buffer::direct(&data));
    let busy = (0..count)
        .filter(|_| {
            let completion = device.run(0, &request).unwrap();
            match completion.status().unwrap() {
                Status::Ok => false,
                Status::Busy => true,
                other => panic!("a CRC-32C ended with {other:?}"),
            }
        })
        .count();
    device.into_transport().disconnect();
    busy
}

/// Connects to `socket`, retrying for `PATIENCE` while its process starts.
fn connect_when_served(socket: &Path, memory: &DmaMemory) -> AccelDevice {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match VhostUserTransport::connect(socket, memory)
            .map_err(|e| e.to_string())
            .and_then(|t| Device::open(t, DEFAULT_FEATURES).map_err(|e| e.to_string()))
        {
            Ok(device) => return device,
            Err(e) => assert!(Instant::now() < deadline, "{}: {e}", socket.display()),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_restarted_tenant_process_starts_with_empty_rate_buckets() {
    // A bucket of 4 jobs, refilled at 4 a second.
    let supervisor = Supervisor::start_with(
        "buckets",
        1,
        Setup {
            tenant_settings: "quota = { jobs-per-sec = 4 }\n",
            ..Setup::default()
        },
    );
    let socket = supervisor.socket("t0");
    // The first process starts with a full bucket: a burst of 4 passes.
    assert_eq!(busy_in_a_burst(&socket, 4), 0);
    let pid = supervisor.tenant_pid("t0");
    kill(pid, libc::SIGKILL);
    supervisor.wait_until_gone("t0", pid);
    // Its successor starts with an empty one: a guest that ends its
    // tenant's process gains no burst by it. By the end of a burst of 8 the
    // new process is `age` old, so it may have admitted one job and 4 a
    // second since; full buckets would have admitted 4 more.
    let busy = busy_in_a_burst(&socket, 8);
    let age = process_age(supervisor.tenant_pid("t0"));
    let allowed = usize::try_from(4 * age.as_millis() / 1000 + 1).unwrap();
    assert!(
        8 - busy <= allowed,
        "{} of 8 admitted {age:?} after the restart",
        8 - busy
    );
    if allowed >= 8 {
        eprintln!("the restart took {age:?}: too long for the burst to tell the buckets apart");
    }
}

/// How long ago process `pid` started (an upper bound: the kernel counts
/// in clock ticks).
fn process_age(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    // Field 22 of stat, the start time in ticks since boot; the fields
    // after the name start at field 3.
    let started: f64 = fields[22 - 3].parse().unwrap();
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let uptime = std::fs::read_to_string("/proc/uptime").unwrap();
    let uptime: f64 = uptime.split(' ').next().unwrap().parse().unwrap();
    Duration::from_secs_f64((uptime - started / ticks).max(0.0) + 1.0 / ticks)
}

#[test]
fn unsealed_guest_memory_is_warned_about_once_per_process() {
    let supervisor = Supervisor::start("unsealed", 1);
    let socket = supervisor.socket("t0");
    // Guest RAM in a memfd without seals, as cloud-hypervisor gives it, in
    // two connections.
    for _ in 0..2 {
        serves_again(&socket);
    }
    let warned = |log: &str| log.matches("not sealed against shrinking").count();
    assert_eq!(warned(&supervisor.log()), 1, "{}", supervisor.log());
    // A new process warns again: its log is the operator's new start.
    let pid = supervisor.tenant_pid("t0");
    kill(pid, libc::SIGKILL);
    supervisor.wait_until_gone("t0", pid);
    serves_again(&socket);
    assert_eq!(warned(&supervisor.log()), 2, "{}", supervisor.log());
}

/// Requests of `tenant` completed with Ok, from the metrics text.
fn ok_requests(metrics: &str, tenant: &str) -> u64 {
    let series = format!("vhost_user_accel_requests_total{{tenant=\"{tenant}\",status=\"ok\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in {metrics}"))
}

#[test]
fn guest_memory_truncated_by_its_vmm_costs_only_that_tenants_process() {
    let supervisor = Supervisor::start("truncate", 2);
    let (victim, other) = (supervisor.socket("t0"), supervisor.socket("t1"));
    beside_a_neighbour(&other, |done| {
        let memory = DmaMemory::new(8 << 20).unwrap();
        let device = connect(&victim, &memory);
        // Buffers past 4 MiB (the driver's rings lie below), which the VMM
        // then cuts off its memfd.
        let _low = memory.alloc(4 << 20).unwrap();
        let (src, dst) = (
            memory.alloc(1 << 20).unwrap(),
            memory.alloc(1 << 20).unwrap(),
        );
        assert!(src.gpa() >= 4 << 20);
        let pid = supervisor.tenant_pid("t0");
        memory.file().set_len(4 << 20).unwrap();
        let before = done.load(Ordering::Relaxed);
        let request = Request::new(Op::Copy)
            .input(Buffer::direct(&src))
            .output(Buffer::direct(&dst));
        device.submit(0, &request, 0).unwrap();
        device.flush(0).unwrap();
        // The process touches the truncated pages and dies of SIGBUS.
        supervisor.wait_until_gone("t0", pid);
        drop(device);
        serves_again(&victim);
        before
    });
    let log = supervisor.log();
    assert!(log.contains("was killed by SIGBUS (7)"), "{log}");
}

#[test]
fn sigterm_stops_every_tenant_process_and_removes_what_the_daemon_made() {
    let mut supervisor = Supervisor::start("term", 2);
    let pids = [supervisor.tenant_pid("t0"), supervisor.tenant_pid("t1")];
    serves_again(&supervisor.socket("t1"));
    kill(supervisor.child.id(), libc::SIGTERM);
    let status = supervisor.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", supervisor.log());
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "tenant process {pid} outlived the supervisor"
        );
    }
    assert!(!supervisor.socket("t0").exists() && !supervisor.dir.join("metrics").exists());
    let log = supervisor.log();
    assert!(
        log.contains("tenant t1: 1 connections, 0 process restarts, 1 requests (1 ok"),
        "{log}"
    );
}

/// systemd's end of the readiness protocol: a datagram socket in the
/// abstract namespace, named for `NOTIFY_SOCKET` as `@NAME`.
struct FakeSystemd {
    socket: UnixDatagram,
    name: String,
}

impl FakeSystemd {
    fn bind(test: &str) -> FakeSystemd {
        let name = format!("vhost-user-accel-notify-{}-{test}", std::process::id());
        let address = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&address).unwrap();
        socket.set_read_timeout(Some(PATIENCE)).unwrap();
        FakeSystemd {
            socket,
            name: format!("@{name}"),
        }
    }

    /// The next message, which must start with `state`.
    fn expect(&self, state: &str) {
        let mut buffer = [0u8; 512];
        let n = self.socket.recv(&mut buffer).unwrap();
        let message = String::from_utf8_lossy(&buffer[..n]);
        assert!(message.starts_with(state), "{message:?} is not {state:?}");
    }
}

#[test]
fn sighup_applies_the_changed_tenants_and_leaves_the_others_alone() {
    let systemd = FakeSystemd::bind("reload");
    let supervisor = Supervisor::start_with(
        "reload",
        3,
        Setup {
            env: &[("NOTIFY_SOCKET", &systemd.name)],
            ..Setup::default()
        },
    );
    systemd.expect("READY=1");
    let kept = supervisor.tenant_pid("t0");
    let changed = supervisor.tenant_pid("t1");
    let memory = DmaMemory::new(4 << 20).unwrap();
    let device = connect(&supervisor.socket("t0"), &memory);
    crc_check(&device, &memory);

    // t0 as it was, t1 with another queue count, t2 gone, t3 new.
    write_config(
        &supervisor.dir,
        "",
        &[("t0", ""), ("t1", "queues = 3\n"), ("t3", "")],
    );
    supervisor.signal(libc::SIGHUP);
    systemd.expect("RELOADING=1\nMONOTONIC_USEC=");
    systemd.expect("READY=1");
    supervisor.wait_until_gone("t1", changed);
    supervisor.tenant_pid("t1");
    supervisor.tenant_pid("t3");
    serves_again(&supervisor.socket("t3"));
    serves_again(&supervisor.socket("t1"));
    assert_eq!(
        supervisor.find_tenant_pid("t2"),
        None,
        "{}",
        supervisor.log()
    );
    assert!(!supervisor.socket("t2").exists());
    // The unchanged tenant kept its process and its VMM's connection.
    assert_eq!(supervisor.tenant_pid("t0"), kept);
    crc_check(&device, &memory);
    let t1 = connect(&supervisor.socket("t1"), &memory);
    assert_eq!(t1.num_request_queues(), 3);
    // The metrics endpoint reports the tenants as they now are.
    let metrics = supervisor.metrics();
    assert!(
        metrics.contains("vhost_user_accel_requests_total{tenant=\"t3\",status=\"ok\"}"),
        "{metrics}"
    );
    assert!(!metrics.contains("tenant=\"t2\""), "{metrics}");

    // A file that does not parse changes nothing.
    std::fs::write(supervisor.dir.join("accel.toml"), "[[tenant]]\nname = 7\n").unwrap();
    let pids = [supervisor.tenant_pid("t0"), supervisor.tenant_pid("t1")];
    supervisor.signal(libc::SIGHUP);
    systemd.expect("RELOADING=1");
    systemd.expect("READY=1");
    let log = supervisor.log();
    assert!(log.contains("the running configuration stays"), "{log}");
    assert_eq!(
        [supervisor.tenant_pid("t0"), supervisor.tenant_pid("t1")],
        pids
    );
    crc_check(&device, &memory);
}

#[test]
fn tenant_processes_die_with_a_killed_supervisor() {
    let mut supervisor = Supervisor::start("orphans", 1);
    let pid = supervisor.tenant_pid("t0");
    supervisor.child.kill().unwrap();
    supervisor.child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{pid}/cmdline")).exists()
        && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
    {
        assert!(
            Instant::now() < deadline,
            "tenant process {pid} was orphaned"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The fields of /proc/PID/status named `keys`, as "Key:\tvalue" lines.
fn status_fields(pid: u32, keys: &[&str]) -> Vec<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    keys.iter()
        .map(|key| {
            status
                .lines()
                .find(|l| l.split(':').next() == Some(key))
                .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

#[test]
fn tenant_processes_serve_inside_their_sandbox() {
    let supervisor = Supervisor::start("sandbox", 1);
    // Connected while it is looked at, so that its threads stay put.
    let memory = DmaMemory::new(4 << 20).unwrap();
    let device = connect(&supervisor.socket("t0"), &memory);
    crc_check(&device, &memory);
    let pid = supervisor.tenant_pid("t0");
    // Every thread of the process is filtered, with no way to gain privileges.
    let mut checked = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue; // a thread that ended meanwhile
        };
        let tid = task.file_name();
        assert!(
            status
                .lines()
                .any(|l| l.split_whitespace().eq(["Seccomp:", "2"])),
            "thread {tid:?} of {pid} is not filtered:\n{status}"
        );
        assert!(
            status
                .lines()
                .any(|l| l.split_whitespace().eq(["NoNewPrivs:", "1"])),
            "thread {tid:?} of {pid} may gain privileges:\n{status}"
        );
        checked += 1;
    }
    // The main thread, the tenant's, the engine's and the connection's.
    assert!(checked >= 4, "only {checked} threads of {pid}");
    // Named after its tenant for ps and top.
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm.trim_end(), "accel-t0");
    device.into_transport().disconnect();
    assert!(
        supervisor.log().contains("sandbox: "),
        "{}",
        supervisor.log()
    );
    // The supervisor itself is not sandboxed: it must start processes.
    let own = status_fields(supervisor.child.id(), &["Seccomp"]);
    assert_eq!(own, ["Seccomp: 0"]);
}

#[test]
fn tenant_processes_switch_to_the_configured_user() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("*** SKIPPED: switching users needs root; NOT TESTED HERE ***");
        return;
    }
    let mut supervisor = Supervisor::start_with(
        "user",
        1,
        Setup {
            settings: "user = \"nobody\"\n",
            ..Setup::default()
        },
    );
    serves_again(&supervisor.socket("t0"));
    let pid = supervisor.tenant_pid("t0");
    assert_eq!(
        status_fields(pid, &["Uid", "Gid", "Groups"]),
        [
            "Uid: 65534 65534 65534 65534",
            "Gid: 65534 65534 65534 65534",
            "Groups: 65534"
        ]
    );
    // The supervisor stays root (it binds, places and restarts), and a
    // restarted process switches too.
    kill(pid, libc::SIGKILL);
    serves_again(&supervisor.socket("t0"));
    let restarted = supervisor.tenant_pid("t0");
    assert_ne!(restarted, pid);
    assert_eq!(
        status_fields(restarted, &["Uid"]),
        ["Uid: 65534 65534 65534 65534"]
    );
    kill(supervisor.child.id(), libc::SIGTERM);
    assert_eq!(supervisor.child.wait().unwrap().code(), Some(0));
}

#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs the fault-injection feature (cargo test --all-features)"
)]
fn a_panic_on_the_request_path_ends_only_its_tenants_process() {
    let supervisor = Supervisor::start_with(
        "panic",
        2,
        Setup {
            env: &[("VHOST_USER_ACCEL_FAULT", "panic")],
            ..Setup::default()
        },
    );
    let (victim, other) = (supervisor.socket("t0"), supervisor.socket("t1"));
    // t1's first process panics at its first kick too: take it out of the
    // way first, so that the neighbour below runs on a process that serves.
    serves_again(&other);
    let pid = supervisor.tenant_pid("t0");
    beside_a_neighbour(&other, |done| {
        let before = done.load(Ordering::Relaxed);
        // The kick that reaches the process first (while the rings start,
        // or for this request) finds the fault: the connection may break at
        // any step, so its errors are expected.
        let memory = DmaMemory::new(4 << 20).unwrap();
        let _ = std::panic::catch_unwind(|| {
            let device = connect(&victim, &memory);
            let data = memory.alloc(9).unwrap();
            let request = Request::new(Op::Crc32c).input(Buffer::direct(&data));
            device.submit(0, &request, 0).unwrap();
            device.flush(0).unwrap();
        });
        supervisor.wait_until_gone("t0", pid);
        serves_again(&victim);
        before
    });
    let log = supervisor.log();
    assert!(log.contains("fault injected on the request path"), "{log}");
    assert!(
        log.contains(&format!("process {pid} was killed by SIGABRT (6)")),
        "{log}"
    );
}

/// How many of the tenant's processes the supervisor saw end with SIGABRT.
/// A request that ends the tenant's process whenever it runs (a fault of
/// the engine on its input) ends the process that runs it and the one that
/// runs it again, then completes with Interrupted instead of a third run
/// (§11.3): the device serves again, and fence numbering goes on.
#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs the fault-injection feature (cargo test --all-features)"
)]
fn a_request_that_ends_every_process_is_interrupted_after_two() {
    let supervisor = Supervisor::start_poisoned("poison");
    let socket = supervisor.socket("t0");
    let memory = DmaMemory::new(8 << 20).unwrap();
    let options = VhostUserOptions::of(FrontendModel::Qemu {
        forwards_reset: false,
    });
    let transport = VhostUserTransport::connect_with(&socket, &memory, &options).unwrap();
    let mut device = Device::open_with(transport, &OpenOptions::default()).unwrap();
    let out = memory.alloc(64).unwrap();
    let done = device.run(0, &fill_request(&out)).unwrap().check().unwrap();
    assert_eq!(u64::from(done.fence().seqno), 1);

    let first = supervisor.tenant_pid("t0");
    let (fence, _poison) = submit_poison(&device, 7);
    supervisor.wait_until_gone("t0", first);
    // The next process resumes the device once the rings start, runs the
    // request again, and ends too: maybe before the reconnection is done,
    // which then fails. Either way the one after it is left to serve.
    let _ = device.transport_mut().reconnect(&socket, &options);
    supervisor.wait_for_aborted(1, "the second run");
    device.transport_mut().reconnect(&socket, &options).unwrap();
    let completions = device.wait(0, PATIENCE).unwrap();
    let log = supervisor.log();
    assert_interrupted(&completions, 7, fence, &log);
    assert!(log.contains(", 1 interrupted"), "{log}");

    memory.write(&out, 0, &[0; 64]).unwrap();
    let done = device.run(0, &fill_request(&out)).unwrap().check().unwrap();
    assert_eq!(u64::from(done.fence().seqno), 3);
    assert_eq!(memory.read_vec(&out, 0, 64).unwrap(), [0x5a; 64]);
    let log = supervisor.log();
    assert_eq!(supervisor.aborted(), 2, "{log}");
    assert_eq!(
        log.matches("fault injected: a request of 4093 bytes")
            .count(),
        2,
        "{log}"
    );
}

/// Requests that were running beside such a request when it ended the
/// process run again alone, one at a time, and complete: the second failure
/// finds only the request that causes it running, and only that one is
/// interrupted (§11.3).
#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs the fault-injection feature (cargo test --all-features)"
)]
fn requests_beside_one_that_ends_every_process_complete() {
    const BESIDE: usize = 4;
    const POISON_TOKEN: u64 = BESIDE as u64;
    let supervisor = Supervisor::start_poisoned("poison-beside");
    let socket = supervisor.socket("t0");
    let memory = DmaMemory::new(16 << 20).unwrap();
    let options = VhostUserOptions::of(FrontendModel::Qemu {
        forwards_reset: false,
    });
    let transport = VhostUserTransport::connect_with(&socket, &memory, &options).unwrap();
    let mut device = Device::open_with(transport, &OpenOptions::default()).unwrap();
    let first = supervisor.tenant_pid("t0");
    // One batch: the digests are handed to the engine just before the
    // request that ends the process.
    let digests = queue_digests(&device, BESIDE, 1 << 20, 0x3c);
    let (fence, _poison) = submit_poison(&device, POISON_TOKEN);
    supervisor.wait_until_gone("t0", first);
    let _ = device.transport_mut().reconnect(&socket, &options);
    supervisor.wait_for_aborted(1, "the second run");
    device.transport_mut().reconnect(&socket, &options).unwrap();
    let mut completions = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while completions.len() <= BESIDE && Instant::now() < deadline {
        completions.extend(device.wait(0, Duration::from_millis(200)).unwrap());
    }
    // Anything more would be a request completed twice.
    completions.extend(device.wait(0, Duration::from_millis(300)).unwrap());

    let log = supervisor.log();
    let (poisoned, beside): (Vec<_>, Vec<_>) = completions
        .into_iter()
        .partition(|completion| completion.token == POISON_TOKEN);
    assert_interrupted(&poisoned, POISON_TOKEN, fence, &log);
    let mut tokens: Vec<u64> = beside.iter().map(|completion| completion.token).collect();
    tokens.sort_unstable();
    assert_eq!(tokens, (0..POISON_TOKEN).collect::<Vec<_>>(), "{log}");
    for completion in beside {
        let index = usize::try_from(completion.token).unwrap();
        let completion = completion.check().unwrap_or_else(|e| panic!("{e}\n{log}"));
        assert_eq!(completion.fence(), digests.fences[index], "{log}");
        assert_eq!(
            completion.result()[..32],
            digests.expected[index][..],
            "{log}"
        );
    }
    assert_eq!(supervisor.aborted(), 2, "{log}");
    assert!(log.contains("running at 2 failures"), "{log}");
}

/// Keeps four SHA-256 digests of 1 MiB in flight on `socket` until `stop`.
fn flood(socket: &Path, stop: &AtomicBool) {
    let memory = DmaMemory::new(4 << 20).unwrap();
    let device = connect(socket, &memory);
    let src = memory.alloc(1 << 20).unwrap();
    let request = Request::new(Op::Sha256).input(Buffer::direct(&src));
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..4 {
            device.submit(0, &request, 0).unwrap();
        }
        device.flush(0).unwrap();
        let mut done = 0;
        while done < 4 {
            let completions = device.wait(0, PATIENCE).unwrap();
            assert!(!completions.is_empty(), "no completion in {PATIENCE:?}");
            assert!(completions
                .iter()
                .all(|c| matches!(c.status(), Ok(Status::Ok))));
            done += completions.len();
        }
    }
    device.into_transport().disconnect();
}

/// The nice level of every thread of process `pid`.
fn thread_nice_levels(pid: u32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            // Field 19 of stat, the 17th after the command name.
            stat.rsplit_once(") ")?.1.split(' ').nth(16)?.parse().ok()
        })
        .collect()
}

/// Seconds the metrics say the arbiter slowed `tenant` down.
fn slowed_seconds(metrics: &str, tenant: &str) -> f64 {
    let prefix = format!("vhost_user_accel_slowed_seconds_total{{tenant=\"{tenant}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&prefix)?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn the_arbiter_slows_down_a_tenant_ahead_and_gives_its_priority_back() {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    if cpus > 4 {
        println!(
            "*** SKIPPED: {cpus} CPUs are more than this test's floods keep busy; \
             NOT TESTED HERE ***"
        );
        return;
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    // One flooding tenant more than there are CPUs: some run two to a CPU,
    // the others get ahead of them. As root, the tenants' processes run as
    // another user, which the supervisor reprioritizes all the same.
    let tenants = cpus + 1;
    let supervisor = Supervisor::start_with(
        "arbiter",
        tenants,
        Setup {
            settings: if root { "user = \"nobody\"\n" } else { "" },
            ..Setup::default()
        },
    );
    let names: Vec<String> = (0..tenants).map(|index| format!("t{index}")).collect();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let log = supervisor.log();
        if log.contains("fair sharing without the arbiter") {
            println!("*** SKIPPED: the arbiter needs CAP_SYS_NICE; NOT TESTED HERE ***");
            return;
        }
        if log.contains("the supervisor's arbiter runs at") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the arbiter never said how it runs:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let pids: Vec<u32> = names
        .iter()
        .map(|name| supervisor.tenant_pid(name))
        .collect();
    // Every thread of a tenant's process runs at its process's level.
    let base = thread_nice_levels(pids[0])[0];
    let slowed_nice = (base + SLOW_STEPS).min(19);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let _stop = StopOnDrop(&stop);
        let floods: Vec<_> = names
            .iter()
            .map(|name| {
                let socket = supervisor.socket(name);
                let stop = &stop;
                scope.spawn(move || flood(&socket, stop))
            })
            .collect();
        let deadline = Instant::now() + PATIENCE;
        let (mut slowed, mut seen_lower) = (false, false);
        while !(slowed && seen_lower) {
            assert!(
                Instant::now() < deadline,
                "slowed down: {slowed}, a thread seen at nice {slowed_nice}: {seen_lower}; \
                 metrics:\n{}",
                supervisor.metrics()
            );
            let metrics = supervisor.metrics();
            slowed |= names
                .iter()
                .any(|name| slowed_seconds(&metrics, name) > 0.0);
            seen_lower |= pids
                .iter()
                .any(|&pid| thread_nice_levels(pid).contains(&slowed_nice));
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, Ordering::Relaxed);
        for flood in floods {
            flood.join().unwrap();
        }
    });
    // Idle again, every thread has its own priority back.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let levels: Vec<Vec<i32>> = pids.iter().map(|&pid| thread_nice_levels(pid)).collect();
        assert!(
            levels.iter().all(|threads| !threads.is_empty()),
            "a tenant's process ended: {levels:?}"
        );
        if levels.iter().flatten().all(|&nice| nice == base) {
            break;
        }
        assert!(Instant::now() < deadline, "nice levels stay {levels:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Inputs of the batch of [`a_crash_under_a_batch_is_a_pause`]: each
/// request digests a buffer of its own.
const BATCH: usize = 8;
const BATCH_INPUT: usize = 16 << 20;

/// A tenant's process SIGKILLed while its driver has a batch in flight is a
/// pause (§11.3): the VMM reconnects to the new process and starts the rings
/// where it starts them after a crash (QEMU at the used index,
/// cloud-hypervisor v53 at the available one), and the new process resumes
/// the device from the record the supervisor kept: every request of the
/// batch completes exactly once, with its own digest and the fence it was
/// given, and numbering goes on after it.
fn a_crash_under_a_batch_is_a_pause(test: &str, model: FrontendModel) {
    let supervisor = Supervisor::start(test, 1);
    let socket = supervisor.socket("t0");
    let memory = DmaMemory::new(BATCH * BATCH_INPUT + (8 << 20)).unwrap();
    let options = VhostUserOptions::of(model);
    let transport = VhostUserTransport::connect_with(&socket, &memory, &options).unwrap();
    let mut device = Device::open_with(transport, &OpenOptions::default()).unwrap();
    let out = memory.alloc(64).unwrap();
    for seqno in 1..=3 {
        let done = device.run(0, &fill_request(&out)).unwrap().check().unwrap();
        assert_eq!(u64::from(done.fence().seqno), seqno);
    }
    let digests = submit_digests(&device, BATCH, BATCH_INPUT, 0xa5);
    let (expected, fences) = (&digests.expected, &digests.fences);
    let mut completions = device.wait(0, PATIENCE).unwrap();
    assert!(completions.len() < BATCH, "the batch ended before the kill");

    let pid = supervisor.tenant_pid("t0");
    kill(pid, libc::SIGKILL);
    let killed = Instant::now();
    device.transport_mut().reconnect(&socket, &options).unwrap();
    let deadline = Instant::now() + PATIENCE;
    while completions.len() < BATCH && Instant::now() < deadline {
        completions.extend(device.wait(0, Duration::from_millis(200)).unwrap());
    }
    let resumed_after = killed.elapsed();
    // Anything more would be a request completed twice.
    completions.extend(device.wait(0, Duration::from_millis(300)).unwrap());
    let mut tokens: Vec<u64> = completions.iter().map(|c| c.token).collect();
    tokens.sort_unstable();
    assert_eq!(
        tokens,
        (0..BATCH as u64).collect::<Vec<_>>(),
        "{model:?}: every request once"
    );
    for completion in completions {
        let index = usize::try_from(completion.token).unwrap();
        let completion = completion.check().unwrap();
        assert_eq!(completion.fence(), fences[index], "{model:?}");
        assert_eq!(completion.result()[..32], expected[index][..], "{model:?}");
    }
    let log = supervisor.log();
    assert!(log.contains("resumed the device"), "{log}");
    assert!(
        !log.contains(" 0 requests run again"),
        "{model:?}: nothing was in flight at the kill: {log}"
    );
    assert!(!log.contains("used by an earlier device instance"), "{log}");
    eprintln!("{model:?}: the batch completed {resumed_after:?} after the kill");

    memory.write(&out, 0, &[0; 64]).unwrap();
    let done = device.run(0, &fill_request(&out)).unwrap().check().unwrap();
    assert_eq!(u64::from(done.fence().seqno), 4 + BATCH as u64, "{model:?}");
    assert_eq!(memory.read_vec(&out, 0, 64).unwrap(), [0x5a; 64]);
}

#[test]
fn a_crash_under_a_batch_is_a_pause_for_stock_qemu() {
    a_crash_under_a_batch_is_a_pause(
        "pause-qemu",
        FrontendModel::Qemu {
            forwards_reset: false,
        },
    );
}

#[test]
fn a_crash_under_a_batch_is_a_pause_for_cloud_hypervisor() {
    a_crash_under_a_batch_is_a_pause("pause-ch", FrontendModel::CloudHypervisor);
}

/// Objects survive a crash (§11.3): a process killed while requests on two
/// objects are in flight, one of the objects destroyed already (its last
/// request still queued), is followed by one that finishes every request
/// with the right result on the right object, keeps the live object under
/// its handle, forgets the destroyed one, and gives new objects new handles.
fn objects_survive_a_crash(test: &str, model: FrontendModel) {
    const BIG: usize = 16 << 20;
    // Enough work on the big object that the kill, right after the first
    // completion, lands with requests in flight even on a loaded machine.
    const DIGESTS: u64 = 12;
    let supervisor = Supervisor::start(test, 1);
    let socket = supervisor.socket("t0");
    let memory = DmaMemory::new(BIG + (8 << 20)).unwrap();
    let options = VhostUserOptions::of(model);
    let transport = VhostUserTransport::connect_with(&socket, &memory, &options).unwrap();
    let mut device = Device::open_with(transport, &OpenOptions::default()).unwrap();
    let big = memory.alloc(BIG).unwrap();
    let big_bytes: Vec<u8> = (0..=250u8).cycle().take(BIG).collect();
    memory.write(&big, 0, &big_bytes).unwrap();
    let small = memory.alloc(9).unwrap();
    memory.write(&small, 0, b"123456789").unwrap();
    let kept = device.create_object(&[(big.gpa(), BIG as u64)]).unwrap();
    let gone = device.create_object(&[(small.gpa(), 9)]).unwrap();
    let digest = Request::new(Op::Sha256).input(Buffer::object(kept, 0, BIG as u64));
    for token in 0..DIGESTS {
        device.submit(0, &digest, token).unwrap();
    }
    let crc = Request::new(Op::Crc32c).input(Buffer::object(gone, 0, 9));
    let crc_fence = device.submit(0, &crc, DIGESTS).unwrap();
    device.flush(0).unwrap();
    // Destroyed while its request, taken (its fence issued), waits behind
    // the digests (§7.2).
    let deadline = Instant::now() + PATIENCE;
    while device.query_fence(crc_fence).is_err() {
        assert!(Instant::now() < deadline, "the request was never taken");
        std::thread::sleep(Duration::from_millis(1));
    }
    device.destroy_object(gone).unwrap();
    let mut completions = device.wait(0, PATIENCE).unwrap();
    let all = usize::try_from(DIGESTS).unwrap() + 1;
    assert!(completions.len() < all, "everything ended before the kill");

    let pid = supervisor.tenant_pid("t0");
    kill(pid, libc::SIGKILL);
    device.transport_mut().reconnect(&socket, &options).unwrap();
    let deadline = Instant::now() + PATIENCE;
    while completions.len() < all && Instant::now() < deadline {
        completions.extend(device.wait(0, Duration::from_millis(200)).unwrap());
    }
    let want = sha2::Sha256::digest(&big_bytes);
    let mut tokens: Vec<u64> = completions.iter().map(|c| c.token).collect();
    tokens.sort_unstable();
    assert_eq!(tokens, (0..=DIGESTS).collect::<Vec<_>>(), "{model:?}");
    for completion in completions {
        let completion = completion.check().unwrap();
        if completion.token == DIGESTS {
            assert_eq!(completion.result_u32(), 0xe306_9283, "{model:?}");
        } else {
            assert_eq!(completion.result()[..32], want[..], "{model:?}");
        }
    }
    let log = supervisor.log();
    assert!(
        log.contains("resumed the device after a restart of the tenant's process: 1 objects"),
        "{log}"
    );

    let after = device.run(0, &digest).unwrap().check().unwrap();
    assert_eq!(after.result()[..32], want[..], "{model:?}: the live object");
    let refused = device.run(0, &crc).unwrap();
    assert_eq!(refused.status(), Ok(Status::NoObject), "{model:?}");
    let new = device.create_object(&[(small.gpa(), 9)]).unwrap();
    assert!(new != kept && new != gone, "{model:?}: handle {new}");
}

#[test]
fn objects_survive_a_crash_under_stock_qemu() {
    objects_survive_a_crash(
        "objects-qemu",
        FrontendModel::Qemu {
            forwards_reset: false,
        },
    );
}

#[test]
fn objects_survive_a_crash_under_cloud_hypervisor() {
    objects_survive_a_crash("objects-ch", FrontendModel::CloudHypervisor);
}

/// A daemon stopped with SIGTERM and started again with the same state
/// directory, as an upgrade does, resumes its devices (§11.3): the batch in
/// flight on an object completes once with the right digests, fences go on,
/// and the object keeps its handle.
#[test]
fn a_daemon_upgrade_is_a_pause() {
    const BIG: usize = 16 << 20;
    let state = std::env::temp_dir().join(format!("vhost-user-accel-state-{}", std::process::id()));
    let settings = format!("state-dir = \"{}\"\n", state.display());
    let mut supervisor = Supervisor::start_with(
        "upgrade",
        1,
        Setup {
            settings: &settings,
            ..Setup::default()
        },
    );
    let socket = supervisor.socket("t0");
    let memory = DmaMemory::new(BIG + (8 << 20)).unwrap();
    let options = VhostUserOptions::of(FrontendModel::Qemu {
        forwards_reset: false,
    });
    let transport = VhostUserTransport::connect_with(&socket, &memory, &options).unwrap();
    let mut device = Device::open_with(transport, &OpenOptions::default()).unwrap();
    let big = memory.alloc(BIG).unwrap();
    let bytes: Vec<u8> = (0..=250u8).cycle().take(BIG).collect();
    memory.write(&big, 0, &bytes).unwrap();
    let object = device.create_object(&[(big.gpa(), BIG as u64)]).unwrap();
    let digest = Request::new(Op::Sha256).input(Buffer::object(object, 0, BIG as u64));
    let fences: Vec<_> = (0..4)
        .map(|token| device.submit(0, &digest, token).unwrap())
        .collect();
    device.flush(0).unwrap();
    let mut completions = device.wait(0, PATIENCE).unwrap();
    assert!(completions.len() < 4, "the batch ended before the stop");

    supervisor.restart();
    device.transport_mut().reconnect(&socket, &options).unwrap();
    let deadline = Instant::now() + PATIENCE;
    while completions.len() < 4 && Instant::now() < deadline {
        completions.extend(device.wait(0, Duration::from_millis(200)).unwrap());
    }
    completions.extend(device.wait(0, Duration::from_millis(200)).unwrap());
    let want = sha2::Sha256::digest(&bytes);
    let mut tokens: Vec<u64> = completions.iter().map(|c| c.token).collect();
    tokens.sort_unstable();
    assert_eq!(tokens, [0, 1, 2, 3], "{}", supervisor.log());
    for completion in completions {
        let completion = completion.check().unwrap();
        assert_eq!(completion.result()[..32], want[..]);
        assert_eq!(
            completion.fence(),
            fences[usize::try_from(completion.token).unwrap()]
        );
    }
    let log = supervisor.log();
    assert!(log.contains("saved its device record"), "{log}");
    assert!(
        log.contains("took the device record the last daemon saved"),
        "{log}"
    );
    assert!(log.contains("resumed the device"), "{log}");
    let after = device.run(0, &digest).unwrap().check().unwrap();
    assert_eq!(u64::from(after.fence().seqno), 5);
    assert_eq!(after.result()[..32], want[..]);
    drop(supervisor);
    let _ = std::fs::remove_dir_all(&state);
}
