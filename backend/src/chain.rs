// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Walks a descriptor chain once, translating it to host memory.
//!
//! The virtio-queue chain iterator hides the descriptors that refer to
//! indirect tables and stops without a word at a table whose length is not a
//! multiple of 16 or at 4 GiB of buffers, so the device could not tell those
//! defects apart nor find a response after them; [`walk`] reads the
//! descriptor table itself. It reads every descriptor exactly once (no
//! double fetch), follows the walking rules of §6.5 of the specification
//! (indirect tables, loops, `next` out of range, readable before writable as
//! in 2.7.4.2 of the virtio specification, the device's `max_segments` limit
//! of §10), translates each buffer to host segments of the current memory
//! snapshot, and keeps going after an error as far as those rules allow, so
//! that the response can still be written. The lists it makes hold that
//! snapshot, so its mappings live as long as they do.

use std::ptr::NonNull;
use std::sync::Arc;

use thiserror::Error;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, VolatileMemory,
    VolatileSlice,
};

use crate::sg::{HostSeg, SgError, SgList};

/// What is wrong with a chain.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum ChainError {
    /// A device-readable descriptor follows a device-writable one.
    #[error("readable descriptor after a writable one")]
    ReadableAfterWritable,
    /// More descriptors than the device's `max_segments`.
    #[error("more than {0} descriptors")]
    TooManyDescriptors(u32),
    /// A descriptor whose table entry is not guest memory.
    #[error("descriptor at {0:#x} is outside guest memory")]
    UnreadableDescriptor(u64),
    /// A `next` index (or the head) outside its descriptor table.
    #[error("descriptor index {index} is out of a table of {entries}")]
    IndexOutOfRange {
        /// The index.
        index: u16,
        /// Entries of the table.
        entries: u32,
    },
    /// More descriptors linked in one table than it has entries.
    #[error("the chain loops in a table of {0} descriptors")]
    Loop(u32),
    /// An indirect descriptor inside an indirect table.
    #[error("indirect descriptor inside an indirect table")]
    NestedIndirect,
    /// An indirect descriptor with `VIRTQ_DESC_F_NEXT`.
    #[error("indirect descriptor with NEXT")]
    IndirectWithNext,
    /// An indirect table whose length is not a positive multiple of 16.
    #[error("indirect table of {0} bytes, not a positive multiple of 16")]
    IndirectLength(u32),
    /// An indirect table that is not entirely guest memory.
    #[error("indirect table {addr:#x}+{len:#x} is outside guest memory")]
    IndirectOutside {
        /// Guest-physical address.
        addr: u64,
        /// Length of its whole descriptors.
        len: u64,
    },
    /// A descriptor points outside guest memory.
    #[error("descriptor {addr:#x}+{len:#x} is outside guest memory")]
    BadAddress {
        /// Guest-physical address.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// The buffers of the chain add up to 2^32 bytes or more.
    #[error("chain of 2^32 bytes or more")]
    TooLong,
    /// A list's total length overflows.
    #[error("list length overflows")]
    Overflow,
    /// A list holding memory of another snapshot was given to
    /// [`Translator::translate`] (a bug of the caller, not of the chain).
    #[error("list of another memory snapshot")]
    OtherSnapshot,
}

impl ChainError {
    /// The status the device returns for a chain with this defect (§6.5).
    pub fn status(&self) -> virtio_accel_spec::Status {
        use virtio_accel_spec::Status;
        match self {
            ChainError::TooManyDescriptors(_) => Status::Limit,
            ChainError::BadAddress { .. } => Status::BadAddress,
            ChainError::OtherSnapshot => Status::DeviceError,
            ChainError::ReadableAfterWritable
            | ChainError::UnreadableDescriptor(_)
            | ChainError::IndexOutOfRange { .. }
            | ChainError::Loop(_)
            | ChainError::NestedIndirect
            | ChainError::IndirectWithNext
            | ChainError::IndirectLength(_)
            | ChainError::IndirectOutside { .. }
            | ChainError::TooLong
            | ChainError::Overflow => Status::Invalid,
        }
    }
}

