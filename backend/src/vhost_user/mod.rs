// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The vhost-user glue: everything between a VMM's connection and the
//! [`crate::device::DeviceModel`] it drives.
//!
//! - [`connection`]: one VMM connection: the daemon's own vhost-user request
//!   handler on the `vhost` crate (`Handler`), and the worker thread that
//!   waits on the rings' kicks, the engine's completion eventfds and the
//!   resume timer;
//! - [`dispatch`]: what the front-end's messages and the worker's events
//!   become, as calls into the device ([`AccelBackend`]).

pub mod connection;
pub mod dispatch;

pub use connection::{Connection, ConnectionError};
pub use dispatch::{AccelBackend, BackendError};
