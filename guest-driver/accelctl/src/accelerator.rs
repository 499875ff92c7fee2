// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! What `selftest`, `run` and `bench` need of a device, whatever carries it:
//! its configuration, and one job run on bytes of this process (inputs
//! copied in, outputs copied out) with its completion. The virtqueue driver
//! ([`Device`], over vhost-user or virtio-pci) puts the bytes in direct
//! buffers of its DMA memory; the kernel transport ([`KernelDevice`]) in GEM
//! objects or imported dma-bufs, and waits for each job's sync_file.

use std::fmt;
use std::fs::OpenOptions;
use std::time::Duration;

use accel_driver::kernel::{self, GemObject, Mapping, Submission, Udmabuf, UDMABUF_PATH};
use accel_driver::{feature, Completion, Device, KernelDevice, Request, Transport};
use thiserror::Error;
use virtio_accel_spec::op::PARAMS_SIZE;
use virtio_accel_spec::{Op, VirtioAccelConfig, VIRTIO_ACCEL_F_OBJECTS};

use crate::workload::with_direct_buffers;

/// The byte outputs start as: a pattern no operation leaves by accident.
pub const OUTPUT_FILL: u8 = 0xee;

/// Errors of running a job.
#[derive(Debug, Error)]
pub enum Error {
    /// The virtqueue driver or the device failed.
    #[error(transparent)]
    Device(#[from] accel_driver::device::Error),
    /// DMA memory ran out or failed.
    #[error("DMA memory")]
    Memory(#[from] accel_driver::memory::Error),
    /// The kernel transport failed.
    #[error("kernel transport")]
    Kernel(#[from] kernel::Error),
}

/// Where a job's bytes are while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobPlacement {
    /// Direct buffers of the driver's DMA memory, in the chain (§6.3).
    Direct,
    /// GEM objects of the kernel driver: device objects.
    GemObjects,
    /// udmabufs (memfd pages) imported as device objects.
    DmaBufs,
}

impl fmt::Display for JobPlacement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JobPlacement::Direct => "direct buffers",
            JobPlacement::GemObjects => "GEM objects",
            JobPlacement::DmaBufs => "dma-bufs",
        })
    }
}

/// One job: an operation, its parameters, its inputs and the sizes of its
/// outputs.
#[derive(Debug, Clone, Copy)]
pub struct JobData<'a> {
    /// The operation.
    pub op: Op,
    /// Its parameter block.
    pub params: [u8; PARAMS_SIZE],
    /// Input bytes, in the operation's order.
    pub inputs: &'a [&'a [u8]],
    /// Sizes of the output buffers.
    pub output_sizes: &'a [usize],
}

/// A job's completion and its outputs' contents.
#[derive(Debug, Clone)]
pub struct Executed {
    /// The completion, whatever its status.
    pub completion: Completion,
    /// Every output buffer, whole.
    pub outputs: Vec<Vec<u8>>,
}

/// A device as the commands use it.
pub trait Accelerator {
    /// The configuration (§5).
    fn config(&self) -> VirtioAccelConfig;

    /// Capabilities enabled, as feature bits (§3).
    fn capabilities(&self) -> u64;

    /// Whether capability `bit` is enabled.
    fn has_capability(&self, bit: u32) -> bool {
        self.capabilities() & feature(bit) != 0
    }

    /// Request queues usable.
    fn num_request_queues(&self) -> u16;

    /// How long a job may take.
    fn timeout(&self) -> Duration;

    /// Where jobs' bytes can be placed, the default first.
    fn placements(&self) -> &'static [JobPlacement];

    /// Why `placement` cannot be used here, if it cannot.
    fn unavailable(&self, placement: JobPlacement) -> Option<String>;

    /// The largest buffer sure to be accepted: a piece of an input that
    /// `run` cuts (the device's `max_buffer_size` if the transport adds no
    /// limit of its own).
    fn largest_piece(&self) -> usize;

    /// Runs `job` on request queue `queue` with its bytes in `placement`;
    /// outputs start as [`OUTPUT_FILL`]. The completion comes back whatever
    /// its status.
    fn execute(
        &self,
        queue: u16,
        job: &JobData<'_>,
        placement: JobPlacement,
    ) -> Result<Executed, Error>;
}

fn max_buffer(config: &VirtioAccelConfig) -> usize {
    usize::try_from(u64::from(config.max_buffer_size)).unwrap_or(usize::MAX)
}

impl<T: Transport> Accelerator for Device<T> {
    fn config(&self) -> VirtioAccelConfig {
        *Device::config(self)
    }

    fn capabilities(&self) -> u64 {
        Device::capabilities(self)
    }

    fn num_request_queues(&self) -> u16 {
        Device::num_request_queues(self)
    }

    fn timeout(&self) -> Duration {
        Device::timeout(self)
    }

