// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The used ring of a split virtqueue, written a batch at a time (virtio
//! 1.2, 2.7.8): every entry of the batch, then the used index once, where
//! virtio-queue's `add_used` stores the index after each entry. The ring is
//! looked up in guest memory once per batch, not once per entry, and the
//! driver sees one store to the index it polls, not one per entry.
//!
//! Whether the driver asked to be notified is then decided as virtio-queue's
//! `needs_notification` does (2.7.7): always without `VIRTIO_F_EVENT_IDX`;
//! with it, when the driver's `used_event` lies among the entries added
//! since the last decision. A ring that does not lie in one region of guest
//! memory, or whose index is not aligned, is written through virtio-queue,
//! entry by entry. The two ways may alternate: virtio-queue's count of
//! entries added since its last decision, which this way leaves alone, can
//! then only widen its next decision to a notification more, never to one
//! fewer. The index is stored through an atomic reference, which vm-memory's
//! dirty-page tracking does not see: the snapshot type has no such tracking
//! (`GuestMemoryMmap<()>`); one that had would have to mark the index.

use std::sync::atomic::{fence, AtomicU16, Ordering};

use thiserror::Error;
use virtio_queue::{Queue, QueueT};
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, VolatileMemory, VolatileSlice,
};

/// Bytes before the first used entry: `flags` and `idx`.
const USED_HEADER: usize = 4;
/// Offset of `idx` in the used ring.
const USED_INDEX: usize = 2;
/// Bytes of a used entry: `id` and `len`, both little-endian 32-bit.
const USED_ENTRY: usize = 8;
/// Bytes before the first entry of the available ring.
const AVAIL_HEADER: u64 = 4;
/// Bytes of an available entry.
const AVAIL_ENTRY: u64 = 2;

/// Why a used entry was not returned.
#[derive(Debug, Error)]
pub enum UsedError {
    /// The head names no descriptor of the queue.
    #[error("head {head} is past the queue's {size} entries")]
    HeadOutOfRange {
        /// The head.
        head: u16,
        /// The queue's size.
        size: u16,
    },
    /// The ring could not be written.
    #[error("used ring: {0}")]
    Ring(#[from] vm_memory::volatile_memory::Error),
    /// virtio-queue refused the entry (the ring is not in guest memory).
    #[error(transparent)]
    Queue(#[from] virtio_queue::Error),
}

/// Adds the used entries `batch`, each a head and its used length, to the
/// used ring of `queue` in `mem`, then moves the used index past those it
/// took; `refused` hears of each entry it could not add. Returns whether the
/// driver is to be notified.
pub fn publish(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    batch: &[(u16, u32)],
    mut refused: impl FnMut(u16, UsedError),
) -> bool {
    let Some(ring) = used_ring(queue, mem) else {
        return publish_by_entry(queue, mem, batch, refused);
    };
    // 2.7: the driver aligns the used ring to 4 bytes; an index that is not aligned
    // is left to virtio-queue, which refuses it.
    let Ok(index) = ring.get_atomic_ref::<AtomicU16>(USED_INDEX) else {
        return publish_by_entry(queue, mem, batch, refused);
    };
    let size = queue.size();
    let old = queue.next_used();
    let mut next = old;
    for &(head, len) in batch {
        if head >= size {
            refused(head, UsedError::HeadOutOfRange { head, size });
            continue;
        }
        let at = USED_HEADER + USED_ENTRY * usize::from(next % size);
        let entry = u64::from(head) | u64::from(len) << 32;
        match ring.write_obj(entry.to_le(), at) {
            Ok(()) => next = next.wrapping_add(1),
            Err(e) => refused(head, e.into()),
        }
    }
    // The entries before the index (2.7.8.2).
    if next != old {
        index.store(next.to_le(), Ordering::Release);
    }
    queue.set_next_used(next);
    needs_notification(queue, mem, old, next)
}

/// The used ring of `queue`, header and entries, if it lies in one region
/// of `mem`.
fn used_ring<'m>(queue: &Queue, mem: &'m GuestMemoryMmap) -> Option<VolatileSlice<'m>> {
    let bytes = USED_HEADER + USED_ENTRY * usize::from(queue.size());
    mem.get_slice(GuestAddress(queue.used_ring()), bytes).ok()
}

