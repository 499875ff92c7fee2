// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The TOML configuration file (`--config`): the engine, the metrics
//! endpoint, the supervisor's longest restart pause and state directory, and
//! one `[[tenant]]`
//! table per VM with its socket, queues, weight, polling and quotas. Every error
//! names the file, the line and the setting.
//!
//! ```toml
//! engine-threads = 2
//! metrics = "127.0.0.1:9105"
//! max-restart-pause-ms = 5000
//! state-dir = "/run/vhost-user-accel/state"
//! poll-us = 50
//!
//! [[tenant]]
//! name = "vm1"
//! socket = "/run/vhost-user-accel/vm1.sock"
//! queues = 2
//! weight = 2
//! poll-us = 0
//! quota = { inflight = 128, jobs-per-sec = 50000 }
//! ```

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;
use toml::Spanned;

use crate::config::{
    check_engine_nice, check_engine_threads, check_max_restart_pause, check_name, check_poll_us,
    check_queue_size, check_queues, check_quota, check_socket_fd, check_state_dir, check_user,
    check_weight, Config, ConfigError, EngineKind, MetricsAddr, Quota, SocketSource, TenantConfig,
    DEFAULT_POLL_US,
};

/// Errors of the configuration file.
#[derive(Debug, Error)]
pub enum ConfigFileError {
    /// The file cannot be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, or a key or type the file format does not have (the
    /// parser's message gives the line and column).
    #[error("{path}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's report.
        #[source]
        source: toml::de::Error,
    },
    /// A value out of range, or a clash between tenants.
    #[error("{path}:{line}: {key}")]
    Value {
        /// The file.
        path: PathBuf,
        /// Line of the value (1-based).
        line: usize,
        /// The setting, as `tenant "NAME".KEY` for a tenant's.
        key: String,
        /// What is wrong with it.
        #[source]
        source: ConfigError,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct File {
    engine: Option<Engine>,
    engine_threads: Option<Spanned<u64>>,
    engine_nice: Option<Spanned<u64>>,
    vulkan_device: Option<String>,
    dmabuf_objects: Option<bool>,
    metrics: Option<Spanned<String>>,
    user: Option<Spanned<String>>,
    max_restart_pause_ms: Option<Spanned<u64>>,
    state_dir: Option<Spanned<PathBuf>>,
    /// Every tenant's `poll-us` unless its own table says otherwise.
    poll_us: Option<Spanned<u64>>,
    #[serde(default)]
    tenant: Vec<Tenant>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Engine {
    Software,
    Vulkan,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Tenant {
    name: Spanned<String>,
    socket: Option<Spanned<PathBuf>>,
    socket_fd: Option<Spanned<i32>>,
    queues: Option<Spanned<u64>>,
    queue_size: Option<Spanned<u64>>,
    weight: Option<Spanned<u64>>,
    poll_us: Option<Spanned<u64>>,
    #[serde(default)]
    quota: FileQuota,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileQuota {
    objects: Option<Spanned<u64>>,
    object_bytes: Option<Spanned<u64>>,
    inflight: Option<Spanned<u64>>,
    jobs_per_sec: Option<Spanned<u64>>,
    bytes_per_sec: Option<Spanned<u64>>,
}

/// Reads and checks the configuration file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, path)
}

/// Parses and checks configuration `text`; `path` names it in errors.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigFileError> {
    let file: File = toml::from_str(text).map_err(|source| ConfigFileError::Syntax {
        path: path.to_owned(),
        source,
    })?;
    let at = Locator { text, path };
    let mut config = Config::with_tenants(Vec::new());
    config.engine = match file.engine {
        None | Some(Engine::Software) => EngineKind::Software,
        Some(Engine::Vulkan) => EngineKind::Vulkan,
    };
    config.vulkan_device = file.vulkan_device;
    config.dmabuf_objects = file.dmabuf_objects.unwrap_or(true);
    if let Some(threads) = &file.engine_threads {
        config.engine_threads = at.check("engine-threads", threads, check_engine_threads)?;
    }
    if let Some(nice) = &file.engine_nice {
        config.engine_nice = at.check("engine-nice", nice, check_engine_nice)?;
    }
    if let Some(metrics) = &file.metrics {
        config.metrics = Some(at.value(
            "metrics",
            metrics.span(),
            metrics.get_ref().parse::<MetricsAddr>(),
        )?);
    }
    if let Some(user) = &file.user {
        config.user = Some(at.value("user", user.span(), check_user(user.get_ref()))?);
    }
    if let Some(pause) = &file.max_restart_pause_ms {
        config.max_restart_pause =
            at.check("max-restart-pause-ms", pause, check_max_restart_pause)?;
    }
    if let Some(dir) = &file.state_dir {
        config.state_dir =
            Some(at.value("state-dir", dir.span(), check_state_dir(dir.get_ref()))?);
    }
    if file.tenant.is_empty() {
        return Err(at.error("tenant", 0..0, ConfigError::NoTenant));
    }
    let poll_us = match &file.poll_us {
        Some(poll) => at.check("poll-us", poll, check_poll_us)?,
        None => DEFAULT_POLL_US,
    };
    config.tenants = file
        .tenant
        .iter()
        .map(|tenant| at.tenant(tenant, poll_us))
        .collect::<Result<_, _>>()?;
    let clash = config.clash();
    if let Some((tenant, clash)) = clash.and_then(|(i, e)| file.tenant.get(i).map(|t| (t, e))) {
        return Err(at.clash(tenant, clash));
    }
    // Everything was checked above with its line; this is the last word.
    config.validate().map_err(|e| at.error("tenant", 0..0, e))?;
    Ok(config)
}

/// Turns spans of the text into line numbers for errors.
struct Locator<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Locator<'_> {
    fn error(&self, key: &str, span: Range<usize>, source: ConfigError) -> ConfigFileError {
        let before = self.text.get(..span.start).unwrap_or(self.text);
        ConfigFileError::Value {
            path: self.path.to_owned(),
            line: before.matches('\n').count() + 1,
            key: key.to_owned(),
            source,
        }
    }

    fn value<T>(
        &self,
        key: &str,
        span: Range<usize>,
        result: Result<T, ConfigError>,
    ) -> Result<T, ConfigFileError> {
        result.map_err(|e| self.error(key, span, e))
    }

    fn check<T, V: Copy>(
        &self,
        key: &str,
        value: &Spanned<V>,
        check: impl FnOnce(V) -> Result<T, ConfigError>,
    ) -> Result<T, ConfigFileError> {
        self.value(key, value.span(), check(*value.get_ref()))
    }

    /// Tenant `tenant`, polling up to `poll_us` unless it says otherwise.
    fn tenant(&self, tenant: &Tenant, poll_us: u32) -> Result<TenantConfig, ConfigFileError> {
        let name = tenant.name.get_ref();
        let key = |field: &str| format!("tenant {name:?}.{field}");
        self.value(&key("name"), tenant.name.span(), check_name(name))?;
        let socket = match (&tenant.socket, &tenant.socket_fd) {
            (Some(path), None) => SocketSource::Path(path.get_ref().clone()),
            (None, Some(fd)) => {
                SocketSource::Fd(self.check(&key("socket-fd"), fd, check_socket_fd)?)
            }
            _ => {
                return Err(self.error(
                    &key("socket"),
                    tenant.name.span(),
                    ConfigError::SocketChoice,
                ))
            }
        };
        let mut config = TenantConfig {
            poll_us,
            ..TenantConfig::new(name.clone(), socket)
        };
        if let Some(queues) = &tenant.queues {
            config.request_queues = self.check(&key("queues"), queues, check_queues)?;
        }
        if let Some(size) = &tenant.queue_size {
            config.queue_size = self.check(&key("queue-size"), size, check_queue_size)?;
        }
        if let Some(weight) = &tenant.weight {
            config.weight = self.check(&key("weight"), weight, check_weight)?;
        }
        if let Some(poll) = &tenant.poll_us {
            config.poll_us = self.check(&key("poll-us"), poll, check_poll_us)?;
        }
        config.quota = self.quota(&tenant.quota, &key)?;
        Ok(config)
    }

    fn quota(
        &self,
        quota: &FileQuota,
        key: &dyn Fn(&str) -> String,
    ) -> Result<Quota, ConfigFileError> {
        let one = |field: &str, value: &Option<Spanned<u64>>| {
            value
                .as_ref()
                .map(|value| {
                    self.check(&key(&format!("quota.{field}")), value, |v| {
                        check_quota(v).map(|()| v)
                    })
                })
                .transpose()
        };
        Ok(Quota {
            objects: one("objects", &quota.objects)?,
            object_bytes: one("object-bytes", &quota.object_bytes)?,
            inflight: one("inflight", &quota.inflight)?,
            jobs_per_sec: one("jobs-per-sec", &quota.jobs_per_sec)?,
            bytes_per_sec: one("bytes-per-sec", &quota.bytes_per_sec)?,
        })
    }

    /// The error of `tenant` repeating an earlier tenant's name or socket,
    /// at the line of what it repeats.
    fn clash(&self, tenant: &Tenant, clash: ConfigError) -> ConfigFileError {
        let name = tenant.name.get_ref();
        let (field, span) = match (&clash, &tenant.socket, &tenant.socket_fd) {
            (ConfigError::DuplicateSocket(_), Some(path), _) => ("socket", path.span()),
            (ConfigError::DuplicateSocket(_), None, Some(fd)) => ("socket-fd", fd.span()),
            _ => ("name", tenant.name.span()),
        };
        self.error(&format!("tenant {name:?}.{field}"), span, clash)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::time::Duration;

    fn parse_str(text: &str) -> Result<Config, ConfigFileError> {
        parse(text, Path::new("accel.toml"))
    }

    fn error_of(text: &str) -> String {
        crate::error_chain(&parse_str(text).unwrap_err())
    }

    const TWO: &str = r#"
engine = "software"
engine-threads = 3
engine-nice = 0
metrics = "unix:/run/accel-metrics.sock"
max-restart-pause-ms = 250
state-dir = "/run/accel-state"
poll-us = 20

[[tenant]]
name = "vm1"
socket = "/run/vm1.sock"
queues = 4
queue-size = 128
weight = 3
poll-us = 200
quota = { objects = 10, object-bytes = 1048576, inflight = 32, jobs-per-sec = 1000, bytes-per-sec = 4096 }

[[tenant]]
name = "vm2"
socket = "/run/vm2.sock"
"#;

    /// The example of the configuration file's man page is a valid file.
    #[test]
    fn the_man_page_example_is_valid() {
        let page = include_str!("../../docs/man/vhost-user-accel.toml.5");
        let example = page
            .split_once(".EX\n")
            .and_then(|(_, rest)| rest.split_once(".EE\n"))
            .map(|(example, _)| example.replace("\\-", "-"))
            .unwrap();
        let config = parse_str(&example).unwrap();
        assert_eq!(config.tenants.len(), 2);
    }

    /// The file the Debian package installs is valid, with its one tenant.
    #[test]
    fn the_packaged_configuration_is_valid() {
        let config = parse_str(include_str!("../debian/vhost-user-accel.toml")).unwrap();
        assert_eq!(config.tenants.len(), 1);
        assert_eq!(
            config.state_dir,
            Some(PathBuf::from("/var/lib/vhost-user-accel"))
        );
    }

    #[test]
    fn a_full_file_becomes_a_config() {
        let config = parse_str(TWO).unwrap();
        assert_eq!((config.engine_threads, config.engine_nice), (3, 0));
        assert_eq!(config.engine, EngineKind::Software);
        assert_eq!(config.vulkan_device, None);
        let vulkan = parse_str(
            "engine = \"vulkan\"\nvulkan-device = \"llvmpipe\"\n[[tenant]]\nname = \"a\"\nsocket = \"/x\"\n",
        )
        .unwrap();
        assert_eq!(vulkan.engine, EngineKind::Vulkan);
        assert_eq!(vulkan.vulkan_device.as_deref(), Some("llvmpipe"));
        assert!(config.dmabuf_objects);
        let plain = "dmabuf-objects = false\n[[tenant]]\nname = \"a\"\nsocket = \"/x\"\n";
        assert!(!parse_str(plain).unwrap().dmabuf_objects);
        assert_eq!(config.max_restart_pause, Duration::from_millis(250));
        assert_eq!(config.state_dir, Some(PathBuf::from("/run/accel-state")));
        let plain = parse_str("[[tenant]]\nname = \"a\"\nsocket = \"/x\"\n").unwrap();
        assert_eq!(plain.state_dir, None);
        assert_eq!(
            plain.max_restart_pause,
            crate::config::DEFAULT_MAX_RESTART_PAUSE
        );
        assert_eq!(
            config.metrics,
            Some(MetricsAddr::Unix(PathBuf::from("/run/accel-metrics.sock")))
        );
        let [vm1, vm2] = config.tenants.as_slice() else {
            panic!("two tenants expected: {config:?}");
        };
        assert_eq!(vm1.name, "vm1");
        assert_eq!(
            vm1.socket,
            SocketSource::Path(PathBuf::from("/run/vm1.sock"))
        );
        assert_eq!(
            (vm1.request_queues, vm1.queue_size, vm1.weight, vm1.poll_us),
            (4, 128, 3, 200)
        );
        assert_eq!(
            vm1.quota,
            Quota {
                objects: Some(10),
                object_bytes: Some(1 << 20),
                inflight: Some(32),
                jobs_per_sec: Some(1000),
                bytes_per_sec: Some(4096),
            }
        );
        assert_eq!(
            *vm2,
            TenantConfig {
                poll_us: 20,
                ..TenantConfig::new("vm2", vm2.socket.clone())
            }
        );
        assert_eq!(plain.tenants[0].poll_us, DEFAULT_POLL_US);
    }

    #[test]
    fn errors_name_the_line_and_the_setting() {
        let cases: &[(&str, &str)] = &[
            (
                "[[tenant]]\nname = \"a\"\nsocket = \"/x\"\nqueues = 70\n",
                "accel.toml:4: tenant \"a\".queues: must be between 1 and 63, got 70",
            ),
            (
                "[[tenant]]\nname = \"a\"\nsocket = \"/x\"\n\n[[tenant]]\nname = \"b\"\nsocket = \"/x\"\n",
                "accel.toml:7: tenant \"b\".socket: socket /x is used by two tenants",
            ),
            (
                "[[tenant]]\nname = \"a\"\nsocket = \"/x\"\n[[tenant]]\nname = \"a\"\nsocket = \"/y\"\n",
                "accel.toml:5: tenant \"a\".name: tenant name \"a\" is used twice",
            ),
            (
                "engine-threads = 0\n[[tenant]]\nname = \"a\"\nsocket = \"/x\"\n",
                "accel.toml:1: engine-threads: must be between 1 and 256, got 0",
            ),
            (
                "[[tenant]]\nname = \"a b\"\nsocket = \"/x\"\n",
                "accel.toml:2: tenant \"a b\".name: must be 1 to 64 letters",
            ),
            (
                "[[tenant]]\nname = \"a\"\n",
                "accel.toml:2: tenant \"a\".socket: give exactly one of socket and socket-fd",
            ),
            (
                "[[tenant]]\nname = \"a\"\nsocket = \"/x\"\n[tenant.quota]\ninflight = 0\n",
                "accel.toml:5: tenant \"a\".quota.inflight: must be at least 1",
            ),
            (
                "metrics = \"0.0.0.0:1\"\n[[tenant]]\nname = \"a\"\nsocket = \"/x\"\n",
                "accel.toml:1: metrics: must be a loopback",
            ),
            (
                "max-restart-pause-ms = 5\n[[tenant]]\nname = \"a\"\nsocket = \"/x\"\n",
                "accel.toml:1: max-restart-pause-ms: must be between 10 and 3600000 \
                 (milliseconds), got 5",
            ),
            (
                "state-dir = \"state\"\n[[tenant]]\nname = \"a\"\nsocket = \"/x\"\n",
                "accel.toml:1: state-dir: must be an absolute path, got \"state\"",
            ),
            ("engine-threads = 2\n", "accel.toml:1: tenant: no tenant"),
            (
                "[[tenant]]\nname = \"a\"\nsocket = \"/x\"\npoll-us = 1001\n",
                "accel.toml:4: tenant \"a\".poll-us: must be at most 1000 (microseconds), got 1001",
            ),
        ];
        for (text, expected) in cases {
            let message = error_of(text);
            assert!(message.starts_with(expected), "{text:?}: {message}");
        }
    }

    #[test]
    fn the_parser_reports_unknown_keys_and_types_with_their_line() {
        let unknown = error_of("[[tenant]]\nname = \"a\"\nsocket = \"/x\"\nquues = 2\n");
        assert!(unknown.contains("line 4"), "{unknown}");
        assert!(unknown.contains("quues"), "{unknown}");
        let typed = error_of("[[tenant]]\nname = \"a\"\nsocket = \"/x\"\nqueues = \"two\"\n");
        assert!(typed.contains("line 4"), "{typed}");
        let engine = error_of("engine = \"gpu\"\n[[tenant]]\nname = \"a\"\nsocket = \"/x\"\n");
        assert!(
            engine.contains("line 1") && engine.contains("gpu"),
            "{engine}"
        );
    }

    #[test]
    fn an_unreadable_file_is_named() {
        let e = load(Path::new("/nonexistent/accel.toml")).unwrap_err();
        assert!(
            crate::error_chain(&e).starts_with("cannot read /nonexistent/accel.toml: No such file")
        );
    }
}
