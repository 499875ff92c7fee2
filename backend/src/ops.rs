// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The operations of §8, executed on scatter-gather lists.
//!
//! Nothing here knows about virtio, and nothing decodes: an [`Operation`],
//! decoded from a request's `op` and parameter block by [`crate::command`],
//! is run on host buffers by [`execute`]. Guest
//! memory may change under the device at any time (a guest vCPU, or another
//! job on overlapping buffers), so no Rust reference to it is ever made: inputs
//! are copied to per-worker scratch memory a chunk at a time and the libraries
//! work on those copies; outputs are written with raw copies.
//!
//! Every operation works in chunks (at most [`BULK_CHUNK`] bytes for copies,
//! fills and the gathering of AES-GCM's input), and asks before each one
//! whether its job was cancelled ([`crate::engine::HwQueue::cancel`]): a
//! cancelled operation stops there and fails with [`CANCELLED`], so that a
//! device reset need not wait for a 64 MiB job the driver will never see
//! (§11).

use aes_gcm::aead::consts::U12;
use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use sha2::{Digest, Sha256};
use virtio_accel_spec::op::{COMPARE_EQUAL, GCM_TAG_SIZE};
use virtio_accel_spec::request::RESULT_SIZE;
use virtio_accel_spec::{DeflateFormat, Status};
use zeroize::Zeroize;

use crate::command::{GcmKey, Operation};
use crate::sg::SgList;

/// What an operation produced (§6.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Status of the request.
    pub status: Status,
    /// Bytes written to the output buffer.
    pub bytes_written: u64,
    /// Operation-specific result.
    pub result: [u8; RESULT_SIZE],
}

impl Outcome {
    /// A failed outcome.
    pub fn failed(status: Status) -> Self {
        Outcome {
            status,
            bytes_written: 0,
            result: [0; RESULT_SIZE],
        }
    }

    fn ok(bytes_written: usize, result_bytes: &[u8]) -> Self {
        let mut result = [0; RESULT_SIZE];
        let n = result_bytes.len().min(RESULT_SIZE);
        result[..n].copy_from_slice(&result_bytes[..n]);
        Outcome {
            status: Status::Ok,
            bytes_written: bytes_written as u64,
            result,
        }
    }
}

/// Per-worker memory reused across operations.
#[derive(Debug, Default)]
pub struct Scratch {
    input: Vec<u8>,
    aad: Vec<u8>,
    output: Vec<u8>,
}

/// Most bytes a scratch buffer keeps between jobs. AES-GCM gathers its whole
/// input and AAD, up to `max_buffer_size` each; a buffer grown past this is
/// freed when its job ends, so one huge job does not hold a worker's memory
/// at its size for good (§12.7), while jobs up to this size reuse their
/// buffers without allocating.
pub const SCRATCH_KEEP: usize = 1 << 20;

impl Scratch {
    /// Frees the buffers that grew past [`SCRATCH_KEEP`] (after the job that
    /// grew them wiped what it must, §12.6).
    fn trim(&mut self) {
        for buffer in [&mut self.input, &mut self.aad, &mut self.output] {
            if buffer.capacity() > SCRATCH_KEEP {
                *buffer = Vec::new();
            }
        }
    }
}

/// Chunk size of the deflate bounce buffers.
const STREAM_CHUNK: usize = 64 * 1024;
/// Chunk size of the bounce buffers of CRC32C, SHA-256 and COMPARE: small
/// enough to stay in the first-level cache between the copy and the use.
const HASH_CHUNK: usize = 16 * 1024;
/// Most bytes a copy, a fill or the gathering or writing of AES-GCM's data
/// moves between two checks for cancellation.
pub const BULK_CHUNK: usize = 1 << 20;

/// The status of a job that its engine stopped before it finished
/// ([`crate::engine::HwQueue::cancel`]): a failure of the device, not of
/// the request, which may succeed if resubmitted (§9). After a device reset
/// no driver sees it: the request is abandoned (§11).
pub const CANCELLED: Status = Status::DeviceError;

/// Whether the job has been cancelled, asked between chunks.
struct Stop<'a>(&'a dyn Fn() -> bool);

