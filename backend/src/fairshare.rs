// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Sharing the host CPU between tenants' processes by weight.
//!
//! Each tenant's process runs its own engine, so sharing the engine by
//! weight is sharing CPU time between processes, which the kernel's
//! scheduler does. Four rules make it share evenly:
//!
//! - **Every tenant's thread is a sibling of every other's.** Where the
//!   daemon may create cgroups, all tenants' processes go into one `cpu`
//!   cgroup under the daemon's own, `vhost-user-accel-PID`, which weighs as
//!   much as that many processes at the default weight (`cpu.shares =
//!   1024 × tenants` on cgroup v1, `cpu.weight = 100 × tenants` on v2), so
//!   that the tenants together hold their place against the rest of the host
//!   however many threads they run. Inside it there is no cgroup per tenant:
//!   the scheduler is fair between the tasks of a run queue and the load
//!   balancer spreads tasks over the CPUs by weight, but between cgroups it
//!   is fair only CPU by CPU, each cgroup's weight being split between the
//!   CPUs after where its threads happen to be, which the balancer does not
//!   even out. Measured with `accel-fairness` (4 equal tenants, 2 CPUs, 5 s
//!   runs): with a cgroup per tenant one tenant's process got 0.06 of a CPU
//!   and another 0.81 for a whole run, the starved one's threads runnable
//!   and waiting all along (Jain index of the rates 0.61 to 0.98, median
//!   0.86); with the threads as siblings every process got 0.36 to 0.56 of
//!   a CPU (medians 0.986 to 0.998).
//! - **Weights are nice levels**, set on a tenant's process before it starts
//!   any thread, so every thread inherits it: each tenant's process runs
//!   `log_1.25(max weight / its weight)` nice steps (capped at 19) below the
//!   heaviest tenant (one nice step is about 1.25× CPU weight); equal
//!   weights all run at the daemon's own priority. Without cgroups this is
//!   the whole mechanism. Threads that weigh differently for another reason
//!   would skew it, the load balancer spreading weight, not threads: with
//!   several tenants the engine's workers therefore run at their process's
//!   priority whatever `engine-nice` says ([`engine_nice`]; ten steps down,
//!   they crowded unevenly: tenants' processes got 0.35 to 0.64 of a CPU).
//! - **Tenants together run no more engine workers than the host has CPUs**
//!   ([`engine_threads`]: `engine-threads` each, fewer when tenants × that
//!   exceeds the CPUs, at least one), so that busy tenants cannot hold every
//!   CPU with engine work while another tenant's request waits for one.
//!   Measured (2 CPUs, a victim of 4 KiB CRC-32C jobs one at a time next to
//!   a tenant keeping 16 copies of 1 MiB in flight): with two workers each,
//!   the victim's p99 latency was 3 to 7 times its p99 alone; with one each,
//!   0.6 to 2.3 times, median 1.1 (on a machine whose other load alone moved
//!   the victim's solo p99 between 150 µs and 2 ms). The price: a tenant busy
//!   while the others idle uses only its share of the CPUs, and 4 busy
//!   tenants on 2 CPUs complete about 15% fewer jobs than with two workers
//!   each.
//! - **The supervisor slows down a tenant ahead of one that waits**
//!   ([`crate::arbiter`]): with the rules above, a pair of tenants sharing
//!   one CPU could still get 0.47 of a CPU each and the pair on the other
//!   0.40 for as long as the balancer left them there (Jain index below
//!   0.99 in about half the runs of `accel-fairness`). The arbiter reads
//!   each process's CPU time from the kernel and lowers the priority of a
//!   tenant ahead of one that waits until the other catches up.
//!
//! On cgroup v2 a controller can only be enabled for children of a cgroup
//! with no process in it, so the daemon first moves itself into a
//! `supervisor` child of its cgroup (what a systemd unit with `Delegate=yes`
//! expects of it).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use log::{info, warn};

use crate::config::{Config, TenantConfig};

/// Where cgroup file systems are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Prefix of the name of a daemon's cgroup, followed by its pid.
const GROUP_PREFIX: &str = "vhost-user-accel-";

/// A cgroup hierarchy with the `cpu` controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// The unified hierarchy (v2): `cpu.weight`.
    V2,
    /// A v1 hierarchy with the `cpu` controller: `cpu.shares`.
    V1,
}

/// Where the tenants' processes run, besides their nice levels.
#[derive(Debug)]
pub enum FairShare {
    /// All of them in one cgroup, `dir`.
    Cgroup {
        /// The kind of hierarchy.
        hierarchy: Hierarchy,
        /// The cgroup of every tenant's process.
        dir: PathBuf,
    },
    /// Wherever the supervisor runs.
    Inherited,
}

