// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The arbiter: fair sharing of the CPUs between tenants' processes by the
//! CPU time the kernel says each used.
//!
//! Nice levels ([`crate::fairshare`]) leave the kernel's load balancer to
//! share the CPUs, and it tolerates a lasting imbalance: with four equal
//! tenants on two CPUs, the two processes sharing one CPU could get 0.47 of
//! a CPU each and the two sharing the other, busier one 0.40, for as long
//! as the balancer left them there (`accel-fairness`: in about half the
//! runs the Jain index of the tenants' rates was below 0.99). The arbiter,
//! a thread of the supervisor, evens that out with information no tenant can
//! forge and without a tenant's help:
//!
//! - **It measures.** Every [`TICK`] it reads the CPU time of each tenant's
//!   process (its process CPU clock: every thread, those that ended too) and
//!   how long its threads waited for a CPU (`/proc/PID/task/TID/schedstat`,
//!   at most [`MAX_THREADS`] threads). A tenant's *virtual time* grows by
//!   the CPU time its process used divided by its weight (weighted fair
//!   queueing). A tenant that was idle for [`IDLE_AFTER`] comes back no
//!   further behind than the least advanced of the busy tenants, and no busy
//!   tenant lags the most advanced by more than [`MAX_LAG`]: neither idling
//!   nor a light load banks credit.
//! - **It slows down the tenant ahead of one that waits.** When a tenant
//!   whose threads waited for a CPU during the last tick is behind another
//!   by more than [`LEAD`] of the other's CPU time, the other's process runs
//!   [`SLOW_STEPS`] nice steps lower until it no longer is. A lower priority
//!   still lets it use any CPU nobody else wants, and with less weight on
//!   the CPUs where it runs, the kernel's load balancer moves threads there
//!   from the CPUs the tenants behind wait on: what evens out the pairs
//!   above.
//!
//! A tenant's process is a process group of its own, which it may not leave
//! (its seccomp filter allows neither `setpgid` nor `setsid`, nor
//! `setpriority`), so the arbiter sets the priority of the whole group at
//! once, threads it starts later included (they inherit it). A tenant's
//! process id cannot pass to another process while the supervisor has not
//! collected its exit status, and before it does, the supervisor tells the
//! arbiter, which sets priorities only under the same lock. Giving a
//! process its priority back takes `CAP_SYS_NICE`: without it the arbiter
//! does not start and the supervisor says so. The arbiter runs
//! at real-time priority where it may (at normal priority, on a busy host,
//! one waited seconds for a CPU) and costs about 30 µs a tick for four busy
//! tenants; an idle tenant is looked at every [`IDLE_TICK`] only, and a
//! tick that takes long (many busy tenants, each with many threads) is
//! followed by a pause four times as long, so that the arbiter never takes
//! more than a fifth of a CPU.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{info, warn};

use crate::stats::TenantStats;

/// How often the arbiter measures while tenants are busy.
pub const TICK: Duration = Duration::from_millis(2);
/// How often it looks while every tenant is idle, and at an idle tenant.
pub const IDLE_TICK: Duration = Duration::from_millis(50);
/// How far (in its own CPU time) a tenant may run ahead of one that waits
/// (10 ms evened out about as well, 20 ms not: `docs/benchmarks.md`).
pub const LEAD: Duration = Duration::from_millis(5);
/// How far (in its own CPU time) a busy tenant may lag the most advanced.
pub const MAX_LAG: Duration = Duration::from_millis(20);
/// A tenant whose process used no CPU time for this long is idle.
pub const IDLE_AFTER: Duration = Duration::from_millis(5);
/// Waiting for a CPU this long in a tick makes a tenant one that waits.
const WAITED: Duration = Duration::from_micros(100);
/// How many nice steps lower a tenant ahead runs: about a third of its
/// weight (each step is 1.25 times; 10 steps evened out no better).
pub const SLOW_STEPS: i32 = 5;
/// How often the threads of a tenant's process are listed again.
const RELIST: Duration = Duration::from_millis(50);
/// The most threads of one tenant's process whose waits the arbiter reads
/// (each costs the supervisor a descriptor); a process runs about six and
/// one per engine worker.
pub const MAX_THREADS: usize = 32;
/// `CAP_SYS_NICE`, as a bit of `CapEff` in `/proc/self/status`.
const CAP_SYS_NICE: u32 = 23;

