// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Scatter-gather lists of host memory, as a device with shared virtual addressing sees them.
//!
//! A [`SgList`] is what a hardware descriptor carries: plain host addresses. It
//! knows nothing of virtio. It owns what keeps its memory mapped: a clone of
//! the [`Keepalive`] of the mapping its segments lie in (for guest memory, the
//! memory table snapshot they were translated in). Every list made from it
//! (a clone, [`SgList::take_front`], [`SgList::slice`]) shares that owner, so
//! in safe code no list, and no job holding one, can outlive its memory: the
//! mapping goes only when the last list over it is dropped.
//!
//! The one unsafe step is [`SgList::push`], whose caller vouches that a
//! segment lies in the memory its owner keeps mapped. A [`HostSeg`] is only an
//! address and a length: nothing reads or writes memory through one except
//! the list that holds it.

use std::any::Any;
use std::ptr::NonNull;
use std::sync::Arc;

use smallvec::SmallVec;
use thiserror::Error;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{ByteValued, VolatileSlice};

/// Owner of the memory that the segments of a [`SgList`] point into;
/// dropping the last clone may unmap that memory.
pub type Keepalive = Arc<dyn Any + Send + Sync>;

/// Why a segment was not added to a list.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum SgError {
    /// The list's total length would overflow.
    #[error("list length overflows")]
    TooLong,
    /// The list holds segments of memory that another owner keeps mapped.
    #[error("segment of another mapping than the list's")]
    OtherOwner,
}

/// One contiguous run of host memory: an address and a length, like a DMA
/// descriptor. It gives no access by itself; the [`SgList`] it is pushed to
/// reads and writes it, under the contract of [`SgList::push`].
#[derive(Debug, Clone, Copy)]
pub struct HostSeg {
    addr: NonNull<u8>,
    len: usize,
}

// SAFETY: a `HostSeg` is an address and a length; nothing is accessed through
// it except by the list holding it, which keeps the memory mapped (`push`).
unsafe impl Send for HostSeg {}
// SAFETY: as above; shared references give no access that `Send` does not.
unsafe impl Sync for HostSeg {}

impl HostSeg {
    /// Describes `len` bytes at `addr`.
    pub fn new(addr: NonNull<u8>, len: usize) -> Self {
        HostSeg { addr, len }
    }

    /// Describes the memory of a guest memory slice.
    pub fn from_volatile<B: BitmapSlice>(slice: &VolatileSlice<'_, B>) -> Option<Self> {
        let addr = NonNull::new(slice.ptr_guard_mut().as_ptr())?;
        Some(HostSeg {
            addr,
            len: slice.len(),
        })
    }

    /// Its first byte's address: for a device to reach the memory (an
    /// engine importing it), valid while the list holding the segment lives.
    pub fn addr(&self) -> NonNull<u8> {
        self.addr
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the segment is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the two segments share a byte.
    fn overlaps(&self, other: &HostSeg) -> bool {
        let start = |seg: &HostSeg| seg.addr.as_ptr() as usize;
        let end = |seg: &HostSeg| start(seg).saturating_add(seg.len);
        start(self) < end(other) && start(other) < end(self)
    }

    /// The first `len` bytes and the rest; `len` must not exceed the length.
    /// Called only on segments held by a list.
    fn split(self, len: usize) -> (HostSeg, HostSeg) {
        debug_assert!(len <= self.len);
        let len = len.min(self.len);
        // SAFETY: the segment lies in one mapped run (contract of
        // `SgList::push`) and `len <= self.len`, so the pointer stays within
        // (or one past the end of) that run.
        let rest = unsafe { NonNull::new_unchecked(self.addr.as_ptr().add(len)) };
        (
            HostSeg {
                addr: self.addr,
                len,
            },
            HostSeg {
                addr: rest,
                len: self.len - len,
            },
        )
    }
}

/// Segments kept inline: most buffers are one or two runs of host memory.
type Segments = SmallVec<[HostSeg; 2]>;

/// Whether a segment of `ours` shares a byte with one of `theirs`.
fn segments_overlap(ours: &[HostSeg], theirs: &[HostSeg]) -> bool {
    ours.iter()
        .any(|seg| theirs.iter().any(|other| seg.overlaps(other)))
}

/// The runs of host memory of an [`SgList`], to compare, not to access.
#[derive(Debug, Clone, Default)]
pub struct Spans(Segments);

impl Spans {
    /// Adds the runs of `list`.
    pub fn add(&mut self, list: &SgList) {
        self.0.extend_from_slice(&list.segs);
    }