/// How far past `max_segments` a walk goes looking for the end of a chain.
const LOOP_SEARCH_FACTOR: u32 = 4;

/// Bytes of one descriptor (virtio 1.2, 2.7.5).
const DESC_SIZE: u32 = 16;

/// Total length of a chain's buffers from which the chain is malformed
/// (virtio 1.2, 2.7.5.2; §6.5).
const MAX_CHAIN_BYTES: u64 = 1 << 32;

/// Distinct indices a `next` field can name.
const MAX_LINKED: u32 = 1 << 16;

/// Where a chain begins: the descriptor table of its virtqueue and the index
/// of its head descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainStart {
    /// Guest-physical address of the virtqueue's descriptor table.
    pub table: u64,
    /// Entries of that table: the queue size.
    pub size: u16,
    /// Index of the chain's first descriptor.
    pub head: u16,
}

/// The buffers of a chain, and the first problem met while walking it.
#[derive(Debug, Default)]
pub struct Walk {
    /// Device-readable bytes, in chain order.
    pub readable: SgList,
    /// Device-writable bytes, in chain order.
    pub writable: SgList,
    /// The first error, if any; the lists hold what was valid before and after it.
    pub error: Option<ChainError>,
}

impl Walk {
    fn fail(&mut self, error: ChainError) {
        self.error.get_or_insert(error);
    }
}

/// A descriptor table being walked: the virtqueue's, or an indirect table.
#[derive(Debug, Clone, Copy)]
struct Table<'m> {
    addr: u64,
    entries: u32,
    indirect: bool,
    /// The whole table, when it lies in one region: its descriptors are
    /// then read without a region look-up each.
    mapped: Option<VolatileSlice<'m>>,
}

impl<'m> Table<'m> {
    /// The table of `entries` descriptors at `addr` in the memory of
    /// `translator`.
    fn new(translator: &mut Translator<'m>, addr: u64, entries: u32, indirect: bool) -> Self {
        let bytes = usize::try_from(u64::from(entries) * u64::from(DESC_SIZE)).ok();
        let mapped = bytes.and_then(|bytes| translator.slice(addr, bytes));
        Table {
            addr,
            entries,
            indirect,
            mapped,
        }
    }

    /// Reads entry `index`, once.
    fn read(&self, mem: &GuestMemoryMmap, index: u16) -> Result<Descriptor, ChainError> {
        if u32::from(index) >= self.entries {
            return Err(ChainError::IndexOutOfRange {
                index,
                entries: self.entries,
            });
        }
        let offset = u64::from(index) * u64::from(DESC_SIZE);
        let mapped = self.mapped.and_then(|table| {
            let at = usize::try_from(offset).ok()?;
            Some(table.get_ref::<Descriptor>(at).ok()?.load())
        });
        let desc = mapped.or_else(|| {
            let addr = self.addr.checked_add(offset)?;
            read_descriptor(mem, GuestAddress(addr))
        });
        desc.ok_or(ChainError::UnreadableDescriptor(
            self.addr.wrapping_add(offset),
        ))
    }

    /// Most descriptors a chain without a loop links in this table.
    fn max_linked(&self) -> u32 {
        self.entries.min(MAX_LINKED)
    }
}

/// Reads the descriptor at `addr` once: straight from its region, or, for
/// one that straddles two regions, through vm-memory's copy across them.
fn read_descriptor(mem: &GuestMemoryMmap, addr: GuestAddress) -> Option<Descriptor> {
    match GuestMemoryBackend::get_slice(mem, addr, DESC_SIZE as usize) {
        Ok(slice) => slice.get_ref::<Descriptor>(0).ok().map(|desc| desc.load()),
        Err(_) => mem.read_obj::<Descriptor>(addr).ok(),
    }
}

