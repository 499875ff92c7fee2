// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The slab of the requests a device has in flight: constant-time insert,
//! look-up and removal under generational keys (a request's cookie on the
//! engine), so that a stale completion finds nothing. It sits on the
//! request path of every chain, so it neither hashes nor allocates once
//! warmed up.

/// A table of values under keys that are never reused: a key names a slot
/// and the generation of that slot, so a stale key (a completion for a request
/// that a reset already dropped) finds nothing instead of a newer request.
#[derive(Debug)]
pub struct Slab<T> {
    slots: Vec<Slot<T>>,
    /// Indices of empty slots.
    free: Vec<u32>,
    len: usize,
}

#[derive(Debug)]
struct Slot<T> {
    generation: u32,
    value: Option<T>,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slab<T> {
    fn key(index: u32, generation: u32) -> u64 {
        u64::from(generation) << 32 | u64::from(index)
    }

    /// Stores `value` and returns its key.
    pub fn insert(&mut self, value: T) -> u64 {
        self.len += 1;
        if let Some(index) = self.free.pop() {
            if let Some(slot) = self.slots.get_mut(index as usize) {
                slot.generation = slot.generation.wrapping_add(1);
                slot.value = Some(value);
                return Self::key(index, slot.generation);
            }
        }
        // More than 2^32 values at once cannot be in flight (each holds a
        // ring head); saturate rather than wrap if it ever were so.
        let index = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
        self.slots.push(Slot {
            generation: 0,
            value: Some(value),
        });
        Self::key(index, 0)
    }

    /// The value under `key`, if it is still there.
    pub fn get(&self, key: u64) -> Option<&T> {
        let index = u32::try_from(key & u64::from(u32::MAX)).ok()?;
        let generation = u32::try_from(key >> 32).ok()?;
        let slot = self.slots.get(index as usize)?;
        (slot.generation == generation)
            .then_some(slot.value.as_ref())
            .flatten()
    }

    /// Takes the value under `key` out, if it is still there.
    pub fn remove(&mut self, key: u64) -> Option<T> {
        let index = u32::try_from(key & u64::from(u32::MAX)).ok()?;
        let generation = u32::try_from(key >> 32).ok()?;
        let slot = self.slots.get_mut(index as usize)?;
        if slot.generation != generation {
            return None;
        }
        let value = slot.value.take()?;
        self.free.push(index);
        self.len -= 1;
        Some(value)
    }

    /// How many values are stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Drops every value; keys issued before stay invalid.
    pub fn clear(&mut self) {
        for (index, slot) in (0u32..).zip(&mut self.slots) {
            if slot.value.take().is_some() {
                self.free.push(index);
            }
        }
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn stale_keys_find_nothing() {
        let mut slab = Slab::default();
        let a = slab.insert("a");
        let b = slab.insert("b");
        assert_eq!(slab.remove(a), Some("a"));
        let c = slab.insert("c");
        assert_ne!(a, c, "a reused slot gets a new key");
        assert_eq!(slab.remove(a), None);
        assert_eq!(slab.len(), 2);
        slab.clear();
        assert!(slab.is_empty());
        assert_eq!(slab.remove(b), None);
        assert_eq!(slab.remove(c), None);
        let d = slab.insert("d");
        assert_eq!(slab.get(d), Some(&"d"));
        assert_eq!(slab.get(a), None);
        assert_eq!(slab.remove(d), Some("d"));
        assert_eq!(slab.get(d), None);
        assert_eq!(slab.remove(u64::MAX), None);
    }
}
