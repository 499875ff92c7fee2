// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `accelctl run OP`: one operation on the contents of files, the way a
//! script would use the device. Inputs larger than the device takes in one
//! request (`max_buffer_size`, §10) are cut into pieces where the operation
//! allows it: COPY piece by piece, CRC-32C by chaining the seed (§8.4), gzip
//! DEFLATE_COMPRESS as one member per piece (a multi-member file, which
//! `gzip -d` reads whole). The other operations take one request.

use accel_driver::Completion;

use crate::accelerator::{self, Accelerator, JobData};
use thiserror::Error;
use virtio_accel_spec::op::{OpParams, COMPARE_EQUAL, GCM_IV_SIZE, GCM_TAG_SIZE, PARAMS_SIZE};
use virtio_accel_spec::{
    AesGcmParams, Crc32cParams, DeflateFormat, DeflateParams, FillParams, Op, Status,
};

/// Largest piece of input one request carries, below the device's limit.
pub const MAX_PIECE: usize = 16 << 20;

/// DMA memory set aside for decompressed output (the daemon's default
/// `max_buffer_size`, the most one request may write).
const MAX_INFLATE_ROOM: usize = 64 << 20;

/// Errors of `run`.
#[derive(Debug, Error)]
pub enum Error {
    /// The device failed, or answered a status other than Ok.
    #[error(transparent)]
    Device(#[from] accel_driver::device::Error),
    /// DMA memory ran out or failed.
    #[error("DMA memory")]
    Memory(#[from] accel_driver::memory::Error),
    /// The kernel transport failed.
    #[error("kernel transport")]
    Kernel(#[from] accel_driver::kernel::Error),
    /// The operation needs more input files than were given, or fewer.
    #[error("{op} takes {expected} input file(s), {given} given")]
    Inputs {
        /// Operation name.
        op: &'static str,
        /// Inputs it takes.
        expected: usize,
        /// Inputs given.
        given: usize,
    },
    /// The input is larger than one request may carry and the operation
    /// cannot be cut into pieces.
    #[error("{op} on {len} bytes exceeds the device's limit of {limit} bytes per request")]
    TooLarge {
        /// Operation name.
        op: &'static str,
        /// Input length.
        len: usize,
        /// The device's `max_buffer_size`.
        limit: usize,
    },
    /// Decompressed data would exceed the output limit.
    #[error("decompressed data exceed {0} bytes (raise --max-output)")]
    OutputLimit(usize),
    /// One stream decodes to more than one request may write (over the
    /// kernel transport: than one object surely holds).
    #[error("a stream decodes to more than {0} bytes, the most one request may write")]
    NoRoom(usize),
    /// A gzip member is longer than one request may read (over the kernel
    /// transport: than one object surely holds).
    #[error("a gzip member is longer than {0} bytes, the most one request may read")]
    MemberTooLarge(usize),
    /// The device wrote less than the operation must write.
    #[error("{op}: the device wrote {written} of {expected} bytes")]
    ShortWrite {
        /// Operation name.
        op: &'static str,
        /// Bytes the device reported.
        written: u64,
        /// Bytes expected.
        expected: usize,
    },
    /// The device reported an impossible stream length for a decoded stream.
    #[error(
        "the device reported a stream of {reported} bytes in {input} bytes of input (spec §8.9)"
    )]
    StreamLength {
        /// The length reported.
        reported: u64,
        /// The input given.
        input: usize,
    },
}

impl From<accelerator::Error> for Error {
    fn from(error: accelerator::Error) -> Self {
        match error {
            accelerator::Error::Device(e) => Error::Device(e),
            accelerator::Error::Memory(e) => Error::Memory(e),
            accelerator::Error::Kernel(e) => Error::Kernel(e),
        }
    }
}

/// The parameter block of operations without parameters.
const NO_PARAMS: [u8; PARAMS_SIZE] = [0; PARAMS_SIZE];

/// An operation with its parameters, as the command line gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOp {
    /// COPY the input.
    Copy,
    /// FILL `len` bytes with `pattern`.
    Fill {
        /// Byte pattern.
        pattern: u8,
        /// Output length.
        len: usize,
    },
    /// COMPARE two inputs.
    Compare,
    /// CRC32C of the input, continuing from `seed`.
    Crc32c {
        /// CRC of the data before the input.
        seed: u32,
    },
    /// SHA-256 of the input.
    Sha256,
    /// AES-256-GCM seal of the input with `aad`.
    Seal {
        /// Key.
        key: [u8; 32],
        /// Nonce.
        iv: [u8; GCM_IV_SIZE],
        /// Additional authenticated data.
        aad: Vec<u8>,
    },
    /// AES-256-GCM open of the input.
    Open {
        /// Key.
        key: [u8; 32],
        /// Nonce.
        iv: [u8; GCM_IV_SIZE],
        /// Tag to check.
        tag: [u8; GCM_TAG_SIZE],
        /// Additional authenticated data.
        aad: Vec<u8>,
    },
    /// DEFLATE_COMPRESS.
    Deflate {
        /// Framing.
        format: DeflateFormat,
        /// Level 0 to 9.
        level: u8,
    },
    /// DEFLATE_DECOMPRESS, the output growing up to `max_output` bytes.
    Inflate {
        /// Framing.
        format: DeflateFormat,
        /// Largest output accepted.
        max_output: usize,
    },
}