/// Walks the chain that begins at `start` in `mem` (§6.5), accepting at most
/// `max_descriptors` buffer descriptors. The writable list is always a
/// prefix of the chain's writable part: it ends where the walk ends, before
/// the first writable descriptor that cannot be translated and before the
/// descriptors past `max_descriptors`, so a response is never written in the
/// wrong place. The lists hold `mem`.
///
/// The walk fills `walked`, which is empty (`Walk::default()`): a `Walk` is
/// too large to be returned without a copy.
// A stage of the instruction budget (`accel-budget`): kept out of line so
// that callgrind counts it.
#[inline(never)]
pub fn walk(
    start: ChainStart,
    mem: &Arc<GuestMemoryMmap>,
    max_descriptors: u32,
    walked: &mut Walk,
) {
    debug_assert!(
        walked.readable.is_empty() && walked.writable.is_empty() && walked.error.is_none(),
        "a walk fills an empty Walk"
    );
    let mut walker = Walker::new(mem, max_descriptors, walked);
    let mut table = Table::new(
        &mut walker.translator,
        start.table,
        u32::from(start.size),
        false,
    );
    let mut index = start.head;
    let mut linked: u32 = 0;
    loop {
        let desc = match table.read(mem, index) {
            Ok(desc) => desc,
            Err(error) => {
                walker.malformed(error);
                break;
            }
        };
        if desc.refers_to_indirect_table() {
            // Its `next` is not followed, and its WRITE flag is ignored
            // (virtio 1.2, 2.7.5.3.2).
            match walker.enter(table, &desc) {
                Some(inner) => {
                    (table, index, linked) = (inner, 0, 0);
                    continue;
                }
                None => break,
            }
        }
        if !walker.buffer(&desc) || !desc.has_next() {
            break;
        }
        linked += 1;
        if linked >= table.max_linked() {
            walker.malformed(ChainError::Loop(table.entries));
            break;
        }
        index = desc.next();
    }
}

/// One walk in progress, filling `walk`.
struct Walker<'a, 'w> {
    mem: &'a Arc<GuestMemoryMmap>,
    translator: Translator<'a>,
    max_descriptors: u32,
    walk: &'w mut Walk,
    /// Buffer descriptors met, those of an indirect table included.
    count: u32,
    /// Their total length.
    bytes: u64,
    seen_writable: bool,
    /// A writable descriptor could not be translated: later writable
    /// descriptors are left out, so that the writable list stays a prefix.
    writable_broken: bool,
}

impl<'a, 'w> Walker<'a, 'w> {
    fn new(mem: &'a Arc<GuestMemoryMmap>, max_descriptors: u32, walk: &'w mut Walk) -> Self {
        Walker {
            mem,
            translator: Translator::new(mem),
            max_descriptors,
            walk,
            count: 0,
            bytes: 0,
            seen_writable: false,
            writable_broken: false,
        }
    }

    /// Records a defect that ends the walk. A loop is a malformed chain
    /// before it is a long one (§6.5): this defect replaces a
    /// `TooManyDescriptors` met on the way.
    fn malformed(&mut self, error: ChainError) {
        if matches!(self.walk.error, Some(ChainError::TooManyDescriptors(_))) {
            self.walk.error = None;
        }
        self.walk.fail(error);
    }