impl Stop<'_> {
    /// [`CANCELLED`] if the job was cancelled.
    fn check(&self) -> Result<(), Status> {
        if (self.0)() {
            Err(CANCELLED)
        } else {
            Ok(())
        }
    }
}

/// Runs `operation` on `inputs` and `outputs`, whose counts must match the
/// operation's arity (§8); a mismatch is reported as [`Status::DeviceError`].
/// `cancelled` is asked between chunks; once it answers true the operation
/// stops, leaving its outputs partly written, and fails with [`CANCELLED`].
/// Leaves at most [`SCRATCH_KEEP`] bytes in each buffer of `scratch`.
pub fn execute(
    operation: &Operation,
    inputs: &[SgList],
    outputs: &[SgList],
    scratch: &mut Scratch,
    cancelled: &dyn Fn() -> bool,
) -> Outcome {
    let outcome = dispatch(operation, inputs, outputs, scratch, &Stop(cancelled));
    scratch.trim();
    outcome.unwrap_or_else(Outcome::failed)
}

/// [`execute`] before the scratch is trimmed.
fn dispatch(
    operation: &Operation,
    inputs: &[SgList],
    outputs: &[SgList],
    scratch: &mut Scratch,
    stop: &Stop<'_>,
) -> Result<Outcome, Status> {
    let (num_in, num_out) = operation.op().arity();
    if inputs.len() != usize::from(num_in) || outputs.len() != usize::from(num_out) {
        return Err(Status::DeviceError);
    }
    match operation {
        Operation::Copy => copy(&inputs[0], &outputs[0], stop),
        Operation::Fill { pattern } => {
            in_bulk_chunks(&outputs[0], stop, |piece| piece.fill(*pattern))?;
            Ok(Outcome::ok(outputs[0].len(), &[]))
        }
        Operation::Compare => compare(&inputs[0], &inputs[1], scratch, stop),
        Operation::Crc32c { seed } => {
            let mut crc = *seed;
            for_each_chunk(&inputs[0], &mut scratch.input, stop, |chunk| {
                crc = crc32c::crc32c_append(crc, chunk)
            })?;
            Ok(Outcome::ok(0, &crc.to_le_bytes()))
        }
        Operation::Sha256 => {
            let mut hasher = Sha256::new();
            for_each_chunk(&inputs[0], &mut scratch.input, stop, |chunk| {
                hasher.update(chunk)
            })?;
            Ok(Outcome::ok(0, &hasher.finalize()))
        }
        Operation::AesGcmSeal(key) => {
            gcm_seal(key, &inputs[0], &inputs[1], &outputs[0], scratch, stop)
        }
        Operation::AesGcmOpen(key, tag) => {
            gcm_open(key, tag, &inputs[0], &inputs[1], &outputs[0], scratch, stop)
        }
        Operation::DeflateCompress { format, level } => {
            deflate(*format, *level, &inputs[0], &outputs[0], scratch, stop)
        }
        Operation::DeflateDecompress { format } => {
            inflate(*format, &inputs[0], &outputs[0], scratch, stop)
        }
    }
}

/// Calls `f` on `list` a piece of at most [`BULK_CHUNK`] bytes at a time,
/// checking for cancellation before each.
fn in_bulk_chunks(
    list: &SgList,
    stop: &Stop<'_>,
    mut f: impl FnMut(&SgList),
) -> Result<(), Status> {
    if list.len() <= BULK_CHUNK {
        stop.check()?;
        f(list);
        return Ok(());
    }
    let mut rest = list.clone();
    while !rest.is_empty() {
        stop.check()?;
        let piece = rest
            .take_front(rest.len().min(BULK_CHUNK))
            .ok_or(Status::DeviceError)?;
        f(&piece);
    }
    Ok(())
}

fn copy(src: &SgList, dst: &SgList, stop: &Stop<'_>) -> Result<Outcome, Status> {
    if dst.len() < src.len() {
        return Err(Status::NoSpace);
    }
    if src.len() <= BULK_CHUNK {
        stop.check()?;
        return Ok(Outcome::ok(src.copy_to(dst), &[]));
    }
    let mut rest = dst.clone();
    let mut copied = 0;
    in_bulk_chunks(src, stop, |piece| {
        if let Some(target) = rest.take_front(piece.len()) {
            copied += piece.copy_to(&target);
        }
    })?;
    Ok(Outcome::ok(copied, &[]))
}

