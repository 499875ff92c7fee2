// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `accelctl selftest`: every operation the device offers, on seeded random
//! and text data of awkward sizes, checked against [`crate::reference`];
//! the error statuses of tampered inputs; then the transport's own checks
//! ([`TransportChecks`]): over the virtqueues, objects (§7.1, §7.2) and
//! fences across queues (§6.2); over the kernel transport, GEM objects,
//! dma-bufs, sync_files and syncobjs (`kernel` below). Each check is
//! reported as it finishes, and so is each that does not run, with the
//! reason: an operation the device does not offer, a size over its
//! `max_buffer_size`, objects or fences not negotiated (a VMM that does not
//! pass the feature on), or a check that has no meaning on the transport.

mod kernel;

use accel_driver::{Buffer, Completion, Device, DmaBuf, Request, Transport};
use thiserror::Error;
use virtio_accel_spec::op::{OpParams, COMPARE_EQUAL, GCM_TAG_SIZE};
use virtio_accel_spec::{
    AesGcmParams, Crc32cParams, DeflateFormat, DeflateParams, Fence, FillParams, Op, Status,
    VIRTIO_ACCEL_F_FENCES, VIRTIO_ACCEL_F_OBJECTS,
};

use crate::accelerator::{self, Accelerator, JobData, JobPlacement};
use crate::data::DataSource;
use crate::reference;

/// Job sizes: empty, tiny, unaligned, page-sized, page-crossing, large.
pub const SIZES: &[usize] = &[0, 1, 63, 4096, 3 * 4096 + 17, 65536, (1 << 20) - 3];

/// Errors that stop the self-test (a device that answers wrongly fails a
/// check instead).
#[derive(Debug, Error)]
pub enum Error {
    /// The transport or the device stopped working.
    #[error("device")]
    Device(#[source] accel_driver::device::Error),
    /// DMA memory ran out or failed.
    #[error("DMA memory")]
    Memory(#[from] accel_driver::memory::Error),
    /// The kernel transport failed.
    #[error("kernel transport")]
    Kernel(#[from] accel_driver::kernel::Error),
}

impl From<accel_driver::device::Error> for Error {
    fn from(error: accel_driver::device::Error) -> Self {
        Error::Device(error)
    }
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

/// How one check ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckOutcome {
    /// It ran, and the device's results matched the reference.
    Passed,
    /// It ran, and they did not: what went wrong.
    Failed(String),
    /// It did not run: why.
    Skipped(String),
    /// It has no meaning on this transport: why (not a failure, even with
    /// `--strict`).
    NotApplicable(String),
}

/// One check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// How it ended.
    pub outcome: CheckOutcome,
}

/// All checks of a run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The checks, in order, those that did not run included.
    pub checks: Vec<Check>,
}

impl Report {
    /// Whether no check failed and, if `strict`, every check ran.
    pub fn passed(&self, strict: bool) -> bool {
        self.failures() == 0 && (!strict || self.skips() == 0)
    }

    /// Number of failed checks.
    pub fn failures(&self) -> usize {
        self.count(|outcome| matches!(outcome, CheckOutcome::Failed(_)))
    }

    /// Number of checks that did not run.
    pub fn skips(&self) -> usize {
        self.count(|outcome| matches!(outcome, CheckOutcome::Skipped(_)))
    }

    /// Number of checks that have no meaning on the transport.
    pub fn not_applicable(&self) -> usize {
        self.count(|outcome| matches!(outcome, CheckOutcome::NotApplicable(_)))
    }

    fn count(&self, which: impl Fn(&CheckOutcome) -> bool) -> usize {
        self.checks.iter().filter(|c| which(&c.outcome)).count()
    }
}

/// What a check compares: `Ok(())` or a description of the difference.
type Verdict = Result<(), String>;

fn outcome(verdict: Verdict) -> CheckOutcome {
    verdict.map_or_else(CheckOutcome::Failed, |()| CheckOutcome::Passed)
}

fn expect(ok: bool, what: impl FnOnce() -> String) -> Verdict {
    if ok {
        Ok(())
    } else {
        Err(what())
    }
}

/// A job's completion and its output buffers' contents.
struct Finished {
    completion: Completion,
    outputs: Vec<Vec<u8>>,
}

impl Finished {
    /// The completion must be Ok.
    fn ok(&self) -> Verdict {
        match self.completion.check() {
            Ok(_) => Ok(()),
            Err(e) => Err(format!("device answered {e}")),
        }
    }

