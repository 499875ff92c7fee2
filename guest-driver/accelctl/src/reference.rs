// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Reference implementations of the operations (§8 of the specification),
//! independent of the crates the daemon's software engine uses (`crc32c`,
//! `sha2`, `aes-gcm`, `flate2`): what the device must produce, computed
//! another way. `accelctl selftest` and the test suite check devices against it.
//!
//! - CRC-32C and CRC-32 (IEEE): plain bitwise loops over the reflected polynomials.
//! - SHA-256 and AES-256-GCM: `ring`.
//! - deflate (raw, zlib): `miniz_oxide`; gzip framing (RFC 1952) is parsed and
//!   built here, around `miniz_oxide`'s raw deflate.
//! - COMPARE, COPY, FILL: straightforward loops.
//!
//! Every decoder here is strict: it rejects trailing bytes after the stream,
//! unless the `_prefix` variant is used, which reports how much it consumed.

use std::fmt;

use miniz_oxide::inflate::core::inflate_flags::{
    TINFL_FLAG_PARSE_ZLIB_HEADER, TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF,
};
use miniz_oxide::inflate::core::{decompress as tinfl_decompress, DecompressorOxide};
use miniz_oxide::inflate::TINFLStatus;
use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM};
use virtio_accel_spec::op::{COMPARE_EQUAL, GCM_IV_SIZE, GCM_TAG_SIZE};
use virtio_accel_spec::{DeflateFormat, Status};

/// Reflected CRC-32C (Castagnoli) polynomial.
pub const CRC32C_POLY: u32 = 0x82F6_3B78;
/// Reflected CRC-32 (IEEE 802.3, used by gzip) polynomial.
pub const CRC32_IEEE_POLY: u32 = 0xEDB8_8320;

/// Bitwise reflected CRC update: `crc` is the running (already inverted) register.
fn crc_update(mut crc: u32, poly: u32, data: &[u8]) -> u32 {
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ poly
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// CRC-32C of `data` continuing from `seed`, the CRC of the data before it
/// (0 for a fresh CRC): `crc32c(crc32c(0, a), b) == crc32c(0, a ++ b)`.
pub fn crc32c(seed: u32, data: &[u8]) -> u32 {
    !crc_update(!seed, CRC32C_POLY, data)
}

/// CRC-32 (IEEE, as in gzip and zip) of `data` continuing from `seed`.
pub fn crc32_ieee(seed: u32, data: &[u8]) -> u32 {
    !crc_update(!seed, CRC32_IEEE_POLY, data)
}

/// SHA-256 digest of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn gcm_key(key: &[u8; 32]) -> LessSafeKey {
    // A 32-byte key is always accepted by AES-256-GCM.
    #[allow(clippy::expect_used)]
    let unbound = UnboundKey::new(&AES_256_GCM, key).expect("AES-256 key is 32 bytes");
    LessSafeKey::new(unbound)
}

/// AES-256-GCM encryption of `plaintext` with `aad`: (ciphertext, detached tag).
pub fn aes256_gcm_seal(
    key: &[u8; 32],
    iv: &[u8; GCM_IV_SIZE],
    aad: &[u8],
    plaintext: &[u8],
) -> (Vec<u8>, [u8; GCM_TAG_SIZE]) {
    let mut in_out = plaintext.to_vec();
    // Sealing fails only for inputs beyond GCM's 64 GiB limit.
    #[allow(clippy::expect_used)]
    let tag = gcm_key(key)
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(*iv),
            Aad::from(aad),
            &mut in_out,
        )
        .expect("AES-GCM seal of a test-sized input");
    let mut tag_bytes = [0; GCM_TAG_SIZE];
    tag_bytes.copy_from_slice(tag.as_ref());
    (in_out, tag_bytes)
}

/// AES-256-GCM check and decryption of `ciphertext`; `None` if the tag does
/// not authenticate (`aad`, `ciphertext`).
pub fn aes256_gcm_open(
    key: &[u8; 32],
    iv: &[u8; GCM_IV_SIZE],
    aad: &[u8],
    ciphertext: &[u8],
    tag: &[u8; GCM_TAG_SIZE],
) -> Option<Vec<u8>> {
    let mut in_out = ciphertext.to_vec();
    let plain_len = gcm_key(key)
        .open_in_place_separate_tag(
            Nonce::assume_unique_for_key(*iv),
            Aad::from(aad),
            Tag::from(*tag),
            &mut in_out,
            0..,
        )
        .ok()?
        .len();
    in_out.truncate(plain_len);
    Some(in_out)
}

