// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Split-ring wire layout: descriptors, ring offsets, flags and the event-index rule.

use vm_memory::endian::{Le16, Le32, Le64};
use vm_memory::ByteValued;

/// Descriptor flag: the chain continues at `next`.
pub const DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the buffer is device-writable.
pub const DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer is a table of descriptors.
pub const DESC_F_INDIRECT: u16 = 4;
/// Avail-ring flag: the driver does not want interrupts (without EVENT_IDX).
pub const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Used-ring flag: the device does not want notifications (without EVENT_IDX).
pub const USED_F_NO_NOTIFY: u16 = 1;

const _: () = {
    use virtio_bindings::virtio_ring as vr;
    assert!(DESC_F_NEXT as u32 == vr::VRING_DESC_F_NEXT);
    assert!(DESC_F_WRITE as u32 == vr::VRING_DESC_F_WRITE);
    assert!(DESC_F_INDIRECT as u32 == vr::VRING_DESC_F_INDIRECT);
    assert!(AVAIL_F_NO_INTERRUPT as u32 == vr::VRING_AVAIL_F_NO_INTERRUPT);
    assert!(USED_F_NO_NOTIFY as u32 == vr::VRING_USED_F_NO_NOTIFY);
};

/// Size of one descriptor.
pub const DESC_SIZE: u64 = 16;
/// Largest split queue size.
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// One split-ring descriptor, as it sits in a descriptor table.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    /// Guest-physical address of the buffer (or of the indirect table).
    pub addr: Le64,
    /// Length of the buffer in bytes.
    pub len: Le32,
    /// `DESC_F_*` flags.
    pub flags: Le16,
    /// Index of the next descriptor when `DESC_F_NEXT` is set.
    pub next: Le16,
}
const _: () = assert!(std::mem::size_of::<Descriptor>() as u64 == DESC_SIZE);

// SAFETY: `Descriptor` is `repr(C)`, made only of little-endian integer wrappers
// with no padding (16 bytes, asserted), and any bit pattern is a valid value.
unsafe impl ByteValued for Descriptor {}

impl Descriptor {
    /// A descriptor with these fields.
    pub fn new(addr: u64, len: u32, flags: u16, next: u16) -> Self {
        Descriptor {
            addr: Le64::from(addr),
            len: Le32::from(len),
            flags: Le16::from(flags),
            next: Le16::from(next),
        }
    }

    /// Encodes `descs` as the bytes of a descriptor table.
    pub fn table_bytes(descs: &[Descriptor]) -> Vec<u8> {
        descs
            .iter()
            .flat_map(|d| d.as_slice().iter().copied())
            .collect()
    }
}

/// Guest-physical addresses and size of a split virtqueue, as a transport needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueAddresses {
    /// Queue size (number of descriptors), a power of two.
    pub size: u16,
    /// Descriptor table (16-byte aligned).
    pub desc: u64,
    /// Available ring (2-byte aligned).
    pub avail: u64,
    /// Used ring (4-byte aligned).
    pub used: u64,
}

/// Byte offsets of the parts of a split ring inside one allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RingLayout {
    pub(crate) avail: u64,
    pub(crate) used: u64,
    pub(crate) total: u64,
}

impl RingLayout {
    /// Descriptor table at 0, avail ring right after it, used ring on the next
    /// 64-byte boundary (stricter than the 4 bytes virtio requires).
    pub(crate) fn new(size: u16) -> Self {
        let size = u64::from(size);
        let avail = DESC_SIZE * size;
        let avail_end = avail + 6 + 2 * size;
        let used = avail_end.div_ceil(64) * 64;
        let total = used + 6 + 8 * size;
        RingLayout { avail, used, total }
    }
}

/// The event-index rule (`vring_need_event`): whether moving an index from
/// `old` to `new` crosses `event`, i.e. `event` is in `old..new` (mod 2^16).
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_alignment() {
        for size in [1u16, 2, 4, 8, 256, 1024, 32768] {
            let l = RingLayout::new(size);
            assert_eq!(l.avail, 16 * u64::from(size));
            assert_eq!(l.used % 64, 0);
            assert!(l.used >= l.avail + 6 + 2 * u64::from(size));
            assert_eq!(l.total, l.used + 6 + 8 * u64::from(size));
        }
    }

    #[test]
    fn need_event_basic_and_wrapping() {
        // Device/driver moved from 5 to 8: events 5, 6, 7 are crossed.
        assert!(!need_event(4, 8, 5));
        assert!(need_event(5, 8, 5));
        assert!(need_event(7, 8, 5));
        assert!(!need_event(8, 8, 5));
        // Nothing moved: never.
        assert!(!need_event(5, 5, 5));
        // Around the u16 wrap: 65534 -> 2 crosses 65534, 65535, 0, 1.
        for ev in [65534u16, 65535, 0, 1] {
            assert!(need_event(ev, 2, 65534), "event {ev}");
        }
        for ev in [65533u16, 2, 3, 100] {
            assert!(!need_event(ev, 2, 65534), "event {ev}");
        }
        // An event one behind the old index is never crossed by a move of up
        // to 2^16 - 1 steps: that is how the driver "disables" interrupts.
        for step in [1u16, 100, 32768, 65535] {
            let old = 40000u16;
            assert!(!need_event(
                old.wrapping_sub(1),
                old.wrapping_add(step),
                old
            ));
        }
    }

    #[test]
    fn descriptor_bytes() {
        let d = Descriptor::new(0x1122_3344_5566_7788, 0x99aa_bbcc, 0x0102, 0x0304);
        let b = Descriptor::table_bytes(&[d, d]);
        assert_eq!(b.len(), 32);
        assert_eq!(
            &b[..16],
            &[
                0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0xcc, 0xbb, 0xaa, 0x99, 0x02, 0x01,
                0x04, 0x03
            ]
        );
    }
}