impl RunOp {
    /// The operation.
    pub fn op(&self) -> Op {
        match self {
            RunOp::Copy => Op::Copy,
            RunOp::Fill { .. } => Op::Fill,
            RunOp::Compare => Op::Compare,
            RunOp::Crc32c { .. } => Op::Crc32c,
            RunOp::Sha256 => Op::Sha256,
            RunOp::Seal { .. } => Op::AesGcmSeal,
            RunOp::Open { .. } => Op::AesGcmOpen,
            RunOp::Deflate { .. } => Op::DeflateCompress,
            RunOp::Inflate { .. } => Op::DeflateDecompress,
        }
    }

    /// Input files the job reads.
    pub fn input_files(&self) -> usize {
        match self {
            RunOp::Fill { .. } => 0,
            RunOp::Compare => 2,
            _ => 1,
        }
    }

    /// DMA memory the job needs for inputs of `input_len` bytes in all.
    pub fn memory_needed(&self, input_len: usize) -> usize {
        let piece = input_len.min(MAX_PIECE);
        let data = match self {
            RunOp::Copy => 2 * piece,
            RunOp::Fill { len, .. } => (*len).min(MAX_PIECE),
            RunOp::Crc32c { .. } => piece,
            RunOp::Compare | RunOp::Sha256 => input_len,
            RunOp::Seal { aad, .. } | RunOp::Open { aad, .. } => {
                input_len.saturating_mul(2).saturating_add(aad.len())
            }
            RunOp::Deflate { .. } => piece.saturating_add(deflate_room(piece)),
            // One request reads at most the input and writes at most the
            // device's default limit.
            RunOp::Inflate { max_output, .. } => input_len
                .min(MAX_INFLATE_ROOM)
                .saturating_add((*max_output).min(MAX_INFLATE_ROOM)),
        };
        data.saturating_add(8 << 20)
    }
}

/// What a job produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Bytes for the output file, if the operation has an output.
    pub data: Option<Vec<u8>>,
    /// One line for the terminal: the result value or a summary.
    pub summary: String,
    /// False when COMPARE found a difference (the exit status of `cmp`).
    pub same: bool,
}

