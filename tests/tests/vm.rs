// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! End to end in a real VM: builds the patched QEMU and a guest initramfs with
//! a static `accelctl` (`vmm-config/`), starts the daemon binary, boots the
//! guest (KVM if it works here, else TCG) and drives it through its console,
//! step by step (`accel_tests::vm::Step`; `tests/vm_cloud_hypervisor.rs` runs
//! the same guest under cloud-hypervisor):
//!
//! 1. `accelctl selftest --strict` passes with every check run, and a file
//!    the guest compresses through the device decodes, on the host, to the
//!    bytes the host expects;
//! 2. the tenant's process (not the daemon, which supervises it) is killed
//!    with SIGKILL under a pipeline of deflate jobs (`accelctl bench`), then
//!    while `accelctl selftest --strict` runs: each time the daemon starts it
//!    again, QEMU reconnects, the new process resumes the device (spec
//!    §11.3, logged by the daemon), every job completes Ok and the selftest
//!    passes with every check run, with no request timed out and no "device
//!    restarted" (`Step::TenantKilledUnderJobs`);
//! 3. the kernel driver, `virtio_accel.ko` (`guest-driver/linux/`, built
//!    against the guest kernel's headers): it binds the device, its crypto
//!    algorithms pass the kernel's self-tests and serve AF_ALG (computed by
//!    the daemon: its counters, read from its metrics endpoint, rose),
//!    `accelctl selftest` passes over it, zswap swaps through its deflate,
//!    it survives a system suspend (devices only) and a daemon restart, unloads and loads again without an
//!    oops, a warning or a hung task, and gives the device back to the
//!    userspace driver (`Step::KernelModule`);
//! 4. the daemon is killed and restarted at once, while the device is idle and
//!    while a guest job runs: QEMU reconnects, the job ends with an error
//!    instead of hanging, and new jobs work;
//! 5. the daemon is killed and stays away while a guest job runs: the job
//!    times out; once the daemon is back, new jobs work;
//! 6. the VM reboots with the kernel module bound (a device reset from the
//!    machine's side): jobs work in the new boot.
//!
//! Needs root on Debian bookworm (the build scripts install packages) the first
//! time; the builds are cached in `ACCEL_VM_CACHE` (default
//! `~/.cache/vhost-user-accel`). The console, QEMU's messages and the daemon's
//! log are kept in `target/vm-test/`. `ACCEL_VM_TEST=0` skips the test, as does
//! a machine where it cannot build the VM at all (with a loud message).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use accel_tests::vm::{self, Console, GuestHost, Step, Vm};

/// The name of the daemon's one tenant: the index of its `--socket-path`.
const TENANT: &str = "0";