impl FairShare {
    /// Makes the cgroup of the tenants of `config` if the daemon may; logs
    /// how they will share the CPU.
    pub fn set_up(config: &Config) -> Self {
        let tenants = &config.tenants;
        let (share, place) = match Self::cgroup(tenants.len()) {
            Ok((hierarchy, dir)) => {
                let place = format!(
                    "one cpu cgroup for all tenants ({} {}) at {}",
                    hierarchy.weight_file(),
                    hierarchy.group_value(tenants.len()),
                    dir.display()
                );
                (FairShare::Cgroup { hierarchy, dir }, place)
            }
            Err(e) => (
                FairShare::Inherited,
                format!("the daemon's own cgroup (none can be made: {e})"),
            ),
        };
        info!(
            "fair sharing: tenants' threads side by side in {place}, weights as nice levels, \
             {} engine worker(s) per tenant for {} CPUs, {} nice steps below their process",
            engine_threads(config.engine_threads, tenants.len()),
            host_cpus(),
            engine_nice(config.engine_nice, tenants.len())
        );
        share
    }

    /// Makes the daemon's cgroup for `tenants` tenants: in the v1 `cpu`
    /// hierarchy, else in the unified one if the `cpu` controller is
    /// delegated to the daemon.
    fn cgroup(tenants: usize) -> io::Result<(Hierarchy, PathBuf)> {
        let own = fs::read_to_string("/proc/self/cgroup")?;
        if let Some(path) = v1_cpu_path(&own) {
            let base = Path::new(CGROUP_ROOT).join("cpu").join(relative(path));
            return make_group(Hierarchy::V1, &base, tenants);
        }
        let path = v2_path(&own).ok_or_else(|| io::Error::other("no cpu cgroup hierarchy"))?;
        let own_dir = Path::new(CGROUP_ROOT).join(relative(path));
        let controllers = fs::read_to_string(own_dir.join("cgroup.controllers"))?;
        if !controllers.split_whitespace().any(|c| c == "cpu") {
            return Err(io::Error::other("the cpu controller is not delegated"));
        }
        // Moving into a child is only safe (and enabling controllers only
        // possible) if the daemon is alone in its cgroup.
        let procs = fs::read_to_string(own_dir.join("cgroup.procs"))?;
        if procs
            .split_whitespace()
            .ne([std::process::id().to_string().as_str()])
        {
            return Err(io::Error::other(
                "the daemon's cgroup holds other processes (delegate one to it)",
            ));
        }
        let supervisor = own_dir.join("supervisor");
        create_dir_if_missing(&supervisor)?;
        fs::write(
            supervisor.join("cgroup.procs"),
            std::process::id().to_string(),
        )?;
        fs::write(own_dir.join("cgroup.subtree_control"), "+cpu")?;
        make_group(Hierarchy::V2, &own_dir, tenants)
    }

    /// Places the new process `pid` of `tenant`, among `tenants`, before it
    /// starts any thread: in the tenants' cgroup, at its nice level.
    pub fn place(&self, pid: u32, tenant: &TenantConfig, tenants: &[TenantConfig]) {
        let moved = match self {
            FairShare::Cgroup { dir, .. } => fs::write(dir.join("cgroup.procs"), pid.to_string()),
            FairShare::Inherited => Ok(()),
        };
        let niced = set_nice(pid, process_nice(tenant, tenants));
        if let Err(e) = moved.and(niced) {
            warn!(
                "tenant {}: cannot give its process {pid} its CPU share: {e}",
                tenant.name
            );
        }
    }

    /// Gives the tenants' cgroup the weight of `tenants` tenants, after a
    /// reload changed their number.
    pub fn resize(&self, tenants: usize) {
        if let FairShare::Cgroup { hierarchy, dir } = self {
            let value = hierarchy.group_value(tenants).to_string();
            if let Err(e) = fs::write(dir.join(hierarchy.weight_file()), value) {
                warn!("fair sharing: cannot weigh the tenants' cgroup for {tenants} tenants: {e}");
            }
        }
    }

    /// Removes the cgroup once no process is left in it.
    pub fn tear_down(&self) {
        if let FairShare::Cgroup { dir, .. } = self {
            remove_tree(dir);
        }
    }
}

/// Makes this daemon's cgroup for `tenants` tenants under `base`.
fn make_group(
    hierarchy: Hierarchy,
    base: &Path,
    tenants: usize,
) -> io::Result<(Hierarchy, PathBuf)> {
    remove_stale(base);
    let dir = base.join(format!("{GROUP_PREFIX}{}", std::process::id()));
    fs::create_dir(&dir)?;
    let value = hierarchy.group_value(tenants).to_string();
    if let Err(e) = fs::write(dir.join(hierarchy.weight_file()), value) {
        let _ = fs::remove_dir(&dir);
        return Err(e);
    }
    Ok((hierarchy, dir))
}

