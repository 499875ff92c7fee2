//! The daemon binary as a VMM sees it: command-line errors give a message and
//! a non-zero exit; a running daemon serves a driver over its socket, keeps
//! listening across disconnects, and accepts an inherited listening socket.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use accel_driver::{Buffer, Device, DmaMemory, Request, VhostUserTransport, DEFAULT_FEATURES};
use virtio_accel_spec::Op;

const DAEMON: &str = env!("CARGO_BIN_EXE_vhost-user-accel");

fn run(args: &[&str]) -> Output {
    Command::new(DAEMON)
        .args(args)
        .output()
        .expect("daemon binary runs")
}

fn assert_rejected(args: &[&str], code: i32, needle: &str) {
    let output = run(args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "{args:?}: {stderr}");
    assert!(
        stderr.contains(needle),
        "{args:?}: stderr lacks {needle:?}: {stderr}"
    );
}

#[test]
fn bad_command_lines_are_refused_with_a_message() {
    let cases: &[(&[&str], i32, &str)] = &[
        (&[], 2, "--socket-path"),
        (
            &["--socket-path", "/tmp/x", "--queues", "0"],
            2,
            "--queues must be between 1 and 63",
        ),
        (
            &["--socket-path", "/tmp/x", "--queue-size", "300"],
            2,
            "power of two",
        ),
        (
            &["--socket-path", "/tmp/x", "--engine-threads", "0"],
            2,
            "--engine-threads",
        ),
        (
            &["--socket-path", "/tmp/x", "--engine", "gpu"],
            2,
            "invalid value 'gpu'",
        ),
        (
            &["--socket-fd", "987"],
            2,
            "--socket-fd 987 is not an open socket",
        ),
        (
            &["--socket-path", "/nonexistent-dir/accel.sock"],
            1,
            "cannot listen",
        ),
    ];
    for (args, code, needle) in cases {
        assert_rejected(args, *code, needle);
    }
}

/// The daemon process, killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn socket_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "vhost-user-accel-cli-{}-{name}.sock",
        std::process::id()
    ))
}

/// Connects as a VM would and checks a CRC32C job end to end.
fn crc_through(socket: &Path) {
    let memory = DmaMemory::new(4 << 20).unwrap();
    let transport = VhostUserTransport::connect(socket, &memory).unwrap();
    let device = Device::open(transport, DEFAULT_FEATURES).unwrap();
    let data = memory.alloc(9).unwrap();
    memory.write(&data, 0, b"123456789").unwrap();
    let completion = device
        .run(0, &Request::new(Op::Crc32c).input(Buffer::direct(&data)))
        .unwrap()
        .check()
        .unwrap();
    assert_eq!(completion.result_u32(), 0xe306_9283);
    device.into_transport().disconnect();
}

#[test]
fn serves_a_driver_and_keeps_listening_after_a_disconnect() {
    let socket = socket_path("path");
    let _daemon = Running(
        Command::new(DAEMON)
            .args(["--socket-path", socket.to_str().unwrap(), "--queues", "3"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    for _ in 0..3 {
        crc_through(&socket);
    }
}

#[test]
fn accepts_an_inherited_listening_socket() {
    let socket = socket_path("fd");
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).unwrap();
    let fd = listener.as_raw_fd();
    // SAFETY: clearing FD_CLOEXEC on a descriptor this test owns, so that the
    // child inherits it as a parent such as systemd would pass it.
    let cleared = unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    assert_eq!(cleared, 0);
    let _daemon = Running(
        Command::new(DAEMON)
            .args(["--socket-fd", &fd.to_string()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    drop(listener);
    crc_through(&socket);
    let _ = std::fs::remove_file(&socket);
}
