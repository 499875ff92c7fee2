//! Scatter-gather lists of host memory, as a device with shared virtual addressing sees them.
//!
//! A [`SgList`] is what a hardware descriptor carries: plain host addresses. It
//! knows nothing of virtio; the code that builds one guarantees the memory stays
//! mapped while it is used, by keeping a [`Keepalive`] beside it.

use std::any::Any;
use std::ptr::NonNull;
use std::sync::Arc;

use smallvec::SmallVec;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;

/// Owner of the memory that a set of [`HostSeg`]s points into; dropping the last
/// clone may unmap that memory.
pub type Keepalive = Arc<dyn Any + Send + Sync>;

/// One contiguous run of host memory.
#[derive(Debug, Clone, Copy)]
pub struct HostSeg {
    addr: NonNull<u8>,
    len: usize,
}

// SAFETY: a `HostSeg` is an address and a length, like a DMA descriptor; every
// access through it happens under the contract of `HostSeg::new` (the memory
// stays mapped while the owning job's keepalive lives), whichever thread does it.
unsafe impl Send for HostSeg {}
// SAFETY: as above; shared references give no access that `Send` does not.
unsafe impl Sync for HostSeg {}

impl HostSeg {
    /// Describes `len` bytes at `addr`.
    ///
    /// # Safety
    ///
    /// `addr..addr + len` must be mapped, readable and writable for as long as
    /// this segment (or any copy of it) can be accessed. Callers ensure this by
    /// keeping the owner of the mapping alive (see [`Keepalive`]) beside it.
    pub unsafe fn new(addr: NonNull<u8>, len: usize) -> Self {
        HostSeg { addr, len }
    }

