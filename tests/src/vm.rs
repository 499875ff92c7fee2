// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
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

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use virtio_accel_spec::DeflateFormat;

use crate::reference;

/// What the guest runs after `accelctl bind`: at each `accel-guest: next?`
/// it reads the next [`Step`] from the console (the host picks them), and
/// it waits for the host at each point where the host must act on the
/// daemon (`accel-guest: restart-daemon`, answered once the daemon is back;
/// `accel-guest: kill-tenant`, once the tenant's process is killed).
pub const GUEST_SCRIPT: &str = r#"#!/bin/sh
seq 1 20000 > /tmp/in
crc() { accelctl --timeout 20 run crc32c --in /tmp/in; }
job() {
    accelctl --timeout "$1" bench --ops copy --sizes 4096 --seconds 30 --memory 32 > /tmp/job.log 2>&1
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
# accelctl ARGS... (after NAME MARKER PAUSE) run while the host kills the
# tenant's process, once MARKER is in its output and PAUSE more seconds have
# passed; its output between accel-NAME-begin and accel-NAME-end, then how
# it ended.
killed_under() {
    name=$1 marker=$2 pause=$3; shift 3
    accelctl "$@" > "/tmp/$name.log" 2>&1 & pid=$!
    until grep -q "$marker" "/tmp/$name.log" || ! running $pid; do sleep 0.2; done
    sleep "$pause"
    host kill-tenant
    wait $pid; status=$?
    echo "accel-$name-begin"
    cat "/tmp/$name.log"
    echo "accel-$name-end"
    echo "accel-guest: $name across a tenant kill: exit $status"
}
# A job running (its first requests done) while the host does STEP; how it
# ended. A job that ends before its first completion gives up the step.
interrupted() {
    job 10 & pid=$!
    until grep -q '1/1' /tmp/job.log || ! running $pid; do sleep 1; done
    if ! grep -q '1/1' /tmp/job.log; then
        wait $pid; status=$?
        cat /tmp/job.log
        echo "accel-guest: gave up: the job before $1 ended (exit $status) before its first completion"
        return 1
    fi
    sleep 2 # completions under way, so the rings have moved on from index 0
    host "$1"
    wait $pid; echo "accel-guest: job $2: exit $?"
    tail -n 2 /tmp/job.log
}

# The kernel driver (guest-driver/linux/, virtio_accel.ko): each check is a
# command line, run and reported as "accel-guest: kernel: LABEL: exit N".
kcheck() { label=$1; shift; "$@"; echo "accel-guest: kernel: $label: exit $?"; }
# The accelerator's PCI function (virtio 1.0 device ID 0x1040 + 63).
accel_pci() {
    for dev in /sys/bus/pci/devices/*; do
        if [ "$(cat "$dev/vendor")" = 0x1af4 ] && [ "$(cat "$dev/device")" = 0x107f ]; then
            basename "$dev"; return 0
        fi
    done
    return 1
}
# Gives the PCI function $1 back from uio_pci_generic (accelctl bind) to
# virtio-pci, which creates its virtio device.
to_virtio_pci() {
    echo > "/sys/bus/pci/devices/$1/driver_override" &&
    echo "$1" > "/sys/bus/pci/devices/$1/driver/unbind" &&
    echo "$1" > /sys/bus/pci/drivers_probe
}
# Whether virtio_accel drives the virtio device of the PCI function $1.
bound() { [ "$(basename "$(readlink /sys/bus/pci/devices/"$1"/virtio*/driver)")" = virtio_accel ]; }
unbound() { ! bound "$1"; }
# The module's algorithms in /proc/crypto, "NAME DRIVER PRIORITY SELFTEST TYPE"
# each (a block ends with an empty line).
module_algorithms() {
    awk '/^name/ { name = $3 } /^driver/ { driver = $3 } /^module/ { module = $3 }
        /^priority/ { priority = $3 } /^selftest/ { selftest = $3 } /^type/ { type = $3 }
        /^$/ { if (module == "virtio_accel") print name, driver, priority, selftest, type
            module = "" }' /proc/crypto
}
# Every algorithm of the module passed its self-test (printed as "accel-guest:
# crypto: ..."), there is one, and the kernel logged no failed self-test. The
# tests may still run when the module is loaded (selftest "unknown"): waits
# for them, 60 s at most.
crypto_selftests() {
    waited=0
    while module_algorithms | grep -q ' unknown ' && [ $waited -lt 60 ]; do
        sleep 1; waited=$((waited + 1))
    done
    module_algorithms > /tmp/algorithms
    sed 's/^/accel-guest: crypto: /' /tmp/algorithms
    echo "accel-guest: crypto self-tests done after ${waited}s"
    [ -s /tmp/algorithms ] && ! grep -v ' passed ' /tmp/algorithms &&
        ! dmesg | grep -E 'alg: .*fail'
}
# The kernel's log since line $1 has no oops, warning, hung task or failed
# crypto self-test (it prints those it has).
kernel_log_clean() {
    ! dmesg | tail -n +"$(($1 + 1))" |
        grep -E 'BUG:|Oops|WARNING:|Call Trace|blocked for more than|hung_task|alg: .*fail'
}
# Whether process $1 still runs: it exists and is not a zombie waiting for
# its parent. Any other state counts (a task in an idle kernel wait shows
# I, not S or D).
running() { [ -e "/proc/$1/status" ] && ! grep -qs '^State:[[:space:]]*[ZX]' "/proc/$1/status"; }
# Runs a command line (after its time limit, $1 s); one still running then
# shows its state and kernel stack and is killed (exit 137).
limited() {
    limit=$1; shift
    "$@" & pid=$!
    waited=0
    while running $pid && [ $waited -lt "$limit" ]; do sleep 1; waited=$((waited + 1)); done
    if running $pid; then
        echo "accel-guest: $1 still running after ${limit}s: $(grep '^State' /proc/$pid/status)"
        cat /proc/$pid/stack
        kill -KILL $pid
    fi
    wait $pid
}
# A test program of guest-driver/linux/tests/ (2 minutes at most); missing
# is a failure.
test_program() {
    if [ -x "/bin/$1" ]; then limited 120 "$@"; else echo "no /bin/$1"; return 1; fi
}
# Ends a kernel step still running after $1 s with the kernel's log, the
# state and kernel stack of each user process, the blocked tasks (killable
# waits too, which the hung-task detector passes over) and what the CPUs
# run, and powers off, rather than leave the host waiting.
watchdog() {
    sleep "$1"
    echo "accel-guest: kernel: watchdog: still running after $1 s"
    dmesg | tail -n 40
    for task in /proc/[0-9]*; do
        [ -e "$task/exe" ] || continue
        echo "${task#/proc/} $(cat "$task/comm") $(grep '^State' "$task/status")"
        cat "$task/stack"
    done
    echo w > /proc/sysrq-trigger
    echo l > /proc/sysrq-trigger
    sync
    poweroff -f
}
# The daemon's counters, "OK AUTH_FAILED BYTES" (requests completed Ok and
# AuthFailed, bytes of the Ok ones), went from $1 to $2 (asked of the host:
# "host counters") by at least $3 (three numbers too).
counters_rose() {
    echo "accel-guest: daemon counters (ok, auth failed, bytes): $1 -> $2, at least +$3"
    echo "$1 $2 $3" | awk '{ exit !($4 - $1 >= $7 && $5 - $2 >= $8 && $6 - $3 >= $9) }'
}
# What "afalg --driver" must have had computed by the device, at least: 12
# Ok requests (sha256 two one-shot digests, crc32c four checks, gcm(aes) two
# vectors and the long text, encrypted and decrypted), 2 AuthFailed (the
# vectors with a bad tag: only the device reports those), and the
# 10000-byte pattern four times (sha256 and crc32c in one send, gcm(aes)
# both ways). The daemon counts by status, not by operation.
AFALG_MIN="12 2 40000"
# afalg --driver with the daemon's counters read before and after: they
# rose by what it must have sent. $1 ends the checks' labels.
afalg_on_device() {
    host counters; before=$ack
    kcheck "afalg --driver$1" test_program afalg --driver
    host counters
    kcheck "afalg computed by the daemon$1" counters_rose "$before" "$ack" "$AFALG_MIN"
}
# A system suspend, devices only (pm_test): the module's freeze and restore
# run as in a suspend to RAM, and the device is reset in between, without
# the machine sleeping (suspend to idle, which every machine has).
suspend_devices() {
    echo devices > /sys/power/pm_test || return 1
    echo freeze > /sys/power/state; status=$?
    echo none > /sys/power/pm_test
    return $status
}
# A finished job's sync_file, kept by accel_drm --outlive with the device
# node closed while the module unloads (outlive_start; the module's rmmod
# comes between), then polled and queried (outlive_end).
outlive_start() {
    rm -f /tmp/outlive
    /bin/accel_drm --outlive /tmp/outlive > /tmp/outlive.log 2>&1 & outlive=$!
    waited=0
    until grep -q 'waiting for' /tmp/outlive.log || [ $waited -ge 60 ]; do
        sleep 1; waited=$((waited + 1))
    done
    cat /tmp/outlive.log
    grep -q 'waiting for' /tmp/outlive.log
}
outlive_end() { touch /tmp/outlive; wait $outlive; status=$?; cat /tmp/outlive.log; return $status; }
# The module drives the device of the PCI function $1.
bind_module() { to_virtio_pci "$1" && modprobe virtio_accel && bound "$1"; }
# accelctl chose the kernel transport (the module bound).
accelctl_kernel() {
    accelctl list > /tmp/list.log 2>&1
    cat /tmp/list.log
    grep -q '^transport: kernel, ' /tmp/list.log
}
# accelctl selftest --strict over the kernel transport: every check runs and
# passes. shmem gets huge pages meanwhile: a device object has at most
# max_segments (64) contiguous runs of pages, and base pages may each be a
# run of their own (64 x 4 KiB = 256 KiB); huge pages come in 2 MiB runs, so
# accelctl's udmabuf memfds over 256 KiB fit (the module's GEM objects that
# size come from its own huge tmpfs).
kernel_selftest() {
    thp=/sys/kernel/mm/transparent_hugepage/shmem_enabled
    thp_was=$(sed 's/.*\[\(.*\)\].*/\1/' $thp)
    echo always > $thp
    accelctl selftest --strict --seed 11 > /tmp/selftest.log 2>&1
    status=$?
    echo "$thp_was" > $thp
    if [ $status = 0 ] && grep -q 'transport: kernel, ' /tmp/selftest.log &&
        grep -q ', 0 failed, 0 not run,' /tmp/selftest.log; then
        grep '^selftest' /tmp/selftest.log
    else
        cat /tmp/selftest.log
        return 1
    fi
}
# A counter of /proc/vmstat.
vmstat() { awk -v name="$1" '$1 == name { print $2 }' /proc/vmstat; }
# Swap on a zram device (zswap needs a swap device behind it).
swap_on_zram() {
    modprobe zram && echo 256M > /sys/block/zram0/disksize &&
        mkswap /dev/zram0 > /dev/null && swapon /dev/zram0
}
# zswap compresses with $1 (an algorithm's or driver's name); it took.
zswap_compressor() {
    echo "$1" > /sys/module/zswap/parameters/compressor &&
        [ "$(cat /sys/module/zswap/parameters/compressor)" = "$1" ]
}
zswap_enable() { echo "$1" > /sys/module/zswap/parameters/enabled; }
# A memory cgroup of 16 MiB, "pressure": what runs there swaps at once
# (far faster under TCG than filling the guest's 1 GiB).
memory_cgroup() {
    mount -t cgroup2 none /sys/fs/cgroup &&
        echo +memory > /sys/fs/cgroup/cgroup.subtree_control &&
        mkdir /sys/fs/cgroup/pressure &&
        echo 16M > /sys/fs/cgroup/pressure/memory.max
}
# swap_pressure writes 64 MiB in the cgroup and reads every page back.
swap_pressure_in_cgroup() {
    # shellcheck disable=SC2016 # $$: the inner shell's
    limited 300 sh -c 'echo $$ > /sys/fs/cgroup/pressure/cgroup.procs &&
        exec /bin/swap_pressure 64'
}
# zswap no longer holds the module's deflate (rmmod comes later): swap off,
# zswap off and back on lzo (built in), and no reference left (10 s at
# most: zswap frees its old pool in a work item).
zswap_release() {
    swapoff /dev/zram0 && zswap_enable N && zswap_compressor lzo || return 1
    waited=0
    while [ "$(cat /sys/module/virtio_accel/refcnt)" != 0 ] && [ $waited -lt 10 ]; do
        sleep 1; waited=$((waited + 1))
    done
    [ "$(cat /sys/module/virtio_accel/refcnt)" = 0 ]
}
# zswap with the module's deflate under memory pressure: every page comes
# back intact, zswap stored and loaded pages, and the daemon completed at
# least one request per page stored or loaded.
kernel_zswap() {
    kcheck "swap on zram" swap_on_zram
    kcheck "zswap compressor" zswap_compressor deflate-virtio-accel
    kcheck "zswap enabled" zswap_enable Y
    kcheck "memory cgroup" memory_cgroup
    stored=$(vmstat zswpout); loaded=$(vmstat zswpin)
    host counters; before=$ack
    kcheck "swap pressure" swap_pressure_in_cgroup
    host counters
    stored=$(($(vmstat zswpout) - stored)); loaded=$(($(vmstat zswpin) - loaded))
    echo "accel-guest: zswap: $stored pages stored, $loaded loaded"
    kcheck "zswap stored and loaded" test "$stored" -gt 0 -a "$loaded" -gt 0
    kcheck "zswap computed by the daemon" counters_rose "$before" "$ack" "$((stored + loaded)) 0 0"
    kcheck "zswap released" zswap_release
}
# The module loads, binds and passes its checks (AF_ALG, the accel node,
# accelctl over it, zswap, a daemon restart); unloads and loads again;
# hands the device back to accelctl (uio_pci_generic). The zswap check runs
# when $1 is "zswap".
kernel_module() {
    echo 10 > /proc/sys/kernel/hung_task_timeout_secs
    log_start=$(dmesg | wc -l)
    watchdog 900 & dog=$!
    pci=$(accel_pci)
    kcheck "to virtio-pci" to_virtio_pci "$pci"
    kcheck "modprobe" modprobe virtio_accel
    kcheck "bound" bound "$pci"
    kcheck "accel node" test -c /dev/accel/accel0
    kcheck "crypto self-tests" crypto_selftests
    kcheck "afalg" test_program afalg
    afalg_on_device ""
    kcheck "modprobe vgem" modprobe vgem
    kcheck "accel_drm" test_program accel_drm
    kcheck "accelctl list: kernel transport" accelctl_kernel
    kcheck "accelctl selftest" kernel_selftest
    if [ "$1" = zswap ]; then kernel_zswap; fi
    kcheck "suspend (devices)" suspend_devices
    afalg_on_device " after suspend"
    # The daemon restarted while the module is bound (idle). The new daemon
    # takes nothing from rings an earlier instance used (spec 11.2), so the
    # first request after it gets no completion: the module's watchdog
    # resets the device after its timeout (3 s here, below the hung-task
    # detector's 10 s, for AF_ALG waits uninterruptibly) and the crypto
    # provider computes that request in software. Then the device works.
    echo 3 > /sys/module/virtio_accel/parameters/timeout
    host restart-daemon
    kcheck "afalg --driver across a daemon restart" test_program afalg --driver
    afalg_on_device " after a daemon restart"
    kcheck "a sync_file kept" outlive_start
    kcheck "rmmod" rmmod virtio_accel
    kcheck "the sync_file outlives the module" outlive_end
    kcheck "unbound" unbound "$pci"
    kcheck "modprobe again" modprobe virtio_accel
    kcheck "bound again" bound "$pci"
    kcheck "crypto self-tests again" crypto_selftests
    kcheck "rmmod at the end" rmmod virtio_accel
    kcheck "kernel log clean" kernel_log_clean "$log_start"
    echo accel-kernel-log-begin
    dmesg | tail -n +"$((log_start + 1))" | tail -n 60
    echo accel-kernel-log-end
    kcheck "accelctl bind" accelctl bind
    kill $dog
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
    tenant-killed)
        # The tenant's process killed under a pipeline of 1 MiB deflate jobs
        # (16 in flight, the device slower than the guest: some taken and
        # not completed), once its completions are under way; then under
        # accelctl selftest, once its first check has passed.
        killed_under bench '1/1' 3 \
            bench --ops deflate --sizes 1048576 --depth 16 --seconds 10 --memory 48
        # Then under rounds of fence-chained AES-GCM jobs across every
        # queue on two objects kept for the whole run, once a round passed
        # and while five more are to run: a kill that lands after the last
        # one finds the device idle and the next accelctl resets it before
        # it resumes (one resumption fewer than kills, seen once with three
        # rounds), and cloud-hypervisor v53 does not survive that reset.
        killed_under chain '^round 1: ok' 0 chain --rounds 6 --size 1048576 --seed 13
        killed_under selftest '^ok ' 0 selftest --strict --seed 12
        crc; echo "accel-guest: after a tenant kill: exit $?"
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
    kernel)
        kernel_module "$label"
        crc; echo "accel-guest: after the kernel module: exit $?"
        ;;
    crc)
        crc; echo "accel-guest: $label: exit $?"
        ;;
    reboot)
        kcheck "bound for the reboot" bind_module "$(accel_pci)"
        kcheck "afalg --driver before the reboot" test_program afalg --driver
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
    /// `accel-dmabuf-check` (static), which runs beside the daemon in the
    /// guest that plays the host of `tests/vm_dmabuf.rs`.
    pub dmabuf_check: PathBuf,
}

