// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! A virtqueue's record that outlives the tenant's process (issue 14): which
//! chains the device took, which it completed, which it is publishing, and
//! where the rings stand, written so that a process killed between any two
//! of its stores leaves a record that the next process can trust, or knows
//! it cannot.
//!
//! The record is a run of 64-bit words ([`RecordWords`]: in production a
//! memfd the supervisor holds, so that it survives the tenant's process):
//!
//! - word 0: `taken`, how many available entries the device took since the
//!   last reset. It is the commit point of a take: the next available index
//!   is `taken` modulo 2^16 and the take's sequence number (its fence on a
//!   request queue, §6.2) is `taken`.
//! - word 1, `publish`: the used index the device last published (bits
//!   0..16), the size of the batch being published (bits 16..32, 0 when none
//!   is), and how many of the entries taken the device skipped (§6.5: no
//!   chain it may answer, and no used entry), modulo 2^16 (bits 32..48),
//!   and, while a skip is being committed, bit 48. A skip counts once
//!   `taken` moved: while bit 48 is set, a count one ahead of it may be a
//!   skip the process did not commit. Every entry taken is skipped, in a
//!   head's slot, or published: recovery checks that the counts agree with
//!   the guest's used index, so that no slot can go missing unnoticed.
//! - words 2 to 5, the ring's binding: the guest addresses of its
//!   descriptor table, available ring and used ring, and its size, as they
//!   were at the first take since the reset ([`RingRecord::bind`]): a ring
//!   that starts again elsewhere is not the one the record describes.
//! - then two words per descriptor head: the sequence number of the chain
//!   at that head, and its state (bits 0..8: [`SlotState`]; bits 8..16:
//!   flags, [`NO_RERUN`] and the count of processes that failed while it
//!   ran ([`MAX_LOST_RUNS`]); bits 16..32: its place in the batch being
//!   published; bits 32..64: the used length once completed).
//!
//! The order of the stores (one writer: the device's thread) is what makes
//! the record crash-consistent; [`RingRecord::recover`] reads it with the
//! guest's used index (from the used ring, which the guest can write: a
//! record that disagrees with it is refused, never trusted over it).
//!
//! Each request follows: [`RingRecord::take`] (sequence number, then state,
//! then `taken`), [`RingRecord::start`] before the engine touches any of
//! its buffers, [`RingRecord::complete`] once its output and response are
//! written and before its fence signals (a request whose completion anyone
//! may have seen must never run again), then a batch of completed heads is
//! published: [`RingRecord::begin_publish`], the caller writes the used
//! entries and the used index, [`RingRecord::end_publish`]. A request that
//! was running at [`MAX_LOST_RUNS`] failures of the process's own since it
//! was taken (kills from outside do not count) is not run again, since it
//! may be what makes the process fail: it is interrupted. Every used entry
//! goes through a batch, those of requests answered without running too;
//! after a failed write of the used ring the caller poisons the device's
//! record (which then refuses to be trusted, and the device is reset). After
//! [`RingRecord::recover`] the caller notifies the guest, which may have
//! missed the notification of the last entries published.

use std::sync::atomic::{AtomicU64, Ordering};

use thiserror::Error;

/// The words a record lives in.
pub trait RecordWords {
    /// Word `index`.
    fn load(&self, index: usize) -> u64;
    /// Sets word `index`; the stores of one writer reach the words in the
    /// order it makes them.
    fn store(&self, index: usize, value: u64);
    /// How many words there are.
    fn len(&self) -> usize;
    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl RecordWords for [AtomicU64] {
    fn load(&self, index: usize) -> u64 {
        self.get(index)
            .map_or(0, |word| word.load(Ordering::Acquire))
    }

    fn store(&self, index: usize, value: u64) {
        if let Some(word) = self.get(index) {
            word.store(value, Ordering::Release);
        }
    }

    fn len(&self) -> usize {
        <[AtomicU64]>::len(self)
    }
}

/// Errors of a record that cannot be trusted: the device must be reset.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RecordError {
    /// The words are too few for the queue.
    #[error("record of {words} words is too small for a queue of {size}")]
    TooSmall {
        /// Words there are.
        words: usize,
        /// The queue's size.
        size: u16,
    },
    /// A head's state is no state this module writes.
    #[error("head {head}: state {state:#x} is not valid")]
    BadState {
        /// The head.
        head: u16,
        /// Its state word.
        state: u64,
    },
    /// A head's sequence number is 0 or past `taken`, or two heads have the
    /// same one.
    #[error("head {head}: sequence number {seqno} is impossible (taken {taken})")]
    BadSeqno {
        /// The head.
        head: u16,
        /// Its sequence number.
        seqno: u64,
        /// The record's `taken`.
        taken: u64,
    },
    /// The guest's used index is neither where the record says the device
    /// left it nor where the batch being published would take it.
    #[error("used index {guest} in the ring, the record says {used} (+{batch} being published)")]
    UsedDiverged {
        /// The used index in the guest's ring.
        guest: u16,
        /// The record's used index.
        used: u16,
        /// The batch being published.
        batch: u16,
    },
    /// The entries taken are not all skipped, held or published: a head's
    /// slot went missing.
    #[error(
        "{taken} entries taken, {skipped} skipped (mod 2^16), {held} held, \
         but the used index is {guest}"
    )]
    Unaccounted {
        /// Entries taken.
        taken: u64,
        /// Entries skipped, modulo 2^16.
        skipped: u16,
        /// Heads holding an entry.
        held: usize,
        /// The guest's used index.
        guest: u16,
    },
    /// Heads being published at places the batch does not have.
    #[error("{publishing} heads being published, the batch holds {batch}")]
    BatchMismatch {
        /// Heads in state Publishing.
        publishing: usize,
        /// The batch's size.
        batch: u16,
    },
    /// A batch to publish that the queue cannot hold: more heads than its
    /// size, or a head past it.
    #[error("a batch of {heads} heads cannot be published on a queue of {size}")]
    BatchTooLarge {
        /// Heads in the batch.
        heads: usize,
        /// The queue's size.
        size: u16,
    },
    /// `taken` is past anything a device reaches (2^62).
    #[error("{0} entries taken is more than any device takes")]
    TooManyTaken(u64),
    /// The ring started where the record does not say it was.
    #[error("the ring is {ring}, the record describes {recorded}")]
    Moved {
        /// Where the ring is now.
        ring: Binding,
        /// Where the record says it was.
        recorded: Binding,
    },
}