/// COMPARE (§8.3): offset of the first differing byte; the shorter length if
/// one input is a prefix of the other; [`COMPARE_EQUAL`] if they are equal.
pub fn compare(a: &[u8], b: &[u8]) -> u64 {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(offset) => offset as u64,
        None if a.len() == b.len() => COMPARE_EQUAL,
        None => a.len().min(b.len()) as u64,
    }
}

/// COPY (§8.1) of `src` into `dst`: bytes written, or [`Status::NoSpace`]
/// (leaving `dst` alone) if `dst` is shorter than `src`.
pub fn copy(src: &[u8], dst: &mut [u8]) -> Result<usize, Status> {
    let target = dst.get_mut(..src.len()).ok_or(Status::NoSpace)?;
    target.copy_from_slice(src);
    Ok(src.len())
}

/// FILL (§8.2) of all of `dst` with `pattern`: bytes written.
pub fn fill(dst: &mut [u8], pattern: u8) -> usize {
    dst.fill(pattern);
    dst.len()
}

/// Why reference decompression failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InflateError {
    /// The input ends before the stream does.
    Truncated,
    /// The input is not a valid stream.
    Corrupt(&'static str),
    /// The stream decodes but its check value (Adler-32, CRC-32, ISIZE) is wrong.
    Checksum(&'static str),
    /// The output would exceed the given limit.
    TooLarge,
    /// Bytes follow the end of the stream (strict decoders only).
    TrailingData {
        /// Bytes the stream occupies.
        consumed: usize,
    },
}

impl fmt::Display for InflateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InflateError::Truncated => f.write_str("truncated stream"),
            InflateError::Corrupt(what) => write!(f, "corrupt stream: {what}"),
            InflateError::Checksum(what) => write!(f, "check value mismatch: {what}"),
            InflateError::TooLarge => f.write_str("output exceeds the limit"),
            InflateError::TrailingData { consumed } => {
                write!(f, "trailing data after a {consumed}-byte stream")
            }
        }
    }
}

impl std::error::Error for InflateError {}

/// A successfully decoded stream that may be followed by other bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inflated {
    /// The decompressed bytes.
    pub data: Vec<u8>,
    /// Bytes of input the stream occupies (header and trailer included).
    pub consumed: usize,
}

/// Inflates a raw (or, with `zlib`, zlib-wrapped) deflate stream at the start
/// of `input`, producing at most `limit` bytes.
fn inflate_core(input: &[u8], zlib: bool, limit: usize) -> Result<Inflated, InflateError> {
    let flags = TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF
        | if zlib {
            TINFL_FLAG_PARSE_ZLIB_HEADER
        } else {
            0
        };
    // One byte beyond the limit lets "exactly `limit` bytes" be told apart
    // from "more than `limit`".
    let cap = limit.saturating_add(1);
    let mut out = vec![0; input.len().saturating_mul(4).clamp(1024, 1 << 24).min(cap)];
    let mut decompressor = Box::<DecompressorOxide>::default();
    let (mut in_pos, mut out_pos) = (0, 0);
    loop {
        let (status, consumed, written) = tinfl_decompress(
            &mut decompressor,
            &input[in_pos..],
            &mut out,
            out_pos,
            flags,
        );
        in_pos += consumed;
        out_pos += written;
        match status {
            TINFLStatus::Done => {
                if out_pos > limit {
                    return Err(InflateError::TooLarge);
                }
                out.truncate(out_pos);
                return Ok(Inflated {
                    data: out,
                    consumed: in_pos,
                });
            }
            TINFLStatus::HasMoreOutput => {
                if out.len() >= cap {
                    return Err(InflateError::TooLarge);
                }
                let grown = out.len().saturating_mul(2).min(cap);
                out.resize(grown, 0);
            }
            TINFLStatus::NeedsMoreInput | TINFLStatus::FailedCannotMakeProgress => {
                return Err(InflateError::Truncated)
            }
            TINFLStatus::Adler32Mismatch => return Err(InflateError::Checksum("adler-32")),
            TINFLStatus::Failed => return Err(InflateError::Corrupt("invalid deflate data")),
            TINFLStatus::BadParam => return Err(InflateError::Corrupt("bad parameter")),
            #[allow(unreachable_patterns)]
            _ => return Err(InflateError::Corrupt("unexpected inflate status")),
        }
    }
}

