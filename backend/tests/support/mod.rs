// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The test harness of the daemon as its supervisor: a `vhost-user-accel`
//! process started on a configuration file with tenants `t0`, `t1`…, their
//! processes found and killed, its log and metrics read. Shared by
//! `processes.rs`, `kills.rs`, `record.rs` and `inflight.rs`.

// Each test file uses only some of the helpers.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use accel_driver::{Buffer, Completion, Device, DmaBuf, Request, VhostUserTransport};
use sha2::Digest;
use vhost_user_accel::tenant_process::POISON_BYTES;
use virtio_accel_spec::{Fence, FillParams, Op, Status};

/// The daemon's binary, built for the tests.
pub const DAEMON: &str = env!("CARGO_BIN_EXE_vhost-user-accel");

/// How long a test waits for the daemon to do what it must do soon (start
/// a process, serve again): generous, for a loaded machine.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// What the supervisor logs of a tenant's process that ended by SIGABRT.
pub const ABORTED: &str = "was killed by SIGABRT (6)";

/// A supervisor with tenants `t0`, `t1`… on sockets in a directory of its own.
pub struct Supervisor {
    /// The supervisor's process.
    pub child: Child,
    /// Its directory: configuration, sockets, metrics socket and log.
    pub dir: PathBuf,
    /// Its standard error.
    pub log: PathBuf,
    /// Its environment on top of the test's, again at every restart.
    env: Vec<(String, String)>,
}

/// What a test's daemon gets besides its tenants' names and sockets.
#[derive(Default)]
pub struct Setup<'a> {
    /// TOML at the top of the configuration file.
    pub settings: &'a str,
    /// TOML in every `[[tenant]]` table.
    pub tenant_settings: &'a str,
    /// The daemon's environment on top of the test's.
    pub env: &'a [(&'a str, &'a str)],
}

impl Supervisor {
    /// A supervisor with default tenants `t0`, `t1`…
    pub fn start(test: &str, tenants: usize) -> Supervisor {
        Supervisor::start_with(test, tenants, Setup::default())
    }

    /// A supervisor of one tenant, `t0`, whose processes end by SIGABRT on
    /// a request of [`POISON_BYTES`] (fault injection `poison`, which needs
    /// the `fault-injection` feature): see [`submit_poison`].
    pub fn start_poisoned(test: &str) -> Supervisor {
        Supervisor::start_with(
            test,
            1,
            Setup {
                env: &[("VHOST_USER_ACCEL_FAULT", "poison")],
                ..Setup::default()
            },
        )
    }

    /// How many tenants' processes ended by SIGABRT.
    pub fn aborted(&self) -> usize {
        self.log().matches(ABORTED).count()
    }

