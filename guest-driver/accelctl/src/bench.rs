//! Throughput: a queue kept `depth` requests deep, one interrupt asked per
//! batch of completions, each completed request resubmitted at once. The
//! foundation benchmark (`accel-bench`) measures the daemon path with this
//! same loop, so `accelctl bench` and it report the same figures.

use std::time::{Duration, Instant};

use accel_driver::{DmaBuf, DmaMemory, Request, Transport};
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
pub struct Run {
    /// Jobs completed.
    pub jobs: u64,
    /// Wall-clock time.
    pub elapsed: Duration,
}

impl Run {
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
) -> Result<Run, Error> {
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
    Ok(Run {
        jobs,
        elapsed: start.elapsed(),
    })
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct Options {
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
    pub run: Run,
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
    options: &Options,
    data: &mut DataSource,
    mut progress: impl FnMut(usize, usize, Op, usize),
) -> Result<Vec<Point>, Error> {
    let total = options.ops.len() * options.sizes.len();
    let mut points = Vec::with_capacity(total);
    for &op in &options.ops {
        for &size in &options.sizes {
            progress(points.len() + 1, total, op, size);
            let workload = Workload::new(op, data.text(size));
            let slots = make_slots(&workload, device.memory(), options.depth)?;
            let run = pipeline(
                device,
                options.queue,
                &slots,
                options.batch,
                options.duration,
            )?;
            points.push(Point {
                op,
                size,
                depth: slots.len(),
                run,
            });
        }
    }
    Ok(points)
}
