//! vhost-user-accel: a vhost-user daemon that gives virtual machines a shared,
//! isolated accelerator through the virtio device of `spec/virtio-accel.md`.
//!
//! Map of the crate, from the hardware up:
//! - [`sg`]: scatter-gather lists of host memory, the buffers hardware sees;
//! - [`ops`]: the operations of §8 on such buffers (no virtio here);
//! - [`engine`]: the hardware-queue trait and the software engine;
//! - [`chain`]: a descriptor chain walked once into readable and writable lists;
//! - [`command`]: requests and control commands decoded from bytes (§6, §7);
//! - [`objects`]: the object table, with fence-tracked lifetime (§7.1, §7.2);
//! - [`ratelimit`]: rate-limited logging of guest errors;
//! - [`fence`]: per-queue fence timelines and waiters (§6.2);
//! - [`tracking`]: the slab of requests in flight and the set of busy ring heads;
//! - [`device`]: the device model tying them together, one per connection;
//! - [`backend`]: the `VhostUserBackend` glue;
//! - [`server`]: the listening socket and the connection loop;
//! - [`config`]: the daemon configuration.

pub mod backend;
pub mod chain;
pub mod command;
pub mod config;
pub mod device;
pub mod engine;
pub mod fence;
pub mod objects;
pub mod ops;
pub mod ratelimit;
pub mod server;
pub mod sg;
pub mod tracking;

pub use config::{Config, EngineKind, Limits, SocketSource};
pub use server::{Server, ServerError};