    /// The completion must carry `status`.
    fn status(&self, status: Status) -> Verdict {
        let got = self.completion.status();
        expect(got == Ok(status), || {
            format!("expected {status:?}, got {got:?}")
        })
    }

    /// The first `bytes_written` bytes of output 0.
    fn written(&self) -> &[u8] {
        let n = usize::try_from(self.completion.bytes_written()).unwrap_or(usize::MAX);
        self.outputs
            .first()
            .map_or(&[][..], |out| &out[..n.min(out.len())])
    }
}

/// The checks a transport adds after those of the operations.
pub trait TransportChecks: Accelerator + Sized {
    /// Runs them on `test`, reporting each to `on_check`.
    fn transport_checks(
        test: &mut SelfTest<'_, Self>,
        on_check: &mut dyn FnMut(&Check),
    ) -> Result<(), Error>;
}

/// Over the virtqueues: objects, and fences the driver predicts and names.
impl<T: Transport> TransportChecks for Device<T> {
    fn transport_checks(
        test: &mut SelfTest<'_, Self>,
        on_check: &mut dyn FnMut(&Check),
    ) -> Result<(), Error> {
        let objects = test.enabled(VIRTIO_ACCEL_F_OBJECTS, "OBJECTS");
        let name = "objects: create, use, destroy";
        test.gated(name, &objects, SelfTest::check_objects, on_check)?;
        let fences = test.enabled(VIRTIO_ACCEL_F_FENCES, "FENCES");
        let name = "fences: a batch chained by the fences submit predicts";
        test.gated(name, &fences, SelfTest::check_fence_chain, on_check)?;
        let name = "fences: dependencies across queues, query, wait";
        test.gated(name, &fences, SelfTest::check_fences, on_check)
    }
}

/// Runs the self-test on `device`, calling `on_check` as each check ends.
pub struct SelfTest<'a, D> {
    device: &'a D,
    data: &'a mut DataSource,
    report: Report,
    /// Where the operation checks put their bytes.
    placement: JobPlacement,
}

impl<'a, D: TransportChecks> SelfTest<'a, D> {
    /// A self-test of `device` with inputs from `data`.
    pub fn new(device: &'a D, data: &'a mut DataSource) -> Self {
        SelfTest {
            device,
            data,
            report: Report::default(),
            placement: device.placements()[0],
        }
    }

    /// Runs every check; `on_check` sees each as it ends (or is skipped).
    /// Where the transport offers several placements of the bytes, the
    /// operation checks take them in turn, each named in the check.
    pub fn run(mut self, mut on_check: impl FnMut(&Check)) -> Result<Report, Error> {
        let offered = u32::from(self.device.config().ops);
        let placements = self.device.placements();
        for (op_index, &op) in Op::ALL.iter().enumerate() {
            for (size_index, &size) in SIZES.iter().enumerate() {
                self.placement = placements[(op_index + size_index) % placements.len()];
                let mut name = format!("{} {size} B", op.name());
                if placements.len() > 1 {
                    name.push_str(&format!(" in {}", self.placement));
                }
                let outcome = if offered & op.capability() == 0 {
                    CheckOutcome::Skipped("the device does not offer the operation".into())
                } else if let Some(why) = self.too_large(size) {
                    CheckOutcome::Skipped(why)
                } else if let Some(why) = self.device.unavailable(self.placement) {
                    CheckOutcome::Skipped(why)
                } else {
                    match self.check_op(op, size) {
                        Ok(verdict) => outcome(verdict),
                        Err(Error::Kernel(e @ accel_driver::kernel::Error::Fragmented { .. })) => {
                            CheckOutcome::Skipped(e.to_string())
                        }
                        Err(e) => return Err(e),
                    }
                };
                self.record(name, outcome, &mut on_check);
            }
        }
        D::transport_checks(&mut self, &mut on_check)?;
        Ok(self.report)
    }

