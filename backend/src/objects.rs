// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Memory objects: guest memory wrapped into handles (the dma-buf model, §7.1, §7.2).
//!
//! An object is validated ("pinned") once, when created. Requests hold an
//! `Arc<HostObject>` while their work is queued or running: that reference is the
//! object's fence attachment. OBJECT_DESTROY removes the handle at once, and the
//! object itself is released when the last request using it completes.
//!
//! Where the tenant's memory allows it, an object is also a host dma-buf of
//! its pages ([`crate::dmabuf`], §7.1.3), which it holds until it is
//! released: a request that reads or writes it first waits for the fences
//! other drivers attached to the buffer (`device/accept.rs`).
//!
//! Each object is written in a slot of the tenant's [`DeviceRecord`], so
//! that the next process of the tenant finds it (§11.3,
//! [`ObjectTable::restore`]).

use std::collections::HashMap;
use std::sync::Arc;

use thiserror::Error;
use virtio_accel_spec::Status;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::chain::{ChainError, Translator};
use crate::config::Limits;
use crate::device_record::{DeviceRecord, DeviceRecordError, ObjectEntry, ObjectState};
use crate::dmabuf::{DmaBuf, DmaBufMaker, Fallback, FileRange};
use crate::log_limit::TenantLog;
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
    /// The record holds an object that cannot be restored.
    #[error("recorded object {handle} cannot be restored")]
    Restore {
        /// Its handle.
        handle: u32,
        /// Why.
        #[source]
        source: Box<ObjectError>,
    },
    /// The record's object slots cannot be read.
    #[error("the record's objects cannot be read")]
    Record(#[from] DeviceRecordError),
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
            ObjectError::Restore { .. } | ObjectError::Record(_) => Status::DeviceError,
        }
    }
}

/// A live object: guest-physical segments, validated at creation. It counts
/// as held by its tenant (quotas, metrics) until it is dropped, after its
/// handle is destroyed and the last request using it has completed.
#[derive(Debug)]
pub struct HostObject {
    segments: Vec<(u64, u64)>,
    size: u64,
    stats: Arc<TenantStats>,
    record: Arc<DeviceRecord>,
    /// Its slot in the record, and its serial number there; `None` if every
    /// slot was taken (by objects released later than their handles).
    slot: Option<(usize, u64)>,
    /// Its pages as a host dma-buf, pinned while it lives (§7.1.3).
    dma_buf: Option<Arc<DmaBuf>>,
}

impl Drop for HostObject {
    fn drop(&mut self) {
        self.stats.object_released(self.size);
        if self.dma_buf.is_some() {
            self.stats.dmabuf_released();
        }
        match self.slot {
            Some((slot, serial)) => self.record.free_object(slot, serial),
            None => self.record.count_unrecorded(-1),
        }
    }
}