    /// Describes the memory of a guest memory slice.
    ///
    /// # Safety
    ///
    /// The mapping that `slice` borrows from must outlive every use of the
    /// returned segment (hold the memory snapshot it came from in a [`Keepalive`]).
    pub unsafe fn from_volatile<B: BitmapSlice>(slice: &VolatileSlice<'_, B>) -> Option<Self> {
        let addr = NonNull::new(slice.ptr_guard_mut().as_ptr())?;
        Some(HostSeg {
            addr,
            len: slice.len(),
        })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the segment is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first `len` bytes and the rest; `len` must not exceed the length.
    fn split(self, len: usize) -> (HostSeg, HostSeg) {
        debug_assert!(len <= self.len);
        let len = len.min(self.len);
        // SAFETY: `len <= self.len`, so the pointer stays within (or one past the
        // end of) the same mapped run.
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

/// An ordered list of segments forming one buffer.
#[derive(Debug, Clone, Default)]
pub struct SgList {
    segs: Segments,
    len: usize,
}

impl SgList {
    /// An empty list.
    pub fn new() -> Self {
        SgList::default()
    }

    /// Appends a segment; empty segments are dropped. Returns `None` if the
    /// total length overflows.
    pub fn push(&mut self, seg: HostSeg) -> Option<()> {
        if seg.is_empty() {
            return Some(());
        }
        self.len = self.len.checked_add(seg.len)?;
        self.segs.push(seg);
        Some(())
    }

    /// Total length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the list holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Removes and returns the first `len` bytes, or `None` (leaving the list
    /// untouched) if it holds fewer.
    pub fn take_front(&mut self, len: usize) -> Option<SgList> {
        let mut front = self.clone();
        self.advance(len)?;
        front.truncate(len);
        Some(front)
    }

    /// Drops the first `len` bytes, or returns `None` (leaving the list
    /// untouched) if it holds fewer.
    pub fn advance(&mut self, len: usize) -> Option<()> {
        if len > self.len {
            return None;
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
        let mut done = 0;
        for seg in &self.segs {
            let n = seg.len.min(dst.len() - done);
            // SAFETY: `seg` is mapped (contract of `HostSeg::new`), `dst` is a
            // distinct Rust buffer of at least `done + n` bytes.
            unsafe { std::ptr::copy(seg.addr.as_ptr(), dst[done..].as_mut_ptr(), n) };
            done += n;
            if done == dst.len() {
                break;
            }
        }
        done
    }

    /// Copies `src` to the start of the list; returns how many bytes fit.
    pub fn write_from(&self, src: &[u8]) -> usize {
        self.write_at(0, src)
    }

    /// Copies `src` to byte `offset` of the list; returns how many bytes fit.
    pub fn write_at(&self, offset: usize, src: &[u8]) -> usize {
        let Some(target) = self.slice(
            offset.min(self.len),
            src.len().min(self.len.saturating_sub(offset)),
        ) else {
            return 0;
        };
        let mut done = 0;
        for seg in &target.segs {
            // SAFETY: `seg` is mapped and writable (contract of `HostSeg::new`);
            // `src[done..done + seg.len]` is in bounds because `target` is no
            // longer than `src`. `ptr::copy` tolerates overlap with guest memory.
            unsafe { std::ptr::copy(src[done..].as_ptr(), seg.addr.as_ptr(), seg.len) };
            done += seg.len;
        }
        done
    }

    /// Sets every byte to `value`.
    pub fn fill(&self, value: u8) {
        for seg in &self.segs {
            // SAFETY: `seg` is mapped and writable (contract of `HostSeg::new`).
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
            // SAFETY: both segments are mapped, `n` is within both; `ptr::copy`
            // allows the source and destination to overlap.
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

/// Host buffers owned by the caller, turned into [`SgList`]s for jobs that do
/// not come from a guest (the direct engine path of benchmarks, unit tests).
#[derive(Debug)]
pub struct OwnedBuffers {
    /// Leaked boxed slices, freed in `Drop`; raw so that a job may write them
    /// while the owner holds shared references to `self`.
    buffers: Vec<(NonNull<u8>, usize)>,
}

// SAFETY: the buffers are plain heap memory owned by this value; access goes
// through `SgList` (under its contract) or `get` (documented below).
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
    /// of the indices given) split into segments of `seg_size(i)` bytes. The
    /// job keeps the buffers alive. `None` if an index names no buffer.
    pub fn job(
        self: &Arc<Self>,
        operation: crate::ops::Operation,
        inputs: &[usize],
        outputs: &[usize],
        seg_size: impl Fn(usize) -> usize,
        cookie: u64,
    ) -> Option<crate::engine::Job> {
        // SAFETY: every list goes into the job, whose keepalive is `self`.
        let list = |&index: &usize| unsafe { self.sg(index, seg_size(index)) };
        Some(crate::engine::Job {
            operation,
            inputs: inputs.iter().map(list).collect::<Option<_>>()?,
            outputs: outputs.iter().map(list).collect::<Option<_>>()?,
            cookie,
            keepalive: Arc::clone(self) as Keepalive,
        })
    }

    /// A list over buffer `index` split into segments of at most `seg_size`
    /// bytes, or `None` if there is no such buffer.
    ///
    /// # Safety
    ///
    /// The list points into `self`: the caller must keep `self` alive for as
    /// long as it uses the list (a job does, with `self` as its keepalive).
    pub unsafe fn sg(&self, index: usize, seg_size: usize) -> Option<SgList> {
        let &(addr, len) = self.buffers.get(index)?;
        let mut list = SgList::new();
        let mut offset = 0;
        while offset < len {
            let n = seg_size.max(1).min(len - offset);
            // SAFETY: `offset < len`, so the pointer stays inside the allocation.
            let seg_addr = unsafe { NonNull::new_unchecked(addr.as_ptr().add(offset)) };
            // SAFETY: the allocation lives until `self` drops, and the caller
            // keeps `self` alive beside the list.
            list.push(unsafe { HostSeg::new(seg_addr, n) })?;
            offset += n;
        }
        Some(list)
    }

    /// The bytes of buffer `index`; call it only when no job using the
    /// buffer is running.
    pub fn get(&self, index: usize) -> Option<&[u8]> {
        let &(addr, len) = self.buffers.get(index)?;
        // SAFETY: the allocation is live for `&self`; no job writes it now (contract above).
        Some(unsafe { std::slice::from_raw_parts(addr.as_ptr(), len) })
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

    #[test]
    fn take_front_and_slice_cross_segments() {
        let owned = OwnedBuffers::new(vec![pattern(100)]);
        // SAFETY: `owned` outlives the list, used only in this test.
        let mut list = unsafe { owned.sg(0, 7) }.unwrap();
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
    }

    #[test]
    fn writes_fills_and_reads_across_segments() {
        let owned = OwnedBuffers::new(vec![vec![0; 20]]);
        // SAFETY: `owned` outlives the list, used only in this test.
        let list = unsafe { owned.sg(0, 3) }.unwrap();
        assert_eq!(list.write_at(5, &[9; 10]), 10);
        assert_eq!(list.write_at(18, &[1; 10]), 2, "clipped at the end");
        assert_eq!(list.write_at(25, &[1; 1]), 0);
        let mut expected = [0; 20];
        expected[5..15].fill(9);
        expected[18..].fill(1);
        assert_eq!(owned.get(0).unwrap(), &expected[..]);
        let mut back = vec![0; 8];
        assert_eq!(list.slice(4, 8).unwrap().read_into(&mut back), 8);
        assert_eq!(back, expected[4..12]);
        list.fill(0xAB);
        assert!(owned.get(0).unwrap().iter().all(|&b| b == 0xAB));
    }

    #[test]
    fn copy_between_lists_with_different_segmentation() {
        let owned = OwnedBuffers::new(vec![pattern(50), vec![0; 60]]);
        // SAFETY: `owned` outlives the list, used only in this test.
        let src = unsafe { owned.sg(0, 7) }.unwrap();
        // SAFETY: `owned` outlives the list, used only in this test.
        let dst = unsafe { owned.sg(1, 11) }.unwrap();
        assert_eq!(src.copy_to(&dst), 50);
        assert_eq!(&owned.get(1).unwrap()[..50], &pattern(50)[..]);
        assert!(owned.get(1).unwrap()[50..].iter().all(|&b| b == 0));
        let short = dst.slice(0, 5).unwrap();
        assert_eq!(src.copy_to(&short), 5);
    }
}
