// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The Vulkan engine: COPY and FILL on a Vulkan device's transfer queue,
//! COMPARE, CRC32C and SHA-256 as compute shaders on the same queue, every
//! other operation on a [`SoftwareEngine`] it owns.
//!
//! [`VulkanEngine::new`] loads `libvulkan.so.1` at run time (`ash`), picks a
//! device by index or by part of its name (module `gpu`), refuses one without
//! `VK_EXT_external_memory_host` or timeline semaphores, enables dma-buf
//! imports where the device has them, and runs a first
//! tiny copy and fill so that the driver's first-submission work is done
//! before the process is sandboxed (module `transfer`). It then makes the
//! compute pipelines and runs each once, checked against the CPU (module
//! `compute`), for the same reason: lavapipe compiles a shader to machine
//! code, mapped executable, on its first use. A device where that fails
//! (or computes wrongly) keeps COPY and FILL, and its COMPARE, CRC32C and
//! SHA-256 go to the software engine, with a warning in the log.
//!
//! The shaders are GLSL in `shaders/`, compiled to the SPIR-V checked in
//! next to them by `shaders/build.sh` (Debian bookworm's glslang-tools
//! 12.0.0: `glslangValidator -V --target-env vulkan1.1`, no debug
//! information, so the bytes are reproducible; `build.sh --check` rebuilds
//! them apart and fails if any differs), and embedded with
//! `include_bytes!`.
//!
//! Each [`HwQueue`] of the engine is one queue to its consumer, with one
//! completion eventfd: its COPY and FILL jobs (a COPY whose input and output
//! do not overlap; an overlapping one runs on the CPU, whose memmove the
//! device cannot match) and its COMPARE, CRC32C and SHA-256 jobs (while the
//! compute path is in use, [`VulkanEngine::runs_compute`]) go to the
//! engine's GPU thread, the others to a
//! software queue of the same tenant, made to signal a clone of that
//! eventfd ([`SoftwareEngine::create_queue_signalling`]); reaping reaps
//! both. The GPU thread takes jobs in the order of [`super::scheduler`] for one
//! worker, the software engine's rules between tenants, charging each job
//! the time it took. It runs a job a chunk per submission, each signalling
//! a timeline semaphore it waits for (`vkWaitSemaphores`: lavapipe has no
//! semaphore file descriptors), then posts the completion and writes the
//! eventfd. Cancelling a queue takes its waiting jobs back and moves it to a
//! new epoch, which the thread sees between two chunks, as the software
//! engine does.
//!
//! COPY and FILL use the guest's pages in place (module `transfer`), and,
//! on a device that imports dma-bufs (`VK_EXT_external_memory_dma_buf`),
//! take a buffer that is a range of an object's dma-buf
//! ([`super::Job::dma_buf`], spec §7.1.3) through that dma-buf, counted in
//! [`HwCompletion::dma_buf_imports`]; the compute shaders read their input
//! from staging memory (module `compute`). A submission that fails, or runs
//! past its time limit, marks the device lost (`Gpu::run_recorded`): its
//! jobs fail with DeviceError, and new ones go to the software engine.
//!
//! Not yet: a queue of its own for transfers (the engine uses one queue,
//! of a family able to compute when the device has one), interrupt
//! moderation of the GPU part ([`HwQueue::coalesce`] applies to the
//! software part only; each completion raises the eventfd unless it is
//! raised already), and [`HwQueue::watch_backlog`] (it reports that it
//! cannot tell).

mod compute;
mod gpu;
mod queue;
mod transfer;

#[cfg(test)]
mod compute_tests;
#[cfg(test)]
mod dmabuf_tests;
#[cfg(test)]
mod tests;

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ash::vk;
use log::{error, warn};
use thiserror::Error;
use virtio_accel_spec::{Op, Status};
use vmm_sys_util::eventfd::EventFd;

use super::scheduler::{Charge, Scheduler, ACTIVE_WINDOW};
use super::software::SoftwareEngine;
use super::{DriverCalls, Engine, EngineError, HwCompletion, HwQueue, Share};
use crate::error_chain;
use crate::ops::Outcome;
use compute::Compute;
use gpu::Gpu;
use queue::{Ring, Submitted, VulkanQueue};
use transfer::Transfer;

pub use compute::{COMPUTE_CHUNK, SHA_CHUNK};
pub use transfer::GPU_CHUNK;