/// Feeds `list` to `f` a chunk at a time, each first copied to `bounce`:
/// hashing code then reads private memory, never guest memory that the guest
/// may be writing at the same moment.
fn for_each_chunk(
    list: &SgList,
    bounce: &mut Vec<u8>,
    stop: &Stop<'_>,
    mut f: impl FnMut(&[u8]),
) -> Result<(), Status> {
    bounce.resize(HASH_CHUNK, 0);
    let mut rest = list.reader();
    while !rest.is_empty() {
        stop.check()?;
        let n = rest.len().min(HASH_CHUNK);
        let chunk = &mut bounce[..n];
        rest.read_front(chunk).ok_or(Status::DeviceError)?;
        f(chunk);
    }
    Ok(())
}

fn compare(
    a: &SgList,
    b: &SgList,
    scratch: &mut Scratch,
    stop: &Stop<'_>,
) -> Result<Outcome, Status> {
    let Scratch {
        input: bounce_a,
        aad: bounce_b,
        ..
    } = scratch;
    bounce_a.resize(HASH_CHUNK, 0);
    bounce_b.resize(HASH_CHUNK, 0);
    let (mut rest_a, mut rest_b) = (a.reader(), b.reader());
    let mut offset: usize = 0;
    while !rest_a.is_empty() && !rest_b.is_empty() {
        stop.check()?;
        let n = rest_a.len().min(rest_b.len()).min(HASH_CHUNK);
        let (chunk_a, chunk_b) = (&mut bounce_a[..n], &mut bounce_b[..n]);
        if rest_a.read_front(chunk_a).is_none() || rest_b.read_front(chunk_b).is_none() {
            return Err(Status::DeviceError);
        }
        if chunk_a != chunk_b {
            let pos = chunk_a.iter().zip(chunk_b.iter()).position(|(x, y)| x != y);
            return Ok(Outcome::ok(0, &(offset + pos.unwrap_or(0)).to_le_bytes()));
        }
        offset += n;
    }
    let first_difference = if a.len() == b.len() {
        COMPARE_EQUAL
    } else {
        a.len().min(b.len()) as u64
    };
    Ok(Outcome::ok(0, &first_difference.to_le_bytes()))
}

/// Gathers a list into `buffer` (resized to fit), [`BULK_CHUNK`] bytes at a
/// time.
fn gather(list: &SgList, buffer: &mut Vec<u8>, stop: &Stop<'_>) -> Result<(), Status> {
    buffer.clear();
    buffer.resize(list.len(), 0);
    let mut reader = list.reader();
    for chunk in buffer.chunks_mut(BULK_CHUNK) {
        stop.check()?;
        reader.read_front(chunk).ok_or(Status::DeviceError)?;
    }
    Ok(())
}

/// Writes `bytes` to the start of `out`, [`BULK_CHUNK`] bytes at a time.
fn scatter(bytes: &[u8], out: &SgList, stop: &Stop<'_>) -> Result<(), Status> {
    for (index, chunk) in bytes.chunks(BULK_CHUNK).enumerate() {
        stop.check()?;
        out.write_at(index * BULK_CHUNK, chunk);
    }
    Ok(())
}

/// AES-256-GCM over private copies (§8.6, §8.7): gathers `aad` and `input`,
/// runs `crypt` in place, and writes the result to `out` only if `crypt`
/// succeeded; its error becomes the status.
fn gcm(
    key: &GcmKey,
    aad: &SgList,
    input: &SgList,
    out: &SgList,
    scratch: &mut Scratch,
    stop: &Stop<'_>,
    crypt: impl FnOnce(
        &Aes256Gcm,
        &Nonce<U12>,
        &[u8],
        &mut Vec<u8>,
    ) -> Result<[u8; GCM_TAG_SIZE], Status>,
) -> Result<Outcome, Status> {
    if out.len() < input.len() {
        return Err(Status::NoSpace);
    }
    let outcome = (|| {
        gather(aad, &mut scratch.aad, stop)?;
        gather(input, &mut scratch.input, stop)?;
        stop.check()?;
        let cipher = Aes256Gcm::new(&(*key.key()).into());
        let tag = crypt(
            &cipher,
            &Nonce::from(*key.iv()),
            &scratch.aad,
            &mut scratch.input,
        )?;
        scatter(&scratch.input, out, stop)?;
        Ok(Outcome::ok(scratch.input.len(), &tag))
    })();
    // No plaintext lingers in the worker's scratch memory (§12.6). Only the
    // bytes this job filled are wiped: `gather` sized the buffers before
    // copying into them, so no copy was left behind by a reallocation, and
    // wiping the whole capacity would cost a small job the size of the
    // largest one before it.
    wipe(&mut scratch.input);
    wipe(&mut scratch.aad);
    outcome
}

