//! What the end-to-end VM tests share: `tests/vm.rs` (the guest under the
//! patched QEMU) and `tests/vm_cloud_hypervisor.rs` (the same guest under
//! cloud-hypervisor, itself in a QEMU guest) build the same binaries and guest
//! (`vmm-config/`), run the same [`GUEST_SCRIPT`], play the host's part of
//! its [`Step`]s through a [`GuestHost`] ([`run_steps`]) and check what the
//! guest printed ([`check_guest_console`]). [`Vm`] and [`Console`] drive a
//! VMM process and its serial consoles.
//!
//! Everything here panics, with the ends of the logs, when a step fails: it
//! is meant for tests.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use virtio_accel_spec::DeflateFormat;

use crate::reference;

/// What the guest runs after `accelctl bind`: at each `accel-guest: next?`
/// it reads the next [`Step`] from the console (the host picks them), and
/// it waits for the host at each point where the host must act on the
/// daemon (`accel-guest: restart-daemon`, answered once the daemon is back).
pub const GUEST_SCRIPT: &str = r#"#!/bin/sh
seq 1 20000 > /tmp/in
crc() { accelctl --timeout 20 run crc32c --in /tmp/in; }
job() {
    accelctl --timeout "$1" bench --ops copy --sizes 4096 --seconds 120 --memory 32 > /tmp/job.log 2>&1
}
# Asks the host to do STEP to the daemon and waits until it has.
host() { echo "accel-guest: $1"; read -r ack; }
# A CRC job, retried while the VMM reconnects to a daemon that came back.
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

while echo "accel-guest: next?" && read -r step label; do
    case $step in
    first)
        accelctl selftest --strict --seed 11 || exit 1
        accelctl run deflate --level 6 --in /tmp/in --out /tmp/in.gz || exit 1
        crc || exit 1
        echo accel-gz-begin
        base64 /tmp/in.gz
        echo accel-gz-end
        ;;
    idle-restart)
        host restart-daemon
        crc_again "after an idle restart"
        ;;
    restart-under-job)
        interrupted restart-daemon "across a daemon restart"
        crc_again "after a restart under a job"
        ;;
    stop-under-job)
        interrupted stop-daemon "without a daemon"
        host start-daemon
        crc_again "after the daemon came back"
        ;;
    crc)
        crc; echo "accel-guest: $label: exit $?"
        ;;
    reboot)
        echo "accel-guest: rebooting"
        reboot -f
        ;;
    exit)
        exit 0
        ;;
    *)
        echo "accel-guest: no step $step"
        exit 1
        ;;
    esac
done
"#;

/// Longest wait for one step of the guest (TCG on two shared vCPUs).
pub const STEP_TIMEOUT: Duration = Duration::from_secs(600);

/// The workspace's root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where the VM builds are cached: `ACCEL_VM_CACHE`, else
/// `~/.cache/vhost-user-accel`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ACCEL_VM_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(std::env::temp_dir, PathBuf::from);
    home.join(".cache/vhost-user-accel")
}

