// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Seeded input data: random bytes, and text-like bytes that compress the way
//! logs do. The seed is printed so that a failing self-test can be replayed.

use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};

/// Words of the text-like data.
const WORDS: &[&str] = &[
    "the",
    "device",
    "queue",
    "fence",
    "object",
    "request",
    "guest",
    "memory",
    "virtio",
    "accelerator",
    "completion",
    "descriptor",
    "host",
    "tenant",
    "status",
    "ok",
    "error",
    "0x1f",
    "2026-11-25",
    "INFO",
    "WARN",
    "vhost-user",
    "ring",
    "used",
    "avail",
    "index",
    "=",
    ":",
];

/// A seeded source of test data.
#[derive(Debug)]
pub struct DataSource {
    rng: SmallRng,
    seed: u64,
}

impl DataSource {
    /// A source replaying `seed`.
    pub fn new(seed: u64) -> Self {
        DataSource {
            rng: SmallRng::seed_from_u64(seed),
            seed,
        }
    }

    /// A source with a seed taken from the clock.
    pub fn from_clock() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        // The low 64 bits of the nanosecond count are the ones that change.
        Self::new(u64::try_from(nanos & u128::from(u64::MAX)).unwrap_or_default())
    }

    /// The seed this source replays.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// `len` uniformly random bytes.
    pub fn random(&mut self, len: usize) -> Vec<u8> {
        let mut bytes = vec![0; len];
        self.rng.fill_bytes(&mut bytes);
        bytes
    }

    /// `len` bytes of space-separated words and line breaks.
    pub fn text(&mut self, len: usize) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(len + 16);
        while bytes.len() < len {
            let word = WORDS[self.rng.random_range(0..WORDS.len())];
            bytes.extend_from_slice(word.as_bytes());
            bytes.push(if self.rng.random_ratio(1, 12) {
                b'\n'
            } else {
                b' '
            });
        }
        bytes.truncate(len);
        bytes
    }

    /// A number below `bound` (0 if `bound` is 0).
    pub fn below(&mut self, bound: usize) -> usize {
        if bound == 0 {
            0
        } else {
            self.rng.random_range(0..bound)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::DataSource;

    #[test]
    fn same_seed_same_data() {
        let (mut a, mut b) = (DataSource::new(7), DataSource::new(7));
        assert_eq!(a.random(100), b.random(100));
        assert_eq!(a.text(1000), b.text(1000));
        assert_ne!(
            DataSource::new(8).random(100),
            DataSource::new(7).random(100)
        );
    }

    #[test]
    fn text_has_the_length_asked_and_compresses() {
        let text = DataSource::new(1).text(10_000);
        assert_eq!(text.len(), 10_000);
        let packed = miniz_oxide::deflate::compress_to_vec(&text, 6);
        assert!(packed.len() < text.len() / 3, "{} bytes", packed.len());
    }
}