/// [`publish`] through virtio-queue's `add_used`, one entry at a time.
fn publish_by_entry(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    batch: &[(u16, u32)],
    mut refused: impl FnMut(u16, UsedError),
) -> bool {
    for &(head, len) in batch {
        if let Err(e) = queue.add_used(mem, head, len) {
            refused(head, e.into());
        }
    }
    queue.needs_notification(mem).unwrap_or(true)
}

/// Whether the driver wants a notification for the entries from `old` to
/// `next` (2.7.7): always without `VIRTIO_F_EVENT_IDX`, or when the used
/// event it wrote lies among them. One it cannot read asks for one.
fn needs_notification(queue: &Queue, mem: &GuestMemoryMmap, old: u16, next: u16) -> bool {
    // The used index is stored before the driver's event is read.
    fence(Ordering::SeqCst);
    if !queue.event_idx_enabled() {
        return true;
    }
    used_event(queue, mem)
        .is_none_or(|event| next.wrapping_sub(event).wrapping_sub(1) < next.wrapping_sub(old))
}

/// How many more used entries the driver waits for before it wants a
/// notification (2.7.7): with `VIRTIO_F_EVENT_IDX`, when its `used_event`
/// lies at or ahead of the used index, less than half the index space
/// ahead. `None` when it wants one for the next entry, or has interrupts
/// off (an event behind the index), or says nothing.
pub fn entries_until_notification(queue: &Queue, mem: &GuestMemoryMmap) -> Option<u16> {
    if !queue.event_idx_enabled() {
        return None;
    }
    let count = used_event(queue, mem)?
        .wrapping_sub(queue.next_used())
        .wrapping_add(1);
    (2..=0x8000).contains(&count).then_some(count)
}

