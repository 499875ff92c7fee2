// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The signals the supervisor acts on: SIGCHLD (a tenant's process ended),
//! SIGHUP (read the configuration file again), SIGINT and SIGTERM (exit
//! with a report of every tenant's counters).
//!
//! They are blocked in every thread (the mask is inherited, so
//! [`block_signals`] must run before any thread starts) and taken
//! synchronously by the supervisor's loop with `sigtimedwait`, where logging
//! and spawning are safe. Tenants' processes start with an empty mask
//! (`std::process::Command` resets it).

use std::io;
use std::time::Duration;

use log::info;

use crate::stats::TenantStats;

/// A set of blocked signals, to be taken with [`Signals::wait`].
pub struct Signals(libc::sigset_t);

/// Blocks SIGCHLD, SIGHUP, SIGINT and SIGTERM in this thread and in the threads it
/// starts.
pub fn block_signals() -> io::Result<Signals> {
    // SAFETY: an all-zero sigset_t is a valid value to hand to sigemptyset,
    // which initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t owned by this frame; the calls only
    // write to it and to this thread's signal mask.
    let rc = unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(Signals(set))
}

impl Signals {
    /// The next of the signals to arrive within `timeout`, if any.
    pub fn wait(&self, timeout: Duration) -> Option<libc::c_int> {
        let timeout = libc::timespec {
            tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_nsec: libc::c_long::from(timeout.subsec_nanos().min(999_999_999) as i32),
        };
        // SAFETY: the set is initialised, the info pointer may be null and
        // the timeout is a valid timespec.
        let signal = unsafe { libc::sigtimedwait(&self.0, std::ptr::null_mut(), &timeout) };
        // -1: the timeout passed (EAGAIN) or another signal's handler ran (EINTR).
        (signal > 0).then_some(signal)
    }
}

/// Logs each tenant's summary line: what the daemon did, at its exit.
pub fn report(tenants: &[std::sync::Arc<TenantStats>]) {
    for tenant in tenants {
        info!("{}", tenant.summary());
    }
}

/// The name of `signal`, for the log.
pub fn signal_name(signal: libc::c_int) -> String {
    let name = match signal {
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGHUP => "SIGHUP",
        libc::SIGILL => "SIGILL",
        libc::SIGINT => "SIGINT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGSYS => "SIGSYS",
        libc::SIGTERM => "SIGTERM",
        libc::SIGTRAP => "SIGTRAP",
        _ => return format!("signal {signal}"),
    };
    format!("{name} ({signal})")
}
