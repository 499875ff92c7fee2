// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! First-fit allocator of guest-physical ranges, one free list per region.
//!
//! Pure bookkeeping: it never touches memory. Ranges never span two regions,
//! even when the regions are adjacent in guest-physical space, because the
//! device may not accept a buffer that crosses a region boundary.

use thiserror::Error;

/// Errors of the range allocator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Error {
    /// A zero-length allocation was asked for.
    #[error("zero-length allocation")]
    ZeroLength,
    /// The alignment is not a power of two.
    #[error("alignment {0:#x} is not a power of two")]
    BadAlignment(u64),
    /// No free range is large enough.
    #[error("out of guest memory: no free range of {len:#x} bytes aligned to {align:#x}")]
    OutOfMemory {
        /// Requested length.
        len: u64,
        /// Requested alignment.
        align: u64,
    },
    /// The fixed range asked for is not entirely free.
    #[error("range {gpa:#x}+{len:#x} is not free")]
    NotFree {
        /// Start of the range.
        gpa: u64,
        /// Length of the range.
        len: u64,
    },
}

/// One region's free list: sorted, non-overlapping, non-adjacent `(start, len)` ranges.
#[derive(Debug, Clone)]
struct RegionFree {
    start: u64,
    end: u64,
    free: Vec<(u64, u64)>,
}

/// First-fit allocator over a set of disjoint regions.
#[derive(Debug, Clone)]
pub(crate) struct RangeAllocator {
    regions: Vec<RegionFree>,
}

fn align_up(value: u64, align: u64) -> Option<u64> {
    value.checked_add(align - 1).map(|v| v & !(align - 1))
}

impl RangeAllocator {
    /// An allocator whose every region `(gpa, len)` is entirely free.
    pub(crate) fn new(regions: &[(u64, u64)]) -> Self {
        let regions = regions
            .iter()
            .map(|&(start, len)| RegionFree {
                start,
                end: start + len,
                free: if len > 0 {
                    vec![(start, len)]
                } else {
                    Vec::new()
                },
            })
            .collect();
        RangeAllocator { regions }
    }

    /// Allocates `len` bytes aligned to `align`, first fit in address order.
    pub(crate) fn alloc(&mut self, len: u64, align: u64) -> Result<u64, Error> {
        if len == 0 {
            return Err(Error::ZeroLength);
        }
        if !align.is_power_of_two() {
            return Err(Error::BadAlignment(align));
        }
        for region in &mut self.regions {
            for i in 0..region.free.len() {
                let (start, flen) = region.free[i];
                let Some(aligned) = align_up(start, align) else {
                    continue;
                };
                let end = start + flen;
                let Some(alloc_end) = aligned.checked_add(len) else {
                    continue;
                };
                if alloc_end > end {
                    continue;
                }
                Self::carve(&mut region.free, i, aligned, len);
                return Ok(aligned);
            }
        }
        Err(Error::OutOfMemory { len, align })
    }

    /// Allocates exactly `gpa..gpa + len`, which must be entirely free.
    pub(crate) fn alloc_at(&mut self, gpa: u64, len: u64) -> Result<u64, Error> {
        if len == 0 {
            return Err(Error::ZeroLength);
        }
        let not_free = Error::NotFree { gpa, len };
        let end = gpa.checked_add(len).ok_or(not_free)?;
        for region in &mut self.regions {
            if gpa < region.start || end > region.end {
                continue;
            }
            for i in 0..region.free.len() {
                let (start, flen) = region.free[i];
                if gpa >= start && end <= start + flen {
                    Self::carve(&mut region.free, i, gpa, len);
                    return Ok(gpa);
                }
            }
        }
        Err(not_free)
    }

    /// Removes `at..at + len` from free range `i`, which contains it.
    fn carve(free: &mut Vec<(u64, u64)>, i: usize, at: u64, len: u64) {
        let (start, flen) = free[i];
        let end = start + flen;
        let before = (start, at - start);
        let after = (at + len, end - (at + len));
        match (before.1 > 0, after.1 > 0) {
            (false, false) => {
                free.remove(i);
            }
            (true, false) => free[i] = before,
            (false, true) => free[i] = after,
            (true, true) => {
                free[i] = before;
                free.insert(i + 1, after);
            }
        }
    }

    /// Returns `gpa..gpa + len` to the free list, merging it with its neighbours.
    ///
    /// Returns `false` (and changes nothing) if the range is outside every
    /// region or overlaps a free range, i.e. on a double free.
    pub(crate) fn free(&mut self, gpa: u64, len: u64) -> bool {
        let Some(end) = gpa.checked_add(len) else {
            return false;
        };
        let Some(region) = self
            .regions
            .iter_mut()
            .find(|r| gpa >= r.start && end <= r.end)
        else {
            return false;
        };
        let free = &mut region.free;
        let i = free.partition_point(|&(start, _)| start < gpa);
        if i > 0 {
            let (ps, pl) = free[i - 1];
            if ps + pl > gpa {
                return false;
            }
        }
        if i < free.len() && free[i].0 < end {
            return false;
        }
        let merge_prev = i > 0 && free[i - 1].0 + free[i - 1].1 == gpa;
        let merge_next = i < free.len() && free[i].0 == end;
        match (merge_prev, merge_next) {
            (true, true) => {
                let next_len = free[i].1;
                free[i - 1].1 += len + next_len;
                free.remove(i);
            }
            (true, false) => free[i - 1].1 += len,
            (false, true) => {
                free[i].0 = gpa;
                free[i].1 += len;
            }
            (false, false) => free.insert(i, (gpa, len)),
        }
        true
    }