    /// Whether a byte of host memory is in these runs and in `list`.
    pub fn overlaps(&self, list: &SgList) -> bool {
        segments_overlap(&self.0, &list.segs)
    }
}

/// An ordered list of segments forming one buffer, owning (a clone of) the
/// [`Keepalive`] of their memory: the list, and every list made from it,
/// keeps that memory mapped for as long as it lives, whatever happens to the
/// job or request it was made for.
#[derive(Debug, Clone, Default)]
pub struct SgList {
    segs: Segments,
    len: usize,
    /// Keeps the memory of every segment mapped; taken with the first
    /// segment (one clone per list, not per segment).
    owner: Option<Keepalive>,
}

impl SgList {
    /// An empty list.
    pub fn new() -> Self {
        SgList::default()
    }

    /// Appends `seg`, which lies in memory that `owner` keeps mapped; empty
    /// segments are dropped. A list holds the memory of one owner: it takes a
    /// clone of `owner` with its first segment.
    ///
    /// # Errors
    ///
    /// [`SgError::TooLong`] if the total length overflows,
    /// [`SgError::OtherOwner`] if the list holds segments of another owner
    /// (another `Arc`); the list is left untouched.
    ///
    /// # Safety
    ///
    /// `seg` must lie in one run of memory that is mapped, readable and
    /// writable, and not freed, for as long as `owner` or any clone of it
    /// lives (for example a mapping that the value behind `owner` unmaps
    /// when it is dropped).
    pub unsafe fn push<T: Any + Send + Sync>(
        &mut self,
        seg: HostSeg,
        owner: &Arc<T>,
    ) -> Result<(), SgError> {
        if seg.is_empty() {
            return Ok(());
        }
        let same_owner = self
            .owner
            .as_ref()
            .is_some_and(|held| std::ptr::addr_eq(Arc::as_ptr(held), Arc::as_ptr(owner)));
        if !same_owner && !self.segs.is_empty() {
            return Err(SgError::OtherOwner);
        }
        let len = self.len.checked_add(seg.len).ok_or(SgError::TooLong)?;
        if !same_owner {
            self.owner = Some(Arc::clone(owner) as Keepalive);
        }
        self.len = len;
        self.segs.push(seg);
        Ok(())
    }

    /// Its segments, in order, as a device's descriptors carry them: the
    /// memory stays mapped while this list (or a clone) lives, so a device
    /// given the addresses must be done with them before the list is
    /// dropped, as [`crate::engine::HwQueue`]'s contract has it.
    pub fn segments(&self) -> &[HostSeg] {
        &self.segs
    }

    /// Total length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the list holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether a byte of host memory is in both lists (a request whose
    /// output overlaps its input cannot run twice).
    pub fn overlaps(&self, other: &SgList) -> bool {
        segments_overlap(&self.segs, &other.segs)
    }

    /// Where the list's bytes are, without its hold on that memory: to
    /// compare with other lists later ([`Spans::overlaps`]), at the cost of
    /// a copy of a few addresses.
    pub fn spans(&self) -> Spans {
        Spans(Segments::from_slice(&self.segs))
    }

    /// Removes and returns the first `len` bytes, or `None` (leaving the list
    /// untouched) if it holds fewer.
    pub fn take_front(&mut self, len: usize) -> Option<SgList> {
        if len > self.len {
            return None;
        }
        if let Some(seg) = self.cut_within_first(len) {
            let mut segs = Segments::new();
            segs.push(seg);
            return Some(SgList {
                segs,
                len,
                owner: self.owner.clone(),
            });
        }
        let mut front = SgList {
            segs: Segments::new(),
            len,
            owner: None,
        };
        let mut left = len;
        for seg in &self.segs {
            if left == 0 {
                break;
            }
            let part = seg.split(left.min(seg.len)).0;
            left -= part.len;
            front.segs.push(part);
        }
        if len > 0 {
            front.owner.clone_from(&self.owner);
        }
        self.advance(len)?;
        Some(front)
    }