/// Where a ring is in the guest's memory, and its size: what a record is
/// bound to ([`RingRecord::bind`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Binding {
    /// The descriptor table's guest address.
    pub desc: u64,
    /// The available ring's guest address.
    pub avail: u64,
    /// The used ring's guest address.
    pub used: u64,
    /// The ring's size.
    pub size: u16,
}

impl std::fmt::Display for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} entries at {:#x} (available {:#x}, used {:#x})",
            self.size, self.desc, self.avail, self.used
        )
    }
}

/// Where a head is in its request's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// No chain at this head.
    Free = 0,
    /// Taken, not yet handed to the engine.
    Taken = 1,
    /// Handed to the engine: it may have written part of its output.
    Running = 2,
    /// Output and response written; its used length recorded.
    Done = 3,
    /// In the batch being published.
    Publishing = 4,
}

impl TryFrom<u8> for SlotState {
    type Error = u8;

    fn try_from(value: u8) -> Result<Self, u8> {
        Ok(match value {
            0 => SlotState::Free,
            1 => SlotState::Taken,
            2 => SlotState::Running,
            3 => SlotState::Done,
            4 => SlotState::Publishing,
            other => return Err(other),
        })
    }
}

/// What [`RingRecord::take`] made of an available entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// The head holds the request, with this sequence number.
    Held(u64),
    /// The head is past the queue's size or holds a request already (§6.5):
    /// the entry is consumed under this sequence number, without a request.
    Skipped(u64),
}

/// Flag of a request that cannot run twice: its output overlaps its input,
/// so once it ran in part its input is gone.
pub const NO_RERUN: u8 = 1;

/// Failures of the process's own while a request runs, counted since it was
/// taken, at which it is interrupted instead of run again: a request that
/// makes the process fail each time it runs (a fault of the engine on that
/// input) would otherwise end every process that takes over, and the device
/// would never serve again. After a failure, the device runs each request
/// that was running then alone ([`RingRecord::failures`]), so that a second
/// failure counts against that request only (§11.3). A process killed or
/// stopped from outside did not fail by itself: its requests run again as
/// often as that happens.
pub const MAX_LOST_RUNS: u8 = 2;

/// Where, in a head's flags, the count of processes that failed while its
/// request ran sits, and its mask.
const LOST_RUNS_SHIFT: u8 = 1;
const LOST_RUNS: u8 = 0b11 << LOST_RUNS_SHIFT;

/// Flags this module knows.
const KNOWN_FLAGS: u8 = NO_RERUN | LOST_RUNS;

/// More takes than any device makes (2^62: 146 years at 10^9 a second): a
/// record that claims more is refused, and sequence numbers never near the
/// end of their range.
const MAX_TAKEN: u64 = 1 << 62;

const TAKEN: usize = 0;
const PUBLISH: usize = 1;
const BINDING: usize = 2;
const HEADER_WORDS: usize = 6;
const SLOT_WORDS: usize = 2;

/// What the next process does with a queue after [`RingRecord::recover`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Available entries taken since the reset: the next available index
    /// is this modulo 2^16 and the next sequence number this plus 1.
    pub taken: u64,
    /// The used index, the guest's.
    pub used: u16,
    /// Completed and not published: publish `(head, used length)` as they
    /// are, without running them again; by sequence number.
    pub republish: Vec<(u16, u32)>,
    /// Taken and not completed, which may run again from the start: `(head,
    /// sequence number)`, by sequence number.
    pub rerun: Vec<(u16, u64)>,
    /// Stopped part-way, not able to run again ([`NO_RERUN`]), or running
    /// when [`MAX_LOST_RUNS`] processes failed: `(head, sequence number)`,
    /// by sequence number, answered with the status of a request lost to a
    /// back-end restart.
    pub interrupted: Vec<(u16, u64)>,
}

/// One virtqueue's record over `words`.
pub struct RingRecord<'a, W: RecordWords + ?Sized> {
    words: &'a W,
    size: u16,
}

/// A head's state word, outside a batch (place 0).
fn state_word(state: SlotState, flags: u8, len: u32) -> u64 {
    u64::from(state as u8) | (u64::from(flags) << 8) | (u64::from(len) << 32)
}

/// The state word of a head at `place` in the batch being published.
fn publishing_word(flags: u8, place: u16, len: u32) -> u64 {
    state_word(SlotState::Publishing, flags, len) | (u64::from(place) << 16)
}

/// The count of processes that failed while the request ran, in a head's
/// `flags`.
fn lost_runs(flags: u8) -> u8 {
    (flags & LOST_RUNS) >> LOST_RUNS_SHIFT
}

/// `flags` with the count of lost runs set to `lost` (at most 3: counts
/// past [`MAX_LOST_RUNS`] all mean the same).
fn with_lost_runs(flags: u8, lost: u8) -> u8 {
    (flags & !LOST_RUNS) | ((lost.min(3) << LOST_RUNS_SHIFT) & LOST_RUNS)
}

/// Word 1: where publishing stands, and the entries skipped.
#[derive(Debug, Clone, Copy)]
struct Publish {
    /// The used index the device last published.
    used: u16,
    /// The size of the batch being published; 0 when none is.
    batch: u16,
    /// Entries skipped since the reset, modulo 2^16.
    skipped: u16,
    /// A skip is counted in `skipped` and may not be committed yet.
    skipping: bool,
}

