//! One job per operation, described once and run two ways on the same guest
//! buffers: through the daemon (as a driver [`Request`]) or straight on an
//! engine (as a [`Job`] on the buffers' host addresses). The benchmark and the
//! demo use it, so both paths do the same work on the same bytes.

use std::ptr::NonNull;
use std::sync::Arc;

use accel_driver::{Buffer, DmaBuf, DmaMemory, Request};
use vhost_user_accel::engine::Job;
use vhost_user_accel::ops::Operation;
use vhost_user_accel::sg::{HostSeg, Keepalive, SgList};
use virtio_accel_spec::op::{OpParams, PARAMS_SIZE};
use virtio_accel_spec::{AesGcmParams, Crc32cParams, DeflateFormat, DeflateParams, FillParams, Op};

use crate::data::TestRng;
use crate::reference;

/// Key, nonce and additional data of the AES-GCM workloads.
const GCM_KEY: [u8; 32] = [0x42; 32];
const GCM_IV: [u8; 12] = [7; 12];
const GCM_AAD: &[u8] = b"vhost-user-accel benchmark aad!!";

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
    /// A job of `op` on `size` bytes of data from `rng`.
    pub fn new(op: Op, size: usize, rng: &mut TestRng) -> Workload {
        let text = rng.text(size);
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
            Op::Copy => ([0; PARAMS_SIZE], vec![text], vec![size]),
            Op::Fill => (
                FillParams {
                    pattern: 0x5a,
                    ..Default::default()
                }
                .to_params(),
                vec![],
                vec![size],
            ),
            Op::Compare => ([0; PARAMS_SIZE], vec![text.clone(), text], vec![]),
            Op::Crc32c => (Crc32cParams::default().to_params(), vec![text], vec![]),
            Op::Sha256 => ([0; PARAMS_SIZE], vec![text], vec![]),
            Op::AesGcmSeal => (
                gcm([0; 16]).to_params(),
                vec![GCM_AAD.to_vec(), text],
                vec![size],
            ),
            Op::AesGcmOpen => {
                let (cipher, tag) = reference::aes256_gcm_seal(&GCM_KEY, &GCM_IV, GCM_AAD, &text);
                (
                    gcm(tag).to_params(),
                    vec![GCM_AAD.to_vec(), cipher],
                    vec![size],
                )
            }
            Op::DeflateCompress => (
                deflate(6).to_params(),
                vec![text],
                vec![size + size / 8 + 1024],
            ),
            Op::DeflateDecompress => {
                let packed = reference::compress(DeflateFormat::Gzip, 6, &text);
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

    /// The job as a request on fresh guest buffers: the request and the
    /// buffers it uses (keep them alive while it runs).
    pub fn request(
        &self,
        memory: &DmaMemory,
    ) -> Result<(Request, Vec<DmaBuf>), accel_driver::memory::Error> {
        let mut request = Request::new(self.op).raw_params(self.params);
        let mut buffers = Vec::new();
        for input in &self.inputs {
            let buf = memory.alloc(input.len().max(1))?;
            memory.write(&buf, 0, input)?;
            request = request.input(Buffer::Direct {
                gpa: buf.gpa(),
                len: input.len() as u64,
            });
            buffers.push(buf);
        }
        for &size in &self.output_sizes {
            let buf = memory.alloc(size.max(1))?;
            request = request.output(Buffer::Direct {
                gpa: buf.gpa(),
                len: size as u64,
            });
            buffers.push(buf);
        }
        Ok((request, buffers))
    }

    /// The same job for an engine queue, on the guest buffers that
    /// [`Workload::request`] made (`buffers`: inputs then outputs), reached
    /// through their host addresses as the daemon reaches them. `None` if a
    /// buffer is not in `memory`.
    pub fn job(&self, memory: &DmaMemory, buffers: &[DmaBuf], cookie: u64) -> Option<Job> {
        let sizes = self
            .inputs
            .iter()
            .map(Vec::len)
            .chain(self.output_sizes.iter().copied());
        let mut lists = Vec::with_capacity(buffers.len());
        for (buf, len) in buffers.iter().zip(sizes) {
            let mut list = SgList::new();
            if len > 0 {
                let addr = NonNull::new(memory.host_address(buf.gpa())? as *mut u8)?;
                // SAFETY: the buffer is `len` bytes of `memory`'s mapping, which
                // the job's keepalive (a handle on `memory`) keeps mapped.
                list.push(unsafe { HostSeg::new(addr, len) })?;
            }
            lists.push(list);
        }
        let outputs = lists.split_off(self.inputs.len());
        Some(Job {
            operation: Operation::decode(self.op, &self.params).ok()?,
            inputs: lists,
            outputs,
            cookie,
            keepalive: Arc::new(memory.clone()) as Keepalive,
        })
    }
}
