// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Split virtqueues laid out in guest memory by a fuzz input: a driver that
//! mostly builds well-formed chains, and now and then a raw descriptor with
//! any address, length, flags and successor (loops, bad indices, indirect
//! tables, addresses outside memory).

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::input::{Reader, Writer};
use crate::memory::GuardedMemory;

/// The largest queue the targets use.
pub const MAX_QUEUE_SIZE: u16 = 64;
/// Guest memory reserved for the rings of each queue.
const RING_SLOT: u64 = 0x2000;
/// The most queues whose rings fit below [`DATA_START`].
pub const MAX_QUEUES: u16 = 8;
/// Where chain buffers begin.
const DATA_START: u64 = RING_SLOT * MAX_QUEUES as u64;
/// Size of the first region (rings and buffers).
const REGION0_SIZE: u64 = 0x8_0000;
/// Size of the second region.
const REGION1_SIZE: usize = 0x1_0000;

const VIRTQ_DESC_F_NEXT: u16 = 1;
const VIRTQ_DESC_F_WRITE: u16 = 2;
const VIRTQ_DESC_F_INDIRECT: u16 = 4;
/// Longest readable or writable buffer of one descriptor a chain asks for.
const MAX_BUFFER: usize = 0x2000;

/// The guest memory of a target: region 0 at guest address 0 holding the
/// rings and buffers, and region 1 after a gap the input chooses (none: the
/// regions touch, and buffers may straddle them).
pub fn guest_memory(gap_pages: u8) -> std::io::Result<GuardedMemory> {
    let region1 = REGION0_SIZE + u64::from(gap_pages) * 0x1000;
    GuardedMemory::new(&[(0, REGION0_SIZE as usize), (region1, REGION1_SIZE)])
}

/// One descriptor a driver places.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DescSpec {
    /// Device-readable bytes.
    Read(Vec<u8>),
    /// A device-writable buffer of this many bytes.
    Write(u16),
    /// A descriptor taken as it is (its own flags and successor).
    Raw {
        /// Guest address.
        addr: u64,
        /// Length.
        len: u32,
        /// Flags.
        flags: u16,
        /// Index of the next descriptor.
        next: u16,
    },
}

/// One descriptor chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainSpec {
    /// The descriptors, in chain order.
    pub descs: Vec<DescSpec>,
    /// Whether the chain sits in an indirect table.
    pub indirect: bool,
}

impl ChainSpec {
    /// Reads a chain: a flags byte (bit 0: indirect), a count, then each
    /// descriptor as a tag byte (below 0x80 readable: u16 length and the
    /// bytes; below 0xf0 writable: u16 length; else raw: u64 address, u32
    /// length, u16 flags, u16 next).
    pub fn read(r: &mut Reader<'_>) -> Self {
        let indirect = r.u8() & 1 != 0;
        let count = 1 + usize::from(r.u8() % 80);
        let mut descs = Vec::with_capacity(count);
        for _ in 0..count {
            let desc = match r.u8() {
                0x00..=0x7f => {
                    let len = usize::from(r.u16()) % (MAX_BUFFER + 1);
                    DescSpec::Read(r.bytes(len).to_vec())
                }
                0x80..=0xef => DescSpec::Write(r.u16() % (MAX_BUFFER as u16 + 1)),
                _ => DescSpec::Raw {
                    addr: r.u64(),
                    len: r.u32(),
                    flags: r.u16(),
                    next: r.u16(),
                },
            };
            descs.push(desc);
            if r.is_empty() {
                break;
            }
        }
        ChainSpec { descs, indirect }
    }

    /// Writes the chain as [`ChainSpec::read`] reads it.
    pub fn write(&self, w: &mut Writer) {
        w.u8(u8::from(self.indirect));
        w.u8((self.descs.len() - 1) as u8);
        for desc in &self.descs {
            match desc {
                DescSpec::Read(bytes) => w.u8(0).u16(bytes.len() as u16).bytes(bytes),
                DescSpec::Write(len) => w.u8(0x80).u16(*len),
                DescSpec::Raw {
                    addr,
                    len,
                    flags,
                    next,
                } => w.u8(0xff).u64(*addr).u32(*len).u16(*flags).u16(*next),
            };
        }
    }

    /// The readable bytes, in order, when the chain is made of placed
    /// buffers only (no raw descriptor).
    pub fn readable_bytes(&self) -> Option<Vec<u8>> {
        let mut bytes = Vec::new();
        for desc in &self.descs {
            match desc {
                DescSpec::Read(data) => bytes.extend_from_slice(data),
                DescSpec::Write(_) => {}
                DescSpec::Raw { .. } => return None,
            }
        }
        Some(bytes)
    }
}

/// The rings of one split virtqueue in guest memory, and the driver's side
/// of them.
#[derive(Debug)]
pub struct SplitRing {
    /// Queue size.
    pub size: u16,
    /// Descriptor table address.
    pub desc_table: u64,
    /// Available ring address.
    pub avail_ring: u64,
    /// Used ring address.
    pub used_ring: u64,
    next_desc: u16,
    avail_idx: u16,
    /// How many times each head was made available.
    pub published: Vec<u32>,
}

/// Bump allocator of buffer space shared by every ring of a target.
#[derive(Debug)]
pub struct DataArea {
    next: u64,
}

impl Default for DataArea {
    fn default() -> Self {
        DataArea { next: DATA_START }
    }
}

impl DataArea {
    /// `len` bytes of buffer space, 8-aligned, or `None` once full (the
    /// chain then points at the start of the area, and overlaps).
    fn alloc(&mut self, len: u64) -> Option<u64> {
        let addr = self.next;
        let end = addr.checked_add(len)?;
        if end > REGION0_SIZE + REGION1_SIZE as u64 {
            return None;
        }
        self.next = (end + 7) & !7;
        Some(addr)
    }
}

