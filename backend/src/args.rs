// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Command-line arguments and their conversion into a [`Config`].

use std::os::fd::RawFd;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use thiserror::Error;
use vhost_user_accel::config::{
    check_engine_nice, check_engine_threads, check_poll_us, check_queue_size, check_queues,
    check_socket_fd, check_state_dir, check_user, ConfigError, MetricsAddr, TenantConfig,
    DEFAULT_MAX_RESTART_PAUSE, DEFAULT_POLL_US, MAX_TENANTS,
};
use vhost_user_accel::config_file::{self, ConfigFileError};
use vhost_user_accel::{Config, EngineKind, SocketSource};

/// Engines selectable on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EngineArg {
    /// Host CPU worker threads.
    Software,
    /// A Vulkan device (COPY, FILL, COMPARE, CRC32C and SHA256 where it
    /// runs them), host CPU worker threads for the rest.
    Vulkan,
}

/// vhost-user daemon exposing a shared accelerator to virtual machines.
///
/// Each socket is one tenant (one VM): its own device, objects and fences,
/// sharing the engine with the others. Tenants given on the command line are
/// named by their index (0, 1, ...) and have no quotas; a configuration file
/// (--config) names them and sets their weights and quotas.
///
/// SIGHUP reads the configuration file again: tenants that changed are
/// restarted, new ones started, removed ones stopped, and the others keep
/// running untouched (vhost-user-accel.toml(5), "RELOADING"); without
/// --config it is logged and ignored. SIGINT and
/// SIGTERM stop every tenant and exit. Started by systemd (NOTIFY_SOCKET set),
/// the daemon tells it when it is ready, reloading and stopping.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
pub struct Args {
    /// Path of a vhost-user socket to listen on (replaced if it exists);
    /// repeat it for more tenants. With --socket-count, a path with `{}`
    /// where the index goes.
    #[arg(long, required_unless_present_any = ["socket_fd", "config", "tenant_process"])]
    pub socket_path: Vec<PathBuf>,
    /// An inherited, already listening vhost-user socket; may be repeated.
    #[arg(long)]
    pub socket_fd: Vec<RawFd>,
    /// Serve this many tenants on the --socket-path pattern, `{}` replaced by
    /// 0, 1, ...
    #[arg(long, requires = "socket_path")]
    pub socket_count: Option<usize>,
    /// Read the daemon and its tenants from this TOML file (its format:
    /// vhost-user-accel.toml(5), docs/man/vhost-user-accel.toml.5).
    #[arg(long, conflicts_with_all = [
        "socket_path", "socket_fd", "socket_count", "queues", "queue_size", "poll_us",
        "engine", "engine_threads", "engine_nice", "vulkan_device",
        "dmabuf_objects", "metrics", "user", "state_dir",
    ])]
    pub config: Option<PathBuf>,
    /// Number of request queues of each tenant (the control queue comes on top).
    #[arg(long, default_value_t = 2)]
    pub queues: u64,
    /// Largest virtqueue size (a power of two).
    #[arg(long, default_value_t = 256)]
    pub queue_size: u64,
    /// The longest a tenant's connection polls its request rings after an
    /// event before it sleeps, in microseconds (0 to 1000; 0 never polls).
    /// It adapts below that, and polls only while the device has nothing on
    /// the engine, at most a quarter of a CPU.
    #[arg(long, default_value_t = u64::from(DEFAULT_POLL_US))]
    pub poll_us: u64,
    /// The engine that runs the operations.
    #[arg(long, value_enum, default_value_t = EngineArg::Software)]
    pub engine: EngineArg,
    /// Worker threads of each tenant's software engine (fewer when tenants
    /// together would run more than the host has CPUs).
    #[arg(long, default_value_t = 2)]
    pub engine_threads: u64,
    /// With a single tenant, how many nice steps (0 to 19) below the daemon
    /// the software engine's workers run, so that they do not delay the
    /// threads serving the virtqueues; 0 runs them at the daemon's priority.
    /// With several tenants the workers run at their process's priority.
    #[arg(long, default_value_t = 10)]
    pub engine_nice: u64,
    /// With `--engine vulkan`, the Vulkan device: its index, or part of its
    /// name (the first able device if not given).
    #[arg(long, value_name = "INDEX|NAME")]
    pub vulkan_device: Option<String>,
    /// Make objects host dma-bufs where the host allows it (`/dev/udmabuf`,
    /// sealed memfd guest memory): other host drivers can then use them in
    /// place, and their pages stay pinned while they live.
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = ["on", "off"])]
    pub dmabuf_objects: String,
    /// Serve per-tenant metrics in the Prometheus text format on a loopback
    /// `HOST:PORT` or on `unix:PATH`.
    #[arg(long)]
    pub metrics: Option<String>,
    /// When started as root, run the tenants' processes as this user (a
    /// user name, or UID:GID), with that group only.
    #[arg(long)]
    pub user: Option<String>,
    /// Where to save the record of each tenant's device when the daemon
    /// stops (SIGTERM), so that the next daemon started with the same
    /// directory resumes the devices (an upgrade is then a pause for the
    /// VMs); an absolute path, made if missing.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Run as the process of the tenant of this name, started by the daemon
    /// itself (see `vhost_user_accel::tenant_process`); not for operators.
    #[arg(long, hide = true, exclusive = true, value_name = "NAME")]
    pub tenant_process: Option<String>,
}