    /// Drops the first `len` bytes, or returns `None` (leaving the list
    /// untouched) if it holds fewer.
    pub fn advance(&mut self, len: usize) -> Option<()> {
        if len > self.len {
            return None;
        }
        if self.cut_within_first(len).is_some() {
            return Some(());
        }
        let mut left = len;
        let mut whole = 0;
        for seg in &mut self.segs {
            if seg.len > left {
                *seg = seg.split(left).1;
                break;
            }
            left -= seg.len;
            whole += 1;
        }
        self.segs.drain(..whole);
        self.len -= len;
        Some(())
    }

    /// The usual case of cutting the front (a header, a response, a
    /// buffer within one descriptor): if the first segment holds the first
    /// `len` bytes, with `len` not 0, drops them from the list and returns
    /// them as one segment.
    fn cut_within_first(&mut self, len: usize) -> Option<HostSeg> {
        let first = self.segs.first_mut()?;
        if len == 0 || len > first.len {
            return None;
        }
        let (front, rest) = first.split(len);
        if rest.is_empty() {
            self.segs.remove(0);
        } else {
            *first = rest;
        }
        self.len -= len;
        Some(front)
    }

    /// Keeps only the first `len` bytes (all of them if it holds fewer).
    pub fn truncate(&mut self, len: usize) {
        let mut kept = 0;
        let mut count = 0;
        for seg in &mut self.segs {
            if kept >= len {
                break;
            }
            if seg.len > len - kept {
                *seg = seg.split(len - kept).0;
            }
            kept += seg.len;
            count += 1;
        }
        self.segs.truncate(count);
        self.len = kept;
    }

    /// Copies the first `dst.len()` bytes into `dst` and drops them from the
    /// list, or returns `None` (leaving the list untouched) if it holds fewer.
    pub fn read_front(&mut self, dst: &mut [u8]) -> Option<()> {
        if dst.len() > self.len {
            return None;
        }
        self.read_into(dst);
        self.advance(dst.len())
    }

    /// The sub-list of `len` bytes at `offset`, or `None` if out of range.
    pub fn slice(&self, offset: usize, len: usize) -> Option<SgList> {
        let mut rest = self.clone();
        rest.advance(offset)?;
        rest.take_front(len)
    }

    /// Copies the first `dst.len()` bytes into `dst`; returns how many were copied.
    pub fn read_into(&self, dst: &mut [u8]) -> usize {
        let n = dst.len().min(self.len);
        self.reader().read_front(&mut dst[..n]);
        n
    }

    /// A reader of the list from its start, which borrows it.
    pub fn reader(&self) -> SgReader<'_> {
        SgReader {
            segs: &self.segs,
            skip: 0,
            left: self.len,
        }
    }

    /// Copies `src` to the start of the list; returns how many bytes fit.
    pub fn write_from(&self, src: &[u8]) -> usize {
        self.write_at(0, src)
    }

    /// Writes `value` to the start of the list; returns how many bytes fit.
    /// A value within the first segment (the usual case: a response in its
    /// descriptor) is one volatile copy (vm-memory's), without the list's
    /// walk over segments.
    pub fn write_obj<T: ByteValued>(&self, value: T) -> usize {
        let size = std::mem::size_of::<T>();
        match self.segs.first() {
            Some(seg) if size <= seg.len => {
                // SAFETY: `seg` is mapped and writable while this list, which
                // holds its owner, lives (contract of `push`), and holds at
                // least `size` bytes. The copy is volatile: the guest may
                // read or write them meanwhile.
                unsafe { VolatileSlice::<()>::new(seg.addr.as_ptr(), size) }
                    .copy_from(value.as_slice());
                size
            }
            _ => self.write_from(value.as_slice()),
        }
    }

