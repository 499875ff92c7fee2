// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The driver side of a split virtqueue living in [`DmaMemory`].
//!
//! [`SplitQueue`] owns the descriptor table, the available ring and the used
//! ring (one page-aligned allocation), tracks free descriptors and in-flight
//! chains, and implements notification suppression in both directions, with or
//! without `VIRTIO_RING_F_EVENT_IDX`:
//!
//! - adding chains ([`SplitQueue::add`], [`SplitQueue::add_raw`]) only writes
//!   descriptors and avail-ring slots; [`SplitQueue::publish`] makes them
//!   visible with one index update, and [`SplitQueue::needs_notify`] says
//!   whether the device asked to be notified for what was published since the
//!   last check (batching: add many, publish once, notify at most once);
//! - interrupts are disabled by default (`used_event` one behind the last seen
//!   used index, or `VRING_AVAIL_F_NO_INTERRUPT`), and
//!   [`SplitQueue::enable_notifications`] re-arms them just before the driver
//!   sleeps.
//!
//! The raw API ([`SplitQueue::add_raw`], [`SplitQueue::push_avail_raw`],
//! [`SplitQueue::write_avail_idx_raw`], [`SplitQueue::set_used_event`]) writes
//! what it is told, to build malformed chains for fault tests.

mod ring;

use std::sync::atomic::{fence, Ordering};

use smallvec::SmallVec;
use thiserror::Error;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::{ByteValued, Bytes, GuestAddress};

use crate::memory::{self, DmaBuf, DmaMemory, PAGE_SIZE};
use ring::RingLayout;
pub use ring::{
    need_event, Descriptor, QueueAddresses, AVAIL_F_NO_INTERRUPT, DESC_F_INDIRECT, DESC_F_NEXT,
    DESC_F_WRITE, DESC_SIZE, MAX_QUEUE_SIZE, USED_F_NO_NOTIFY,
};

/// Errors of virtqueue operations.
#[derive(Debug, Error)]
pub enum Error {
    /// The queue size is not a power of two in `1..=32768`.
    #[error("queue size {0} is not a power of two in 1..=32768")]
    BadSize(u16),
    /// A chain with no descriptor was asked for.
    #[error("a chain needs at least one descriptor")]
    EmptyChain,
    /// Not enough free descriptors right now; reap completions and retry.
    #[error("queue full: {needed} free descriptors needed, {free} free")]
    QueueFull {
        /// Descriptors the chain needs.
        needed: usize,
        /// Descriptors free.
        free: usize,
    },
    /// A direct chain longer than the queue can never be added.
    #[error("a direct chain of {len} descriptors cannot fit a queue of {size}")]
    ChainTooLong {
        /// Descriptors in the chain.
        len: usize,
        /// Queue size.
        size: u16,
    },
    /// A [`RawNext::Desc`] names a descriptor outside the raw chain.
    #[error("raw descriptor {index} links to descriptor {target} of a {len}-descriptor chain")]
    BadRawNext {
        /// Index of the linking descriptor in the raw chain.
        index: usize,
        /// Index it links to.
        target: usize,
        /// Length of the raw chain.
        len: usize,
    },
    /// The device put an id in the used ring that is not an in-flight head.
    #[error("device returned id {id} (len {len}), which is not an in-flight chain head")]
    BadUsedId {
        /// The id from the used ring.
        id: u32,
        /// The length from the used ring.
        len: u32,
    },
    /// The device moved the used index further than the queue size.
    #[error("device used index {used} is more than the queue size ahead of {last}")]
    BadUsedIdx {
        /// Used index read from the ring.
        used: u16,
        /// Last used index the driver consumed.
        last: u16,
    },
    /// Ring or indirect-table memory could not be allocated or accessed.
    #[error("virtqueue memory")]
    Memory(#[from] memory::Error),
}

/// Result of this module's operations.
pub type Result<T> = std::result::Result<T, Error>;

/// The ring features a queue uses, from the negotiated feature bits.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RingFeatures {
    /// `VIRTIO_RING_F_EVENT_IDX`: `used_event` / `avail_event` suppression.
    pub event_idx: bool,
    /// `VIRTIO_RING_F_INDIRECT_DESC`: chains of more than one descriptor go
    /// through an indirect table.
    pub indirect: bool,
}