impl Publish {
    fn decode(word: u64) -> Self {
        Publish {
            used: (word & 0xffff) as u16,
            batch: ((word >> 16) & 0xffff) as u16,
            skipped: ((word >> 32) & 0xffff) as u16,
            skipping: word & (1 << 48) != 0,
        }
    }

    fn encode(self) -> u64 {
        u64::from(self.used)
            | (u64::from(self.batch) << 16)
            | (u64::from(self.skipped) << 32)
            | (u64::from(self.skipping) << 48)
    }
}

/// A head's slot, read and checked.
struct Slot {
    head: u16,
    seqno: u64,
    state: SlotState,
    flags: u8,
    /// Its place in the batch being published (Publishing only).
    place: u16,
    len: u32,
}

impl<'a, W: RecordWords + ?Sized> RingRecord<'a, W> {
    /// Words a queue of `size` descriptors needs.
    pub fn words_for(size: u16) -> usize {
        HEADER_WORDS + SLOT_WORDS * usize::from(size)
    }

    /// The record of a queue of `size` descriptors in `words`.
    pub fn new(words: &'a W, size: u16) -> Result<Self, RecordError> {
        if words.len() < Self::words_for(size) {
            return Err(RecordError::TooSmall {
                words: words.len(),
                size,
            });
        }
        Ok(RingRecord { words, size })
    }

    fn seqno_index(head: u16) -> usize {
        HEADER_WORDS + SLOT_WORDS * usize::from(head)
    }

    fn state_index(head: u16) -> usize {
        Self::seqno_index(head) + 1
    }

    /// Sets the state word of `head`; a head past the queue's size has
    /// none, and nothing is written.
    fn set_state(&self, head: u16, state: SlotState, flags: u8, len: u32) {
        if head < self.size {
            self.words
                .store(Self::state_index(head), state_word(state, flags, len));
        }
    }

    fn flags(&self, head: u16) -> u8 {
        ((self.words.load(Self::state_index(head)) >> 8) & 0xff) as u8
    }

    /// How many processes failed by themselves while the request at `head`
    /// ran, since it was taken ([`MAX_LOST_RUNS`]); after
    /// [`RingRecord::recover`], what decides how it runs again.
    pub fn failures(&self, head: u16) -> u8 {
        lost_runs(self.flags(head))
    }

    /// The device reset: nothing taken, nothing in flight.
    pub fn clear(&self) {
        // `taken` last: while it is not 0 the record still counts as in
        // use, and a record cleared in part fails recovery.
        for index in (0..Self::words_for(self.size)).rev() {
            self.words.store(index, 0);
        }
    }

    /// Available entries taken since the reset.
    pub fn taken(&self) -> u64 {
        self.words.load(TAKEN)
    }

    fn publish(&self) -> Publish {
        Publish::decode(self.words.load(PUBLISH))
    }

    fn set_publish(&self, publish: Publish) {
        self.words.store(PUBLISH, publish.encode());
    }

    /// Binds the record to the ring at `binding`, before the first take
    /// since the reset; a record in use keeps the ring it is bound to.
    pub fn bind(&self, binding: Binding) {
        if self.taken() != 0 {
            return;
        }
        let words = [
            binding.desc,
            binding.avail,
            binding.used,
            u64::from(binding.size),
        ];
        for (index, word) in (BINDING..).zip(words) {
            self.words.store(index, word);
        }
    }

    /// Checks that the ring at `ring` is the one the record is bound to.
    pub fn check_binding(&self, ring: Binding) -> Result<(), RecordError> {
        let recorded = Binding {
            desc: self.words.load(BINDING),
            avail: self.words.load(BINDING + 1),
            used: self.words.load(BINDING + 2),
            size: u16::try_from(self.words.load(BINDING + 3)).unwrap_or(0),
        };
        if recorded == ring {
            Ok(())
        } else {
            Err(RecordError::Moved { ring, recorded })
        }
    }

    /// The device took the chain at `head` as the next available entry.
    /// The take counts once `taken` moved. A head past the queue's size,
    /// or one that holds a request, holds nothing new: the entry is
    /// [`RingRecord::skip`]ped.
    pub fn take(&self, head: u16) -> Take {
        let busy = |head| self.words.load(Self::state_index(head)) & 0xff != SlotState::Free as u64;
        if head >= self.size || busy(head) {
            return Take::Skipped(self.skip());
        }
        let seqno = self.taken().saturating_add(1);
        self.words.store(Self::seqno_index(head), seqno);
        self.set_state(head, SlotState::Taken, 0, 0);
        self.words.store(TAKEN, seqno);
        Take::Held(seqno)
    }

    /// The device took an available entry it cannot answer (§6.5): it
    /// counts, and no head holds it. Returns its sequence number.
    pub fn skip(&self) -> u64 {
        let seqno = self.taken().saturating_add(1);
        let counted = Publish {
            skipped: self.publish().skipped.wrapping_add(1),
            skipping: true,
            ..self.publish()
        };
        self.set_publish(counted);
        self.words.store(TAKEN, seqno);
        self.set_publish(Publish {
            skipping: false,
            ..counted
        });
        seqno
    }

    /// The request at `head` is handed to the engine, with `flags`
    /// ([`NO_RERUN`] if it cannot run twice); the count of processes that
    /// failed while it ran before is kept.
    pub fn start(&self, head: u16, flags: u8) {
        let lost = lost_runs(self.flags(head));
        self.set_state(
            head,
            SlotState::Running,
            with_lost_runs(flags & NO_RERUN, lost),
            0,
        );
    }

    /// The request at `head` wrote its output and response; `len` is its
    /// used length.
    pub fn complete(&self, head: u16, len: u32) {
        self.set_state(head, SlotState::Done, self.flags(head), len);
    }

