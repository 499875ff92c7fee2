// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Shared parts of the fuzz targets of vhost-user-accel (docs/fuzzing.md):
//! the byte format the inputs are written in ([`input`]), guest memory whose
//! regions are fenced by inaccessible guard pages ([`memory`]), split
//! virtqueues a fuzz input lays out in that memory ([`ring`]), and a
//! vhost-user front-end that plays the VMM ([`vhost_user`]).

pub mod input;
pub mod memory;
pub mod ring;
pub mod vhost_user;
