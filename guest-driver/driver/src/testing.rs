// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Test helpers: a minimal in-process device side of a split virtqueue.

use std::sync::atomic::Ordering;

use vm_memory::{Bytes, GuestAddress};

use crate::memory::DmaMemory;
use crate::virtqueue::{
    need_event, Descriptor, QueueAddresses, AVAIL_F_NO_INTERRUPT, DESC_F_INDIRECT, DESC_F_NEXT,
    DESC_F_WRITE, DESC_SIZE,
};

/// A chain as the device sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DevChain {
    pub head: u16,
    pub readable: Vec<(u64, u32)>,
    pub writable: Vec<(u64, u32)>,
    pub indirect: bool,
}

/// The device side of one split queue, reading and writing the rings directly.
pub(crate) struct FakeDevice {
    pub mem: DmaMemory,
    pub addrs: QueueAddresses,
    pub event_idx: bool,
    pub next_avail: u16,
    pub next_used: u16,
}

impl FakeDevice {
    pub fn new(mem: &DmaMemory, addrs: QueueAddresses, event_idx: bool) -> Self {
        FakeDevice {
            mem: mem.clone(),
            addrs,
            event_idx,
            next_avail: 0,
            next_used: 0,
        }
    }

    fn load(&self, gpa: u64) -> u16 {
        self.mem
            .guest_memory()
            .load(GuestAddress(gpa), Ordering::Acquire)
            .unwrap()
    }

    fn store(&self, gpa: u64, v: u16) {
        self.mem
            .guest_memory()
            .store(v, GuestAddress(gpa), Ordering::Release)
            .unwrap()
    }

    pub fn avail_idx(&self) -> u16 {
        self.load(self.addrs.avail + 2)
    }

    pub fn used_event(&self) -> u16 {
        self.load(self.addrs.avail + 4 + 2 * u64::from(self.addrs.size))
    }

    pub fn avail_flags(&self) -> u16 {
        self.load(self.addrs.avail)
    }

    pub fn set_avail_event(&self, v: u16) {
        self.store(self.addrs.used + 4 + 8 * u64::from(self.addrs.size), v);
    }

    pub fn set_used_flags(&self, v: u16) {
        self.store(self.addrs.used, v);
    }

    fn desc(&self, table: u64, i: u16) -> Descriptor {
        self.mem
            .read_obj_at(table + DESC_SIZE * u64::from(i))
            .unwrap()
    }

    /// Walks the chain at `head`; `Err` on a loop or an out-of-range index.
    pub fn walk(&self, head: u16) -> Result<DevChain, String> {
        let size = self.addrs.size;
        let mut chain = DevChain {
            head,
            readable: Vec::new(),
            writable: Vec::new(),
            indirect: false,
        };
        if head >= size {
            return Err(format!("head {head} out of range"));
        }
        let first = self.desc(self.addrs.desc, head);
        let (table, count, mut i) = if u16::from(first.flags) & DESC_F_INDIRECT != 0 {
            chain.indirect = true;
            let len = u32::from(first.len);
            let addr = u64::from(first.addr);
            if !self.mem.contains(addr, u64::from(len)) {
                return Err("indirect table outside memory".into());
            }
            (addr, u16::try_from(len / 16).unwrap(), 0u16)
        } else {
            (self.addrs.desc, size, head)
        };
        for _ in 0..count {
            let d = self.desc(table, i);
            let flags = u16::from(d.flags);
            let seg = (u64::from(d.addr), u32::from(d.len));
            if flags & DESC_F_WRITE != 0 {
                chain.writable.push(seg);
            } else {
                if !chain.writable.is_empty() {
                    return Err("readable after writable".into());
                }
                chain.readable.push(seg);
            }
            if flags & DESC_F_NEXT == 0 {
                return Ok(chain);
            }
            i = u16::from(d.next);
            if i >= count {
                return Err(format!("next {i} out of range"));
            }
        }
        Err("loop".into())
    }

    /// Takes the next published head, if any.
    pub fn pop_head(&mut self) -> Option<u16> {
        if self.avail_idx() == self.next_avail {
            return None;
        }
        let slot = self.next_avail % self.addrs.size;
        let head = self.load(self.addrs.avail + 4 + 2 * u64::from(slot));
        self.next_avail = self.next_avail.wrapping_add(1);
        if self.event_idx {
            self.set_avail_event(self.next_avail);
            // The next avail-index read must not pass this store.
            std::sync::atomic::fence(Ordering::SeqCst);
        }
        Some(head)
    }

    /// Takes and walks the next published chain.
    pub fn pop(&mut self) -> Option<DevChain> {
        self.pop_head().map(|h| self.walk(h).unwrap())
    }

    /// Puts `id`/`len` in the used ring; returns whether the driver wants an interrupt.
    pub fn push_used(&mut self, id: u32, len: u32) -> bool {
        let slot = self.next_used % self.addrs.size;
        let elem = self.addrs.used + 4 + 8 * u64::from(slot);
        self.mem.write_obj_at(elem, id).unwrap();
        self.mem.write_obj_at(elem + 4, len).unwrap();
        let old = self.next_used;
        self.next_used = self.next_used.wrapping_add(1);
        std::sync::atomic::fence(Ordering::Release);
        self.store(self.addrs.used + 2, self.next_used);
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.event_idx {
            need_event(self.used_event(), self.next_used, old)
        } else {
            self.avail_flags() & AVAIL_F_NO_INTERRUPT == 0
        }
    }
}