    /// `heads`, completed, are about to be published as the next used
    /// entries, in this order; the caller then writes them and the used
    /// index, which may move one entry at a time, and calls
    /// [`RingRecord::end_publish`] with the same heads. A batch larger than
    /// the queue or with a head past its size is refused, and nothing is
    /// written.
    pub fn begin_publish(&self, heads: &[(u16, u32)]) -> Result<(), RecordError> {
        let batch = u16::try_from(heads.len())
            .ok()
            .filter(|&batch| batch <= self.size && heads.iter().all(|&(h, _)| h < self.size))
            .ok_or(RecordError::BatchTooLarge {
                heads: heads.len(),
                size: self.size,
            })?;
        for (place, &(head, len)) in (0..batch).zip(heads) {
            self.words.store(
                Self::state_index(head),
                publishing_word(self.flags(head), place, len),
            );
        }
        self.set_publish(Publish {
            batch,
            ..self.publish()
        });
        Ok(())
    }

    /// The used entries of [`RingRecord::begin_publish`] and the used index
    /// are in the guest's ring: the heads are free.
    pub fn end_publish(&self, heads: &[(u16, u32)]) {
        let publish = self.publish();
        for &(head, _) in heads {
            self.set_state(head, SlotState::Free, 0, 0);
        }
        self.set_publish(Publish {
            used: publish.used.wrapping_add(publish.batch),
            batch: 0,
            ..publish
        });
    }

    /// Reads head `head`'s slot; `None` when it holds no committed chain.
    fn slot(&self, head: u16, taken: u64) -> Result<Option<Slot>, RecordError> {
        let word = self.words.load(Self::state_index(head));
        let seqno = self.words.load(Self::seqno_index(head));
        let bad_state = || RecordError::BadState { head, state: word };
        let state = SlotState::try_from((word & 0xff) as u8).map_err(|_| bad_state())?;
        let flags = ((word >> 8) & 0xff) as u8;
        let place = ((word >> 16) & 0xffff) as u16;
        if flags & !KNOWN_FLAGS != 0 || (place != 0 && state != SlotState::Publishing) {
            return Err(bad_state());
        }
        if state == SlotState::Free {
            return Ok(None);
        }
        // A take the process did not commit: the entry is still available.
        if state == SlotState::Taken && seqno == taken.wrapping_add(1) {
            return Ok(None);
        }
        if seqno == 0 || seqno > taken {
            return Err(RecordError::BadSeqno { head, seqno, taken });
        }
        Ok(Some(Slot {
            head,
            seqno,
            state,
            flags,
            place,
            len: (word >> 32) as u32,
        }))
    }

    /// Reads the record after the process that wrote it ended, with
    /// `guest_used`, the used index in the guest's ring; says what the next
    /// process must publish and run again, and rewrites the record to match
    /// (publishing heads published, or back to completed; uncommitted takes
    /// and skips undone; with `after_failure`, when the process failed, one
    /// more lost run for each request that was running). Refuses a record it
    /// cannot trust: then the device is reset.
    pub fn recover(&self, guest_used: u16, after_failure: bool) -> Result<Recovered, RecordError> {
        let taken = self.taken();
        if taken > MAX_TAKEN {
            return Err(RecordError::TooManyTaken(taken));
        }
        let mut slots = Vec::new();
        for head in 0..self.size {
            if let Some(slot) = self.slot(head, taken)? {
                slots.push(slot);
            }
        }
        slots.sort_by_key(|slot| slot.seqno);
        if let Some(pair) = slots.windows(2).find(|pair| pair[0].seqno == pair[1].seqno) {
            return Err(RecordError::BadSeqno {
                head: pair[1].head,
                seqno: pair[1].seqno,
                taken,
            });
        }
        let published = self.published(&slots, guest_used)?;
        let mut recovered = Recovered {
            taken,
            used: guest_used,
            ..Recovered::default()
        };
        // What each head holds from now on (the rest are free).
        let mut kept = vec![None; usize::from(self.size)];
        for slot in &slots {
            let mut flags = slot.flags;
            let state = match slot.state {
                SlotState::Publishing if slot.place < published => continue,
                SlotState::Done | SlotState::Publishing => {
                    recovered.republish.push((slot.head, slot.len));
                    SlotState::Done
                }
                SlotState::Running => {
                    let lost = lost_runs(flags) + u8::from(after_failure);
                    flags = with_lost_runs(flags, lost);
                    if flags & NO_RERUN != 0 || lost >= MAX_LOST_RUNS {
                        recovered.interrupted.push((slot.head, slot.seqno));
                        SlotState::Running
                    } else {
                        recovered.rerun.push((slot.head, slot.seqno));
                        SlotState::Taken
                    }
                }
                SlotState::Taken => {
                    recovered.rerun.push((slot.head, slot.seqno));
                    SlotState::Taken
                }
                SlotState::Free => continue,
            };
            if let Some(entry) = kept.get_mut(usize::from(slot.head)) {
                *entry = Some(state_word(state, flags, slot.len));
            }
        }
        let skipped = self.accounted_skips(taken, kept.iter().flatten().count(), guest_used)?;
        self.rewrite(&kept, recovered.used, skipped);
        Ok(recovered)
    }

    /// Every entry taken is skipped, held by a head, or published: counted
    /// modulo 2^16, `taken - skipped - held` is the guest's used index.
    /// (`held` is at most the queue's size, below 2^16.) Returns the skips
    /// that count: the record's, or, while a skip was being committed, one
    /// fewer where it was not.
    fn accounted_skips(
        &self,
        taken: u64,
        held: usize,
        guest_used: u16,
    ) -> Result<u16, RecordError> {
        let Publish {
            skipped, skipping, ..
        } = self.publish();
        let held16 = u16::try_from(held).unwrap_or(u16::MAX);
        let published = |skipped: u16| {
            ((taken & 0xffff) as u16)
                .wrapping_sub(skipped)
                .wrapping_sub(held16)
        };
        [Some(skipped), skipping.then(|| skipped.wrapping_sub(1))]
            .into_iter()
            .flatten()
            .find(|&skipped| published(skipped) == guest_used)
            .ok_or(RecordError::Unaccounted {
                taken,
                skipped,
                held,
                guest: guest_used,
            })
    }