fn wipe(buffer: &mut Vec<u8>) {
    buffer.as_mut_slice().zeroize();
    buffer.clear();
}

fn gcm_seal(
    key: &GcmKey,
    aad: &SgList,
    plain: &SgList,
    out: &SgList,
    scratch: &mut Scratch,
    stop: &Stop<'_>,
) -> Result<Outcome, Status> {
    let seal = |cipher: &Aes256Gcm, nonce: &Nonce<U12>, aad: &[u8], buffer: &mut Vec<u8>| {
        let tag = cipher
            .encrypt_in_place_detached(nonce, aad, buffer)
            .map_err(|_| Status::Limit)?;
        Ok(tag.into())
    };
    gcm(key, aad, plain, out, scratch, stop, seal)
}

fn gcm_open(
    key: &GcmKey,
    tag: &[u8; GCM_TAG_SIZE],
    aad: &SgList,
    sealed: &SgList,
    out: &SgList,
    scratch: &mut Scratch,
    stop: &Stop<'_>,
) -> Result<Outcome, Status> {
    // OPEN has no result bytes (§8.7): the zero "tag" leaves them zero.
    let open = |cipher: &Aes256Gcm, nonce: &Nonce<U12>, aad: &[u8], buffer: &mut Vec<u8>| {
        cipher
            .decrypt_in_place_detached(nonce, aad, buffer, &Tag::from(*tag))
            .map_err(|_| Status::AuthFailed)?;
        Ok([0; GCM_TAG_SIZE])
    };
    gcm(key, aad, sealed, out, scratch, stop, open)
}

/// What a finished stream moved.
struct Streamed {
    /// Bytes written to the output.
    written: usize,
    /// Input bytes the stream took (the rest of the input is after its end).
    consumed: usize,
}

/// Streams `input` through `step`, a chunk at a time through private bounce
/// buffers, writing what it produces to `out`. `step(input, output, at_end)`
/// returns (bytes consumed, bytes produced, stream finished) or a status;
/// a step that makes no progress ends the stream with `stall`. Each step
/// consumes or produces at most [`STREAM_CHUNK`] bytes, and is preceded by a
/// check for cancellation.
fn stream<F>(
    input: &SgList,
    out: &SgList,
    scratch: &mut Scratch,
    stall: Status,
    stop: &Stop<'_>,
    mut step: F,
) -> Result<Streamed, Status>
where
    F: FnMut(&[u8], &mut [u8], bool) -> Result<(usize, usize, bool), Status>,
{
    let Scratch {
        input: in_buf,
        output: out_buf,
        ..
    } = scratch;
    in_buf.resize(STREAM_CHUNK, 0);
    out_buf.resize(STREAM_CHUNK, 0);
    let mut remaining = input.reader();
    let (mut pending_start, mut pending_end) = (0, 0);
    let mut written = 0;
    loop {
        stop.check()?;
        if pending_start == pending_end && !remaining.is_empty() {
            let n = remaining.len().min(STREAM_CHUNK);
            remaining
                .read_front(&mut in_buf[..n])
                .ok_or(Status::DeviceError)?;
            (pending_start, pending_end) = (0, n);
        }
        let at_end = remaining.is_empty();
        let (consumed, produced, finished) =
            step(&in_buf[pending_start..pending_end], out_buf, at_end)?;
        pending_start += consumed;
        if produced > 0 {
            if written + produced > out.len() {
                return Err(Status::NoSpace);
            }
            out.write_at(written, &out_buf[..produced]);
            written += produced;
        }
        if finished {
            let unread = remaining.len() + (pending_end - pending_start);
            return Ok(Streamed {
                written,
                consumed: input.len() - unread,
            });
        }
        if consumed == 0 && produced == 0 {
            // A step that neither consumes nor produces cannot make progress
            // (input ended before the stream did): stop rather than spin.
            return Err(stall);
        }
    }
}

