//! End to end in a real VM (opt-in for now: `ACCEL_VM_TEST=1`): builds the
//! patched QEMU and a guest initramfs with the static `accelctl`
//! (`vmm-config/`), starts the daemon in this process, boots the guest under
//! TCG, and checks what the guest reports: `accelctl selftest` passes, and a
//! file the guest compresses through the device decodes, on the host, to the
//! bytes the host expects. The console is kept in the cache directory.
//!
//! Needs root on Debian bookworm (the build scripts install packages) and a
//! static accelctl at `target/x86_64-unknown-linux-gnu/release/accelctl`
//! (README, "The guest side"). `ACCEL_VM_CACHE` sets the cache directory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use accel_tests::harness::Daemon;
use accel_tests::reference;
use virtio_accel_spec::DeflateFormat;

/// What the guest runs after `accelctl bind`: the self-test, then a gzip of
/// deterministic text through the device, printed in base64 between markers.
const GUEST_SCRIPT: &str = "#!/bin/sh
accelctl selftest --seed 11 || exit 1
seq 1 20000 > /tmp/in
accelctl run deflate --level 6 --in /tmp/in --out /tmp/in.gz || exit 1
accelctl run crc32c --in /tmp/in
echo accel-gz-begin
base64 /tmp/in.gz
echo accel-gz-end
";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn cache_dir() -> PathBuf {
    std::env::var_os("ACCEL_VM_CACHE").map_or_else(
        || std::env::temp_dir().join("vhost-user-accel-vm-cache"),
        PathBuf::from,
    )
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

#[test]
fn guest_selftest_and_compression_through_the_device() {
    if std::env::var("ACCEL_VM_TEST").as_deref() != Ok("1") {
        eprintln!("vm test skipped: set ACCEL_VM_TEST=1 to boot a guest (needs root, ~10 min the first time)");
        return;
    }
    let root = workspace();
    let cache = cache_dir();
    let accelctl = root.join("target/x86_64-unknown-linux-gnu/release/accelctl");
    assert!(
        accelctl.exists(),
        "build the static accelctl first (README)"
    );
    let qemu = script(&[&root.join("vmm-config/qemu/build-qemu.sh"), &cache]);
    let guest_script = cache.join("vm-test-script.sh");
    std::fs::write(&guest_script, GUEST_SCRIPT).unwrap();
    let boot = script(&[
        &root.join("vmm-config/guest/build-initramfs.sh"),
        &cache,
        &accelctl,
        &guest_script,
    ]);

    let daemon = Daemon::start_with(|config| config.request_queues = 2);
    let console = cache.join("vm-test-console.log");
    let status = Command::new("timeout")
        .arg("900")
        .arg(&qemu[0])
        .args(["-L", "/usr/share/qemu", "-L", "/usr/share/seabios"])
        .args(["-machine", "q35,memory-backend=mem", "-accel", "tcg,thread=multi"])
        .args(["-cpu", "max", "-smp", "2", "-m", "1G"])
        .args(["-object", "memory-backend-memfd,id=mem,size=1G,share=on"])
        .arg("-chardev")
        .arg(format!("socket,id=accel0,path={}", daemon.socket().display()))
        .args(["-device", "vhost-user-device-pci,chardev=accel0,virtio-id=63,num_vqs=3,vq_size=256,config_size=40"])
        .args(["-nic", "none", "-nographic", "-no-reboot"])
        .args(["-kernel", &boot[0], "-initrd", &boot[1]])
        .args(["-append", "console=ttyS0 quiet panic=-1"])
        .stdout(std::fs::File::create(&console).unwrap())
        .stderr(std::process::Stdio::inherit())
        .status()
        .unwrap();
    let log = String::from_utf8_lossy(&std::fs::read(&console).unwrap()).into_owned();
    let context = || format!("console ({}):\n{log}", console.display());
    assert!(status.success(), "qemu: {status}; {}", context());
    assert!(
        log.contains("accel-guest: exit 0"),
        "guest failed; {}",
        context()
    );
    assert!(log.contains(", 0 failed,"), "selftest; {}", context());

    // The host's own idea of the guest's file, and of its CRC-32C.
    let text: String = (1..=20000).map(|i| format!("{i}\n")).collect();
    let crc = format!("{:08x}", reference::crc32c(0, text.as_bytes()));
    assert!(
        log.contains(&crc),
        "guest CRC-32C differs from {crc}; {}",
        context()
    );
    let begin = log.find("accel-gz-begin").unwrap() + "accel-gz-begin".len();
    let end = log.find("accel-gz-end").unwrap();
    let packed = decode_base64(&log[begin..end]);
    let decoded = reference::decompress(DeflateFormat::Gzip, &packed).unwrap();
    assert!(
        decoded == text.as_bytes(),
        "guest gzip decodes to other data"
    );
}