    /// How many entries of the batch being published reached the guest's
    /// ring: the guest's used index past the record's, at most the batch.
    /// Until every entry did, every head of the batch is still publishing,
    /// each at its own place.
    fn published(&self, slots: &[Slot], guest_used: u16) -> Result<u16, RecordError> {
        let Publish { used, batch, .. } = self.publish();
        let published = guest_used.wrapping_sub(used);
        if batch > self.size {
            return Err(RecordError::BatchTooLarge {
                heads: usize::from(batch),
                size: self.size,
            });
        }
        if published > batch {
            return Err(RecordError::UsedDiverged {
                guest: guest_used,
                used,
                batch,
            });
        }
        let mut places: Vec<u16> = slots
            .iter()
            .filter(|slot| slot.state == SlotState::Publishing)
            .map(|slot| slot.place)
            .collect();
        places.sort_unstable();
        // Before the batch counts (batch 0) some of its heads may be
        // publishing already: they go back to completed. While it is written
        // all of them are there, each at its place; once it is all written
        // they are freed one by one. A recovery killed while it rewrote the
        // record leaves some of them freed (their place below `published`)
        // or completed again (at or past it). So: distinct places, within
        // the batch.
        let distinct = places.windows(2).all(|pair| pair[0] < pair[1]);
        let within = batch == 0 || places.iter().all(|&place| place < batch);
        if distinct && within {
            Ok(published)
        } else {
            Err(RecordError::BatchMismatch {
                publishing: places.len(),
                batch,
            })
        }
    }