impl HostObject {
    /// Its host dma-buf, if it is one (§7.1.3).
    pub fn dma_buf(&self) -> Option<&Arc<DmaBuf>> {
        self.dma_buf.as_ref()
    }

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
        let mut translator = Translator::new(mem);
        let mut seg_start = 0u64;
        for &(addr, seg_len) in &self.segments {
            let seg_end = seg_start + seg_len;
            let from = offset.max(seg_start);
            let to = end.min(seg_end);
            if from < to {
                translator
                    .translate(addr + (from - seg_start), to - from, &mut list)
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

#[cfg(test)]
impl HostObject {
    /// An object of no bytes whose dma-buf is `dma_buf`, for tests of the
    /// waits for other drivers' fences.
    pub(crate) fn with_dma_buf(
        dma_buf: DmaBuf,
        stats: Arc<TenantStats>,
        record: Arc<DeviceRecord>,
    ) -> Self {
        stats.object_held(0);
        stats.object_made(Ok(()));
        record.count_unrecorded(1);
        HostObject {
            segments: Vec::new(),
            size: 0,
            stats,
            record,
            slot: None,
            dma_buf: Some(Arc::new(dma_buf)),
        }
    }
}

/// The runs of memory files that `segments` of `mem` lie in, contiguous
/// runs of one file merged, as udmabuf takes them, at most `max_ranges`.
/// The segments were checked to lie in `mem`.
fn file_ranges<'a>(
    segments: &[(u64, u64)],
    mem: &'a GuestMemoryMmap,
    max_ranges: usize,
) -> Result<Vec<FileRange<'a>>, Fallback> {
    let mut ranges: Vec<FileRange<'a>> = Vec::new();
    for &(mut addr, mut len) in segments {
        while len > 0 {
            let region = mem
                .find_region(GuestAddress(addr))
                .ok_or(Fallback::Unsealed)?;
            let file = region.file_offset().ok_or(Fallback::Unsealed)?;
            let in_region = addr - region.start_addr().0;
            let run = len.min(region.len() - in_region);
            let offset = file.start() + in_region;
            let full = ranges.len() == max_ranges;
            match ranges.last_mut() {
                Some(last)
                    if std::ptr::eq(last.file, file.file()) && last.offset + last.len == offset =>
                {
                    last.len += run;
                }
                _ if full => return Err(Fallback::TooManyRanges),
                _ => ranges.push(FileRange {
                    file: file.file(),
                    offset,
                    len: run,
                }),
            }
            addr += run;
            len -= run;
        }
    }
    Ok(ranges)
}

/// The objects of one device (one connection).
#[derive(Debug)]
pub struct ObjectTable {
    objects: HashMap<u32, Arc<HostObject>>,
    next_handle: u32,
    limits: Limits,
    stats: Arc<TenantStats>,
    record: Arc<DeviceRecord>,
    /// What makes objects host dma-bufs, and where to say why it did not.
    dma_bufs: Arc<DmaBufMaker>,
    log: Arc<TenantLog>,
    /// Where to look for a free slot next.
    slot_cursor: usize,
    /// While the device resumes (§11.3): objects whose handles were
    /// destroyed and which the last process had not released (its
    /// OBJECT_DESTROY unanswered, or requests still using them), by
    /// handle, with the command that destroyed them.
    retired: HashMap<u32, (Arc<HostObject>, u64)>,
    /// While the device resumes: live objects by the command that created
    /// them, should that command run again.
    created_by: HashMap<u64, u32>,
}

impl ObjectTable {
    /// An empty table enforcing `limits`, counting held objects in `stats`,
    /// writing them in `record`, making them dma-bufs with `dma_bufs` where
    /// it can and telling `log` why where it cannot.
    pub fn new(
        limits: Limits,
        stats: Arc<TenantStats>,
        record: Arc<DeviceRecord>,
        dma_bufs: Arc<DmaBufMaker>,
        log: Arc<TenantLog>,
    ) -> Self {
        ObjectTable {
            objects: HashMap::new(),
            next_handle: 1,
            limits,
            stats,
            record,
            dma_bufs,
            log,
            slot_cursor: 0,
            retired: HashMap::new(),
            created_by: HashMap::new(),
        }
    }

    /// Writes objects in `record` from now on: the device adopted it
    /// (§11.3.3) while it held no object.
    pub fn set_record(&mut self, record: Arc<DeviceRecord>) {
        self.record = record;
        self.slot_cursor = 0;
    }

    /// Validates `segments` against `mem`, the limits and the tenant's
    /// quotas, and returns the new handle (§7.1). `command` is the sequence
    /// number of the control command; if it created an object already (it
    /// runs again after a restart, §11.3), that object's handle.
    pub fn create(
        &mut self,
        segments: Vec<(u64, u64)>,
        mem: &GuestMemoryMmap,
        admission: &Admission,
        command: u64,
    ) -> Result<u32, ObjectError> {
        if let Some(&handle) = self.created_by.get(&command) {
            return Ok(handle);
        }
        if self.objects.len() >= self.limits.max_objects as usize {
            return Err(ObjectError::TooManyObjects(self.limits.max_objects));
        }
        let size = self.check_segments(&segments, mem)?;
        let (held, held_bytes) = self.stats.held();
        admission
            .admit_object(held, held_bytes, size)
            .map_err(ObjectError::Quota)?;
        let handle = self.free_handle();
        let slot = self.record_object(handle, command, &segments);
        let (object, fallback) = self.hold(segments, size, slot, mem);
        if let Some(reason) = fallback {
            self.stats.object_made(Err(reason));
            self.log.dmabuf_fallback(reason);
        }
        self.objects.insert(handle, Arc::new(object));
        Ok(handle)
    }