/// Invalid command-line values.
#[derive(Debug, Error)]
pub enum ArgsError {
    /// The value of one option.
    #[error("--{option}")]
    Option {
        /// The option, without its dashes.
        option: &'static str,
        /// What is wrong with its value.
        #[source]
        source: ConfigError,
    },
    /// A clash between tenants.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `--socket-count` with several `--socket-path`.
    #[error("--socket-count takes exactly one --socket-path (the pattern), got {0}")]
    CountPaths(usize),
    /// The configuration file.
    #[error(transparent)]
    File(#[from] ConfigFileError),
}

/// Blames `option` for an error.
fn option(option: &'static str) -> impl Fn(ConfigError) -> ArgsError {
    move |source| ArgsError::Option { option, source }
}

impl Args {
    /// The socket of each tenant, in order: the paths (or the pattern's
    /// expansion), then the descriptors.
    fn sockets(&self) -> Result<Vec<SocketSource>, ArgsError> {
        let mut sockets: Vec<SocketSource> = match self.socket_count {
            None => self
                .socket_path
                .iter()
                .cloned()
                .map(SocketSource::Path)
                .collect(),
            Some(count) => expand_pattern(&self.socket_path, count)?,
        };
        for &fd in &self.socket_fd {
            sockets.push(SocketSource::Fd(
                check_socket_fd(fd).map_err(option("socket-fd"))?,
            ));
        }
        Ok(sockets)
    }
}

/// The paths of `--socket-count N` from its one pattern.
fn expand_pattern(paths: &[PathBuf], count: usize) -> Result<Vec<SocketSource>, ArgsError> {
    let [pattern] = paths else {
        return Err(ArgsError::CountPaths(paths.len()));
    };
    let text = pattern.to_string_lossy();
    if !text.contains("{}") {
        return Err(option("socket-count")(ConfigError::NoPlaceholder(
            text.into_owned(),
        )));
    }
    if count == 0 || count > MAX_TENANTS {
        return Err(option("socket-count")(ConfigError::TooManyTenants(count)));
    }
    Ok((0..count)
        .map(|index| SocketSource::Path(PathBuf::from(text.replace("{}", &index.to_string()))))
        .collect())
}

impl TryFrom<Args> for Config {
    type Error = ArgsError;

