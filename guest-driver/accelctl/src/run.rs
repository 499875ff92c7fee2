//! `accelctl run OP`: one operation on the contents of files, the way a
//! script would use the device. Inputs larger than the device takes in one
//! request (`max_buffer_size`, §10) are cut into pieces where the operation
//! allows it: COPY piece by piece, CRC-32C by chaining the seed (§8.4), gzip
//! DEFLATE_COMPRESS as one member per piece (a multi-member file, which
//! `gzip -d` reads whole). The other operations take one request.

use accel_driver::{Buffer, Completion, DmaBuf, Request, Transport};
use thiserror::Error;
use virtio_accel_spec::op::{COMPARE_EQUAL, GCM_IV_SIZE, GCM_TAG_SIZE};
use virtio_accel_spec::{
    AesGcmParams, Crc32cParams, DeflateFormat, DeflateParams, FillParams, Op, Status,
};

/// Largest piece of input one request carries, below the device's limit.
pub const MAX_PIECE: usize = 16 << 20;

/// Errors of `run`.
#[derive(Debug, Error)]
pub enum Error {
    /// The device failed, or answered a status other than Ok.
    #[error(transparent)]
    Device(#[from] accel_driver::device::Error),
    /// DMA memory ran out or failed.
    #[error("DMA memory")]
    Memory(#[from] accel_driver::memory::Error),
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
    /// One stream decodes to more than one request may write.
    #[error("a stream decodes to more than {0} bytes, the most one request may write")]
    NoRoom(usize),
}

/// An operation with its parameters, as the command line gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Job {
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

impl Job {
    /// The operation.
    pub fn op(&self) -> Op {
        match self {
            Job::Copy => Op::Copy,
            Job::Fill { .. } => Op::Fill,
            Job::Compare => Op::Compare,
            Job::Crc32c { .. } => Op::Crc32c,
            Job::Sha256 => Op::Sha256,
            Job::Seal { .. } => Op::AesGcmSeal,
            Job::Open { .. } => Op::AesGcmOpen,
            Job::Deflate { .. } => Op::DeflateCompress,
            Job::Inflate { .. } => Op::DeflateDecompress,
        }
    }

    /// Input files the job reads.
    pub fn input_files(&self) -> usize {
        match self {
            Job::Fill { .. } => 0,
            Job::Compare => 2,
            _ => 1,
        }
    }

    /// DMA memory the job needs for inputs of `input_len` bytes in all.
    pub fn memory_needed(&self, input_len: usize) -> usize {
        let piece = input_len.min(MAX_PIECE);
        let data = match self {
            Job::Copy => 2 * piece,
            Job::Fill { len, .. } => (*len).min(MAX_PIECE),
            Job::Crc32c { .. } => piece,
            Job::Compare | Job::Sha256 => input_len,
            Job::Seal { aad, .. } | Job::Open { aad, .. } => 2 * input_len + aad.len(),
            Job::Deflate { .. } => 2 * piece + piece / 8 + 4096,
            Job::Inflate { max_output, .. } => input_len + max_output,
        };
        data + (8 << 20)
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
pub fn execute<T: Transport>(
    device: &accel_driver::Device<T>,
    queue: u16,
    job: &Job,
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
    let piece = limit.clamp(1, MAX_PIECE);
    let runner = Runner { device, queue };
    let too_large = |len: usize| Error::TooLarge {
        op: op.name(),
        len,
        limit,
    };
    let first = inputs.first().map_or(&[][..], Vec::as_slice);
    let single = || {
        if first.len() > limit {
            Err(too_large(first.len()))
        } else {
            Ok(())
        }
    };
    match job {
        Job::Copy => {
            let mut out = Vec::with_capacity(first.len());
            for chunk in pieces(first, piece) {
                let done = runner.run(Request::new(Op::Copy), &[chunk], &[chunk.len()])?;
                out.extend_from_slice(&done.outputs[0]);
            }
            Ok(Output::data(out, format!("copied {} bytes", first.len())))
        }
        Job::Fill { pattern, len } => {
            let mut out = Vec::with_capacity(*len);
            let params = FillParams {
                pattern: *pattern,
                ..Default::default()
            };
            while out.len() < *len {
                let n = (*len - out.len()).min(piece);
                let done = runner.run(Request::new(Op::Fill).params(&params), &[], &[n])?;
                out.extend_from_slice(&done.outputs[0]);
            }
            Ok(Output::data(
                out,
                format!("filled {len} bytes with {pattern:#04x}"),
            ))
        }
        Job::Compare => {
            let second = inputs.get(1).map_or(&[][..], Vec::as_slice);
            if first.len().max(second.len()) > limit {
                return Err(too_large(first.len().max(second.len())));
            }
            let done = runner.run(Request::new(Op::Compare), &[first, second], &[])?;
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
        Job::Crc32c { seed } => {
            let mut crc = *seed;
            for chunk in pieces(first, piece) {
                let params = Crc32cParams {
                    seed: crc.into(),
                    ..Default::default()
                };
                let done = runner.run(Request::new(Op::Crc32c).params(&params), &[chunk], &[])?;
                crc = done.completion.result_u32();
            }
            Ok(Output::summary(format!("{crc:08x}")))
        }
        Job::Sha256 => {
            single()?;
            let done = runner.run(Request::new(Op::Sha256), &[first], &[])?;
            Ok(Output::summary(hex(&done.completion.result()[..32])))
        }
        Job::Seal { key, iv, aad } => {
            single()?;
            let params = AesGcmParams {
                key: *key,
                iv: *iv,
                ..Default::default()
            };
            let request = Request::new(Op::AesGcmSeal).params(&params);
            let done = runner.run(request, &[aad, first], &[first.len()])?;
            let tag = hex(&done.completion.result()[..GCM_TAG_SIZE]);
            Ok(Output::data(done.written(), format!("tag {tag}")))
        }
        Job::Open { key, iv, tag, aad } => {
            single()?;
            let params = AesGcmParams {
                key: *key,
                iv: *iv,
                tag: *tag,
                ..Default::default()
            };
            let request = Request::new(Op::AesGcmOpen).params(&params);
            let done = runner.run(request, &[aad, first], &[first.len()])?;
            Ok(Output::data(done.written(), "authenticated".to_string()))
        }
        Job::Deflate { format, level } => {
            if *format != DeflateFormat::Gzip {
                single()?;
            }
            let params = DeflateParams {
                format: (*format).into(),
                level: *level,
                ..Default::default()
            };
            // The output room of a piece must fit the limit too.
            let piece = (piece.saturating_sub(DEFLATE_SLACK) / 9 * 8).max(1);
            let mut out = Vec::new();
            for chunk in pieces(first, piece) {
                let room = deflate_room(chunk.len());
                let request = Request::new(Op::DeflateCompress).params(&params);
                out.extend_from_slice(&runner.run(request, &[chunk], &[room])?.written());
            }
            let summary = format!("{} bytes -> {} bytes", first.len(), out.len());
            Ok(Output::data(out, summary))
        }
        Job::Inflate { format, max_output } => {
            if *format != DeflateFormat::Gzip {
                single()?;
            }
            let mut out = Vec::new();
            let mut at = 0usize;
            // One stream; for gzip, member after member until the input is
            // used up (the device reports each member's length, §8.9), each
            // member within one request's limit.
            loop {
                let window = &first[at..first.len().min(at.saturating_add(limit))];
                let room = max_output.saturating_sub(out.len()).min(limit);
                if room == 0 {
                    return Err(Error::OutputLimit(*max_output));
                }
                let (data, consumed) = match runner.inflate(*format, window, room) {
                    // The caller's budget, not the device's limit, ran out.
                    Err(Error::NoRoom(_)) if room < limit => {
                        return Err(Error::OutputLimit(*max_output))
                    }
                    decoded => decoded?,
                };
                out.extend_from_slice(&data);
                at += consumed;
                if *format != DeflateFormat::Gzip || at >= first.len() || consumed == 0 {
                    break;
                }
            }
            let summary = format!("{} bytes -> {} bytes", first.len(), out.len());
            Ok(Output::data(out, summary))
        }
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
    len + len / 8 + DEFLATE_SLACK
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
}

struct Runner<'a, T: Transport> {
    device: &'a accel_driver::Device<T>,
    queue: u16,
}

impl<T: Transport> Runner<'_, T> {
    /// Runs `request` with `inputs` copied into DMA buffers and outputs of
    /// `output_sizes` bytes; any status but Ok is an error.
    fn run(
        &self,
        mut request: Request,
        inputs: &[&[u8]],
        output_sizes: &[usize],
    ) -> Result<Done, Error> {
        let memory = self.device.memory();
        let mut buffers: Vec<DmaBuf> = Vec::with_capacity(inputs.len() + output_sizes.len());
        for input in inputs {
            let buf = memory.alloc(input.len().max(1))?;
            memory.write(&buf, 0, input)?;
            request = request.input(Buffer::Direct {
                gpa: buf.gpa(),
                len: input.len() as u64,
            });
            buffers.push(buf);
        }
        for &size in output_sizes {
            let buf = memory.alloc(size.max(1))?;
            request = request.output(Buffer::Direct {
                gpa: buf.gpa(),
                len: size as u64,
            });
            buffers.push(buf);
        }
        let completion = self.device.run(self.queue, &request)?.check()?;
        let outputs = buffers[inputs.len()..]
            .iter()
            .zip(output_sizes)
            .map(|(buf, &size)| memory.read_vec(buf, 0, size))
            .collect::<Result<_, _>>()?;
        Ok(Done {
            completion,
            outputs,
        })
    }
}

impl<T: Transport> Runner<'_, T> {
    /// Decodes the stream at the start of `input` into at most `max_output`
    /// bytes, growing the output buffer from four times the input on
    /// NoSpace: the decoded bytes and the stream's length in `input`.
    fn inflate(
        &self,
        format: DeflateFormat,
        input: &[u8],
        max_output: usize,
    ) -> Result<(Vec<u8>, usize), Error> {
        let params = DeflateParams {
            format: format.into(),
            ..Default::default()
        };
        let mut room = input.len().saturating_mul(4).clamp(4096, max_output.max(1));
        loop {
            let request = Request::new(Op::DeflateDecompress).params(&params);
            match self.run(request, &[input], &[room]) {
                Ok(done) => {
                    let consumed = usize::try_from(done.completion.result_u64())
                        .unwrap_or(usize::MAX)
                        .min(input.len());
                    return Ok((done.written(), consumed));
                }
                Err(Error::Device(e)) if e.status() == Some(Status::NoSpace) => {
                    if room >= max_output {
                        return Err(Error::NoRoom(max_output));
                    }
                    room = room.saturating_mul(2).min(max_output);
                }
                Err(e) => return Err(e),
            }
        }
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
        let job = Job::Deflate {
            format: DeflateFormat::Gzip,
            level: 6,
        };
        assert!(job.memory_needed(1 << 30) >= 2 * MAX_PIECE);
        assert!(job.memory_needed(1 << 30) < 64 << 20);
        assert!(Job::Copy.memory_needed(100) >= 200);
    }
}
