// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The control queue (§7): a command chain from `take.rs` is decoded and
//! run: CAPABILITIES (§7.5), OBJECT_CREATE and OBJECT_DESTROY (§7.1, §7.2)
//! on the object table, FENCE_QUERY and FENCE_WAIT (§7.3, §7.4) on the
//! fences. It is answered at once or, a FENCE_WAIT on fences that have not
//! signalled, when the last of them signals (`complete.rs`); the answer's
//! used entry goes on to `publish.rs`.

use std::sync::Arc;

use virtio_accel_spec::{CtrlResp, Status};

use crate::chain::Walk;
use crate::command::{decode_control, Control, FenceId};
use crate::objects::{HostObject, ObjectError};
use crate::sg::SgList;

use super::{lock, DeviceModel, Snapshot, Waiter, Waiting, CAPABILITIES};

const CTRL_RESP_SIZE: usize = std::mem::size_of::<CtrlResp>();
/// Used length of an answered control command (§7).
const CTRL_USED_LEN: u32 = 16;
const _: () = assert!(CTRL_USED_LEN as usize == CTRL_RESP_SIZE);

/// What a control command came to.
enum ControlOutcome {
    /// Answer now with this value.
    Done(u64),
    /// OBJECT_DESTROY: answer Ok, then drop the object (its record says
    /// which command destroyed it until the answer is recorded, §11.3).
    Destroyed(Arc<HostObject>),
    /// A FENCE_WAIT on these unsignalled fences.
    Wait(Vec<FenceId>),
}

impl DeviceModel {
    /// Takes one control command (§7), number `seqno` of the control queue.
    pub(super) fn accept_control(
        &mut self,
        head: u16,
        walked: &mut Walk,
        mem: &Snapshot,
        seqno: u64,
    ) {
        let Some(resp) = walked.writable.take_front(CTRL_RESP_SIZE) else {
            self.guest_error(format_args!("control queue: no room for a response"));
            self.push_used(virtio_accel_spec::CONTROL_QUEUE, head, 0);
            return;
        };
        if let Some(error) = walked.error {
            self.guest_error(format_args!("control chain: {error}"));
            self.answer_control(head, &resp, error.status(), 0);
            return;
        }
        let command = match decode_control(&mut walked.readable, &self.config.limits) {
            Ok(command) => command,
            Err(e) => {
                self.guest_error(format_args!("control command: {e}"));
                self.answer_control(head, &resp, e.status(), 0);
                return;
            }
        };
        match self.run_control(command, mem, seqno) {
            Ok(ControlOutcome::Done(value)) => self.answer_control(head, &resp, Status::Ok, value),
            Ok(ControlOutcome::Destroyed(object)) => {
                self.answer_control(head, &resp, Status::Ok, 0);
                drop(object);
            }
            Ok(ControlOutcome::Wait(pending)) => self.park_fence_wait(head, resp, &pending),
            Err(status) => self.answer_control(head, &resp, status, 0),
        }
    }

    /// Runs a command.
    fn run_control(
        &mut self,
        command: Control,
        mem: &Snapshot,
        seqno: u64,
    ) -> Result<ControlOutcome, Status> {
        if let Some(needed) = command.capability() {
            if !self.has_capability(needed) {
                return Err(Status::Unsupported);
            }
        }
        let result = match command {
            Control::Capabilities(asked) => Ok(self.enable_capabilities(asked)),
            Control::ObjectCreate(segments) => {
                let admission = lock(&self.admission);
                self.objects
                    .create(segments, mem, &admission, seqno)
                    .map(u64::from)
            }
            Control::ObjectDestroy(handle) => {
                return match self.objects.destroy(handle, seqno) {
                    Ok(object) => Ok(ControlOutcome::Destroyed(object)),
                    Err(e) => Err(self.object_error(e)),
                };
            }
            Control::FenceQuery(fence) => {
                return self
                    .fences
                    .is_signalled(fence)
                    .map(|s| ControlOutcome::Done(u64::from(s)))
                    .map_err(|e| {
                        self.guest_error(format_args!("FENCE_QUERY: {e}"));
                        Status::NoFence
                    });
            }
            Control::FenceWait(fences) => return self.prepare_fence_wait(&fences),
        };
        result
            .map(ControlOutcome::Done)
            .map_err(|e| self.object_error(e))
    }

    /// The status of a failed object command, counted and logged.
    fn object_error(&mut self, error: ObjectError) -> Status {
        match error {
            ObjectError::Quota(kind) => self.over_quota(kind),
            e => {
                self.guest_error(format_args!("object command: {e}"));
                e.status()
            }
        }
    }

    /// CAPABILITIES (§7.5): enables those of `asked` the device has (it
    /// ignores the others) and returns every capability enabled, those
    /// negotiated as feature bits included. Enabled capabilities stay so
    /// until the device is reset.
    fn enable_capabilities(&mut self, asked: u64) -> u64 {
        self.capabilities |= asked & CAPABILITIES;
        self.record.set_capabilities(self.capabilities);
        (self.features | self.capabilities) & CAPABILITIES
    }

    /// Checks a FENCE_WAIT (§7.4): done at once, or the fences still to signal.
    fn prepare_fence_wait(&mut self, fences: &[FenceId]) -> Result<ControlOutcome, Status> {
        let mut pending = Vec::new();
        for fence in fences {
            match self.fences.is_signalled(*fence) {
                Ok(true) => {}
                Ok(false) => pending.push(*fence),
                Err(e) => {
                    self.guest_error(format_args!("FENCE_WAIT: {e}"));
                    return Err(Status::NoFence);
                }
            }
        }
        Ok(if pending.is_empty() {
            ControlOutcome::Done(0)
        } else {
            ControlOutcome::Wait(pending)
        })
    }

    fn park_fence_wait(&mut self, head: u16, resp: SgList, pending: &[FenceId]) {
        let id = self.next_wait_id();
        for fence in pending {
            self.fences.wait(*fence, id);
        }
        let waiter = Waiter::Control { head, resp };
        self.waiting.insert(
            id,
            Waiting {
                remaining: pending.len(),
                waiter,
            },
        );
    }

    pub(super) fn answer_control(&mut self, head: u16, resp: &SgList, status: Status, value: u64) {
        resp.write_obj(CtrlResp::new(status, value));
        self.stats.command_done(status);
        self.push_used(virtio_accel_spec::CONTROL_QUEUE, head, CTRL_USED_LEN);
    }
}
