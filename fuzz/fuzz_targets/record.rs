// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The recovery of a virtqueue's crash record
//! (`vhost_user_accel::ring_record::RingRecord::recover`), on words a hostile
//! VMM may have written (the inflight region): the record after an honest
//! life of the device, then words overwritten by the input. Checks: no
//! panic; an honest life is always accepted, with every take published,
//! skipped, to publish again, to run again or interrupted exactly once; and
//! whatever recovery accepts is self-consistent: the guest's used index
//! kept, every head and sequence number at most once, sequence numbers in
//! 1..=taken, at most a queue's worth, the rewritten record saying the same
//! and accounting for every take, and a second recovery (with or without a
//! failure) giving the same answer.
//!
//! Input, read with `Reader` (zeros once it ends):
//! - a byte: the queue size, 1 + n % 64;
//! - a byte: bit 0, the process failed (`after_failure`); bit 1, every word
//!   of the record is overwritten after the life;
//! - a byte: the life's steps, then per step an operation byte and an
//!   argument byte (`live`);
//! - if bit 1: every word, in order (`word`);
//! - a byte: n % 33 words overwritten, each an index byte and a word;
//! - a byte: the guest's used index, as a signed offset from the life's.
//!
//! At most 2 + 1 + 510 + 134 × 9 + 1 + 32 × 10 + 1 = 2041 bytes are read.

#![no_main]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};

use libfuzzer_sys::fuzz_target;
use vhost_user_accel::ring_record::{Recovered, RingRecord, SlotState, Take, NO_RERUN};
use vhost_user_accel_fuzz::input::Reader;

type Record<'a> = RingRecord<'a, [AtomicU64]>;

/// The record's layout (module doc of `ring_record`): `taken`, the publish
/// word, the binding, then a sequence number and a state word per head.
const TAKEN: usize = 0;
const PUBLISH: usize = 1;

fn header() -> usize {
    Record::words_for(0)
}

fn seqno_index(head: u16) -> usize {
    header() + 2 * usize::from(head)
}

fn load(words: &[AtomicU64], index: usize) -> u64 {
    words[index].load(Ordering::Relaxed)
}

fn state_of(words: &[AtomicU64], head: u16) -> u64 {
    load(words, seqno_index(head) + 1) & 0xff
}

/// The heads whose state is one of `states`.
fn heads_in(words: &[AtomicU64], size: u16, states: &[SlotState]) -> Vec<u16> {
    (0..size)
        .filter(|&head| states.iter().any(|&s| state_of(words, head) == s as u64))
        .collect()
}

/// What the guest and the device saw of an honest life.
#[derive(Default)]
struct Life {
    /// The guest's used index.
    used: u16,
    /// Sequence numbers whose used entries reached the guest.
    published: BTreeSet<u64>,
    /// Sequence numbers skipped.
    skipped: BTreeSet<u64>,
}

