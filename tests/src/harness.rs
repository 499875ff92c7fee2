// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Plays the VMM and the guest: starts the daemon on a fresh unix socket and
//! connects the driver to it over vhost-user, with memfd-backed guest RAM.
//!
//! By default the daemon runs in this process ([`Daemon::start`]), which is
//! the real daemon code behind a real socket. Setting `ACCEL_TEST_SOCKET` to
//! the socket of an installed daemon runs the same tests against it instead.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use accel_driver::{Device, DmaMemory, OpenOptions, VhostUserOptions, VhostUserTransport};
use std::sync::Arc;
use vhost_user_accel::stats::TenantStats;
use vhost_user_accel::{Config, Server, SocketSource, TenantConfig};

/// A device opened over vhost-user.
pub type AccelDevice = Device<VhostUserTransport>;

/// Environment variable naming the socket of an external daemon to test.
pub const EXTERNAL_SOCKET_ENV: &str = "ACCEL_TEST_SOCKET";

/// A running daemon's tenant and its socket.
#[derive(Debug, Clone)]
pub struct Daemon {
    socket: PathBuf,
    queue_size: u16,
    /// The tenant's counters, when the daemon runs in this process.
    stats: Option<Arc<TenantStats>>,
}

/// Environment variable naming the sockets of tenants of an external daemon,
/// separated by commas, for the multi-tenant tests (`tests/tests/tenants.rs`).
pub const EXTERNAL_TENANTS_ENV: &str = "ACCEL_TEST_TENANTS";

/// A socket path of its own for each test daemon's tenant.
pub fn unique_socket_path() -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!(
        "vhost-user-accel-test-{}-{n}.sock",
        std::process::id()
    ))
}

/// A tenant named `name` with default settings on a fresh socket.
pub fn tenant(name: &str) -> TenantConfig {
    TenantConfig::new(name, SocketSource::Path(unique_socket_path()))
}

impl Daemon {
    /// Starts a daemon with the default configuration.
    pub fn start() -> Daemon {
        Daemon::start_with(|_| ())
    }

    /// Starts a daemon of one tenant whose configuration `configure`
    /// adjusts; the socket is listening when this returns. With
    /// `ACCEL_TEST_SOCKET` set, uses that daemon instead (which must run
    /// with the default configuration).
    pub fn start_with(configure: impl FnOnce(&mut TenantConfig)) -> Daemon {
        if let Some(socket) = std::env::var_os(EXTERNAL_SOCKET_ENV) {
            return Daemon::external(PathBuf::from(socket));
        }
        let mut one = tenant("0");
        configure(&mut one);
        let mut tenants = Daemon::start_config(Config::with_tenants(vec![one]));
        tenants.remove(0)
    }

    /// Starts a daemon in this process with `config`; returns one handle per
    /// tenant, in order, each listening.
    pub fn start_config(config: Config) -> Vec<Daemon> {
        let server = match Server::bind(config.clone()) {
            Ok(server) => server,
            Err(e) => panic!(
                "cannot start the daemon: {}",
                vhost_user_accel::error_chain(&e)
            ),
        };
        let tenants = config
            .tenants
            .iter()
            .zip(server.stats())
            .map(|(tenant, stats)| Daemon {
                socket: match &tenant.socket {
                    SocketSource::Path(path) => path.clone(),
                    SocketSource::Fd(_) => PathBuf::new(),
                },
                queue_size: tenant.queue_size,
                stats: Some(stats),
            })
            .collect();
        std::thread::Builder::new()
            .name(String::from("daemon"))
            .spawn(move || {
                if let Err(e) = server.serve_forever() {
                    eprintln!("daemon stopped: {}", vhost_user_accel::error_chain(&e));
                }
            })
            .unwrap_or_else(|e| panic!("cannot spawn the daemon thread: {e}"));
        tenants
    }

    /// `count` tenants with default settings: the first `count` sockets of
    /// [`EXTERNAL_TENANTS_ENV`] when it is set, else those of a new daemon
    /// in this process.
    pub fn start_tenants(count: usize) -> Vec<Daemon> {
        if let Some(list) = std::env::var_os(EXTERNAL_TENANTS_ENV) {
            let sockets: Vec<Daemon> = list
                .to_string_lossy()
                .split(',')
                .map(|socket| Daemon::external(PathBuf::from(socket)))
                .take(count)
                .collect();
            assert!(
                sockets.len() == count,
                "{EXTERNAL_TENANTS_ENV} names {} sockets; this test needs {count}",
                sockets.len()
            );
            return sockets;
        }
        let tenants = (0..count).map(|i| tenant(&format!("t{i}"))).collect();
        Daemon::start_config(Config::with_tenants(tenants))
    }

    /// A daemon started elsewhere (with the default configuration), listening on `socket`.
    pub fn external(socket: PathBuf) -> Daemon {
        Daemon {
            socket,
            queue_size: TenantConfig::new("0", SocketSource::Fd(-1)).queue_size,
            stats: None,
        }
    }

    /// The tenant's counters (`None` for an external daemon).
    pub fn stats(&self) -> Option<&TenantStats> {
        self.stats.as_deref()
    }

    /// The socket path.
    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    /// Connects a new "VM" with `memory` as its RAM and opens the device with
    /// every feature the driver knows.
    pub fn connect(&self, memory: &DmaMemory) -> AccelDevice {
        self.connect_with(memory, accel_driver::DEFAULT_FEATURES)
    }

