//! Daemon configuration, independent of how it was given (command line, tests).

use std::os::fd::RawFd;
use std::path::PathBuf;

use virtio_accel_spec::VirtioAccelConfig;

/// Most request queues this daemon serves: vhost-user-backend assigns vrings
/// to worker threads with a 64-bit mask, and the control queue takes one bit.
/// (The specification allows up to `MAX_REQUEST_QUEUES`, 64.)
pub const MAX_QUEUES: u16 = 63;

/// Where the vhost-user socket comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketSource {
    /// Bind and listen on this path (an existing socket file is replaced).
    Path(PathBuf),
    /// A listening socket inherited from the parent (e.g. systemd, libvirt).
    Fd(RawFd),
}

/// Which engine runs the operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// Host CPU threads ([`crate::engine::software::SoftwareEngine`]).
    Software,
}

/// Limits the device reports in its configuration (§5, §10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most descriptors per chain and segments per object.
    pub max_segments: u32,
    /// Most fences per request or FENCE_WAIT.
    pub max_deps: u32,
    /// Most live objects per connection.
    pub max_objects: u32,
    /// Largest object in bytes.
    pub max_object_size: u64,
    /// Largest buffer of one request in bytes.
    pub max_buffer_size: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_segments: 64,
            max_deps: 16,
            max_objects: 1024,
            max_object_size: 1 << 30,
            max_buffer_size: 64 << 20,
        }
    }
}

/// The daemon configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The vhost-user socket.
    pub socket: SocketSource,
    /// Number of request queues (the control queue comes on top).
    pub request_queues: u16,
    /// Largest virtqueue size the device accepts.
    pub queue_size: u16,
    /// Engine kind.
    pub engine: EngineKind,
    /// Worker threads of the software engine.
    pub engine_threads: usize,
    /// Device limits.
    pub limits: Limits,
}

impl Config {
    /// A configuration with defaults for everything but the socket.
    pub fn new(socket: SocketSource) -> Self {
        Config {
            socket,
            request_queues: 2,
            queue_size: 256,
            engine: EngineKind::Software,
            engine_threads: 2,
            limits: Limits::default(),
        }
    }

    /// The configuration space the device exposes (§5), given the engine's
    /// capability mask.
    pub fn device_config(&self, ops: u32) -> VirtioAccelConfig {
        VirtioAccelConfig {
            num_request_queues: u32::from(self.request_queues).into(),
            ops: ops.into(),
            max_segments: self.limits.max_segments.into(),
            max_deps: self.limits.max_deps.into(),
            max_objects: self.limits.max_objects.into(),
            max_inflight: u32::from(self.queue_size).into(),
            max_object_size: self.limits.max_object_size.into(),
            max_buffer_size: self.limits.max_buffer_size.into(),
        }
    }
}