/// Bytes a (de)compressor step moved, from its running totals.
fn progress(before: u64, after: u64) -> Result<usize, Status> {
    after
        .checked_sub(before)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or(Status::DeviceError)
}

fn deflate(
    format: DeflateFormat,
    level: u8,
    input: &SgList,
    out: &SgList,
    scratch: &mut Scratch,
    stop: &Stop<'_>,
) -> Result<Outcome, Status> {
    let level = Compression::new(u32::from(level));
    let mut compressor = match format {
        DeflateFormat::Raw => Compress::new(level, false),
        DeflateFormat::Zlib => Compress::new(level, true),
        DeflateFormat::Gzip => Compress::new_gzip(level, 15),
    };
    let streamed = stream(
        input,
        out,
        scratch,
        Status::DeviceError,
        stop,
        |src, dst, at_end| {
            let (before_in, before_out) = (compressor.total_in(), compressor.total_out());
            let flush = if at_end {
                FlushCompress::Finish
            } else {
                FlushCompress::None
            };
            let status = compressor
                .compress(src, dst, flush)
                .map_err(|_| Status::DeviceError)?;
            Ok((
                progress(before_in, compressor.total_in())?,
                progress(before_out, compressor.total_out())?,
                status == flate2::Status::StreamEnd,
            ))
        },
    );
    // DEFLATE_COMPRESS has no result (§8.8).
    streamed.map(|done| Outcome::ok(done.written, &[]))
}

