//! End to end in a real VM: builds the patched QEMU and a guest initramfs with
//! a static `accelctl` (`vmm-config/`), starts the daemon binary, boots the
//! guest (KVM if it works here, else TCG) and drives it through its console:
//!
//! 1. `accelctl selftest --strict` passes with every check run, and a file
//!    the guest compresses through the device decodes, on the host, to the
//!    bytes the host expects;
//! 2. the daemon is killed and restarted at once, while the device is idle and
//!    while a guest job runs: QEMU reconnects, the job ends with an error
//!    instead of hanging, and new jobs work;
//! 3. the daemon is killed and stays away while a guest job runs: the job
//!    times out; once the daemon is back, new jobs work;
//! 4. the VM reboots (a device reset from the machine's side): jobs work in
//!    the new boot.
//!
//! Needs root on Debian bookworm (the build scripts install packages) the first
//! time; the builds are cached in `ACCEL_VM_CACHE` (default
//! `~/.cache/vhost-user-accel`). The console, QEMU's messages and the daemon's
//! log are kept in `target/vm-test/`. `ACCEL_VM_TEST=0` skips the test, as does
//! a machine where it cannot build the VM at all (with a loud message).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use accel_tests::reference;
use virtio_accel_spec::DeflateFormat;

/// What the guest runs after `accelctl bind`. It asks the host (on the
/// console) which boot this is, and waits for the host at each step that
/// needs the host to act.
const GUEST_SCRIPT: &str = r#"#!/bin/sh
seq 1 20000 > /tmp/in
echo "accel-guest: phase?"
read -r phase
crc() { accelctl --timeout 20 run crc32c --in /tmp/in; }
job() {
    accelctl --timeout "$1" bench --ops copy --sizes 4096 --seconds 120 --memory 32 > /tmp/job.log 2>&1
}
if [ "$phase" = again ]; then
    crc; echo "accel-guest: after reboot: exit $?"
    exit 0
fi
accelctl selftest --strict --seed 11 || exit 1
accelctl run deflate --level 6 --in /tmp/in --out /tmp/in.gz || exit 1
crc || exit 1
echo accel-gz-begin
base64 /tmp/in.gz
echo accel-gz-end

# Asks the host to do STEP to the daemon and waits until it has.
host() { echo "accel-guest: $1"; read -r ack; }
# A CRC job, retried while QEMU reconnects to a daemon that came back.
crc_again() {
    status=1
    for try in 1 2 3 4 5 6 7 8 9 10; do
        if crc; then status=0; break; fi
        sleep 1
    done
    echo "accel-guest: $1: exit $status"
}
# A job running (its first requests done) while the host does STEP; how it ended.
interrupted() {
    job 10 & pid=$!
    until grep -q '1/1' /tmp/job.log; do sleep 1; done
    sleep 2 # completions under way, so the rings have moved on from index 0
    host "$1"
    wait $pid; echo "accel-guest: job $2: exit $?"
    tail -n 2 /tmp/job.log
}

host restart-daemon
crc_again "after an idle restart"
interrupted restart-daemon "across a daemon restart"
crc_again "after a restart under a job"
interrupted stop-daemon "without a daemon"
host start-daemon
crc_again "after the daemon came back"
echo "accel-guest: rebooting"
reboot -f
"#;

/// Longest wait for one step of the guest (TCG on two shared vCPUs).
const STEP_TIMEOUT: Duration = Duration::from_secs(600);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `ACCEL_VM_CACHE`, else `~/.cache/vhost-user-accel`.
fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ACCEL_VM_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(std::env::temp_dir, PathBuf::from);
    home.join(".cache/vhost-user-accel")
}

/// Runs a build script and returns its stdout's words.
fn script(args: &[&Path]) -> Vec<String> {
    let output = Command::new("bash").args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{:?} failed:\n{}",
        args[0],
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Builds the static `accelctl` for the initramfs and the daemon binary, in a
/// target directory of their own (the one of this test run is locked).
fn build_binaries(out: &Path) -> (PathBuf, PathBuf) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target = "x86_64-unknown-linux-gnu";
    let status = Command::new(cargo)
        .current_dir(workspace())
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .args(["build", "--release", "--locked", "-p", "accelctl"])
        .args(["-p", "vhost-user-accel", "--target", target, "--target-dir"])
        .arg(out.join("build"))
        .status()
        .unwrap();
    assert!(status.success(), "cannot build accelctl and the daemon");
    let dir = out.join("build").join(target).join("release");
    let accelctl = dir.join("accelctl");
    let ldd = Command::new("ldd").arg(&accelctl).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&ldd.stdout).contains("=>"),
        "accelctl is not static: {}",
        String::from_utf8_lossy(&ldd.stdout)
    );
    (accelctl, dir.join("vhost-user-accel"))
}

fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let digits: Vec<u8> = text
        .bytes()
        .filter(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
        .map(value)
        .collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for group in digits.chunks(4) {
        let bits = group
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &d)| acc | (u32::from(d) << (18 - 6 * i)));
        let bytes = bits.to_be_bytes();
        out.extend_from_slice(&bytes[1..group.len()]);
    }
    out
}

/// The daemon, as an operator runs it: its own process, killed for real.
struct DaemonProcess {
    binary: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl DaemonProcess {
    fn start(binary: &Path, socket: &Path, log: &Path) -> Self {
        let mut daemon = DaemonProcess {
            binary: binary.to_path_buf(),
            socket: socket.to_path_buf(),
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

/// A running VM and its serial console (output in a file, input a pipe).
struct Vm {
    child: Child,
    stdin: ChildStdin,
    console: PathBuf,
    /// How far the console has been read by [`Vm::expect`].
    seen: usize,
}

impl Vm {
    fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.console).unwrap_or_default()).into_owned()
    }

    /// The end of the console, for failure messages (the whole file is kept).
    fn tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let start = lines.len().saturating_sub(60);
        format!(
            "console {} (last lines):\n{}",
            self.console.display(),
            lines[start..].join("\n")
        )
    }

    /// Waits for `marker` after what was already seen (byte offsets, so that a
    /// character half written when the file was read cannot shift them).
    fn expect(&mut self, marker: &str) {
        let deadline = Instant::now() + STEP_TIMEOUT;
        let needle = marker.as_bytes();
        loop {
            let log = std::fs::read(&self.console).unwrap_or_default();
            let found = log
                .get(self.seen..)
                .and_then(|rest| rest.windows(needle.len()).position(|w| w == needle));
            if let Some(at) = found {
                self.seen += at + needle.len();
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("qemu exited ({status}) before {marker:?}; {}", self.tail());
            }
            assert!(
                Instant::now() < deadline,
                "no {marker:?} within {STEP_TIMEOUT:?}; {}",
                self.tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Types a line on the guest's console.
    fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
    }

    fn wait_exit(&mut self) {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "qemu: {status}; {}", self.tail());
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the guest did not power off; {}",
                self.tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
        .args(["-L", "/usr/share/qemu", "-L", "/usr/share/seabios"])
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

/// Whether this machine can build and boot the VM at all.
fn can_run(cache: &Path) -> Result<(), String> {
    if std::env::var("ACCEL_VM_TEST").as_deref() == Ok("0") {
        return Err(String::from("ACCEL_VM_TEST=0"));
    }
    // /proc/self belongs to the process's effective user.
    let root = std::fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0);
    let built = std::fs::read_dir(cache).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("qemu-"))
    });
    if !root && !built {
        return Err(String::from(
            "not root, and no cached QEMU build: the build scripts install Debian packages",
        ));
    }
    if !Path::new("/usr/bin/apt-get").exists() && !built {
        return Err(String::from(
            "not a Debian machine, and no cached QEMU build",
        ));
    }
    Ok(())
}