/// gzip header flag: text hint.
pub const GZIP_FTEXT: u8 = 0x01;
/// gzip header flag: a CRC-16 of the header follows the optional fields.
pub const GZIP_FHCRC: u8 = 0x02;
/// gzip header flag: an "extra" field is present.
pub const GZIP_FEXTRA: u8 = 0x04;
/// gzip header flag: a zero-terminated file name is present.
pub const GZIP_FNAME: u8 = 0x08;
/// gzip header flag: a zero-terminated comment is present.
pub const GZIP_FCOMMENT: u8 = 0x10;
const GZIP_RESERVED_FLAGS: u8 = 0xE0;
const GZIP_ID: [u8; 2] = [0x1f, 0x8b];
const GZIP_CM_DEFLATE: u8 = 8;

/// Length of the gzip header at the start of `input` (RFC 1952 §2.3), after
/// checking it (magic, method, reserved flags, header CRC).
pub fn gzip_header_len(input: &[u8]) -> Result<usize, InflateError> {
    let fixed = input.get(..10).ok_or(InflateError::Truncated)?;
    if fixed[..2] != GZIP_ID {
        return Err(InflateError::Corrupt("gzip magic"));
    }
    if fixed[2] != GZIP_CM_DEFLATE {
        return Err(InflateError::Corrupt("gzip compression method"));
    }
    let flags = fixed[3];
    if flags & GZIP_RESERVED_FLAGS != 0 {
        return Err(InflateError::Corrupt("gzip reserved flags"));
    }
    let mut pos = 10;
    if flags & GZIP_FEXTRA != 0 {
        let xlen = input.get(pos..pos + 2).ok_or(InflateError::Truncated)?;
        let xlen = usize::from(u16::from_le_bytes([xlen[0], xlen[1]]));
        pos += 2;
        if input.len() < pos + xlen {
            return Err(InflateError::Truncated);
        }
        pos += xlen;
    }
    for flag in [GZIP_FNAME, GZIP_FCOMMENT] {
        if flags & flag != 0 {
            let nul = input
                .get(pos..)
                .and_then(|rest| rest.iter().position(|&b| b == 0))
                .ok_or(InflateError::Truncated)?;
            pos += nul + 1;
        }
    }
    if flags & GZIP_FHCRC != 0 {
        let stored = input.get(pos..pos + 2).ok_or(InflateError::Truncated)?;
        let stored = u16::from_le_bytes([stored[0], stored[1]]);
        let computed = crc32_ieee(0, &input[..pos]).to_le_bytes();
        if stored != u16::from_le_bytes([computed[0], computed[1]]) {
            return Err(InflateError::Checksum("gzip header crc"));
        }
        pos += 2;
    }
    Ok(pos)
}

/// Decodes one stream of `format` at the start of `input`, producing at most
/// `limit` bytes; bytes after the stream are left alone (see [`Inflated::consumed`]).
pub fn decompress_prefix(
    format: DeflateFormat,
    input: &[u8],
    limit: usize,
) -> Result<Inflated, InflateError> {
    match format {
        DeflateFormat::Raw => inflate_core(input, false, limit),
        DeflateFormat::Zlib => inflate_core(input, true, limit),
        DeflateFormat::Gzip => {
            let header = gzip_header_len(input)?;
            let body = inflate_core(&input[header..], false, limit)?;
            let trailer_at = header + body.consumed;
            let trailer = input
                .get(trailer_at..trailer_at + 8)
                .ok_or(InflateError::Truncated)?;
            let crc = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
            let isize = u32::from_le_bytes([trailer[4], trailer[5], trailer[6], trailer[7]]);
            if crc != crc32_ieee(0, &body.data) {
                return Err(InflateError::Checksum("gzip crc-32"));
            }
            if u64::from(isize) != (body.data.len() as u64) & 0xFFFF_FFFF {
                return Err(InflateError::Checksum("gzip isize"));
            }
            Ok(Inflated {
                data: body.data,
                consumed: trailer_at + 8,
            })
        }
    }
}