/// Whether this machine can build and boot a VM at all: the build scripts
/// install Debian packages, unless QEMU is already built in `cache`.
/// `ACCEL_VM_TEST=0` says no on purpose.
pub fn can_run(cache: &Path) -> Result<(), String> {
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

/// Says loudly that `test` does not run here and why; fails instead when
/// `ACCEL_VM_REQUIRED=1` (CI, where a skip would be a false pass).
pub fn skip(test: &str, why: &str) {
    assert!(
        std::env::var("ACCEL_VM_REQUIRED").as_deref() != Ok("1"),
        "the {test} test cannot run here ({why}) and ACCEL_VM_REQUIRED=1"
    );
    eprintln!("\n*** {test} test SKIPPED: {why} ***\n");
}

/// Runs a build script of `vmm-config/` and returns its stdout's words.
pub fn run_script(args: &[&Path]) -> Vec<String> {
    let output = Command::new("bash")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", args[0]));
    assert!(
        output.status.success(),
        "{:?} failed:\n{}",
        args[0],
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// The static binaries that go into the VMs.
#[derive(Debug, Clone)]
pub struct GuestBinaries {
    /// `accelctl`, for the guest.
    pub accelctl: PathBuf,
    /// The daemon, `vhost-user-accel` (static, for a VM that runs it).
    pub daemon: PathBuf,
}

/// Builds the static `accelctl` for the initramfs and the daemon binary, in
/// a target directory of their own under `out` (the one of this test run is
/// locked).
pub fn build_binaries(out: &Path) -> GuestBinaries {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target = "x86_64-unknown-linux-gnu";
    let status = Command::new(cargo)
        .current_dir(workspace())
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .args(["build", "--release", "--locked", "-p", "accelctl"])
        .args(["-p", "vhost-user-accel", "--target", target, "--target-dir"])
        .arg(out.join("build"))
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo: {e}"));
    assert!(status.success(), "cannot build accelctl and the daemon");
    let dir = out.join("build").join(target).join("release");
    let binaries = GuestBinaries {
        accelctl: dir.join("accelctl"),
        daemon: dir.join("vhost-user-accel"),
    };
    for binary in [&binaries.accelctl, &binaries.daemon] {
        let ldd = Command::new("ldd")
            .arg(binary)
            .output()
            .unwrap_or_else(|e| panic!("cannot run ldd: {e}"));
        assert!(
            !String::from_utf8_lossy(&ldd.stdout).contains("=>"),
            "{} is not static: {}",
            binary.display(),
            String::from_utf8_lossy(&ldd.stdout)
        );
    }
    binaries
}

/// Builds the guest's kernel and initramfs with `accelctl` and
/// [`GUEST_SCRIPT`] (`vmm-config/guest/build-initramfs.sh`, which caches
/// Debian's kernel in `cache`); returns their paths.
pub fn build_guest(out: &Path, cache: &Path, accelctl: &Path) -> (String, String) {
    let guest_script = out.join("guest-script.sh");
    std::fs::write(&guest_script, GUEST_SCRIPT)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", guest_script.display()));
    let mut boot = run_script(&[
        &workspace().join("vmm-config/guest/build-initramfs.sh"),
        cache,
        accelctl,
        &guest_script,
    ])
    .into_iter();
    match (boot.next(), boot.next()) {
        (Some(kernel), Some(initrd)) => (kernel, initrd),
        _ => panic!("build-initramfs.sh printed no kernel and initramfs"),
    }
}

/// Decodes base64 text, skipping whatever is not a base64 digit (line
/// breaks, a console's carriage returns).
pub fn decode_base64(text: &str) -> Vec<u8> {
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

/// The last `count` lines of the file at `path`, for failure messages (the
/// whole file is kept).
fn tail(path: &Path, count: usize) -> String {
    let text = String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(count);
    format!(
        "---- {} (last lines):\n{}",
        path.display(),
        lines[start..].join("\n")
    )
}

/// A serial console: what the machine writes goes to a file, what the test
/// types goes to `input`.
pub struct Console {
    log: PathBuf,
    input: Box<dyn Write>,
    /// How far the log has been read by [`Vm::expect`].
    seen: usize,
}

impl Console {
    /// The console whose output is the file `log` and whose input is `input`.
    pub fn new(log: PathBuf, input: impl Write + 'static) -> Self {
        Console {
            log,
            input: Box::new(input),
            seen: 0,
        }
    }

    /// Everything the machine wrote so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// Types a line.
    pub fn send(&mut self, line: &str) {
        writeln!(self.input, "{line}")
            .and_then(|()| self.input.flush())
            .unwrap_or_else(|e| panic!("cannot type on {}: {e}", self.log.display()));
    }

    /// Where `marker` ends, if it came after what was already seen (byte
    /// offsets, so that a character half written when the file was read
    /// cannot shift them).
    fn find(&self, marker: &str) -> Option<usize> {
        let log = std::fs::read(&self.log).unwrap_or_default();
        let needle = marker.as_bytes();
        log.get(self.seen..)
            .and_then(|rest| rest.windows(needle.len()).position(|w| w == needle))
            .map(|at| self.seen + at + needle.len())
    }

    /// Whether `marker` came after what was already seen.
    pub fn shows(&self, marker: &str) -> bool {
        self.find(marker).is_some()
    }

    /// Whether `marker` came after what was already seen, and if so moves
    /// past it.
    fn take(&mut self, marker: &str) -> bool {
        let found = self.find(marker);
        if let Some(end) = found {
            self.seen = end;
        }
        found.is_some()
    }
}

/// A running VMM process (killed when dropped) and the logs that tell what
/// happened in it.
pub struct Vm {
    child: Child,
    name: String,
    logs: Vec<PathBuf>,
}

impl Vm {
    /// `child`, called `name` in messages; the ends of `logs` are shown when
    /// a step fails.
    pub fn new(child: Child, name: &str, logs: Vec<PathBuf>) -> Self {
        Vm {
            child,
            name: name.to_string(),
            logs,
        }
    }

    /// The ends of the logs, for failure messages.
    pub fn context(&self) -> String {
        let tails: Vec<String> = self.logs.iter().map(|log| tail(log, 60)).collect();
        tails.join("\n")
    }

    /// Waits for `marker` on `console`, after what was already seen there.
    pub fn expect(&mut self, console: &mut Console, marker: &str) {
        self.expect_unless(console, marker, || None);
    }

    /// Waits for `marker` on `console`, after what was already seen there,
    /// unless `gone` says first why it cannot come (a VMM inside this one
    /// that exited).
    pub fn expect_unless(
        &mut self,
        console: &mut Console,
        marker: &str,
        gone: impl Fn() -> Option<String>,
    ) {
        let deadline = Instant::now() + STEP_TIMEOUT;
        while !console.take(marker) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited ({status}) before {marker:?}\n{}",
                    self.name,
                    self.context()
                );
            }
            if let Some(why) = gone() {
                panic!("no {marker:?}: {why}\n{}", self.context());
            }
            assert!(
                Instant::now() < deadline,
                "no {marker:?} within {STEP_TIMEOUT:?}\n{}",
                self.context()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the VMM exits, which must be a success.
    pub fn wait_exit(&mut self) {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    assert!(
                        status.success(),
                        "{}: {status}\n{}",
                        self.name,
                        self.context()
                    );
                    return;
                }
                Ok(None) => {}
                Err(e) => panic!("cannot wait for {}: {e}", self.name),
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit\n{}",
                self.name,
                self.context()
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

/// The host's side of [`GUEST_SCRIPT`]: the guest's console, and the daemon.
pub trait GuestHost {
    /// Waits for `marker` on the guest's console.
    fn expect(&mut self, marker: &str);
    /// Types a line on the guest's console.
    fn send(&mut self, line: &str);
    /// Kills the daemon with SIGKILL, as in a crash; returns once it is gone.
    fn kill_daemon(&mut self);
    /// Starts the daemon again; returns once it listens.
    fn start_daemon(&mut self);
}

/// A step of [`GUEST_SCRIPT`]. Each runs one CRC-32C job of the guest's
/// file that must work (after whatever the step did to the daemon or the
/// guest), which prints the CRC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `accelctl selftest --strict` passes with every check run, then a
    /// deflate of the guest's file (which the host decodes) and a CRC job:
    /// three runs of `accelctl` in one boot, each resetting the device when
    /// it starts and when it ends.
    FirstJobs,
    /// The daemon killed and restarted at once while no driver uses the
    /// device (reset after the last job); then a CRC job.
    IdleRestart,
    /// The daemon killed and restarted at once while a guest job runs: the
    /// job fails (no completion) instead of hanging; then a CRC job.
    RestartUnderJob,
    /// The daemon killed under a job, which times out, and started again
    /// once the job has ended; then a CRC job.
    StopUnderJob,
    /// The guest reboots (a device reset from the machine's side); then a
    /// CRC job in the new boot.
    Reboot,
}

impl Step {
    /// The step's name in [`GUEST_SCRIPT`].
    fn name(self) -> &'static str {
        match self {
            Step::FirstJobs => "first",
            Step::IdleRestart => "idle-restart",
            Step::RestartUnderJob => "restart-under-job",
            Step::StopUnderJob => "stop-under-job",
            Step::Reboot => "reboot",
        }
    }

    /// Plays the host's part of the step: asks the guest for it, and does
    /// to the daemon what the guest asks for. Returns once the host has done
    /// its part (the guest may still be running the step's last job).
    pub fn run(self, host: &mut impl GuestHost) {
        host.expect("accel-guest: next?");
        host.send(self.name());
        match self {
            Step::FirstJobs => {}
            Step::IdleRestart | Step::RestartUnderJob => {
                host.expect("accel-guest: restart-daemon");
                host.kill_daemon();
                host.start_daemon();
                host.send("ok");
            }
            Step::StopUnderJob => {
                host.expect("accel-guest: stop-daemon");
                host.kill_daemon();
                host.send("ok");
                host.expect("accel-guest: start-daemon");
                host.start_daemon();
                host.send("ok");
            }
            Step::Reboot => {
                host.expect("accel-guest: rebooting");
                host.expect("accel-guest: next?");
                host.send("crc after reboot");
            }
        }
    }

    /// Checks what the step printed on the guest's console (`log`), the CRC
    /// aside (see [`check_guest_console`]); `context` goes with failures.
    fn check(self, log: &str, context: &str) {
        let succeeded = |step: &str| {
            let line = lines(log, &format!("{step}: exit"), 0, context);
            assert!(line.ends_with("exit 0"), "{line}\n{context}");
        };
        let timed_out = |job: &str| check_job_timed_out(log, job, context);
        match self {
            Step::FirstJobs => {
                assert!(
                    log.contains(", 0 failed, 0 not run,"),
                    "selftest\n{context}"
                );
                check_gzip(log, context);
            }
            Step::IdleRestart => succeeded("after an idle restart"),
            Step::RestartUnderJob => {
                timed_out("across a daemon restart");
                succeeded("after a restart under a job");
            }
            Step::StopUnderJob => {
                timed_out("without a daemon");
                succeeded("after the daemon came back");
            }
            Step::Reboot => succeeded("after reboot"),
        }
    }
}

/// The line of `log` that contains `prefix` and the `more` lines after it;
/// `context` goes with a failure.
fn lines(log: &str, prefix: &str, more: usize, context: &str) -> String {
    let all: Vec<&str> = log.lines().map(str::trim_end).collect();
    let at = all
        .iter()
        .position(|l| l.contains(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?}\n{context}"));
    all[at..all.len().min(at + 1 + more)].join("\n")
}

/// Checks that the guest's job that lost its daemon (`job`: "across a daemon
/// restart", "without a daemon") failed, and said why. Across a restart,
/// the VMM reconnected to the new daemon, which leaves the requests of the
/// earlier instance unanswered (§11): the job timed out as well.
pub fn check_job_timed_out(log: &str, job: &str, context: &str) {
    let report = lines(log, &format!("job {job}: exit"), 2, context);
    assert!(
        !report.lines().next().unwrap_or("").ends_with("exit 0")
            && report.contains("no completion within"),
        "{report}\n{context}"
    );
}

/// The guest's file, as the host knows it (`seq 1 20000`).
fn guest_file() -> Vec<u8> {
    (1..=20000)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect()
}

/// The gzip file that the guest printed in base64 decodes to its file.
fn check_gzip(log: &str, context: &str) {
    let gzip = log
        .find("accel-gz-begin")
        .zip(log.find("accel-gz-end"))
        .and_then(|(begin, end)| log.get(begin + "accel-gz-begin".len()..end))
        .unwrap_or_else(|| panic!("no gzip file between its markers\n{context}"));
    let decoded = reference::decompress(DeflateFormat::Gzip, &decode_base64(gzip))
        .unwrap_or_else(|e| panic!("the guest's gzip file does not decode: {e:?}\n{context}"));
    assert!(decoded == guest_file(), "guest gzip decodes to other data");
}

/// Runs `steps` (the host's part of each), then lets the guest's script end
/// (the guest powers off, saying `accel-guest: exit 0`).
pub fn run_steps(host: &mut impl GuestHost, steps: &[Step]) {
    for step in steps {
        step.run(host);
    }
    host.expect("accel-guest: next?");
    host.send("exit");
    host.expect("accel-guest: exit 0");
}

/// Checks what the guest printed on its console (`log`) while it ran
/// `steps` to their end; `context` (the ends of the logs) goes with every
/// failure.
pub fn check_guest_console(log: &str, steps: &[Step], context: &str) {
    // The host's own idea of the guest's file's CRC-32C: the guest printed
    // it once in each step.
    let crc = format!("{:08x}", reference::crc32c(0, &guest_file()));
    assert_eq!(
        log.matches(crc.as_str()).count(),
        steps.len(),
        "guest CRC-32C {crc}\n{context}"
    );
    for step in steps {
        step.check(log, context);
    }
}