/// Builds the static `accelctl` for the initramfs, the daemon binary and
/// `accel-dmabuf-check`, in a target directory of their own under `out`
/// (the one of this test run is locked).
pub fn build_binaries(out: &Path) -> GuestBinaries {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target = "x86_64-unknown-linux-gnu";
    let status = Command::new(&cargo)
        .current_dir(workspace())
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .args(["build", "--release", "--locked", "-p", "accelctl"])
        .args(["-p", "vhost-user-accel", "--target", target, "--target-dir"])
        .arg(out.join("build"))
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo: {e}"));
    assert!(status.success(), "cannot build accelctl and the daemon");
    // A build of its own: the two above keep the features they are built
    // with alone.
    let status = Command::new(&cargo)
        .current_dir(workspace())
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .args(["build", "--release", "--locked", "-p", "accel-tests"])
        .args(["--bin", "accel-dmabuf-check"])
        .args(["--target", target, "--target-dir"])
        .arg(out.join("build"))
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo: {e}"));
    assert!(status.success(), "cannot build accel-dmabuf-check");
    let dir = out.join("build").join(target).join("release");
    let binaries = GuestBinaries {
        accelctl: dir.join("accelctl"),
        daemon: dir.join("vhost-user-accel"),
        dmabuf_check: dir.join("accel-dmabuf-check"),
    };
    for binary in [&binaries.accelctl, &binaries.daemon, &binaries.dmabuf_check] {
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

/// What a VM test starts from ([`set_up`]).
#[derive(Debug, Clone)]
pub struct Setup {
    /// The cache of the VM builds ([`cache_dir`]).
    pub cache: PathBuf,
    /// The test's own directory in `target/`, for its logs.
    pub out: PathBuf,
    /// The static binaries, built in `target/vm-test` (one build for every
    /// VM test).
    pub binaries: GuestBinaries,
    /// The patched QEMU (`vmm-config/qemu/build-qemu.sh`).
    pub qemu: String,
}

/// Builds what the VM test `test` needs, with `target/OUT` (made here) for
/// its logs; `None` where this machine cannot build and boot a VM
/// ([`can_run`]), once it said so loudly ([`skip`]).
pub fn set_up(test: &str, out: &str) -> Option<Setup> {
    let cache = cache_dir();
    if let Err(why) = can_run(&cache) {
        skip(test, &why);
        return None;
    }
    let root = workspace();
    let out = root.join("target").join(out);
    std::fs::create_dir_all(&out).unwrap_or_else(|e| panic!("cannot make {}: {e}", out.display()));
    let binaries = build_binaries(&root.join("target/vm-test"));
    let qemu = run_script(&[&root.join("vmm-config/qemu/build-qemu.sh"), &cache])
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("build-qemu.sh printed no QEMU"));
    Some(Setup {
        cache,
        out,
        binaries,
        qemu,
    })
}

/// Builds the guest's kernel and initramfs with `accelctl`, the kernel
/// module `virtio_accel.ko` and its test programs
/// (`vmm-config/guest/build-module.sh`) and [`GUEST_SCRIPT`]
/// (`vmm-config/guest/build-initramfs.sh`); both cache what they fetch from
/// Debian in `cache`. Returns the kernel's and the initramfs's paths.
pub fn build_guest(out: &Path, cache: &Path, accelctl: &Path) -> (String, String) {
    let guest_script = out.join("guest-script.sh");
    std::fs::write(&guest_script, GUEST_SCRIPT)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", guest_script.display()));
    let module = run_script(&[&workspace().join("vmm-config/guest/build-module.sh"), cache]);
    let module = module
        .first()
        .unwrap_or_else(|| panic!("build-module.sh printed no module"));
    let mut boot = run_script(&[
        &workspace().join("vmm-config/guest/build-initramfs.sh"),
        cache,
        accelctl,
        &guest_script,
        Path::new(module),
    ])
    .into_iter();
    match (boot.next(), boot.next()) {
        (Some(kernel), Some(initrd)) => (kernel, initrd),
        _ => panic!("build-initramfs.sh printed no kernel and initramfs"),
    }
}

/// QEMU's options that say where its firmware is (Debian's packages put
/// it there).
pub const QEMU_FIRMWARE: [&str; 4] = ["-L", "/usr/share/qemu", "-L", "/usr/share/seabios"];

/// QEMU's options that boot `kernel` with `initrd`: a quiet kernel, its
/// console on the first serial port, that stops at a panic.
pub fn qemu_boot<'a>(kernel: &'a str, initrd: &'a str) -> [&'a str; 6] {
    [
        "-kernel",
        kernel,
        "-initrd",
        initrd,
        "-append",
        "console=ttyS0 quiet panic=-1",
    ]
}