/// Decodes `input`, which must be exactly one stream of `format`.
pub fn decompress(format: DeflateFormat, input: &[u8]) -> Result<Vec<u8>, InflateError> {
    let inflated = decompress_prefix(format, input, usize::MAX)?;
    if inflated.consumed != input.len() {
        return Err(InflateError::TrailingData {
            consumed: inflated.consumed,
        });
    }
    Ok(inflated.data)
}

/// Optional fields of a gzip header (RFC 1952 §2.3.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GzipHeader {
    /// Sets FTEXT.
    pub text: bool,
    /// MTIME.
    pub mtime: u32,
    /// XFL.
    pub xfl: u8,
    /// OS (255 = unknown).
    pub os: u8,
    /// FEXTRA payload (at most 65535 bytes).
    pub extra: Option<Vec<u8>>,
    /// FNAME, without its terminating zero (must contain no zero byte).
    pub name: Option<Vec<u8>>,
    /// FCOMMENT, without its terminating zero (must contain no zero byte).
    pub comment: Option<Vec<u8>>,
    /// Sets FHCRC and appends the header CRC-16.
    pub header_crc: bool,
}

impl GzipHeader {
    /// The minimal header: no optional fields, OS "unknown".
    pub fn minimal() -> Self {
        GzipHeader {
            os: 255,
            ..GzipHeader::default()
        }
    }

    /// A header with every optional field present (FEXTRA, FNAME, FCOMMENT, FHCRC).
    pub fn full() -> Self {
        GzipHeader {
            text: true,
            mtime: 0x5EED_1234,
            xfl: 2,
            os: 3,
            extra: Some(b"AP\x04\x00test".to_vec()),
            name: Some(b"reference.txt".to_vec()),
            comment: Some(b"built by accel-tests".to_vec()),
            header_crc: true,
        }
    }

    /// The encoded header.
    pub fn encode(&self) -> Vec<u8> {
        let mut flags = 0;
        if self.text {
            flags |= GZIP_FTEXT;
        }
        if self.extra.is_some() {
            flags |= GZIP_FEXTRA;
        }
        if self.name.is_some() {
            flags |= GZIP_FNAME;
        }
        if self.comment.is_some() {
            flags |= GZIP_FCOMMENT;
        }
        if self.header_crc {
            flags |= GZIP_FHCRC;
        }
        let mut out = vec![GZIP_ID[0], GZIP_ID[1], GZIP_CM_DEFLATE, flags];
        out.extend_from_slice(&self.mtime.to_le_bytes());
        out.extend_from_slice(&[self.xfl, self.os]);
        if let Some(extra) = &self.extra {
            let xlen = u16::try_from(extra.len()).unwrap_or(u16::MAX);
            out.extend_from_slice(&xlen.to_le_bytes());
            out.extend_from_slice(&extra[..usize::from(xlen)]);
        }
        for field in [&self.name, &self.comment].into_iter().flatten() {
            debug_assert!(!field.contains(&0), "gzip string fields cannot hold NUL");
            out.extend_from_slice(field);
            out.push(0);
        }
        if self.header_crc {
            let crc = crc32_ieee(0, &out).to_le_bytes();
            out.extend_from_slice(&crc[..2]);
        }
        out
    }
}

/// Wraps a raw deflate stream of `data` in a gzip member with `header`.
pub fn gzip_wrap(header: &GzipHeader, raw: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = header.encode();
    out.extend_from_slice(raw);
    out.extend_from_slice(&crc32_ieee(0, data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u64).to_le_bytes()[..4]);
    out
}

/// Compresses `data` into one stream of `format` at `level` (0..=9), with the
/// minimal gzip header for [`DeflateFormat::Gzip`].
pub fn compress(format: DeflateFormat, level: u8, data: &[u8]) -> Vec<u8> {
    match format {
        DeflateFormat::Raw => miniz_oxide::deflate::compress_to_vec(data, level),
        DeflateFormat::Zlib => miniz_oxide::deflate::compress_to_vec_zlib(data, level),
        DeflateFormat::Gzip => compress_gzip(&GzipHeader::minimal(), level, data),
    }
}