    /// Total free bytes.
    pub(crate) fn free_bytes(&self) -> u64 {
        self.regions
            .iter()
            .flat_map(|r| r.free.iter())
            .map(|&(_, len)| len)
            .sum()
    }

    /// Number of free ranges (a fragmentation measure, for tests).
    #[cfg(test)]
    pub(crate) fn free_ranges(&self) -> usize {
        self.regions.iter().map(|r| r.free.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_fit_alignment_and_merge() {
        let mut a = RangeAllocator::new(&[(0x1000, 0x1000)]);
        let x = a.alloc(10, 64).unwrap();
        assert_eq!(x, 0x1000);
        let y = a.alloc(10, 64).unwrap();
        assert_eq!(y, 0x1040);
        let z = a.alloc(0x100, 0x100).unwrap();
        assert_eq!(z, 0x1100);
        // Gap 0x1080..0x1100 stays free and is found first.
        let w = a.alloc(0x40, 64).unwrap();
        assert_eq!(w, 0x1080);
        assert!(a.free(x, 10));
        assert!(a.free(y, 10));
        assert!(a.free(w, 0x40));
        assert!(a.free(z, 0x100));
        assert_eq!(a.free_bytes(), 0x1000);
        assert_eq!(a.free_ranges(), 1);
    }

    #[test]
    fn double_free_and_foreign_free_are_refused() {
        let mut a = RangeAllocator::new(&[(0, 0x1000)]);
        let x = a.alloc(0x100, 64).unwrap();
        assert!(a.free(x, 0x100));
        assert!(!a.free(x, 0x100));
        assert!(!a.free(0x2000, 0x10));
        assert!(!a.free(0xff0, 0x20));
        assert_eq!(a.free_bytes(), 0x1000);
    }

    #[test]
    fn exhaustion_and_errors() {
        let mut a = RangeAllocator::new(&[(0, 0x100)]);
        assert_eq!(a.alloc(0, 1), Err(Error::ZeroLength));
        assert_eq!(a.alloc(1, 3), Err(Error::BadAlignment(3)));
        a.alloc(0x100, 1).unwrap();
        assert!(matches!(a.alloc(1, 1), Err(Error::OutOfMemory { .. })));
    }

    #[test]
    fn ranges_never_span_regions() {
        // Two adjacent regions: a 0x180-byte allocation fits in neither alone.
        let mut a = RangeAllocator::new(&[(0, 0x100), (0x100, 0x100)]);
        assert!(matches!(a.alloc(0x180, 1), Err(Error::OutOfMemory { .. })));
        let x = a.alloc(0x100, 1).unwrap();
        let y = a.alloc(0x100, 1).unwrap();
        assert_eq!((x, y), (0, 0x100));
        assert!(a.free(x, 0x100));
        assert!(a.free(y, 0x100));
        assert_eq!(a.free_ranges(), 2);
    }

    #[test]
    fn alloc_at_carves_middle() {
        let mut a = RangeAllocator::new(&[(0, 0x1000), (0x10_0000, 0x1000)]);
        assert_eq!(a.alloc_at(0x10_0800, 0x100), Ok(0x10_0800));
        assert_eq!(
            a.alloc_at(0x10_0880, 0x10),
            Err(Error::NotFree {
                gpa: 0x10_0880,
                len: 0x10
            })
        );
        assert!(a.alloc_at(0x2000, 0x10).is_err());
        assert_eq!(a.free_ranges(), 3);
        assert!(a.free(0x10_0800, 0x100));
        assert_eq!(a.free_ranges(), 2);
        assert_eq!(a.free_bytes(), 0x2000);
    }

    #[test]
    fn randomized_alloc_free_keeps_invariants() {
        let mut a = RangeAllocator::new(&[(0, 0x10000), (0x20000, 0x8000)]);
        let mut live: Vec<(u64, u64)> = Vec::new();
        let mut seed = 0x1234_5678_u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..2000 {
            if next() % 3 != 0 || live.is_empty() {
                let len = next() % 0x300 + 1;
                let align = 1 << (next() % 8);
                if let Ok(gpa) = a.alloc(len, align) {
                    assert_eq!(gpa % align, 0);
                    for &(g, l) in &live {
                        assert!(gpa + len <= g || g + l <= gpa, "overlap");
                    }
                    live.push((gpa, len));
                }
            } else {
                let idx = (next() as usize) % live.len();
                let (g, l) = live.swap_remove(idx);
                assert!(a.free(g, l));
            }
        }
        for (g, l) in live.drain(..) {
            assert!(a.free(g, l));
        }
        assert_eq!(a.free_bytes(), 0x18000);
        assert_eq!(a.free_ranges(), 2);
    }
}