    /// Writes the record as [`RingRecord::recover`] found it: the state
    /// word of each head (`kept`, free where `None`: heads published and
    /// uncommitted takes), the guest's used index, no batch, the skips that
    /// count.
    fn rewrite(&self, kept: &[Option<u64>], used: u16, skipped: u16) {
        for (head, word) in (0..self.size).zip(kept) {
            self.words.store(Self::state_index(head), word.unwrap_or(0));
        }
        self.set_publish(Publish {
            used,
            batch: 0,
            skipped,
            skipping: false,
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::cell::RefCell;
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    const SIZE: u16 = 8;

    /// The process that wrote the record failed (the worst case: requests
    /// that were running count a lost run).
    const FAILED: bool = true;

    /// Words that keep a copy of themselves after every store: each copy is
    /// what a process killed right after that store leaves behind. Past the
    /// record's words come the guest's used index (not wrapped) and every
    /// used entry it was given (the entry's sequence number), in order.
    struct Crashable {
        words: RefCell<Vec<u64>>,
        snapshots: RefCell<Vec<Vec<u64>>>,
    }

    const RECORD: usize = HEADER_WORDS + SLOT_WORDS * SIZE as usize;
    const GUEST_USED: usize = RECORD;
    const GUEST_LOG: usize = RECORD + 1;

    impl Crashable {
        fn new(log: usize) -> Self {
            Crashable {
                words: RefCell::new(vec![0; GUEST_LOG + log]),
                snapshots: RefCell::new(Vec::new()),
            }
        }
    }

    impl RecordWords for Crashable {
        fn load(&self, index: usize) -> u64 {
            self.words.borrow().get(index).copied().unwrap_or(0)
        }

        fn store(&self, index: usize, value: u64) {
            if let Some(word) = self.words.borrow_mut().get_mut(index) {
                *word = value;
            }
            let copy = self.words.borrow().clone();
            self.snapshots.borrow_mut().push(copy);
        }

        fn len(&self) -> usize {
            self.words.borrow().len()
        }
    }

    impl RecordWords for Vec<u64> {
        fn load(&self, index: usize) -> u64 {
            self.get(index).copied().unwrap_or(0)
        }

        // Recovery runs on a copy of a snapshot: its own stores are checked
        // by running it twice.
        fn store(&self, _index: usize, _value: u64) {}

        fn len(&self) -> usize {
            Vec::len(self)
        }
    }

    /// A small deterministic generator (xorshift64*).
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let value = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33;
            usize::try_from(value).unwrap_or(0) % n.max(1)
        }
    }

    /// What the writer did, known to the checks: per sequence number, its
    /// flags; the sequence numbers skipped.
    #[derive(Default)]
    struct Story {
        flags: BTreeMap<u64, u8>,
        skipped: BTreeSet<u64>,
    }

    /// A device's life on one queue, `steps` random steps of taking,
    /// skipping, starting, completing and publishing (what the guest is
    /// given goes to its words in `words`).
    fn live(words: &Crashable, seed: u64, steps: usize) -> Story {
        let record = RingRecord::new(words, SIZE).unwrap();
        let mut rng = Rng(seed | 1);
        let mut story = Story::default();
        // Per head: (sequence number, state) of the chain it holds.
        let mut heads: Vec<Option<(u64, SlotState)>> = vec![None; usize::from(SIZE)];
        let mut guest_used = 0u64;
        for _ in 0..steps {
            let with = |heads: &[Option<(u64, SlotState)>], wanted: &[SlotState]| {
                (0..SIZE)
                    .filter(|&h| {
                        heads[usize::from(h)].is_some_and(|(_, state)| wanted.contains(&state))
                    })
                    .collect::<Vec<u16>>()
            };
            match rng.below(5) {
                0 => {
                    let free: Vec<u16> = (0..SIZE)
                        .filter(|&h| heads[usize::from(h)].is_none())
                        .collect();
                    if let Some(&head) = free.get(rng.below(free.len())) {
                        let Take::Held(seqno) = record.take(head) else {
                            panic!("a free head was not taken");
                        };
                        heads[usize::from(head)] = Some((seqno, SlotState::Taken));
                    }
                }
                1 => {
                    story.skipped.insert(record.skip());
                }
                2 => {
                    let taken = with(&heads, &[SlotState::Taken]);
                    if let Some(&head) = taken.get(rng.below(taken.len())) {
                        let flags = if rng.below(3) == 0 { NO_RERUN } else { 0 };
                        record.start(head, flags);
                        story
                            .flags
                            .insert(heads[usize::from(head)].unwrap().0, flags);
                        heads[usize::from(head)].as_mut().unwrap().1 = SlotState::Running;
                    }
                }
                3 => {
                    let running = with(&heads, &[SlotState::Taken, SlotState::Running]);
                    if let Some(&head) = running.get(rng.below(running.len())) {
                        let seqno = heads[usize::from(head)].unwrap().0;
                        record.complete(head, len_of(seqno));
                        heads[usize::from(head)].as_mut().unwrap().1 = SlotState::Done;
                    }
                }
                _ => {
                    let done = with(&heads, &[SlotState::Done]);
                    let count = 1 + rng.below(done.len());
                    let batch: Vec<(u16, u32)> = done
                        .iter()
                        .take(count)
                        .map(|&h| (h, len_of(heads[usize::from(h)].unwrap().0)))
                        .collect();
                    if batch.is_empty() {
                        continue;
                    }
                    record.begin_publish(&batch).unwrap();
                    // As virtio-queue's add_used: each entry, then the used
                    // index, one entry at a time.
                    for &(head, _) in &batch {
                        let seqno = heads[usize::from(head)].unwrap().0;
                        words.store(GUEST_LOG + usize::try_from(guest_used).unwrap(), seqno);
                        guest_used += 1;
                        words.store(GUEST_USED, guest_used);
                    }
                    record.end_publish(&batch);
                    for (head, _) in batch {
                        heads[usize::from(head)] = None;
                    }
                }
            }
        }
        story
    }

    fn len_of(seqno: u64) -> u32 {
        u32::try_from(seqno % 1000).unwrap() + 16
    }

    /// The sequence number at `head` in the record of `words`.
    fn seqno_at(words: &[u64], head: u16) -> u64 {
        words[HEADER_WORDS + SLOT_WORDS * usize::from(head)]
    }

    /// The state and flags at `head` in the record of `words`.
    fn state_at(words: &[u64], head: u16) -> (SlotState, u8) {
        let word = words[HEADER_WORDS + SLOT_WORDS * usize::from(head) + 1];
        let state = SlotState::try_from((word & 0xff) as u8).unwrap();
        (state, ((word >> 8) & 0xff) as u8)
    }

    /// After a crash at `words`: every take the record counts is published
    /// to the guest, or to publish again, or to run again, or interrupted,
    /// or skipped — exactly one of them; what is published again keeps its
    /// length; only requests flagged [`NO_RERUN`] are interrupted.
    fn check_crash(words: &[u64], story: &Story) {
        let record_words = words[..RECORD].to_vec();
        let record = RingRecord::new(&record_words, SIZE).unwrap();
        let guest_used = words[GUEST_USED];
        let recovered = record
            .recover((guest_used & 0xffff) as u16, FAILED)
            .unwrap_or_else(|e| panic!("a crash left a record that is refused: {e}"));
        let published = &words[GUEST_LOG..GUEST_LOG + usize::try_from(guest_used).unwrap()];
        let mut seen = BTreeMap::new();
        let mut see = |seqno: u64, how: &'static str| {
            if let Some(first) = seen.insert(seqno, how) {
                panic!("request {seqno} is both {first} and {how}");
            }
        };
        for &seqno in published {
            see(seqno, "published");
        }
        for &(head, len) in &recovered.republish {
            let seqno = seqno_at(words, head);
            assert_eq!(len, len_of(seqno), "length of request {seqno}");
            let (state, _) = state_at(words, head);
            assert!(
                matches!(state, SlotState::Done | SlotState::Publishing),
                "request {seqno} published again from {state:?}"
            );
            see(seqno, "to publish again");
        }
        for &(head, seqno) in &recovered.rerun {
            let (state, flags) = state_at(words, head);
            assert!(
                state == SlotState::Taken || (state == SlotState::Running && flags == 0),
                "request {seqno} runs again from {state:?}, flags {flags}"
            );
            see(seqno, "to run again");
        }
        for &(head, seqno) in &recovered.interrupted {
            assert_eq!(story.flags[&seqno], NO_RERUN, "request {seqno} interrupted");
            assert_eq!(state_at(words, head).0, SlotState::Running);
            see(seqno, "interrupted");
        }
        for &seqno in story.skipped.range(..=recovered.taken) {
            see(seqno, "skipped");
        }
        let all: Vec<u64> = seen.keys().copied().collect();
        let expected: Vec<u64> = (1..=recovered.taken).collect();
        assert_eq!(all, expected, "requests accounted for after the crash");
    }

    /// A process killed after any store of any of many lives leaves a
    /// record that accounts for every request exactly once.
    #[test]
    fn every_crash_point_accounts_for_every_request_once() {
        for seed in 1..=40 {
            let words = Crashable::new(2000);
            let story = live(&words, seed, 300);
            let snapshots = words.snapshots.borrow();
            assert!(snapshots.len() > 300, "the life made stores");
            for snapshot in snapshots.iter() {
                check_crash(snapshot, &story);
            }
        }
    }