/// Compresses `data` into a gzip member with `header`.
pub fn compress_gzip(header: &GzipHeader, level: u8, data: &[u8]) -> Vec<u8> {
    let raw = miniz_oxide::deflate::compress_to_vec(data, level);
    gzip_wrap(header, &raw, data)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn crc_known_vectors() {
        assert_eq!(crc32c(0, b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(0, &[0; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(0, &[0xFF; 32]), 0x62A8_AB43);
        assert_eq!(crc32c(0, b""), 0);
        assert_eq!(crc32c(crc32c(0, b"1234"), b"56789"), 0xE306_9283);
        assert_eq!(crc32_ieee(0, b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn sha256_known_vector() {
        assert_eq!(
            sha256(b"abc")[..4],
            [0xba, 0x78, 0x16, 0xbf],
            "FIPS 180-2 example"
        );
    }

    #[test]
    fn gcm_round_trip_and_tamper() {
        let (key, iv) = ([7; 32], [9; 12]);
        let (ct, tag) = aes256_gcm_seal(&key, &iv, b"aad", b"hello world");
        assert_eq!(ct.len(), 11);
        assert_eq!(
            aes256_gcm_open(&key, &iv, b"aad", &ct, &tag).unwrap(),
            b"hello world"
        );
        let mut bad = tag;
        bad[15] ^= 1;
        assert!(aes256_gcm_open(&key, &iv, b"aad", &ct, &bad).is_none());
        assert!(aes256_gcm_open(&key, &iv, b"aaD", &ct, &tag).is_none());
    }

    #[test]
    fn deflate_round_trips() {
        let data: Vec<u8> = (0..10_000u32)
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect();
        for format in DeflateFormat::ALL.iter().copied() {
            for level in [0, 1, 6, 9] {
                let packed = compress(format, level, &data);
                assert_eq!(decompress(format, &packed).unwrap(), data);
                assert_eq!(
                    decompress(format, &packed[..packed.len() - 1]),
                    Err(InflateError::Truncated)
                );
                let mut trailing = packed.clone();
                trailing.push(0);
                assert_eq!(
                    decompress(format, &trailing),
                    Err(InflateError::TrailingData {
                        consumed: packed.len()
                    })
                );
            }
        }
    }

    #[test]
    fn gzip_headers_and_checks() {
        let data = b"gzip header test gzip header test gzip header test".to_vec();
        let packed = compress_gzip(&GzipHeader::full(), 6, &data);
        assert_eq!(decompress(DeflateFormat::Gzip, &packed).unwrap(), data);
        // Header CRC covers the name.
        let mut bad = packed.clone();
        let name_at = 10 + 2 + 8;
        bad[name_at] ^= 0x20;
        assert_eq!(
            decompress(DeflateFormat::Gzip, &bad),
            Err(InflateError::Checksum("gzip header crc"))
        );
        // Trailer CRC and ISIZE.
        let mut bad = packed.clone();
        let n = bad.len();
        bad[n - 8] ^= 1;
        assert_eq!(
            decompress(DeflateFormat::Gzip, &bad),
            Err(InflateError::Checksum("gzip crc-32"))
        );
        let mut bad = packed.clone();
        bad[n - 1] ^= 1;
        assert_eq!(
            decompress(DeflateFormat::Gzip, &bad),
            Err(InflateError::Checksum("gzip isize"))
        );
        let mut bad = packed;
        bad[3] |= 0x80;
        assert_eq!(
            decompress(DeflateFormat::Gzip, &bad),
            Err(InflateError::Corrupt("gzip reserved flags"))
        );
    }

    #[test]
    fn limits() {
        let data = vec![b'x'; 5000];
        let packed = compress(DeflateFormat::Raw, 6, &data);
        assert_eq!(
            decompress_prefix(DeflateFormat::Raw, &packed, 5000)
                .unwrap()
                .data,
            data
        );
        assert_eq!(
            decompress_prefix(DeflateFormat::Raw, &packed, 4999),
            Err(InflateError::TooLarge)
        );
    }

    #[test]
    fn compare_semantics() {
        assert_eq!(compare(b"", b""), COMPARE_EQUAL);
        assert_eq!(compare(b"abc", b"abc"), COMPARE_EQUAL);
        assert_eq!(compare(b"abc", b"abd"), 2);
        assert_eq!(compare(b"xbc", b"abc"), 0);
        assert_eq!(compare(b"ab", b"abc"), 2);
        assert_eq!(compare(b"abc", b""), 0);
    }
}