/// What a tenant's process did during one tick.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPU time its threads ran, in nanoseconds.
    pub ran: u64,
    /// Time its threads waited for a CPU, in nanoseconds.
    pub waited: u64,
}

/// A tenant as the policy sees it.
#[derive(Debug)]
struct Account {
    weight: f64,
    /// CPU time used divided by the weight, in nanoseconds.
    vtime: f64,
    activity: Activity,
    slowed: bool,
}

/// Whether a tenant wants CPU time, judged from its samples, not from the
/// clock: a tick that comes late must not make busy tenants look idle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Activity {
    /// No process, or quiet for [`IDLE_AFTER`].
    Idle,
    /// It ran, or waited for a CPU, in its last sample.
    Active,
    /// Neither, in every sample since then.
    Quiet(Instant),
}

impl Account {
    /// Whether the tenant ran or waited for a CPU lately.
    fn busy(&self, now: Instant) -> bool {
        match self.activity {
            Activity::Idle => false,
            Activity::Active => true,
            Activity::Quiet(since) => now.saturating_duration_since(since) < IDLE_AFTER,
        }
    }
}

/// The decisions, tick by tick: which tenants to slow down (weighted fair
/// queueing over the CPU time of processes; see the module's documentation).
#[derive(Debug)]
pub struct Policy {
    accounts: Vec<Account>,
}

impl Policy {
    /// A policy for tenants of `weights` (at least 1 each), all idle.
    #[must_use]
    pub fn new(weights: &[u32]) -> Self {
        let accounts = weights
            .iter()
            .map(|&weight| Account {
                weight: f64::from(weight.max(1)),
                vtime: 0.0,
                activity: Activity::Idle,
                slowed: false,
            })
            .collect();
        Policy { accounts }
    }

    /// Takes one tick's `usage` of each tenant (`None`: no process) at
    /// `now`; returns which tenants to slow down.
    pub fn step(&mut self, usage: &[Option<Usage>], now: Instant) -> Vec<bool> {
        let woke = self.charge(usage, now);
        self.catch_up(&woke, now);
        self.bound_lag(now);
        let furthest_behind = self
            .accounts
            .iter()
            .zip(usage)
            .filter(|(account, usage)| {
                account.busy(now) && usage.is_some_and(|u| u.waited >= as_nanos(WAITED))
            })
            .map(|(account, _)| account.vtime)
            .fold(f64::INFINITY, f64::min);
        for account in &mut self.accounts {
            let lead = as_f64(as_nanos(LEAD)) / account.weight;
            account.slowed = account.busy(now) && account.vtime - furthest_behind > lead;
        }
        self.accounts.iter().map(|a| a.slowed).collect()
    }

    /// Whether tenant `index` is slowed down or used CPU time lately.
    fn busy(&self, index: usize, now: Instant) -> bool {
        self.accounts.get(index).is_some_and(|a| a.busy(now))
    }

    /// Adds each tenant's CPU time to its virtual time and follows its
    /// activity; returns the tenants that were idle until now.
    fn charge(&mut self, usage: &[Option<Usage>], now: Instant) -> Vec<usize> {
        let mut woke = Vec::new();
        for (index, (account, usage)) in self.accounts.iter_mut().zip(usage).enumerate() {
            let Some(usage) = usage else {
                account.activity = Activity::Idle;
                account.slowed = false;
                continue;
            };
            if usage.ran == 0 && usage.waited < as_nanos(WAITED) {
                if account.activity == Activity::Active {
                    account.activity = Activity::Quiet(now);
                }
                continue;
            }
            if !account.busy(now) {
                woke.push(index);
            }
            account.vtime += as_f64(usage.ran) / account.weight;
            account.activity = Activity::Active;
        }
        woke
    }

