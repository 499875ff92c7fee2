// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Guest objects as host dma-bufs (issue 17), where a host has what they
//! need: udmabuf, sync_file, and two independent drivers that take
//! dma-bufs, vgem (DRM) and vivid (V4L2). The machines this project is
//! tested on have none of them, so a QEMU TCG guest plays the host: its
//! kernel is the VM tests' Debian 6.12 (`vmm-config/guest/kernel.sh`:
//! udmabuf and sync_file built in, vgem and vivid as modules), and its
//! init (`vmm-config/guest/dmabuf-host-init.sh`, initramfs by
//! `build-dmabuf-host.sh`) loads vgem and vivid, starts the daemon binary
//! with a metrics endpoint and runs `accel-dmabuf-check`
//! (`tests/src/bin/accel-dmabuf-check.rs`) against it as root. That
//! program plays the VMM, with guest RAM in a memfd sealed as QEMU seals
//! it, and prints `PASS NAME` or `FAIL NAME: WHY` for each of
//! `vm::DMABUF_CHECKS`: the daemon holds an object over page-aligned
//! memory as a udmabuf (its metrics and the tenant's process's descriptors
//! say so), falls back for unaligned memory, an object over udmabuf's size
//! limit and a second tenant's unsealed memory (each counted), waits for vgem's
//! fences on an object's dma-buf (implicit sync, both ways), lets vivid
//! capture a frame straight into an object that the daemon then reads, and
//! releases the dma-buf with the object. The init then starts the daemon
//! again (its usual, dynamic build: the Vulkan loader is loaded at run
//! time) with `--engine vulkan` on lavapipe from bookworm-backports' Mesa,
//! which imports dma-bufs, and runs `accel-dmabuf-check --vulkan`
//! (`vm::VULKAN_DMABUF_CHECKS`): COPY and FILL over objects go through the
//! objects' dma-bufs, imported into the Vulkan device, with the right bytes.
//!
//! This test wants a `PASS` line for every check of both runs, no `FAIL`
//! line, both runs' exit status 0 and no kernel crash on the console. The console
//! and the daemon's log are kept in `target/vm-test-dmabuf/`. Like the other
//! VM tests it needs root on Debian the first time (the builds), skips
//! loudly where it cannot build the VM, and fails instead with
//! `ACCEL_VM_REQUIRED=1`. About a minute once built.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use accel_tests::harness::daemon_binary;
use accel_tests::vm::{self, Vm, DMABUF_CHECKS, VULKAN_DMABUF_CHECKS};

/// What the guest's init prints last: `accel-dmabuf-check`'s exit status
/// follows.
const CHECK_EXIT: &str = "dmabuf-host: check exit ";

#[test]
fn guest_objects_are_host_dmabufs_for_vgem_and_vivid() {
    let Some(setup) = vm::set_up("vm_dmabuf", "vm-test-dmabuf") else {
        return;
    };
    let vulkan_daemon = daemon_binary().unwrap_or_else(|e| panic!("{e}"));
    let boot = vm::run_script(&[
        &vm::workspace().join("vmm-config/guest/build-dmabuf-host.sh"),
        &setup.cache,
        &setup.binaries.daemon,
        &setup.binaries.dmabuf_check,
        &vulkan_daemon,
    ]);
    let [kernel, initrd] = &boot[..] else {
        panic!("build-dmabuf-host.sh printed no kernel and initramfs: {boot:?}");
    };

    let out = &setup.out;
    let daemon_log = out.join("daemon.log");
    let (mut guest, mut console) = Vm::start(
        vm::tcg_machine(&setup.qemu, 2, "1G", kernel, initrd)
            .arg("-serial")
            .arg(format!("file:{}", daemon_log.display())),
        "qemu (dma-buf host)",
        &out.join("console.log"),
        &out.join("qemu.stderr"),
        &[&daemon_log],
    );
    guest.expect(&mut console, CHECK_EXIT);
    guest.wait_exit();
    check_console(&console.text(), &guest.context());
}

/// Checks what the guest printed: a `PASS` line for every check of
/// [`DMABUF_CHECKS`], no `FAIL` line, `accel-dmabuf-check`'s exit status 0
/// and no kernel crash; `context` goes with a failure.
fn check_console(log: &str, context: &str) {
    let lines: Vec<&str> = log.lines().map(str::trim).collect();
    let failed: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|line| line.starts_with("FAIL "))
        .collect();
    let missing: Vec<&str> = DMABUF_CHECKS
        .iter()
        .chain(VULKAN_DMABUF_CHECKS)
        .copied()
        .filter(|name| !lines.contains(&format!("PASS {name}").as_str()))
        .collect();
    assert!(
        failed.is_empty() && missing.is_empty(),
        "failed: {failed:#?}\nnot passed: {missing:?}\n{context}"
    );
    let status = lines
        .iter()
        .find_map(|line| line.strip_prefix(CHECK_EXIT))
        .unwrap_or_else(|| panic!("no {CHECK_EXIT:?} line\n{context}"));
    assert_eq!(status, "0", "accel-dmabuf-check's exit status\n{context}");
    vm::check_no_kernel_crash(log, context);
}

/// The console check passes only with every check passed, none failed,
/// exit status 0 and no crash.
#[test]
fn console_check_wants_every_pass() {
    let passes: String = DMABUF_CHECKS
        .iter()
        .chain(VULKAN_DMABUF_CHECKS)
        .map(|name| format!("PASS {name}\r\n"))
        .collect();
    let good = format!("dmabuf-host: up\r\n{passes}{CHECK_EXIT}0\r\n");
    check_console(&good, "good");
    let first = DMABUF_CHECKS[0];
    let bad = [
        good.replace(&format!("PASS {first}\r\n"), ""),
        good.replace(&format!("PASS {first}"), &format!("FAIL {first}: why")),
        format!("FAIL vivid-capture: no vivid\r\n{good}"),
        good.replace(&format!("{CHECK_EXIT}0"), &format!("{CHECK_EXIT}1")),
        good.replace(CHECK_EXIT, "dmabuf-host: "),
        format!("{good}[   12.3] Oops: general protection fault\r\n"),
        good.replace(&format!("PASS {first}"), &format!("PASS {first}-not")),
        good.replace(&format!("PASS {}\r\n", VULKAN_DMABUF_CHECKS[1]), ""),
    ];
    for log in bad {
        let result = std::panic::catch_unwind(|| check_console(&log, "bad"));
        assert!(result.is_err(), "passed:\n{log}");
    }
}