/// The driver's `used_event`, if it lies in guest memory.
fn used_event(queue: &Queue, mem: &GuestMemoryMmap) -> Option<u16> {
    let offset = AVAIL_HEADER + AVAIL_ENTRY * u64::from(queue.size());
    let at = queue.avail_ring().checked_add(offset)?;
    mem.load::<u16>(GuestAddress(at), Ordering::Relaxed)
        .ok()
        .map(u16::from_le)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const SIZE: u16 = 8;
    const AVAIL: u64 = 0x1000;
    const USED: u64 = 0x2000;

    /// A guest memory with a ready queue of `SIZE` entries whose used ring
    /// is at `used`.
    fn queue_at(used: u64, event_idx: bool) -> (GuestMemoryMmap, Queue) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x4000)]).unwrap();
        let mut queue = Queue::new(SIZE).unwrap();
        queue.set_desc_table_address(Some(0), Some(0));
        let halves = |addr: u64| {
            let low = u32::try_from(addr & 0xffff_ffff).ok();
            (low, u32::try_from(addr >> 32).ok())
        };
        let (low, high) = halves(AVAIL);
        queue.set_avail_ring_address(low, high);
        let (low, high) = halves(used);
        queue.set_used_ring_address(low, high);
        queue.set_event_idx(event_idx);
        queue.set_ready(true);
        (mem, queue)
    }

    /// The driver's `used_event`.
    fn set_used_event(mem: &GuestMemoryMmap, event: u16) {
        let at = AVAIL + AVAIL_HEADER + AVAIL_ENTRY * u64::from(SIZE);
        mem.write_obj(event.to_le(), GuestAddress(at)).unwrap();
    }

    fn used_ring_bytes(mem: &GuestMemoryMmap) -> Vec<u8> {
        let mut bytes = vec![0; USED_HEADER + USED_ENTRY * usize::from(SIZE)];
        mem.read_slice(&mut bytes, GuestAddress(USED)).unwrap();
        bytes
    }

    /// Two batches in a row, from used index `start`, with the driver's
    /// used event at `event`: the same ring and the same decisions as
    /// virtio-queue's `add_used` and `needs_notification`, across the wrap
    /// of the index, with and without `VIRTIO_F_EVENT_IDX`.
    #[test]
    fn publishes_as_virtio_queue_does() {
        let never = |head, e| panic!("head {head} refused: {e}");
        for event_idx in [false, true] {
            for start in [0, 3, u16::MAX - 2] {
                for (first, second) in [(0, 1), (1, 1), (3, 2), (1, 4), (4, 0)] {
                    for shift in 0..10u16 {
                        let event = start.wrapping_add(shift).wrapping_sub(2);
                        let (ours_mem, mut ours) = queue_at(USED, event_idx);
                        let (theirs_mem, mut theirs) = queue_at(USED, event_idx);
                        for (mem, queue) in [(&ours_mem, &mut ours), (&theirs_mem, &mut theirs)] {
                            set_used_event(mem, event);
                            queue.set_next_used(start);
                        }
                        let heads = [(5, 16), (2, 0), (7, 4096), (0, 48), (6, 1)];
                        for batch in [&heads[..first], &heads[first..first + second]] {
                            let case = format!(
                                "event_idx {event_idx}, start {start}, event {event}, batch {batch:?}"
                            );
                            let notify = publish(&mut ours, &ours_mem, batch, never);
                            let expected = publish_by_entry(&mut theirs, &theirs_mem, batch, never);
                            assert_eq!(notify, expected, "{case}");
                            assert_eq!(ours.next_used(), theirs.next_used(), "{case}");
                            assert_eq!(
                                used_ring_bytes(&ours_mem),
                                used_ring_bytes(&theirs_mem),
                                "{case}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// The count of entries the driver waits for is exact: publishing one
    /// fewer asks for no notification and the last of them asks for one,
    /// across the wrap of the index. An event behind the index, or at it,
    /// or no `VIRTIO_F_EVENT_IDX`, gives no count.
    #[test]
    fn counts_the_entries_until_the_drivers_event() {
        let never = |head, e| panic!("head {head} refused: {e}");
        for start in [0, 5, u16::MAX - 3] {
            for shift in 0..12u16 {
                let event = start.wrapping_add(shift).wrapping_sub(3);
                let (mem, mut queue) = queue_at(USED, true);
                set_used_event(&mem, event);
                queue.set_next_used(start);
                let count = entries_until_notification(&queue, &mem);
                let case = format!("start {start}, event {event}: {count:?}");
                let Some(count) = count else {
                    assert!(shift <= 3, "{case}");
                    continue;
                };
                assert_eq!(count, shift - 2, "{case}");
                for entry in 1..=count {
                    let head = entry % SIZE;
                    let notify = publish(&mut queue, &mem, &[(head, 0)], never);
                    assert_eq!(notify, entry == count, "{case}, entry {entry}");
                }
            }
        }
        let (mem, queue) = queue_at(USED, false);
        set_used_event(&mem, 7);
        assert_eq!(entries_until_notification(&queue, &mem), None);
    }

    /// A head past the queue is refused and takes no entry; the others go
    /// in, in order, and the index moves past them only.
    #[test]
    fn a_head_past_the_queue_takes_no_entry() {
        let (mem, mut queue) = queue_at(USED, false);
        let mut refused = Vec::new();
        publish(
            &mut queue,
            &mem,
            &[(3, 10), (SIZE, 1), (5, 2)],
            |head, _| refused.push(head),
        );
        assert_eq!(refused, [SIZE]);
        assert_eq!(queue.next_used(), 2);
        let ring = used_ring_bytes(&mem);
        assert_eq!(ring[2..4], 2u16.to_le_bytes());
        assert_eq!(ring[4..12], [3, 0, 0, 0, 10, 0, 0, 0]);
        assert_eq!(ring[12..20], [5, 0, 0, 0, 2, 0, 0, 0]);
    }

    /// A used ring not wholly in guest memory is written through
    /// virtio-queue, which refuses the entries it cannot write (and returns
    /// those it can, before the end of memory). (virtio-queue takes no used
    /// ring address that is not aligned.)
    #[test]
    fn a_ring_out_of_memory_goes_through_virtio_queue() {
        let cases: [(u64, &[u16]); 2] = [(0x3ff0, &[2]), (0x1_0000_0000, &[1, 2])];
        for (used, expected) in cases {
            let (mem, mut queue) = queue_at(used, false);
            let mut refused = Vec::new();
            publish(&mut queue, &mem, &[(1, 1), (2, 2)], |head, _| {
                refused.push(head)
            });
            assert_eq!(refused, expected, "used ring at {used:#x}");
        }
    }
}