impl RingFeatures {
    /// The ring features present in negotiated `features`.
    pub fn from_features(features: u64) -> Self {
        RingFeatures {
            event_idx: features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0,
            indirect: features & (1 << VIRTIO_RING_F_INDIRECT_DESC) != 0,
        }
    }
}

/// How a raw descriptor's `next` field is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawNext {
    /// The slot of the following raw descriptor (0 for the last one).
    Following,
    /// The slot of raw descriptor `i` of the same call (e.g. 0 for a loop).
    Desc(usize),
    /// This value, verbatim (e.g. an index past the queue size).
    Absolute(u16),
}

/// A descriptor written verbatim by [`SplitQueue::add_raw`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawDesc {
    /// Buffer address.
    pub addr: u64,
    /// Buffer length.
    pub len: u32,
    /// Flags, written as given (`DESC_F_*`).
    pub flags: u16,
    /// The `next` field.
    pub next: RawNext,
}

impl RawDesc {
    /// A descriptor with these fields.
    pub fn new(addr: u64, len: u32, flags: u16, next: RawNext) -> Self {
        RawDesc {
            addr,
            len,
            flags,
            next,
        }
    }

    /// A well-formed chain of `(addr, len, device_writable)` buffers:
    /// `DESC_F_NEXT` on all but the last, `next` = following. Tweak the result
    /// to make it malformed.
    pub fn chain(buffers: &[(u64, u32, bool)]) -> Vec<RawDesc> {
        let n = buffers.len();
        buffers
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, writable))| {
                let mut flags = if writable { DESC_F_WRITE } else { 0 };
                if i + 1 < n {
                    flags |= DESC_F_NEXT;
                }
                RawDesc::new(addr, len, flags, RawNext::Following)
            })
            .collect()
    }
}

/// One used-ring entry that the driver consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Used {
    /// Head descriptor of the completed chain.
    pub head: u16,
    /// Token given when the chain was added.
    pub token: u64,
    /// Bytes the device reports having written.
    pub len: u32,
}

/// An in-flight chain.
#[derive(Debug)]
struct Chain {
    token: u64,
    slots: Slots,
    _indirect: Option<DmaBuf>,
}

/// The driver side of one split virtqueue.
#[derive(Debug)]
pub struct SplitQueue {
    mem: DmaMemory,
    ring: DmaBuf,
    addrs: QueueAddresses,
    features: RingFeatures,
    /// Free descriptor slots (a stack).
    free: Vec<u16>,
    /// In-flight chains by head.
    chains: Vec<Option<Chain>>,
    /// Next avail index to fill (shadow of avail->idx plus unpublished entries).
    avail_idx: u16,
    /// Value last written to avail->idx.
    published: u16,
    /// Avail-ring entries made since the queue was created, without wrapping.
    avail_total: u64,
    /// avail->idx at the last notification decision.
    kicked: u16,
    /// Next used index to consume.
    last_used: u16,
    /// Whether the driver currently wants interrupts.
    interrupts: bool,
    /// Indirect tables of [`SPARE_TABLE_BYTES`], kept for reuse.
    spare_tables: Vec<DmaBuf>,
    /// Bytes of the indirect table being built, kept to avoid an allocation per chain.
    table_scratch: Vec<u8>,
}

/// Descriptor slots of one chain, head first (one for an indirect chain).
type Slots = SmallVec<[u16; 4]>;

/// Size of reused indirect tables (16 descriptors): enough for any request of
/// a few buffers; longer chains get a table of their own size.
const SPARE_TABLE_BYTES: usize = 16 * 16;