    /// Tenants `woke` (busy again after idling) start no further behind
    /// than the least advanced of the tenants that stayed busy, or, if
    /// none did, level with the most advanced of them.
    fn catch_up(&mut self, woke: &[usize], now: Instant) {
        let stayed = |index: &usize| !woke.contains(index);
        let floor = self
            .accounts
            .iter()
            .enumerate()
            .filter(|(index, account)| stayed(index) && account.busy(now))
            .map(|(_, account)| account.vtime)
            .reduce(f64::min)
            .or_else(|| {
                let woken = woke.iter().filter_map(|&index| self.accounts.get(index));
                woken.map(|account| account.vtime).reduce(f64::max)
            });
        if let Some(floor) = floor {
            for &index in woke {
                if let Some(account) = self.accounts.get_mut(index) {
                    account.vtime = account.vtime.max(floor);
                }
            }
        }
    }

    /// No busy tenant lags the most advanced by more than [`MAX_LAG`] of
    /// its CPU time: one that used less than its share for long gets ahead
    /// of the others when it waits, for a while, not for as long as it was
    /// light.
    fn bound_lag(&mut self, now: Instant) {
        let busy = self.accounts.iter().filter(|a| a.busy(now));
        let Some(ahead) = busy.map(|a| a.vtime).reduce(f64::max) else {
            return;
        };
        for account in self.accounts.iter_mut().filter(|a| a.busy(now)) {
            let lag = as_f64(as_nanos(MAX_LAG)) / account.weight;
            account.vtime = account.vtime.max(ahead - lag);
        }
    }
}

#[allow(clippy::cast_precision_loss)] // Nanoseconds of CPU time: far below 2^52.
fn as_f64(nanos: u64) -> f64 {
    nanos as f64
}

fn as_nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// A tenant's process as the arbiter follows it.
#[derive(Debug)]
struct Process {
    pid: u32,
    /// Its CPU-time clock.
    clock: libc::clockid_t,
    /// What that said last, in nanoseconds.
    ran: u64,
    /// Each thread's schedstat file and the wait it said last.
    threads: HashMap<u32, (File, u64)>,
    listed: Option<Instant>,
    /// Whether it ran more than [`MAX_THREADS`] threads at once.
    crowded: bool,
    slowed: bool,
}

impl Process {
    /// Process `pid`, from now on.
    fn new(pid: u32) -> io::Result<Self> {
        let mut clock = 0;
        let pid_t = libc::pid_t::try_from(pid).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: writes the clock id to `clock`, a valid out pointer.
        let error = unsafe { libc::clock_getcpuclockid(pid_t, &raw mut clock) };
        if error != 0 {
            return Err(io::Error::from_raw_os_error(error));
        }
        let mut process = Process {
            pid,
            clock,
            ran: 0,
            threads: HashMap::new(),
            listed: None,
            crowded: false,
            slowed: false,
        };
        process.ran = process.cpu_time()?;
        Ok(process)
    }

    /// The CPU time of the whole process so far, in nanoseconds.
    fn cpu_time(&self) -> io::Result<u64> {
        let mut time = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: writes `time`, a valid timespec.
        if unsafe { libc::clock_gettime(self.clock, &raw mut time) } != 0 {
            // EINVAL: the process has ended.
            return Err(io::ErrorKind::NotFound.into());
        }
        let seconds = u64::try_from(time.tv_sec).unwrap_or(0);
        let nanos = u64::try_from(time.tv_nsec).unwrap_or(0);
        Ok(seconds.saturating_mul(1_000_000_000).saturating_add(nanos))
    }

    /// What the process did since the last call (the waits of threads found
    /// since count from when they were found).
    fn sample(&mut self, now: Instant) -> io::Result<Usage> {
        let ran = self.cpu_time()?;
        if self
            .listed
            .is_none_or(|at| now.saturating_duration_since(at) >= RELIST)
        {
            self.relist()?;
            self.listed = Some(now);
        }
        let mut waited = 0u64;
        self.threads.retain(|_, (file, last)| {
            let Ok(now) = read_wait(file) else {
                return false; // The thread has ended.
            };
            waited = waited.saturating_add(now.saturating_sub(*last));
            *last = now;
            true
        });
        let usage = Usage {
            ran: ran.saturating_sub(self.ran),
            waited,
        };
        self.ran = ran;
        Ok(usage)
    }