    /// Connects and opens the device asking for `features`.
    pub fn connect_with(&self, memory: &DmaMemory, features: u64) -> AccelDevice {
        let options = VhostUserOptions {
            queue_size: self.queue_size,
            ..VhostUserOptions::default()
        };
        let transport = VhostUserTransport::connect_with(&self.socket, memory, &options)
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", self.socket.display()));
        let open = OpenOptions {
            features,
            queue_size: Some(self.queue_size),
            timeout: Duration::from_secs(20),
            ..OpenOptions::default()
        };
        Device::open_with(transport, &open)
            .unwrap_or_else(|e| panic!("cannot open the device: {e}"))
    }
}

/// Guest RAM of `mib` MiB at guest-physical address 0.
pub fn guest_ram(mib: usize) -> DmaMemory {
    DmaMemory::new(mib << 20).unwrap_or_else(|e| panic!("cannot create guest RAM: {e}"))
}

/// The daemon's binary, `vhost-user-accel` in the running program's
/// `target/<profile>/` (beside it, or above an integration test's `deps/`),
/// or the path in `ACCEL_DAEMON_BIN`.
pub fn daemon_binary() -> Result<PathBuf, String> {
    let path = match std::env::var_os("ACCEL_DAEMON_BIN") {
        Some(path) => PathBuf::from(path),
        None => {
            let exe =
                std::env::current_exe().map_err(|e| format!("cannot locate this program: {e}"))?;
            let mut dir = exe.parent().unwrap_or(Path::new("/")).to_path_buf();
            if dir.ends_with("deps") {
                dir.pop();
            }
            dir.join("vhost-user-accel")
        }
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "no daemon binary at {} (build it: cargo build --release -p vhost-user-accel, \
             or set ACCEL_DAEMON_BIN)",
            path.display()
        ))
    }
}

/// The daemon binary running as a supervisor of one process per tenant,
/// stopped (SIGTERM) when dropped.
#[derive(Debug)]
pub struct DaemonProcess {
    child: std::process::Child,
    dir: PathBuf,
}

impl DaemonProcess {
    /// Starts the daemon binary with tenants `names` (default settings) and
    /// `settings` (lines of its configuration file, such as
    /// `engine-threads = 2`); returns it and a handle per tenant, in order,
    /// once every socket listens.
    pub fn start(names: &[&str], settings: &str) -> Result<(Self, Vec<Daemon>), String> {
        let dir = unique_socket_path().with_extension("d");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut config = format!("{settings}\n");
        let sockets: Vec<PathBuf> = names
            .iter()
            .map(|name| dir.join(format!("{name}.sock")))
            .collect();
        for (name, socket) in names.iter().zip(&sockets) {
            config.push_str(&format!(
                "[[tenant]]\nname = \"{name}\"\nsocket = \"{}\"\n",
                socket.display()
            ));
        }
        let config_path = dir.join("accel.toml");
        std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
        let log = std::fs::File::create(dir.join("daemon.log")).map_err(|e| e.to_string())?;
        let child = std::process::Command::new(daemon_binary()?)
            .arg("--config")
            .arg(&config_path)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start the daemon: {e}"))?;
        let process = DaemonProcess { child, dir };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !sockets.iter().all(|s| s.exists()) {
            if std::time::Instant::now() > deadline {
                return Err(format!(
                    "the daemon's sockets never appeared; see {}",
                    process.dir.join("daemon.log").display()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let daemons = sockets.into_iter().map(Daemon::external).collect();
        Ok((process, daemons))
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// The supervisor's pid and those of its children (the tenants'
    /// processes).
    pub fn pids(&self) -> Vec<u32> {
        let supervisor = self.child.id();
        let children = std::fs::read_dir("/proc").into_iter().flatten().flatten();
        let children = children.filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let ppid: u32 = stat.rsplit_once(") ")?.1.split(' ').nth(1)?.parse().ok()?;
            (ppid == supervisor).then_some(pid)
        });
        std::iter::once(supervisor).chain(children).collect()
    }

    /// The process serving tenant `name`, waiting up to 30 s for the
    /// supervisor to start it.
    pub fn tenant_pid(&self, name: &str) -> Result<u32, String> {
        let serves = |pid: &u32| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                let mut args = cmdline.split(|b| *b == 0);
                args.any(|arg| arg == b"--tenant-process") && args.next() == Some(name.as_bytes())
            })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(pid) = self.pids().into_iter().skip(1).find(serves) {
                return Ok(pid);
            }
            if std::time::Instant::now() > deadline {
                return Err(format!("no process serves tenant {name}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The CPU time process `pid` and its threads, living and ended, have used.
pub fn cpu_time(pid: u32) -> Result<Duration, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    // After the command name: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest.split(' ').collect())
        .unwrap_or_default();
    let ticks: u64 = [11, 12]
        .iter()
        .map(|i| fields.get(*i).and_then(|f| f.parse::<u64>().ok()))
        .sum::<Option<u64>>()
        .ok_or_else(|| format!("/proc/{pid}/stat: no CPU times"))?;
    // SAFETY: sysconf has no preconditions.
    let per_sec = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .ok()
        .filter(|hz| *hz > 0)
        .unwrap_or(100);
    Ok(Duration::from_nanos(ticks * 1_000_000_000 / per_sec))
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // SAFETY: a signal to the child this harness started and has not
            // reaped, so the pid is still its own.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The private resident memory (RssAnon) of process `pid`, in bytes.
pub fn rss_anon(pid: &str) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("RssAnon:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .ok_or_else(|| format!("no RssAnon in /proc/{pid}/status"))?;
    Ok(kib * 1024)
}