impl SplitQueue {
    /// Allocates and initialises a queue of `size` descriptors (a power of two)
    /// in `mem`, with interrupts disabled.
    pub fn new(mem: &DmaMemory, size: u16, features: RingFeatures) -> Result<Self> {
        if size == 0 || size > MAX_QUEUE_SIZE || !size.is_power_of_two() {
            return Err(Error::BadSize(size));
        }
        let layout = RingLayout::new(size);
        let total = usize::try_from(layout.total).map_err(|_| Error::BadSize(size))?;
        let ring = mem.alloc_aligned(total, PAGE_SIZE)?;
        mem.fill(&ring, 0)?;
        let base = ring.gpa();
        let mut queue = SplitQueue {
            mem: mem.clone(),
            addrs: QueueAddresses {
                size,
                desc: base,
                avail: base + layout.avail,
                used: base + layout.used,
            },
            ring,
            features,
            free: (0..size).rev().collect(),
            chains: (0..size).map(|_| None).collect(),
            avail_idx: 0,
            published: 0,
            avail_total: 0,
            kicked: 0,
            last_used: 0,
            interrupts: true,
            spare_tables: Vec::new(),
            table_scratch: Vec::new(),
        };
        queue.disable_notifications()?;
        Ok(queue)
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        self.addrs.size
    }

    /// Ring addresses, for the transport.
    pub fn addresses(&self) -> QueueAddresses {
        self.addrs
    }

    /// Ring features in use.
    pub fn features(&self) -> RingFeatures {
        self.features
    }

    /// The memory the queue lives in.
    pub fn memory(&self) -> &DmaMemory {
        &self.mem
    }

    /// The allocation holding the three ring parts.
    pub fn ring_buffer(&self) -> &DmaBuf {
        &self.ring
    }

    /// Free descriptor slots.
    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    /// Chains added and not yet returned by the device.
    pub fn in_flight(&self) -> usize {
        self.chains.iter().filter(|c| c.is_some()).count()
    }

    /// Next avail index the driver will fill.
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// Next used index the driver will consume.
    pub fn last_used_idx(&self) -> u16 {
        self.last_used
    }

    // ---- memory helpers -------------------------------------------------

    fn store_u16(&self, gpa: u64, val: u16, order: Ordering) -> Result<()> {
        self.mem
            .guest_memory()
            .store(val, GuestAddress(gpa), order)
            .map_err(|source| memory::Error::Access { gpa, source }.into())
    }

    fn load_u16(&self, gpa: u64, order: Ordering) -> Result<u16> {
        self.mem
            .guest_memory()
            .load(GuestAddress(gpa), order)
            .map_err(|source| memory::Error::Access { gpa, source }.into())
    }

    fn desc_gpa(&self, slot: u16) -> u64 {
        self.addrs.desc + DESC_SIZE * u64::from(slot)
    }

    fn write_desc(&self, slot: u16, desc: Descriptor) -> Result<()> {
        Ok(self.mem.write_obj_at(self.desc_gpa(slot), desc)?)
    }

    /// Reads descriptor `slot` of the table (for tests and debugging).
    pub fn read_desc(&self, slot: u16) -> Result<Descriptor> {
        Ok(self.mem.read_obj_at(self.desc_gpa(slot % self.size()))?)
    }

    fn used_event_gpa(&self) -> u64 {
        self.addrs.avail + 4 + 2 * u64::from(self.size())
    }

    fn avail_event_gpa(&self) -> u64 {
        self.addrs.used + 4 + 8 * u64::from(self.size())
    }

    /// Avail-ring entries made since the queue was created, counted without
    /// wrapping (an index jump by [`write_avail_idx_raw`](Self::write_avail_idx_raw)
    /// counts as the entries it skips). The device takes entries in ring
    /// order, so on an accelerator request queue the n-th entry gets the
    /// fence with sequence number n (spec §6.2).
    pub fn avail_total(&self) -> u64 {
        self.avail_total
    }

    /// The used index the device last published.
    pub fn used_idx(&self) -> Result<u16> {
        self.load_u16(self.addrs.used + 2, Ordering::Acquire)
    }

    /// `avail_event` as the device last wrote it (meaningful with EVENT_IDX).
    pub fn avail_event(&self) -> Result<u16> {
        self.load_u16(self.avail_event_gpa(), Ordering::Acquire)
    }

    /// `used_event` as the driver last wrote it.
    pub fn used_event(&self) -> Result<u16> {
        self.load_u16(self.used_event_gpa(), Ordering::Acquire)
    }

    /// Used-ring flags as the device last wrote them.
    pub fn used_flags(&self) -> Result<u16> {
        self.load_u16(self.addrs.used, Ordering::Acquire)
    }