    /// Copies `src` to byte `offset` of the list; returns how many bytes fit.
    pub fn write_at(&self, offset: usize, src: &[u8]) -> usize {
        let mut skip = offset;
        let mut done = 0;
        for seg in &self.segs {
            if done == src.len() {
                break;
            }
            if skip >= seg.len {
                skip -= seg.len;
                continue;
            }
            let n = (seg.len - skip).min(src.len() - done);
            // SAFETY: `seg` is mapped and writable while this list, which
            // holds its owner, lives (contract of `push`); `skip + n` is
            // within it and `src[done..done + n]` within `src`. `ptr::copy`
            // tolerates overlap with guest memory.
            unsafe { std::ptr::copy(src[done..].as_ptr(), seg.addr.as_ptr().add(skip), n) };
            done += n;
            skip = 0;
        }
        done
    }

    /// Sets every byte to `value`.
    pub fn fill(&self, value: u8) {
        for seg in &self.segs {
            // SAFETY: `seg` is mapped and writable while this list, which
            // holds its owner, lives (contract of `push`).
            unsafe { std::ptr::write_bytes(seg.addr.as_ptr(), value, seg.len) };
        }
    }

    /// Copies `min(self.len, dst.len)` bytes from this list into `dst`; the two
    /// may overlap (guest buffers can alias), which gives memmove semantics per
    /// segment pair. Returns the number of bytes copied.
    pub fn copy_to(&self, dst: &SgList) -> usize {
        let total = self.len.min(dst.len);
        let mut src_iter = self.segs.iter().copied();
        let mut dst_iter = dst.segs.iter().copied();
        let (mut s, mut d) = (src_iter.next(), dst_iter.next());
        let mut done = 0;
        while done < total {
            let (Some(src), Some(dstseg)) = (s, d) else {
                break;
            };
            let n = src.len.min(dstseg.len).min(total - done);
            // SAFETY: both segments are mapped while their lists, which hold
            // their owners, live (contract of `push`); `n` is within both;
            // `ptr::copy` allows the source and destination to overlap.
            unsafe { std::ptr::copy(src.addr.as_ptr(), dstseg.addr.as_ptr(), n) };
            done += n;
            let (_, src_rest) = src.split(n);
            let (_, dst_rest) = dstseg.split(n);
            s = if src_rest.is_empty() {
                src_iter.next()
            } else {
                Some(src_rest)
            };
            d = if dst_rest.is_empty() {
                dst_iter.next()
            } else {
                Some(dst_rest)
            };
        }
        done
    }
}

/// Reads a list front to back, borrowing it: an operation that streams an
/// input through it copies neither the list nor (from the worker's thread)
/// the owner of its memory.
#[derive(Debug)]
pub struct SgReader<'a> {
    /// The segments not read to their end.
    segs: &'a [HostSeg],
    /// Bytes of `segs[0]` already read.
    skip: usize,
    /// Bytes left.
    left: usize,
}