/// The device's life on the queue, as the device drives the record: take
/// (a head, or one past the queue: skipped), skip, start a taken request
/// (NO_RERUN or not), complete a taken or running one, publish some
/// completed heads, publish some and end there with part of the batch in
/// the guest's ring, recover (the record must be accepted and account for
/// every take), reset. Which heads hold what is read off the record.
fn live(r: &mut Reader<'_>, words: &[AtomicU64], size: u16) -> Life {
    let record = Record::new(words, size).unwrap();
    let mut life = Life::default();
    for _ in 0..r.u8() {
        let (op, arg) = (r.u8(), r.u8());
        let pick = |states: &[SlotState]| {
            let heads = heads_in(words, size, states);
            (!heads.is_empty()).then(|| heads[usize::from(arg >> 1) % heads.len()])
        };
        match op % 9 {
            0 | 1 => {
                if let Take::Skipped(seqno) = record.take(u16::from(arg) % (size + 1)) {
                    life.skipped.insert(seqno);
                }
            }
            2 => {
                life.skipped.insert(record.skip());
            }
            3 => {
                if let Some(head) = pick(&[SlotState::Taken]) {
                    record.start(head, arg & NO_RERUN);
                }
            }
            4 => {
                if let Some(head) = pick(&[SlotState::Taken, SlotState::Running]) {
                    record.complete(head, u32::from(arg) * 7);
                }
            }
            5 | 6 => {
                let done = heads_in(words, size, &[SlotState::Done]);
                if done.is_empty() {
                    continue;
                }
                let batch: Vec<(u16, u32)> = done
                    .iter()
                    .take(1 + usize::from(arg) % done.len())
                    .map(|&head| (head, (load(words, seqno_index(head) + 1) >> 32) as u32))
                    .collect();
                record.begin_publish(&batch).unwrap();
                // The guest's ring gets the entries one by one, then the
                // used index; a process that ends part-way has written some.
                let written = if op % 9 == 6 {
                    usize::from(op / 9) % (batch.len() + 1)
                } else {
                    batch.len()
                };
                for &(head, _) in &batch[..written] {
                    life.published.insert(load(words, seqno_index(head)));
                    life.used = life.used.wrapping_add(1);
                }
                if op % 9 == 6 {
                    return life;
                }
                record.end_publish(&batch);
            }
            7 => {
                let recovered = record
                    .recover(life.used, arg & 1 != 0)
                    .unwrap_or_else(|e| panic!("an honest record is refused: {e}"));
                check_life(words, &recovered, &life);
            }
            _ => {
                record.clear();
                life = Life::default();
            }
        }
    }
    life
}

/// Every take of an honest life is exactly one of: published, skipped, to
/// publish again, to run again, interrupted.
fn check_life(words: &[AtomicU64], recovered: &Recovered, life: &Life) {
    let mut seen: Vec<u64> = life
        .published
        .iter()
        .chain(&life.skipped)
        .copied()
        .collect();
    seen.extend(
        recovered
            .republish
            .iter()
            .map(|&(h, _)| load(words, seqno_index(h))),
    );
    seen.extend(recovered.rerun.iter().map(|&(_, seqno)| seqno));
    seen.extend(recovered.interrupted.iter().map(|&(_, seqno)| seqno));
    seen.sort_unstable();
    let all: Vec<u64> = (1..=recovered.taken).collect();
    assert_eq!(seen, all, "takes accounted for after an honest life");
}

/// A word for `index` of the record of `words`: 0 (selector 0), anything
/// (selector 0xff), or one the module could have written there.
fn word(r: &mut Reader<'_>, words: &[AtomicU64], index: usize) -> u64 {
    let selector = r.u8();
    match (selector, index) {
        (0, _) => 0,
        (0xff, _) => r.u64(),
        (_, TAKEN) => u64::from(r.u16()),
        // The used index, the batch, the skips, whether a skip is being
        // committed.
        (_, PUBLISH) => {
            u64::from(r.u16())
                | u64::from(r.u8()) << 16
                | u64::from(r.u16()) << 32
                | u64::from(r.u8() & 1) << 48
        }
        (_, index) if index < header() => u64::from(selector),
        // A sequence number at or before the next take.
        (_, index) if (index - header()) % 2 == 0 => {
            (load(words, TAKEN).saturating_add(1)).saturating_sub(u64::from(r.u8()))
        }
        // A state (5 to 7 are none), flags, a place in the batch, a length.
        (_, _) => {
            u64::from(selector % 8)
                | u64::from(r.u8() & 0x7) << 8
                | u64::from(r.u8()) << 16
                | u64::from(r.u16()) << 32
        }
    }
}

