// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Throughput: a queue kept `depth` requests deep, one interrupt asked per
//! batch of completions, each completed request resubmitted at once. The
//! foundation benchmark (`accel-bench`) measures the daemon path with this
//! same loop, so `accelctl bench` and it report the same figures. Over the
//! kernel transport the loop is the same with jobs in GEM objects, each
//! waited for by its sync_file ([`measure_kernel`]).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use accel_driver::kernel::{self, GemObject, Submission};
use accel_driver::{DmaBuf, DmaMemory, KernelDevice, Request, Transport};
use thiserror::Error;
use virtio_accel_spec::Op;

use crate::data::DataSource;
use crate::workload::Workload;

/// Errors of a benchmark run.
#[derive(Debug, Error)]
pub enum Error {
    /// The device failed or a job did not complete with status Ok.
    #[error("device")]
    Device(#[from] accel_driver::device::Error),
    /// Guest buffers could not be allocated.
    #[error("DMA memory")]
    Memory(#[from] accel_driver::memory::Error),
    /// The kernel transport failed.
    #[error("kernel transport")]
    Kernel(#[from] accel_driver::kernel::Error),
    /// The device returned a token that names no request of the run.
    #[error("completion with unknown token {0}")]
    UnknownToken(u64),
    /// Not even one job of this size fits in the DMA memory.
    #[error("{op} on {size} bytes needs {needed} bytes of DMA memory, {free} are free")]
    TooBig {
        /// Operation name.
        op: &'static str,
        /// Job size.
        size: usize,
        /// Bytes one job needs.
        needed: usize,
        /// Bytes free.
        free: u64,
    },
}

/// Seed of the benchmark's data: `accelctl bench` and `accel-bench` measure
/// the same jobs on the same bytes.
pub const BENCH_SEED: u64 = 0x5eed;

/// Jobs completed and time taken.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BenchRun {
    /// Jobs completed.
    pub jobs: u64,
    /// Wall-clock time.
    pub elapsed: Duration,
}

impl BenchRun {
    /// Jobs per second.
    pub fn jobs_per_sec(&self) -> f64 {
        self.jobs as f64 / self.elapsed.as_secs_f64()
    }

    /// Gigabytes per second, counting `bytes` per job.
    pub fn gb_per_sec(&self, bytes: usize) -> f64 {
        self.jobs_per_sec() * bytes as f64 / 1e9
    }
}

/// A request in flight and the guest buffers it uses; its index is its token.
pub type Slot = (Request, Vec<DmaBuf>);

/// Keeps every slot's request in flight on request queue `queue` for
/// `duration`, then drains. Waits for `batch` completions per interrupt.
pub fn pipeline<T: Transport>(
    device: &accel_driver::Device<T>,
    queue: u16,
    slots: &[Slot],
    batch: usize,
    duration: Duration,
) -> Result<BenchRun, Error> {
    for (token, (request, _)) in (0u64..).zip(slots) {
        device.submit(queue, request, token)?;
    }
    device.flush(queue)?;
    let start = Instant::now();
    let (mut jobs, mut outstanding, mut stopping) = (0, slots.len(), false);
    while outstanding > 0 {
        let want = batch.clamp(1, outstanding);
        let completions = device.wait_batch(queue, want, device.timeout())?;
        if completions.is_empty() {
            return Err(accel_driver::device::Error::Timeout {
                queue,
                timeout: device.timeout(),
            }
            .into());
        }
        stopping |= start.elapsed() >= duration;
        for completion in completions {
            let token = completion.token;
            completion.check()?;
            jobs += 1;
            if stopping {
                outstanding -= 1;
            } else {
                let (request, _) = usize::try_from(token)
                    .ok()
                    .and_then(|index| slots.get(index))
                    .ok_or(Error::UnknownToken(token))?;
                device.submit(queue, request, token)?;
            }
        }
        device.flush(queue)?;
    }
    Ok(BenchRun {
        jobs,
        elapsed: start.elapsed(),
    })
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Operations.
    pub ops: Vec<Op>,
    /// Job sizes in bytes.
    pub sizes: Vec<usize>,
    /// Measuring time per point.
    pub duration: Duration,
    /// Requests kept in flight (fewer if the DMA memory cannot hold them).
    pub depth: usize,
    /// Completions per interrupt.
    pub batch: usize,
    /// Request queue.
    pub queue: u16,
}

/// One measured point.
#[derive(Debug, Clone, Copy)]
pub struct Point {
    /// Operation.
    pub op: Op,
    /// Job size.
    pub size: usize,
    /// Requests that were in flight.
    pub depth: usize,
    /// The result.
    pub run: BenchRun,
}

/// The slots of one point: `depth` jobs of `workload`, fewer if the memory
/// cannot hold them (at least one, or an error).
pub fn make_slots(
    workload: &Workload,
    memory: &DmaMemory,
    depth: usize,
) -> Result<Vec<Slot>, Error> {
    let needed = workload.footprint();
    let fits = usize::try_from(memory.free_bytes() / needed.max(1) as u64).unwrap_or(usize::MAX);
    if fits == 0 {
        return Err(Error::TooBig {
            op: workload.op.name(),
            size: workload.bytes,
            needed,
            free: memory.free_bytes(),
        });
    }
    (0..depth.min(fits))
        .map(|_| workload.request(memory).map_err(Error::from))
        .collect()
}

/// Measures every operation of `options` at every size, calling `progress`
/// before each point with its number (from 1) and the total.
pub fn measure<T: Transport>(
    device: &accel_driver::Device<T>,
    options: &BenchOptions,
    data: &mut DataSource,
    progress: impl FnMut(usize, usize, Op, usize),
) -> Result<Vec<Point>, Error> {
    each_point(options, data, progress, |workload| {
        let slots = make_slots(workload, device.memory(), options.depth)?;
        let run = pipeline(
            device,
            options.queue,
            &slots,
            options.batch,
            options.duration,
        )?;
        Ok(Some((slots.len(), run)))
    })
}

/// [`measure`] over the kernel transport, with [`kernel_pipeline`]
/// (`options.batch` does not apply: the kernel takes the interrupts). A
/// point whose objects the kernel cannot make contiguous enough
/// ([`kernel::Error::Fragmented`]) is left out and passed to `skipped`.
pub fn measure_kernel(
    device: &KernelDevice,
    options: &BenchOptions,
    data: &mut DataSource,
    progress: impl FnMut(usize, usize, Op, usize),
    mut skipped: impl FnMut(Op, usize, Error),
) -> Result<Vec<Point>, Error> {
    each_point(options, data, progress, |workload| {
        let depth = options.depth;
        match kernel_pipeline(device, options.queue, workload, depth, options.duration) {
            Err(e @ Error::Kernel(kernel::Error::Fragmented { .. })) => {
                skipped(workload.op, workload.bytes, e);
                Ok(None)
            }
            measured => measured.map(Some),
        }
    })
}

/// Measures `point` (the depth it kept and its run, or nothing) for every
/// operation and size of `options`, calling `progress` before each.
fn each_point(
    options: &BenchOptions,
    data: &mut DataSource,
    mut progress: impl FnMut(usize, usize, Op, usize),
    mut point: impl FnMut(&Workload) -> Result<Option<(usize, BenchRun)>, Error>,
) -> Result<Vec<Point>, Error> {
    let total = options.ops.len() * options.sizes.len();
    let mut points = Vec::with_capacity(total);
    let mut number = 0;
    for &op in &options.ops {
        for &size in &options.sizes {
            number += 1;
            progress(number, total, op, size);
            let workload = Workload::new(op, data.text(size));
            if let Some((depth, run)) = point(&workload)? {
                points.push(Point {
                    op,
                    size,
                    depth,
                    run,
                });
            }
        }
    }
    Ok(points)
}

/// One job of `workload` in GEM objects of `device`: its submission and
/// the objects it names.
fn kernel_slot<'d>(
    device: &'d KernelDevice,
    workload: &Workload,
    queue: u16,
) -> Result<(Submission<'static>, Vec<GemObject<'d>>), Error> {
    let mut submission = Submission::new(workload.op)
        .raw_params(workload.params)
        .on_queue(queue);
    let mut objects = Vec::new();
    for input in &workload.inputs {
        let object = device.create_object(input.len().max(1) as u64)?;
        object.mapping()?.write(0, input)?;
        submission = submission.input(object.range(0, input.len() as u64)?);
        objects.push(object);
    }
    for &size in &workload.output_sizes {
        let object = device.create_object(size.max(1) as u64)?;
        submission = submission.output(object.range(0, size as u64)?);
        objects.push(object);
    }
    Ok((submission, objects))
}

/// Keeps `depth` jobs of `workload` (fewer if the device's result records
/// are fewer) in flight on request queue `queue` for `duration`, each
/// resubmitted once its sync_file has signalled, then drains; returns the
/// depth kept and the run.
pub fn kernel_pipeline(
    device: &KernelDevice,
    queue: u16,
    workload: &Workload,
    depth: usize,
    duration: Duration,
) -> Result<(usize, BenchRun), Error> {
    let slots = (0..depth.clamp(1, device.result_slots()))
        .map(|_| kernel_slot(device, workload, queue))
        .collect::<Result<Vec<_>, _>>()?;
    let mut in_flight = slots
        .iter()
        .enumerate()
        .map(|(index, (submission, _))| Ok((index, device.submit(submission)?)))
        .collect::<Result<VecDeque<_>, Error>>()?;
    let start = Instant::now();
    let mut jobs = 0;
    while let Some((index, job)) = in_flight.pop_front() {
        job.finish(Some(device.timeout()))?.completion(0).check()?;
        jobs += 1;
        if start.elapsed() < duration {
            in_flight.push_back((index, device.submit(&slots[index].0)?));
        }
    }
    Ok((
        slots.len(),
        BenchRun {
            jobs,
            elapsed: start.elapsed(),
        },
    ))
}