    /// Opens the schedstat file of each thread not yet followed.
    fn relist(&mut self) -> io::Result<()> {
        let task = format!("/proc/{}/task", self.pid);
        for entry in std::fs::read_dir(&task)? {
            let Some(tid) = entry?.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if self.threads.contains_key(&tid) {
                continue;
            }
            if self.threads.len() >= MAX_THREADS {
                self.crowded = true;
                break;
            }
            // A thread that has just ended is not found.
            let Ok(file) = File::open(format!("{task}/{tid}/schedstat")) else {
                continue;
            };
            if let Ok(waited) = read_wait(&file) {
                self.threads.insert(tid, (file, waited));
            }
        }
        Ok(())
    }

    /// Runs the process at `nice` (all its threads: it is a process group of
    /// its own), if it does not already.
    fn set_priority(&mut self, slow: bool, nice: i32) -> io::Result<()> {
        if self.slowed == slow {
            return Ok(());
        }
        // SAFETY: sets the priority of the tasks of one process group, a
        // tenant's process not yet collected (see the module's
        // documentation); it touches no memory.
        if unsafe { libc::setpriority(libc::PRIO_PGRP, self.pid, nice) } != 0 {
            let error = io::Error::last_os_error();
            // ESRCH: the process has just ended.
            if error.raw_os_error() != Some(libc::ESRCH) {
                return Err(error);
            }
        }
        self.slowed = slow;
        Ok(())
    }
}

/// Reads the time waited for a CPU from a thread's schedstat file (`ran
/// waited slices`).
fn read_wait(file: &File) -> io::Result<u64> {
    let mut buffer = [0u8; 96];
    let length = file.read_at(&mut buffer, 0)?;
    parse_schedstat_wait(buffer.get(..length).unwrap_or_default())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unexpected schedstat"))
}

fn parse_schedstat_wait(text: &[u8]) -> Option<u64> {
    let mut fields = std::str::from_utf8(text).ok()?.split_ascii_whitespace();
    fields.next()?.parse::<u64>().ok()?;
    fields.next()?.parse().ok()
}

/// Whether this process has `CAP_SYS_NICE` in force.
fn may_renice() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| parse_effective_caps(&status))
        .is_some_and(|caps| caps & (1 << CAP_SYS_NICE) != 0)
}

fn parse_effective_caps(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Raises the calling thread above the tenants' threads; says how it runs.
fn raise_priority() -> &'static str {
    let realtime = libc::sched_param { sched_priority: 1 };
    let policy = libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK;
    // SAFETY: changes the scheduling policy of the calling thread only (0:
    // this thread on Linux), from a valid parameter.
    if unsafe { libc::sched_setscheduler(0, policy, &raw const realtime) } == 0 {
        return "at real-time priority (SCHED_FIFO 1)";
    }
    // SAFETY: sets the nice level of the calling thread only (PRIO_PROCESS
    // of 0 is the calling thread on Linux).
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, -10) } == 0 {
        return "at nice -10";
    }
    "at normal priority"
}

/// One tenant, as the supervisor hands it to the arbiter.
#[derive(Debug)]
pub struct Member {
    /// Its counters: its name, and how long it was slowed down.
    pub stats: Arc<TenantStats>,
    /// Its weight.
    pub weight: u32,
    /// The nice level its process runs at ([`crate::fairshare`]).
    pub nice: i32,
}

/// The process serving each tenant (0: none), shared by the supervisor and
/// the arbiter's thread, which changes priorities only while it holds it.
type Pids = Arc<Mutex<Vec<u32>>>;

