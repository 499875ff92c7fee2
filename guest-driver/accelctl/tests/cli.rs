// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The `accelctl` binary against the daemon on a real socket: output, files
//! that standard tools accept, exit statuses and error messages.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use vhost_user_accel::{Config, Server, SocketSource};

/// Starts a daemon with two request queues on a fresh socket in `dir`.
fn daemon(dir: &Path) -> PathBuf {
    let socket = dir.join("accel.sock");
    let config = Config::new(SocketSource::Path(socket.clone()));
    let server = Server::bind(config).unwrap();
    std::thread::spawn(move || server.serve_forever());
    socket
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("accelctl-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn accelctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_accelctl"))
        .args(args)
        .output()
        .unwrap()
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn list_selftest_and_run_over_vhost_user() {
    let dir = scratch_dir("ok");
    let socket = daemon(&dir);
    let sock = socket.to_str().unwrap();

    let listed = accelctl(&["--vhost-user", sock, "list"]);
    let (out, err) = text(&listed);
    assert!(listed.status.success(), "{err}");
    assert!(out.contains("request queues:  2"), "{out}");
    assert!(
        out.contains("operations:      copy fill compare crc32c sha256"),
        "{out}"
    );

    let checked = accelctl(&["--vhost-user", sock, "selftest", "--seed", "5"]);
    let (out, err) = text(&checked);
    assert!(checked.status.success(), "{out}{err}");
    assert!(out.contains("checks, 0 failed"), "{out}");

    // A file that gzip itself decodes.
    let log: String = (0..20_000)
        .map(|i| format!("line {i}: queue fence object\n"))
        .collect();
    let (plain, packed) = (dir.join("big.log"), dir.join("big.log.gz"));
    std::fs::write(&plain, &log).unwrap();
    let deflated = accelctl(&[
        "--vhost-user",
        sock,
        "run",
        "deflate",
        "--level",
        "6",
        "--in",
        plain.to_str().unwrap(),
        "--out",
        packed.to_str().unwrap(),
    ]);
    assert!(deflated.status.success(), "{}", text(&deflated).1);
    let gunzip = Command::new("gzip")
        .args(["-dc", packed.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(gunzip.status.success());
    assert!(gunzip.stdout == log.as_bytes(), "gzip -d gives other data");

    let nine = dir.join("nine");
    std::fs::write(&nine, b"123456789").unwrap();
    let crc = accelctl(&[
        "--vhost-user",
        sock,
        "run",
        "crc32c",
        "--in",
        nine.to_str().unwrap(),
    ]);
    assert_eq!(text(&crc).0, "e3069283\n");

    let differ = accelctl(&[
        "--vhost-user",
        sock,
        "run",
        "compare",
        "--in",
        nine.to_str().unwrap(),
        "--in",
        plain.to_str().unwrap(),
    ]);
    assert_eq!(differ.status.code(), Some(1), "compare of different files");
    assert_eq!(text(&differ).0, "differ at byte 0\n");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_input_gives_a_message_and_a_failing_status() {
    let dir = scratch_dir("bad");
    let missing = dir.join("no-such.sock");
    let cases: &[(&[&str], i32, &str)] = &[
        (&["list"], 1, "no virtio-accel PCI device"),
        (
            &["--vhost-user", "x", "--pci", "0000:00:04.0", "list"],
            2,
            "cannot be used with",
        ),
        (
            &["--vhost-user", missing.to_str().unwrap(), "list"],
            1,
            "cannot connect",
        ),
        (
            &["--vhost-user", "x", "run", "aes-gcm-seal", "--in", "f"],
            1,
            "aes-gcm-seal needs --key",
        ),
        (
            &[
                "--vhost-user",
                "x",
                "run",
                "aes-gcm-seal",
                "--key",
                "00",
                "--iv",
                "00",
            ],
            1,
            "--key must be 32 bytes",
        ),
        (
            &["--vhost-user", "x", "run", "frobnicate"],
            2,
            "invalid value",
        ),
        (
            &[
                "--vhost-user",
                "x",
                "run",
                "sha256",
                "--in",
                "/nonexistent/file",
            ],
            1,
            "cannot read /nonexistent/file",
        ),
    ];
    for (args, code, message) in cases {
        let output = accelctl(args);
        let (_, err) = text(&output);
        assert_eq!(output.status.code(), Some(*code), "{args:?}: {err}");
        assert!(err.contains(message), "{args:?}: {err}");
    }
    let _ = std::fs::remove_dir_all(dir);
}
