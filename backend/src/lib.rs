// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! vhost-user-accel: a vhost-user daemon that gives virtual machines a shared,
//! isolated accelerator through the virtio device of `spec/virtio-accel.md`.
//!
//! Map of the crate, from the hardware up:
//! - [`sg`]: scatter-gather lists of host memory, the buffers hardware sees;
//! - [`ops`]: the operations of §8 executed on such buffers (no virtio, no
//!   decoding here);
//! - [`engine`]: the hardware-queue trait and the software engine;
//! - [`chain`]: a descriptor chain walked once into readable and writable lists;
//! - [`command`]: all the decoding: requests, control commands, operations
//!   and their parameters, from bytes (§6 to §8);
//! - [`objects`]: the object table, with fence-tracked lifetime (§7.1, §7.2);
//! - [`dmabuf`]: objects as host dma-bufs (udmabuf), and the waits for other
//!   drivers' fences on them (§7.1.3);
//! - [`log_limit`]: rate-limited logging of what guests and VMMs trigger;
//! - [`quota`]: a tenant's quotas, applied to requests and objects;
//! - [`stats`]: a tenant's counters, rendered for Prometheus;
//! - [`fence`]: per-queue fence timelines and waiters (§6.2);
//! - [`slab`]: the requests in flight, under generational keys;
//! - [`ring_history`]: whether a ring's history began here, and resets seen
//!   as rings stopped and started again (§11.2);
//! - [`ring_record`]: a virtqueue's crash-consistent record of what the device
//!   took, completed and published, for the process after a crash (§11.3);
//! - [`device_record`]: the record of a tenant's device, every virtqueue's,
//!   in memory that outlives the tenant's process;
//! - [`used`]: a virtqueue's used ring, written a batch at a time;
//! - [`device`]: the device model tying them together, one per connection;
//! - [`vhost_user`]: the vhost-user glue: a VMM's connection (its request
//!   handler and the worker thread of its rings) and what its messages and
//!   events become as calls into the device;
//! - [`poll`]: how long that worker polls the rings before it sleeps;
//! - [`memory`]: validation of the guest memory a VMM hands over;
//! - [`server`]: the tenants' sockets and connection loops;
//! - [`supervisor`]: one process per tenant, restarted when it ends;
//! - [`tenant_process`]: what a tenant's process is handed, and how it runs;
//! - [`sandbox`]: the sandbox of a tenant's process;
//! - [`fairshare`]: the CPU shared between tenants' processes by weight;
//! - [`arbiter`]: the supervisor slowing down a tenant ahead of one that waits;
//! - [`shared`]: memory shared between the supervisor and a tenant's process;
//! - [`metrics`]: the Prometheus endpoint;
//! - [`sd_notify`]: readiness and reloads told to systemd;
//! - [`shutdown`]: the signals the supervisor acts on, and its exit report;
//! - [`config`]: the daemon configuration, its tenants and their quotas;
//! - [`config_file`]: the TOML configuration file.

pub mod arbiter;
pub mod chain;
pub mod command;
pub mod config;
pub mod config_file;
pub mod device;
pub mod device_record;
pub mod dmabuf;
pub mod engine;
pub mod fairshare;
pub mod fence;
pub mod log_limit;
pub mod memory;
pub mod metrics;
pub mod objects;
pub mod ops;
pub mod poll;
pub mod quota;
pub mod ring_history;
pub mod ring_record;
pub mod sandbox;
pub mod sd_notify;
pub mod server;
pub mod sg;
pub mod shared;
pub mod shutdown;
pub mod slab;
pub mod stats;
pub mod supervisor;
pub mod tenant_process;
pub mod used;
pub mod vhost_user;

pub use config::{Config, EngineKind, Limits, SocketSource, TenantConfig};
pub use server::{Server, ServerError};
pub use supervisor::{Supervisor, SupervisorError};

/// `error` followed by each of its causes, joined with ": ", as the daemon
/// reports errors to the operator.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}
