//! `accelctl`: the command-line tool of the virtio accelerator device, and the
//! library its commands are made of (the test suite and the foundation
//! benchmark use the same pieces, so there is one driver path, not two).
//!
//! Map of the crate:
//! - [`args`]: the command line and its translation into typed jobs;
//! - [`target`]: which device to open: a daemon's vhost-user socket (host
//!   transport) or a virtio-pci function (guest transport);
//! - [`mod@reference`]: software references of every operation, independent
//!   of the daemon's engine crates;
//! - [`data`]: seeded random and text-like input data;
//! - [`workload`]: one job per operation on given data, as a request;
//! - [`mod@bench`]: the pipelined submit/reap loop and the `bench` command;
//! - [`selftest`]: every operation, objects and fences checked against the
//!   references;
//! - [`run`]: the `run OP` command on files;
//! - [`report`]: what `list` prints about a device.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod args;
pub mod bench;
pub mod data;
pub mod reference;
pub mod report;
pub mod run;
pub mod selftest;
pub mod target;
pub mod workload;