    /// A recovery killed after any store of its own rewrite leaves a record
    /// that the next recovery accounts for just as well.
    #[test]
    fn a_crash_during_recovery_loses_nothing() {
        for seed in 1..=10 {
            let words = Crashable::new(2000);
            let story = live(&words, seed, 200);
            for snapshot in words.snapshots.borrow().iter().step_by(3) {
                let again = Crashable::new(0);
                *again.words.borrow_mut() = snapshot.clone();
                let record = RingRecord::new(&again, SIZE).unwrap();
                record
                    .recover((snapshot[GUEST_USED] & 0xffff) as u16, FAILED)
                    .unwrap();
                for rewritten in again.snapshots.borrow().iter() {
                    check_crash(rewritten, &story);
                }
            }
        }
    }

    /// An available entry whose head holds a request is consumed without
    /// touching that request (§6.5).
    #[test]
    fn a_head_in_flight_is_not_taken_twice() {
        let atomics = fresh();
        let record = RingRecord::new(&atomics[..], SIZE).unwrap();
        assert_eq!(record.take(2), Take::Held(1));
        record.complete(2, 20);
        assert_eq!(record.take(2), Take::Skipped(2));
        assert_eq!(record.take(SIZE), Take::Skipped(3));
        let recovered = record.recover(0, FAILED).unwrap();
        assert_eq!(recovered.republish, vec![(2, 20)]);
        assert!(recovered.rerun.is_empty());
        assert_eq!(recovered.taken, 3);
    }

    fn fresh() -> Vec<AtomicU64> {
        (0..RECORD).map(|_| AtomicU64::new(0)).collect()
    }

    /// A request running when two processes fail by themselves is interrupted,
    /// not run a third time; its neighbour that completed in between, and a
    /// later request at that neighbour's head, run again as usual.
    #[test]
    fn a_request_running_at_two_ends_in_a_row_is_interrupted() {
        let atomics = fresh();
        let record = RingRecord::new(&atomics[..], SIZE).unwrap();
        assert_eq!(record.take(5), Take::Held(1));
        assert_eq!(record.take(6), Take::Held(2));
        record.start(5, 0);
        record.start(6, 0);
        assert_eq!(record.failures(5), 0);
        assert_eq!(
            record.recover(0, FAILED).unwrap().rerun,
            vec![(5, 1), (6, 2)]
        );
        // Both run alone next time (the device reads this).
        assert_eq!((record.failures(5), record.failures(6)), (1, 1));
        // The next process runs both again; 6 completes, 5 is still running
        // when that process ends too.
        record.start(5, 0);
        record.start(6, 0);
        record.complete(6, 30);
        record.begin_publish(&[(6, 30)]).unwrap();
        record.end_publish(&[(6, 30)]);
        let recovered = record.recover(1, FAILED).unwrap();
        assert_eq!(recovered.interrupted, vec![(5, 1)]);
        assert!(recovered.rerun.is_empty());
        assert_eq!(record.take(6), Take::Held(3));
        record.start(6, 0);
        let recovered = record.recover(1, FAILED).unwrap();
        assert_eq!(recovered.rerun, vec![(6, 3)]);
        assert_eq!(recovered.interrupted, vec![(5, 1)]);
    }

    /// Only a process that failed while the request ran counts: not one
    /// that failed before it started the request again, nor one killed from
    /// outside while it ran.
    #[test]
    fn a_lost_run_counts_only_a_failure_while_the_request_ran() {
        let atomics = fresh();
        let record = RingRecord::new(&atomics[..], SIZE).unwrap();
        assert_eq!(record.take(2), Take::Held(1));
        record.start(2, 0);
        for _ in 0..3 {
            assert_eq!(record.recover(0, FAILED).unwrap().rerun, vec![(2, 1)]);
            assert_eq!(record.failures(2), 1);
        }
        for _ in 0..3 {
            record.start(2, 0);
            assert_eq!(record.recover(0, false).unwrap().rerun, vec![(2, 1)]);
        }
        record.start(2, 0);
        assert_eq!(record.recover(0, FAILED).unwrap().interrupted, vec![(2, 1)]);
    }

    /// The record is bound to where the ring was at the first take since
    /// the reset, and refuses a ring anywhere else.
    #[test]
    fn a_record_is_bound_to_its_ring_from_the_first_take() {
        let atomics = fresh();
        let record = RingRecord::new(&atomics[..], SIZE).unwrap();
        let here = Binding {
            desc: 0x1000,
            avail: 0x2000,
            used: 0x3000,
            size: SIZE,
        };
        let elsewhere = Binding {
            used: 0x7000,
            ..here
        };
        record.bind(elsewhere);
        record.bind(here);
        assert_eq!(record.take(0), Take::Held(1));
        record.bind(elsewhere);
        assert_eq!(record.check_binding(here), Ok(()));
        assert_eq!(
            record.check_binding(elsewhere),
            Err(RecordError::Moved {
                ring: elsewhere,
                recorded: here
            })
        );
        assert!(record.check_binding(Binding { size: 4, ..here }).is_err());
        record.clear();
        record.bind(elsewhere);
        assert_eq!(record.check_binding(elsewhere), Ok(()));
    }

    /// Sequence numbers go on past 2^48 (and past 2^16 skips), with the
    /// next available index where it should be; a count past any device's
    /// is refused.
    #[test]
    fn takes_count_on_past_two_to_the_48() {
        let atomics = fresh();
        let record = RingRecord::new(&atomics[..], SIZE).unwrap();
        atomics[TAKEN].store((1 << 48) - 1, Ordering::Relaxed);
        let publish = Publish {
            used: 0,
            batch: 0,
            skipped: 0xffff,
            skipping: false,
        };
        atomics[PUBLISH].store(publish.encode(), Ordering::Relaxed);
        assert_eq!(record.take(1), Take::Held(1 << 48));
        assert_eq!(record.skip(), (1 << 48) + 1);
        record.complete(1, 8);
        record.begin_publish(&[(1, 8)]).unwrap();
        record.end_publish(&[(1, 8)]);
        let recovered = record.recover(1, FAILED).unwrap();
        assert_eq!(recovered.taken, (1 << 48) + 1);
        assert_eq!((recovered.taken % (1 << 16), recovered.used), (1, 1));
        atomics[TAKEN].store(MAX_TAKEN + 1, Ordering::Relaxed);
        assert_eq!(
            record.recover(1, FAILED),
            Err(RecordError::TooManyTaken(MAX_TAKEN + 1))
        );
    }

