// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Test support for vhost-user-accel, shared by the integration tests
//! (`tests/tests/`) and the benchmark (`src/bin/`).
//!
//! Map of the library:
//! - [`mod@reference`]: independent reference implementations of every operation
//!   (bitwise CRC-32C, `ring` SHA-256 and AES-256-GCM, `miniz_oxide` deflate with
//!   hand-built gzip framing, compare/copy/fill), never using the engine's crates;
//!   they live in `accelctl`, whose self-test uses them too.
//! - [`data`]: seeded random inputs (random and text-like bytes, the interesting
//!   buffer sizes) whose seed is reported when a test fails.
//! - [`harness`]: the daemon and the driver over a real vhost-user socket.
//! - [`workload`]: `accelctl`'s one job per operation, also runnable on an
//!   engine directly.
//! - [`vm`]: what the VM tests share: builds, the guest script and its
//!   steps, the console driver, the checks.
//!
//! Test targets:
//! - `tests/engine.rs`: every operation through the software engine directly
//!   (no virtio), against [`mod@reference`], over all sizes and scatter-gather
//!   layouts, plus concurrent submission.

pub mod data;
pub mod harness;
pub use accelctl::reference;
pub mod vm;
pub mod workload;
