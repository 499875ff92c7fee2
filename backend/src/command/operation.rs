// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! An operation and its parameter block decoded (§8): the op code of a
//! request's header and its 48 bytes of parameters become an [`Operation`],
//! reserved bytes checked. [`crate::ops`] executes it; nothing there decodes.

use thiserror::Error;
use virtio_accel_spec::op::{OpParams, DEFLATE_MAX_LEVEL, GCM_IV_SIZE, GCM_TAG_SIZE, PARAMS_SIZE};
use virtio_accel_spec::{AesGcmParams, Crc32cParams, DeflateFormat, DeflateParams, FillParams, Op};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Why a parameter block was rejected (§8).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ParamsError {
    /// A reserved byte is not zero.
    #[error("reserved parameter bytes of {0:?} are not zero")]
    ReservedNotZero(Op),
    /// The deflate format is unknown.
    #[error(transparent)]
    Format(#[from] virtio_accel_spec::op::UnknownFormat),
    /// The deflate level is out of range.
    #[error("deflate level {0} is above {DEFLATE_MAX_LEVEL}")]
    Level(u8),
}

/// AES-256-GCM key material, wiped from memory when dropped (§12.6).
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct GcmKey {
    key: [u8; 32],
    iv: [u8; GCM_IV_SIZE],
}

impl GcmKey {
    /// A key and its IV.
    pub fn new(key: [u8; 32], iv: [u8; GCM_IV_SIZE]) -> Self {
        GcmKey { key, iv }
    }

    /// The AES-256 key.
    pub fn key(&self) -> &[u8; 32] {
        &self.key
    }

    /// The 96-bit IV.
    pub fn iv(&self) -> &[u8; GCM_IV_SIZE] {
        &self.iv
    }
}

impl std::fmt::Debug for GcmKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GcmKey(..)")
    }
}

/// A decoded operation with its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// §8.1.
    Copy,
    /// §8.2.
    Fill {
        /// Byte to write.
        pattern: u8,
    },
    /// §8.3.
    Compare,
    /// §8.4.
    Crc32c {
        /// CRC of preceding data.
        seed: u32,
    },
    /// §8.5.
    Sha256,
    /// §8.6.
    AesGcmSeal(Box<GcmKey>),
    /// §8.7.
    AesGcmOpen(Box<GcmKey>, [u8; GCM_TAG_SIZE]),
    /// §8.8.
    DeflateCompress {
        /// Framing.
        format: DeflateFormat,
        /// Level 0..=9.
        level: u8,
    },
    /// §8.9.
    DeflateDecompress {
        /// Framing.
        format: DeflateFormat,
    },
}

fn all_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

impl Operation {
    /// Decodes `op` and its parameter block, checking reserved bytes (§8).
    pub fn decode(op: Op, raw: &[u8; PARAMS_SIZE]) -> Result<Self, ParamsError> {
        let reserved_ok = |ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(ParamsError::ReservedNotZero(op))
            }
        };
        let operation = match op {
            Op::Copy | Op::Compare | Op::Sha256 => {
                reserved_ok(all_zero(raw))?;
                match op {
                    Op::Copy => Operation::Copy,
                    Op::Compare => Operation::Compare,
                    _ => Operation::Sha256,
                }
            }
            Op::Fill => {
                let p = FillParams::from_params(raw);
                reserved_ok(all_zero(&p.reserved))?;
                Operation::Fill { pattern: p.pattern }
            }
            Op::Crc32c => {
                let p = Crc32cParams::from_params(raw);
                reserved_ok(all_zero(&p.reserved))?;
                Operation::Crc32c {
                    seed: p.seed.into(),
                }
            }
            Op::AesGcmSeal | Op::AesGcmOpen => {
                let p = AesGcmParams::from_params(raw);
                reserved_ok(all_zero(&p.reserved))?;
                // Boxed, so that moves of the operation copy no key
                // material (which only the box's drop wipes).
                let key = Box::new(GcmKey::new(p.key, p.iv));
                if op == Op::AesGcmSeal {
                    reserved_ok(all_zero(&p.tag))?;
                    Operation::AesGcmSeal(key)
                } else {
                    Operation::AesGcmOpen(key, p.tag)
                }
            }
            Op::DeflateCompress | Op::DeflateDecompress => {
                let p = DeflateParams::from_params(raw);
                reserved_ok(all_zero(&p.reserved))?;
                let format = DeflateFormat::try_from(p.format)?;
                if op == Op::DeflateCompress {
                    if p.level > DEFLATE_MAX_LEVEL {
                        return Err(ParamsError::Level(p.level));
                    }
                    Operation::DeflateCompress {
                        format,
                        level: p.level,
                    }
                } else {
                    reserved_ok(p.level == 0)?;
                    Operation::DeflateDecompress { format }
                }
            }
        };
        Ok(operation)
    }

    /// The operation code.
    pub fn op(&self) -> Op {
        match self {
            Operation::Copy => Op::Copy,
            Operation::Fill { .. } => Op::Fill,
            Operation::Compare => Op::Compare,
            Operation::Crc32c { .. } => Op::Crc32c,
            Operation::Sha256 => Op::Sha256,
            Operation::AesGcmSeal(_) => Op::AesGcmSeal,
            Operation::AesGcmOpen(..) => Op::AesGcmOpen,
            Operation::DeflateCompress { .. } => Op::DeflateCompress,
            Operation::DeflateDecompress { .. } => Op::DeflateDecompress,
        }
    }
}