    /// Waits until more than `before` tenants' processes ended by SIGABRT;
    /// `context` says which in a failure.
    pub fn wait_for_aborted(&self, before: usize, context: &str) {
        let deadline = Instant::now() + PATIENCE;
        while self.aborted() <= before {
            assert!(
                Instant::now() < deadline,
                "{context}: no more than {before} processes ended by SIGABRT:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A supervisor with tenants `t0`, `t1`… configured with `setup`.
    pub fn start_with(test: &str, tenants: usize, setup: Setup) -> Supervisor {
        let dir = std::env::temp_dir().join(format!(
            "vhost-user-accel-processes-{}-{test}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let names: Vec<String> = (0..tenants).map(|index| format!("t{index}")).collect();
        let tenant_tables: Vec<(&str, &str)> = names
            .iter()
            .map(|name| (name.as_str(), setup.tenant_settings))
            .collect();
        write_config(&dir, setup.settings, &tenant_tables);
        let log = dir.join("daemon.log");
        let env: Vec<(String, String)> = setup
            .env
            .iter()
            .map(|&(key, value)| (key.to_owned(), value.to_owned()))
            .collect();
        let child = Supervisor::spawn(&dir, &log, &env);
        let supervisor = Supervisor {
            child,
            dir,
            log,
            env,
        };
        for index in 0..tenants {
            supervisor.tenant_pid(&format!("t{index}"));
        }
        supervisor
    }

    /// Sends `signal` to the supervisor's process.
    pub fn signal(&self, signal: libc::c_int) {
        kill(self.child.id(), signal);
    }

    /// The daemon on the configuration file in `dir`, logging to `log`
    /// (appended to).
    fn spawn(dir: &std::path::Path, log: &std::path::Path, env: &[(String, String)]) -> Child {
        let config_path = dir.join("accel.toml");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        Command::new(DAEMON)
            .args(["--config", config_path.to_str().unwrap()])
            .envs(env.iter().map(|(key, value)| (key, value)))
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// Stops the daemon with SIGTERM, as an upgrade does, and starts it
    /// again on the same configuration; returns once tenant `t0` has a
    /// process again.
    pub fn restart(&mut self) {
        // SAFETY: a signal to the child this test started and has not
        // reaped, so the pid is still its own.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status:?}\n{}", self.log());
        self.child = Supervisor::spawn(&self.dir, &self.log, &self.env);
        self.tenant_pid("t0");
    }

    /// Kills the whole daemon with SIGKILL, as a crash or an OOM kill
    /// does (its tenants' processes die with it, `PR_SET_PDEATHSIG`),
    /// waits until none of them is left, and starts a new daemon on the
    /// same configuration and sockets (the old ones are left behind, as
    /// after a crash: the new daemon replaces them); returns once tenant
    /// `t0` has a process again. Nothing carries over but what the test's
    /// front-end keeps (and the state directory, if configured).
    pub fn kill_and_start_again(&mut self) {
        let tenants = self.tenant_pids();
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let deadline = Instant::now() + PATIENCE;
        for pid in tenants {
            // Gone, or a zombie waiting for a reaper (no command line).
            while std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty()) {
                assert!(
                    Instant::now() < deadline,
                    "tenant process {pid} outlived its killed supervisor"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.child = Supervisor::spawn(&self.dir, &self.log, &self.env);
        self.tenant_pid("t0");
    }

    /// The processes of every tenant of the supervisor.
    pub fn tenant_pids(&self) -> Vec<u32> {
        let prefix = b"vhost-user-accel\0--tenant-process\0";
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|entry| {
                let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
                let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
                let ppid: u32 = stat.rsplit_once(") ")?.1.split(' ').nth(1)?.parse().ok()?;
                let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
                (ppid == self.child.id() && cmdline.starts_with(prefix)).then_some(pid)
            })
            .collect()
    }

    /// The socket of `tenant`.
    pub fn socket(&self, tenant: &str) -> PathBuf {
        self.dir.join(format!("{tenant}.sock"))
    }

    /// The process serving `tenant`, waited for (`PATIENCE` at most).
    pub fn tenant_pid(&self, tenant: &str) -> u32 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(pid) = self.find_tenant_pid(tenant) {
                return pid;
            }
            assert!(
                Instant::now() < deadline,
                "no process for tenant {tenant}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A child of the supervisor whose command line names `tenant`.
    pub fn find_tenant_pid(&self, tenant: &str) -> Option<u32> {
        let wanted = format!("vhost-user-accel\0--tenant-process\0{tenant}\0");
        std::fs::read_dir("/proc")
            .ok()?
            .flatten()
            .find_map(|entry| {
                let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
                let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
                // Fields after the command name, which is in parentheses.
                let ppid: u32 = stat.rsplit_once(") ")?.1.split(' ').nth(1)?.parse().ok()?;
                let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
                (ppid == self.child.id() && cmdline == wanted.as_bytes()).then_some(pid)
            })
    }

    /// What the supervisor and its tenants' processes logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The Prometheus text of the metrics endpoint.
    pub fn metrics(&self) -> String {
        let mut stream = std::os::unix::net::UnixStream::connect(self.dir.join("metrics")).unwrap();
        stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        reply
    }

    /// Waits (`PATIENCE` at most) until the metrics show `line`.
    pub fn wait_for_metric(&self, line: &str) {
        let deadline = Instant::now() + PATIENCE;
        while !self.metrics().lines().any(|l| l == line) {
            assert!(
                Instant::now() < deadline,
                "metrics never showed {line:?}:\n{}",
                self.metrics()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // SIGTERM, so that the supervisor stops its tenants and cleans up.
        if matches!(self.child.try_wait(), Ok(None)) {
            // SAFETY: a signal to the child this test started and has not
            // reaped, so the pid is still its own.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes the configuration file of the daemon in `dir`: `settings`, the
/// metrics socket, and a `[[tenant]]` for each `(name, settings)` of
/// `tenants`, whose socket is `dir/NAME.sock`.
pub fn write_config(dir: &std::path::Path, settings: &str, tenants: &[(&str, &str)]) {
    let mut config = format!(
        "{settings}metrics = \"unix:{}\"\n",
        dir.join("metrics").display()
    );
    for (name, tenant_settings) in tenants {
        config.push_str(&format!(
            "[[tenant]]\nname = \"{name}\"\nsocket = \"{}\"\n{tenant_settings}",
            dir.join(format!("{name}.sock")).display(),
        ));
    }
    std::fs::write(dir.join("accel.toml"), config).unwrap();
}

/// Sends `signal` to process `pid`, which must exist.
pub fn kill(pid: u32, signal: libc::c_int) {
    // SAFETY: a signal to a tenant process of the supervisor this test owns.
    assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0);
}

impl Supervisor {
    /// Waits (`PATIENCE` at most) until process `pid` no longer serves `tenant`.
    pub fn wait_until_gone(&self, tenant: &str, pid: u32) {
        let deadline = Instant::now() + PATIENCE;
        while self.find_tenant_pid(tenant) == Some(pid) {
            assert!(
                Instant::now() < deadline,
                "{tenant}'s process {pid} survived"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A FILL of `out` with 0x5a.
pub fn fill_request(out: &DmaBuf) -> Request {
    Request::new(Op::Fill)
        .params(&FillParams {
            pattern: 0x5a,
            ..Default::default()
        })
        .output(Buffer::direct(out))
}

/// Submits under `token`, on request queue 0 of `device`, a CRC-32C of
/// [`POISON_BYTES`], which ends the process that runs it under
/// [`Supervisor::start_poisoned`], and flushes the queue. Returns the
/// request's fence, and its input to keep until it completes.
pub fn submit_poison(device: &Device<VhostUserTransport>, token: u64) -> (Fence, DmaBuf) {
    let poison = device
        .memory()
        .alloc(usize::try_from(POISON_BYTES).unwrap())
        .unwrap();
    let crc = Request::new(Op::Crc32c).input(Buffer::direct(&poison));
    let fence = device.submit(0, &crc, token).unwrap();
    device.flush(0).unwrap();
    (fence, poison)
}

/// `completions` are one: the request of `token` and `fence`, answered
/// Interrupted (§11.3). `log` is shown in a failure.
pub fn assert_interrupted(completions: &[Completion], token: u64, fence: Fence, log: &str) {
    let [completion] = completions else {
        panic!("{} completions, not one\n{log}", completions.len());
    };
    assert_eq!(completion.token, token, "{log}");
    assert!(
        matches!(completion.status(), Ok(Status::Interrupted)),
        "{:?}\n{log}",
        completion.status()
    );
    assert_eq!(completion.fence(), fence, "{log}");
}

/// SHA-256 digests submitted by [`submit_digests`].
pub struct Digests {
    /// Their inputs, to keep until every digest has completed.
    pub inputs: Vec<DmaBuf>,
    /// The digest each must give, by token.
    pub expected: Vec<[u8; 32]>,
    /// The fence each was given, by token.
    pub fences: Vec<Fence>,
}

/// Submits `count` SHA-256 digests on request queue 0 of `device`, under
/// tokens 0 to `count - 1`, each of a buffer of its own of `size` bytes
/// (every byte its index xor `salt`), and flushes the queue.
pub fn submit_digests(
    device: &Device<VhostUserTransport>,
    count: usize,
    size: usize,
    salt: u8,
) -> Digests {
    let digests = queue_digests(device, count, size, salt);
    device.flush(0).unwrap();
    digests
}

/// [`submit_digests`] without the flush: the device sees the digests with
/// what is submitted next.
pub fn queue_digests(
    device: &Device<VhostUserTransport>,
    count: usize,
    size: usize,
    salt: u8,
) -> Digests {
    let memory = device.memory();
    let mut digests = Digests {
        inputs: Vec::with_capacity(count),
        expected: Vec::with_capacity(count),
        fences: Vec::with_capacity(count),
    };
    for (token, index) in (0u64..).zip(0..count) {
        let input = memory.alloc(size).unwrap();
        let bytes = vec![u8::try_from(index).unwrap() ^ salt; size];
        memory.write(&input, 0, &bytes).unwrap();
        digests.expected.push(sha2::Sha256::digest(&bytes).into());
        let request = Request::new(Op::Sha256).input(Buffer::direct(&input));
        digests
            .fences
            .push(device.submit(0, &request, token).unwrap());
        digests.inputs.push(input);
    }
    digests
}