#[test]
fn guest_uses_the_device_across_daemon_restarts_and_a_reboot() {
    let root = workspace();
    let cache = cache_dir();
    if let Err(why) = can_run(&cache) {
        assert!(
            std::env::var("ACCEL_VM_REQUIRED").as_deref() != Ok("1"),
            "the VM test cannot run here ({why}) and ACCEL_VM_REQUIRED=1"
        );
        eprintln!("\n*** vm test SKIPPED: {why} ***\n");
        return;
    }
    let out = root.join("target/vm-test");
    std::fs::create_dir_all(&out).unwrap();
    let (accelctl, daemon_binary) = build_binaries(&out);
    let qemu = script(&[&root.join("vmm-config/qemu/build-qemu.sh"), &cache]);
    let guest_script = out.join("guest-script.sh");
    std::fs::write(&guest_script, GUEST_SCRIPT).unwrap();
    let boot = script(&[
        &root.join("vmm-config/guest/build-initramfs.sh"),
        &cache,
        &accelctl,
        &guest_script,
    ]);
    let (kernel, initrd) = (&boot[0], &boot[1]);

    let socket = out.join("accel.sock");
    let daemon_log = out.join("daemon.log");
    let _ = std::fs::remove_file(&daemon_log);
    let mut daemon = DaemonProcess::start(&daemon_binary, &socket, &daemon_log);
    let console = out.join("console.log");
    let mut child = Command::new(&qemu[0])
        .args(["-L", "/usr/share/qemu", "-L", "/usr/share/seabios"])
        .args(["-machine", "q35,memory-backend=mem", "-smp", "2", "-m", "1G"])
        .args(accelerator(&qemu[0], kernel))
        .args(["-object", "memory-backend-memfd,id=mem,size=1G,share=on"])
        .arg("-chardev")
        .arg(format!(
            "socket,id=accel0,path={},reconnect-ms=500",
            socket.display()
        ))
        .args(["-device", "vhost-user-device-pci,chardev=accel0,virtio-id=63,num_vqs=3,vq_size=256,config_size=40"])
        .args(["-nic", "none", "-nographic"])
        .args(["-kernel", kernel, "-initrd", initrd])
        .args(["-append", "console=ttyS0 quiet panic=-1"])
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&console).unwrap())
        .stderr(std::fs::File::create(out.join("qemu.stderr")).unwrap())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let mut vm = Vm {
        child,
        stdin,
        console,
        seen: 0,
    };

    vm.expect("accel-guest: phase?");
    vm.send("first");
    // Killed while the device is idle (reset between two jobs), then twice
    // under a running job.
    for _ in 0..2 {
        vm.expect("accel-guest: restart-daemon");
        daemon.kill();
        daemon.restart();
        vm.send("ok");
    }
    vm.expect("accel-guest: stop-daemon");
    daemon.kill();
    vm.send("ok");
    vm.expect("accel-guest: start-daemon");
    daemon.restart();
    vm.send("ok");
    vm.expect("accel-guest: rebooting");
    vm.expect("accel-guest: phase?");
    vm.send("again");
    vm.expect("accel-guest: exit");
    vm.wait_exit();

    let log = vm.log();
    // The line that contains `prefix` and the `more` lines after it.
    let lines = |prefix: &str, more: usize| -> String {
        let all: Vec<&str> = log.lines().map(str::trim_end).collect();
        let at = all
            .iter()
            .position(|l| l.contains(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?}; {}", vm.tail()));
        all[at..all.len().min(at + 1 + more)].join("\n")
    };
    let succeeded = |prefix: &str| {
        let line = lines(prefix, 0);
        assert!(line.ends_with("exit 0"), "{line}; {}", vm.tail());
    };
    assert!(
        log.contains(", 0 failed, 0 not run,"),
        "selftest; {}",
        vm.tail()
    );

    // The host's own idea of the guest's file, and of its CRC-32C: the guest
    // printed it in the first part, after each of the three daemon restarts
    // and after the reboot.
    let text: String = (1..=20000).map(|i| format!("{i}\n")).collect();
    let crc = format!("{:08x}", reference::crc32c(0, text.as_bytes()));
    assert_eq!(
        log.matches(crc.as_str()).count(),
        5,
        "guest CRC-32C {crc}; {}",
        vm.tail()
    );
    let begin = log.find("accel-gz-begin").unwrap() + "accel-gz-begin".len();
    let end = log.find("accel-gz-end").unwrap();
    let packed = decode_base64(&log[begin..end]);
    let decoded = reference::decompress(DeflateFormat::Gzip, &packed).unwrap();
    assert!(
        decoded == text.as_bytes(),
        "guest gzip decodes to other data"
    );

    // The jobs that lost their daemon failed, and said why. Across a
    // restart, QEMU reconnected to the new daemon, which leaves the requests
    // of the earlier instance unanswered (§11): the job timed out as well.
    for job in ["job across a daemon restart", "job without a daemon"] {
        let report = lines(&format!("{job}: exit"), 2);
        assert!(
            !report.lines().next().unwrap_or("").ends_with("exit 0")
                && report.contains("no completion within"),
            "{report}; {}",
            vm.tail()
        );
    }
    for step in [
        "after an idle restart",
        "after a restart under a job",
        "after the daemon came back",
        "after reboot",
    ] {
        succeeded(&format!("{step}: exit"));
    }
}