    /// Why a job of `size` bytes (deflate output room included) does not
    /// fit the device's `max_buffer_size` (§10), if it does not.
    fn too_large(&self, size: usize) -> Option<String> {
        let limit = u64::from(self.device.config().max_buffer_size);
        let needed = (size + size / 8 + 1024) as u64;
        (needed > limit)
            .then(|| format!("needs {needed} B, over the device's max_buffer_size of {limit} B"))
    }

    /// `wanted` bytes, or fewer (at least 1) if the device's
    /// `max_buffer_size` (§10) is smaller.
    fn buffer_len(&self, wanted: usize) -> usize {
        let limit = u64::from(self.device.config().max_buffer_size);
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        wanted.min(limit).max(1)
    }

    /// `Ok` if capability `bit` (`name`) is enabled, else the skip.
    fn enabled(&self, bit: u32, name: &str) -> Result<(), CheckOutcome> {
        if self.device.has_capability(bit) {
            return Ok(());
        }
        Err(CheckOutcome::Skipped(format!(
            "{name} is not enabled: neither negotiated as VIRTIO_ACCEL_F_{name} nor enabled \
             with CAPABILITIES (the device does not have it, or the driver did not ask for it)"
        )))
    }

    /// Runs `check` unless `gate` skips it, and records it as `name`.
    fn gated(
        &mut self,
        name: &str,
        gate: &Result<(), CheckOutcome>,
        check: fn(&mut Self) -> Result<Verdict, Error>,
        on_check: &mut dyn FnMut(&Check),
    ) -> Result<(), Error> {
        let ended = match gate {
            Ok(()) => outcome(check(self)?),
            Err(skipped) => skipped.clone(),
        };
        self.record(name.into(), ended, on_check);
        Ok(())
    }

    fn record(&mut self, name: String, outcome: CheckOutcome, on_check: &mut dyn FnMut(&Check)) {
        let check = Check { name, outcome };
        on_check(&check);
        self.report.checks.push(check);
    }

    /// Runs `op` with `params` on `inputs` into outputs of `output_sizes`
    /// bytes (which start as a pattern no operation leaves by accident), on
    /// request queue `queue`, the bytes in the current placement.
    fn exec(
        &self,
        queue: u16,
        op: Op,
        params: [u8; 64],
        inputs: &[&[u8]],
        output_sizes: &[usize],
    ) -> Result<Finished, Error> {
        let job = JobData {
            op,
            params,
            inputs,
            output_sizes,
        };
        let done = self.device.execute(queue, &job, self.placement)?;
        Ok(Finished {
            completion: done.completion,
            outputs: done.outputs,
        })
    }

    fn check_op(&mut self, op: Op, size: usize) -> Result<Verdict, Error> {
        match op {
            Op::Copy => self.check_copy(size),
            Op::Fill => self.check_fill(size),
            Op::Compare => self.check_compare(size),
            Op::Crc32c => self.check_crc32c(size),
            Op::Sha256 => self.check_sha256(size),
            Op::AesGcmSeal | Op::AesGcmOpen => self.check_gcm(op, size),
            Op::DeflateCompress => self.check_deflate(size),
            Op::DeflateDecompress => self.check_inflate(size),
        }
    }

    fn check_copy(&mut self, size: usize) -> Result<Verdict, Error> {
        let data = self.data.random(size);
        let done = self.exec(0, Op::Copy, [0; 64], &[&data], &[size])?;
        Ok(done.ok().and_then(|()| {
            expect(done.written() == data.as_slice(), || {
                "copy differs from its source".into()
            })
        }))
    }

    fn check_fill(&mut self, size: usize) -> Result<Verdict, Error> {
        let pattern = self.data.random(1).first().copied().unwrap_or(0x5a);
        let params = FillParams {
            pattern,
            ..Default::default()
        };
        let done = self.exec(0, Op::Fill, params.to_params(), &[], &[size])?;
        Ok(done.ok().and_then(|()| {
            let out = &done.outputs[0];
            let written = done.completion.bytes_written();
            expect(written == size as u64, || {
                format!("bytes_written {written}, expected {size}")
            })?;
            expect(out.iter().all(|&b| b == pattern), || {
                format!("output is not all {pattern:#04x}")
            })
        }))
    }