impl SplitRing {
    /// The rings of queue `index` (below [`MAX_QUEUES`]) of `size` entries
    /// (a power of two up to [`MAX_QUEUE_SIZE`]).
    pub fn new(index: u16, size: u16) -> Self {
        let base = u64::from(index) * RING_SLOT;
        SplitRing {
            size,
            desc_table: base,
            avail_ring: base + 0x800,
            used_ring: base + 0x1000,
            next_desc: 0,
            avail_idx: 0,
            published: vec![0; usize::from(size)],
        }
    }

    fn write_desc(mem: &GuestMemoryMmap, at: u64, addr: u64, len: u32, flags: u16, next: u16) {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&addr.to_le_bytes());
        bytes[8..12].copy_from_slice(&len.to_le_bytes());
        bytes[12..14].copy_from_slice(&flags.to_le_bytes());
        bytes[14..].copy_from_slice(&next.to_le_bytes());
        // Inside region 0 by construction.
        let _ = mem.write_slice(&bytes, GuestAddress(at));
    }

    /// Places `chain` (buffers in `data`, descriptors in the table or an
    /// indirect table) and returns its head; the chain is not made
    /// available. Returns whether every buffer got space of its own.
    pub fn place(
        &mut self,
        mem: &GuestMemoryMmap,
        data: &mut DataArea,
        chain: &ChainSpec,
    ) -> (u16, bool) {
        let count = chain.descs.len() as u64;
        let mut exact = true;
        let (table, first_index) = if chain.indirect {
            let table = data.alloc(16 * count).unwrap_or(DATA_START);
            (table, 0u16)
        } else {
            (self.desc_table, self.next_desc)
        };
        let table_size = if chain.indirect { u16::MAX } else { self.size };
        for (position, desc) in chain.descs.iter().enumerate() {
            let index = ((usize::from(first_index) + position) % usize::from(table_size)) as u16;
            let successor = ((usize::from(index) + 1) % usize::from(table_size)) as u16;
            let link = if position + 1 < chain.descs.len() {
                VIRTQ_DESC_F_NEXT
            } else {
                0
            };
            let (addr, len, flags, next) = match desc {
                DescSpec::Read(bytes) => {
                    let addr = data.alloc(bytes.len() as u64);
                    exact &= addr.is_some();
                    let addr = addr.unwrap_or(DATA_START);
                    let _ = mem.write_slice(bytes, GuestAddress(addr));
                    (addr, bytes.len() as u32, link, successor)
                }
                DescSpec::Write(len) => {
                    let addr = data.alloc(u64::from(*len));
                    exact &= addr.is_some();
                    (
                        addr.unwrap_or(DATA_START),
                        u32::from(*len),
                        link | VIRTQ_DESC_F_WRITE,
                        successor,
                    )
                }
                DescSpec::Raw {
                    addr,
                    len,
                    flags,
                    next,
                } => (*addr, *len, *flags, *next),
            };
            Self::write_desc(mem, table + 16 * u64::from(index), addr, len, flags, next);
        }
        let head = self.next_desc;
        let used = if chain.indirect { 1 } else { count as u16 };
        self.next_desc =
            ((u64::from(self.next_desc) + u64::from(used)) % u64::from(self.size)) as u16;
        if chain.indirect {
            Self::write_desc(
                mem,
                self.desc_table + 16 * u64::from(head),
                table,
                (16 * count) as u32,
                VIRTQ_DESC_F_INDIRECT,
                0,
            );
        }
        (head, exact)
    }

    /// Makes `head` available to the device (available ring entry, then
    /// the index, as a driver publishes).
    pub fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        let _ = mem.write_obj(head, GuestAddress(self.avail_ring + 4 + 2 * slot));
        self.avail_idx = self.avail_idx.wrapping_add(1);
        let _ = mem.write_obj(self.avail_idx, GuestAddress(self.avail_ring + 2));
        if let Some(count) = self.published.get_mut(usize::from(head)) {
            *count += 1;
        }
    }

    /// The used entries the device has written: (head, length).
    pub fn used(&self, mem: &GuestMemoryMmap) -> Vec<(u32, u32)> {
        let idx: u16 = mem.read_obj(GuestAddress(self.used_ring + 2)).unwrap_or(0);
        (0..idx)
            .map(|i| {
                let at = self.used_ring + 4 + 8 * u64::from(i % self.size);
                let id: u32 = mem.read_obj(GuestAddress(at)).unwrap_or(u32::MAX);
                let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap_or(0);
                (id, len)
            })
            .collect()
    }

    /// Checks what the device returned against what was made available:
    /// no more entries than chains made available and, while the used ring
    /// has not wrapped, no head more often than it was made available.
    pub fn check_used(&self, mem: &GuestMemoryMmap) {
        let used = self.used(mem);
        let published: u32 = self.published.iter().sum();
        assert!(
            used.len() as u64 <= u64::from(published),
            "{} used entries for {published} chains made available",
            used.len()
        );
        if used.len() > usize::from(self.size) {
            return;
        }
        let mut returned = vec![0u32; usize::from(self.size)];
        for (id, _) in used {
            let slot = usize::try_from(id).ok().and_then(|id| returned.get_mut(id));
            let Some(slot) = slot else {
                panic!(
                    "used entry names head {id}, the queue has {} entries",
                    self.size
                );
            };
            *slot += 1;
            let index = id as usize;
            assert!(
                returned[index] <= self.published[index],
                "head {id} returned {} times, made available {} times",
                returned[index],
                self.published[index]
            );
        }
    }
}
