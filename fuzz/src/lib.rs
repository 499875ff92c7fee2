//! Shared parts of the fuzz targets of vhost-user-accel (docs/fuzzing.md):
//! the byte format the inputs are written in ([`input`]), guest memory whose
//! regions are fenced by inaccessible guard pages ([`memory`]), and split
//! virtqueues a fuzz input lays out in that memory ([`ring`]).

pub mod input;
pub mod memory;
pub mod ring;