    fn try_from(args: Args) -> Result<Self, Self::Error> {
        if let Some(path) = &args.config {
            return Ok(config_file::load(path)?);
        }
        let request_queues = check_queues(args.queues).map_err(option("queues"))?;
        let queue_size = check_queue_size(args.queue_size).map_err(option("queue-size"))?;
        let poll_us = check_poll_us(args.poll_us).map_err(option("poll-us"))?;
        let tenants = args
            .sockets()?
            .into_iter()
            .enumerate()
            .map(|(index, socket)| TenantConfig {
                request_queues,
                queue_size,
                poll_us,
                ..TenantConfig::new(index.to_string(), socket)
            })
            .collect();
        let config = Config {
            engine: match args.engine {
                EngineArg::Software => EngineKind::Software,
                EngineArg::Vulkan => EngineKind::Vulkan,
            },
            vulkan_device: args.vulkan_device.clone(),
            dmabuf_objects: args.dmabuf_objects == "on",
            engine_threads: check_engine_threads(args.engine_threads)
                .map_err(option("engine-threads"))?,
            engine_nice: check_engine_nice(args.engine_nice).map_err(option("engine-nice"))?,
            metrics: args
                .metrics
                .as_deref()
                .map(str::parse::<MetricsAddr>)
                .transpose()
                .map_err(option("metrics"))?,
            tenants,
            user: args
                .user
                .as_deref()
                .map(check_user)
                .transpose()
                .map_err(option("user"))?,
            // A setting of the configuration file only.
            max_restart_pause: DEFAULT_MAX_RESTART_PAUSE,
            state_dir: args
                .state_dir
                .as_deref()
                .map(check_state_dir)
                .transpose()
                .map_err(option("state-dir"))?,
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use clap::CommandFactory;

    use super::*;

    /// `docs/man/vhost-user-accel.8` is these definitions, rendered; with
    /// `ACCEL_UPDATE_MAN=1` the test writes it instead of comparing.
    #[test]
    fn the_man_page_is_rendered_from_the_arguments() {
        let page = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/man/vhost-user-accel.8"
        );
        let mut rendered = Vec::new();
        clap_mangen::Man::new(Args::command())
            .section("8")
            .render(&mut rendered)
            .unwrap();
        if std::env::var_os("ACCEL_UPDATE_MAN").is_some() {
            std::fs::write(page, &rendered).unwrap();
        }
        let committed = std::fs::read(page).unwrap_or_default();
        assert!(
            committed == rendered,
            "{page} is out of date: ACCEL_UPDATE_MAN=1 cargo test -p vhost-user-accel --bin \
             vhost-user-accel man_page"
        );
    }

    fn parse(extra: &[&str]) -> Result<Config, ArgsError> {
        let mut argv = vec!["vhost-user-accel", "--socket-path", "/tmp/x.sock"];
        argv.extend_from_slice(extra);
        Config::try_from(Args::try_parse_from(argv).unwrap())
    }

    fn message(extra: &[&str]) -> String {
        vhost_user_accel::error_chain(&parse(extra).unwrap_err())
    }

    #[test]
    fn defaults_and_bounds() {
        let config = parse(&[]).unwrap();
        let [tenant] = config.tenants.as_slice() else {
            panic!("one tenant expected");
        };
        assert_eq!((tenant.request_queues, tenant.queue_size), (2, 256));
        assert_eq!(tenant.name, "0");
        assert_eq!(
            message(&["--queues", "0"]),
            "--queues: must be between 1 and 63, got 0"
        );
        assert!(message(&["--queues", "64"]).starts_with("--queues"));
        assert!(message(&["--queues", "65536"]).starts_with("--queues"));
        assert_eq!(
            parse(&["--queues", "63"]).unwrap().tenants[0].request_queues,
            63
        );
        assert!(message(&["--queue-size", "100"]).starts_with("--queue-size: must be a power"));
        assert!(message(&["--engine-threads", "0"]).starts_with("--engine-threads"));
        assert_eq!(parse(&[]).unwrap().tenants[0].poll_us, 50);
        assert_eq!(parse(&["--poll-us", "0"]).unwrap().tenants[0].poll_us, 0);
        assert_eq!(
            message(&["--poll-us", "1001"]),
            "--poll-us: must be at most 1000 (microseconds), got 1001"
        );
        assert_eq!(parse(&[]).unwrap().engine, EngineKind::Software);
        let vulkan = parse(&["--engine", "vulkan", "--vulkan-device", "1"]).unwrap();
        assert_eq!(vulkan.engine, EngineKind::Vulkan);
        assert_eq!(vulkan.vulkan_device.as_deref(), Some("1"));
        assert!(parse(&[]).unwrap().dmabuf_objects);
        assert!(!parse(&["--dmabuf-objects", "off"]).unwrap().dmabuf_objects);
        assert_eq!(parse(&[]).unwrap().engine_nice, 10);
        assert_eq!(parse(&["--engine-nice", "0"]).unwrap().engine_nice, 0);
        assert_eq!(
            message(&["--engine-nice", "20"]),
            "--engine-nice: must be between 0 and 19, got 20"
        );
        assert!(message(&["--metrics", "0.0.0.0:80"]).starts_with("--metrics: must be a loopback"));
        assert_eq!(
            message(&["--state-dir", "state"]),
            "--state-dir: must be an absolute path, got \"state\""
        );
        assert_eq!(
            parse(&["--state-dir", "/run/s"]).unwrap().state_dir,
            Some(PathBuf::from("/run/s"))
        );
    }

    #[test]
    fn socket_choice() {
        assert!(Args::try_parse_from(["vhost-user-accel"]).is_err());
        let args = Args::try_parse_from(["vhost-user-accel", "--socket-fd", "999"]).unwrap();
        assert_eq!(
            vhost_user_accel::error_chain(&Config::try_from(args).unwrap_err()),
            "--socket-fd: 999 is not an open socket"
        );
        let config = parse(&["--socket-path", "/tmp/y.sock"]).unwrap();
        let names: Vec<&str> = config.tenants.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["0", "1"]);
        assert!(message(&["--socket-path", "/tmp/x.sock"]).contains("used by two tenants"));
    }

    #[test]
    fn socket_count_expands_the_pattern() {
        let argv = [
            "vhost-user-accel",
            "--socket-path",
            "/run/vm{}.sock",
            "--socket-count",
            "3",
        ];
        let config = Config::try_from(Args::try_parse_from(argv).unwrap()).unwrap();
        let sockets: Vec<String> = config
            .tenants
            .iter()
            .map(|t| t.socket.to_string())
            .collect();
        assert_eq!(sockets, ["/run/vm0.sock", "/run/vm1.sock", "/run/vm2.sock"]);
        assert!(message(&["--socket-count", "2"]).contains("{} placeholder"));
        let two = Args::try_parse_from([
            "vhost-user-accel",
            "--socket-path",
            "/a{}",
            "--socket-path",
            "/b{}",
            "--socket-count",
            "2",
        ])
        .unwrap();
        assert!(matches!(
            Config::try_from(two),
            Err(ArgsError::CountPaths(2))
        ));
    }

    #[test]
    fn a_config_file_excludes_tenant_options() {
        assert!(Args::try_parse_from([
            "vhost-user-accel",
            "--config",
            "a.toml",
            "--socket-path",
            "/x"
        ])
        .is_err());
        let args = Args::try_parse_from(["vhost-user-accel", "--config", "/nonexistent.toml"]);
        let e = Config::try_from(args.unwrap()).unwrap_err();
        assert!(vhost_user_accel::error_chain(&e).starts_with("cannot read /nonexistent.toml: "));
    }
}