/// Runs `job` on `inputs` (the input files' contents) on request queue `queue`.
pub fn execute<D: Accelerator + ?Sized>(
    device: &D,
    queue: u16,
    job: &RunOp,
    inputs: &[Vec<u8>],
) -> Result<Output, Error> {
    let op = job.op();
    if inputs.len() != job.input_files() {
        return Err(Error::Inputs {
            op: op.name(),
            expected: job.input_files(),
            given: inputs.len(),
        });
    }
    let limit = usize::try_from(u64::from(device.config().max_buffer_size)).unwrap_or(usize::MAX);
    let runner = Runner {
        device,
        queue,
        op,
        limit,
    };
    let first = inputs.first().map_or(&[][..], Vec::as_slice);
    match job {
        RunOp::Copy => runner.copy(first),
        RunOp::Fill { pattern, len } => runner.fill(*pattern, *len),
        RunOp::Compare => runner.compare(first, inputs.get(1).map_or(&[][..], Vec::as_slice)),
        RunOp::Crc32c { seed } => runner.crc32c(*seed, first),
        RunOp::Sha256 => {
            runner.fits(first.len())?;
            let done = runner.run(Op::Sha256, NO_PARAMS, &[first], &[])?;
            Ok(Output::summary(hex(&done.completion.result()[..32])))
        }
        RunOp::Seal { key, iv, aad } => runner.gcm(key, iv, None, aad, first),
        RunOp::Open { key, iv, tag, aad } => runner.gcm(key, iv, Some(tag), aad, first),
        RunOp::Deflate { format, level } => runner.deflate(*format, *level, first),
        RunOp::Inflate { format, max_output } => runner.inflate(*format, *max_output, first),
    }
}

impl Output {
    fn data(data: Vec<u8>, summary: String) -> Self {
        Output {
            data: Some(data),
            summary,
            same: true,
        }
    }

    fn summary(summary: String) -> Self {
        Output {
            data: None,
            summary,
            same: true,
        }
    }
}

/// Fixed part of the worst-case growth of deflate output: framing and the
/// final block.
const DEFLATE_SLACK: usize = 1024;

/// Output room enough for any deflate stream of `len` input bytes (stored
/// blocks add 5 bytes per 64 KiB; one eighth is generous).
fn deflate_room(len: usize) -> usize {
    len.saturating_add(len / 8).saturating_add(DEFLATE_SLACK)
}

/// The largest input whose [`deflate_room`] fits in `limit` bytes.
fn deflate_piece(limit: usize) -> usize {
    (limit.saturating_sub(DEFLATE_SLACK) / 9 * 8).max(1)
}

/// `data` cut into pieces of at most `piece` bytes; one empty piece for empty data.
fn pieces(data: &[u8], piece: usize) -> impl Iterator<Item = &[u8]> {
    let empty = data.is_empty().then_some(&data[..0]);
    data.chunks(piece).chain(empty)
}

/// Lower-case hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A completed request and its outputs.
struct Done {
    completion: Completion,
    outputs: Vec<Vec<u8>>,
}

impl Done {
    /// The first `bytes_written` bytes of output 0.
    fn written(&self) -> Vec<u8> {
        let n = usize::try_from(self.completion.bytes_written()).unwrap_or(usize::MAX);
        self.outputs
            .first()
            .map(|out| out[..n.min(out.len())].to_vec())
            .unwrap_or_default()
    }

    /// Output 0, which the device must have written in full (COPY, FILL).
    fn written_exactly(&self, op: Op, expected: usize) -> Result<Vec<u8>, Error> {
        let written = self.completion.bytes_written();
        if written != expected as u64 {
            return Err(Error::ShortWrite {
                op: op.name(),
                written,
                expected,
            });
        }
        Ok(self.written())
    }
}

/// Runs the requests of one job on one queue.
struct Runner<'a, D: ?Sized> {
    device: &'a D,
    queue: u16,
    op: Op,
    /// The device's `max_buffer_size` (§10).
    limit: usize,
}