/// The command of a `qemu` machine for a guest with no device of the
/// project's (a guest that plays a host): q35 under TCG (`-cpu max`) with
/// `cpus` vCPUs and `memory` of RAM, no default devices, no display and its
/// first serial port, the console, on stdio, that boots `kernel` with
/// `initrd` ([`qemu_boot`]) and exits instead of rebooting. The caller adds
/// its other serial ports.
pub fn tcg_machine(qemu: &str, cpus: u32, memory: &str, kernel: &str, initrd: &str) -> Command {
    let mut command = Command::new(qemu);
    command
        .args(QEMU_FIRMWARE)
        .args(["-machine", "q35", "-accel", "tcg,thread=multi"])
        .args(["-cpu", "max", "-smp", &cpus.to_string(), "-m", memory])
        .args(["-nodefaults", "-display", "none", "-serial", "stdio"])
        .arg("-no-reboot")
        .args(qemu_boot(kernel, initrd));
    command
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
        self.try_send(line)
            .unwrap_or_else(|e| panic!("cannot type on {}: {e}", self.log.display()));
    }

    /// Types a line, if the machine still reads its console.
    pub fn try_send(&mut self, line: &str) -> std::io::Result<()> {
        writeln!(self.input, "{line}").and_then(|()| self.input.flush())
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

/// What [`GUEST_SCRIPT`] prints when a step cannot go on (the rest of the
/// line says why): the host's wait for the step's next marker ends there.
const GAVE_UP: &str = "accel-guest: gave up: ";

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

    /// Starts the VMM `command`, called `name` in messages, whose console is
    /// its stdio: its stdout goes to the file `console`, its stderr to the
    /// file `stderr`. Returns the machine, with the ends of those files and
    /// of `logs` for failures, and the console, which types on its stdin.
    pub fn start(
        command: &mut Command,
        name: &str,
        console: &Path,
        stderr: &Path,
        logs: &[&Path],
    ) -> (Self, Console) {
        let create =
            |path: &Path| File::create(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(create(console))
            .stderr(create(stderr))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let input = child
            .stdin
            .take()
            .unwrap_or_else(|| panic!("{name} has no stdin"));
        let files = [console, stderr].into_iter().chain(logs.iter().copied());
        let vm = Vm::new(child, name, files.map(Path::to_path_buf).collect());
        (vm, Console::new(console.to_path_buf(), input))
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
            if console.shows(GAVE_UP) {
                panic!(
                    "no {marker:?}: the guest gave up a step\n{}",
                    self.context()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {marker:?} within {STEP_TIMEOUT:?}\n{}",
                self.context()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for `begin`, then `end`, on `console`, after what was already
    /// seen there; returns what came between them.
    pub fn expect_between(&mut self, console: &mut Console, begin: &str, end: &str) -> String {
        self.expect(console, begin);
        let start = console.seen;
        self.expect(console, end);
        let log = std::fs::read(&console.log).unwrap_or_default();
        let between = log
            .get(start..console.seen.saturating_sub(end.len()))
            .unwrap_or_default();
        String::from_utf8_lossy(between).into_owned()
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
    /// Kills the process of the daemon's tenant (not the daemon, which
    /// supervises it) with SIGKILL, as in a crash of that process alone;
    /// returns once it is gone. The daemon starts it again, and the new
    /// process resumes the device from the record the daemon kept
    /// (spec §11.3). Only [`Step::TenantKilledUnderJobs`] calls it.
    fn kill_tenant(&mut self);
    /// The daemon's metrics endpoint's answer (`--metrics`: the Prometheus
    /// text of every tenant's counters).
    fn daemon_metrics(&mut self) -> String;
}

/// What the guest's checks read of the daemon's counters (summed over its
/// tenants), as [`GUEST_SCRIPT`]'s `counters_rose` takes them: "OK
/// AUTH_FAILED BYTES". The daemon counts requests by status, not by
/// operation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DaemonCounters {
    /// Requests completed with Ok.
    pub ok: u64,
    /// Requests completed with AuthFailed (AES-GCM tags that did not match).
    pub auth_failed: u64,
    /// Buffer bytes of the requests completed with Ok.
    pub bytes: u64,
}

impl DaemonCounters {
    /// Reads them from the Prometheus text of the daemon's metrics endpoint
    /// (`backend/src/stats.rs`); a counter it lacks reads 0.
    pub fn parse(metrics: &str) -> Self {
        let mut counters = DaemonCounters::default();
        for line in metrics.lines().map(str::trim) {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<u64>() else {
                continue;
            };
            let slot = if name.starts_with("vhost_user_accel_bytes_total{") {
                &mut counters.bytes
            } else if !name.starts_with("vhost_user_accel_requests_total{") {
                continue;
            } else if name.contains("status=\"ok\"") {
                &mut counters.ok
            } else if name.contains("status=\"auth_failed\"") {
                &mut counters.auth_failed
            } else {
                continue;
            };
            *slot = slot.saturating_add(value);
        }
        counters
    }
}

impl std::fmt::Display for DaemonCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.ok, self.auth_failed, self.bytes)
    }
}

/// What the guest asks of the host during a step, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostPart {
    /// `accel-guest: restart-daemon`: the daemon killed and started again.
    RestartDaemon,
    /// `accel-guest: counters`: the daemon's counters ([`DaemonCounters`]).
    Counters,
}

