// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The fence timelines (`backend/src/fence.rs`) against a plain model: the
//! next sequence number of each queue, the set of issued fences not yet
//! signalled, and the waiters registered on each. Any sequence of issue (of
//! the next number, one past it, or one issued already), signal, wait and
//! is_signalled must give the model's answers.

#![no_main]

use std::collections::{HashMap, HashSet};

use libfuzzer_sys::fuzz_target;
use vhost_user_accel::command::FenceId;
use vhost_user_accel::fence::{FenceError, Fences};
use vhost_user_accel_fuzz::input::Reader;

#[derive(Default)]
struct Model {
    next: Vec<u64>,
    unsignalled: HashSet<FenceId>,
    waiters: HashMap<FenceId, Vec<u32>>,
}

impl Model {
    fn is_signalled(&self, fence: FenceId) -> Result<bool, FenceError> {
        match self.next.get(usize::from(fence.queue)) {
            Some(&next) if fence.seqno != 0 && fence.seqno < next => {
                Ok(!self.unsignalled.contains(&fence))
            }
            _ => Err(FenceError::NotIssued(fence)),
        }
    }
}

/// A fence the input names: mostly near the issued range of a queue that
/// exists, sometimes anywhere.
fn pick(r: &mut Reader<'_>, model: &Model) -> FenceId {
    let queues = model.next.len() as u16;
    let selector = r.u8();
    if selector == 0xff {
        return FenceId {
            queue: r.u16(),
            seqno: r.u64(),
        };
    }
    let queue = u16::from(selector) % (queues + 1);
    let next = model.next.get(usize::from(queue)).copied().unwrap_or(1);
    let back = u64::from(r.u16());
    FenceId {
        queue,
        seqno: (next + 1).saturating_sub(back),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let queues = 1 + u16::from(r.u8() % 4);
    let mut fences = Fences::<u32>::new(queues);
    let mut model = Model {
        next: vec![1; usize::from(queues)],
        ..Model::default()
    };
    let mut step = 0u32;
    while !r.is_empty() {
        step += 1;
        match r.u8() % 8 {
            0..=2 => {
                let queue = r.u8() as u16 % (queues + 1);
                let next = model.next.get(usize::from(queue)).copied().unwrap_or(1);
                // Mostly the next number (as the device's record gives it);
                // sometimes past it, or one issued already.
                let seqno = match r.u8() % 8 {
                    0 => next.saturating_sub(1 + u64::from(r.u8() % 4)),
                    1 => next + u64::from(r.u8() % 4),
                    _ => next,
                };
                let issued = fences.issue(queue, seqno);
                match model.next.get_mut(usize::from(queue)) {
                    Some(next) if seqno >= *next => {
                        let fence = FenceId { queue, seqno };
                        assert_eq!(issued, Some(fence));
                        // The numbers skipped count as issued and signalled.
                        *next = seqno + 1;
                        model.unsignalled.insert(fence);
                    }
                    _ => assert_eq!(issued, None),
                }
            }
            3..=4 => {
                let fence = pick(&mut r, &model);
                let mut got = fences.signal(fence);
                model.unsignalled.remove(&fence);
                let mut want = model.waiters.remove(&fence).unwrap_or_default();
                got.sort_unstable();
                want.sort_unstable();
                assert_eq!(got, want, "waiters of {fence:?}");
            }
            5 => {
                let fence = pick(&mut r, &model);
                fences.wait(fence, step);
                // Waiters on anything but an unsignalled fence are dropped.
                if model.is_signalled(fence) == Ok(false) {
                    model.waiters.entry(fence).or_default().push(step);
                }
            }
            _ => {
                let fence = pick(&mut r, &model);
                assert_eq!(
                    fences.is_signalled(fence),
                    model.is_signalled(fence),
                    "{fence:?}"
                );
            }
        }
    }
    for fence in model.unsignalled.clone() {
        assert_eq!(fences.is_signalled(fence), Ok(false));
    }
});