    fn check_compare(&mut self, size: usize) -> Result<Verdict, Error> {
        let data = self.data.random(size);
        let mut other = data.clone();
        if let Some(byte) = other.get_mut(self.data.below(size)) {
            *byte ^= 0x40;
        }
        for b in [&data, &other] {
            let done = self.exec(0, Op::Compare, [0; 64], &[&data, b], &[])?;
            let want = reference::compare(&data, b);
            let verdict = done.ok().and_then(|()| {
                let got = done.completion.result_u64();
                expect(got == want, || {
                    format!("result {got:#x}, expected {want:#x}")
                })
            });
            if verdict.is_err() {
                return Ok(verdict);
            }
        }
        Ok(expect(
            size == 0 || reference::compare(&data, &other) != COMPARE_EQUAL,
            || "the altered copy compared equal in software".into(),
        ))
    }

    fn check_crc32c(&mut self, size: usize) -> Result<Verdict, Error> {
        let data = self.data.text(size);
        let seed = u32::from_le_bytes([0x12, 0x34, 0x56, 0x78]);
        for seed in [0, seed] {
            let params = Crc32cParams {
                seed: seed.into(),
                ..Default::default()
            };
            let done = self.exec(0, Op::Crc32c, params.to_params(), &[&data], &[])?;
            let want = reference::crc32c(seed, &data);
            let verdict = done.ok().and_then(|()| {
                let got = done.completion.result_u32();
                expect(got == want, || {
                    format!("seed {seed:#x}: {got:#010x}, expected {want:#010x}")
                })
            });
            if verdict.is_err() {
                return Ok(verdict);
            }
        }
        Ok(Ok(()))
    }

    fn check_sha256(&mut self, size: usize) -> Result<Verdict, Error> {
        let data = self.data.random(size);
        let done = self.exec(0, Op::Sha256, [0; 64], &[&data], &[])?;
        let want = reference::sha256(&data);
        Ok(done.ok().and_then(|()| {
            expect(done.completion.result()[..32] == want, || {
                "digest differs".into()
            })
        }))
    }

    /// Seal and open with a random key: the ciphertext and tag must match the
    /// reference, opening must give the plaintext back, and a tampered tag
    /// must fail with AuthFailed.
    fn check_gcm(&mut self, op: Op, size: usize) -> Result<Verdict, Error> {
        let mut key = [0; 32];
        key.copy_from_slice(&self.data.random(32));
        let mut iv = [0; 12];
        iv.copy_from_slice(&self.data.random(12));
        let aad_len = self.data.below(40);
        let aad = self.data.random(aad_len);
        let plain = self.data.random(size);
        let (cipher, tag) = reference::aes256_gcm_seal(&key, &iv, &aad, &plain);
        let params = |tag: [u8; GCM_TAG_SIZE]| {
            AesGcmParams {
                key,
                iv,
                tag,
                ..Default::default()
            }
            .to_params()
        };
        if op == Op::AesGcmSeal {
            let done = self.exec(0, op, params([0; GCM_TAG_SIZE]), &[&aad, &plain], &[size])?;
            return Ok(done
                .ok()
                .and_then(|()| {
                    expect(done.written() == cipher.as_slice(), || {
                        "ciphertext differs".into()
                    })
                })
                .and_then(|()| {
                    expect(done.completion.result()[..GCM_TAG_SIZE] == tag, || {
                        "tag differs".into()
                    })
                }));
        }
        let done = self.exec(0, op, params(tag), &[&aad, &cipher], &[size])?;
        let opened = done.ok().and_then(|()| {
            expect(done.written() == plain.as_slice(), || {
                "plaintext differs".into()
            })
        });
        if opened.is_err() {
            return Ok(opened);
        }
        let mut forged = tag;
        forged[0] ^= 1;
        let done = self.exec(0, op, params(forged), &[&aad, &cipher], &[size])?;
        Ok(done
            .status(Status::AuthFailed)
            .map_err(|e| format!("forged tag: {e}")))
    }

