// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The jobs of [`accelctl::workload`], also runnable straight on an engine
//! (as a [`Job`] on the guest buffers' host addresses), so the benchmark
//! compares the daemon path and the direct path on the same work and bytes.

use std::ptr::NonNull;
use std::sync::Arc;

use accel_driver::{DmaBuf, DmaMemory};
pub use accelctl::workload::Workload;
use vhost_user_accel::command::Operation;
use vhost_user_accel::engine::Job;
use vhost_user_accel::sg::{HostSeg, SgList};

/// `workload` for an engine queue, on the guest buffers that
/// [`Workload::request`] made (`buffers`: inputs then outputs), reached
/// through their host addresses as the daemon reaches them. The job's lists
/// hold a handle on `memory`. `None` if a buffer is not in `memory`.
pub fn engine_job(
    workload: &Workload,
    memory: &DmaMemory,
    buffers: &[DmaBuf],
    cookie: u64,
) -> Option<Job> {
    let sizes = workload
        .inputs
        .iter()
        .map(Vec::len)
        .chain(workload.output_sizes.iter().copied());
    let owner = Arc::new(memory.clone());
    let mut lists = buffers.iter().zip(sizes).map(|(buf, len)| {
        let mut list = SgList::new();
        if len > 0 {
            let addr = NonNull::new(memory.host_address(buf.gpa())? as *mut u8)?;
            // SAFETY: the buffer is `len` bytes of `memory`'s mapping, which
            // stays mapped while a handle on it (`owner`) lives.
            unsafe { list.push(HostSeg::new(addr, len), &owner) }.ok()?;
        }
        Some(list)
    });
    let operation = Operation::decode(workload.op, &workload.params).ok()?;
    let mut job = Job::new(operation, cookie);
    for input in lists.by_ref().take(workload.inputs.len()) {
        job.push_input(input?);
    }
    for output in lists {
        job.push_output(output?);
    }
    Some(job)
}