/// Errors of the Vulkan engine.
#[derive(Debug, Error)]
pub enum VulkanError {
    /// The Vulkan loader could not be loaded.
    #[error("cannot load the Vulkan loader (libvulkan.so.1; Debian: libvulkan1)")]
    Loader(#[source] ash::LoadingError),
    /// The loader offers only Vulkan 1.0.
    #[error("the Vulkan loader offers Vulkan 1.0; the engine needs 1.1")]
    OldLoader,
    /// A Vulkan call failed.
    #[error("{what} failed")]
    Vulkan {
        /// The call.
        what: &'static str,
        /// Its result.
        #[source]
        source: vk::Result,
    },
    /// The loader lists no device.
    #[error("no Vulkan device found (for a software one: Debian's mesa-vulkan-drivers)")]
    NoDevice,
    /// No device matches the selector.
    #[error(
        "no Vulkan device matches {selector:?} (an index or part of a name); found: {devices}"
    )]
    NoMatch {
        /// The selector given.
        selector: String,
        /// The devices found, with their indices.
        devices: String,
    },
    /// The device lacks something the engine needs.
    #[error("Vulkan device {device:?} lacks {missing}, which the engine needs")]
    Unsupported {
        /// The device's name.
        device: String,
        /// What it lacks.
        missing: &'static str,
    },
    /// Host memory could not be imported.
    #[error("cannot import host memory: {0}")]
    Import(&'static str),
    /// The engine's staging memory could not be mapped.
    #[error("cannot map staging memory")]
    Memory(#[source] std::io::Error),
    /// An embedded shader is not SPIR-V.
    #[error("shader {0} is not SPIR-V")]
    Shader(&'static str, #[source] std::io::Error),
    /// A compute shader gave a wrong result.
    #[error("compute shader check failed: {0}")]
    Compute(&'static str),
    /// The software engine or an OS resource failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Locks a mutex, recovering the data if a thread panicked while holding it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the queues and the GPU thread share.
struct Shared {
    run: Mutex<RunQueue>,
    wake: Condvar,
    /// The device: once it is lost ([`Gpu::is_lost`]), new jobs go to the
    /// software engine.
    gpu: Arc<Gpu>,
}

struct RunQueue {
    jobs: Scheduler<Submitted>,
    shutdown: bool,
}

/// An engine running COPY, FILL, COMPARE, CRC32C and SHA-256 on a Vulkan
/// device and the rest on the host's CPUs.
pub struct VulkanEngine {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    software: SoftwareEngine,
    device_name: String,
    /// COMPARE, CRC32C and SHA-256 run on the device.
    compute: bool,
    /// The device is the host's CPU (lavapipe).
    cpu: bool,
    /// The device imports dma-bufs.
    dma_bufs: bool,
}

impl std::fmt::Debug for VulkanEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VulkanEngine")
            .field("device", &self.device_name)
            .finish_non_exhaustive()
    }
}

impl VulkanEngine {
    /// Opens the device `selector` names (its index in the loader's list,
    /// or part of its name; `None`: the first device that has what the
    /// engine needs), warms it up, and starts the GPU thread; the other
    /// operations run on a software engine of one worker.
    pub fn new(selector: Option<&str>) -> Result<Self, VulkanError> {
        VulkanEngine::with_software(selector, SoftwareEngine::new(1)?)
    }

    /// As [`VulkanEngine::new`], the other operations on `software`.
    pub fn with_software(
        selector: Option<&str>,
        software: SoftwareEngine,
    ) -> Result<Self, VulkanError> {
        let gpu = Arc::new(Gpu::open(selector)?);
        let mut transfer = Transfer::new(&gpu)?;
        transfer.warm_up()?;
        let compute = match gpu.computes.then(|| {
            Compute::new(&gpu).and_then(|mut compute| {
                compute.warm_up()?;
                Ok(compute)
            })
        }) {
            None => None,
            Some(Ok(compute)) => Some(compute),
            Some(Err(error)) => {
                warn!(
                    "vulkan engine: no compute shaders on {:?} ({}); COMPARE, CRC32C and \
                     SHA-256 run on the CPU",
                    gpu.name,
                    error_chain(&error)
                );
                None
            }
        };
        let runs_compute = compute.is_some();
        let device_name = gpu.name.clone();
        let (cpu, dma_bufs) = (gpu.cpu, gpu.memory_fd.is_some());
        let shared = Arc::new(Shared {
            run: Mutex::new(RunQueue {
                jobs: Scheduler::new(1),
                shutdown: false,
            }),
            wake: Condvar::new(),
            gpu,
        });
        let thread_shared = Arc::clone(&shared);
        // The thread reports once it runs and has allocated (its malloc
        // arena made): a sandbox put in force after this returns may forbid
        // what that takes.
        let (ready, started) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("accel-vulkan".to_owned())
            .spawn(move || {
                std::hint::black_box(Vec::<u8>::with_capacity(64));
                let _ = ready.send(());
                gpu_loop(&thread_shared, transfer, compute);
            })
            .map_err(|source| EngineError::Resource {
                what: "vulkan engine thread",
                source,
            })?;
        // An error only if the thread died first.
        let _ = started.recv();
        Ok(VulkanEngine {
            shared,
            thread: Some(thread),
            software,
            device_name,
            compute: runs_compute,
            cpu,
            dma_bufs,
        })
    }

    /// The name of the device in use.
    pub fn device_name(&self) -> &str {
        &self.device_name
    }

    /// Whether COMPARE, CRC32C and SHA-256 run on the device (its compute
    /// shaders passed their check at start), not on the CPU.
    pub fn runs_compute(&self) -> bool {
        self.compute
    }

    /// Whether the device imports objects' dma-bufs
    /// (`VK_EXT_external_memory_dma_buf`), rather than their pages as host
    /// memory.
    pub fn imports_dma_bufs(&self) -> bool {
        self.dma_bufs
    }
}

/// Why a job of the device stopped without its result.
enum JobStop {
    /// The request's own status ([`crate::ops::CANCELLED`], no space...).
    Status(Status),
    /// The device failed, or gave a result out of range.
    Device(VulkanError),
}

impl From<VulkanError> for JobStop {
    fn from(error: VulkanError) -> Self {
        JobStop::Device(error)
    }
}

impl JobStop {
    /// The job's outcome; a failure of the device is logged.
    fn outcome(self) -> Outcome {
        match self {
            JobStop::Status(status) => Outcome::failed(status),
            JobStop::Device(error) => {
                log::debug!("vulkan engine: a job failed: {}", error_chain(&error));
                Outcome::failed(Status::DeviceError)
            }
        }
    }
}

impl Drop for VulkanEngine {
    fn drop(&mut self) {
        lock(&self.shared.run).shutdown = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                error!("vulkan engine: the GPU thread panicked");
            }
        }
    }
}