    /// Every framing: the device's stream must decode (in software) to the input.
    fn check_deflate(&mut self, size: usize) -> Result<Verdict, Error> {
        let data = self.data.text(size);
        for format in [DeflateFormat::Raw, DeflateFormat::Zlib, DeflateFormat::Gzip] {
            let params = DeflateParams {
                format: format.into(),
                level: u8::try_from(self.data.below(10)).unwrap_or(6),
                ..Default::default()
            };
            let room = size + size / 8 + 1024;
            let done = self.exec(
                0,
                Op::DeflateCompress,
                params.to_params(),
                &[&data],
                &[room],
            )?;
            let verdict =
                done.ok()
                    .and_then(|()| match reference::decompress(format, done.written()) {
                        Ok(back) => expect(back == data, || {
                            format!("{format:?}: decodes to other data")
                        }),
                        Err(e) => Err(format!("{format:?}: stream does not decode: {e}")),
                    });
            if verdict.is_err() {
                return Ok(verdict);
            }
        }
        Ok(Ok(()))
    }

    /// Every framing decoded, and a corrupted gzip stream refused with BadData.
    fn check_inflate(&mut self, size: usize) -> Result<Verdict, Error> {
        let data = self.data.text(size);
        let params = |format: DeflateFormat| {
            DeflateParams {
                format: format.into(),
                ..Default::default()
            }
            .to_params()
        };
        for format in [DeflateFormat::Raw, DeflateFormat::Zlib, DeflateFormat::Gzip] {
            // The stream, then what follows it in a file: another gzip
            // member, or other bytes; the result is the stream's length (§8.9).
            let packed = reference::compress(format, 6, &data);
            let mut file = packed.clone();
            match format {
                DeflateFormat::Gzip => file.extend(reference::compress(format, 1, b"next member")),
                _ => file.extend(self.data.random(7)),
            }
            let done = self.exec(0, Op::DeflateDecompress, params(format), &[&file], &[size])?;
            let verdict = done.ok().and_then(|()| {
                expect(done.written() == data.as_slice(), || {
                    format!("{format:?}: decoded data differ")
                })?;
                let length = done.completion.result_u64();
                expect(length == packed.len() as u64, || {
                    format!(
                        "{format:?}: stream length {length}, expected {}",
                        packed.len()
                    )
                })
            });
            if verdict.is_err() {
                return Ok(verdict);
            }
        }
        let mut corrupt = reference::compress(DeflateFormat::Gzip, 6, &data);
        let last = corrupt.len() - 5;
        corrupt[last] ^= 0x55; // the CRC-32 of the trailer
        let done = self.exec(
            0,
            Op::DeflateDecompress,
            params(DeflateFormat::Gzip),
            &[&corrupt],
            &[size],
        )?;
        Ok(done
            .status(Status::BadData)
            .map_err(|e| format!("corrupt stream: {e}")))
    }
}