    // ---- adding chains --------------------------------------------------

    fn take_slots(&mut self, n: usize) -> Result<Slots> {
        if n > self.free.len() {
            return Err(Error::QueueFull {
                needed: n,
                free: self.free.len(),
            });
        }
        let at = self.free.len() - n;
        Ok(self.free.drain(at..).rev().collect())
    }

    fn push_avail(&mut self, head: u16) -> Result<()> {
        let slot = self.avail_idx % self.size();
        let gpa = self.addrs.avail + 4 + 2 * u64::from(slot);
        self.store_u16(gpa, head, Ordering::Relaxed)?;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.avail_total += 1;
        Ok(())
    }

    /// Records the chain whose descriptors fill `slots` (head first) under
    /// `token` and puts its head in the avail ring (unpublished).
    fn record(&mut self, slots: Slots, token: u64, indirect: Option<DmaBuf>) -> Result<u16> {
        let head = slots.first().copied().ok_or(Error::EmptyChain)?;
        self.chains[usize::from(head)] = Some(Chain {
            token,
            slots,
            _indirect: indirect,
        });
        self.push_avail(head)?;
        Ok(head)
    }

    /// An indirect table of `bytes` bytes: a reused one when it fits.
    fn indirect_table(&mut self, bytes: usize) -> Result<DmaBuf> {
        if bytes <= SPARE_TABLE_BYTES {
            if let Some(table) = self.spare_tables.pop() {
                return Ok(table);
            }
            return Ok(self.mem.alloc_aligned(SPARE_TABLE_BYTES, DESC_SIZE)?);
        }
        Ok(self.mem.alloc_aligned(bytes, DESC_SIZE)?)
    }

    /// Adds a chain of device-readable then device-writable buffers
    /// `(gpa, len)` and puts its head in the avail ring (unpublished).
    ///
    /// With indirect descriptors negotiated, a chain of more than one buffer
    /// goes through an indirect table allocated in guest memory and takes one
    /// slot; otherwise it takes one slot per buffer.
    pub fn add(
        &mut self,
        readable: &[(u64, u32)],
        writable: &[(u64, u32)],
        token: u64,
    ) -> Result<u16> {
        let n = readable.len() + writable.len();
        if n == 0 {
            return Err(Error::EmptyChain);
        }
        let bufs = readable
            .iter()
            .map(|&(a, l)| (a, l, 0))
            .chain(writable.iter().map(|&(a, l)| (a, l, DESC_F_WRITE)));

        if self.features.indirect && n > 1 {
            if self.free.is_empty() {
                return Err(Error::QueueFull { needed: 1, free: 0 });
            }
            let table_len =
                u16::try_from(n)
                    .ok()
                    .map(|n| u32::from(n) * 16)
                    .ok_or(Error::ChainTooLong {
                        len: n,
                        size: self.size(),
                    })?;
            self.table_scratch.clear();
            for (i, (addr, len, flags)) in bufs.enumerate() {
                let desc = match u16::try_from(i + 1) {
                    Ok(next) if i + 1 < n => Descriptor::new(addr, len, flags | DESC_F_NEXT, next),
                    _ => Descriptor::new(addr, len, flags, 0),
                };
                self.table_scratch.extend_from_slice(desc.as_slice());
            }
            let table = self.indirect_table(table_len as usize)?;
            self.mem.write(&table, 0, &self.table_scratch)?;
            let slots = self.take_slots(1)?;
            let head = slots[0];
            self.write_desc(
                head,
                Descriptor::new(table.gpa(), table_len, DESC_F_INDIRECT, 0),
            )?;
            return self.record(slots, token, Some(table));
        }

        if n > usize::from(self.size()) {
            return Err(Error::ChainTooLong {
                len: n,
                size: self.size(),
            });
        }
        let slots = self.take_slots(n)?;
        for (i, (addr, len, flags)) in bufs.enumerate() {
            let desc = match slots.get(i + 1) {
                Some(&next) => Descriptor::new(addr, len, flags | DESC_F_NEXT, next),
                None => Descriptor::new(addr, len, flags, 0),
            };
            self.write_desc(slots[i], desc)?;
        }
        self.record(slots, token, None)
    }