fn inflate(
    format: DeflateFormat,
    input: &SgList,
    out: &SgList,
    scratch: &mut Scratch,
    stop: &Stop<'_>,
) -> Result<Outcome, Status> {
    let mut decompressor = match format {
        DeflateFormat::Raw => Decompress::new(false),
        DeflateFormat::Zlib => Decompress::new(true),
        DeflateFormat::Gzip => Decompress::new_gzip(15),
    };
    let streamed = stream(input, out, scratch, Status::BadData, stop, |src, dst, _| {
        let (before_in, before_out) = (decompressor.total_in(), decompressor.total_out());
        let status = decompressor
            .decompress(src, dst, FlushDecompress::None)
            .map_err(|_| Status::BadData)?;
        Ok((
            progress(before_in, decompressor.total_in())?,
            progress(before_out, decompressor.total_out())?,
            status == flate2::Status::StreamEnd,
        ))
    });
    // The result is the length of the stream in the input (§8.9), which
    // lets a driver find the member after it in a multi-member gzip file.
    streamed.map(|done| Outcome::ok(done.written, &(done.consumed as u64).to_le_bytes()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::sg::OwnedBuffers;
    use virtio_accel_spec::op::GCM_IV_SIZE;

    /// A job that is never cancelled.
    fn never() -> bool {
        false
    }

    impl Scratch {
        /// Bytes allocated in the buffers.
        fn capacity(&self) -> usize {
            self.input.capacity() + self.aad.capacity() + self.output.capacity()
        }
    }

    /// AES-GCM-SEAL of `len` bytes (and as many bytes of AAD) with `scratch`.
    fn seal(len: usize, scratch: &mut Scratch) -> Outcome {
        let buffers = OwnedBuffers::new(vec![vec![1; len], vec![2; len], vec![0; len]]);
        let key = GcmKey::new([3; 32], [4; GCM_IV_SIZE]);
        let job = buffers
            .job(
                Operation::AesGcmSeal(Box::new(key)),
                &[0, 1],
                &[2],
                |_| 4096,
                0,
            )
            .unwrap();
        execute(&job.operation, job.inputs(), job.outputs(), scratch, &never)
    }

    #[test]
    fn a_huge_job_leaves_no_more_than_the_kept_scratch() {
        let mut scratch = Scratch::default();
        assert_eq!(seal(SCRATCH_KEEP / 2, &mut scratch).status, Status::Ok);
        let kept = scratch.capacity();
        assert!(
            kept >= SCRATCH_KEEP,
            "jobs up to the cap keep their buffers"
        );
        assert_eq!(seal(16 << 20, &mut scratch).status, Status::Ok);
        assert!(
            scratch.capacity() <= 3 * SCRATCH_KEEP,
            "{} bytes kept after a 16 MiB job",
            scratch.capacity()
        );
        assert_eq!(seal(SCRATCH_KEEP / 2, &mut scratch).status, Status::Ok);
        assert_eq!(scratch.capacity(), kept);
    }

    #[test]
    fn wipe_zeroes_the_filled_bytes_and_keeps_the_allocation() {
        let mut buffer = vec![0xa5u8; 4096];
        let start = buffer.as_ptr();
        wipe(&mut buffer);
        assert!(buffer.is_empty());
        assert_eq!(buffer.as_ptr(), start);
        assert!(buffer.capacity() >= 4096);
        // SAFETY: the 4096 bytes were initialised by `vec!` and the
        // allocation, still owned by `buffer`, was neither moved nor freed.
        let old = unsafe { std::slice::from_raw_parts(start, 4096) };
        assert!(old.iter().all(|&b| b == 0));
    }

    /// `operation` on `inputs` and outputs of `output_lens` bytes, asked
    /// `cancelled` between chunks.
    fn run(
        operation: Operation,
        inputs: Vec<Vec<u8>>,
        output_lens: &[usize],
        cancelled: &dyn Fn() -> bool,
    ) -> Outcome {
        let num_in = inputs.len();
        let buffers: Vec<Vec<u8>> = inputs
            .into_iter()
            .chain(output_lens.iter().map(|&len| vec![0; len]))
            .collect();
        let outputs: Vec<usize> = (num_in..buffers.len()).collect();
        let inputs: Vec<usize> = (0..num_in).collect();
        let job = OwnedBuffers::new(buffers)
            .job(operation, &inputs, &outputs, |_| 64 << 10, 0)
            .unwrap();
        let mut scratch = Scratch::default();
        execute(
            &job.operation,
            job.inputs(),
            job.outputs(),
            &mut scratch,
            cancelled,
        )
    }

    #[test]
    fn every_operation_stops_between_chunks_once_cancelled() {
        const SIZE: usize = 4 << 20;
        let key = Box::new(GcmKey::new([3; 32], [4; GCM_IV_SIZE]));
        let raw = DeflateFormat::Raw;
        let mut packer = Compress::new(Compression::new(6), false);
        let mut packed = vec![0; 64 << 10];
        packer
            .compress(&[0; SIZE], &mut packed, FlushCompress::Finish)
            .unwrap();
        packed.truncate(usize::try_from(packer.total_out()).unwrap());
        let data = || vec![0x5a; SIZE];
        let cases = [
            (Operation::Copy, vec![data()], vec![SIZE]),
            (Operation::Fill { pattern: 1 }, vec![], vec![SIZE]),
            (Operation::Compare, vec![data(), data()], vec![]),
            (Operation::Crc32c { seed: 0 }, vec![data()], vec![]),
            (Operation::Sha256, vec![data()], vec![]),
            (
                Operation::AesGcmSeal(key.clone()),
                vec![vec![1; 16], data()],
                vec![SIZE],
            ),
            (
                Operation::AesGcmOpen(key, [0; GCM_TAG_SIZE]),
                vec![vec![1; 16], data()],
                vec![SIZE],
            ),
            (
                Operation::DeflateCompress {
                    format: raw,
                    level: 1,
                },
                vec![data()],
                vec![SIZE],
            ),
            (
                Operation::DeflateDecompress { format: raw },
                vec![packed],
                vec![SIZE],
            ),
        ];
        for (operation, inputs, output_lens) in cases {
            let op = operation.op();
            let whole = run(operation.clone(), inputs.clone(), &output_lens, &never);
            assert_ne!(whole.status, CANCELLED, "{op:?} fails uncancelled");
            // Cancelled once the operation has done its first chunk: it
            // must ask again before its last.
            let asked = std::cell::Cell::new(0);
            let cancelled = || {
                asked.set(asked.get() + 1);
                asked.get() > 1
            };
            let stopped = run(operation, inputs, &output_lens, &cancelled);
            assert_eq!(stopped.status, CANCELLED, "{op:?} ran to its end");
            assert_eq!(asked.get(), 2, "{op:?} went on after the cancel");
        }
    }
}