/// The checks of objects and fences over the virtqueues.
impl<T: Transport> SelfTest<'_, Device<T>> {
    /// An object over two separate buffers, used through a handle: CRC-32C
    /// of a range crossing the segment boundary, then destroyed, after which
    /// the handle is refused with NoObject.
    fn check_objects(&mut self) -> Result<Verdict, Error> {
        let memory = self.device.memory();
        let (a, b) = (self.data.text(8192), self.data.text(5000));
        let (buf_a, buf_b) = (memory.alloc(a.len())?, memory.alloc(b.len())?);
        memory.write(&buf_a, 0, &a)?;
        memory.write(&buf_b, 0, &b)?;
        let object = self.device.register(&[&buf_a, &buf_b])?;
        let whole: Vec<u8> = a.iter().chain(&b).copied().collect();
        let (offset, len) = (5000usize, 7000usize);
        let crc = Request::new(Op::Crc32c)
            .params(&Crc32cParams::default())
            .input(object.range(offset as u64, len as u64)?);
        let done = self.device.run(0, &crc)?;
        let want = reference::crc32c(0, &whole[offset..offset + len]);
        let used = match done.check() {
            Ok(done) => expect(done.result_u32() == want, || {
                "CRC-32C through the object differs".into()
            }),
            Err(e) => Err(format!("device answered {e}")),
        };
        object.destroy()?;
        let after = self.device.run(0, &crc)?;
        Ok(used.and_then(|()| {
            let status = after.status();
            expect(status == Ok(Status::NoObject), || {
                format!("a destroyed handle gave {status:?}, expected NoObject")
            })
        }))
    }

    /// FILL, COPY and CRC-32C made available together, each depending on the
    /// previous one through the fence `submit` predicted (§6.2): the CRC
    /// must see the filled bytes, which only the dependencies guarantee.
    fn check_fence_chain(&mut self) -> Result<Verdict, Error> {
        let len = self.buffer_len(4 << 20);
        let memory = self.device.memory();
        let (a, b) = (memory.alloc(len)?, memory.alloc(len)?);
        memory.fill(&a, 0)?;
        memory.fill(&b, 0)?;
        let pattern = 0xc3;
        let fill = Request::new(Op::Fill)
            .params(&FillParams {
                pattern,
                ..Default::default()
            })
            .output(direct(&a, len));
        let filled = self.device.submit(0, &fill, 1)?;
        let copy = Request::new(Op::Copy)
            .dep(filled)
            .input(direct(&a, len))
            .output(direct(&b, len));
        let copied = self.device.submit(0, &copy, 2)?;
        let crc = Request::new(Op::Crc32c)
            .params(&Crc32cParams::default())
            .dep(copied)
            .input(direct(&b, len));
        self.device.submit(0, &crc, 3)?;
        self.device.flush(0)?;
        let mut done = Vec::new();
        while done.len() < 3 {
            let more = self
                .device
                .wait_batch(0, 3 - done.len(), self.device.timeout())?;
            if more.is_empty() {
                return Ok(Err("the chained requests did not complete".into()));
            }
            done.extend(more);
        }
        if let Some(failed) = done.iter().find(|c| !c.is_ok()) {
            return Ok(Err(format!(
                "request {} answered {:?}",
                failed.token,
                failed.status()
            )));
        }
        let want = reference::crc32c(0, &vec![pattern; len]);
        Ok(expect(
            done.iter().any(|c| c.token == 3 && c.result_u32() == want),
            || "the last request of the chain did not see the first one's bytes".into(),
        ))
    }

    /// A request on the last queue waits for one on the first; both fences
    /// then read as signalled, FENCE_WAIT returns, and a dependency on a
    /// fence never issued is refused with NoFence.
    fn check_fences(&mut self) -> Result<Verdict, Error> {
        let last = self.device.num_request_queues().saturating_sub(1);
        let memory = self.device.memory();
        let data = self.data.random(self.buffer_len(65536));
        let (src, dst) = (memory.alloc(data.len())?, memory.alloc(data.len())?);
        memory.write(&src, 0, &data)?;
        let copy = Request::new(Op::Copy)
            .input(Buffer::direct(&src))
            .output(Buffer::direct(&dst));
        let first = self.device.run(0, &copy)?;
        if let Err(e) = first.check() {
            return Ok(Err(format!("copy answered {e}")));
        }
        let crc = Request::new(Op::Crc32c)
            .params(&Crc32cParams::default())
            .dep(first.fence())
            .input(Buffer::direct(&dst));
        let second = self.device.run(last, &crc)?;
        let verdict = match second.check() {
            Ok(done) => expect(done.result_u32() == reference::crc32c(0, &data), || {
                "the dependent CRC-32C saw other data".into()
            }),
            Err(e) => Err(format!("dependent request answered {e}")),
        };
        if verdict.is_err() {
            return Ok(verdict);
        }
        for fence in [first.fence(), second.fence()] {
            if !self.device.query_fence(fence)? {
                return Ok(Err(format!(
                    "fence {fence:?} reads as pending after completion"
                )));
            }
        }
        self.device.wait_fences(&[first.fence(), second.fence()])?;
        let issued = first.fence();
        let future = Fence::new(u16::from(issued.queue), u64::from(issued.seqno) + 1_000_000);
        let status = self.device.run(last, &crc.clone().dep(future))?.status();
        Ok(expect(status == Ok(Status::NoFence), || {
            format!("a dependency on an unissued fence gave {status:?}, expected NoFence")
        }))
    }
}

fn direct(buf: &DmaBuf, len: usize) -> Buffer {
    Buffer::Direct {
        gpa: buf.gpa(),
        len: len as u64,
    }
}
