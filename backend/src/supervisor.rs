// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The supervisor: one process per tenant, restarted when it ends.
//!
//! The `vhost-user-accel` process reads the configuration, binds every
//! tenant's socket and the metrics endpoint, and never maps guest memory.
//! Each tenant is served by a process of its own ([`crate::tenant_process`]),
//! started by fork and exec of the daemon's own binary (`/proc/self/exe`), so
//! that it gets a fresh address space (no other tenant's memory, no state
//! inherited from the supervisor's threads, new address-space randomisation)
//! and only the descriptors it is handed: its listening socket, the memfds of
//! its counters and of its device's record, and its configuration on a pipe. This is how
//! cloud-hypervisor runs each vhost-user back-end and virglrenderer its
//! render server: a guest or VMM that crashes, corrupts or exhausts a
//! tenant's process reaches nothing of the others.
//!
//! When a tenant's process ends, for whatever reason (SIGBUS from guest
//! memory truncated by its VMM, a panic, the OOM killer, SIGKILL), the
//! supervisor logs the cause and starts another after a pause. The pause
//! starts at [`RETRY_DELAY`] (100 ms) and doubles while the processes keep
//! dying young (each living less than 10 s), up to the daemon's
//! `max-restart-pause-ms` ([`Config::max_restart_pause`], [`MAX_RETRY_DELAY`]
//! (5 s) unless set; set below 100 ms, every pause is that long). The
//! listening socket stays bound in the supervisor, so the socket path never
//! moves and a VMM that reconnects is served by the next process. Counters
//! live in shared memory and survive the process; so does the record of the
//! tenant's device, from which the next process resumes the device where
//! the last one left it (§11.3). With a state directory, the supervisor
//! saves each record there when it stops, and the next daemon takes the
//! records back, so that an upgrade is a pause too.
//!
//! On SIGHUP (`systemctl reload`) the supervisor reads its configuration
//! file again ([`Supervisor::reload_from`]) and brings the tenants in line
//! with it: a tenant whose settings are unchanged keeps its process, socket
//! and connection; a tenant that is gone or changed is stopped as at exit
//! (its record saved to the state directory, if any, so that a changed
//! tenant's device resumes where the record still fits); a new or changed
//! tenant is bound and started. Daemon-wide settings (engine, metrics, user,
//! state directory) take effect at the next start only. A file that does
//! not parse changes nothing. Under systemd the daemon reports each step
//! ([`crate::sd_notify`]).
//!
//! Tenants' processes are killed with the supervisor (`PR_SET_PDEATHSIG`)
//! and sit in a process group of their own, so that a terminal's ^C reaches
//! the supervisor only, which then stops them and reports.

use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use log::{error, info, warn};
use thiserror::Error;
use vhost::vhost_user::Listener;

use crate::arbiter::{Arbiter, Member};
use crate::config::{Config, MetricsAddr, SocketSource, TenantConfig};
use crate::config_file;
use crate::device_record::{DeviceRecord, Saved};
use crate::fairshare::{self, FairShare};
use crate::metrics::{MetricsServer, Roster};
use crate::sd_notify;
use crate::server::{listen, ServerError};
use crate::shutdown::{self, signal_name, Signals};
use crate::stats::TenantStats;
use crate::tenant_process::{ProcessConfig, TenantProcessError, LISTENER_FD, RECORD_FD, STATS_FD};

/// First pause before a tenant's process that ended is started again (or
/// the longest pause, if that is shorter).
pub const RETRY_DELAY: Duration = Duration::from_millis(100);
/// Longest pause between a tenant's processes unless the configuration sets
/// another (`max-restart-pause-ms`, [`Config::max_restart_pause`]).
pub const MAX_RETRY_DELAY: Duration = crate::config::DEFAULT_MAX_RESTART_PAUSE;
/// A process that lived this long did not die young: the pause starts over.
const STABLE_LIFETIME: Duration = Duration::from_secs(10);
/// Longest wait for the tenants' processes to end at exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// How old a record saved by a stopped daemon may be for the next one to
/// take it: past this, the VM that used it has given up or gone (a driver
/// resets a device that does not answer for 30 s, cloud-hypervisor gives
/// a back-end 60 s to come back).
const SAVED_MAX_AGE: Duration = Duration::from_secs(60);
/// Longest the supervisor's loop sleeps without a signal.
const IDLE_WAKE: Duration = Duration::from_secs(1);
/// `argv[0]` of a tenant's process, as `ps` shows it.
const PROCESS_NAME: &str = "vhost-user-accel";
/// Descriptors below this are left free for the ones a tenant's process
/// expects at fixed numbers.
const FIRST_FREE_FD: RawFd = 8;