impl SgReader<'_> {
    /// Bytes left to read.
    pub fn len(&self) -> usize {
        self.left
    }

    /// Whether every byte was read.
    pub fn is_empty(&self) -> bool {
        self.left == 0
    }

    /// Copies the next `dst.len()` bytes into `dst`, or returns `None`
    /// (reading nothing) if fewer are left.
    pub fn read_front(&mut self, dst: &mut [u8]) -> Option<()> {
        if dst.len() > self.left {
            return None;
        }
        let mut done = 0;
        while done < dst.len() {
            let (seg, rest) = self.segs.split_first()?;
            let n = (seg.len - self.skip).min(dst.len() - done);
            // SAFETY: `seg` is mapped while the list this reader borrows,
            // which holds its owner, lives (contract of `SgList::push`);
            // `skip + n` is within it, and `dst` is a distinct Rust buffer of
            // at least `done + n` bytes.
            unsafe {
                std::ptr::copy(
                    seg.addr.as_ptr().add(self.skip),
                    dst[done..].as_mut_ptr(),
                    n,
                );
            }
            done += n;
            self.skip += n;
            if self.skip == seg.len {
                (self.segs, self.skip) = (rest, 0);
            }
        }
        self.left -= dst.len();
        Some(())
    }

    /// Reads the next `T`, or returns `None` (reading nothing) if fewer
    /// bytes are left. A `T` within one segment (the usual case: a header
    /// in its descriptor) is one copy of a size known when compiling, which
    /// the compiler makes a few moves, without the reader's walk over
    /// segments.
    pub fn read_obj<T: ByteValued + Default>(&mut self) -> Option<T> {
        let size = std::mem::size_of::<T>();
        match self.segs.first() {
            Some(seg) if size <= seg.len - self.skip => {
                let mut value = T::default();
                // SAFETY: `seg` is mapped while the list this reader borrows,
                // which holds its owner, lives (contract of `SgList::push`),
                // and `skip + size` is within it; `value` is a local of
                // `size` bytes, and a byte copy needs no alignment. The guest
                // may write these bytes meanwhile; any bytes, torn or not,
                // make a valid `ByteValued`.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        seg.addr.as_ptr().add(self.skip),
                        value.as_mut_slice().as_mut_ptr(),
                        size,
                    );
                }
                // Each byte is fetched once: the copy is what the caller
                // checks and uses. Without this the compiler, which assumes
                // no one else writes that memory, could read a field from
                // guest memory again instead of from the copy (a double
                // fetch). A volatile read of the whole `T` would say the same
                // but is made of byte loads: 300 instructions more per
                // request.
                std::hint::black_box(&mut value);
                self.skip += size;
                self.left -= size;
                if self.skip == seg.len {
                    self.segs = &self.segs[1..];
                    self.skip = 0;
                }
                Some(value)
            }
            _ => {
                let mut value = T::default();
                self.read_front(value.as_mut_slice())?;
                Some(value)
            }
        }
    }
}

/// Host buffers owned by the caller, turned into [`SgList`]s for jobs that do
/// not come from a guest (the direct engine path of benchmarks, unit tests).
#[derive(Debug)]
pub struct OwnedBuffers {
    /// Leaked boxed slices, freed in `Drop`; raw so that a job may write them
    /// while the owner holds shared references to `self`.
    buffers: Vec<(NonNull<u8>, usize)>,
}

// SAFETY: the buffers are plain heap memory owned by this value; access goes
// through `SgList`s (which keep this value alive) or `get` (documented below).
unsafe impl Send for OwnedBuffers {}
// SAFETY: as above.
unsafe impl Sync for OwnedBuffers {}

impl OwnedBuffers {
    /// Takes ownership of `buffers`.
    pub fn new(buffers: Vec<Vec<u8>>) -> Arc<Self> {
        let buffers = buffers
            .into_iter()
            .map(|buffer| {
                let len = buffer.len();
                let raw = Box::into_raw(buffer.into_boxed_slice());
                // A boxed slice pointer is never null (dangling but non-null when empty).
                (
                    NonNull::new(raw.cast::<u8>()).unwrap_or(NonNull::dangling()),
                    len,
                )
            })
            .collect();
        Arc::new(OwnedBuffers { buffers })
    }

    /// A job on these buffers: buffer `i` (in `inputs` then `outputs` order
    /// of the indices given) split into segments of `seg_size(i)` bytes. Its
    /// lists keep the buffers alive. `None` if an index names no buffer.
    pub fn job(
        self: &Arc<Self>,
        operation: crate::command::Operation,
        inputs: &[usize],
        outputs: &[usize],
        seg_size: impl Fn(usize) -> usize,
        cookie: u64,
    ) -> Option<crate::engine::Job> {
        let list = |&index: &usize| self.sg(index, seg_size(index));
        let mut job = crate::engine::Job::new(operation, cookie);
        for input in inputs {
            job.push_input(list(input)?);
        }
        for output in outputs {
            job.push_output(list(output)?);
        }
        Some(job)
    }

