// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The record of a tenant's device that outlives the tenant's process
//! (§11.3): a header, then the [`RingRecord`] of each virtqueue, in 64-bit
//! words. The supervisor makes it ([`DeviceRecord::shared`]) and hands it to
//! each process it starts for the tenant, which maps it
//! ([`DeviceRecord::attach`]); a daemon that serves its tenants in-process
//! keeps it in its own memory ([`DeviceRecord::private`]).
//!
//! Header words:
//! - 0: [`MAGIC`], the format and its version;
//! - 1: the geometry: virtqueues (bits 0..16) and queue size (bits 16..32);
//! - 2: the capabilities the driver enabled with CAPABILITIES (§7.5);
//! - 3: the next object handle to try (§7.1);
//! - 4: the object geometry: slots (bits 0..32, `max_objects`) and segments
//!   per slot (bits 32..64, `max_segments`);
//! - 5: the last object serial number given (see below; not reset);
//! - 6: objects alive that have no slot: while there are any, the device
//!   cannot resume;
//! - 7: not 0 once a used entry could not be written as recorded (the
//!   guest's used ring is not where its driver said): the device cannot
//!   resume;
//! - 8: not 0 while the last process ended by a failure of its own (the
//!   supervisor sets it, [`DeviceRecord::mark_failed`]; the next process
//!   clears it once it resumed): the requests that process was running
//!   count a lost run ([`crate::ring_record::MAX_LOST_RUNS`]).
//!
//! After the rings, one slot per object, `3 + 2 * max_segments` words: its
//! state (bits 0..8: [`ObjectState`]; bits 8..32: how many segments; bits
//! 32..64: its handle), its serial number (which tells it from a later
//! object in the same slot), the sequence number of the control command that
//! created it or is destroying it, then its segments (guest address, length).
//! A slot is written whole before its state makes it live; it is marked
//! destroyed by the OBJECT_DESTROY that removes its handle, and freed when
//! the object is released (§7.2): after the command is answered and the
//! last request that used it has completed.
//!
//! A supervisor that stops (SIGTERM) saves each record in a file of its
//! state directory, the words in order, little-endian
//! ([`DeviceRecord::save`]); the next daemon takes a file saved moments
//! before into its fresh record ([`DeviceRecord::take_saved`]), so that an
//! upgrade of the daemon is a pause for the VMs too.
//!
//! The device writes the record, one thread, in an order that leaves it
//! consistent wherever the process is killed ([`crate::ring_record`]); the
//! next process checks it ([`DeviceRecord::check`], [`RingRecord::recover`])
//! and resets the device when it cannot trust it.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use thiserror::Error;

use crate::config::TenantConfig;
use crate::ring_record::{RecordError, RecordWords, RingRecord};
use crate::shared::SharedWords;

/// Word 0 of a record: "VUACREC" and the format's version, 2.
pub const MAGIC: u64 = u64::from_be_bytes(*b"VUACREC\x02");

const MAGIC_WORD: usize = 0;
const GEOMETRY: usize = 1;
const CAPABILITIES: usize = 2;
const NEXT_HANDLE: usize = 3;
const OBJECT_GEOMETRY: usize = 4;
const SERIAL: usize = 5;
const UNRECORDED: usize = 6;
const POISONED: usize = 7;
const FAILED: usize = 8;
const HEADER_WORDS: usize = 9;
/// Words of an object slot before its segments.
const OBJECT_HEAD: usize = 3;

/// Where an object is in its life, as its slot says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectState {
    /// No object.
    Free = 0,
    /// Its handle is valid.
    Live = 1,
    /// OBJECT_DESTROY removed its handle; requests may still use it, or the
    /// command's answer may not be recorded yet.
    Destroyed = 2,
}

/// An object read back from its slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectEntry {
    /// Its slot.
    pub slot: usize,
    /// Live or destroyed.
    pub state: ObjectState,
    /// Its handle.
    pub handle: u32,
    /// Its serial number.
    pub serial: u64,
    /// The control command that created it (live) or destroyed it.
    pub command: u64,
    /// Its segments.
    pub segments: Vec<(u64, u64)>,
}