    fn placements(&self) -> &'static [JobPlacement] {
        &[JobPlacement::Direct]
    }

    fn unavailable(&self, placement: JobPlacement) -> Option<String> {
        (placement != JobPlacement::Direct)
            .then(|| format!("{placement} belong to the kernel transport"))
    }

    fn largest_piece(&self) -> usize {
        max_buffer(Device::config(self))
    }

    fn execute(
        &self,
        queue: u16,
        job: &JobData<'_>,
        _placement: JobPlacement,
    ) -> Result<Executed, Error> {
        let memory = self.memory();
        let request = Request::new(job.op).raw_params(job.params);
        let (request, buffers) =
            with_direct_buffers(memory, request, job.inputs, job.output_sizes)?;
        let outs = &buffers[job.inputs.len()..];
        for buf in outs {
            memory.fill(buf, OUTPUT_FILL)?;
        }
        let completion = self.run(queue, &request)?;
        let outputs = outs
            .iter()
            .zip(job.output_sizes)
            .map(|(buf, &size)| memory.read_vec(buf, 0, size))
            .collect::<Result<_, _>>()?;
        Ok(Executed {
            completion,
            outputs,
        })
    }
}

/// Bytes of a job on the kernel transport: a GEM object, and the udmabuf it
/// was imported from if it is one.
struct Staged<'d> {
    object: GemObject<'d>,
    udmabuf: Option<Udmabuf>,
}

impl Staged<'_> {
    /// Where this process reads and writes the bytes.
    fn mapping(&self) -> Result<&Mapping, kernel::Error> {
        match &self.udmabuf {
            Some(udmabuf) => Ok(udmabuf.mapping()),
            None => self.object.mapping(),
        }
    }
}

/// A GEM object of `len` bytes (at least 1) in `placement`.
fn stage(device: &KernelDevice, placement: JobPlacement, len: usize) -> Result<Staged<'_>, Error> {
    let size = len.max(1) as u64;
    Ok(match placement {
        JobPlacement::DmaBufs => {
            let udmabuf = Udmabuf::new(UDMABUF_PATH.as_ref(), size)?;
            Staged {
                object: device.import(std::os::fd::AsFd::as_fd(&udmabuf))?,
                udmabuf: Some(udmabuf),
            }
        }
        JobPlacement::GemObjects | JobPlacement::Direct => Staged {
            object: device.create_object(size)?,
            udmabuf: None,
        },
    })
}

impl Accelerator for KernelDevice {
    fn config(&self) -> VirtioAccelConfig {
        KernelDevice::config(self)
    }

    fn capabilities(&self) -> u64 {
        KernelDevice::capabilities(self)
    }

    fn num_request_queues(&self) -> u16 {
        KernelDevice::num_request_queues(self)
    }

    fn timeout(&self) -> Duration {
        KernelDevice::timeout(self)
    }

    fn placements(&self) -> &'static [JobPlacement] {
        &[JobPlacement::GemObjects, JobPlacement::DmaBufs]
    }

    fn unavailable(&self, placement: JobPlacement) -> Option<String> {
        match placement {
            JobPlacement::Direct => {
                Some("direct buffers belong to the virtqueue transports".into())
            }
            JobPlacement::GemObjects => None,
            JobPlacement::DmaBufs if !self.has_capability(VIRTIO_ACCEL_F_OBJECTS) => Some(
                "importing a dma-buf needs the OBJECTS capability, which the driver did not enable"
                    .into(),
            ),
            JobPlacement::DmaBufs => OpenOptions::new()
                .read(true)
                .write(true)
                .open(UDMABUF_PATH)
                .err()
                .map(|e| format!("{UDMABUF_PATH}: {e} (a kernel without CONFIG_UDMABUF?)")),
        }
    }

    /// What an object is sure to get: at most `max_segments` contiguous
    /// runs of pages (accel-uapi §4.1), if each page (4 KiB or more) were
    /// a run of its own.
    fn largest_piece(&self) -> usize {
        let pages = usize::try_from(self.info().max_segments).unwrap_or(usize::MAX);
        max_buffer(&KernelDevice::config(self)).min(pages.saturating_mul(4096))
    }

    fn execute(
        &self,
        queue: u16,
        job: &JobData<'_>,
        placement: JobPlacement,
    ) -> Result<Executed, Error> {
        let mut submission = Submission::new(job.op)
            .raw_params(job.params)
            .on_queue(queue);
        let mut staged = Vec::with_capacity(job.inputs.len() + job.output_sizes.len());
        for input in job.inputs {
            let bytes = stage(self, placement, input.len())?;
            bytes.mapping()?.write(0, input)?;
            submission = submission.input(bytes.object.range(0, input.len() as u64)?);
            staged.push(bytes);
        }
        for &size in job.output_sizes {
            let bytes = stage(self, placement, size)?;
            bytes.mapping()?.fill(OUTPUT_FILL)?;
            submission = submission.output(bytes.object.range(0, size as u64)?);
            staged.push(bytes);
        }
        let record = self.run(&submission)?;
        let outputs = staged[job.inputs.len()..]
            .iter()
            .zip(job.output_sizes)
            .map(|(bytes, &size)| bytes.mapping().and_then(|map| map.read(0, size)))
            .collect::<Result<_, _>>()?;
        Ok(Executed {
            completion: record.completion(record.job_id),
            outputs,
        })
    }
}
