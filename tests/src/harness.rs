//! Plays the VMM and the guest: starts the daemon on a fresh unix socket and
//! connects the driver to it over vhost-user, with memfd-backed guest RAM.
//!
//! By default the daemon runs in this process ([`Daemon::start`]), which is
//! the real daemon code behind a real socket. Setting `ACCEL_TEST_SOCKET` to
//! the socket of an installed daemon runs the same tests against it instead.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use accel_driver::{Device, DmaMemory, OpenOptions, VhostUserOptions, VhostUserTransport};
use vhost_user_accel::{Config, Server, SocketSource};

/// A device opened over vhost-user.
pub type AccelDevice = Device<VhostUserTransport>;

/// Environment variable naming the socket of an external daemon to test.
pub const EXTERNAL_SOCKET_ENV: &str = "ACCEL_TEST_SOCKET";

/// A running daemon and its socket.
#[derive(Debug)]
pub struct Daemon {
    socket: PathBuf,
    queue_size: u16,
}

fn unique_socket_path() -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!(
        "vhost-user-accel-test-{}-{n}.sock",
        std::process::id()
    ))
}

impl Daemon {
    /// Starts a daemon with the default configuration.
    pub fn start() -> Daemon {
        Daemon::start_with(|_| ())
    }

    /// Starts a daemon whose configuration `configure` adjusts; the socket is
    /// listening when this returns. With `ACCEL_TEST_SOCKET` set, uses that
    /// daemon instead (which must run with the default configuration).
    pub fn start_with(configure: impl FnOnce(&mut Config)) -> Daemon {
        if let Some(socket) = std::env::var_os(EXTERNAL_SOCKET_ENV) {
            return Daemon::external(PathBuf::from(socket));
        }
        let socket = unique_socket_path();
        let mut config = Config::new(SocketSource::Path(socket.clone()));
        configure(&mut config);
        let queue_size = config.queue_size;
        let mut server = match Server::bind(config) {
            Ok(server) => server,
            Err(e) => panic!("cannot start the daemon on {}: {e}", socket.display()),
        };
        std::thread::Builder::new()
            .name(String::from("daemon"))
            .spawn(move || {
                if let Err(e) = server.serve_forever() {
                    eprintln!("daemon stopped: {e}");
                }
            })
            .unwrap_or_else(|e| panic!("cannot spawn the daemon thread: {e}"));
        Daemon { socket, queue_size }
    }

    /// A daemon started elsewhere (with the default configuration), listening on `socket`.
    pub fn external(socket: PathBuf) -> Daemon {
        Daemon {
            socket,
            queue_size: Config::new(SocketSource::Fd(-1)).queue_size,
        }
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