impl HostPart {
    /// Waits for the guest's request and answers it.
    fn play(self, host: &mut impl GuestHost) {
        match self {
            HostPart::RestartDaemon => {
                host.expect("accel-guest: restart-daemon");
                host.kill_daemon();
                host.start_daemon();
                host.send("ok");
            }
            HostPart::Counters => {
                host.expect("accel-guest: counters");
                let counters = DaemonCounters::parse(&host.daemon_metrics());
                host.send(&counters.to_string());
            }
        }
    }
}

/// The host's part of the kernel-module step: the counters around `afalg
/// --driver`, around the zswap part (when it runs), around `afalg --driver`
/// after the suspend, then a daemon restart and the new daemon's counters
/// around `afalg --driver`.
fn kernel_host_parts(zswap: bool) -> Vec<HostPart> {
    let counters = [HostPart::Counters; 2];
    let zswap_parts: &[HostPart] = if zswap { &counters } else { &[] };
    [
        &counters[..],
        zswap_parts,
        &counters[..],
        &[HostPart::RestartDaemon],
        &counters[..],
    ]
    .concat()
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
    /// The tenant's process (not the daemon, which supervises it and keeps
    /// the device's record) killed with SIGKILL three times, over
    /// `uio_pci_generic`: under `accelctl bench`, a pipeline of 1 MiB
    /// deflate jobs 16 deep (the device slower than the guest, so that some
    /// are taken and not completed when the process dies), 3 s into it;
    /// then under `accelctl chain`, six rounds of two chains of 64
    /// AES-GCM jobs of 1 MiB across every request queue, each job depending
    /// on the one before, on two objects registered for the whole run, once
    /// its first round has passed; then under `accelctl selftest --strict`,
    /// once its first check has passed. Each time the daemon starts the
    /// process again, the VMM reconnects, and the new process resumes the
    /// device (spec §11.3), so the guest sees only a pause: the bench ends
    /// with every job Ok, every round of the chain passes (every OPEN's tag,
    /// the bytes back, fences as predicted, its objects still valid), the
    /// selftest passes with every check run (its objects and fence checks
    /// after the kill, the fence numbering continued), no request times
    /// out, the driver never reports that the device restarted (it checks
    /// every completion's fence), and the daemon logged that it resumed the
    /// device after each kill, once with the chain's two objects
    /// ([`check_tenant_resumed`], which shows that each kill came while the
    /// device was in use); then a CRC job.
    TenantKilledUnderJobs,
    /// The daemon killed and restarted at once while no driver uses the
    /// device (reset after the last job); then a CRC job.
    IdleRestart,
    /// The daemon killed and restarted at once while a guest job runs; then
    /// a CRC job.
    RestartUnderJob {
        /// Whether the VMM keeps the device's record as its inflight region
        /// and hands it to the new daemon (`SET_INFLIGHT_FD`,
        /// cloud-hypervisor), which resumes the device from it (spec
        /// §11.3.3): the job completes Ok, and the daemon logs that it
        /// resumed the device. Otherwise (QEMU's generic device sends no
        /// inflight messages) the new daemon cannot know what the old one
        /// took, and the job fails (no completion) instead of hanging.
        resumes: bool,
    },
    /// The daemon killed under a job, which times out, and started again
    /// once the job has ended; then a CRC job.
    StopUnderJob,
    /// The guest reboots with the kernel module bound ([`REBOOT_CHECKS`]: the
    /// kernel's shutdown, then a device reset from the machine's side);
    /// then a CRC job in the new boot, with `accelctl` over
    /// `uio_pci_generic`.
    Reboot,
    /// The kernel driver, `virtio_accel.ko`: the device goes from
    /// `uio_pci_generic` back to `virtio-pci`, the module loads and binds
    /// it, its crypto algorithms pass the kernel's self-tests, and
    /// ([`KERNEL_CHECKS`]):
    /// - AF_ALG (`afalg`, by algorithm and by our driver names) gives the
    ///   right results, computed by the daemon: its counters rose by what
    ///   `afalg --driver` must have sent it (Ok requests, the AuthFailed of
    ///   the bad tags, bytes). The daemon counts by status, not by
    ///   operation, so this shows that AES-GCM ran on the device (only the
    ///   device reports AuthFailed) and that the device did the work of
    ///   all three in sum, not each of sha256 and crc32c alone;
    /// - the accel node (`accel_drm`, with a job held by a foreign fence,
    ///   vgem's, until it signals), and `accelctl selftest --strict`
    ///   over the kernel transport (GEM objects, udmabuf dma-bufs,
    ///   sync_files), every check run and passed;
    /// - zswap with the module's deflate, swapping to zram: a program in a
    ///   16 MiB memory cgroup writes 64 MiB and reads every page back;
    ///   zswap stored and loaded pages (`/proc/vmstat`), and the daemon
    ///   completed at least one request for each;
    /// - a system suspend, devices only (`pm_test`): the module's freeze
    ///   and restore run and the device is reset in between; `afalg
    ///   --driver` after it is computed by the daemon;
    /// - the daemon killed and restarted while the module is bound (idle):
    ///   `afalg --driver` right after passes (its first request, which the
    ///   new daemon does not take (spec §11.2), fails over to software when
    ///   the module's watchdog resets the device; where the VMM hands the
    ///   device's record to the new daemon, `resumes`, the device resumes
    ///   instead, §11.3.3, and the request is computed by it), and so does
    ///   the next, computed by the new daemon;
    /// - it unloads (while a process keeps a finished job's sync_file, which
    ///   works after) and loads again, and the kernel logs no oops, warning
    ///   or hung task.
    ///
    /// Then the device goes back to `uio_pci_generic` (`accelctl bind`)
    /// for a CRC job. The counters come from the daemon's metrics endpoint
    /// under both VMMs ([`GuestHost::daemon_metrics`]). The zswap part runs
    /// when `zswap` is set ([`ZSWAP_CHECKS`]).
    KernelModule {
        /// Whether the zswap part runs.
        zswap: bool,
        /// Whether the VMM hands the device's record to the restarted
        /// daemon, which then resumes the device (see
        /// [`Step::RestartUnderJob`]).
        resumes: bool,
    },
}

