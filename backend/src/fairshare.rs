//! Sharing the host CPU between tenants' processes by weight.
//!
//! Each tenant's process runs its own engine, so sharing the engine by
//! weight is sharing CPU time between processes. Two mechanisms, chosen at
//! start-up and logged:
//! - **cgroups**, where the daemon may create them: a `cpu` cgroup per
//!   tenant with `cpu.weight = 100 × weight` (cgroup v2) or
//!   `cpu.shares = 1024 × weight` (v1), under the daemon's own cgroup. The
//!   kernel then shares CPU time between tenants by weight however many
//!   threads each runs.
//! - **nice levels** otherwise: each tenant's process runs
//!   `log_1.25(max weight / its weight)` nice steps (capped at 19) below the
//!   heaviest tenant (one nice step is about 1.25× CPU weight), so equal
//!   weights all run at the daemon's own priority.
//!
//! On cgroup v2 a controller can only be enabled for children of a cgroup
//! with no process in it, so the daemon first moves itself into a
//! `supervisor` child of its cgroup (what a systemd unit with `Delegate=yes`
//! expects of it).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use log::{info, warn};

use crate::config::TenantConfig;

/// Where cgroup file systems are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// A cgroup hierarchy with the `cpu` controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// The unified hierarchy (v2): `cpu.weight`.
    V2,
    /// A v1 hierarchy with the `cpu` controller: `cpu.shares`.
    V1,
}

/// How tenants' processes share the CPU.
#[derive(Debug)]
pub enum FairShare {
    /// A cgroup per tenant, created under `root`.
    Cgroups {
        /// The kind of hierarchy.
        hierarchy: Hierarchy,
        /// The directory holding the tenants' cgroups.
        root: PathBuf,
    },
    /// Nice levels, relative to the supervisor's.
    Nice,
}

impl FairShare {
    /// Sets up cgroups for `tenants` if the daemon may, else nice levels;
    /// logs which. The group of all tenants weighs as much as that many
    /// processes at the daemon's priority would.
    pub fn set_up(tenants: &[TenantConfig]) -> Self {
        match Self::cgroups(tenants.len()) {
            Ok(share) => {
                if let FairShare::Cgroups { hierarchy, root } = &share {
                    info!(
                        "fair sharing: a cpu cgroup per tenant ({}) under {}",
                        hierarchy.weight_file(),
                        root.display()
                    );
                }
                share
            }
            Err(e) => {
                info!("fair sharing: nice levels (no cpu cgroup can be made: {e})");
                FairShare::Nice
            }
        }
    }

    fn cgroups(tenants: usize) -> io::Result<Self> {
        let own = fs::read_to_string("/proc/self/cgroup")?;
        if let Some(path) = v1_cpu_path(&own) {
            let base = Path::new(CGROUP_ROOT).join("cpu").join(relative(path));
            remove_stale(&base);
            let root = base.join(format!("vhost-user-accel-{}", std::process::id()));
            fs::create_dir(&root)?;
            let hierarchy = Hierarchy::V1;
            hierarchy.set_value(&root, hierarchy.group_value(tenants))?;
            return Ok(FairShare::Cgroups { hierarchy, root });
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
        remove_stale(&own_dir);
        let root = own_dir.join(format!("vhost-user-accel-{}", std::process::id()));
        fs::create_dir(&root)?;
        fs::write(root.join("cgroup.subtree_control"), "+cpu")?;
        let hierarchy = Hierarchy::V2;
        hierarchy.set_value(&root, hierarchy.group_value(tenants))?;
        Ok(FairShare::Cgroups { hierarchy, root })
    }

    /// Places the new process `pid` of `tenant`, among `tenants`, in its
    /// share: its cgroup, or its nice level.
    pub fn place(&self, pid: u32, tenant: &TenantConfig, tenants: &[TenantConfig]) {
        let result = match self {
            FairShare::Cgroups { hierarchy, root } => {
                place_in_cgroup(hierarchy, &root.join(&tenant.name), pid, tenant.weight)
            }
            FairShare::Nice => set_nice(pid, nice_level(tenant.weight, tenants)),
        };
        if let Err(e) = result {
            warn!(
                "tenant {}: cannot give its process {pid} its CPU share: {e}",
                tenant.name
            );
        }
    }

    /// Removes the cgroups once no process is left in them.
    pub fn tear_down(&self) {
        if let FairShare::Cgroups { root, .. } = self {
            remove_tree(root);
        }
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
            .and_then(|n| n.strip_prefix("vhost-user-accel-"))
            .and_then(|pid| pid.parse::<u32>().ok());
        if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            remove_tree(&entry.path());
        }
    }
}

/// Removes a daemon's cgroup and its tenants' (rmdir refuses any that still
/// holds a process).
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

    fn set_value(&self, dir: &Path, value: u64) -> io::Result<()> {
        fs::write(dir.join(self.weight_file()), value.to_string())
    }

    /// The value for a tenant of `weight` (1..=1000): proportional over the
    /// whole range of weights, within what the file accepts.
    fn weight_value(&self, weight: u32) -> u64 {
        match self {
            Hierarchy::V2 => u64::from(weight).saturating_mul(10).clamp(1, 10_000),
            Hierarchy::V1 => u64::from(weight).saturating_mul(256).clamp(2, 262_144),
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

fn place_in_cgroup(hierarchy: &Hierarchy, dir: &Path, pid: u32, weight: u32) -> io::Result<()> {
    create_dir_if_missing(dir)?;
    hierarchy.set_value(dir, hierarchy.weight_value(weight))?;
    fs::write(dir.join("cgroup.procs"), pid.to_string())
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

fn set_nice(pid: u32, steps: i32) -> io::Result<()> {
    if steps == 0 {
        return Ok(());
    }
    // SAFETY: reads the calling process's priority; errno tells errors apart
    // from a priority of -1, and a failure leaves the default of 0.
    let own = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    // SAFETY: sets the priority of one process, a child of this one.
    let rc =
        unsafe { libc::setpriority(libc::PRIO_PROCESS, pid, own.saturating_add(steps).min(19)) };
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
    fn cgroup_paths_are_found_in_either_hierarchy() {
        let hybrid = "12:cpu,cpuacct:/system.slice/a.service\n0::/system.slice/a.service\n";
        assert_eq!(v2_path(hybrid), Some("/system.slice/a.service"));
        assert_eq!(v2_path("1:cpu:/\n"), None);
        assert_eq!(relative("/a/b"), "a/b");
        for hierarchy in [Hierarchy::V1, Hierarchy::V2] {
            let values: Vec<u64> = (1..=crate::config::MAX_WEIGHT)
                .map(|w| hierarchy.weight_value(w))
                .collect();
            assert!(values.windows(2).all(|w| w[0] < w[1]), "{hierarchy:?}");
        }
        assert_eq!(Hierarchy::V2.weight_value(1000), 10_000);
        assert_eq!(Hierarchy::V1.group_value(4), 4096);
    }
}