    /// The indirect table that `desc`, found in `current`, refers to, if the
    /// walk goes on into it (§6.5): its whole descriptors, the trailing bytes
    /// of a length that is not a multiple of 16 left out.
    fn enter(&mut self, current: Table<'a>, desc: &Descriptor) -> Option<Table<'a>> {
        if current.indirect {
            self.malformed(ChainError::NestedIndirect);
            return None;
        }
        if desc.has_next() {
            self.walk.fail(ChainError::IndirectWithNext);
        }
        let len = desc.len();
        let entries = len / DESC_SIZE;
        if len % DESC_SIZE != 0 || entries == 0 {
            self.walk.fail(ChainError::IndirectLength(len));
        }
        if entries == 0 {
            return None;
        }
        let addr = desc.addr().0;
        let whole = u64::from(entries * DESC_SIZE);
        let inside = usize::try_from(whole)
            .is_ok_and(|whole| GuestMemoryBackend::check_range(&**self.mem, desc.addr(), whole));
        if !inside {
            self.malformed(ChainError::IndirectOutside { addr, len: whole });
            return None;
        }
        Some(Table::new(&mut self.translator, addr, entries, true))
    }

    /// Takes one buffer descriptor; false once the walk has gone as far past
    /// `max_descriptors` as it looks for the end of a chain.
    fn buffer(&mut self, desc: &Descriptor) -> bool {
        self.count = self.count.saturating_add(1);
        if self.count > self.max_descriptors {
            // Keep walking a little, without translating, to tell a short
            // loop (Invalid) from a long chain (Limit); past the budget both
            // are reported as Limit (§6.5 allows either for such a chain).
            self.walk
                .fail(ChainError::TooManyDescriptors(self.max_descriptors));
            return self.count <= self.max_descriptors.saturating_mul(LOOP_SEARCH_FACTOR);
        }
        self.bytes = self.bytes.saturating_add(u64::from(desc.len()));
        if self.bytes >= MAX_CHAIN_BYTES {
            self.walk.fail(ChainError::TooLong);
        }
        let writable = desc.is_write_only();
        if writable {
            self.seen_writable = true;
        } else if self.seen_writable {
            self.walk.fail(ChainError::ReadableAfterWritable);
            return true;
        }
        if writable && self.writable_broken {
            return true;
        }
        let list = if writable {
            &mut self.walk.writable
        } else {
            &mut self.walk.readable
        };
        let translated = self
            .translator
            .translate(desc.addr().0, u64::from(desc.len()), list);
        if let Err(error) = translated {
            self.writable_broken |= writable;
            self.walk.fail(error);
        }
        true
    }
}

/// Translates guest buffers of one memory snapshot to host segments,
/// remembering the region of the last one: the buffers of a chain mostly
/// lie in one region, which is then looked up once.
pub struct Translator<'a> {
    mem: &'a Arc<GuestMemoryMmap>,
    last: Option<Region>,
}

/// A region of guest memory and where the snapshot maps it. `host` is a raw
/// address: it stays valid only while the [`Translator`] holding it borrows
/// the snapshot.
#[derive(Clone, Copy)]
struct Region {
    start: u64,
    len: u64,
    host: NonNull<u8>,
}

impl Region {
    /// The region of `mem` holding guest address `addr`.
    fn of(mem: &GuestMemoryMmap, addr: u64) -> Option<Self> {
        let region = mem.find_region(GuestAddress(addr))?;
        Some(Region {
            start: region.start_addr().0,
            len: GuestMemoryRegion::len(region),
            host: NonNull::new(region.as_ptr())?,
        })
    }

    /// Where the `count` bytes at guest address `addr` begin in the
    /// mapping, if they all lie in this region.
    fn host_address(&self, addr: u64, count: usize) -> Option<NonNull<u8>> {
        let offset = addr.checked_sub(self.start)?;
        let end = offset.checked_add(u64::try_from(count).ok()?)?;
        if end > self.len {
            return None;
        }
        let offset = usize::try_from(offset).ok()?;
        // SAFETY: `offset + count <= len`: the bytes lie within the region's
        // mapping, which begins at `host`.
        Some(unsafe { self.host.add(offset) })
    }
}

impl<'a> Translator<'a> {
    /// A translator of buffers of `mem`.
    pub fn new(mem: &'a Arc<GuestMemoryMmap>) -> Self {
        Translator { mem, last: None }
    }

    /// Appends the host segments of `len` bytes at guest address `addr` to
    /// `list`, which then holds the snapshot (it must be empty or hold it
    /// already).
    pub fn translate(&mut self, addr: u64, len: u64, list: &mut SgList) -> Result<(), ChainError> {
        let bad = ChainError::BadAddress { addr, len };
        let count = usize::try_from(len).map_err(|_| bad)?;
        let pushed = |e| match e {
            SgError::TooLong => ChainError::Overflow,
            SgError::OtherOwner => ChainError::OtherSnapshot,
        };
        // Most buffers lie in one region: one segment.
        if count > 0 {
            if let Some(start) = self.in_one_region(addr, count) {
                // SAFETY: the segment lies in one region of the snapshot,
                // mapped read-write until the region drops, after the last
                // clone of the snapshot (the table counts references to its
                // regions).
                return unsafe { list.push(HostSeg::new(start, count), self.mem) }.map_err(pushed);
            }
        }
        let before = list.len();
        let appended = self
            .mem
            .get_slices(vm_memory::GuestAddress(addr), count)
            .try_for_each(|slice| {
                let slice = slice.map_err(|_| bad)?;
                let seg = HostSeg::from_volatile(&slice).ok_or(bad)?;
                // SAFETY: `slice` is one run of a region of the snapshot,
                // mapped read-write until the region drops, which is after
                // the last clone of the snapshot (the regions are
                // reference-counted by the table).
                unsafe { list.push(seg, self.mem) }.map_err(pushed)
            });
        if appended.is_err() {
            // All or nothing: the list ends where it ended before.
            list.truncate(before);
        }
        appended
    }

