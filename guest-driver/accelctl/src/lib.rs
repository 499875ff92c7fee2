// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `accelctl`: the command-line tool of the virtio accelerator device, and the
//! library its commands are made of (the test suite and the foundation
//! benchmark use the same pieces, so there is one driver path, not two).
//!
//! Map of the crate:
//! - [`args`]: the command line and its translation into typed jobs;
//! - [`target`]: which device to open: a daemon's vhost-user socket (host
//!   transport), a virtio-pci function through `uio_pci_generic`, or the
//!   accel node of the guest kernel's `virtio_accel` module (guest
//!   transports; the node when the module is bound);
//! - [`accelerator`]: what the commands need of a device, on any transport:
//!   its configuration, and a job run on bytes of this process;
//! - [`mod@reference`]: software references of every operation, independent
//!   of the daemon's engine crates;
//! - [`data`]: seeded random and text-like input data;
//! - [`workload`]: one job per operation on given data, as a request;
//! - [`mod@bench`]: the pipelined submit/reap loop and the `bench` command;
//! - [`chain`]: rounds of long fence-chained batches on objects, the
//!   `chain` command;
//! - [`selftest`]: every operation, objects and fences checked against the
//!   references;
//! - [`run`]: the `run OP` command on files;
//! - [`report`]: what `list` prints about a device.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod accelerator;
pub mod args;
pub mod bench;
pub mod chain;
pub mod data;
pub mod reference;
pub mod report;
pub mod run;
pub mod selftest;
pub mod target;
pub mod workload;
