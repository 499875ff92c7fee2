// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! One virtqueue as the device core drives it: submission with a driver-owned
//! header buffer, reaping of used entries, and waiting shared by threads.
//!
//! Any thread that holds the lock reaps used entries and files them: a
//! completion someone blocks on goes to that waiter, other request completions
//! to the `ready` list returned by poll/wait, and chains the core did not add
//! (raw chains) to `raw_ready`. At most one thread at a time sleeps on the
//! transport's interrupt (the "poller"); the others wait on a condition
//! variable that the poller and every reaper signal.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use virtio_accel_spec::FIRST_REQUEST_QUEUE;

use crate::memory::{DmaBuf, DmaMemory};
use crate::transport::Transport;
use crate::virtqueue::{self, SplitQueue, Used};

use super::completion::Completion;
use super::request::{Segments, RESP_SIZE};
use super::Error;

/// Size of the pooled header buffers: a header of up to 448 bytes plus the response.
const SLOT_SIZE: usize = 512;
/// Offset of the response area: the header rounded up to 64 bytes.
fn resp_offset(header_len: usize) -> usize {
    header_len.div_ceil(64) * 64
}

/// A chain the core added and the device has not returned.
#[derive(Debug)]
struct Pending {
    buf: DmaBuf,
    resp_offset: usize,
    token: u64,
    waiter: Option<u64>,
    /// The fence sequence number its avail-ring position gives it (§6.2).
    seqno: u64,
    /// Whether the chain has a whole response area of its own: only then is
    /// the fence read back the one the device wrote (a shorter area lets the
    /// response run on into the output, §6.4).
    full_response: bool,
}

/// A response whose fence was not the one its request was due: the device
/// instance restarted behind the driver (§11). One per device, shared by its
/// queues: once any queue has seen it, none takes more requests.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Restart {
    queue: u16,
    expected: u64,
    reported: u64,
}

impl Restart {
    fn error(self) -> Error {
        Error::DeviceRestarted {
            queue: self.queue,
            expected: self.expected,
            reported: self.reported,
        }
    }
}

/// Where a device's queues record a [`Restart`].
pub(crate) type RestartFlag = Arc<OnceLock<Restart>>;

/// A chain the core added: its waiter id (if it has one) and the fence
/// sequence number its avail-ring position gives it (spec §6.2).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Submitted {
    pub(crate) waiter: Option<u64>,
    pub(crate) seqno: u64,
}

/// A used entry of a core-added chain, with the response bytes.
#[derive(Debug, Clone)]
pub(crate) struct Finished {
    pub(crate) token: u64,
    pub(crate) used_len: u32,
    pub(crate) resp: [u8; RESP_SIZE as usize],
}

#[derive(Debug)]
pub(crate) struct QueueState {
    pub(crate) vq: SplitQueue,
    /// Core-added chains in flight, by head.
    pending: Vec<Option<Pending>>,
    ready: VecDeque<Finished>,
    claimed: HashMap<u64, Finished>,
    abandoned: HashSet<u64>,
    raw_ready: VecDeque<Used>,
    next_waiter: u64,
    polling: bool,
    /// The `used_event` the thread that sleeps on the interrupt asked for,
    /// until another waiter moves it back and tells the device.
    sleeper_event: Option<u16>,
    spare: Vec<DmaBuf>,
}

/// §11: a response reporting another fence than the one its request's
/// avail-ring position gave it comes from a device instance that restarted
/// behind the driver's back (over vhost-user: a back-end restart the VMM
/// reconnected to). Its objects and fences are gone, so the device takes no
/// more requests until it is reset (reopened).
fn check_timeline(
    restarted: &OnceLock<Restart>,
    queue: u16,
    pending: &Pending,
    used_len: u32,
    resp: &[u8],
) {
    let Some(request_queue) = queue.checked_sub(FIRST_REQUEST_QUEUE) else {
        return;
    };
    if !pending.full_response || used_len < RESP_SIZE || restarted.get().is_some() {
        return;
    }
    let expected = pending.seqno;
    let fence = Completion::from_raw(0, used_len, resp).fence();
    let reported = u64::from(fence.seqno);
    if reported != expected || u16::from(fence.queue) != request_queue {
        log::error!(
            "virtqueue {queue}: the device reported fence {reported} where {expected} was due: \
             it restarted, and must be reset before further use"
        );
        let _ = restarted.set(Restart {
            queue,
            expected,
            reported,
        });
    }
}