impl Engine for VulkanEngine {
    fn name(&self) -> &'static str {
        "vulkan"
    }

    fn capabilities(&self) -> u32 {
        self.software.capabilities() | Op::Copy.capability() | Op::Fill.capability()
    }

    fn driver_calls(&self) -> DriverCalls {
        DriverCalls {
            device_ioctls: !self.cpu,
            lseek: self.dma_bufs,
        }
    }

    fn create_queue(&self, depth: usize, share: Share) -> Result<Box<dyn HwQueue>, EngineError> {
        let event = EventFd::new(0).map_err(|source| EngineError::Resource {
            what: "completion eventfd",
            source,
        })?;
        let clone = event.try_clone().map_err(|source| EngineError::Resource {
            what: "completion eventfd clone",
            source,
        })?;
        let software = self.software.create_queue_signalling(depth, share, clone);
        let flow = lock(&self.shared.run).jobs.flow(share.tenant, share.weight);
        Ok(Box::new(VulkanQueue::new(
            Arc::clone(&self.shared),
            Arc::new(Ring::new(event)),
            software,
            depth,
            flow,
            self.compute,
        )))
    }
}

/// The GPU thread: runs the jobs the scheduler gives, one at a time, until
/// the engine shuts down and none is left: COMPARE, CRC32C and SHA-256 on
/// `compute` (the queues send them only if there is one), the others on
/// `transfer`.
fn gpu_loop(shared: &Shared, mut transfer: Transfer, mut compute: Option<Compute>) {
    let mut done: Option<(Charge, Duration)> = None;
    let mut lost = false;
    loop {
        let (Submitted { job, ring, epoch }, charge) = {
            let mut run = lock(&shared.run);
            if let Some((charge, elapsed)) = done.take() {
                run.jobs.complete(charge, elapsed);
            }
            match next_job(shared, run) {
                Some(next) => next,
                None => return,
            }
        };
        let started = Instant::now();
        let cancelled = || ring.cancelled_since(epoch);
        let (outcome, dma_buf_imports) = match compute.as_mut() {
            Some(compute) if compute::runs_on_compute(&job) => {
                (compute.run_job(&job, &cancelled), 0)
            }
            _ => transfer.run_job(&job, &cancelled),
        };
        done = Some((charge, started.elapsed()));
        if !lost && shared.gpu.is_lost() {
            lost = true;
            error!(
                "vulkan engine: the device {:?} failed or hung; its jobs fail with DeviceError \
                 until the next ones go to the CPU",
                shared.gpu.name
            );
        }
        let cookie = job.cookie;
        // The buffers are done with: release their mappings before completing.
        drop(job);
        ring.post(HwCompletion {
            cookie,
            outcome,
            dma_buf_imports,
        });
    }
}

/// The next job, sleeping while there is none; `None` once the engine shuts
/// down with nothing left to run.
fn next_job<'a>(
    shared: &'a Shared,
    mut run: MutexGuard<'a, RunQueue>,
) -> Option<(Submitted, Charge)> {
    loop {
        if let Some(next) = run.jobs.pop(Instant::now()) {
            return Some(next);
        }
        if run.shutdown {
            return None;
        }
        run = if run.jobs.is_empty() {
            shared
                .wake
                .wait(run)
                .unwrap_or_else(PoisonError::into_inner)
        } else {
            // Jobs wait for their flow's share: see again once flows may
            // have gone quiet.
            shared
                .wake
                .wait_timeout(run, ACTIVE_WINDOW)
                .unwrap_or_else(PoisonError::into_inner)
                .0
        };
    }
}