/// Why a record cannot be resumed: the device is reset instead.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DeviceRecordError {
    /// The header is not one this version writes for this configuration.
    #[error("header word {word} is {found:#x}, expected {expected:#x}")]
    Header {
        /// The word.
        word: usize,
        /// What it holds.
        found: u64,
        /// What it should hold.
        expected: u64,
    },
    /// Objects lived that the record has no slot for.
    #[error("{0} objects were alive without a slot in the record")]
    Unrecorded(u64),
    /// An object slot holds no state this version writes.
    #[error("object slot {slot}: state {state:#x} is not valid")]
    BadObject {
        /// The slot.
        slot: usize,
        /// Its state word.
        state: u64,
    },
    /// A virtqueue's record cannot be trusted.
    #[error("virtqueue {vq}")]
    Ring {
        /// The virtqueue.
        vq: u16,
        /// Why.
        #[source]
        source: RecordError,
    },
}

/// What [`DeviceRecord::take_saved`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Saved {
    /// No saved record.
    None,
    /// A record of this geometry, saved in time: taken.
    Taken,
    /// A record saved too long ago: a VM that used it is gone by now.
    Stale(Duration),
    /// A record of another geometry or format.
    Foreign,
}

/// Where the words are.
#[derive(Debug)]
enum Words {
    /// In this process's memory.
    Private(Box<[AtomicU64]>),
    /// In a memfd the supervisor holds.
    Shared(SharedWords),
}

/// The record of one tenant's device.
#[derive(Debug)]
pub struct DeviceRecord {
    words: Words,
    /// Virtqueues: the control queue and the request queues.
    queues: u16,
    queue_size: u16,
    /// Object slots.
    max_objects: u32,
    /// Segments per object slot.
    max_segments: u32,
}

impl DeviceRecord {
    /// Words the record of `config`'s device takes.
    pub fn words_for(config: &TenantConfig) -> usize {
        let objects = config.limits.max_objects as usize;
        HEADER_WORDS
            + usize::from(config.request_queues + 1) * Self::ring_words(config.queue_size)
            + objects * Self::object_words(config.limits.max_segments)
    }

    fn ring_words(queue_size: u16) -> usize {
        RingRecord::<[AtomicU64]>::words_for(queue_size)
    }

    fn object_words(max_segments: u32) -> usize {
        OBJECT_HEAD + 2 * max_segments as usize
    }

    /// A record of a fresh device in this process's memory.
    pub fn private(config: &TenantConfig) -> Self {
        let words = (0..Self::words_for(config))
            .map(|_| AtomicU64::new(0))
            .collect();
        Self::fresh(config, Words::Private(words))
    }

    /// A record of a fresh device in a new memfd, to hand to the tenant's
    /// processes ([`DeviceRecord::shared_file`]).
    pub fn shared(config: &TenantConfig) -> io::Result<Self> {
        let name = format!("record-{}", config.name);
        let words = SharedWords::create(&name, Self::words_for(config))?;
        Ok(Self::fresh(config, Words::Shared(words)))
    }

    /// The record in `file`, made by [`DeviceRecord::shared`] for `config`:
    /// refused if its size is not that of `config`'s record. What it holds
    /// is checked when the device resumes ([`DeviceRecord::check`]).
    pub fn attach(config: &TenantConfig, file: OwnedFd) -> io::Result<Self> {
        let words = SharedWords::attach(file, Self::words_for(config))?;
        Ok(Self::over(config, Words::Shared(words)))
    }

    fn over(config: &TenantConfig, words: Words) -> Self {
        DeviceRecord {
            words,
            queues: config.request_queues + 1,
            queue_size: config.queue_size,
            max_objects: config.limits.max_objects,
            max_segments: config.limits.max_segments,
        }
    }

    fn fresh(config: &TenantConfig, words: Words) -> Self {
        let record = Self::over(config, words);
        record.write_header();
        record
    }

    /// The record's size in bytes.
    pub fn size_bytes(&self) -> u64 {
        std::mem::size_of_val(self.words()) as u64
    }

    /// Whether `file` is this record's memfd (a descriptor of the same
    /// file, wherever it came from).
    pub fn is_file(&self, file: &File) -> io::Result<bool> {
        let Some(own) = self.shared_file() else {
            return Ok(false);
        };
        let own = File::from(own.try_clone_to_owned()?).metadata()?;
        let other = file.metadata()?;
        Ok(own.dev() == other.dev() && own.ino() == other.ino())
    }