/// The checks that the kernel-module step must run and pass (its guest
/// function `kernel_module` prints `accel-guest: kernel: LABEL: exit N` for
/// each; every other check it prints must pass as well).
pub const KERNEL_CHECKS: &[&str] = &[
    "to virtio-pci",
    "modprobe",
    "bound",
    "accel node",
    "crypto self-tests",
    "afalg",
    "afalg --driver",
    "afalg computed by the daemon",
    "modprobe vgem",
    "accel_drm",
    "accelctl list: kernel transport",
    "accelctl selftest",
    "suspend (devices)",
    "afalg --driver after suspend",
    "afalg computed by the daemon after suspend",
    "afalg --driver across a daemon restart",
    "afalg --driver after a daemon restart",
    "afalg computed by the daemon after a daemon restart",
    "a sync_file kept",
    "rmmod",
    "the sync_file outlives the module",
    "unbound",
    "modprobe again",
    "bound again",
    "crypto self-tests again",
    "rmmod at the end",
    "kernel log clean",
    "accelctl bind",
];

/// The checks that the reboot step must run and pass before the guest
/// reboots ([`Step::Reboot`]).
pub const REBOOT_CHECKS: &[&str] = &["bound for the reboot", "afalg --driver before the reboot"];

/// The checks of the kernel-module step's zswap part, when it runs
/// ([`Step::KernelModule`]).
pub const ZSWAP_CHECKS: &[&str] = &[
    "swap on zram",
    "zswap compressor",
    "zswap enabled",
    "memory cgroup",
    "swap pressure",
    "zswap stored and loaded",
    "zswap computed by the daemon",
    "zswap released",
];

