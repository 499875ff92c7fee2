// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Seeded random test inputs.
//!
//! Every test makes its own [`TestRng`]. The seed comes from the environment
//! variable [`SEED_ENV`] if set (to replay a failure), else from the clock;
//! it is printed when the rng is made (the test harness shows it only for a
//! failing test) and again if the test panics while the rng is alive.

use std::time::{SystemTime, UNIX_EPOCH};

use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};

/// Environment variable that fixes the seed of every [`TestRng`].
pub const SEED_ENV: &str = "ACCEL_TEST_SEED";

/// Buffer sizes every operation is tried with: empty, tiny, around 64 B and
/// 4 KiB boundaries, past the engine's 64 KiB streaming chunk, and 1 MiB.
pub const FIXED_SIZES: &[usize] = &[0, 1, 3, 63, 64, 65, 4095, 4096, 4097, 65536 + 7, 1 << 20];

/// A seeded random generator that reports its seed when a test fails.
#[derive(Debug)]
pub struct TestRng {
    name: String,
    seed: u64,
    rng: SmallRng,
}

impl TestRng {
    /// A generator for the test `name`, seeded from [`SEED_ENV`] or the clock.
    pub fn new(name: &str) -> Self {
        let seed = match std::env::var(SEED_ENV) {
            Ok(value) => parse_seed(&value)
                .unwrap_or_else(|| panic!("{SEED_ENV}={value:?} is not a decimal or 0x-hex u64")),
            Err(_) => clock_seed(name),
        };
        Self::with_seed(name, seed)
    }

    /// A generator for the test `name` with a fixed `seed`.
    pub fn with_seed(name: &str, seed: u64) -> Self {
        eprintln!("[{name}] random seed {seed:#x} (replay with {SEED_ENV}={seed:#x})");
        TestRng {
            name: name.to_owned(),
            seed,
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// A child generator with its own stream, for another thread; its seed is
    /// derived from this one's, so the parent's seed replays it.
    pub fn fork(&mut self, label: &str) -> TestRng {
        let seed = self.rng.next_u64();
        TestRng {
            name: format!("{}/{label}", self.name),
            seed,
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// `len` uniformly random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        random_bytes(&mut self.rng, len)
    }

    /// `len` bytes of text-like, compressible data.
    pub fn text(&mut self, len: usize) -> Vec<u8> {
        text_bytes(&mut self.rng, len)
    }

    /// Either [`TestRng::bytes`] or [`TestRng::text`], at random.
    pub fn data(&mut self, len: usize) -> Vec<u8> {
        if self.rng.random::<bool>() {
            self.bytes(len)
        } else {
            self.text(len)
        }
    }

    /// A random array.
    pub fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0; N];
        self.rng.fill_bytes(&mut out);
        out
    }

    /// A uniform value in `0..n` (0 if `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            self.rng.random_range(0..n)
        }
    }
}

impl Drop for TestRng {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "[{}] FAILED with random seed {:#x}: replay with {SEED_ENV}={:#x}",
                self.name, self.seed, self.seed
            );
        }
    }
}

impl RngCore for TestRng {
    fn next_u32(&mut self) -> u32 {
        self.rng.next_u32()
    }

    fn next_u64(&mut self) -> u64 {
        self.rng.next_u64()
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        self.rng.fill_bytes(dst);
    }
}

fn parse_seed(value: &str) -> Option<u64> {
    let value = value.trim();
    match value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
    {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => value.parse().ok(),
    }
}

/// A seed from the clock, the process id and the test name (so that tests
/// starting in the same nanosecond still differ).
fn clock_seed(name: &str) -> u64 {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| {
        d.as_secs().wrapping_mul(1_000_000_000) ^ u64::from(d.subsec_nanos())
    });
    let mut seed = nanos ^ (u64::from(std::process::id()) << 32);
    for byte in name.bytes() {
        seed = (seed ^ u64::from(byte)).wrapping_mul(0x0100_0000_01B3);
    }
    // SplitMix64 finaliser, to spread the bits.
    seed = (seed ^ (seed >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    seed = (seed ^ (seed >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    seed ^ (seed >> 31)
}

/// [`FIXED_SIZES`] plus a few random sizes: one below 64, one below 4096 and
/// one up to 256 KiB.
pub fn sizes(rng: &mut impl Rng) -> Vec<usize> {
    let mut sizes = FIXED_SIZES.to_vec();
    sizes.push(rng.random_range(2..64));
    sizes.push(rng.random_range(66..4095));
    sizes.push(rng.random_range(4098..256 * 1024));
    sizes
}

/// `len` uniformly random (incompressible) bytes.
pub fn random_bytes(rng: &mut impl Rng, len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    rng.fill_bytes(&mut out);
    out
}

const WORDS: &[&str] = &[
    "the",
    "virtio",
    "accelerator",
    "device",
    "queue",
    "descriptor",
    "buffer",
    "fence",
    "object",
    "request",
    "response",
    "status",
    "engine",
    "deflate",
    "inflate",
    "checksum",
    "digest",
    "cipher",
    "guest",
    "host",
    "memory",
    "segment",
    "scatter",
    "gather",
    "vhost",
    "user",
    "daemon",
    "driver",
    "of",
    "and",
    "a",
    "to",
    "in",
    "is",
    "with",
    "for",
    "on",
    "by",
    "not",
    "completion",
    "doorbell",
    "interrupt",
    "tenant",
    "quota",
    "limit",
    "offset",
    "length",
    "payload",
    "header",
    "trailer",
    "stream",
    "window",
    "block",
    "literal",
    "match",
    "distance",
];

/// `len` bytes of text-like data: words, numbers, punctuation and newlines
/// from a small vocabulary, with occasional repeats of earlier runs, so that
/// deflate compresses it several times over (yet not trivially).
pub fn text_bytes(rng: &mut impl Rng, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    while out.len() < len {
        match rng.random_range(0..100u32) {
            0..=79 => {
                out.extend_from_slice(WORDS[rng.random_range(0..WORDS.len())].as_bytes());
            }
            80..=87 => {
                let number: u32 = rng.random_range(0..100_000);
                out.extend_from_slice(number.to_string().as_bytes());
            }
            88..=92 => {
                out.extend_from_slice([", ", ". ", "; ", ": "][rng.random_range(0..4)].as_bytes())
            }
            93..=96 => out.push(b'\n'),
            _ if out.len() > 64 => {
                // Repeat an earlier run, like quoted text.
                let run = rng.random_range(8..64);
                let start = rng.random_range(0..out.len() - run);
                out.extend_from_within(start..start + run);
            }
            _ => {}
        }
        out.push(b' ');
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn generators_are_seeded_and_sized() {
        let mut a = TestRng::with_seed("a", 42);
        let mut b = TestRng::with_seed("b", 42);
        for len in [0, 1, 100, 5000] {
            assert_eq!(a.bytes(len), b.bytes(len));
            let text = a.text(len);
            assert_eq!(text.len(), len);
            assert_eq!(text, b.text(len));
        }
        assert_eq!(sizes(&mut a), sizes(&mut b));
        assert_eq!(parse_seed("0x10"), Some(16));
        assert_eq!(parse_seed("17"), Some(17));
    }

    #[test]
    fn text_compresses() {
        let mut rng = TestRng::with_seed("text", 7);
        let text = rng.text(64 * 1024);
        let packed = miniz_oxide::deflate::compress_to_vec(&text, 6);
        assert!(
            packed.len() * 2 < text.len(),
            "{} -> {}",
            text.len(),
            packed.len()
        );
    }
}