    /// Writes `descs` verbatim into free slots (flags as given, `next` as
    /// [`RawNext`] says), records the chain under `token` and puts its first
    /// descriptor in the avail ring (unpublished). Returns the head slot.
    ///
    /// Nothing is checked: loops, out-of-range `next`, writable-then-readable
    /// chains and indirect descriptors pointing anywhere are all allowed. When
    /// the device returns the head, every slot of the call is freed.
    pub fn add_raw(&mut self, descs: &[RawDesc], token: u64) -> Result<u16> {
        if descs.is_empty() {
            return Err(Error::EmptyChain);
        }
        for (index, d) in descs.iter().enumerate() {
            if let RawNext::Desc(target) = d.next {
                if target >= descs.len() {
                    return Err(Error::BadRawNext {
                        index,
                        target,
                        len: descs.len(),
                    });
                }
            }
        }
        if descs.len() > usize::from(self.size()) {
            return Err(Error::ChainTooLong {
                len: descs.len(),
                size: self.size(),
            });
        }
        let slots = self.take_slots(descs.len())?;
        for (i, d) in descs.iter().enumerate() {
            let next = match d.next {
                RawNext::Following => slots.get(i + 1).copied().unwrap_or(0),
                RawNext::Desc(target) => slots[target],
                RawNext::Absolute(v) => v,
            };
            self.write_desc(slots[i], Descriptor::new(d.addr, d.len, d.flags, next))?;
        }
        self.record(slots, token, None)
    }

    /// Puts `head` in the next avail-ring slot (unpublished) without checking
    /// or recording anything, e.g. an index past the queue size or a head that
    /// is already in flight.
    pub fn push_avail_raw(&mut self, head: u16) -> Result<()> {
        self.push_avail(head)
    }

    /// Writes `idx` into avail->idx verbatim and takes it as the published
    /// index (e.g. to jump by more than the queue size).
    pub fn write_avail_idx_raw(&mut self, idx: u16) -> Result<()> {
        fence(Ordering::Release);
        self.store_u16(self.addrs.avail + 2, idx, Ordering::Release)?;
        self.avail_total += u64::from(idx.wrapping_sub(self.avail_idx));
        self.avail_idx = idx;
        self.published = idx;
        Ok(())
    }

    // ---- publishing and notifying -----------------------------------------

    /// Makes every chain added so far visible to the device (one avail->idx update).
    pub fn publish(&mut self) -> Result<()> {
        if self.avail_idx == self.published {
            return Ok(());
        }
        // Descriptors and avail-ring slots before the index.
        fence(Ordering::Release);
        self.store_u16(self.addrs.avail + 2, self.avail_idx, Ordering::Release)?;
        self.published = self.avail_idx;
        Ok(())
    }

    /// Whether the device must be notified of what was published since the
    /// last call (`avail_event` with EVENT_IDX, else `VRING_USED_F_NO_NOTIFY`).
    pub fn needs_notify(&mut self) -> Result<bool> {
        // The index update must be visible before the device's suppression state is read.
        fence(Ordering::SeqCst);
        let new = self.published;
        let old = self.kicked;
        self.kicked = new;
        if new == old {
            return Ok(false);
        }
        if self.features.event_idx {
            Ok(need_event(self.avail_event()?, new, old))
        } else {
            Ok(self.used_flags()? & USED_F_NO_NOTIFY == 0)
        }
    }

    /// [`publish`](Self::publish) then [`needs_notify`](Self::needs_notify).
    pub fn publish_and_check(&mut self) -> Result<bool> {
        self.publish()?;
        self.needs_notify()
    }

    // ---- consuming used entries -------------------------------------------

    /// Whether the device has used entries the driver has not consumed.
    pub fn has_used(&self) -> Result<bool> {
        Ok(self.used_idx()? != self.last_used)
    }