/// The crypto API algorithms that `virtio_accel` registers (issue 13 item
/// 4), each of which must have passed the kernel's self-test.
pub const KERNEL_ALGORITHMS: &[&str] = &["gcm(aes)", "sha256", "crc32c", "deflate"];

impl Step {
    /// The step's name in [`GUEST_SCRIPT`].
    fn name(self) -> &'static str {
        match self {
            Step::FirstJobs => "first",
            Step::TenantKilledUnderJobs => "tenant-killed",
            Step::IdleRestart => "idle-restart",
            Step::RestartUnderJob { .. } => "restart-under-job",
            Step::StopUnderJob => "stop-under-job",
            Step::Reboot => "reboot",
            Step::KernelModule { .. } => "kernel",
        }
    }

    /// How many times the host's part of the step kills the tenant's
    /// process ([`GuestHost::kill_tenant`]).
    pub const fn tenant_kills(self) -> usize {
        match self {
            Step::TenantKilledUnderJobs => 3,
            _ => 0,
        }
    }

    /// How many times the daemon resumes the device from its record during
    /// the step (spec §11.3): after each kill of the tenant's process, and
    /// after a restart of the daemon while the device is in use (under a
    /// job, or bound to the kernel module) where the VMM hands the record
    /// back.
    pub const fn resumptions(self) -> usize {
        match self {
            Step::RestartUnderJob { resumes: true } | Step::KernelModule { resumes: true, .. } => 1,
            _ => self.tenant_kills(),
        }
    }

    /// Whether any of `steps` kills the tenant's process: a host that cannot
    /// ([`GuestHost::kill_tenant`]) checks its steps with it at compile time.
    pub const fn any_kills_the_tenant(mut steps: &[Step]) -> bool {
        while let [step, rest @ ..] = steps {
            if step.tenant_kills() > 0 {
                return true;
            }
            steps = rest;
        }
        false
    }

    /// Plays the host's part of the step: asks the guest for it, and does
    /// to the daemon what the guest asks for. Returns once the host has done
    /// its part (the guest may still be running the step's last job).
    pub fn run(self, host: &mut impl GuestHost) {
        host.expect("accel-guest: next?");
        match self {
            Step::KernelModule { zswap: true, .. } => host.send("kernel zswap"),
            _ => host.send(self.name()),
        }
        match self {
            Step::FirstJobs => {}
            Step::TenantKilledUnderJobs => {
                for _ in 0..self.tenant_kills() {
                    host.expect("accel-guest: kill-tenant");
                    host.kill_tenant();
                    host.send("ok");
                }
            }
            Step::KernelModule { zswap, .. } => {
                for part in kernel_host_parts(zswap) {
                    part.play(host);
                }
            }
            Step::IdleRestart | Step::RestartUnderJob { .. } => {
                HostPart::RestartDaemon.play(host);
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
            Step::TenantKilledUnderJobs => {
                succeeded("bench across a tenant kill");
                succeeded("chain across a tenant kill");
                succeeded("selftest across a tenant kill");
                check_jobs_across_tenant_kills(log, context);
                succeeded("after a tenant kill");
            }
            Step::IdleRestart => succeeded("after an idle restart"),
            Step::RestartUnderJob { resumes } => {
                if resumes {
                    succeeded("job across a daemon restart");
                } else {
                    timed_out("across a daemon restart");
                }
                succeeded("after a restart under a job");
            }
            Step::StopUnderJob => {
                timed_out("without a daemon");
                succeeded("after the daemon came back");
            }
            Step::Reboot => {
                check_kernel_lines(log, REBOOT_CHECKS, context);
                succeeded("after reboot");
            }
            Step::KernelModule { zswap, .. } => {
                check_kernel_module(log, zswap, context);
                succeeded("after the kernel module");
            }
        }
    }
}

/// What the guest printed of `accelctl bench`, `accelctl chain` and
/// `accelctl selftest` across kills of the tenant's process
/// ([`Step::TenantKilledUnderJobs`]): the selftest ran over
/// `uio_pci_generic`, the bench measured its point (every job Ok), the chain
/// ran rounds past the one before the kill and every round passed, every
/// check of the selftest ran and passed, and no request timed out or saw the
/// device restart (`accel-driver`'s `Error::DeviceRestarted`).
fn check_jobs_across_tenant_kills(log: &str, context: &str) {
    let bench = between(log, "accel-bench-begin", "accel-bench-end", context);
    let chain = between(log, "accel-chain-begin", "accel-chain-end", context);
    let selftest = between(log, "accel-selftest-begin", "accel-selftest-end", context);
    let fail = |what: &str, report: &str, why: &str| {
        format!("{what} across a tenant kill: {why}\n{report}\n{context}")
    };
    // The bench's one point: "deflate  1048576 | DEPTH JOBS/S GB/S".
    let measured = bench.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() == 6 && fields[..3] == ["deflate", "1048576", "|"]
    });
    assert!(measured, "{}", fail("bench", bench, "no measurement"));
    // "chain: R rounds, J jobs, 2 objects of N bytes, 0 failed", R > 1: the
    // kill came after the first round, and the rounds after it passed.
    let rounds = chain
        .lines()
        .find_map(|line| line.strip_prefix("chain: ")?.split_once(" rounds, "))
        .filter(|(_, rest)| rest.ends_with(", 0 failed"))
        .and_then(|(rounds, _)| rounds.parse::<u64>().ok());
    assert!(
        rounds.is_some_and(|rounds| rounds > 1),
        "{}",
        fail("chain", chain, "not several rounds, all passed")
    );
    assert!(
        selftest.contains("transport: virtio-pci through uio_pci_generic"),
        "{}",
        fail("selftest", selftest, "not over uio_pci_generic")
    );
    assert!(
        selftest.contains(", 0 failed, 0 not run,"),
        "{}",
        fail("selftest", selftest, "not every check ran and passed")
    );
    for (what, report) in [("bench", bench), ("chain", chain), ("selftest", selftest)] {
        for sign in ["the device restarted", "no completion within", "FAIL "] {
            assert!(!report.contains(sign), "{}", fail(what, report, sign));
        }
    }
}