    /// A list over buffer `index` split into segments of at most `seg_size`
    /// bytes, or `None` if there is no such buffer. The list keeps `self`
    /// alive.
    pub fn sg(self: &Arc<Self>, index: usize, seg_size: usize) -> Option<SgList> {
        let &(addr, len) = self.buffers.get(index)?;
        let mut list = SgList::new();
        let mut offset = 0;
        while offset < len {
            let n = seg_size.max(1).min(len - offset);
            // SAFETY: `offset < len`, so the pointer stays inside the allocation.
            let seg_addr = unsafe { NonNull::new_unchecked(addr.as_ptr().add(offset)) };
            // SAFETY: the segment lies in one allocation of `self`, freed
            // only when `self` drops, and the list holds a clone of `self`.
            unsafe { list.push(HostSeg::new(seg_addr, n), self) }.ok()?;
            offset += n;
        }
        Some(list)
    }

    /// A copy of the bytes of buffer `index` as they are now (a copy, not a
    /// borrow: a list over the buffer may still be writing it).
    pub fn to_vec(&self, index: usize) -> Option<Vec<u8>> {
        let &(addr, len) = self.buffers.get(index)?;
        let mut copy = vec![0; len];
        // SAFETY: the allocation of `len` bytes is live for `&self`; a volatile
        // copy may race with a job writing it, as guest memory may with a
        // driver, but never reads outside it or keeps a reference into it.
        unsafe {
            vm_memory::VolatileSlice::new(addr.as_ptr(), len).copy_to(&mut copy[..]);
        }
        Some(copy)
    }
}

impl Drop for OwnedBuffers {
    fn drop(&mut self) {
        for &(addr, len) in &self.buffers {
            let raw = std::ptr::slice_from_raw_parts_mut(addr.as_ptr(), len);
            // SAFETY: `raw` is exactly the pointer and length `Box::into_raw`
            // gave in `new`, and it is freed once.
            drop(unsafe { Box::from_raw(raw) });
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

    use super::*;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| u8::try_from(i % 251).unwrap_or(0) ^ 0x5a)
            .collect()
    }

    fn bytes_of(list: &SgList) -> Vec<u8> {
        let mut bytes = vec![0; list.len()];
        list.read_into(&mut bytes);
        bytes
    }