/// The arbiter's thread in the supervisor, and the process of each tenant
/// it watches.
#[derive(Debug)]
pub struct Arbiter {
    pids: Pids,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Arbiter {
    /// Starts arbitrating between `members`, none of which has a process
    /// yet; `None` (said in the log) if this process may not give a
    /// process its priority back.
    pub fn start(members: Vec<Member>) -> io::Result<Option<Self>> {
        if !may_renice() {
            warn!(
                "fair sharing without the arbiter: the supervisor lacks CAP_SYS_NICE, so the \
                 tenants share by their nice levels alone"
            );
            return Ok(None);
        }
        let pids: Pids = Arc::new(Mutex::new(vec![0; members.len()]));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("accel-arbiter".into())
            .spawn({
                let (pids, stop) = (Arc::clone(&pids), Arc::clone(&stop));
                move || Watch::new(members, pids).run(&stop)
            })?;
        Ok(Some(Arbiter {
            pids,
            stop,
            thread: Some(thread),
        }))
    }

    /// Tenant `index` is now served by process `pid` (0: by none). A
    /// process must be let go before the supervisor collects its status:
    /// once this returns, the arbiter no longer touches it.
    pub fn set_process(&self, index: usize, pid: u32) {
        if let Some(slot) = lock(&self.pids).get_mut(index) {
            *slot = pid;
        }
    }
}

impl Drop for Arbiter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The arbiter's thread: what it watches and how it decided.
struct Watch {
    places: Vec<Place>,
    pids: Pids,
    policy: Policy,
}

/// A tenant, as the arbiter's thread follows it.
struct Place {
    member: Member,
    /// The process the supervisor said serves it (0: none).
    pid: u32,
    /// That process, while the arbiter follows it.
    process: Option<Process>,
    /// When that was last sampled.
    sampled: Option<Instant>,
    /// When the arbiter lost track of it (it could not read it); it gives
    /// the process its priority back, lets it go, and tries again after
    /// [`IDLE_TICK`].
    lost: Option<Instant>,
    /// The kinds of [`Trouble`] said about this process.
    said: u8,
    /// Whether the arbiter gave up slowing the tenant down: it could not
    /// give it its priority back.
    given_up: bool,
}

/// What can go wrong with a tenant's process, each said once per process.
#[derive(Clone, Copy, Debug)]
enum Trouble {
    /// More threads than [`MAX_THREADS`].
    Crowded = 1,
    /// Its CPU time cannot be read.
    Unreadable = 2,
    /// Its priority cannot be set.
    Priority = 4,
}

impl Watch {
    fn new(members: Vec<Member>, pids: Pids) -> Self {
        let weights: Vec<u32> = members.iter().map(|m| m.weight).collect();
        let places = members.into_iter().map(|member| Place {
            member,
            pid: 0,
            process: None,
            sampled: None,
            lost: None,
            said: 0,
            given_up: false,
        });
        Watch {
            places: places.collect(),
            pids,
            policy: Policy::new(&weights),
        }
    }

    fn run(mut self, stop: &AtomicBool) {
        info!(
            "fair sharing: the supervisor's arbiter runs {}; it slows down a tenant more than \
             {LEAD:?} of CPU time ahead of one that waits",
            raise_priority()
        );
        let mut last = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let usage = self.sample(now);
            let slow = self.policy.step(&usage, now);
            self.apply(&slow, now.saturating_duration_since(last));
            last = now;
            let busy = usage.iter().flatten().any(|u| u.ran > 0);
            let spent = now.elapsed();
            std::thread::sleep(if busy { TICK.max(spent * 4) } else { IDLE_TICK });
        }
        self.apply(&vec![false; self.places.len()], Duration::ZERO);
    }

    /// One tick's usage of each tenant's process.
    fn sample(&mut self, now: Instant) -> Vec<Option<Usage>> {
        let pids = lock(&self.pids).clone();
        let places = self.places.iter_mut().zip(pids).enumerate();
        places
            .map(|(index, (place, pid))| {
                let idle = !self.policy.busy(index, now);
                place.sample(pid, idle, now)
            })
            .collect()
    }

    /// Slows down the tenants of `slow` and no others, those whose process
    /// the supervisor has not let go meanwhile; counts `elapsed` as slowed
    /// for those that were.
    fn apply(&mut self, slow: &[bool], elapsed: Duration) {
        let pids = lock(&self.pids);
        let places = self.places.iter_mut().zip(slow).zip(pids.iter());
        for ((place, &slow), &pid) in places {
            if place.pid == pid {
                place.apply(slow, elapsed);
            }
        }
    }
}