/// The daemon, as an operator runs it: its own process, killed for real,
/// with its metrics endpoint on a unix socket.
struct DaemonProcess {
    binary: PathBuf,
    socket: PathBuf,
    metrics: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl DaemonProcess {
    fn start(binary: &Path, socket: &Path, metrics: &Path, log: &Path) -> Self {
        let mut daemon = DaemonProcess {
            binary: binary.to_path_buf(),
            socket: socket.to_path_buf(),
            metrics: metrics.to_path_buf(),
            log: log.to_path_buf(),
            child: None,
        };
        daemon.restart();
        daemon
    }

    /// Starts the daemon (again) and waits until it listens.
    fn restart(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(&self.binary)
            .arg("--socket-path")
            .arg(&self.socket)
            .args(["--queues", "2"])
            .arg(format!("--metrics=unix:{}", self.metrics.display()))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.socket.exists() {
            assert!(Instant::now() < deadline, "the daemon did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The metrics endpoint's answer (an HTTP response; its body is what
    /// [`vm::DaemonCounters::parse`] reads).
    fn metrics(&self) -> String {
        let mut stream = UnixStream::connect(&self.metrics).unwrap();
        stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    }

    /// The process of the daemon's tenant: the child of the daemon whose
    /// command line is `vhost-user-accel --tenant-process 0` (a daemon
    /// started with `--socket-path` names its tenant `0`), waiting for it
    /// while the daemon (re)starts it (10 s at most).
    fn tenant_pid(&self) -> u32 {
        let daemon = self.child.as_ref().expect("the daemon runs").id();
        let wanted = format!("vhost-user-accel\0--tenant-process\0{TENANT}\0");
        let find = || {
            std::fs::read_dir("/proc")
                .ok()?
                .flatten()
                .find_map(|entry| {
                    let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
                    let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
                    // The fields after the command name, which is in parentheses:
                    // state, then the parent's id.
                    let parent: u32 = stat.rsplit_once(") ")?.1.split(' ').nth(1)?.parse().ok()?;
                    let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
                    (parent == daemon && cmdline == wanted.as_bytes()).then_some(pid)
                })
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(pid) = find() {
                return pid;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon (process {daemon}) has no process for tenant {TENANT}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL to the tenant's process, the daemon left running (it starts
    /// the process again); returns once the process has ended (a zombie,
    /// until the daemon reaps it, has an empty command line).
    fn kill_tenant(&self) {
        let pid = self.tenant_pid();
        // SAFETY: kill(2) takes no pointers; it only sends the signal.
        let sent = unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        assert_eq!(
            sent,
            0,
            "SIGKILL to {pid} (tenant {TENANT}): {}",
            std::io::Error::last_os_error()
        );
        let cmdline = format!("/proc/{pid}/cmdline");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read(&cmdline).is_ok_and(|c| !c.is_empty()) {
            assert!(
                Instant::now() < deadline,
                "the tenant's process {pid} outlived SIGKILL"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("vm test: killed the process {pid} of tenant {TENANT}");
    }

    /// SIGKILL: no chance to clean up, as in a crash.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The QEMU options that select the accelerator: KVM when a guest can
/// actually run under it here (on some hosts `/dev/kvm` opens but nested
/// guests fail), else TCG.
fn accelerator(qemu: &str, kernel: &str) -> Vec<&'static str> {
    let kvm = ["-accel", "kvm", "-cpu", "host"];
    let tcg = ["-accel", "tcg,thread=multi", "-cpu", "max"];
    if !Path::new("/dev/kvm").exists() {
        eprintln!("vm test: no /dev/kvm, using TCG");
        return tcg.to_vec();
    }
    // The kernel alone, without an initramfs, panics at once; panic=-1 and
    // -no-reboot turn that into a clean exit of QEMU.
    let probe = Command::new("timeout")
        .args([
            "60", qemu, "-machine", "q35", "-m", "256M", "-display", "none",
        ])
        .args(["-nodefaults", "-serial", "stdio", "-no-reboot"])
        .args(kvm)
        .args(vm::QEMU_FIRMWARE)
        .args(["-kernel", kernel, "-append", "console=ttyS0 panic=-1"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let booted = String::from_utf8_lossy(&probe.stdout).contains("Kernel panic");
    if probe.status.success() && booted {
        eprintln!("vm test: KVM works, using it");
        kvm.to_vec()
    } else {
        eprintln!(
            "vm test: KVM does not run a guest here ({}), using TCG",
            String::from_utf8_lossy(&probe.stderr).trim()
        );
        tcg.to_vec()
    }
}

/// The host's side of the guest script: the guest's console is QEMU's
/// serial port, the daemon a process of this test.
struct QemuHost {
    vm: Vm,
    console: Console,
    daemon: DaemonProcess,
}

impl GuestHost for QemuHost {
    fn expect(&mut self, marker: &str) {
        self.vm.expect(&mut self.console, marker);
    }

    fn send(&mut self, line: &str) {
        self.console.send(line);
    }

    fn kill_daemon(&mut self) {
        self.daemon.kill();
    }

    fn start_daemon(&mut self) {
        self.daemon.restart();
    }

    fn kill_tenant(&mut self) {
        self.daemon.kill_tenant();
    }

    fn daemon_metrics(&mut self) -> String {
        self.daemon.metrics()
    }
}

#[test]
fn guest_uses_the_device_across_daemon_restarts_and_a_reboot() {
    let Some(setup) = vm::set_up("vm", "vm-test") else {
        return;
    };
    let out = &setup.out;
    let (kernel, initrd) = vm::build_guest(out, &setup.cache, &setup.binaries.accelctl);

    let socket = out.join("accel.sock");
    let daemon_log = out.join("daemon.log");
    let _ = std::fs::remove_file(&daemon_log);
    let metrics = out.join("metrics.sock");
    let daemon = DaemonProcess::start(&setup.binaries.daemon, &socket, &metrics, &daemon_log);
    let mut command = Command::new(&setup.qemu);
    command
        .args(vm::QEMU_FIRMWARE)
        .args(["-machine", "q35,memory-backend=mem", "-smp", "2", "-m", "1G"])
        .args(accelerator(&setup.qemu, &kernel))
        .args(["-object", "memory-backend-memfd,id=mem,size=1G,share=on"])
        .arg("-chardev")
        .arg(format!(
            "socket,id=accel0,path={},reconnect-ms=500",
            socket.display()
        ))
        .args(["-device", "vhost-user-device-pci,chardev=accel0,virtio-id=63,num_vqs=3,vq_size=256,config_size=40"])
        .args(["-nic", "none", "-nographic"])
        .args(vm::qemu_boot(&kernel, &initrd));
    let (machine, console) = Vm::start(
        &mut command,
        "qemu",
        &out.join("console.log"),
        &out.join("qemu.stderr"),
        &[&daemon_log],
    );
    let mut host = QemuHost {
        vm: machine,
        console,
        daemon,
    };
    // Every step, the daemon killed while idle before it is killed under jobs.
    // The tenant's process is killed before the kernel module's step, which
    // then drives (resets, suspends, reloads over) the device of the process
    // that resumed it.
    let steps = [
        Step::FirstJobs,
        Step::TenantKilledUnderJobs,
        Step::KernelModule {
            zswap: true,
            resumes: false,
        },
        Step::IdleRestart,
        Step::RestartUnderJob { resumes: false },
        Step::StopUnderJob,
        Step::Reboot,
    ];
    vm::run_steps(&mut host, &steps);
    host.vm.wait_exit();
    let context = host.vm.context();
    vm::check_guest_console(&host.console.text(), &steps, &context);
    let daemon_log = String::from_utf8_lossy(&std::fs::read(&daemon_log).unwrap()).into_owned();
    vm::check_tenant_resumed(&daemon_log, &steps, &context);
}