    /// The memfd of a record made by [`DeviceRecord::shared`].
    pub fn shared_file(&self) -> Option<BorrowedFd<'_>> {
        match &self.words {
            Words::Private(_) => None,
            Words::Shared(words) => Some(words.as_fd()),
        }
    }

    fn words(&self) -> &[AtomicU64] {
        match &self.words {
            Words::Private(words) => words,
            Words::Shared(words) => words,
        }
    }

    fn load(&self, index: usize) -> u64 {
        RecordWords::load(self.words(), index)
    }

    fn store(&self, index: usize, value: u64) {
        RecordWords::store(self.words(), index, value);
    }

    fn geometry(&self) -> u64 {
        u64::from(self.queues) | (u64::from(self.queue_size) << 16)
    }

    fn object_geometry(&self) -> u64 {
        u64::from(self.max_objects) | (u64::from(self.max_segments) << 32)
    }

    fn write_header(&self) {
        self.store(MAGIC_WORD, MAGIC);
        self.store(GEOMETRY, self.geometry());
        self.store(OBJECT_GEOMETRY, self.object_geometry());
        for index in [CAPABILITIES, NEXT_HANDLE, UNRECORDED, POISONED, FAILED] {
            self.store(index, 0);
        }
    }

    /// Saves the record in file `path` (written whole to a temporary file
    /// beside it, then renamed over it), readable by its owner only.
    pub fn save(&self, path: &Path) -> io::Result<()> {
        let bytes: Vec<u8> = self
            .words()
            .iter()
            .flat_map(|word| word.load(Ordering::Acquire).to_le_bytes())
            .collect();
        let temporary = path.with_extension("tmp");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&temporary)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    }

    /// Takes into this fresh record the one a stopped daemon saved at
    /// `path` ([`DeviceRecord::save`]), if it is of this record's size and
    /// geometry and was saved less than `max_age` ago; the file is removed
    /// whatever it held, so that it is never taken twice.
    pub fn take_saved(&self, path: &Path, max_age: Duration) -> io::Result<Saved> {
        let words = self.words();
        let (bytes, age) = match read_saved(path, words.len() * 8) {
            Ok(Some(saved)) => saved,
            Ok(None) => {
                std::fs::remove_file(path)?;
                return Ok(Saved::Foreign);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Saved::None),
            Err(e) => return Err(e),
        };
        std::fs::remove_file(path)?;
        if age > max_age {
            return Ok(Saved::Stale(age));
        }
        let header = |index: usize| {
            bytes
                .get(index * 8..index * 8 + 8)
                .and_then(|word| word.try_into().ok())
                .map(u64::from_le_bytes)
        };
        let ours = header(MAGIC_WORD) == Some(MAGIC)
            && header(GEOMETRY) == Some(self.geometry())
            && header(OBJECT_GEOMETRY) == Some(self.object_geometry());
        if !ours {
            return Ok(Saved::Foreign);
        }
        for (word, value) in words.iter().zip(bytes.chunks_exact(8)) {
            let value = value.try_into().map(u64::from_le_bytes).unwrap_or(0);
            word.store(value, Ordering::Release);
        }
        Ok(Saved::Taken)
    }

    /// The record of virtqueue `vq`; `None` past the device's virtqueues.
    pub fn ring(&self, vq: u16) -> Option<RingRecord<'_, [AtomicU64]>> {
        if vq >= self.queues {
            return None;
        }
        let size = Self::ring_words(self.queue_size);
        let start = HEADER_WORDS + usize::from(vq) * size;
        let words = self.words().get(start..start + size)?;
        RingRecord::new(words, self.queue_size).ok()
    }

    /// The device reset: a fresh record.
    pub fn clear(&self) {
        // The rings last, each `taken` last: until then the record counts
        // as in use, and one cleared in part fails its checks.
        self.write_header();
        for slot in 0..self.object_slots() {
            self.store(self.object_index(slot), 0);
        }
        for vq in 0..self.queues {
            if let Some(ring) = self.ring(vq) {
                ring.clear();
            }
        }
    }

    /// Whether the header says this is a record of this geometry (the
    /// record of a device like this one, whatever state it is in).
    pub fn is_of_this_device(&self) -> bool {
        self.load(MAGIC_WORD) == MAGIC
            && self.load(GEOMETRY) == self.geometry()
            && self.load(OBJECT_GEOMETRY) == self.object_geometry()
    }

    /// Whether the device took anything since its last reset: only then is
    /// there something to resume.
    pub fn in_use(&self) -> bool {
        (0..self.queues).any(|vq| self.ring(vq).is_some_and(|ring| ring.taken() != 0))
    }

    /// Checks the header, before the rings are recovered.
    pub fn check(&self) -> Result<(), DeviceRecordError> {
        let expected = [
            (MAGIC_WORD, MAGIC),
            (GEOMETRY, self.geometry()),
            (OBJECT_GEOMETRY, self.object_geometry()),
            (POISONED, 0),
        ];
        for (word, expected) in expected {
            let found = self.load(word);
            if found != expected {
                return Err(DeviceRecordError::Header {
                    word,
                    found,
                    expected,
                });
            }
        }
        match self.load(UNRECORDED) {
            0 => Ok(()),
            alive => Err(DeviceRecordError::Unrecorded(alive)),
        }
    }

    /// The capabilities the driver enabled with CAPABILITIES (§7.5).
    pub fn capabilities(&self) -> u64 {
        self.load(CAPABILITIES)
    }

    /// Records the capabilities enabled, before the command's answer.
    pub fn set_capabilities(&self, capabilities: u64) {
        self.store(CAPABILITIES, capabilities);
    }

    /// A used entry could not be written as the record says: the record
    /// no longer matches the ring, and the device cannot resume from it.
    pub fn poison(&self) {
        self.store(POISONED, 1);
    }

    /// The last process of the tenant ended by a failure of its own (the
    /// supervisor saw it): not killed or stopped from outside.
    pub fn mark_failed(&self) {
        self.store(FAILED, 1);
    }

    /// Whether the last process ended by a failure of its own.
    pub fn failed(&self) -> bool {
        self.load(FAILED) != 0
    }

    /// The device resumed after the failure: the next end counts anew.
    pub fn clear_failed(&self) {
        self.store(FAILED, 0);
    }

    /// The next object handle to try, as recorded.
    pub fn next_handle(&self) -> u32 {
        u32::try_from(self.load(NEXT_HANDLE)).unwrap_or(0)
    }

    /// Records the next object handle to try.
    pub fn set_next_handle(&self, handle: u32) {
        self.store(NEXT_HANDLE, u64::from(handle));
    }

    /// A serial number no object of this record had.
    pub fn next_serial(&self) -> u64 {
        let serial = self.load(SERIAL).wrapping_add(1);
        self.store(SERIAL, serial);
        serial
    }

    /// An object without a slot came (`+1`) or went (`-1`).
    pub fn count_unrecorded(&self, delta: i64) {
        let count = self.load(UNRECORDED).saturating_add_signed(delta);
        self.store(UNRECORDED, count);
    }

    /// How many object slots there are.
    pub fn object_slots(&self) -> usize {
        self.max_objects as usize
    }

    /// The index of the first word of object slot `slot`.
    fn object_index(&self, slot: usize) -> usize {
        HEADER_WORDS
            + usize::from(self.queues) * Self::ring_words(self.queue_size)
            + slot * Self::object_words(self.max_segments)
    }

    fn object_state(&self, slot: usize) -> u64 {
        self.load(self.object_index(slot))
    }

    /// A free object slot, looking from `from` on round the slots.
    pub fn free_object_slot(&self, from: usize) -> Option<usize> {
        let slots = self.object_slots();
        (0..slots)
            .map(|step| (from + step) % slots)
            .find(|&slot| self.object_state(slot) & 0xff == ObjectState::Free as u64)
    }

    /// Writes a live object in slot `slot`: its segments, serial number and
    /// creating command first, its state last. `false` (nothing written)
    /// for a slot past the end or more segments than a slot holds.
    pub fn write_object(
        &self,
        slot: usize,
        handle: u32,
        serial: u64,
        command: u64,
        segments: &[(u64, u64)],
    ) -> bool {
        if slot >= self.object_slots() || segments.len() > self.max_segments as usize {
            return false;
        }
        let start = self.object_index(slot);
        for (index, &(addr, len)) in segments.iter().enumerate() {
            self.store(start + OBJECT_HEAD + 2 * index, addr);
            self.store(start + OBJECT_HEAD + 2 * index + 1, len);
        }
        self.store(start + 1, serial);
        self.store(start + 2, command);
        let count = segments.len() as u64;
        self.store(start, object_word(ObjectState::Live, count, handle));
        true
    }

    /// Marks the object of serial `serial` in slot `slot` destroyed by
    /// control command `command`.
    pub fn destroy_object(&self, slot: usize, serial: u64, command: u64) {
        let start = self.object_index(slot);
        if slot >= self.object_slots() || self.load(start + 1) != serial {
            return;
        }
        let state = self.load(start);
        self.store(start + 2, command);
        self.store(start, (state & !0xff) | ObjectState::Destroyed as u64);
    }

    /// Frees slot `slot` if it still holds the object of serial `serial`.
    pub fn free_object(&self, slot: usize, serial: u64) {
        let start = self.object_index(slot);
        if slot < self.object_slots() && self.load(start + 1) == serial {
            self.store(start, 0);
        }
    }

    /// The objects the slots hold, checked for what this module writes
    /// (their segments are checked against guest memory by the caller).
    pub fn objects(&self) -> Result<Vec<ObjectEntry>, DeviceRecordError> {
        let mut entries = Vec::new();
        for slot in 0..self.object_slots() {
            let start = self.object_index(slot);
            let word = self.load(start);
            let bad = || DeviceRecordError::BadObject { slot, state: word };
            let state = match word & 0xff {
                0 => continue,
                1 => ObjectState::Live,
                2 => ObjectState::Destroyed,
                _ => return Err(bad()),
            };
            let count = ((word >> 8) & 0xff_ffff) as usize;
            let handle = (word >> 32) as u32;
            if count == 0 || count > self.max_segments as usize || handle == 0 {
                return Err(bad());
            }
            let segments = (0..count)
                .map(|index| {
                    let at = start + OBJECT_HEAD + 2 * index;
                    (self.load(at), self.load(at + 1))
                })
                .collect();
            entries.push(ObjectEntry {
                slot,
                state,
                handle,
                serial: self.load(start + 1),
                command: self.load(start + 2),
                segments,
            });
        }
        Ok(entries)
    }
}

