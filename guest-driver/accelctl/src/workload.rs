// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! One job per operation on given data: its parameters, inputs and output
//! sizes, and the request that runs it on fresh guest buffers. `accelctl bench`
//! and `accelctl selftest` use it, and so does the foundation benchmark, which
//! also runs the same jobs on an engine directly: one description, so every
//! path does the same work on the same bytes.

use accel_driver::{Buffer, DmaBuf, DmaMemory, Request};
use virtio_accel_spec::op::{OpParams, PARAMS_SIZE};
use virtio_accel_spec::{AesGcmParams, Crc32cParams, DeflateFormat, DeflateParams, FillParams, Op};

use crate::reference;

/// Key of the AES-GCM workloads.
pub const GCM_KEY: [u8; 32] = [0x42; 32];
/// Nonce of the AES-GCM workloads.
pub const GCM_IV: [u8; 12] = [7; 12];
/// Additional authenticated data of the AES-GCM workloads.
pub const GCM_AAD: &[u8] = b"vhost-user-accel benchmark aad!!";
/// Pattern of the FILL workloads.
pub const FILL_PATTERN: u8 = 0x5a;
/// Compression level of the deflate workloads.
pub const DEFLATE_LEVEL: u8 = 6;

/// The inputs, parameters and output sizes of one job.
#[derive(Debug, Clone)]
pub struct Workload {
    /// The operation.
    pub op: Op,
    /// Its parameter block.
    pub params: [u8; PARAMS_SIZE],
    /// Input buffers, in the operation's order.
    pub inputs: Vec<Vec<u8>>,
    /// Sizes of the output buffers.
    pub output_sizes: Vec<usize>,
    /// Bytes the job processes, for throughput figures.
    pub bytes: usize,
}

impl Workload {
    /// A job of `op` on `data` (gzip framing for deflate; for inflate and
    /// AES-GCM open, `data` is compressed or sealed first, in software).
    pub fn new(op: Op, data: Vec<u8>) -> Workload {
        let size = data.len();
        let deflate = |level| DeflateParams {
            format: DeflateFormat::Gzip.into(),
            level,
            ..Default::default()
        };
        let gcm = |tag| AesGcmParams {
            key: GCM_KEY,
            iv: GCM_IV,
            tag,
            ..Default::default()
        };
        let (params, inputs, output_sizes) = match op {
            Op::Copy => ([0; PARAMS_SIZE], vec![data], vec![size]),
            Op::Fill => (
                FillParams {
                    pattern: FILL_PATTERN,
                    ..Default::default()
                }
                .to_params(),
                vec![],
                vec![size],
            ),
            Op::Compare => ([0; PARAMS_SIZE], vec![data.clone(), data], vec![]),
            Op::Crc32c => (Crc32cParams::default().to_params(), vec![data], vec![]),
            Op::Sha256 => ([0; PARAMS_SIZE], vec![data], vec![]),
            Op::AesGcmSeal => (
                gcm([0; 16]).to_params(),
                vec![GCM_AAD.to_vec(), data],
                vec![size],
            ),
            Op::AesGcmOpen => {
                let (cipher, tag) = reference::aes256_gcm_seal(&GCM_KEY, &GCM_IV, GCM_AAD, &data);
                (
                    gcm(tag).to_params(),
                    vec![GCM_AAD.to_vec(), cipher],
                    vec![size],
                )
            }
            Op::DeflateCompress => (
                deflate(DEFLATE_LEVEL).to_params(),
                vec![data],
                vec![size + size / 8 + 1024],
            ),
            Op::DeflateDecompress => {
                let packed = reference::compress(DeflateFormat::Gzip, DEFLATE_LEVEL, &data);
                (deflate(0).to_params(), vec![packed], vec![size])
            }
        };
        Workload {
            op,
            params,
            inputs,
            output_sizes,
            bytes: size,
        }
    }

    /// Guest memory the job's buffers take, with room for allocation slack.
    pub fn footprint(&self) -> usize {
        let bytes: usize = self.inputs.iter().map(Vec::len).sum::<usize>()
            + self.output_sizes.iter().sum::<usize>();
        bytes + 4096 * (self.inputs.len() + self.output_sizes.len())
    }

    /// The job as a request on fresh guest buffers: the request and the
    /// buffers it uses (inputs then outputs; keep them alive while it runs).
    pub fn request(
        &self,
        memory: &DmaMemory,
    ) -> Result<(Request, Vec<DmaBuf>), accel_driver::memory::Error> {
        let inputs: Vec<&[u8]> = self.inputs.iter().map(Vec::as_slice).collect();
        let request = Request::new(self.op).raw_params(self.params);
        with_direct_buffers(memory, request, &inputs, &self.output_sizes)
    }
}

/// `request` with `inputs` copied into fresh guest buffers and outputs of
/// `output_sizes` bytes, all direct (the SVA model, §1.3): the request and
/// the buffers (inputs then outputs; keep them alive while it runs).
pub fn with_direct_buffers(
    memory: &DmaMemory,
    mut request: Request,
    inputs: &[&[u8]],
    output_sizes: &[usize],
) -> Result<(Request, Vec<DmaBuf>), accel_driver::memory::Error> {
    let mut buffers = Vec::with_capacity(inputs.len() + output_sizes.len());
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
    Ok((request, buffers))
}