    /// `read_obj` gives the bytes in list order whether an object lies in
    /// one segment (one load), ends a segment exactly, or spans segments;
    /// one longer than what is left reads nothing.
    #[test]
    fn read_obj_within_and_across_segments() {
        let bytes = pattern(40);
        // Segments [0, 12), [12, 24), [24, 36), [36, 40).
        let owned = OwnedBuffers::new(vec![bytes.clone()]);
        let list = owned.sg(0, 12).unwrap();
        let mut reader = list.reader();
        let word = |at: usize| u64::from_ne_bytes(bytes[at..at + 8].try_into().unwrap());
        let half = |at: usize| u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap());
        assert_eq!(reader.read_obj::<u32>(), Some(half(0)));
        assert_eq!(reader.read_obj::<u64>(), Some(word(4)), "ends a segment");
        assert_eq!(reader.read_obj::<u64>(), Some(word(12)));
        assert_eq!(reader.read_obj::<u64>(), Some(word(20)), "spans two");
        assert_eq!(reader.len(), 12);
        assert_eq!(reader.read_obj::<[u64; 2]>(), None);
        assert_eq!(reader.len(), 12, "a short read took bytes");
        assert_eq!(reader.read_obj::<u64>(), Some(word(28)));
        assert_eq!(reader.read_obj::<u32>(), Some(half(36)));
        assert!(reader.is_empty());
        assert_eq!(reader.read_obj::<u8>(), None);
    }

    /// `write_obj` stores a value within the first segment, across
    /// segments, or as much of it as fits.
    #[test]
    fn write_obj_within_across_and_past_the_end() {
        let value = 0x0102_0304_0506_0708_u64;
        for (seg, len, fits) in [(16, 16, 8), (3, 16, 8), (16, 5, 5)] {
            let owned = OwnedBuffers::new(vec![vec![0; len]]);
            let list = owned.sg(0, seg).unwrap();
            assert_eq!(
                list.write_obj(value),
                fits,
                "segments of {seg}, {len} bytes"
            );
            assert_eq!(bytes_of(&list)[..fits], value.to_ne_bytes()[..fits]);
            assert!(bytes_of(&list)[fits..].iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn take_front_and_slice_cross_segments() {
        let owned = OwnedBuffers::new(vec![pattern(100)]);
        let mut list = owned.sg(0, 7).unwrap();
        assert_eq!((list.len(), list.segs.len()), (100, 15));
        let front = list.take_front(10).unwrap();
        assert_eq!(bytes_of(&front), pattern(100)[..10]);
        assert_eq!(bytes_of(&list), pattern(100)[10..]);
        assert!(
            list.take_front(91).is_none(),
            "too long leaves the list alone"
        );
        assert_eq!(list.len(), 90);
        let middle = list.slice(5, 20).unwrap();
        assert_eq!(bytes_of(&middle), pattern(100)[15..35]);
        assert!(list.slice(80, 11).is_none());
        assert_eq!(list.slice(90, 0).unwrap().len(), 0);

        // Within the first segment (bytes 10..14 of 100, segment 7..14),
        // then the rest of it exactly, then advancing by part of the next.
        let inside = list.take_front(2).unwrap();
        assert_eq!(bytes_of(&inside), pattern(100)[10..12]);
        let rest = list.take_front(2).unwrap();
        assert_eq!(bytes_of(&rest), pattern(100)[12..14]);
        assert_eq!((list.len(), list.segs.len()), (86, 13));
        list.advance(3).unwrap();
        assert_eq!(bytes_of(&list), pattern(100)[17..]);
        assert!(list.take_front(0).unwrap().is_empty());
        assert_eq!(list.len(), 83);
    }

    #[test]
    fn overlapping_lists_share_a_byte() {
        let owned = OwnedBuffers::new(vec![pattern(100), pattern(100)]);
        let mut first = owned.sg(0, 7).unwrap();
        let second = owned.sg(1, 7).unwrap();
        assert!(!first.overlaps(&second));
        let head = first.take_front(30).unwrap();
        let tail = first.slice(0, 70).unwrap();
        assert!(!head.overlaps(&tail), "adjacent bytes are not shared");
        let across = owned.sg(0, 100).unwrap().slice(29, 2).unwrap();
        assert!(across.overlaps(&head) && across.overlaps(&tail));
        assert!(!SgList::new().overlaps(&head));
    }

    #[test]
    fn a_reader_reads_across_segments_in_pieces() {
        let owned = OwnedBuffers::new(vec![pattern(100)]);
        let list = owned.sg(0, 7).unwrap();
        let mut reader = list.reader();
        let mut got = Vec::new();
        for piece in [3, 7, 11, 0, 40] {
            let mut bytes = vec![0; piece];
            reader.read_front(&mut bytes).unwrap();
            got.extend(bytes);
        }
        assert_eq!(reader.len(), 39);
        assert!(reader.read_front(&mut [0; 40]).is_none(), "too long");
        let mut rest = vec![0; 39];
        reader.read_front(&mut rest).unwrap();
        got.extend(rest);
        assert!(reader.is_empty());
        assert_eq!(got, pattern(100));
    }

    #[test]
    fn writes_fills_and_reads_across_segments() {
        let owned = OwnedBuffers::new(vec![vec![0; 20]]);
        let list = owned.sg(0, 3).unwrap();
        assert_eq!(list.write_at(5, &[9; 10]), 10);
        assert_eq!(list.write_at(18, &[1; 10]), 2, "clipped at the end");
        assert_eq!(list.write_at(25, &[1; 1]), 0);
        let mut expected = [0; 20];
        expected[5..15].fill(9);
        expected[18..].fill(1);
        assert_eq!(owned.to_vec(0).unwrap(), &expected[..]);
        let mut back = vec![0; 8];
        assert_eq!(list.slice(4, 8).unwrap().read_into(&mut back), 8);
        assert_eq!(back, expected[4..12]);
        list.fill(0xAB);
        assert!(owned.to_vec(0).unwrap().iter().all(|&b| b == 0xAB));
    }

    #[test]
    fn copy_between_lists_with_different_segmentation() {
        let owned = OwnedBuffers::new(vec![pattern(50), vec![0; 60]]);
        let src = owned.sg(0, 7).unwrap();
        let dst = owned.sg(1, 11).unwrap();
        assert_eq!(src.copy_to(&dst), 50);
        assert_eq!(&owned.to_vec(1).unwrap()[..50], &pattern(50)[..]);
        assert!(owned.to_vec(1).unwrap()[50..].iter().all(|&b| b == 0));
        let short = dst.slice(0, 5).unwrap();
        assert_eq!(src.copy_to(&short), 5);
    }

    /// Bytes that lists may read and write from any thread, with their
    /// owner's address.
    fn shared_bytes(bytes: Vec<u8>) -> Box<[AtomicU8]> {
        bytes.into_iter().map(AtomicU8::new).collect()
    }

    /// A segment over all of `bytes`.
    fn whole(bytes: &[AtomicU8]) -> HostSeg {
        // An `AtomicU8` is a `u8` in an `UnsafeCell`: writable through `&`.
        HostSeg::new(
            NonNull::new(bytes.as_ptr().cast::<u8>().cast_mut()).unwrap(),
            bytes.len(),
        )
    }

    /// Memory that records when its owner is dropped (the allocation of
    /// `OwnedBuffers` is freed on drop too, which a test cannot observe).
    struct Tracked {
        bytes: Box<[AtomicU8]>,
        dropped: Arc<AtomicBool>,
    }

    impl Drop for Tracked {
        fn drop(&mut self) {
            self.dropped.store(true, Ordering::SeqCst);
        }
    }

    /// Lists own their memory (module docs): a clone, a slice or the front
    /// of a list still reads the right bytes after the job it was made for,
    /// the list it came from and every other handle on the memory are gone,
    /// and the memory goes with the last list over it.
    #[test]
    fn a_clone_outliving_its_list_and_job_keeps_the_memory() {
        let owned = OwnedBuffers::new(vec![pattern(64)]);
        let job = owned
            .job(crate::command::Operation::Sha256, &[0], &[], |_| 5, 1)
            .unwrap();
        let tail = job.inputs()[0].slice(10, 40).unwrap();
        let clone = job.inputs()[0].clone();
        drop(job);
        drop(owned);
        assert_eq!(bytes_of(&clone), pattern(64));
        assert_eq!(bytes_of(&tail), pattern(64)[10..50]);

        let dropped = Arc::new(AtomicBool::new(false));
        let memory = Arc::new(Tracked {
            bytes: shared_bytes(pattern(32)),
            dropped: Arc::clone(&dropped),
        });
        let mut list = SgList::new();
        // SAFETY: the segment is `memory`'s boxed slice, freed only when the
        // last clone of `memory` drops.
        unsafe { list.push(whole(&memory.bytes), &memory) }.unwrap();
        let front = list.take_front(8).unwrap();
        drop(memory);
        drop(list);
        assert!(!dropped.load(Ordering::SeqCst), "a list holds the memory");
        assert_eq!(front.write_from(&[7; 8]), 8);
        assert_eq!(bytes_of(&front), [7; 8]);
        drop(front);
        assert!(dropped.load(Ordering::SeqCst), "the last list let it go");
    }

    #[test]
    fn a_list_holds_the_memory_of_one_owner() {
        let a = Arc::new(shared_bytes(vec![1; 8]));
        let b = Arc::new(shared_bytes(vec![2; 8]));
        let mut list = SgList::new();
        // SAFETY: each segment is the whole slice that its `Arc` owns.
        unsafe {
            list.push(whole(&a), &a).unwrap();
            list.push(whole(&a), &a).unwrap();
            assert_eq!(list.push(whole(&b), &b), Err(SgError::OtherOwner));
        }
        assert_eq!(bytes_of(&list), [1; 16]);
        list.truncate(0);
        // SAFETY: as above.
        unsafe { list.push(whole(&b), &b) }.unwrap();
        assert_eq!(bytes_of(&list), [2; 8]);
    }
}