fn snapshot(words: &[AtomicU64]) -> Vec<u64> {
    words.iter().map(|w| w.load(Ordering::Relaxed)).collect()
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let size = 1 + u16::from(r.u8() % 64);
    let mode = r.u8();
    let after_failure = mode & 1 != 0;
    let words: Vec<AtomicU64> = (0..Record::words_for(size))
        .map(|_| AtomicU64::new(0))
        .collect();
    let words = &words[..];
    let life = live(&mut r, words, size);

    // The honest record, recovered on a copy.
    let copy: Vec<AtomicU64> = snapshot(words).into_iter().map(AtomicU64::new).collect();
    let recovered = Record::new(&copy[..], size)
        .unwrap()
        .recover(life.used, after_failure)
        .unwrap_or_else(|e| panic!("an honest record is refused: {e}"));
    check_life(&copy, &recovered, &life);

    // The VMM's writes.
    if mode & 2 != 0 {
        for index in 0..words.len() {
            let value = word(&mut r, words, index);
            words[index].store(value, Ordering::Relaxed);
        }
    }
    for _ in 0..r.u8() % 33 {
        let index = usize::from(r.u8()) % words.len();
        let value = word(&mut r, words, index);
        words[index].store(value, Ordering::Relaxed);
    }
    let used = life.used.wrapping_add_signed(i16::from(r.u8() as i8));

    let record = Record::new(words, size).unwrap();
    let Ok(first) = record.recover(used, after_failure) else {
        return;
    };
    assert_eq!(first.used, used, "the guest's used index");
    let taken = first.taken;
    assert_eq!(load(words, TAKEN), taken, "taken");
    let republish: Vec<(u16, u64)> = first
        .republish
        .iter()
        .map(|&(head, _)| (head, load(words, seqno_index(head))))
        .collect();
    let all: Vec<(u16, u64)> = republish
        .iter()
        .chain(&first.rerun)
        .chain(&first.interrupted)
        .copied()
        .collect();
    assert!(
        all.len() <= usize::from(size),
        "more than a queue: {first:?}"
    );
    let heads: BTreeSet<u16> = all.iter().map(|&(head, _)| head).collect();
    let seqnos: BTreeSet<u64> = all.iter().map(|&(_, seqno)| seqno).collect();
    assert_eq!(heads.len(), all.len(), "a head twice: {first:?}");
    assert_eq!(
        seqnos.len(),
        all.len(),
        "a sequence number twice: {first:?}"
    );
    for &(head, seqno) in &all {
        assert!(head < size, "head {head} past the queue: {first:?}");
        assert!(
            (1..=taken).contains(&seqno),
            "sequence number {seqno}: {first:?}"
        );
    }
    for list in [&republish, &first.rerun] {
        assert!(list.windows(2).all(|p| p[0].1 < p[1].1), "order: {first:?}");
    }

    // The rewritten record says what recovery answered: each head's state,
    // the guest's used index, no batch, and takes = skips + held + used
    // (modulo 2^16).
    for head in 0..size {
        let state = if first.republish.iter().any(|&(h, _)| h == head) {
            SlotState::Done
        } else if first.rerun.iter().any(|&(h, _)| h == head) {
            SlotState::Taken
        } else if first.interrupted.iter().any(|&(h, _)| h == head) {
            SlotState::Running
        } else {
            SlotState::Free
        };
        assert_eq!(
            state_of(words, head),
            state as u64,
            "head {head}: {first:?}"
        );
    }
    for &(head, len) in &first.republish {
        assert_eq!(load(words, seqno_index(head) + 1) >> 32, u64::from(len));
    }
    let publish = load(words, PUBLISH);
    assert_eq!(publish & 0xffff_ffff, u64::from(used), "used and batch");
    let skipped = (publish >> 32) & 0xffff;
    let held = u64::try_from(all.len()).unwrap();
    assert_eq!(
        taken.wrapping_sub(skipped).wrapping_sub(held) & 0xffff,
        u64::from(used),
        "takes unaccounted for: {first:?}"
    );

    // Recovering again finds the same; without a failure it rewrites
    // nothing (a failure counts one more lost run for what was running).
    let rewritten = snapshot(words);
    let again = record.recover(used, after_failure);
    assert_eq!(again.as_ref(), Ok(&first), "recovered again");
    if !after_failure {
        assert_eq!(snapshot(words), rewritten, "recovering again rewrote");
    }
    let other = record.recover(used, !after_failure);
    assert_eq!(
        other.as_ref(),
        Ok(&first),
        "recovered again, failure {}",
        !after_failure
    );
});