/// Checks that the daemon resumed the device once for each kill of the
/// tenant's process by `steps`, and once for a restart of the daemon under a
/// job where the VMM hands the record back ([`Step::resumptions`]), as the
/// tenant logged it in `daemon_log` (the daemon's log): this shows that each
/// kill came while the guest used the device, and that the new process took
/// the device's state over rather than starting afresh. Where `steps` kill it, at least one resumption ran
/// requests again (the kill under [`Step::TenantKilledUnderJobs`]'s bench
/// found jobs taken and not completed, which the bench then saw complete
/// Ok), and one restored at least two objects (the chain's). `context` goes
/// with a failure.
pub fn check_tenant_resumed(daemon_log: &str, steps: &[Step], context: &str) {
    let kills: usize = steps.iter().map(|step| step.tenant_kills()).sum();
    let resumptions: usize = steps.iter().map(|step| step.resumptions()).sum();
    let resumed: Vec<&str> = daemon_log
        .lines()
        .filter(|line| line.contains("resumed the device after a restart of the tenant's process"))
        .collect();
    let refused = daemon_log
        .lines()
        .filter(|line| line.contains("cannot resume the device"))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(
        resumed.len(),
        resumptions,
        "resumptions of the device from its record\n{refused}\n{context}"
    );
    // "..., N requests run again, ..."
    let rerun: u64 = resumed
        .iter()
        .filter_map(|line| count_before(line, " requests run again"))
        .sum();
    assert!(
        kills == 0 || rerun > 0,
        "no request in flight when the tenant's process was killed:\n{}\n{context}",
        resumed.join("\n")
    );
    // "...: N objects, ...": the chain's two objects came through its kill.
    let most_objects = resumed
        .iter()
        .filter_map(|line| count_before(line, " objects, "))
        .max()
        .unwrap_or(0);
    assert!(
        kills == 0 || most_objects >= 2,
        "no resumption kept the chain's objects:\n{}\n{context}",
        resumed.join("\n")
    );
}

/// The number that `line` gives just before `phrase` ("... N phrase").
fn count_before(line: &str, phrase: &str) -> Option<u64> {
    let (before, _) = line.split_once(phrase)?;
    before.rsplit(' ').next()?.parse().ok()
}

/// What `log` holds between the first `begin` and the `end` after it;
/// `context` goes with a failure.
fn between<'a>(log: &'a str, begin: &str, end: &str, context: &str) -> &'a str {
    log.split_once(begin)
        .and_then(|(_, rest)| rest.split_once(end))
        .map(|(inside, _)| inside)
        .unwrap_or_else(|| panic!("nothing between {begin:?} and {end:?}\n{context}"))
}

/// Checks what the kernel-module step printed: every check of
/// [`KERNEL_CHECKS`] ran and passed, so did any other, and each algorithm
/// of [`KERNEL_ALGORITHMS`] passed its self-test.
fn check_kernel_module(log: &str, zswap: bool, context: &str) {
    check_kernel_lines(log, KERNEL_CHECKS, context);
    if zswap {
        check_kernel_lines(log, ZSWAP_CHECKS, context);
    }
    let failed: Vec<&str> = log
        .lines()
        .map(str::trim_end)
        .filter(|l| l.contains("accel-guest: kernel: ") && !l.ends_with(": exit 0"))
        .collect();
    assert!(failed.is_empty(), "{}\n{context}", failed.join("\n"));
    for algorithm in KERNEL_ALGORITHMS {
        let line = lines(
            log,
            &format!("accel-guest: crypto: {algorithm} "),
            0,
            context,
        );
        assert!(line.contains(" passed "), "{line}\n{context}");
    }
}