    /// The `count` bytes at guest address `addr`, as one slice of guest
    /// memory, if they lie in one region.
    fn slice(&mut self, addr: u64, count: usize) -> Option<VolatileSlice<'a>> {
        let start = self.in_one_region(addr, count)?;
        // SAFETY: the bytes lie in one region of the snapshot, which stays
        // mapped while the snapshot is borrowed for `'a`.
        Some(unsafe { VolatileSlice::new(start.as_ptr(), count) })
    }

    /// Where the `count` bytes at guest address `addr` begin in the host's
    /// mapping, if they lie in one region: the last one met, or the one
    /// holding `addr`.
    fn in_one_region(&mut self, addr: u64, count: usize) -> Option<NonNull<u8>> {
        if let Some(start) = self
            .last
            .and_then(|region| region.host_address(addr, count))
        {
            return Some(start);
        }
        let region = Region::of(self.mem, addr)?;
        self.last = Some(region);
        region.host_address(addr, count)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use accel_driver::virtqueue::{
        DESC_F_INDIRECT as INDIRECT, DESC_F_NEXT as NEXT, DESC_F_WRITE as WRITE,
    };
    use virtio_accel_spec::Status;
    use vm_memory::GuestAddress;

    use super::*;

    /// The virtqueue's descriptor table.
    const QUEUE: u64 = 0x1000;
    /// An indirect table.
    const TABLE: u64 = 0x2000;
    /// Buffers.
    const DATA: u64 = 0x10000;

    fn memory(len: usize) -> Arc<GuestMemoryMmap> {
        Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), len)]).unwrap())
    }

    fn desc(addr: u64, len: u32, flags: u16, next: u16) -> Descriptor {
        Descriptor::new(addr, len, flags, next)
    }

    fn place(mem: &GuestMemoryMmap, table: u64, descs: &[Descriptor]) {
        for (i, d) in (0u64..).zip(descs) {
            mem.write_obj(*d, GuestAddress(table + 16 * i)).unwrap();
        }
    }

    /// The walk of the chain at `start`.
    fn walked(start: ChainStart, mem: &Arc<GuestMemoryMmap>, max_descriptors: u32) -> Walk {
        let mut walked = Walk::default();
        walk(start, mem, max_descriptors, &mut walked);
        walked
    }

    /// Walks the chain at the head of a queue of `size` holding `descs`.
    fn walk_queue(mem: &Arc<GuestMemoryMmap>, size: u16, descs: &[Descriptor]) -> Walk {
        place(mem, QUEUE, descs);
        let start = ChainStart {
            table: QUEUE,
            size,
            head: 0,
        };
        walked(start, mem, 128)
    }

    /// Two adjacent regions meeting at `BOUNDARY`, which is not a multiple
    /// of 16, then a hole from `HOLE`.
    const BOUNDARY: u64 = 0x10008;
    const HOLE: u64 = 0x20000;

    fn two_regions() -> Arc<GuestMemoryMmap> {
        let low = usize::try_from(BOUNDARY).unwrap();
        let high = usize::try_from(HOLE - BOUNDARY).unwrap();
        let ranges = [(GuestAddress(0), low), (GuestAddress(BOUNDARY), high)];
        Arc::new(GuestMemoryMmap::from_ranges(&ranges).unwrap())
    }

    /// A buffer and a descriptor across the boundary of two regions are
    /// read whole (a segment per region, and one copy); one that runs into
    /// a hole is refused, and leaves its list as it was.
    #[test]
    fn buffers_and_descriptors_across_regions() {
        let mem = two_regions();
        let data = vec![0x3c_u8; 64];
        mem.write_slice(&data, GuestAddress(BOUNDARY - 32)).unwrap();
        let mut list = SgList::new();
        Translator::new(&mem)
            .translate(BOUNDARY - 32, 64, &mut list)
            .unwrap();
        let mut read = vec![0; 64];
        assert_eq!(list.read_into(&mut read), 64);
        assert_eq!(read, data);
        assert_eq!(
            Translator::new(&mem).translate(HOLE - 16, 32, &mut list),
            Err(ChainError::BadAddress {
                addr: HOLE - 16,
                len: 32
            })
        );
        assert_eq!(list.len(), 64);

        // A queue whose table's entry 1 lies across the boundary.
        let table = BOUNDARY - 24;
        place(
            &mem,
            table,
            &[desc(0x100, 8, NEXT, 1), desc(0x200, 40, WRITE, 0)],
        );
        let start = ChainStart {
            table,
            size: 2,
            head: 0,
        };
        let first = walked(start, &mem, 16);
        assert_eq!(first.error, None);
        assert_eq!((first.readable.len(), first.writable.len()), (8, 40));
        let past = ChainStart {
            table: HOLE - 16,
            size: 2,
            head: 1,
        };
        assert_eq!(
            walked(past, &mem, 16).error,
            Some(ChainError::UnreadableDescriptor(HOLE))
        );
        // A descriptor that begins in memory and ends in the hole.
        let straddling = ChainStart {
            table: HOLE - 8,
            size: 1,
            head: 0,
        };
        assert_eq!(
            walked(straddling, &mem, 16).error,
            Some(ChainError::UnreadableDescriptor(HOLE - 8))
        );
    }

    #[test]
    fn a_chain_is_split_into_its_readable_and_writable_parts() {
        let mem = memory(1 << 20);
        let walked = walk_queue(
            &mem,
            16,
            &[
                desc(DATA, 100, NEXT, 1),
                desc(DATA + 0x1000, 64, WRITE | NEXT, 2),
                desc(DATA + 0x2000, 32, WRITE, 0),
            ],
        );
        assert_eq!(walked.error, None);
        assert_eq!((walked.readable.len(), walked.writable.len()), (100, 96));
    }

    #[test]
    fn an_indirect_table_of_40_bytes_is_walked_to_its_last_whole_descriptor() {
        let mem = memory(1 << 20);
        place(
            &mem,
            TABLE,
            &[desc(DATA, 100, NEXT, 1), desc(DATA + 0x1000, 64, WRITE, 0)],
        );
        let walked = walk_queue(&mem, 16, &[desc(TABLE, 40, INDIRECT, 0)]);
        assert_eq!(walked.error, Some(ChainError::IndirectLength(40)));
        assert_eq!((walked.readable.len(), walked.writable.len()), (100, 64));
        assert_eq!(walked.error.unwrap().status(), Status::Invalid);
    }

    #[test]
    fn an_indirect_descriptor_with_next_is_entered_but_its_next_not_followed() {
        let mem = memory(1 << 20);
        place(
            &mem,
            TABLE,
            &[desc(DATA, 100, NEXT, 1), desc(DATA + 0x1000, 64, WRITE, 0)],
        );
        let walked = walk_queue(
            &mem,
            16,
            &[
                desc(TABLE, 32, INDIRECT | NEXT, 1),
                desc(DATA + 0x2000, 50, WRITE, 0),
            ],
        );
        assert_eq!(walked.error, Some(ChainError::IndirectWithNext));
        assert_eq!((walked.readable.len(), walked.writable.len()), (100, 64));
    }

    #[test]
    fn the_write_flag_of_an_indirect_descriptor_is_ignored() {
        let mem = memory(1 << 20);
        place(
            &mem,
            TABLE,
            &[
                desc(DATA + 0x100, 9, NEXT, 1),
                desc(DATA + 0x1000, 64, WRITE, 0),
            ],
        );
        let walked = walk_queue(
            &mem,
            16,
            &[
                desc(DATA, 100, NEXT, 1),
                desc(TABLE, 32, INDIRECT | WRITE, 0),
            ],
        );
        assert_eq!(walked.error, None);
        assert_eq!((walked.readable.len(), walked.writable.len()), (109, 64));
    }

    #[test]
    fn a_chain_of_4_gib_is_walked_to_its_end() {
        let big: u32 = 64 << 20;
        let mem = memory(big as usize);
        let mut descs: Vec<Descriptor> = (1..=64).map(|i| desc(0, big, NEXT, i)).collect();
        descs.push(desc(DATA, 64, WRITE, 0));
        let walked = walk_queue(&mem, 128, &descs);
        assert_eq!(walked.error, Some(ChainError::TooLong));
        assert_eq!(walked.writable.len(), 64);
        descs.remove(0);
        let walked = walk_queue(&mem, 128, &descs);
        assert_eq!(walked.error, None, "4 GiB - 64 MiB + 64 bytes");
    }

    #[test]
    fn a_loop_is_malformed_and_keeps_its_response() {
        let mem = memory(1 << 20);
        let walked = walk_queue(
            &mem,
            16,
            &[
                desc(DATA, 100, NEXT, 1),
                desc(DATA + 0x1000, 64, WRITE | NEXT, 1),
            ],
        );
        assert_eq!(walked.error, Some(ChainError::Loop(16)));
        assert!(walked.writable.len() >= 64);
    }

    #[test]
    fn defects_that_end_the_walk_keep_what_came_before() {
        let mem = memory(1 << 20);
        let response = desc(DATA + 0x1000, 64, WRITE | NEXT, 1);
        let nested = [
            desc(DATA + 0x2000, 8, WRITE | NEXT, 1),
            desc(TABLE + 0x100, 16, INDIRECT, 0),
        ];
        place(&mem, TABLE, &nested);
        let outside = 0xff_fff0;
        let cases = [
            (desc(DATA, 8, WRITE, 0), None, 72),
            (
                desc(DATA, 8, WRITE | NEXT, 16),
                Some(ChainError::IndexOutOfRange {
                    index: 16,
                    entries: 16,
                }),
                72,
            ),
            (
                desc(TABLE, 32, INDIRECT, 0),
                Some(ChainError::NestedIndirect),
                72,
            ),
            (
                desc(outside, 32, INDIRECT, 0),
                Some(ChainError::IndirectOutside {
                    addr: outside,
                    len: 32,
                }),
                64,
            ),
            (
                desc(TABLE, 15, INDIRECT, 0),
                Some(ChainError::IndirectLength(15)),
                64,
            ),
            (
                desc(TABLE, 0, INDIRECT, 0),
                Some(ChainError::IndirectLength(0)),
                64,
            ),
        ];
        for (second, error, writable) in cases {
            let walked = walk_queue(&mem, 16, &[response, second]);
            assert_eq!(walked.error, error, "{second:?}");
            assert_eq!(walked.writable.len(), writable, "{second:?}");
        }
    }

    #[test]
    fn a_range_leaving_guest_memory_adds_nothing() {
        let mem =
            Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0x1000), 0x2000)]).unwrap());
        let mut list = SgList::new();
        Translator::new(&mem)
            .translate(0x1000, 0x100, &mut list)
            .unwrap();
        let error = Translator::new(&mem)
            .translate(0x2800, 0x1000, &mut list)
            .unwrap_err();
        assert_eq!(
            error,
            ChainError::BadAddress {
                addr: 0x2800,
                len: 0x1000
            }
        );
        assert_eq!(list.len(), 0x100, "the part inside memory was not kept");
        let other =
            Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0x1000), 0x2000)]).unwrap());
        assert_eq!(
            Translator::new(&other).translate(0x1000, 0x10, &mut list),
            Err(ChainError::OtherSnapshot),
            "a list holds one snapshot"
        );
    }
}
