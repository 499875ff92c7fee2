// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Readiness and reloads told to systemd (`sd_notify(3)`), for a unit of
//! `Type=notify`: the supervisor says when its sockets are bound and its
//! tenants about to start (`READY=1`), when it reads its configuration again
//! on SIGHUP (`RELOADING=1`, then `READY=1`) and when it stops
//! (`STOPPING=1`).
//!
//! systemd names a datagram socket in `NOTIFY_SOCKET`: a path, or an
//! abstract name after `@`. Without that variable (not started by systemd)
//! nothing is sent. A message that cannot be sent is logged and otherwise
//! ignored: the daemon serves its tenants all the same. Tenants' processes
//! do not inherit the variable (`Supervisor::spawn`).

use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

use log::warn;

/// The environment variable that names systemd's socket.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// The daemon serves: its sockets are bound.
pub fn ready() {
    notify("READY=1");
}

/// The daemon reads its configuration again; [`ready`] follows.
pub fn reloading() {
    notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
}

/// The daemon stops its tenants and exits.
pub fn stopping() {
    notify("STOPPING=1");
}

fn notify(state: &str) {
    let Some(socket) = std::env::var_os(NOTIFY_SOCKET) else {
        return;
    };
    if let Err(e) = send(&socket, state) {
        warn!(
            "cannot tell systemd {:?} on {}: {e}",
            state,
            socket.to_string_lossy()
        );
    }
}

/// Sends `state` to the socket named as in `NOTIFY_SOCKET`.
pub fn send(socket: &OsStr, state: &str) -> io::Result<()> {
    let address = match socket.as_bytes().strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(socket)?,
    };
    let socket = UnixDatagram::unbound()?;
    // A full queue (systemd not reading) fails the message instead of
    // stalling the supervisor.
    socket.set_nonblocking(true)?;
    let sent = socket.send_to_addr(state.as_bytes(), &address)?;
    if sent != state.len() {
        return Err(io::Error::other("the message was cut short"));
    }
    Ok(())
}

/// `CLOCK_MONOTONIC` in microseconds, the clock systemd compares a reload's
/// start with.
fn monotonic_usec() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec owned by this frame, which the call
    // only writes; CLOCK_MONOTONIC is always available on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let seconds = u64::try_from(now.tv_sec).unwrap_or(0);
    let micros = u64::try_from(now.tv_nsec).unwrap_or(0) / 1_000;
    seconds.saturating_mul(1_000_000).saturating_add(micros)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn receive(socket: &UnixDatagram) -> String {
        let mut buffer = [0u8; 256];
        let n = socket.recv(&mut buffer).unwrap();
        String::from_utf8(buffer[..n].to_vec()).unwrap()
    }

    #[test]
    fn a_message_reaches_a_socket_named_by_its_path() {
        let dir = std::env::temp_dir().join(format!("sd-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let _ = std::fs::remove_file(&path);
        let systemd = UnixDatagram::bind(&path).unwrap();
        send(path.as_os_str(), "READY=1").unwrap();
        assert_eq!(receive(&systemd), "READY=1");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_message_reaches_an_abstract_socket() {
        let name = format!("vhost-user-accel-test-{}", std::process::id());
        let systemd =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        send(OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        assert_eq!(receive(&systemd), "STOPPING=1");
    }

    #[test]
    fn a_missing_socket_is_an_error() {
        assert!(send(OsStr::new("/nonexistent/notify"), "READY=1").is_err());
    }

    #[test]
    fn the_monotonic_clock_moves_forward() {
        let before = monotonic_usec();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(monotonic_usec() >= before + 2_000);
    }
}
