//! Exit on SIGINT or SIGTERM with a report: every tenant's counters are
//! logged, and the sockets the daemon made are removed.
//!
//! The signals are blocked in every thread (the mask is inherited, so
//! [`block_exit_signals`] must run before any thread starts) and taken
//! synchronously by one thread with `sigwait`, where logging is safe.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use log::info;

use crate::stats::TenantStats;

/// The blocked exit signals, to be waited for by [`spawn_reporter`].
pub struct ExitSignals(libc::sigset_t);

/// Blocks SIGINT and SIGTERM in this thread and in the threads it starts.
pub fn block_exit_signals() -> io::Result<ExitSignals> {
    // SAFETY: an all-zero sigset_t is a valid value to hand to sigemptyset,
    // which initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t owned by this frame; the calls only
    // write to it and to this thread's signal mask.
    let rc = unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(ExitSignals(set))
}

/// Starts the thread that, on an exit signal, logs each tenant's summary,
/// removes `sockets` and exits the process with status 0.
pub fn spawn_reporter(
    signals: ExitSignals,
    tenants: Vec<Arc<TenantStats>>,
    sockets: Vec<PathBuf>,
) -> io::Result<()> {
    std::thread::Builder::new()
        .name(String::from("exit-report"))
        .spawn(move || {
            let signal = wait(&signals);
            info!("signal {signal}: exiting");
            for tenant in &tenants {
                info!("{}", tenant.summary());
            }
            for socket in &sockets {
                let _ = std::fs::remove_file(socket);
            }
            std::process::exit(0);
        })
        .map(drop)
}

fn wait(signals: &ExitSignals) -> i32 {
    let mut signal = 0;
    // SAFETY: the set is initialised and `signal` is a valid out pointer;
    // sigwait only fails for an invalid set, which then reads as signal 0.
    unsafe { libc::sigwait(&signals.0, &mut signal) };
    signal
}