/// Every check of `labels` printed `accel-guest: kernel: LABEL: exit 0` in
/// `log`.
fn check_kernel_lines(log: &str, labels: &[&str], context: &str) {
    for label in labels {
        let line = lines(
            log,
            &format!("accel-guest: kernel: {label}: exit"),
            0,
            context,
        );
        assert!(line.ends_with("exit 0"), "{line}\n{context}");
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
    check_no_kernel_crash(log, context);
}

/// What the guest kernel prints on the console (even with `quiet`) when it
/// crashes or finds a bug in itself.
const KERNEL_CRASH_MARKERS: &[&str] = &[
    "BUG:",
    "Oops:",
    "Kernel panic",
    "general protection fault",
    "WARNING: CPU:",
];

/// No boot of a guest printed a kernel crash on its console, `log` (in
/// tests/vm.rs, the reboot with the kernel module bound included);
/// `context` goes with a failure.
pub fn check_no_kernel_crash(log: &str, context: &str) {
    let crashes: Vec<&str> = log
        .lines()
        .filter(|line| KERNEL_CRASH_MARKERS.iter().any(|m| line.contains(m)))
        .collect();
    assert!(crashes.is_empty(), "{}\n{context}", crashes.join("\n"));
}

/// The checks of `accel-dmabuf-check`, in the order it runs them: it prints
/// `PASS NAME` or `FAIL NAME: WHY` for each (its module documentation says
/// what each checks), and `tests/vm_dmabuf.rs` wants a `PASS` line for
/// every one.
pub const DMABUF_CHECKS: &[&str] = &[
    "sealed-memory",
    "dmabuf-object",
    "unaligned-fallback",
    "too-big-fallback",
    "unsealed-fallback",
    "vgem-write-fence",
    "vgem-read-fence",
    "vivid-capture",
    "dmabuf-released",
];

/// The checks of `accel-dmabuf-check --vulkan`, against the daemon with the
/// Vulkan engine on a device that imports dma-bufs, in the order it runs
/// them, as [`DMABUF_CHECKS`].
pub const VULKAN_DMABUF_CHECKS: &[&str] = &[
    "vulkan-sealed-memory",
    "vulkan-copy-between-objects",
    "vulkan-fill-object",
    "vulkan-copy-into-object",
    "vulkan-crc32c-of-object",
];

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use vhost_user_accel::stats::{render, TenantStats};
    use virtio_accel_spec::Status;

    use super::{
        check_jobs_across_tenant_kills, check_no_kernel_crash, check_tenant_resumed,
        DaemonCounters, Step,
    };

    /// The chain's lines across a tenant kill: rounds 1 and 2 passed.
    const CHAIN: &str = "chain: seed 13 (replay with --seed 13), transport: virtio-pci \
                         through uio_pci_generic, 64 jobs each way over 2 request queues\n\
                         round 1: ok\nround 2: ok\n\
                         chain: 2 rounds, 256 jobs, 2 objects of 262144 bytes, 0 failed";

    /// What the guest prints of the bench, the chain and the selftest across
    /// tenant kills, `bench` and `check` among their lines.
    fn jobs_report(bench: &str, check: &str, summary: &str) -> String {
        chain_report(bench, CHAIN, check, summary)
    }

    /// [`jobs_report`] with the chain's lines.
    fn chain_report(bench: &str, chain: &str, check: &str, summary: &str) -> String {
        format!(
            "accel-guest: kill-tenant\nok\naccel-bench-begin\n\
             op                  size |  depth       jobs/s       GB/s\n\
             [1/1] deflate 1048576 B          \n{bench}\naccel-bench-end\n\
             accel-guest: bench across a tenant kill: exit 0\n\
             accel-guest: kill-tenant\nok\naccel-chain-begin\n{chain}\naccel-chain-end\n\
             accel-guest: chain across a tenant kill: exit 0\n\
             accel-guest: kill-tenant\nok\naccel-selftest-begin\nselftest: seed 12 (replay \
             with --seed 12), transport: virtio-pci through uio_pci_generic\n\
             ok    copy 0 B\n{check}\n\
             selftest: 66 checks, {summary}, 0 not applicable to the transport, sizes [0]\n\
             accel-selftest-end\naccel-guest: selftest across a tenant kill: exit 0\n"
        )
    }

    /// The bench and the selftest across tenant kills pass the check only
    /// with the bench's point measured, every check run and passed, and
    /// nothing timed out or restarted.
    #[test]
    fn jobs_across_tenant_kills_are_checked() {
        let point = "deflate          1048576 |     16           95      0.100";
        let (check, passed) = ("ok    fill 0 B", "0 failed, 0 not run");
        check_jobs_across_tenant_kills(&jobs_report(point, check, passed), "clean");
        let restarted = "accelctl: virtqueue 1: the device restarted (it reported fence 1 \
                         where 9 was due); reopen it";
        let timed_out = "accelctl: virtqueue 1: no completion within 30s";
        let bad = [
            jobs_report(point, check, "1 failed, 0 not run"),
            jobs_report(point, check, "0 failed, 3 not run (--strict: a failure)"),
            jobs_report(point, "FAIL  fill 0 B: device answered Interrupted", passed),
            jobs_report(point, restarted, passed),
            jobs_report(point, timed_out, passed),
            jobs_report("", check, passed),
            jobs_report(&format!("{point}\n{restarted}"), check, passed),
            jobs_report(&format!("{point}\n{timed_out}"), check, passed),
            jobs_report(point, check, passed).replace("uio_pci_generic", "vfio"),
            jobs_report(point, check, passed).replace("accel-selftest-end", ""),
            jobs_report(point, check, passed).replace("accel-bench-end", ""),
            jobs_report(point, check, passed).replace("accel-chain-end", ""),
            chain_report(point, &CHAIN.replace("2 rounds", "1 rounds"), check, passed),
            chain_report(point, &CHAIN.replace("0 failed", "1 failed"), check, passed),
            chain_report(
                point,
                "accelctl: error: round 2: job 3 answered",
                check,
                passed,
            ),
            chain_report(point, &format!("{CHAIN}\n{restarted}"), check, passed),
        ];
        for log in bad {
            let result = std::panic::catch_unwind(|| check_jobs_across_tenant_kills(&log, "bad"));
            assert!(result.is_err(), "passed:\n{log}");
        }
    }

    /// The daemon must have resumed the device once per tenant kill: fewer
    /// (a kill came while the device was closed, or the new process
    /// started afresh) fail.
    #[test]
    fn a_resumption_per_tenant_kill() {
        let steps = [Step::FirstJobs, Step::TenantKilledUnderJobs, Step::Reboot];
        let resumed = "[INFO  vhost_user_accel::tenant] tenant 0: resumed the device after a \
                       restart of the tenant's process: 0 objects, 1 completions published \
                       again, 2 requests run again, 0 interrupted (§11.3)\n";
        let idle = resumed.replace("2 requests run again", "0 requests run again");
        let objects = idle.replace("0 objects", "2 objects");
        check_tenant_resumed(&format!("{idle}{resumed}{objects}"), &steps, "resumed");
        check_tenant_resumed("", &steps[..1], "no kill");
        let refused = "tenant 0: cannot resume the device after a restart of the tenant's \
                       process, it starts afresh: bad record\n";
        let bad = [
            String::new(),
            resumed.to_string(),
            format!("{resumed}{refused}"),
            idle.repeat(3),
            resumed.repeat(3),
            format!("{idle}{idle}{objects}"),
            resumed.repeat(4),
        ];
        for log in &bad {
            let result = std::panic::catch_unwind(|| check_tenant_resumed(log, &steps, "none"));
            assert!(result.is_err(), "passed: {log:?}");
        }
    }

    /// Which steps kill the tenant's process, as a const fn sees them.
    #[test]
    fn steps_that_kill_the_tenant() {
        const {
            assert!(!Step::any_kills_the_tenant(&[]));
            assert!(!Step::any_kills_the_tenant(&[
                Step::FirstJobs,
                Step::Reboot
            ]));
            assert!(Step::any_kills_the_tenant(&[
                Step::FirstJobs,
                Step::TenantKilledUnderJobs
            ]));
        }
        let runtime: fn(&[Step]) -> bool = Step::any_kills_the_tenant;
        assert!(runtime(&[Step::Reboot, Step::TenantKilledUnderJobs]));
        assert!(!runtime(&[Step::IdleRestart, Step::StopUnderJob]));
        assert!(!runtime(&[Step::RestartUnderJob { resumes: true }]));
        assert_eq!(Step::RestartUnderJob { resumes: true }.resumptions(), 1);
        assert_eq!(Step::RestartUnderJob { resumes: false }.resumptions(), 0);
        assert_eq!(Step::TenantKilledUnderJobs.resumptions(), 3);
        let kernel = |resumes| Step::KernelModule {
            zswap: false,
            resumes,
        };
        assert_eq!(kernel(true).resumptions(), 1);
        assert_eq!(kernel(false).resumptions(), 0);
    }

    /// A console with an oops fails the check; one without passes.
    #[test]
    fn kernel_crash_on_the_console_fails() {
        let clean = "accel-guest: up\naccel-guest: kernel: rmmod: exit 0\n";
        check_no_kernel_crash(clean, "clean");
        let oops = format!(
            "{clean}[   12.3] Oops: general protection fault, probably for non-canonical address\n"
        );
        let result = std::panic::catch_unwind(|| check_no_kernel_crash(&oops, "oops"));
        assert!(result.is_err());
    }

    /// The counters read from what the daemon's metrics endpoint renders,
    /// summed over tenants, other statuses aside.
    #[test]
    fn daemon_counters_parse_the_daemons_metrics() {
        let tenants = [
            Arc::new(TenantStats::new("a")),
            Arc::new(TenantStats::new("b")),
        ];
        let latency = Duration::from_micros(5);
        tenants[0].request_done(Status::Ok, 100, latency);
        tenants[1].request_done(Status::Ok, 20, latency);
        tenants[1].request_done(Status::AuthFailed, 7, latency);
        tenants[1].request_done(Status::Invalid, 9, latency);
        let counters = DaemonCounters::parse(&render(&tenants));
        let expected = DaemonCounters {
            ok: 2,
            auth_failed: 1,
            bytes: 120,
        };
        assert_eq!(counters, expected);
        assert_eq!(counters.to_string(), "2 1 120");
    }
}