/// The CPUs this process may run on.
fn host_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// Engine workers of each tenant's process, for `tenants` tenants configured
/// with `configured` workers each: as many, unless together they would
/// outnumber the host's CPUs; then an equal share of those, at least one.
/// (Equal for every tenant: weights, as nice levels, act per thread.)
pub fn engine_threads(configured: usize, tenants: usize) -> usize {
    workers_within(configured, tenants, host_cpus())
}

fn workers_within(configured: usize, tenants: usize, cpus: usize) -> usize {
    configured.min(cpus / tenants.max(1)).max(1)
}

/// Nice steps of each tenant's engine workers below the rest of its
/// process, for `tenants` tenants configured with `configured`: as
/// configured for a daemon of one tenant, whose requests may so pass its
/// engine work; none with several, whose shares of the CPUs stay even only
/// if their threads weigh alike.
pub fn engine_nice(configured: i32, tenants: usize) -> i32 {
    if tenants > 1 {
        0
    } else {
        configured
    }
}

/// Removes the empty cgroups of daemons that died without tearing theirs
/// down (killed with SIGKILL): those named after a process that is gone.
fn remove_stale(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.strip_prefix(GROUP_PREFIX))
            .and_then(|pid| pid.parse::<u32>().ok());
        if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            remove_tree(&entry.path());
        }
    }
}

/// Removes a daemon's cgroup, and any cgroup in it (earlier versions made
/// one per tenant); rmdir refuses any that still holds a process.
fn remove_tree(root: &Path) {
    if let Ok(entries) = fs::read_dir(root) {
        for entry in entries.flatten().filter(|e| e.path().is_dir()) {
            let _ = fs::remove_dir(entry.path());
        }
    }
    let _ = fs::remove_dir(root);
}

impl Hierarchy {
    fn weight_file(&self) -> &'static str {
        match self {
            Hierarchy::V2 => "cpu.weight",
            Hierarchy::V1 => "cpu.shares",
        }
    }

    /// The value for the group of `tenants` tenants: as much as that many
    /// processes (v1) or cgroups (v2) at the default weight.
    fn group_value(&self, tenants: usize) -> u64 {
        let tenants = u64::try_from(tenants).unwrap_or(u64::MAX);
        match self {
            Hierarchy::V2 => tenants.saturating_mul(100).clamp(1, 10_000),
            Hierarchy::V1 => tenants.saturating_mul(1024).clamp(2, 262_144),
        }
    }
}

fn create_dir_if_missing(dir: &Path) -> io::Result<()> {
    match fs::create_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

/// A cgroup path from /proc/self/cgroup, relative to its hierarchy's mount.
fn relative(path: &str) -> &str {
    path.trim_start_matches('/')
}

/// The path of the v1 hierarchy whose controllers include `cpu`, if that
/// hierarchy is mounted where this module looks for it.
fn v1_cpu_path(own: &str) -> Option<&str> {
    let path = own.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        controllers.split(',').any(|c| c == "cpu").then_some(path)
    })?;
    Path::new(CGROUP_ROOT)
        .join("cpu/cpu.shares")
        .exists()
        .then_some(path)
}

/// The path of the unified hierarchy (`0::PATH`).
fn v2_path(own: &str) -> Option<&str> {
    own.lines().find_map(|line| line.strip_prefix("0::"))
}

/// Nice steps below the heaviest of `tenants` for a tenant of `weight`.
fn nice_level(weight: u32, tenants: &[TenantConfig]) -> i32 {
    let heaviest = f64::from(tenants.iter().map(|t| t.weight).max().unwrap_or(weight));
    let (mut steps, mut scaled) = (0, f64::from(weight.max(1)));
    // One more step while the next level is nearer to the heaviest weight
    // (past their geometric midpoint).
    while steps < 19 && scaled * 1.25f64.sqrt() < heaviest {
        scaled *= 1.25;
        steps += 1;
    }
    steps
}

/// The nice level of the process of `tenant`, among `tenants`: this
/// thread's, lowered by the tenant's steps below the heaviest.
pub fn process_nice(tenant: &TenantConfig, tenants: &[TenantConfig]) -> i32 {
    // SAFETY: reads the calling thread's priority; a failure (-1) would
    // only make every tenant's level one higher, equally.
    let own = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    own.saturating_add(nice_level(tenant.weight, tenants))
        .min(19)
}