/// The `len` bytes of the file at `path` and its age; `None` if it is no
/// regular file of that size owned by this process's user. Neither a link
/// nor a FIFO is followed or waited on.
fn read_saved(path: &Path, len: usize) -> io::Result<Option<(Vec<u8>, Duration)>> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let metadata = file.metadata()?;
    // SAFETY: geteuid has no preconditions.
    let owner = unsafe { libc::geteuid() };
    let ours = metadata.is_file()
        && std::os::unix::fs::MetadataExt::uid(&metadata) == owner
        && usize::try_from(metadata.len()).ok() == Some(len);
    if !ours {
        return Ok(None);
    }
    let age = metadata.modified()?.elapsed().unwrap_or_default();
    let mut bytes = vec![0; len];
    io::Read::read_exact(&mut &file, &mut bytes)?;
    Ok(Some((bytes, age)))
}

/// The state word of an object slot.
fn object_word(state: ObjectState, count: u64, handle: u32) -> u64 {
    state as u64 | (count << 8) | (u64::from(handle) << 32)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::config::SocketSource;
    use crate::ring_record::Take;

    fn config() -> TenantConfig {
        let mut config = TenantConfig::new("t", SocketSource::Fd(-1));
        config.request_queues = 2;
        config.queue_size = 16;
        config
    }

    #[test]
    fn a_record_handed_over_keeps_what_the_first_process_wrote() {
        let config = config();
        let record = DeviceRecord::shared(&config).unwrap();
        assert!(!record.in_use());
        assert_eq!(record.ring(2).unwrap().take(5), Take::Held(1));
        record.set_capabilities(3);
        let file = record.shared_file().unwrap().try_clone_to_owned().unwrap();
        let next = DeviceRecord::attach(&config, file).unwrap();
        assert!(next.in_use());
        assert_eq!(next.check(), Ok(()));
        assert_eq!(next.capabilities(), 3);
        assert_eq!(next.ring(2).unwrap().taken(), 1);
        assert_eq!(next.ring(1).unwrap().taken(), 0);
        assert!(next.ring(3).is_none());
        next.clear();
        assert!(!record.in_use());
        assert_eq!(record.capabilities(), 0);
    }

    #[test]
    fn a_record_of_another_geometry_is_refused() {
        let config = config();
        let record = DeviceRecord::shared(&config).unwrap();
        let file = || record.shared_file().unwrap().try_clone_to_owned().unwrap();
        let mut bigger = config.clone();
        bigger.queue_size = 32;
        assert!(DeviceRecord::attach(&bigger, file()).is_err());
        // Same size, other split: the header says so.
        let mut other = config.clone();
        other.request_queues = 0;
        other.queue_size = 54;
        assert_eq!(
            DeviceRecord::words_for(&other),
            DeviceRecord::words_for(&config)
        );
        let attached = DeviceRecord::attach(&other, file()).unwrap();
        assert!(matches!(
            attached.check(),
            Err(DeviceRecordError::Header { word: GEOMETRY, .. })
        ));
    }

    #[test]
    fn corrupt_headers_and_live_objects_are_refused() {
        let record = DeviceRecord::private(&config());
        assert_eq!(record.check(), Ok(()));
        record.count_unrecorded(1);
        record.count_unrecorded(1);
        assert_eq!(record.check(), Err(DeviceRecordError::Unrecorded(2)));
        record.count_unrecorded(-1);
        record.count_unrecorded(-1);
        for word in [MAGIC_WORD, GEOMETRY, 4, 7] {
            let kept = record.load(word);
            record.store(word, kept ^ 0x100);
            assert!(record.check().is_err(), "word {word}");
            record.store(word, kept);
        }
        assert_eq!(record.check(), Ok(()));
    }

    #[test]
    fn object_slots_are_written_whole_then_destroyed_then_freed() {
        let config = config();
        let record = DeviceRecord::shared(&config).unwrap();
        let slots = config.limits.max_objects as usize;
        assert_eq!(record.object_slots(), slots);
        assert_eq!(record.free_object_slot(0), Some(0));
        let segments = [(0x1000, 10), (0x8000, 20)];
        assert!(record.write_object(0, 7, 1, 3, &segments));
        assert!(!record.write_object(slots, 8, 2, 4, &segments));
        assert_eq!(record.free_object_slot(0), Some(1));
        assert_eq!(record.free_object_slot(slots - 1), Some(slots - 1));
        let live = ObjectEntry {
            slot: 0,
            state: ObjectState::Live,
            handle: 7,
            serial: 1,
            command: 3,
            segments: segments.to_vec(),
        };
        assert_eq!(record.objects(), Ok(vec![live.clone()]));
        // Another object's serial number touches nothing.
        record.destroy_object(0, 2, 9);
        record.free_object(0, 2);
        assert_eq!(record.objects(), Ok(vec![live.clone()]));
        record.destroy_object(0, 1, 9);
        let destroyed = ObjectEntry {
            state: ObjectState::Destroyed,
            command: 9,
            ..live
        };
        let file = record.shared_file().unwrap().try_clone_to_owned().unwrap();
        let next = DeviceRecord::attach(&config, file).unwrap();
        assert_eq!(next.objects(), Ok(vec![destroyed]));
        next.free_object(0, 1);
        assert_eq!(record.objects(), Ok(vec![]));
        // A slot with no segments, or a state no one writes, is refused.
        assert!(record.write_object(2, 5, 3, 4, &[]));
        assert!(matches!(
            record.objects(),
            Err(DeviceRecordError::BadObject { slot: 2, .. })
        ));
        record.free_object(2, 3);
        assert!(record.write_object(2, 5, 4, 4, &segments));
        record.store(record.object_index(2), 0x7);
        assert!(record.objects().is_err());
        let serial = record.next_serial();
        record.clear();
        assert_eq!(record.objects(), Ok(vec![]));
        assert!(
            record.next_serial() > serial,
            "serial numbers survive a reset"
        );
    }

    #[test]
    fn a_saved_record_is_taken_once_by_a_record_of_its_geometry() {
        let config = config();
        let dir = std::env::temp_dir().join(format!("device-record-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.record");
        let record = DeviceRecord::private(&config);
        assert_eq!(record.ring(1).unwrap().take(3), Take::Held(1));
        assert!(record.write_object(4, 9, 1, 2, &[(0x1000, 10)]));
        record.save(&path).unwrap();
        let next = DeviceRecord::shared(&config).unwrap();
        assert_eq!(
            next.take_saved(&path, Duration::from_secs(60)).unwrap(),
            Saved::Taken
        );
        assert!(next.in_use());
        assert_eq!(next.check(), Ok(()));
        assert_eq!(next.objects().unwrap().len(), 1);
        assert_eq!(
            next.take_saved(&path, Duration::from_secs(60)).unwrap(),
            Saved::None
        );
        // Another geometry, or too old: removed, not taken.
        record.save(&path).unwrap();
        let mut other = config.clone();
        other.queue_size = 32;
        let fresh = DeviceRecord::private(&other);
        assert_eq!(
            fresh.take_saved(&path, Duration::from_secs(60)).unwrap(),
            Saved::Foreign
        );
        assert!(!fresh.in_use());
        record.save(&path).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let late = DeviceRecord::private(&config);
        assert!(matches!(
            late.take_saved(&path, Duration::ZERO).unwrap(),
            Saved::Stale(_)
        ));
        assert!(!late.in_use() && !path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
