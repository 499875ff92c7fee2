// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
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
            "--queues: must be between 1 and 63, got 0",
        ),
        (
            &["--socket-path", "/tmp/x", "--queue-size", "300"],
            2,
            "--queue-size: must be a power of two",
        ),
        (
            &["--socket-path", "/tmp/x", "--engine-threads", "0"],
            2,
            "--engine-threads: must be between 1 and 256",
        ),
        (
            &["--socket-path", "/tmp/x", "--engine", "gpu"],
            2,
            "invalid value 'gpu'",
        ),
        (
            // Refused at start-up whether or not the host has a Vulkan
            // loader and devices.
            &[
                "--socket-path",
                "/tmp/x",
                "--engine",
                "vulkan",
                "--vulkan-device",
                "no-such-device",
            ],
            2,
            "cannot start the Vulkan engine",
        ),
        (
            &["--socket-fd", "987"],
            2,
            "--socket-fd: 987 is not an open socket",
        ),
        (
            &["--socket-path", "/tmp/x", "--socket-path", "/tmp/x"],
            2,
            "socket /tmp/x is used by two tenants",
        ),
        (
            &["--socket-path", "/tmp/x", "--socket-count", "2"],
            2,
            "--socket-count: needs a socket path with a {} placeholder",
        ),
        (
            &["--socket-path", "/tmp/x", "--metrics", "0.0.0.0:9105"],
            2,
            "--metrics: must be a loopback HOST:PORT",
        ),
        (
            &["--config", "/nonexistent/accel.toml"],
            2,
            "cannot read /nonexistent/accel.toml: No such file",
        ),
        (
            &["--config", "/x.toml", "--queues", "2"],
            2,
            "cannot be used with",
        ),
        (
            &["--socket-path", "/nonexistent-dir/accel.sock"],
            1,
            "tenant 0: cannot listen on the vhost-user socket /nonexistent-dir/accel.sock",
        ),
    ];
    for (args, code, needle) in cases {
        assert_rejected(args, *code, needle);
    }
}

