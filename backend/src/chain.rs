//! Walks a descriptor chain once, translating it to host memory.
//!
//! The virtio-queue `Reader`/`Writer` copy data and accept readable descriptors
//! after writable ones; the device needs neither. [`walk`] reads every
//! descriptor exactly once (no double fetch), enforces the virtio ordering rule
//! (readable before writable, 2.7.4.2 of the virtio specification) and the
//! device's `max_segments` limit (§10), translates each descriptor to host
//! segments of the current memory snapshot, and keeps going after an error as
//! far as it can so that the response can still be written. The lists it
//! makes hold that snapshot, so its mappings live as long as they do.

use std::sync::Arc;

use thiserror::Error;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap};

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
    /// The chain ends on a descriptor that claims a successor: a loop (cut
    /// after a queue size of descriptors), a `next` out of range, or an
    /// unreadable indirect table.
    #[error("chain is truncated (loop, bad next index or bad indirect table)")]
    Truncated,
    /// A descriptor points outside guest memory.
    #[error("descriptor {addr:#x}+{len:#x} is outside guest memory")]
    BadAddress {
        /// Guest-physical address.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// The chain's total length overflows.
    #[error("chain length overflows")]
    Overflow,
    /// A list holding memory of another snapshot was given to [`translate`]
    /// (a bug of the caller, not of the chain).
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
            ChainError::ReadableAfterWritable | ChainError::Truncated | ChainError::Overflow => {
                Status::Invalid
            }
            ChainError::OtherSnapshot => Status::DeviceError,
        }
    }
}

/// How far past `max_segments` a walk goes looking for the end of a chain.
const LOOP_SEARCH_FACTOR: u32 = 4;

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

/// Walks `descriptors` (a chain's iterator) against `mem`, accepting at most
/// `max_descriptors` descriptors. The writable list is always a prefix of the
/// chain's writable part: it ends before the first writable descriptor that
/// cannot be translated, so a response is never written in the wrong place.
/// The lists hold `mem`.
pub fn walk(
    descriptors: impl Iterator<Item = Descriptor>,
    mem: &Arc<GuestMemoryMmap>,
    max_descriptors: u32,
) -> Walk {
    let mut walk = Walk::default();
    let mut count: u32 = 0;
    let mut claims_next = false;
    let mut seen_writable = false;
    let mut writable_broken = false;
    for desc in descriptors {
        claims_next = desc.has_next();
        count += 1;
        if count > max_descriptors {
            // Keep walking a little, without translating, to tell a short
            // loop (Invalid) from a long chain (Limit); past the budget both
            // are reported as Limit (§6.5 allows either for such a chain).
            walk.fail(ChainError::TooManyDescriptors(max_descriptors));
            if count > max_descriptors.saturating_mul(LOOP_SEARCH_FACTOR) {
                return walk;
            }
            continue;
        }
        if desc.is_write_only() {
            seen_writable = true;
        } else if seen_writable {
            walk.fail(ChainError::ReadableAfterWritable);
            continue;
        }
        let target = if desc.is_write_only() {
            if writable_broken {
                continue;
            }
            &mut walk.writable
        } else {
            &mut walk.readable
        };
        if let Err(error) = translate(mem, desc.addr().0, u64::from(desc.len()), target) {
            writable_broken |= desc.is_write_only();
            walk.fail(error);
        }
    }
    if claims_next {
        // A loop is a malformed chain before it is a long one (§6.5).
        if matches!(walk.error, Some(ChainError::TooManyDescriptors(_))) {
            walk.error = None;
        }
        walk.fail(ChainError::Truncated);
    }
    walk
}

/// Appends the host segments of `len` bytes at guest address `addr` to
/// `list`, which then holds `mem` (it must be empty or hold `mem` already).
pub fn translate(
    mem: &Arc<GuestMemoryMmap>,
    addr: u64,
    len: u64,
    list: &mut SgList,
) -> Result<(), ChainError> {
    let bad = ChainError::BadAddress { addr, len };
    let count = usize::try_from(len).map_err(|_| bad)?;
    let before = list.len();
    let appended = mem
        .get_slices(vm_memory::GuestAddress(addr), count)
        .try_for_each(|slice| {
            let slice = slice.map_err(|_| bad)?;
            let seg = HostSeg::from_volatile(&slice).ok_or(bad)?;
            // SAFETY: `slice` is one run of a region of `mem`, mapped
            // read-write until the region drops, which is after the last
            // clone of `mem` (the regions are reference-counted by the table).
            unsafe { list.push(seg, mem) }.map_err(|e| match e {
                SgError::TooLong => ChainError::Overflow,
                SgError::OtherOwner => ChainError::OtherSnapshot,
            })
        });
    if appended.is_err() {
        // All or nothing: the list ends where it ended before.
        list.truncate(before);
    }
    appended
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use vm_memory::GuestAddress;

    use super::*;

    #[test]
    fn a_range_leaving_guest_memory_adds_nothing() {
        let mem =
            Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0x1000), 0x2000)]).unwrap());
        let mut list = SgList::new();
        translate(&mem, 0x1000, 0x100, &mut list).unwrap();
        let error = translate(&mem, 0x2800, 0x1000, &mut list).unwrap_err();
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
            translate(&other, 0x1000, 0x10, &mut list),
            Err(ChainError::OtherSnapshot),
            "a list holds one snapshot"
        );
    }
}