/// Sets the nice level of process `pid` (a child that has not started
/// threads yet, so that its threads inherit it) to `level`.
fn set_nice(pid: u32, level: i32) -> io::Result<()> {
    // SAFETY: reads the calling thread's priority, as above.
    if level == unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) } {
        return Ok(());
    }
    // SAFETY: sets the priority of one process, a child of this one.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, pid, level) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SocketSource;

    fn weighted(weights: &[u32]) -> Vec<TenantConfig> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| TenantConfig {
                weight: *w,
                ..TenantConfig::new(i.to_string(), SocketSource::Fd(-1))
            })
            .collect()
    }

    #[test]
    fn nice_levels_follow_weights() {
        let tenants = weighted(&[1, 1, 4, 1000]);
        assert_eq!(nice_level(1000, &tenants), 0);
        assert_eq!(nice_level(4, &tenants), 19);
        assert_eq!(nice_level(1, &weighted(&[1, 1])), 0);
        // 4 / 1.25^6 ~ 1.05: six steps for a quarter of the weight.
        assert_eq!(nice_level(1, &weighted(&[1, 4])), 6);
    }

    #[test]
    fn tenants_together_run_no_more_workers_than_cpus() {
        // Alone, or few on many CPUs: as configured.
        assert_eq!(workers_within(2, 1, 2), 2);
        assert_eq!(workers_within(2, 3, 16), 2);
        // Two or more per CPU's worth: their share, at least one.
        assert_eq!(workers_within(2, 2, 2), 1);
        assert_eq!(workers_within(2, 4, 2), 1);
        assert_eq!(workers_within(8, 3, 16), 5);
        assert_eq!(workers_within(1, 1024, 2), 1);
        assert_eq!(workers_within(4, 0, 2), 2);
        assert!(engine_threads(256, 1) <= host_cpus());
    }

    #[test]
    fn workers_weigh_like_their_process_beside_other_tenants() {
        assert_eq!(engine_nice(10, 1), 10);
        assert_eq!(engine_nice(10, 2), 0);
        assert_eq!(engine_nice(0, 1), 0);
    }

    #[test]
    fn cgroup_paths_are_found_in_either_hierarchy() {
        let hybrid = "12:cpu,cpuacct:/system.slice/a.service\n0::/system.slice/a.service\n";
        assert_eq!(v2_path(hybrid), Some("/system.slice/a.service"));
        assert_eq!(v2_path("1:cpu:/\n"), None);
        assert_eq!(relative("/a/b"), "a/b");
        assert_eq!(Hierarchy::V1.group_value(4), 4096);
        assert_eq!(Hierarchy::V2.group_value(4), 400);
        assert_eq!(Hierarchy::V2.group_value(1000), 10_000);
    }

    /// What the kernel says of process `pid`: its cgroup lines and its nice
    /// value.
    fn placement(pid: u32) -> (String, i64) {
        let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // After the command name, the nice value is the 17th field.
        let nice = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split(' ').nth(16)?.parse().ok())
            .unwrap_or(i64::MIN);
        (cgroup, nice)
    }

    #[test]
    fn tenants_processes_share_one_cgroup_at_their_nice_levels() {
        let tenants = weighted(&[4, 1]);
        let share = FairShare::set_up(&Config::with_tenants(tenants.clone()));
        let FairShare::Cgroup { dir, .. } = &share else {
            println!(
                "*** SKIPPED: this process may not make a cpu cgroup (not root, or no \
                 delegated cpu controller): placement in a cgroup NOT TESTED HERE ***"
            );
            return;
        };
        let mut children: Vec<std::process::Child> = (0..2)
            .map(|_| {
                std::process::Command::new("sleep")
                    .arg("30")
                    .spawn()
                    .unwrap_or_else(|e| panic!("cannot start sleep: {e}"))
            })
            .collect();
        for (child, tenant) in children.iter().zip(&tenants) {
            share.place(child.id(), tenant, &tenants);
        }
        let group = dir.to_string_lossy().into_owned();
        let group_name = group.rsplit('/').next().unwrap_or_default().to_owned();
        let placed: Vec<(String, i64)> = children.iter().map(|c| placement(c.id())).collect();
        for child in &mut children {
            let _ = child.kill();
            let _ = child.wait();
        }
        share.tear_down();
        let (own_nice, heavy, light) = (placement(std::process::id()).1, &placed[0], &placed[1]);
        for (cgroup, _) in [heavy, light] {
            // The same cgroup for both, directly: no cgroup per tenant.
            assert!(
                cgroup
                    .lines()
                    .any(|line| line.ends_with(&format!("/{group_name}"))),
                "{cgroup}"
            );
        }
        assert_eq!(heavy.1, own_nice);
        // A quarter of the weight: six nice steps lower (capped at 19).
        assert_eq!(light.1, (own_nice + 6).min(19));
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}