#[test]
fn a_bad_configuration_file_is_refused_with_its_line() {
    let path = std::env::temp_dir().join(format!("accel-cli-{}-bad.toml", std::process::id()));
    std::fs::write(
        &path,
        "engine-threads = 1\n\n[[tenant]]\nname = \"vm1\"\nsocket = \"/tmp/vm1.sock\"\nqueues = 99\n",
    )
    .unwrap();
    let expected = format!(
        "{}:6: tenant \"vm1\".queues: must be between 1 and 63, got 99",
        path.display()
    );
    assert_rejected(&["--config", path.to_str().unwrap()], 2, &expected);
    std::fs::write(&path, "[[tenant]]\nname = \"vm1\"\nsockett = \"/tmp/x\"\n").unwrap();
    assert_rejected(&["--config", path.to_str().unwrap()], 2, "line 3");
    let _ = std::fs::remove_file(&path);
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

/// GET /metrics over a unix socket, retried until the daemon listens.
fn scrape(socket: &Path) -> String {
    use std::io::{Read, Write};
    for _ in 0..200 {
        if let Ok(mut stream) = std::os::unix::net::UnixStream::connect(socket) {
            stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
            let mut reply = String::new();
            stream.read_to_string(&mut reply).unwrap();
            return reply;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("no metrics endpoint at {}", socket.display());
}

#[test]
fn a_configuration_file_serves_named_tenants_with_metrics_and_a_report_at_exit() {
    let (vm1, vm2, metrics) = (
        socket_path("vm1"),
        socket_path("vm2"),
        socket_path("metrics"),
    );
    let path = std::env::temp_dir().join(format!("accel-cli-{}-two.toml", std::process::id()));
    let text = format!(
        "engine-threads = 1\nmetrics = \"unix:{}\"\n\n\
         [[tenant]]\nname = \"vm1\"\nsocket = \"{}\"\nweight = 2\n\n\
         [[tenant]]\nname = \"vm2\"\nsocket = \"{}\"\nqueues = 1\n\
         quota = {{ inflight = 8 }}\n",
        metrics.display(),
        vm1.display(),
        vm2.display()
    );
    std::fs::write(&path, text).unwrap();
    let child = Command::new(DAEMON)
        .args(["--config", path.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let daemon = Running(child);
    // Both tenants at once, each on its own socket.
    std::thread::scope(|scope| {
        scope.spawn(|| crc_through(&vm1));
        scope.spawn(|| crc_through(&vm2));
    });
    crc_through(&vm2);
    let expected = [
        "vhost_user_accel_requests_total{tenant=\"vm1\",status=\"ok\"} 1",
        "vhost_user_accel_requests_total{tenant=\"vm2\",status=\"ok\"} 2",
        "vhost_user_accel_connections_total{tenant=\"vm2\"} 2",
        "vhost_user_accel_bytes_total{tenant=\"vm1\"} 9",
    ];
    // A tenant counts its connection as it starts serving it: poll a while.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let reply = scrape(&metrics);
        let missing = expected
            .iter()
            .find(|line| !reply.lines().any(|l| l == **line));
        match missing {
            None => break,
            Some(line) if std::time::Instant::now() > deadline => {
                panic!("no {line:?} in {reply}")
            }
            Some(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
    // SIGTERM: a report of each tenant, the sockets removed, exit status 0.
    let mut daemon = daemon;
    let child = &mut daemon.0;
    // SAFETY: sends a signal to the child this test started and still owns.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("tenant vm1: 1 connections, 0 process restarts, 1 requests (1 ok"),
        "{stderr}"
    );
    assert!(
        stderr.contains("tenant vm2: 2 connections, 0 process restarts, 2 requests (2 ok"),
        "{stderr}"
    );
    assert!(!vm1.exists() && !vm2.exists(), "sockets left behind");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn socket_count_serves_every_socket_of_the_pattern() {
    let pattern = socket_path("count-{}");
    let _daemon = Running(
        Command::new(DAEMON)
            .args([
                "--socket-path",
                pattern.to_str().unwrap(),
                "--socket-count",
                "3",
            ])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    for index in 0..3 {
        let socket = pattern.to_str().unwrap().replace("{}", &index.to_string());
        crc_through(Path::new(&socket));
    }
}

#[test]
fn a_vmm_that_reconnects_in_a_loop_cannot_flood_the_log() {
    const CONNECTIONS: usize = 300;
    let socket = socket_path("flood");
    let mut daemon = Running(
        Command::new(DAEMON)
            .args(["--socket-path", socket.to_str().unwrap()])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let started = std::time::Instant::now();
    let mut connected = 0;
    while connected < CONNECTIONS {
        match std::os::unix::net::UnixStream::connect(&socket) {
            Ok(stream) => {
                drop(stream);
                connected += 1;
            }
            Err(_) if started.elapsed() < std::time::Duration::from_secs(10) => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!("cannot connect to {}: {e}", socket.display()),
        }
    }
    // Served after every connection above (the tenant takes them in order),
    // in a window of the limiter of its own, whose first line reports how
    // many the flood had suppressed.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    crc_through(&socket);
    let elapsed = started.elapsed();
    let child = &mut daemon.0;
    // SAFETY: sends a signal to the child this test started and still owns.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains(&format!("tenant 0: {} connections", CONNECTIONS + 1)),
        "{stderr}"
    );
    let lines = stderr
        .lines()
        .filter(|line| line.contains("VMM connected") || line.contains("VMM disconnected"))
        .count();
    // Ten lines per second of the VMM's doing, and a count of the rest.
    let allowed = 10 * (usize::try_from(elapsed.as_secs()).unwrap() + 2);
    assert!(
        lines <= allowed,
        "{lines} connection lines in {elapsed:?} (at most {allowed}):\n{stderr}"
    );
    assert!(stderr.contains("VMM messages suppressed"), "{stderr}");
}
