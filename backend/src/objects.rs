//! Memory objects: guest memory wrapped into handles (the dma-buf model, §7.1, §7.2).
//!
//! An object is validated ("pinned") once, when created. Requests hold an
//! `Arc<Object>` while their work is queued or running: that reference is the
//! object's fence attachment. OBJECT_DESTROY removes the handle at once, and the
//! object itself is released when the last request using it completes.

use std::collections::HashMap;
use std::sync::Arc;

use thiserror::Error;
use virtio_accel_spec::Status;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::chain::{translate, ChainError};
use crate::config::Limits;
use crate::quota::{Admission, QuotaKind};
use crate::sg::SgList;
use crate::stats::TenantStats;

/// Errors of the object table.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ObjectError {
    /// No live object has this handle.
    #[error("no object {0}")]
    NoObject(u32),
    /// The table is full.
    #[error("object limit {0} reached")]
    TooManyObjects(u32),
    /// The object would exceed `max_object_size`.
    #[error("object size exceeds {0} bytes")]
    TooBig(u64),
    /// A segment overflows the address space or leaves guest memory.
    #[error("segment {addr:#x}+{len:#x} is outside guest memory")]
    BadSegment {
        /// Guest-physical address.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// `offset + len` lies beyond the object.
    #[error("range {offset}+{len} is beyond the object's {size} bytes")]
    Range {
        /// Offset asked.
        offset: u64,
        /// Length asked.
        len: u64,
        /// Object size.
        size: u64,
    },
    /// Guest memory changed and no longer holds the object.
    #[error("object memory is gone: {0}")]
    Unmapped(#[source] ChainError),
    /// A quota of the tenant refuses another object.
    #[error("over the {} quota", .0.name())]
    Quota(QuotaKind),
}

impl ObjectError {
    /// The status the device returns for this error (§9).
    pub fn status(&self) -> Status {
        match self {
            ObjectError::NoObject(_) => Status::NoObject,
            ObjectError::TooManyObjects(_) => Status::NoResources,
            ObjectError::TooBig(_) => Status::Limit,
            ObjectError::BadSegment { .. } | ObjectError::Unmapped(_) => Status::BadAddress,
            ObjectError::Range { .. } => Status::Range,
            ObjectError::Quota(_) => Status::Busy,
        }
    }
}

/// A live object: guest-physical segments, validated at creation. It counts
/// as held by its tenant (quotas, metrics) until it is dropped, after its
/// handle is destroyed and the last request using it has completed.
#[derive(Debug)]
pub struct Object {
    segments: Vec<(u64, u64)>,
    size: u64,
    stats: Arc<TenantStats>,
}

impl Drop for Object {
    fn drop(&mut self) {
        self.stats.object_released(self.size);
    }
}

impl Object {
    /// Host segments of bytes `offset..offset + len` in the memory snapshot
    /// `mem`, which the list holds.
    pub fn resolve(
        &self,
        mem: &Arc<GuestMemoryMmap>,
        offset: u64,
        len: u64,
    ) -> Result<SgList, ObjectError> {
        let range = || ObjectError::Range {
            offset,
            len,
            size: self.size,
        };
        let end = offset.checked_add(len).ok_or_else(range)?;
        if end > self.size {
            return Err(range());
        }
        let mut list = SgList::new();
        let mut seg_start = 0u64;
        for &(addr, seg_len) in &self.segments {
            let seg_end = seg_start + seg_len;
            let from = offset.max(seg_start);
            let to = end.min(seg_end);
            if from < to {
                translate(mem, addr + (from - seg_start), to - from, &mut list)
                    .map_err(ObjectError::Unmapped)?;
            }
            if seg_end >= end {
                break;
            }
            seg_start = seg_end;
        }
        Ok(list)
    }
}

/// The objects of one device (one connection).
#[derive(Debug)]
pub struct ObjectTable {
    objects: HashMap<u32, Arc<Object>>,
    next_handle: u32,
    limits: Limits,
    stats: Arc<TenantStats>,
}

impl ObjectTable {
    /// An empty table enforcing `limits`, counting held objects in `stats`.
    pub fn new(limits: Limits, stats: Arc<TenantStats>) -> Self {
        ObjectTable {
            objects: HashMap::new(),
            next_handle: 1,
            limits,
            stats,
        }
    }

    /// Validates `segments` against `mem`, the limits and the tenant's
    /// quotas, and returns the new handle (§7.1).
    pub fn create(
        &mut self,
        segments: Vec<(u64, u64)>,
        mem: &GuestMemoryMmap,
        admission: &Admission,
    ) -> Result<u32, ObjectError> {
        if self.objects.len() >= self.limits.max_objects as usize {
            return Err(ObjectError::TooManyObjects(self.limits.max_objects));
        }
        let mut size: u64 = 0;
        for &(addr, len) in &segments {
            let in_memory = addr.checked_add(len).is_some()
                && usize::try_from(len).is_ok_and(|len| mem.check_range(GuestAddress(addr), len));
            if !in_memory {
                return Err(ObjectError::BadSegment { addr, len });
            }
            size = size
                .checked_add(len)
                .filter(|&s| s <= self.limits.max_object_size)
                .ok_or(ObjectError::TooBig(self.limits.max_object_size))?;
        }
        let (held, held_bytes) = self.stats.held();
        admission
            .admit_object(held, held_bytes, size)
            .map_err(ObjectError::Quota)?;
        let handle = self.free_handle();
        self.stats.object_held(size);
        let object = Object {
            segments,
            size,
            stats: Arc::clone(&self.stats),
        };
        self.objects.insert(handle, Arc::new(object));
        Ok(handle)
    }

    /// The next handle not in use; never 0 (the direct handle).
    fn free_handle(&mut self) -> u32 {
        loop {
            let handle = self.next_handle;
            self.next_handle = self.next_handle.checked_add(1).unwrap_or(1);
            if handle != virtio_accel_spec::DIRECT_HANDLE && !self.objects.contains_key(&handle) {
                return handle;
            }
        }
    }

    /// Removes `handle`; the object lives on while requests still use it (§7.2).
    pub fn destroy(&mut self, handle: u32) -> Result<(), ObjectError> {
        self.objects
            .remove(&handle)
            .map(drop)
            .ok_or(ObjectError::NoObject(handle))
    }

    /// The object named `handle`.
    pub fn get(&self, handle: u32) -> Result<Arc<Object>, ObjectError> {
        self.objects
            .get(&handle)
            .cloned()
            .ok_or(ObjectError::NoObject(handle))
    }

    /// How many objects have a handle.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Whether no object has a handle.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Drops every handle (device reset, §11).
    pub fn clear(&mut self) {
        self.objects.clear();
    }
}