impl QueueState {
    /// Files every used entry; returns whether any completion went to a waiter
    /// or a list (so sleepers must look).
    fn reap(
        &mut self,
        queue: u16,
        mem: &DmaMemory,
        restarted: &OnceLock<Restart>,
    ) -> Result<bool, Error> {
        let mut filed = false;
        loop {
            let used = match self.vq.pop_used() {
                Ok(Some(used)) => used,
                Ok(None) => return Ok(filed),
                Err(source) => return Err(Error::Queue { queue, source }),
            };
            filed = true;
            let Some(pending) = self
                .pending
                .get_mut(usize::from(used.head))
                .and_then(Option::take)
            else {
                self.raw_ready.push_back(used);
                continue;
            };
            let mut resp = [0u8; RESP_SIZE as usize];
            mem.read(&pending.buf, pending.resp_offset, &mut resp)?;
            check_timeline(restarted, queue, &pending, used.len, &resp);
            let finished = Finished {
                token: pending.token,
                used_len: used.len,
                resp,
            };
            if pending.buf.len() == SLOT_SIZE && self.spare.len() < usize::from(self.vq.size()) {
                self.spare.push(pending.buf);
            }
            match pending.waiter {
                Some(id) if self.abandoned.remove(&id) => {
                    log::warn!("virtqueue {queue}: completion of an abandoned request dropped");
                }
                Some(id) => {
                    self.claimed.insert(id, finished);
                }
                None => self.ready.push_back(finished),
            }
        }
    }
}

/// One virtqueue shared by the threads using a device.
#[derive(Debug)]
pub(crate) struct DriverQueue {
    index: u16,
    mem: DmaMemory,
    state: Mutex<QueueState>,
    cond: Condvar,
    restarted: RestartFlag,
}

impl DriverQueue {
    /// Queue `index` on `vq`; `restarted` is shared by the device's queues.
    pub(crate) fn new(index: u16, vq: SplitQueue, restarted: RestartFlag) -> Self {
        let pending = (0..vq.size()).map(|_| None).collect();
        DriverQueue {
            index,
            restarted,
            mem: vq.memory().clone(),
            state: Mutex::new(QueueState {
                vq,
                pending,
                ready: VecDeque::new(),
                claimed: HashMap::new(),
                abandoned: HashSet::new(),
                raw_ready: VecDeque::new(),
                next_waiter: 0,
                polling: false,
                sleeper_event: None,
                spare: Vec::new(),
            }),
            cond: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Exclusive access, for raw use.
    pub(crate) fn state_mut(&mut self) -> &mut QueueState {
        self.state.get_mut().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a chain `[header] + readable | [response (resp_len)] + writable`.
    /// With `wait`, returns a waiter id to pass to [`wait_for`](Self::wait_for).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn submit(
        &self,
        header: &[u8],
        resp_len: u32,
        readable: &[(u64, u32)],
        writable: &[(u64, u32)],
        token: u64,
        wait: bool,
    ) -> Result<Submitted, Error> {
        let resp_off = resp_offset(header.len());
        let needed = resp_off + RESP_SIZE as usize;
        let mut st = self.lock();
        if let Some(restart) = self.restarted.get() {
            return Err(restart.error());
        }
        let buf = match st.spare.pop() {
            Some(buf) if needed <= SLOT_SIZE => buf,
            spare => {
                if let Some(buf) = spare {
                    st.spare.push(buf);
                }
                self.mem.alloc(needed.max(SLOT_SIZE))?
            }
        };
        self.mem.write(&buf, 0, header)?;
        self.mem
            .write(&buf, resp_off, &[0xff; RESP_SIZE as usize])?;

        let header_len =
            u32::try_from(header.len()).map_err(|_| Error::HeaderTooLong(header.len()))?;
        let mut rd = Segments::new();
        rd.push((buf.gpa(), header_len));
        rd.extend_from_slice(readable);
        let mut wr = Segments::new();
        if resp_len > 0 {
            wr.push((buf.gpa() + resp_off as u64, resp_len));
        }
        wr.extend_from_slice(writable);

        let head = match st.vq.add(&rd, &wr, token) {
            Ok(head) => head,
            Err(virtqueue::Error::QueueFull { .. }) => {
                if buf.len() == SLOT_SIZE {
                    st.spare.push(buf);
                }
                return Err(Error::QueueFull { queue: self.index });
            }
            Err(source) => {
                return Err(Error::Queue {
                    queue: self.index,
                    source,
                })
            }
        };
        let waiter = wait.then(|| {
            st.next_waiter += 1;
            st.next_waiter
        });
        let seqno = st.vq.avail_total();
        // The queue hands out heads below its size, the length of `pending`.
        if let Some(entry) = st.pending.get_mut(usize::from(head)) {
            *entry = Some(Pending {
                buf,
                resp_offset: resp_off,
                token,
                waiter,
                seqno,
                full_response: resp_len == RESP_SIZE,
            });
        }
        Ok(Submitted { waiter, seqno })
    }

    /// Publishes added chains and notifies the device if it asked for it.
    /// Returns whether it was notified.
    pub(crate) fn flush<T: Transport + ?Sized>(&self, transport: &T) -> Result<bool, Error> {
        let notify = {
            let mut st = self.lock();
            st.vq.publish_and_check().map_err(|source| Error::Queue {
                queue: self.index,
                source,
            })?
        };
        if notify {
            transport.notify(self.index)?;
        }
        Ok(notify)
    }

    /// Reaps without blocking and returns the request completions not claimed by a waiter.
    pub(crate) fn poll(&self) -> Result<Vec<Finished>, Error> {
        let mut st = self.lock();
        if st.reap(self.index, &self.mem, &self.restarted)? {
            self.cond.notify_all();
        }
        Ok(st.ready.drain(..).collect())
    }

    /// Chains added and not yet returned.
    pub(crate) fn in_flight(&self) -> usize {
        self.lock().vq.in_flight()
    }

    /// Waits until `take` yields something or `timeout` passes (`None`: forever).
    pub(crate) fn wait_until<T, R>(
        &self,
        transport: &T,
        timeout: Option<Duration>,
        want: impl Fn(&QueueState) -> u16,
        mut take: impl FnMut(&mut QueueState) -> Option<R>,
    ) -> Result<Option<R>, Error>
    where
        T: Transport + ?Sized,
    {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut st = self.lock();
        loop {
            if st.reap(self.index, &self.mem, &self.restarted)? {
                self.cond.notify_all();
            }
            if let Some(found) = take(&mut st) {
                return Ok(Some(found));
            }
            let left = match deadline {
                None => None,
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Ok(None);
                    }
                    Some(d - now)
                }
            };
            let queue = self.index;
            let vq_err = |source| Error::Queue { queue, source };
            if st.polling {
                // Another thread sleeps on the interrupt, perhaps asking for a
                // whole batch: make the next used entry interrupt it, so that
                // this waiter is not held up by that batch. If entries are
                // already pending, reap them now instead of sleeping.
                if st.vq.enable_notifications_after(1).map_err(vq_err)? {
                    continue;
                }
                let event = st.vq.used_event().map_err(vq_err)?;
                let asked = st.sleeper_event.take();
                if asked.is_some_and(|asked| (1..0x8000).contains(&asked.wrapping_sub(event))) {
                    // The device may hold completions back until the
                    // sleeper's event (§6.4.2): tell it, once, that the
                    // event moved back.
                    drop(st);
                    transport.notify(self.index)?;
                    st = self.lock();
                    continue;
                }
                st = match left {
                    None => self.cond.wait(st).unwrap_or_else(PoisonError::into_inner),
                    Some(left) => {
                        self.cond
                            .wait_timeout(st, left)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0
                    }
                };
                continue;
            }
            let more = want(&st);
            if st.vq.enable_notifications_after(more).map_err(vq_err)? {
                st.vq.disable_notifications().map_err(vq_err)?;
                continue;
            }
            st.sleeper_event = Some(st.vq.used_event().map_err(vq_err)?);
            st.polling = true;
            drop(st);
            let woke = transport.wait_interrupt(self.index, left);
            st = self.lock();
            st.polling = false;
            st.sleeper_event = None;
            let disabled = st.vq.disable_notifications();
            self.cond.notify_all();
            woke?;
            disabled.map_err(vq_err)?;
        }
    }