/// Errors of the supervisor.
#[derive(Debug, Error)]
pub enum SupervisorError {
    /// The signals could not be blocked.
    #[error("cannot block signals")]
    Signals(#[source] io::Error),
    /// A tenant's socket or the metrics endpoint could not be bound.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// A tenant's shared counters or device record could not be made.
    #[error("tenant {tenant}: cannot create its shared memory")]
    Counters {
        /// The tenant.
        tenant: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The state directory could not be made.
    #[error("cannot make the state directory {path}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Why a tenant's process could not be started.
#[derive(Debug, Error)]
enum SpawnError {
    #[error("cannot pass descriptors")]
    Descriptors(#[source] io::Error),
    #[error(transparent)]
    Config(#[from] TenantProcessError),
    #[error("cannot start the process")]
    Exec(#[source] io::Error),
    #[error("cannot hand the configuration over")]
    Handover(#[source] io::Error),
}

/// A tenant's process that runs.
struct Running {
    child: Child,
    started: Instant,
}

/// One tenant: its socket and counters, which outlive its processes.
struct Slot {
    config: TenantConfig,
    listener: Listener,
    stats: Arc<TenantStats>,
    /// The record of its device, handed to each of its processes.
    record: DeviceRecord,
    process: Option<Running>,
    /// When to start the next process, if none runs.
    start_at: Instant,
    /// The pause after the next early death.
    delay: Duration,
    /// The longest pause ([`Config::max_restart_pause`]).
    max_delay: Duration,
    /// Processes started so far.
    incarnations: u64,
}

/// The supervisor of the tenants' processes.
pub struct Supervisor {
    config: Config,
    /// The file SIGHUP reads again, if the configuration came from one.
    config_file: Option<PathBuf>,
    program: PathBuf,
    signals: Signals,
    slots: Vec<Slot>,
    /// The tenants the metrics endpoint reports, in configuration order.
    roster: Roster,
    /// Processes of tenants a reload ended that had not ended yet when it
    /// stopped waiting: collected by [`Supervisor::reap`].
    dying: Vec<Child>,
    metrics: Option<MetricsServer>,
    share: FairShare,
    /// With several tenants, the arbiter of their CPU time.
    arbiter: Option<Arbiter>,
}

impl Supervisor {
    /// Binds every tenant's socket and the metrics endpoint of `config`,
    /// and prepares shared counters and CPU shares; tenants' processes will
    /// run `program` (the daemon's binary). Must be called before the
    /// process starts any thread: it blocks the signals the supervisor waits
    /// for, a mask every later thread inherits.
    pub fn bind(config: Config, program: impl Into<PathBuf>) -> Result<Self, SupervisorError> {
        let signals = shutdown::block_signals().map_err(SupervisorError::Signals)?;
        raise_descriptor_limit();
        if let Some(dir) = &config.state_dir {
            make_state_dir(dir).map_err(|source| SupervisorError::StateDir {
                path: dir.clone(),
                source,
            })?;
        }
        let slots = config
            .tenants
            .iter()
            .map(|tenant| Slot::bind(tenant, &config))
            .collect::<Result<Vec<_>, SupervisorError>>()?;
        let metrics = config
            .metrics
            .as_ref()
            .map(MetricsServer::bind)
            .transpose()
            .map_err(|e| SupervisorError::Server(ServerError::Metrics(e)))?;
        let share = FairShare::set_up(&config);
        let roster = crate::metrics::roster(Vec::new());
        let supervisor = Supervisor {
            config,
            config_file: None,
            program: program.into(),
            signals,
            slots,
            roster,
            dying: Vec::new(),
            metrics,
            share,
            arbiter: None,
        };
        supervisor.update_roster();
        Ok(supervisor)
    }

    /// Reads `path` again on SIGHUP, the file the configuration came from.
    #[must_use]
    pub fn reload_from(mut self, path: Option<PathBuf>) -> Self {
        self.config_file = path;
        self
    }

    /// The counters of every tenant, in configuration order.
    pub fn stats(&self) -> Vec<Arc<TenantStats>> {
        self.slots.iter().map(|s| Arc::clone(&s.stats)).collect()
    }

    /// Runs the tenants' processes, restarting each that ends, until SIGINT
    /// or SIGTERM, and reading the configuration again on SIGHUP; then stops
    /// them, logs every tenant's summary, removes the sockets it made and
    /// returns the signal.
    pub fn run(mut self) -> Result<libc::c_int, SupervisorError> {
        if let Some(metrics) = self.metrics.take() {
            metrics.spawn(Arc::clone(&self.roster))?;
        }
        self.arbiter = self.start_arbiter();
        sd_notify::ready();
        loop {
            self.start_due();
            match self.signals.wait(self.next_wake()) {
                Some(signal @ (libc::SIGINT | libc::SIGTERM)) => {
                    info!("{}: stopping the tenants and exiting", signal_name(signal));
                    sd_notify::stopping();
                    self.stop();
                    return Ok(signal);
                }
                Some(libc::SIGHUP) => {
                    self.reload();
                    // A stream of SIGHUPs must not keep ended processes
                    // from being collected and restarted.
                    self.reap();
                }
                _ => self.reap(),
            }
        }
    }

    /// Reads the configuration file again and applies what changed in the
    /// tenants (see the module's documentation).
    fn reload(&mut self) {
        let Some(path) = self.config_file.clone() else {
            warn!("SIGHUP: the configuration came from the command line: nothing to read again");
            return;
        };
        sd_notify::reloading();
        match config_file::load(&path) {
            Ok(config) => self.apply(config),
            // The error names the file.
            Err(e) => error!(
                "SIGHUP: {}; the running configuration stays",
                crate::error_chain(&e)
            ),
        }
        sd_notify::ready();
    }

    /// Brings the tenants in line with `new`.
    fn apply(&mut self, new: Config) {
        self.warn_daemon_wide(&new);
        if self.config.tenants == new.tenants {
            info!("SIGHUP: no tenant changed");
            return;
        }
        if let Some(tenant) = new
            .tenants
            .iter()
            .filter(|tenant| !self.config.tenants.contains(tenant))
            .find(|tenant| matches!(tenant.socket, SocketSource::Fd(_)))
        {
            error!(
                "SIGHUP: tenant {}: a socket-fd is only taken at start; the running \
                 configuration stays",
                tenant.name
            );
            return;
        }
        // The arbiter lets go of every process before any is collected:
        // a collected process's id may name another process next.
        self.arbiter = None;
        let before = std::mem::take(&mut self.config.tenants);
        let kept = self.end_departed(&new.tenants);
        self.bind_tenants(&new.tenants, kept);
        self.config.tenants = self.slots.iter().map(|s| s.config.clone()).collect();
        self.warn_kept_settings(&before);
        self.share.resize(self.slots.len());
        self.update_roster();
        self.arbiter = self.start_arbiter();
        for (index, slot) in self.slots.iter().enumerate() {
            if let Some(running) = &slot.process {
                self.watch(index, running.child.id());
            }
        }
        info!(
            "SIGHUP: {} tenant(s): {}",
            self.slots.len(),
            self.config
                .tenants
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }

    /// Says that settings of the whole daemon in `new` wait for a restart.
    fn warn_daemon_wide(&self, new: &Config) {
        let daemon_wide = Config {
            tenants: self.config.tenants.clone(),
            ..new.clone()
        };
        if daemon_wide != self.config {
            warn!(
                "SIGHUP: settings of the whole daemon changed; they take effect when it \
                 starts again, only the tenants change now"
            );
        }
    }

    /// Ends the processes of the tenants that are not in `tenants` as they
    /// are: a changed tenant's record is saved for its next process, a
    /// removed tenant's is not (another VM may come under its name). Returns
    /// the slots kept, with their processes.
    fn end_departed(&mut self, tenants: &[TenantConfig]) -> Vec<Slot> {
        let (kept, ended): (Vec<Slot>, Vec<Slot>) = std::mem::take(&mut self.slots)
            .into_iter()
            .partition(|slot| tenants.contains(&slot.config));
        let (changed, removed): (Vec<Slot>, Vec<Slot>) = ended
            .into_iter()
            .partition(|slot| tenants.iter().any(|t| t.name == slot.config.name));
        let ended_stats: Vec<_> = changed
            .iter()
            .chain(&removed)
            .map(|s| Arc::clone(&s.stats))
            .collect();
        let mut dying = self.end_processes(changed, "changed in the configuration", true);
        dying.extend(self.end_processes(removed, "removed from the configuration", false));
        self.dying.extend(dying);
        shutdown::report(&ended_stats);
        kept
    }

    /// Makes the slots of `tenants` in their order: a kept one as it is,
    /// the others bound afresh. A tenant whose socket cannot be bound is
    /// left out until the next reload.
    fn bind_tenants(&mut self, tenants: &[TenantConfig], kept: Vec<Slot>) {
        let mut kept: Vec<Option<Slot>> = kept.into_iter().map(Some).collect();
        for tenant in tenants {
            let old = kept
                .iter_mut()
                .find(|slot| slot.as_ref().is_some_and(|s| &s.config == tenant))
                .and_then(Option::take);
            match old.map_or_else(|| Slot::bind(tenant, &self.config), Ok) {
                Ok(slot) => self.slots.push(slot),
                Err(e) => error!(
                    "SIGHUP: tenant {}: {}; left out until the next reload",
                    tenant.name,
                    crate::error_chain(&e)
                ),
            }
        }
    }

    /// Says which kept tenants run with engine settings or a priority that
    /// depended on the tenants `before` and now would differ: they keep
    /// them until their process restarts.
    fn warn_kept_settings(&self, before: &[TenantConfig]) {
        let settings = |tenant: &TenantConfig, tenants: &[TenantConfig]| {
            (
                fairshare::engine_threads(self.config.engine_threads, tenants.len()),
                fairshare::engine_nice(self.config.engine_nice, tenants.len()),
                fairshare::process_nice(tenant, tenants),
            )
        };
        let stale = self
            .slots
            .iter()
            .filter(|slot| slot.process.is_some() && before.contains(&slot.config))
            .filter(|slot| {
                settings(&slot.config, before) != settings(&slot.config, &self.config.tenants)
            })
            .map(|slot| slot.config.name.as_str())
            .collect::<Vec<_>>();
        if !stale.is_empty() {
            warn!(
                "SIGHUP: tenant(s) {} keep the engine workers and priority worked out for \
                 the tenants before; the arbiter evens out their CPU time, and a restart of \
                 their process gives them the new ones",
                stale.join(", ")
            );
        }
    }

    /// Hands the metrics endpoint the tenants as they now are.
    fn update_roster(&self) {
        *self.roster.write().unwrap_or_else(PoisonError::into_inner) = self.stats();
    }

    /// The arbiter of several tenants' CPU time, if it can start.
    fn start_arbiter(&self) -> Option<Arbiter> {
        if self.slots.len() < 2 {
            return None;
        }
        let members = self.slots.iter().map(|slot| Member {
            stats: Arc::clone(&slot.stats),
            weight: slot.config.weight,
            nice: fairshare::process_nice(&slot.config, &self.config.tenants),
        });
        Arbiter::start(members.collect())
            .inspect_err(|e| warn!("fair sharing without the arbiter: cannot start it: {e}"))
            .ok()
            .flatten()
    }

    /// Tells the arbiter which process serves tenant `index` (0: none).
    fn watch(&self, index: usize, pid: u32) {
        if let Some(arbiter) = &self.arbiter {
            arbiter.set_process(index, pid);
        }
    }

    /// How long the loop may sleep: until the next start that is due.
    fn next_wake(&self) -> Duration {
        let now = Instant::now();
        self.slots
            .iter()
            .filter(|slot| slot.process.is_none())
            .map(|slot| slot.start_at.saturating_duration_since(now))
            .fold(IDLE_WAKE, Duration::min)
    }

    /// Starts the process of every tenant whose start is due.
    fn start_due(&mut self) {
        let now = Instant::now();
        for index in 0..self.slots.len() {
            let Some(slot) = self.slots.get(index) else {
                continue;
            };
            if slot.process.is_some() || slot.start_at > now {
                continue;
            }
            let spawned = self.spawn(slot);
            if let Ok(child) = &spawned {
                self.watch(index, child.id());
            }
            let Some(slot) = self.slots.get_mut(index) else {
                continue;
            };
            match spawned {
                Ok(child) => {
                    if slot.incarnations > 0 {
                        slot.stats.restarted();
                    }
                    slot.incarnations += 1;
                    slot.process = Some(Running {
                        child,
                        started: now,
                    });
                }
                Err(e) => {
                    error!(
                        "tenant {}: {}; trying again in {:?}",
                        slot.config.name,
                        crate::error_chain(&e),
                        slot.delay
                    );
                    slot.schedule_after(now);
                }
            }
        }
    }

    /// Starts the process of `slot`.
    fn spawn(&self, slot: &Slot) -> Result<Child, SpawnError> {
        let config = ProcessConfig::new(&self.config, &slot.config, slot.incarnations).encode()?;
        let not_shared = |what| SpawnError::Descriptors(io::Error::other(what));
        let counters = slot
            .stats
            .shared_file()
            .ok_or_else(|| not_shared("counters are not shared"))?;
        let record = slot
            .record
            .shared_file()
            .ok_or_else(|| not_shared("the device record is not shared"))?;
        let listener = duplicate_high(listener_fd(&slot.listener))?;
        let counters = duplicate_high(counters)?;
        let record = duplicate_high(record)?;
        let handed = [&listener, &counters, &record].map(AsRawFd::as_raw_fd);
        let parent = std::process::id();
        let mut command = Command::new(&self.program);
        command
            .arg0(PROCESS_NAME)
            .args(["--tenant-process", &slot.config.name])
            .env_remove(sd_notify::NOTIFY_SOCKET)
            .stdin(Stdio::piped());
        // SAFETY: the closure runs in the child between fork and exec and
        // makes only async-signal-safe calls (dup2, setpgid, prctl,
        // getppid), on descriptors that stay open in the parent until the
        // spawn returns.
        unsafe {
            command.pre_exec(move || prepare_child(handed, parent));
        }
        let mut child = command.spawn().map_err(SpawnError::Exec)?;
        drop((listener, counters, record));
        // Before the configuration: until it has it, the process is one
        // thread waiting on its input, so its cgroup and its nice level (per
        // thread on Linux) reach every thread it will start.
        self.share
            .place(child.id(), &slot.config, &self.config.tenants);
        let handed = child
            .stdin
            .take()
            .map_or(Err(io::ErrorKind::BrokenPipe.into()), |mut pipe| {
                pipe.write_all(config.as_bytes())
            });
        if let Err(e) = handed {
            let _ = child.kill();
            let _ = child.wait();
            return Err(SpawnError::Handover(e));
        }
        info!(
            "tenant {}: process {} serves {}",
            slot.config.name,
            child.id(),
            slot.config.socket
        );
        Ok(child)
    }

    /// Collects every tenant's process that ended and schedules its restart.
    fn reap(&mut self) {
        self.dying
            .retain_mut(|child| !matches!(child.try_wait(), Ok(Some(_))));
        let now = Instant::now();
        for index in 0..self.slots.len() {
            let ended = self.slots.get(index).and_then(|s| s.process.as_ref());
            if !ended.is_some_and(|running| has_ended(&running.child)) {
                continue;
            }
            // Its process id stays its own until collected below.
            self.watch(index, 0);
            let Some(slot) = self.slots.get_mut(index) else {
                continue;
            };
            let Some(running) = &mut slot.process else {
                continue;
            };
            let status = match running.child.try_wait() {
                Ok(status) => status,
                Err(e) => {
                    warn!(
                        "tenant {}: cannot wait for its process: {e}",
                        slot.config.name
                    );
                    None
                }
            };
            let Some(status) = status else {
                // Not collected (waitid failed, or this did): still watched.
                let pid = running.child.id();
                self.watch(index, pid);
                continue;
            };
            if now.duration_since(running.started) >= STABLE_LIFETIME {
                slot.delay = first_delay(slot.max_delay);
            }
            error!(
                "tenant {}: process {} {}; restarting it in {:?}",
                slot.config.name,
                running.child.id(),
                describe(status),
                slot.delay
            );
            if failed_by_itself(status) {
                slot.record.mark_failed();
            }
            slot.stats.process_ended();
            slot.process = None;
            slot.schedule_after(now);
        }
    }

    /// Kills every tenant's process, waits for them (a while), removes the
    /// cgroups and the metrics socket, and logs the summaries.
    fn stop(&mut self) {
        // Its thread ends, giving every tenant its priority back.
        self.arbiter = None;
        let stats = self.stats();
        let slots = std::mem::take(&mut self.slots);
        // What has not ended by now dies with the supervisor (its death signal).
        drop(self.end_processes(slots, "exiting", true));
        self.share.tear_down();
        if let Some(MetricsAddr::Unix(path)) = &self.config.metrics {
            let _ = std::fs::remove_file(path);
        }
        shutdown::report(&stats);
    }

    /// Kills the processes of `slots`, waits for them (a while), saves their
    /// records to the state directory, if any and if `save`, and drops the
    /// slots, whose listeners bound to paths remove them. `why` goes to the
    /// log. Returns the processes that had not ended by then.
    fn end_processes(&self, mut slots: Vec<Slot>, why: &str, save: bool) -> Vec<Child> {
        for slot in &mut slots {
            if let Some(running) = &mut slot.process {
                info!(
                    "tenant {}: stopping process {} ({why})",
                    slot.config.name,
                    running.child.id()
                );
                let _ = running.child.kill();
            }
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        let mut unended = Vec::new();
        for slot in &mut slots {
            if let Some(mut running) = slot.process.take() {
                while matches!(running.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                slot.stats.process_ended();
                if !matches!(running.child.try_wait(), Ok(Some(_))) {
                    unended.push(running.child);
                    // Only the record of a process that has ended stands still.
                    continue;
                }
            }
            if let (true, Some(dir)) = (save, &self.config.state_dir) {
                save_record(slot, dir);
            }
        }
        unended
    }
}

/// Makes the state directory `dir` (mode 0700) if missing; refuses one that
/// another user owns or that others may write to, since whoever can put a
/// file there chooses the state a tenant's device resumes from.
fn make_state_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let metadata = std::fs::symlink_metadata(dir)?;
    // SAFETY: geteuid has no preconditions.
    let owner = unsafe { libc::geteuid() };
    let private =
        metadata.is_dir() && metadata.uid() == owner && metadata.permissions().mode() & 0o022 == 0;
    if private {
        Ok(())
    } else {
        Err(io::Error::other(
            "not a directory of the daemon's user that only it may write to",
        ))
    }
}

/// Takes into `record`, tenant `name`'s, the record the last daemon saved
/// in `dir` when it stopped, if it is fresh and of this configuration
/// (§11.3); says what it found.
fn take_saved_record(record: &DeviceRecord, name: &str, dir: &Path) {
    let path = record_path(dir, name);
    match record.take_saved(&path, SAVED_MAX_AGE) {
        Ok(Saved::None) => {}
        Ok(Saved::Taken) => info!(
            "tenant {name}: took the device record the last daemon saved in {}: the \
             device resumes when its VMM reconnects",
            path.display()
        ),
        Ok(Saved::Stale(age)) => warn!(
            "tenant {name}: the device record in {} was saved {age:.0?} ago, too long \
             (more than {SAVED_MAX_AGE:?}): ignored, the device starts afresh",
            path.display()
        ),
        Ok(Saved::Foreign) => warn!(
            "tenant {name}: the device record in {} is of another configuration or \
             format: ignored, the device starts afresh",
            path.display()
        ),
        Err(e) => warn!(
            "tenant {name}: cannot take the device record in {}: {e}; the device \
             starts afresh",
            path.display()
        ),
    }
}

/// Saves the record of `slot`, whose process has ended, in `dir`, if its
/// device holds anything to resume.
fn save_record(slot: &Slot, dir: &Path) {
    let name = &slot.config.name;
    if !slot.record.in_use() {
        return;
    }
    let path = record_path(dir, name);
    match slot.record.save(&path) {
        Ok(()) => info!(
            "tenant {name}: saved its device record in {} for the next daemon",
            path.display()
        ),
        Err(e) => error!(
            "tenant {name}: cannot save its device record in {}: {e}",
            path.display()
        ),
    }
}

/// The file of tenant `name`'s saved record in `dir`.
fn record_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.record"))
}

impl Slot {
    /// Binds `tenant`'s socket and makes its shared counters and record,
    /// taking a record saved in `config`'s state directory.
    fn bind(tenant: &TenantConfig, config: &Config) -> Result<Slot, SupervisorError> {
        let shared_error = |source| SupervisorError::Counters {
            tenant: tenant.name.clone(),
            source,
        };
        // The socket first: a saved record is taken (and its file removed)
        // only for a tenant that will serve.
        let listener = listen(tenant)?;
        let stats = TenantStats::shared(tenant.name.clone()).map_err(shared_error)?;
        let record = DeviceRecord::shared(tenant).map_err(shared_error)?;
        if let Some(dir) = &config.state_dir {
            take_saved_record(&record, &tenant.name, dir);
        }
        Ok(Slot {
            config: tenant.clone(),
            listener,
            stats: Arc::new(stats),
            record,
            process: None,
            start_at: Instant::now(),
            delay: first_delay(config.max_restart_pause),
            max_delay: config.max_restart_pause,
            incarnations: 0,
        })
    }

    /// Schedules the next start after the current pause, and doubles it.
    fn schedule_after(&mut self, now: Instant) {
        self.start_at = now + self.delay;
        self.delay = (self.delay * 2).min(self.max_delay);
    }
}

/// The first pause of a tenant whose pauses grow up to `max`.
fn first_delay(max: Duration) -> Duration {
    RETRY_DELAY.min(max)
}

fn listener_fd(listener: &Listener) -> BorrowedFd<'_> {
    // SAFETY: the descriptor belongs to `listener`, which the returned
    // borrow cannot outlive.
    unsafe { BorrowedFd::borrow_raw(listener.as_raw_fd()) }
}

/// A close-on-exec duplicate of `fd` numbered at least [`FIRST_FREE_FD`], so
/// that moving it to its fixed number in the child never overwrites the
/// other descriptor being moved.
fn duplicate_high(fd: BorrowedFd<'_>) -> Result<OwnedFd, SpawnError> {
    fd.as_fd()
        .try_clone_to_owned()
        .and_then(|fd| {
            // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor, owned below.
            let high = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, FIRST_FREE_FD) };
            if high < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `high` is a new descriptor that nothing else owns.
            Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(high) })
        })
        .map_err(SpawnError::Descriptors)
}

/// In the child, between fork and exec: the descriptors at their numbers
/// (dup2 clears close-on-exec on the copies), a process group of its own,
/// and death with the supervisor.
/// `handed` are the listening socket, the counters and the device record,
/// which go to [`LISTENER_FD`], [`STATS_FD`] and [`RECORD_FD`].
fn prepare_child(handed: [RawFd; 3], parent: u32) -> io::Result<()> {
    for (fd, target) in handed.into_iter().zip([LISTENER_FD, STATS_FD, RECORD_FD]) {
        // SAFETY: an async-signal-safe call on a descriptor open in this
        // process; the target is a free number or the child's own copy.
        if unsafe { libc::dup2(fd, target) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // Nothing else crosses: above all no other tenant's socket (std marks
    // its own descriptors close-on-exec, but an inherited one may not be).
    // SAFETY: closes descriptors of this child only, which it no longer
    // needs; on a kernel without close_range the close-on-exec flags remain.
    unsafe { libc::syscall(libc::SYS_close_range, RECORD_FD + 1, libc::c_uint::MAX, 0) };
    // SAFETY: async-signal-safe calls that change only this process: its
    // own process group (a terminal's ^C reaches the supervisor only), no
    // stop for writing to that terminal from the background (SIGTTOU stays
    // ignored across exec), death with the supervisor.
    let detached = unsafe {
        libc::setpgid(0, 0) == 0
            && libc::signal(libc::SIGTTOU, libc::SIG_IGN) != libc::SIG_ERR
            && libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) == 0
    };
    if !detached {
        return Err(io::Error::last_os_error());
    }
    // The supervisor's ambient capabilities (CAP_SYS_NICE, which the systemd
    // unit grants its arbiter) stay with it: a tenant's process, not root,
    // then runs with none.
    // SAFETY: an async-signal-safe call that changes only this process's
    // ambient set; on a kernel without ambient capabilities (before 4.3) it
    // fails harmlessly (EINVAL).
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    // SAFETY: getppid has no preconditions.
    let orphaned = u32::try_from(unsafe { libc::getppid() }).ok() != Some(parent);
    if orphaned {
        // The supervisor died before the death signal was armed.
        return Err(io::Error::from(io::ErrorKind::BrokenPipe));
    }
    Ok(())
}

/// Whether `child` has ended, its status not yet collected (`WNOWAIT`);
/// if `waitid` fails, perhaps (`Child::try_wait` will tell).
fn has_ended(child: &Child) -> bool {
    let pid: libc::id_t = child.id();
    // SAFETY: a zeroed siginfo_t is a valid value for waitid to fill in.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
    // SAFETY: waitid writes `info` only, and with WNOWAIT leaves the child
    // to be collected by `Child::try_wait`.
    let rc = unsafe { libc::waitid(libc::P_PID, pid, &raw mut info, flags) };
    // SAFETY: si_pid is the field waitid fills in for an ended child (0 if
    // none has ended, with WNOHANG); the value is zeroed otherwise.
    rc != 0 || unsafe { info.si_pid() } != 0
}

/// How a process ended, for the log.
fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) if status.core_dumped() => {
            format!("was killed by {} (core dumped)", signal_name(signal))
        }
        (None, Some(signal)) => format!("was killed by {}", signal_name(signal)),
        (None, None) => format!("ended ({status})"),
    }
}

/// Signals that a process raises on itself when it fails: SIGABRT after a
/// panic, SIGSEGV, SIGBUS, SIGILL, SIGFPE and SIGTRAP from a fault, SIGSYS
/// from the sandbox.
const FAILURE_SIGNALS: [libc::c_int; 7] = [
    libc::SIGABRT,
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGILL,
    libc::SIGFPE,
    libc::SIGTRAP,
    libc::SIGSYS,
];

/// Whether a process that ended with `status` failed by itself (one of
/// [`FAILURE_SIGNALS`], or an exit status other than 0), rather than being
/// killed or stopped from outside (any other signal): its device's requests
/// that were running then count a lost run (§11.3).
fn failed_by_itself(status: ExitStatus) -> bool {
    match (status.code(), status.signal()) {
        (Some(code), _) => code != 0,
        (None, Some(signal)) => FAILURE_SIGNALS.contains(&signal),
        (None, None) => false,
    }
}

/// Raises this process's soft limit on open descriptors to its hard limit,
/// for its tenants' processes to inherit: a VMM hands each a descriptor per
/// memory region and two per virtqueue.
fn raise_descriptor_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid out pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            ..limit
        };
        // SAFETY: a valid rlimit, within the hard limit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            warn!(
                "cannot raise the descriptor limit: {}",
                io::Error::last_os_error()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SocketSource;
    use std::os::linux::net::SocketAddrExt;

    #[test]
    fn exit_causes_are_named() {
        assert_eq!(
            describe(ExitStatus::from_raw(libc::SIGBUS)),
            "was killed by SIGBUS (7)"
        );
        assert_eq!(
            describe(ExitStatus::from_raw(3 << 8)),
            "exited with status 3"
        );
        assert_eq!(
            describe(ExitStatus::from_raw(libc::SIGSEGV | 0x80)),
            "was killed by SIGSEGV (11) (core dumped)"
        );
    }

    #[test]
    fn only_a_failure_of_its_own_counts() {
        let failed = |raw| failed_by_itself(ExitStatus::from_raw(raw));
        assert!(failed(libc::SIGABRT | 0x80));
        assert!(failed(libc::SIGSYS));
        assert!(failed(libc::SIGBUS));
        assert!(failed(1 << 8));
        assert!(!failed(libc::SIGKILL));
        assert!(!failed(libc::SIGTERM));
        assert!(!failed(libc::SIGHUP));
        assert!(!failed(0));
    }

    /// A slot of tenant "a" with no process, whose pauses grow up to `max`.
    fn slot(max: Duration) -> Slot {
        use std::sync::atomic::{AtomicU32, Ordering};
        static SLOTS: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "vhost-user-accel-supervisor-test-{}-{}",
            std::process::id(),
            SLOTS.fetch_add(1, Ordering::Relaxed)
        );
        let listener = Listener::from(
            std::os::unix::net::UnixListener::bind_addr(
                &std::os::unix::net::SocketAddr::from_abstract_name(name)
                    .unwrap_or_else(|e| panic!("{e}")),
            )
            .unwrap_or_else(|e| panic!("{e}")),
        );
        Slot {
            config: TenantConfig::new("a", SocketSource::Fd(-1)),
            listener,
            stats: Arc::new(TenantStats::new("a")),
            record: DeviceRecord::private(&TenantConfig::new("a", SocketSource::Fd(-1))),
            process: None,
            start_at: Instant::now(),
            delay: first_delay(max),
            max_delay: max,
            incarnations: 0,
        }
    }

    /// The pauses before `count` restarts in a row of processes dying young.
    fn pauses(slot: &mut Slot, count: usize) -> Vec<Duration> {
        let now = Instant::now();
        (0..count)
            .map(|_| {
                slot.schedule_after(now);
                slot.start_at - now
            })
            .collect()
    }

    #[test]
    fn pauses_grow_while_processes_die_young() {
        let ms = Duration::from_millis;
        let mut default = slot(MAX_RETRY_DELAY);
        assert_eq!(
            pauses(&mut default, 8),
            [100, 200, 400, 800, 1600, 3200, 5000, 5000].map(ms)
        );
        // `max-restart-pause-ms` caps the doubling.
        let mut capped = slot(ms(500));
        assert_eq!(pauses(&mut capped, 5), [100, 200, 400, 500, 500].map(ms));
        let mut at_first = slot(RETRY_DELAY);
        assert_eq!(pauses(&mut at_first, 3), [RETRY_DELAY; 3]);
        // Below the first pause, every pause is the longest.
        let mut short = slot(ms(30));
        assert_eq!(pauses(&mut short, 3), [ms(30); 3]);
        // A process that lived long enough starts the pauses over (`reap`).
        assert_eq!(first_delay(ms(500)), RETRY_DELAY);
        assert_eq!(first_delay(ms(30)), ms(30));
    }
}