fn lock(pids: &Mutex<Vec<u32>>) -> std::sync::MutexGuard<'_, Vec<u32>> {
    pids.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Place {
    /// The usage of process `pid` (0: none) since the last sample; zero if
    /// the tenant is `idle` and was sampled less than [`IDLE_TICK`] ago.
    fn sample(&mut self, pid: u32, idle: bool, now: Instant) -> Option<Usage> {
        let retry = self
            .lost
            .is_some_and(|at| now.saturating_duration_since(at) >= IDLE_TICK);
        if self.pid != pid || (retry && self.process.is_none()) {
            self.follow(pid, now);
        }
        if self.lost.is_some() {
            return None;
        }
        let recent = self
            .sampled
            .is_some_and(|at| now.saturating_duration_since(at) < IDLE_TICK);
        if idle && recent {
            return Some(Usage::default());
        }
        let process = self.process.as_mut()?;
        match process.sample(now) {
            Ok(usage) => {
                self.sampled = Some(now);
                if process.crowded {
                    self.say(
                        Trouble::Crowded,
                        &format!(
                            "its process runs more than {MAX_THREADS} threads; the arbiter \
                             reads the waits of {MAX_THREADS}"
                        ),
                    );
                }
                Some(usage)
            }
            // The process has just ended: the supervisor will hear.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.process = None;
                None
            }
            Err(e) => {
                self.say(
                    Trouble::Unreadable,
                    &format!("cannot read its CPU time ({e})"),
                );
                self.lost = Some(now);
                None
            }
        }
    }

    /// Follows process `pid` (0: none) instead of the one before (which has
    /// ended, or was lost and given its priority back).
    fn follow(&mut self, pid: u32, now: Instant) {
        if self.pid != pid {
            self.said = 0;
        }
        self.pid = pid;
        self.process = None;
        self.sampled = None;
        self.lost = None;
        if pid == 0 {
            return;
        }
        match Process::new(pid) {
            Ok(process) => self.process = Some(process),
            Err(e) => {
                let what = format!("cannot read the CPU time of process {pid} ({e})");
                self.say(Trouble::Unreadable, &what);
                self.lost = Some(now);
            }
        }
    }

    /// Slows the tenant's process down or not (not if it was lost, which
    /// is then let go); counts `elapsed` as slowed if it was.
    fn apply(&mut self, slow: bool, elapsed: Duration) {
        let Some(process) = &mut self.process else {
            return;
        };
        if process.slowed {
            self.member.stats.slowed_for(elapsed);
        }
        let slow = slow && !self.given_up && self.lost.is_none();
        let nice = if slow {
            self.member.nice.saturating_add(SLOW_STEPS).min(19)
        } else {
            self.member.nice
        };
        if let Err(e) = process.set_priority(slow, nice) {
            self.given_up = true;
            let what = format!("cannot set the priority of its process ({e}); not slowed again");
            self.say(Trouble::Priority, &what);
        } else if self.lost.is_some() {
            self.process = None;
        }
    }

    /// Logs `what` went wrong with the tenant, once per kind and process.
    fn say(&mut self, kind: Trouble, what: &str) {
        let bit = kind as u8;
        if self.said & bit == 0 {
            self.said |= bit;
            warn!("fair sharing: tenant {}: {what}", self.member.stats.name());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const MS: u64 = 1_000_000;

    /// A tenant that ran `ran_ms` in the tick, and waited for a CPU or not.
    fn busy(ran_ms: u64, waited: bool) -> Option<Usage> {
        Some(Usage {
            ran: ran_ms * MS,
            waited: if waited { MS } else { 0 },
        })
    }

    /// A tenant that neither ran nor waited.
    const QUIET: Option<Usage> = Some(Usage { ran: 0, waited: 0 });

    /// A policy fed one sample per tick, [`TICK`] apart unless told.
    struct Ticks {
        policy: Policy,
        now: Instant,
    }

    impl Ticks {
        fn new(weights: &[u32]) -> Self {
            Ticks {
                policy: Policy::new(weights),
                now: Instant::now(),
            }
        }

        /// The decisions at the next tick, which saw `usage`.
        fn tick(&mut self, usage: &[Option<Usage>]) -> Vec<bool> {
            self.after(TICK, usage)
        }

        /// The decisions at a tick `late` after the last.
        fn after(&mut self, late: Duration, usage: &[Option<Usage>]) -> Vec<bool> {
            self.now += late;
            self.policy.step(usage, self.now)
        }

        /// `count` ticks of the same `usage`; the decisions of each.
        fn run(&mut self, count: usize, usage: &[Option<Usage>]) -> Vec<Vec<bool>> {
            (0..count).map(|_| self.tick(usage)).collect()
        }
    }

    const NOBODY: [bool; 2] = [false, false];
    const THE_FIRST: [bool; 2] = [true, false];

    #[test]
    fn a_tenant_ahead_of_one_that_waits_is_slowed_down() {
        let mut ticks = Ticks::new(&[1, 1]);
        assert_eq!(ticks.tick(&[busy(2, false), busy(2, true)]), NOBODY);
        // The first runs 5 ms more: within the lead, nobody is slowed.
        assert_eq!(ticks.tick(&[busy(6, false), busy(1, true)]), NOBODY);
        assert_eq!(ticks.tick(&[busy(2, false), busy(1, true)]), THE_FIRST);
        // Caught up: it runs at its priority again.
        assert_eq!(ticks.tick(&[busy(0, false), busy(4, true)]), NOBODY);
    }

    #[test]
    fn nobody_is_slowed_while_the_tenant_behind_does_not_wait() {
        let mut ticks = Ticks::new(&[1, 1]);
        let decisions = ticks.run(10, &[busy(2, true), busy(1, false)]);
        assert!(decisions.iter().all(|d| *d == NOBODY), "{decisions:?}");
    }

    #[test]
    fn weights_set_the_lead_in_cpu_time() {
        let mut ticks = Ticks::new(&[2, 1]);
        // Weight 2 using twice the CPU time of weight 1 is even.
        let decisions = ticks.run(10, &[busy(4, false), busy(2, true)]);
        assert!(decisions.iter().all(|d| *d == NOBODY), "{decisions:?}");
        // Beyond, it may run ahead by 5 ms of its CPU time, 2.5 ms of
        // virtual time.
        assert_eq!(ticks.tick(&[busy(7, false), busy(1, true)]), NOBODY);
        assert_eq!(ticks.tick(&[busy(4, false), busy(1, true)]), THE_FIRST);
    }

    #[test]
    fn idling_banks_no_credit() {
        let mut ticks = Ticks::new(&[1, 1]);
        // The second tenant idles while the first runs 100 ms.
        ticks.run(50, &[busy(2, false), QUIET]);
        // Back, it starts level with the first: it does not slow it down
        // for the 100 ms it did not use.
        let decisions = ticks.run(2, &[busy(1, false), busy(1, true)]);
        assert_eq!(decisions, [NOBODY, NOBODY]);
    }

    #[test]
    fn tenants_busy_again_together_start_level() {
        let mut ticks = Ticks::new(&[1, 1]);
        ticks.run(50, &[busy(2, false), QUIET]);
        // Both idle, then both busy in the same tick: the one that ran
        // 100 ms before is slowed down for nobody.
        ticks.tick(&[QUIET, QUIET]);
        ticks.after(IDLE_AFTER * 2, &[QUIET, QUIET]);
        let decisions = ticks.run(2, &[busy(1, false), busy(1, true)]);
        assert_eq!(decisions, [NOBODY, NOBODY]);
    }

    #[test]
    fn a_late_tick_keeps_the_lag() {
        let mut ticks = Ticks::new(&[1, 1]);
        assert_eq!(ticks.tick(&[busy(2, false), busy(2, true)]), NOBODY);
        assert_eq!(ticks.tick(&[busy(4, false), busy(1, true)]), NOBODY);
        // The next tick comes 20 ms late: both were busy all along.
        let late = Duration::from_millis(20);
        assert_eq!(
            ticks.after(late, &[busy(4, false), busy(1, true)]),
            THE_FIRST
        );
    }

    #[test]
    fn a_tenant_that_waits_without_running_is_not_idle() {
        let mut ticks = Ticks::new(&[1, 1]);
        ticks.tick(&[busy(2, false), busy(2, true)]);
        let starved = Some(Usage { ran: 0, waited: MS });
        let decisions = ticks.run(10, &[busy(2, false), starved]);
        assert_eq!(decisions.last(), Some(&THE_FIRST.to_vec()));
    }

    #[test]
    fn a_light_tenant_banks_a_bounded_lead() {
        let mut ticks = Ticks::new(&[1, 1]);
        // The second uses 0.1 ms per tick while the first uses 2 ms, for 1 s.
        let light = Some(Usage {
            ran: MS / 10,
            waited: 0,
        });
        ticks.run(500, &[busy(2, false), light]);
        // Then both flood: the first is slowed down (and, here, runs no
        // more) while the second uses its bounded credit, and runs again
        // once that is spent.
        let mut slowed_ticks = 0;
        for _ in 0..50 {
            if ticks.tick(&[busy(2, true), busy(2, true)])[0] {
                slowed_ticks += 1;
                ticks.after(Duration::ZERO, &[QUIET, busy(2, true)]);
            }
        }
        assert!((1..=10).contains(&slowed_ticks), "{slowed_ticks}");
    }

    #[test]
    fn a_tenant_without_a_process_slows_nobody_down() {
        let mut ticks = Ticks::new(&[1, 1]);
        assert_eq!(ticks.tick(&[busy(9, false), None]), NOBODY);
        assert_eq!(ticks.tick(&[busy(9, true), None]), NOBODY);
    }

    #[test]
    fn proc_lines_parse() {
        assert_eq!(parse_schedstat_wait(b"123 456 7\n"), Some(456));
        assert_eq!(parse_schedstat_wait(b"123\n"), None);
        assert_eq!(parse_schedstat_wait(b"x 1 2\n"), None);
        let status = "Name:\tx\nCapEff:\t0000000000800000\n";
        assert_eq!(parse_effective_caps(status), Some(1 << CAP_SYS_NICE));
        assert_eq!(parse_effective_caps("Name:\tx\n"), None);
    }

    /// A child in a process group of its own, as tenants' processes are.
    fn child_in_own_group() -> std::process::Child {
        use std::os::unix::process::CommandExt;
        std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap()
    }

    fn nice_of(pid: u32) -> i32 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields = stat.rsplit_once(") ").unwrap().1;
        fields.split(' ').nth(16).unwrap().parse().unwrap()
    }

    #[test]
    fn a_slowed_process_runs_lower_and_gets_its_priority_back() {
        let mut child = child_in_own_group();
        let mut process = Process::new(child.id()).unwrap();
        let base = nice_of(child.id());
        let slowed = (base + SLOW_STEPS).min(19);
        process.set_priority(true, slowed).unwrap();
        assert_eq!(nice_of(child.id()), slowed);
        if may_renice() {
            process.set_priority(false, base).unwrap();
            assert_eq!(nice_of(child.id()), base);
        } else {
            println!("*** SKIPPED: giving a priority back needs CAP_SYS_NICE; NOT TESTED HERE ***");
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn a_process_clock_counts_every_thread() {
        let mut process = Process::new(std::process::id()).unwrap();
        // A thread that ends before the sample counts too.
        // It spins until it has used 20 ms: however loaded the machine,
        // that much ran.
        std::thread::spawn(|| {
            while thread_cpu_time() < Duration::from_millis(20) {
                std::hint::spin_loop();
            }
        })
        .join()
        .unwrap();
        assert!(process.sample(Instant::now()).unwrap().ran >= 20 * MS);
    }

    /// The CPU time of the calling thread.
    fn thread_cpu_time() -> Duration {
        let mut time = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: writes `time`, a valid timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut time) };
        Duration::new(
            time.tv_sec.try_into().unwrap(),
            time.tv_nsec.try_into().unwrap(),
        )
    }

    #[test]
    fn an_ended_process_is_let_go() {
        let mut child = child_in_own_group();
        let mut process = Process::new(child.id()).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        let error = process.sample(Instant::now()).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
    }
}