    /// A skip the process counted and did not commit (it ended between the
    /// first two stores) is undone: its entry is still available. Outside a
    /// skip, a count one ahead is refused.
    #[test]
    fn an_uncommitted_skip_is_undone() {
        let atomics = fresh();
        let record = RingRecord::new(&atomics[..], SIZE).unwrap();
        assert_eq!(record.take(1), Take::Held(1));
        assert_eq!(record.skip(), 2);
        let committed = atomics[PUBLISH].load(Ordering::Relaxed);
        let ahead = Publish {
            skipped: 2,
            ..Publish::decode(committed)
        };
        atomics[PUBLISH].store(ahead.encode(), Ordering::Relaxed);
        assert!(record.recover(0, FAILED).is_err());
        let counted = Publish {
            skipping: true,
            ..ahead
        };
        atomics[PUBLISH].store(counted.encode(), Ordering::Relaxed);
        let recovered = record.recover(0, FAILED).unwrap();
        assert_eq!((recovered.taken, recovered.rerun), (2, vec![(1, 1)]));
        assert_eq!(atomics[PUBLISH].load(Ordering::Relaxed), committed);
    }

    /// Recovery rewrites the record to what it found: recovering the
    /// rewritten record again finds the same.
    #[test]
    fn recovery_is_idempotent() {
        let words = Crashable::new(2000);
        live(&words, 7, 200);
        for snapshot in words.snapshots.borrow().iter().step_by(7) {
            let guest_used = (snapshot[GUEST_USED] & 0xffff) as u16;
            let atomics: Vec<AtomicU64> = snapshot[..RECORD]
                .iter()
                .map(|&w| AtomicU64::new(w))
                .collect();
            let record = RingRecord::new(&atomics[..], SIZE).unwrap();
            let first = record.recover(guest_used, FAILED).unwrap();
            let second = record.recover(guest_used, FAILED).unwrap();
            assert_eq!(first, second);
        }
    }

    /// A guest used index that is neither where the record left it nor
    /// where the batch would take it is refused.
    #[test]
    fn a_used_index_the_record_does_not_explain_is_refused() {
        let atomics = fresh();
        let record = RingRecord::new(&atomics[..], SIZE).unwrap();
        assert_eq!(record.take(3), Take::Held(1));
        record.complete(3, 40);
        record.begin_publish(&[(3, 40)]).unwrap();
        assert_eq!(
            record.recover(5, FAILED),
            Err(RecordError::UsedDiverged {
                guest: 5,
                used: 0,
                batch: 1
            })
        );
        // Where the batch takes it: published.
        let recovered = record.recover(1, FAILED).unwrap();
        assert!(recovered.republish.is_empty() && recovered.rerun.is_empty());
        assert_eq!((recovered.taken, recovered.used), (1, 1));
    }

    /// A head's slot wiped (its request would never complete) is caught by
    /// the counts, as is a skip that went missing.
    #[test]
    fn a_missing_slot_is_refused() {
        let atomics = fresh();
        let record = RingRecord::new(&atomics[..], SIZE).unwrap();
        assert_eq!(record.take(1), Take::Held(1));
        assert_eq!(record.skip(), 2);
        assert_eq!(record.take(4), Take::Held(3));
        record.start(4, 0);
        let kept = atomics[RingRecord::<[AtomicU64]>::state_index(4)].load(Ordering::Relaxed);
        atomics[RingRecord::<[AtomicU64]>::state_index(4)].store(0, Ordering::Relaxed);
        assert_eq!(
            record.recover(0, FAILED),
            Err(RecordError::Unaccounted {
                taken: 3,
                skipped: 1,
                held: 1,
                guest: 0
            })
        );
        atomics[RingRecord::<[AtomicU64]>::state_index(4)].store(kept, Ordering::Relaxed);
        assert_eq!(
            record.recover(0, FAILED).unwrap().rerun,
            vec![(1, 1), (4, 3)]
        );
        atomics[PUBLISH].store(0, Ordering::Relaxed);
        assert!(record.recover(0, FAILED).is_err(), "the skip is gone");
    }

    /// Arbitrary words never panic recovery: it accounts or refuses.
    #[test]
    fn arbitrary_records_are_accounted_or_refused() {
        let mut rng = Rng(99);
        for _ in 0..20_000 {
            let words: Vec<u64> = (0..RECORD)
                .map(|_| match rng.below(4) {
                    0 => 0,
                    1 => rng.below(12) as u64,
                    2 => (rng.below(5) as u64) | ((rng.below(2) as u64) << 8),
                    _ => (rng.below(usize::MAX) as u64) << 16 | rng.below(70_000) as u64,
                })
                .collect();
            let record = RingRecord::new(&words, SIZE).unwrap();
            if let Ok(recovered) = record.recover(u16::try_from(rng.below(4)).unwrap(), FAILED) {
                let count =
                    recovered.republish.len() + recovered.rerun.len() + recovered.interrupted.len();
                assert!(count <= usize::from(SIZE));
                assert!(recovered
                    .rerun
                    .iter()
                    .chain(&recovered.interrupted)
                    .all(|&(_, seqno)| seqno >= 1 && seqno <= recovered.taken));
            }
        }
    }

    #[test]
    fn a_short_record_is_refused() {
        let words = vec![0u64; 3];
        assert!(matches!(
            RingRecord::new(&words, SIZE),
            Err(RecordError::TooSmall {
                words: 3,
                size: SIZE
            })
        ));
    }
}
