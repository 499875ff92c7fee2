// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Operations, their capability bits and their parameter blocks (§8).

use thiserror::Error;
use vm_memory::endian::Le32;
use vm_memory::ByteValued;

use crate::{assert_wire_size, wire_enum};

/// Size of the parameter block of a request (§6.1).
pub const PARAMS_SIZE: usize = 64;

/// An operation code that no version of the specification defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("unknown operation {0}")]
pub struct UnknownOp(pub u32);

wire_enum! {
    /// Operation codes, in `op` of a request (§8).
    pub enum Op: u32, UnknownOp {
        /// §8.1: copy one input into one output.
        Copy = 1,
        /// §8.2: fill one output with a byte.
        Fill = 2,
        /// §8.3: compare two inputs.
        Compare = 3,
        /// §8.4: CRC32C (Castagnoli) of one input.
        Crc32c = 4,
        /// §8.5: SHA-256 digest of one input.
        Sha256 = 5,
        /// §8.6: AES-256-GCM encryption and tag of (aad, plaintext).
        AesGcmSeal = 6,
        /// §8.7: AES-256-GCM check and decryption of (aad, ciphertext).
        AesGcmOpen = 7,
        /// §8.8: deflate compression.
        DeflateCompress = 8,
        /// §8.9: deflate decompression.
        DeflateDecompress = 9,
    }
}

impl Op {
    /// Capability bit of this operation in `ops` of the configuration (§5).
    pub fn capability(self) -> u32 {
        1 << u32::from(self)
    }

    /// Capability mask of every operation this specification defines.
    pub fn all_capabilities() -> u32 {
        Op::ALL.iter().fold(0, |mask, op| mask | op.capability())
    }

    /// Number of input and output buffers the operation takes (§8).
    pub fn arity(self) -> (u8, u8) {
        match self {
            Op::Copy | Op::DeflateCompress | Op::DeflateDecompress => (1, 1),
            Op::Fill => (0, 1),
            Op::Compare => (2, 0),
            Op::Crc32c | Op::Sha256 => (1, 0),
            Op::AesGcmSeal | Op::AesGcmOpen => (2, 1),
        }
    }

    /// Short lowercase name, as used on command lines and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Op::Copy => "copy",
            Op::Fill => "fill",
            Op::Compare => "compare",
            Op::Crc32c => "crc32c",
            Op::Sha256 => "sha256",
            Op::AesGcmSeal => "aes-gcm-seal",
            Op::AesGcmOpen => "aes-gcm-open",
            Op::DeflateCompress => "deflate",
            Op::DeflateDecompress => "inflate",
        }
    }
}

/// `result` of COMPARE when both inputs are equal (§8.3).
pub const COMPARE_EQUAL: u64 = u64::MAX;

/// Parameters of FILL (§8.2).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FillParams {
    /// Byte written to every byte of the output.
    pub pattern: u8,
    /// Reserved, zero.
    pub reserved: [u8; 63],
}
assert_wire_size!(FillParams, PARAMS_SIZE);

/// Parameters of CRC32C (§8.4).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crc32cParams {
    /// CRC of the data that precedes the input (0 for a fresh CRC).
    pub seed: Le32,
    /// Reserved, zero.
    pub reserved: [u8; 60],
}
assert_wire_size!(Crc32cParams, PARAMS_SIZE);

/// Size of an AES-256 key.
pub const AES_KEY_SIZE: usize = 32;
/// Size of an AES-GCM nonce.
pub const GCM_IV_SIZE: usize = 12;
/// Size of an AES-GCM tag.
pub const GCM_TAG_SIZE: usize = 16;

/// Parameters of AES-256-GCM seal and open (§8.6, §8.7).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AesGcmParams {
    /// The 256-bit key.
    pub key: [u8; AES_KEY_SIZE],
    /// The 96-bit nonce.
    pub iv: [u8; GCM_IV_SIZE],
    /// Reserved, zero.
    pub reserved: [u8; 4],
    /// OPEN: the tag to check. SEAL: reserved, zero.
    pub tag: [u8; GCM_TAG_SIZE],
}
assert_wire_size!(AesGcmParams, PARAMS_SIZE);

/// A deflate framing value that the specification does not define.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("unknown deflate format {0}")]
pub struct UnknownFormat(pub u8);

wire_enum! {
    /// Framing of deflate data (§8.8).
    pub enum DeflateFormat: u8, UnknownFormat {
        /// Raw deflate (RFC 1951).
        Raw = 0,
        /// zlib (RFC 1950).
        Zlib = 1,
        /// gzip (RFC 1952).
        Gzip = 2,
    }
}

/// Highest deflate compression level (§8.8).
pub const DEFLATE_MAX_LEVEL: u8 = 9;

/// Parameters of DEFLATE_COMPRESS and DEFLATE_DECOMPRESS (§8.8, §8.9).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateParams {
    /// A [`DeflateFormat`] value.
    pub format: u8,
    /// COMPRESS: level 0..=9. DECOMPRESS: reserved, zero.
    pub level: u8,
    /// Reserved, zero.
    pub reserved: [u8; 62],
}
assert_wire_size!(DeflateParams, PARAMS_SIZE);

macro_rules! params_byte_valued {
    ($($ty:ty),+) => {
        $(
            // SAFETY: the type is `repr(C)`, made only of byte arrays and
            // little-endian integer wrappers with no padding (its size is asserted
            // to be the sum of its fields), and any bit pattern is a valid value.
            unsafe impl ByteValued for $ty {}
        )+
    };
}
params_byte_valued!(FillParams, Crc32cParams, AesGcmParams, DeflateParams);

impl Default for FillParams {
    fn default() -> Self {
        FillParams {
            pattern: 0,
            reserved: [0; 63],
        }
    }
}

impl Default for Crc32cParams {
    fn default() -> Self {
        Crc32cParams {
            seed: Le32::from(0),
            reserved: [0; 60],
        }
    }
}

impl Default for AesGcmParams {
    fn default() -> Self {
        AesGcmParams {
            key: [0; AES_KEY_SIZE],
            iv: [0; GCM_IV_SIZE],
            reserved: [0; 4],
            tag: [0; GCM_TAG_SIZE],
        }
    }
}

impl Default for DeflateParams {
    fn default() -> Self {
        DeflateParams {
            format: 0,
            level: 0,
            reserved: [0; 62],
        }
    }
}

/// A parameter block: exactly [`PARAMS_SIZE`] bytes, stored in `params` of a request.
pub trait OpParams: ByteValued + Default {
    /// Decodes the block from the raw `params` bytes of a request.
    fn from_params(raw: &[u8; PARAMS_SIZE]) -> Self {
        let mut params = Self::default();
        params.as_mut_slice().copy_from_slice(raw);
        params
    }

    /// Encodes the block into raw `params` bytes.
    fn to_params(&self) -> [u8; PARAMS_SIZE] {
        let mut raw = [0; PARAMS_SIZE];
        raw.copy_from_slice(self.as_slice());
        raw
    }
}

impl OpParams for FillParams {}
impl OpParams for Crc32cParams {}
impl OpParams for AesGcmParams {}
impl OpParams for DeflateParams {}
