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
//! - 3: live objects; while there are any the device cannot resume (its
//!   objects are not in the record), and a restarted process resets it;
//! - 4..8: zero.
//!
//! The device writes the record, one thread, in an order that leaves it
//! consistent wherever the process is killed ([`crate::ring_record`]); the
//! next process checks it ([`DeviceRecord::check`], [`RingRecord::recover`])
//! and resets the device when it cannot trust it.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use thiserror::Error;

use crate::config::TenantConfig;
use crate::ring_record::{RecordError, RingRecord};
use crate::shared::SharedWords;

/// Word 0 of a record: "VUACREC" and the format's version, 1.
pub const MAGIC: u64 = u64::from_be_bytes(*b"VUACREC\x01");

const MAGIC_WORD: usize = 0;
const GEOMETRY: usize = 1;
const CAPABILITIES: usize = 2;
const OBJECTS: usize = 3;
const HEADER_WORDS: usize = 8;

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
    /// The guest had objects, which the record does not keep.
    #[error("{0} objects were live, and objects are not kept across a restart")]
    ObjectsLive(u64),
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
}

impl DeviceRecord {
    /// Words the record of `config`'s device takes.
    pub fn words_for(config: &TenantConfig) -> usize {
        HEADER_WORDS + usize::from(config.request_queues + 1) * Self::ring_words(config)
    }

    fn ring_words(config: &TenantConfig) -> usize {
        RingRecord::<[AtomicU64]>::words_for(config.queue_size)
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
        }
    }

    fn fresh(config: &TenantConfig, words: Words) -> Self {
        let record = Self::over(config, words);
        record.write_header();
        record
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
        self.words()
            .get(index)
            .map_or(0, |word| word.load(Ordering::Acquire))
    }

    fn store(&self, index: usize, value: u64) {
        if let Some(word) = self.words().get(index) {
            word.store(value, Ordering::Release);
        }
    }

    fn geometry(&self) -> u64 {
        u64::from(self.queues) | (u64::from(self.queue_size) << 16)
    }

    fn write_header(&self) {
        self.store(MAGIC_WORD, MAGIC);
        self.store(GEOMETRY, self.geometry());
        for index in CAPABILITIES..HEADER_WORDS {
            self.store(index, 0);
        }
    }

    /// The record of virtqueue `vq`; `None` past the device's virtqueues.
    pub fn ring(&self, vq: u16) -> Option<RingRecord<'_, [AtomicU64]>> {
        if vq >= self.queues {
            return None;
        }
        let size = RingRecord::<[AtomicU64]>::words_for(self.queue_size);
        let start = HEADER_WORDS + usize::from(vq) * size;
        let words = self.words().get(start..start + size)?;
        RingRecord::new(words, self.queue_size).ok()
    }

    /// The device reset: a fresh record.
    pub fn clear(&self) {
        self.write_header();
        for vq in 0..self.queues {
            if let Some(ring) = self.ring(vq) {
                ring.clear();
            }
        }
    }

    /// Whether the device took anything since its last reset: only then is
    /// there something to resume.
    pub fn in_use(&self) -> bool {
        (0..self.queues).any(|vq| self.ring(vq).is_some_and(|ring| ring.taken() != 0))
    }

    /// Checks the header, before the rings are recovered.
    pub fn check(&self) -> Result<(), DeviceRecordError> {
        let expected = [(MAGIC_WORD, MAGIC), (GEOMETRY, self.geometry())]
            .into_iter()
            .chain((OBJECTS + 1..HEADER_WORDS).map(|word| (word, 0)));
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
        match self.load(OBJECTS) {
            0 => Ok(()),
            live => Err(DeviceRecordError::ObjectsLive(live)),
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

    /// Records how many objects are live, before the answer of the command
    /// that changed it.
    pub fn set_objects(&self, live: usize) {
        self.store(OBJECTS, u64::try_from(live).unwrap_or(u64::MAX));
    }
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
        other.request_queues = 16;
        other.queue_size = 2;
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
        record.set_objects(2);
        assert_eq!(record.check(), Err(DeviceRecordError::ObjectsLive(2)));
        record.set_objects(0);
        for word in [MAGIC_WORD, GEOMETRY, 4, 7] {
            let kept = record.load(word);
            record.store(word, kept ^ 0x100);
            assert!(record.check().is_err(), "word {word}");
            record.store(word, kept);
        }
        assert_eq!(record.check(), Ok(()));
    }
}