    /// Consumes the next used entry, frees its chain and returns it.
    ///
    /// An id that is not an in-flight head is consumed too, and reported as
    /// [`Error::BadUsedId`].
    pub fn pop_used(&mut self) -> Result<Option<Used>> {
        let used = self.used_idx()?;
        if used == self.last_used {
            return Ok(None);
        }
        if used.wrapping_sub(self.last_used) > self.size() {
            return Err(Error::BadUsedIdx {
                used,
                last: self.last_used,
            });
        }
        // The used index was loaded with Acquire: the entry is visible.
        let slot = u64::from(self.last_used % self.size());
        let elem = self.addrs.used + 4 + 8 * slot;
        let id: u32 = self.mem.read_obj_at(elem)?;
        let len: u32 = self.mem.read_obj_at(elem + 4)?;
        self.last_used = self.last_used.wrapping_add(1);
        if self.features.event_idx {
            self.write_used_event()?;
        }
        let chain = u16::try_from(id)
            .ok()
            .filter(|&h| h < self.size())
            .and_then(|h| self.chains[usize::from(h)].take().map(|c| (h, c)));
        let Some((head, chain)) = chain else {
            return Err(Error::BadUsedId { id, len });
        };
        self.free.extend(chain.slots.iter().rev());
        if let Some(table) = chain._indirect {
            if table.len() == SPARE_TABLE_BYTES
                && self.spare_tables.len() < usize::from(self.size())
            {
                self.spare_tables.push(table);
            }
        }
        Ok(Some(Used {
            head,
            token: chain.token,
            len,
        }))
    }

    // ---- interrupt suppression ---------------------------------------------

    fn write_used_event(&self) -> Result<()> {
        let event = if self.interrupts {
            self.last_used
        } else {
            // One behind: never crossed (see `need_event`).
            self.last_used.wrapping_sub(1)
        };
        self.store_u16(self.used_event_gpa(), event, Ordering::Release)
    }

    /// Asks the device to interrupt on the next used entry. Returns whether
    /// entries are already pending, in which case the driver must not sleep.
    pub fn enable_notifications(&mut self) -> Result<bool> {
        self.interrupts = true;
        if self.features.event_idx {
            self.write_used_event()?;
        } else {
            self.store_u16(self.addrs.avail, 0, Ordering::Release)?;
        }
        // The request must be visible before the used index is re-read.
        fence(Ordering::SeqCst);
        self.has_used()
    }

    /// Asks the device to interrupt only once `count` (>= 1) more entries are
    /// used (EVENT_IDX; without it, on the next entry). Returns whether at
    /// least `count` entries are already pending.
    pub fn enable_notifications_after(&mut self, count: u16) -> Result<bool> {
        self.interrupts = true;
        let count = count.max(1);
        if self.features.event_idx {
            let event = self.last_used.wrapping_add(count - 1);
            self.store_u16(self.used_event_gpa(), event, Ordering::Release)?;
        } else {
            self.store_u16(self.addrs.avail, 0, Ordering::Release)?;
        }
        fence(Ordering::SeqCst);
        Ok(self.used_idx()?.wrapping_sub(self.last_used) >= count)
    }

    /// Asks the device not to interrupt.
    pub fn disable_notifications(&mut self) -> Result<()> {
        self.interrupts = false;
        if self.features.event_idx {
            self.write_used_event()
        } else {
            self.store_u16(self.addrs.avail, AVAIL_F_NO_INTERRUPT, Ordering::Release)
        }
    }

    /// Moves a fresh queue's indices (driver shadows and both ring indices)
    /// to `idx`, as if `idx` chains had gone round: tests of index wrap-around.
    #[cfg(test)]
    pub(crate) fn start_at(&mut self, idx: u16) -> Result<()> {
        self.store_u16(self.addrs.avail + 2, idx, Ordering::Release)?;
        self.store_u16(self.addrs.used + 2, idx, Ordering::Release)?;
        self.avail_idx = idx;
        self.published = idx;
        self.kicked = idx;
        self.last_used = idx;
        self.disable_notifications()
    }

    /// Writes `used_event` verbatim (EVENT_IDX fault tests). It is rewritten
    /// by the next pop or notification change.
    pub fn set_used_event(&mut self, event: u16) -> Result<()> {
        self.store_u16(self.used_event_gpa(), event, Ordering::Release)
    }
}

#[cfg(test)]
mod tests;