    /// A new object of `segments`, `size` bytes, in `slot` of the record,
    /// counted as held, a dma-buf of its pages if they allow it (§7.1.3);
    /// with why it is not one otherwise.
    fn hold(
        &self,
        segments: Vec<(u64, u64)>,
        size: u64,
        slot: Option<(usize, u64)>,
        mem: &GuestMemoryMmap,
    ) -> (HostObject, Option<Fallback>) {
        let made = self.make_dma_buf(&segments, mem);
        self.stats.object_held(size);
        let (dma_buf, fallback) = match made {
            Ok(dma_buf) => {
                self.stats.object_made(Ok(()));
                (Some(Arc::new(dma_buf)), None)
            }
            Err(reason) => (None, Some(reason)),
        };
        let object = HostObject {
            segments,
            size,
            stats: Arc::clone(&self.stats),
            record: Arc::clone(&self.record),
            slot,
            dma_buf,
        };
        (object, fallback)
    }

    /// A dma-buf of the pages of `segments`, checked in `mem`, or why
    /// there is none.
    fn make_dma_buf(
        &self,
        segments: &[(u64, u64)],
        mem: &GuestMemoryMmap,
    ) -> Result<DmaBuf, Fallback> {
        if !self.dma_bufs.available() {
            return Err(Fallback::NoDevice);
        }
        let ranges = file_ranges(segments, mem, self.dma_bufs.max_ranges())?;
        self.dma_bufs.make(&ranges)
    }