impl<D: Accelerator + ?Sized> Runner<'_, D> {
    /// Input pieces of operations that can be cut: what the transport
    /// surely takes in one buffer.
    fn piece(&self) -> usize {
        self.limit
            .min(self.device.largest_piece())
            .clamp(1, MAX_PIECE)
    }

    /// The most a decompression reads and writes per request: the
    /// device's limit, or less where the transport surely takes less in one
    /// buffer (the kernel's objects).
    fn window(&self) -> usize {
        self.limit.min(self.device.largest_piece()).max(1)
    }

    /// An error unless `len` bytes fit in one request.
    fn fits(&self, len: usize) -> Result<(), Error> {
        if len > self.limit {
            return Err(Error::TooLarge {
                op: self.op.name(),
                len,
                limit: self.limit,
            });
        }
        Ok(())
    }

    fn copy(&self, input: &[u8]) -> Result<Output, Error> {
        let mut out = Vec::with_capacity(input.len());
        for chunk in pieces(input, self.piece()) {
            let done = self.run(Op::Copy, NO_PARAMS, &[chunk], &[chunk.len()])?;
            out.extend_from_slice(&done.written_exactly(Op::Copy, chunk.len())?);
        }
        Ok(Output::data(out, format!("copied {} bytes", input.len())))
    }

    fn fill(&self, pattern: u8, len: usize) -> Result<Output, Error> {
        let params = FillParams {
            pattern,
            ..Default::default()
        };
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let n = (len - out.len()).min(self.piece());
            let done = self.run(Op::Fill, params.to_params(), &[], &[n])?;
            out.extend_from_slice(&done.written_exactly(Op::Fill, n)?);
        }
        Ok(Output::data(
            out,
            format!("filled {len} bytes with {pattern:#04x}"),
        ))
    }

    fn compare(&self, first: &[u8], second: &[u8]) -> Result<Output, Error> {
        self.fits(first.len().max(second.len()))?;
        let done = self.run(Op::Compare, NO_PARAMS, &[first, second], &[])?;
        let at = done.completion.result_u64();
        let (summary, same) = if at == COMPARE_EQUAL {
            ("equal".to_string(), true)
        } else {
            (format!("differ at byte {at}"), false)
        };
        Ok(Output {
            data: None,
            summary,
            same,
        })
    }

    /// CRC-32C piece by piece, each continuing from the previous one (§8.4).
    fn crc32c(&self, seed: u32, input: &[u8]) -> Result<Output, Error> {
        let mut crc = seed;
        for chunk in pieces(input, self.piece()) {
            let params = Crc32cParams {
                seed: crc.into(),
                ..Default::default()
            };
            let done = self.run(Op::Crc32c, params.to_params(), &[chunk], &[])?;
            crc = done.completion.result_u32();
        }
        Ok(Output::summary(format!("{crc:08x}")))
    }

    /// AES-256-GCM seal (no `tag`) or open (checking `tag`).
    fn gcm(
        &self,
        key: &[u8; 32],
        iv: &[u8; GCM_IV_SIZE],
        tag: Option<&[u8; GCM_TAG_SIZE]>,
        aad: &[u8],
        input: &[u8],
    ) -> Result<Output, Error> {
        self.fits(input.len().max(aad.len()))?;
        let params = AesGcmParams {
            key: *key,
            iv: *iv,
            tag: tag.copied().unwrap_or_default(),
            ..Default::default()
        };
        let done = self.run(self.op, params.to_params(), &[aad, input], &[input.len()])?;
        let summary = match tag {
            None => format!("tag {}", hex(&done.completion.result()[..GCM_TAG_SIZE])),
            Some(_) => "authenticated".to_string(),
        };
        Ok(Output::data(done.written(), summary))
    }

    /// One stream in one request; gzip larger than a request becomes one
    /// member per piece (RFC 1952 allows several members in a file).
    fn deflate(&self, format: DeflateFormat, level: u8, input: &[u8]) -> Result<Output, Error> {
        let piece = deflate_piece(self.piece());
        if format != DeflateFormat::Gzip && input.len() > piece {
            return Err(Error::TooLarge {
                op: self.op.name(),
                len: input.len(),
                limit: piece,
            });
        }
        let params = DeflateParams {
            format: format.into(),
            level,
            ..Default::default()
        };
        let mut out = Vec::new();
        for chunk in pieces(input, piece) {
            let room = deflate_room(chunk.len());
            let done = self.run(Op::DeflateCompress, params.to_params(), &[chunk], &[room])?;
            out.extend_from_slice(&done.written());
        }
        let summary = format!("{} bytes -> {} bytes", input.len(), out.len());
        Ok(Output::data(out, summary))
    }

    /// One stream; for gzip, member after member until the input is used up,
    /// each found from the length the device reports for the previous one
    /// (§8.9). Zero bytes after the last member are padding, as for `gzip -d`.
    fn inflate(
        &self,
        format: DeflateFormat,
        max_output: usize,
        input: &[u8],
    ) -> Result<Output, Error> {
        if format != DeflateFormat::Gzip {
            self.fits(input.len())?;
        }
        let mut out = Vec::new();
        let mut at = 0usize;
        let trailing = loop {
            let window = &input[at..input.len().min(at.saturating_add(self.window()))];
            let budget = max_output.saturating_sub(out.len());
            let (data, consumed) = self.inflate_one(format, window, budget)?;
            out.extend_from_slice(&data);
            at += consumed;
            let rest = &input[at..];
            if format != DeflateFormat::Gzip || rest.iter().all(|&b| b == 0) {
                break rest.len();
            }
        };
        let mut summary = format!("{} bytes -> {} bytes", input.len(), out.len());
        if trailing > 0 {
            summary.push_str(&format!(" ({trailing} bytes after the stream ignored)"));
        }
        Ok(Output::data(out, summary))
    }

    /// Decodes the stream at the start of `window` into at most `budget`
    /// bytes (and at most [`window`](Self::window)), the output buffer growing
    /// from four times the input on NoSpace: the decoded bytes and the
    /// stream's length in `window`.
    fn inflate_one(
        &self,
        format: DeflateFormat,
        window: &[u8],
        budget: usize,
    ) -> Result<(Vec<u8>, usize), Error> {
        let params = DeflateParams {
            format: format.into(),
            ..Default::default()
        };
        let most = budget.min(self.window());
        if most == 0 {
            return Err(Error::OutputLimit(budget));
        }
        let mut room = window.len().saturating_mul(4).max(4096).min(most);
        loop {
            let error = match self.run(
                Op::DeflateDecompress,
                params.to_params(),
                &[window],
                &[room],
            ) {
                Ok(done) => return Ok((done.written(), stream_length(&done, window.len())?)),
                Err(error) => error,
            };
            let status = match &error {
                Error::Device(e) => e.status(),
                _ => None,
            };
            match status {
                Some(Status::NoSpace) if room < most => room = room.saturating_mul(2).min(most),
                Some(Status::NoSpace) if most < self.window() => {
                    return Err(Error::OutputLimit(budget))
                }
                Some(Status::NoSpace) => return Err(Error::NoRoom(self.window())),
                Some(Status::BadData) if window.len() == self.window() => {
                    return Err(Error::MemberTooLarge(self.window()))
                }
                _ => return Err(error),
            }
        }
    }

    /// Runs `op` with `params` on `inputs` (copied in) into outputs of
    /// `output_sizes` bytes (copied out), in the transport's default
    /// placement; any status but Ok is an error.
    fn run(
        &self,
        op: Op,
        params: [u8; PARAMS_SIZE],
        inputs: &[&[u8]],
        output_sizes: &[usize],
    ) -> Result<Done, Error> {
        let job = JobData {
            op,
            params,
            inputs,
            output_sizes,
        };
        let placement = self.device.placements()[0];
        let done = self.device.execute(self.queue, &job, placement)?;
        Ok(Done {
            completion: done.completion.check()?,
            outputs: done.outputs,
        })
    }
}

/// The stream length a DEFLATE_DECOMPRESS reported (§8.9), which must lie
/// within the input: a device that leaves it zero would make a multi-member
/// file look like its first member.
fn stream_length(done: &Done, input_len: usize) -> Result<usize, Error> {
    let reported = done.completion.result_u64();
    match usize::try_from(reported) {
        Ok(consumed) if consumed > 0 && consumed <= input_len => Ok(consumed),
        _ => Err(Error::StreamLength {
            reported,
            input: input_len,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_the_data_once() {
        let data: Vec<u8> = (0..=255).collect();
        let cut: Vec<&[u8]> = pieces(&data, 100).collect();
        assert_eq!(
            cut.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [100, 100, 56]
        );
        assert_eq!(cut.concat(), data);
        assert_eq!(pieces(&[], 100).count(), 1);
    }

    #[test]
    fn memory_estimate_holds_a_piece_and_its_output() {
        let job = RunOp::Deflate {
            format: DeflateFormat::Gzip,
            level: 6,
        };
        assert!(job.memory_needed(1 << 30) >= 2 * MAX_PIECE);
        assert!(job.memory_needed(1 << 30) < 64 << 20);
        assert!(RunOp::Copy.memory_needed(100) >= 200);
    }
}