    /// Waits for the completion of waiter `id`; on timeout the request is
    /// abandoned (its completion will be dropped) and `None` returned.
    pub(crate) fn wait_for<T: Transport + ?Sized>(
        &self,
        transport: &T,
        id: u64,
        timeout: Option<Duration>,
    ) -> Result<Option<Finished>, Error> {
        let found = self.wait_until(transport, timeout, |_| 1, |st| st.claimed.remove(&id))?;
        if found.is_some() {
            return Ok(found);
        }
        let mut st = self.lock();
        if let Some(f) = st.claimed.remove(&id) {
            return Ok(Some(f));
        }
        st.abandoned.insert(id);
        Ok(None)
    }

    /// Waits for at least one unclaimed request completion; empty on timeout.
    pub(crate) fn wait_ready<T: Transport + ?Sized>(
        &self,
        transport: &T,
        timeout: Option<Duration>,
    ) -> Result<Vec<Finished>, Error> {
        self.wait_ready_batch(transport, 1, timeout)
    }

    /// Waits for at least `min` (>= 1) unclaimed request completions, asking
    /// the device for one interrupt when that many are done (EVENT_IDX), and
    /// returns every ready one; what is ready on timeout, possibly nothing.
    pub(crate) fn wait_ready_batch<T: Transport + ?Sized>(
        &self,
        transport: &T,
        min: usize,
        timeout: Option<Duration>,
    ) -> Result<Vec<Finished>, Error> {
        let min = min.max(1);
        let missing = |st: &QueueState| {
            u16::try_from(min.saturating_sub(st.ready.len()).max(1)).unwrap_or(u16::MAX)
        };
        let found = self.wait_until(transport, timeout, missing, |st| {
            (st.ready.len() >= min).then(|| st.ready.drain(..).collect())
        })?;
        Ok(match found {
            Some(batch) => batch,
            None => self.lock().ready.drain(..).collect(),
        })
    }

    /// Waits for the used entry of a raw chain.
    pub(crate) fn wait_raw<T: Transport + ?Sized>(
        &self,
        transport: &T,
        timeout: Option<Duration>,
    ) -> Result<Option<Used>, Error> {
        self.wait_until(transport, timeout, |_| 1, |st| st.raw_ready.pop_front())
    }
}