    /// The size of an object of `segments`, each checked to be in `mem`.
    fn check_segments(
        &self,
        segments: &[(u64, u64)],
        mem: &GuestMemoryMmap,
    ) -> Result<u64, ObjectError> {
        let mut size: u64 = 0;
        for &(addr, len) in segments {
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
        Ok(size)
    }

    /// Writes a new object in a free slot of the record; with none free
    /// (objects destroyed and still in use hold theirs), it is counted as
    /// unrecorded, and the device cannot resume while it lives.
    fn record_object(
        &mut self,
        handle: u32,
        command: u64,
        segments: &[(u64, u64)],
    ) -> Option<(usize, u64)> {
        self.record.set_next_handle(self.next_handle);
        let recorded = self
            .record
            .free_object_slot(self.slot_cursor)
            .and_then(|slot| {
                let serial = self.record.next_serial();
                self.record
                    .write_object(slot, handle, serial, command, segments)
                    .then_some((slot, serial))
            });
        match recorded {
            Some((slot, _)) => self.slot_cursor = slot + 1,
            None => self.record.count_unrecorded(1),
        }
        recorded
    }

    /// The next handle not in use; never 0 (the direct handle).
    fn free_handle(&mut self) -> u32 {
        loop {
            let handle = self.next_handle;
            self.next_handle = self.next_handle.checked_add(1).unwrap_or(1);
            let in_use = self.objects.contains_key(&handle) || self.retired.contains_key(&handle);
            if handle != virtio_accel_spec::DIRECT_HANDLE && !in_use {
                return handle;
            }
        }
    }

    /// Removes `handle` for control command `command` and returns the
    /// object, which lives on while requests still use it (§7.2): the
    /// caller drops it once the command is answered, so that the record
    /// shows who destroyed it until then (§11.3). A command that destroyed
    /// it already (it runs again after a restart) gets it again.
    pub fn destroy(&mut self, handle: u32, command: u64) -> Result<Arc<HostObject>, ObjectError> {
        if let Some(object) = self.objects.remove(&handle) {
            if let Some((slot, serial)) = object.slot {
                self.record.destroy_object(slot, serial, command);
            }
            return Ok(object);
        }
        match self.retired.get(&handle) {
            Some((object, by)) if *by == command => Ok(Arc::clone(object)),
            _ => Err(ObjectError::NoObject(handle)),
        }
    }

    /// The object named `handle` (while the device resumes, also one whose
    /// handle was destroyed and which requests taken again use).
    pub fn get(&self, handle: u32) -> Result<Arc<HostObject>, ObjectError> {
        self.objects
            .get(&handle)
            .or_else(|| self.retired.get(&handle).map(|(object, _)| object))
            .cloned()
            .ok_or(ObjectError::NoObject(handle))
    }

    /// Restores the objects of the record, each checked against `mem` and
    /// the limits, when the device resumes (§11.3). Until
    /// [`ObjectTable::end_resume`], requests taken again may use objects
    /// whose handles were destroyed, and commands taken again find what
    /// they did.
    pub fn restore(&mut self, mem: &GuestMemoryMmap) -> Result<(), ObjectError> {
        self.clear();
        self.next_handle = self.record.next_handle().max(1);
        for entry in self.record.objects()? {
            self.restore_one(entry, mem)?;
        }
        Ok(())
    }

    fn restore_one(
        &mut self,
        entry: ObjectEntry,
        mem: &GuestMemoryMmap,
    ) -> Result<(), ObjectError> {
        let handle = entry.handle;
        let refused = |source| ObjectError::Restore {
            handle,
            source: Box::new(source),
        };
        let size = self.check_segments(&entry.segments, mem).map_err(refused)?;
        let twice = self.objects.contains_key(&handle) || self.retired.contains_key(&handle);
        if twice || self.objects.len() >= self.limits.max_objects as usize {
            return Err(refused(ObjectError::TooManyObjects(
                self.limits.max_objects,
            )));
        }
        // Its fallback, if any, was counted when it was created.
        let (object, _) = self.hold(entry.segments, size, Some((entry.slot, entry.serial)), mem);
        let object = Arc::new(object);
        match entry.state {
            ObjectState::Live => {
                self.objects.insert(handle, object);
                self.created_by.insert(entry.command, handle);
            }
            ObjectState::Destroyed | ObjectState::Free => {
                self.retired.insert(handle, (object, entry.command));
            }
        }
        Ok(())
    }

    /// The device has resumed: objects whose handles were destroyed are
    /// released once the requests taken again no longer use them.
    pub fn end_resume(&mut self) {
        self.retired.clear();
        self.created_by.clear();
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
        self.end_resume();
        self.next_handle = 1;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Instant;

    use super::*;
    use crate::config::{SocketSource, TenantConfig};
    use vm_memory::FileOffset;

    fn memory(len: usize) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), len)]).unwrap()
    }

    /// Segments become runs of the memory files: contiguous runs of one
    /// file merged, split where a region ends, wherever its file lies.
    #[test]
    fn segments_become_runs_of_the_memory_files() {
        use crate::memory::tests::{memfd, table as file_table};
        const K: u64 = 0x1000;
        let file = Arc::new(memfd(64 * K, 0));
        let other = Arc::new(memfd(16 * K, 0));
        // Guest 0..16K is file 0..16K, 16K..32K is file 48K..64K (not
        // contiguous in the file), and 1M.. is the other file.
        let mem = file_table(&file, &[(0, 16 * K, 0), (16 * K, 16 * K, 48 * K)]);
        let runs = |segments: &[(u64, u64)], mem: &GuestMemoryMmap| -> Vec<(u64, u64, bool)> {
            file_ranges(segments, mem, 16)
                .unwrap()
                .iter()
                .map(|r| (r.offset, r.len, std::ptr::eq(r.file, &*file)))
                .collect()
        };
        assert_eq!(
            runs(&[(K, 2 * K), (3 * K, K), (8 * K, 1)], &mem),
            [(K, 3 * K, true), (8 * K, 1, true)]
        );
        assert_eq!(
            runs(&[(14 * K, 4 * K)], &mem),
            [(14 * K, 2 * K, true), (48 * K, 2 * K, true)]
        );
        let two_files = GuestMemoryMmap::from_ranges_with_files([
            (
                GuestAddress(0),
                usize::try_from(16 * K).unwrap(),
                Some(FileOffset::from_arc(Arc::clone(&file), 0)),
            ),
            (
                GuestAddress(16 * K),
                usize::try_from(16 * K).unwrap(),
                Some(FileOffset::from_arc(Arc::clone(&other), 0)),
            ),
        ])
        .unwrap();
        assert_eq!(
            runs(&[(15 * K, 2 * K)], &two_files),
            [(15 * K, K, true), (0, K, false)]
        );
        let many: Vec<_> = (0..5).map(|i| (i * 2, 1)).collect();
        assert_eq!(file_ranges(&many, &mem, 5).map(|r| r.len()), Ok(5));
        assert_eq!(
            file_ranges(&many, &mem, 4).map(|r| r.len()),
            Err(Fallback::TooManyRanges)
        );
    }

    fn table(config: &TenantConfig, record: &Arc<DeviceRecord>) -> ObjectTable {
        let stats = Arc::new(TenantStats::new("t"));
        ObjectTable::new(
            config.limits,
            stats,
            Arc::clone(record),
            Arc::new(DmaBufMaker::none()),
            Arc::new(TenantLog::new("t")),
        )
    }

    /// The table of a process that dies is restored from the record by the
    /// next one: live objects under their handles, a destroyed one still in
    /// use, and the commands that made them answer again as they did.
    #[test]
    fn objects_outlive_the_process_through_the_record() {
        let config = TenantConfig::new("t", SocketSource::Fd(-1));
        let record = Arc::new(DeviceRecord::private(&config));
        let mem = memory(1 << 20);
        let admission = Admission::new(config.quota, Instant::now());
        let mut first = table(&config, &record);
        let kept = first
            .create(vec![(0x1000, 100)], &mem, &admission, 1)
            .unwrap();
        let used = first
            .create(vec![(0x2000, 8), (0x9000, 8)], &mem, &admission, 2)
            .unwrap();
        let gone = first
            .create(vec![(0x3000, 1)], &mem, &admission, 3)
            .unwrap();
        // A request still holds `used` when its handle is destroyed;
        // `gone` is released as soon as its destroy is answered.
        let in_flight = first.destroy(used, 4).unwrap();
        drop(first.destroy(gone, 5).unwrap());
        // The process dies: nothing it held is released.
        std::mem::forget((first, in_flight));

        let mut next = table(&config, &record);
        next.restore(&mem).unwrap();
        assert_eq!(next.len(), 1);
        assert_eq!(next.get(kept).unwrap().size, 100);
        assert_eq!(
            next.get(used).unwrap().size,
            16,
            "a request taken again uses it"
        );
        assert!(next.get(gone).is_err());
        assert_eq!(next.create(vec![(0, 1)], &mem, &admission, 1), Ok(kept));
        assert!(next.destroy(used, 6).is_err(), "another command");
        let again = next.destroy(used, 4).unwrap();
        next.end_resume();
        assert!(next.get(used).is_err());
        let fresh = next.create(vec![(0, 1)], &mem, &admission, 7).unwrap();
        assert!(fresh > gone, "handles go on: {fresh}");
        assert_eq!(record.objects().unwrap().len(), 3, "kept, used, fresh");
        drop(again);
        assert_eq!(
            record.objects().unwrap().len(),
            2,
            "released: its slot is free"
        );
        next.clear();
        assert_eq!(record.objects().unwrap(), vec![]);
    }

    /// Recorded objects that the new memory table does not hold, or two
    /// with one handle, are refused: the device does not resume.
    #[test]
    fn objects_outside_the_new_memory_are_refused() {
        let config = TenantConfig::new("t", SocketSource::Fd(-1));
        let record = Arc::new(DeviceRecord::private(&config));
        let admission = Admission::new(config.quota, Instant::now());
        let mut first = table(&config, &record);
        first
            .create(vec![(0x80000, 16)], &memory(1 << 20), &admission, 1)
            .unwrap();
        std::mem::forget(first);
        let mut next = table(&config, &record);
        assert!(matches!(
            next.restore(&memory(0x1000)),
            Err(ObjectError::Restore { handle: 1, .. })
        ));
        next.clear();
        record.clear();
        assert!(record.write_object(0, 9, 1, 1, &[(0, 1)]));
        assert!(record.write_object(1, 9, 2, 2, &[(0, 1)]));
        assert!(next.restore(&memory(0x1000)).is_err());
    }
}
