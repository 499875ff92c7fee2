// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The accelerator device over any [`Transport`]: feature negotiation, the
//! control queue (objects, fences) and the request queues.
//!
//! Request queues are numbered from 0 in this API (request queue `q` is
//! virtqueue `q + 1`); the raw methods ([`Device::raw_queue`],
//! [`Device::notify`], [`Device::wait_used`]) take virtqueue indices.
//!
//! Every method except the raw ones takes `&self`: a `Device` can be shared
//! between threads (one queue per thread, or several threads on one queue).

mod completion;
mod object;
mod queue;
mod request;

use std::time::Duration;

use thiserror::Error;
use virtio_accel_spec::{
    ControlCommand, CtrlReq, Fence, MemSeg, Status, VirtioAccelConfig, FIRST_REQUEST_QUEUE,
    MAX_REQUEST_QUEUES, VIRTIO_ACCEL_F_FENCES, VIRTIO_ACCEL_F_OBJECTS,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::ByteValued;

use crate::memory::{self, DmaMemory};
use crate::transport::{self, Transport};
use crate::virtqueue::{self, RingFeatures, SplitQueue, Used};

pub use completion::{Completion, ControlCompletion, CTRL_RESP_SIZE};
pub use object::Object;
pub use request::{Buffer, Error as RequestError, Request, Segments, MAX_DESC_LEN, RESP_SIZE};

use queue::{DriverQueue, Finished, RestartFlag, Submitted};

/// Errors of device operations.
#[derive(Debug, Error)]
pub enum Error {
    /// The transport failed.
    #[error("transport")]
    Transport(#[from] transport::Error),
    /// A virtqueue operation failed (bad device behaviour included).
    #[error("virtqueue {queue}")]
    Queue {
        /// Virtqueue index.
        queue: u16,
        /// Cause.
        #[source]
        source: virtqueue::Error,
    },
    /// No free descriptors: reap completions and retry.
    #[error("virtqueue {queue} is full")]
    QueueFull {
        /// Virtqueue index.
        queue: u16,
    },
    /// Guest memory allocation or access failed.
    #[error("guest memory")]
    Memory(#[from] memory::Error),
    /// The request could not be encoded.
    #[error("bad request")]
    Request(#[from] RequestError),
    /// The header block is too long for a descriptor.
    #[error("header block of {0} bytes is too long")]
    HeaderTooLong(usize),
    /// The device does not offer VIRTIO_F_VERSION_1.
    #[error("device does not offer VIRTIO_F_VERSION_1")]
    NoVersion1,
    /// The configuration announces an unusable number of request queues.
    #[error("device reports {reported} request queues, transport supports {max} virtqueues")]
    BadQueueCount {
        /// `num_request_queues` of the configuration.
        reported: u32,
        /// Virtqueues the transport supports.
        max: u16,
    },
    /// The configuration violates the device requirements of the specification (§5.2).
    #[error("invalid device configuration: {0}")]
    BadConfig(&'static str),
    /// The transport's maximum queue size is zero.
    #[error("virtqueue {0} has no usable size")]
    NoQueueSize(u16),
    /// No such request queue (0-based request queue index).
    #[error("request queue {0} does not exist or is not set up")]
    NoSuchQueue(u16),
    /// No such virtqueue.
    #[error("virtqueue {0} does not exist or is not set up")]
    NoSuchVirtqueue(u16),
    /// The device did not complete in time.
    #[error("virtqueue {queue}: no completion within {timeout:?}")]
    Timeout {
        /// Virtqueue index.
        queue: u16,
        /// Time waited.
        timeout: Duration,
    },
    /// The device completed with a status other than Ok.
    #[error("device status {0:?}")]
    Status(Status),
    /// The device completed with a status value the specification does not define.
    #[error("device status {0} is unknown")]
    UnknownStatus(u32),
    /// The device wrote less than a full response.
    #[error("device used {used_len} bytes, a response needs {expected}")]
    ShortResponse {
        /// Used length.
        used_len: u32,
        /// Response size.
        expected: u32,
    },
    /// A response carried another fence than the one its request was due:
    /// the device restarted without the driver resetting it (over vhost-user,
    /// a back-end restart that the VMM reconnected to, spec §11), so its
    /// objects and fences are gone. Completions already taken are delivered;
    /// the queue takes no more requests. Reopen the device.
    #[error(
        "virtqueue {queue}: the device restarted (it reported fence {reported} where {expected} was due); reopen it"
    )]
    DeviceRestarted {
        /// Virtqueue index.
        queue: u16,
        /// The sequence number the request was due.
        expected: u64,
        /// The one the device reported.
        reported: u64,
    },
    /// The device returned a value that makes no sense for the command.
    #[error("device returned value {value:#x} for {command:?}")]
    BadValue {
        /// The command.
        command: ControlCommand,
        /// The value.
        value: u64,
    },
}

impl Error {
    /// The device status carried by this error, if it is one.
    pub fn status(&self) -> Option<Status> {
        match self {
            Error::Status(s) => Some(*s),
            _ => None,
        }
    }
}

/// Result of device operations.
pub type Result<T> = std::result::Result<T, Error>;

/// Feature bit `bit` as a mask.
pub const fn feature(bit: u32) -> u64 {
    1 << bit
}

/// Every feature this driver knows: VERSION_1, EVENT_IDX, INDIRECT_DESC, OBJECTS, FENCES.
pub const DEFAULT_FEATURES: u64 = feature(VIRTIO_F_VERSION_1)
    | feature(VIRTIO_RING_F_EVENT_IDX)
    | feature(VIRTIO_RING_F_INDIRECT_DESC)
    | feature(VIRTIO_ACCEL_F_OBJECTS)
    | feature(VIRTIO_ACCEL_F_FENCES);

/// The capabilities of §3 this driver knows, as feature bits: OBJECTS and
/// FENCES.
pub const CAPABILITIES: u64 = feature(VIRTIO_ACCEL_F_OBJECTS) | feature(VIRTIO_ACCEL_F_FENCES);

/// Options of [`Device::open_with`].
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Features the driver wants; the device's offer is intersected with it
    /// (VERSION_1 is always acknowledged). The [`CAPABILITIES`] among them
    /// that the VMM did not pass on as feature bits are asked for with the
    /// CAPABILITIES command (§7.5).
    pub features: u64,
    /// Queue size wanted (capped by the transport, rounded down to a power of two).
    pub queue_size: Option<u16>,
    /// Request queues to set up (at most what the device has).
    pub request_queues: Option<u16>,
    /// Timeout of blocking calls ([`Device::run`], control commands).
    pub timeout: Duration,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            features: DEFAULT_FEATURES,
            queue_size: None,
            request_queues: None,
            timeout: Duration::from_secs(10),
        }
    }
}

/// An opened accelerator device.
#[derive(Debug)]
pub struct Device<T: Transport> {
    transport: T,
    memory: DmaMemory,
    features: u64,
    /// Capabilities enabled, as feature bits (§3): negotiated, or enabled
    /// with CAPABILITIES.
    capabilities: u64,
    config: VirtioAccelConfig,
    /// By virtqueue index: 0 is the control queue.
    queues: Vec<DriverQueue>,
    timeout: Duration,
}

/// Checks the limits the device must report (§5.2) for the enabled capabilities.
fn check_config(config: &VirtioAccelConfig, capabilities: u64) -> Result<()> {
    let known_ops = virtio_accel_spec::Op::all_capabilities();
    let checks = [
        (
            u32::from(config.ops) & !known_ops == 0,
            "ops has unknown bits",
        ),
        (u32::from(config.max_segments) >= 2, "max_segments < 2"),
        (u32::from(config.max_inflight) >= 1, "max_inflight < 1"),
        (
            u64::from(config.max_buffer_size) >= 1,
            "max_buffer_size < 1",
        ),
        (
            capabilities & feature(VIRTIO_ACCEL_F_FENCES) == 0 || u32::from(config.max_deps) >= 1,
            "max_deps < 1 with FENCES",
        ),
        (
            capabilities & feature(VIRTIO_ACCEL_F_OBJECTS) == 0
                || (u32::from(config.max_objects) >= 1 && u64::from(config.max_object_size) >= 1),
            "max_objects or max_object_size < 1 with OBJECTS",
        ),
    ];
    match checks.iter().find(|(ok, _)| !ok) {
        Some(&(_, what)) => Err(Error::BadConfig(what)),
        None => Ok(()),
    }
}

fn power_of_two_floor(n: u16) -> u16 {
    if n == 0 {
        0
    } else {
        1 << (15 - n.leading_zeros())
    }
}

impl<T: Transport> Device<T> {
    /// Opens the device acknowledging the offered subset of `wanted_features`.
    pub fn open(transport: T, wanted_features: u64) -> Result<Self> {
        Self::open_with(
            transport,
            &OpenOptions {
                features: wanted_features,
                ..OpenOptions::default()
            },
        )
    }

    /// Negotiates features, reads the configuration, sets up the control
    /// queue and the request queues, and enables the capabilities wanted
    /// that the features did not bring (§3, §7.5).
    pub fn open_with(mut transport: T, options: &OpenOptions) -> Result<Self> {
        let offered = transport.device_features();
        let version_1 = feature(VIRTIO_F_VERSION_1);
        if offered & version_1 == 0 {
            return Err(Error::NoVersion1);
        }
        let features = offered & (options.features | version_1);
        transport.set_driver_features(features)?;

        let mut config = VirtioAccelConfig::default();
        transport.read_config(0, config.as_mut_slice())?;
        let reported = u32::from(config.num_request_queues);
        let max = transport.max_queues();
        let num_rq = u16::try_from(reported)
            .ok()
            .filter(|&n| (1..=MAX_REQUEST_QUEUES).contains(&n) && n < max)
            .ok_or(Error::BadQueueCount { reported, max })?;
        let num_rq = options
            .request_queues
            .map_or(num_rq, |n| n.clamp(1, num_rq));

        let memory = transport.memory().clone();
        let ring = RingFeatures::from_features(features);
        let mut queues = Vec::with_capacity(usize::from(num_rq) + 1);
        let restarted = RestartFlag::default();
        for index in 0..=num_rq {
            let max_size = transport.max_queue_size(index)?;
            let size = power_of_two_floor(options.queue_size.map_or(max_size, |s| s.min(max_size)));
            if size == 0 {
                return Err(Error::NoQueueSize(index));
            }
            let vq = SplitQueue::new(&memory, size, ring).map_err(|source| Error::Queue {
                queue: index,
                source,
            })?;
            transport.setup_queue(index, &vq.addresses())?;
            queues.push(DriverQueue::new(index, vq, RestartFlag::clone(&restarted)));
        }
        transport.activate()?;
        let mut device = Device {
            transport,
            memory,
            features,
            capabilities: features & CAPABILITIES,
            config,
            queues,
            timeout: options.timeout,
        };
        device.enable_capabilities(options.features & CAPABILITIES)?;
        check_config(&device.config, device.capabilities)?;
        log::debug!(
            "device open: features {features:#x}, capabilities {:#x}, {num_rq} request queues",
            device.capabilities
        );
        Ok(device)
    }

    /// Asks for the capabilities of `wanted` that were not negotiated as
    /// feature bits (a VMM that passes on only the transport bits it knows,
    /// as cloud-hypervisor does): CAPABILITIES on the control queue, which
    /// no VMM filters (§7.5). A device older than the command answers
    /// Unsupported and keeps what the features gave.
    fn enable_capabilities(&mut self, wanted: u64) -> Result<()> {
        if wanted & !self.capabilities == 0 {
            return Ok(());
        }
        let command = ControlCommand::Capabilities;
        match self.control(command, 0, wanted, &[], self.timeout) {
            Ok(enabled) => self.capabilities = enabled & CAPABILITIES,
            Err(e) if e.status() == Some(Status::Unsupported) => {
                log::debug!("the device predates CAPABILITIES: only the negotiated features count");
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// The device configuration read at open.
    pub fn config(&self) -> &VirtioAccelConfig {
        &self.config
    }

    /// Negotiated features.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Whether feature `bit` was negotiated.
    pub fn has_feature(&self, bit: u32) -> bool {
        self.features & feature(bit) != 0
    }

    /// Capabilities enabled, as feature bits (§3): the negotiated ones and
    /// those CAPABILITIES enabled.
    pub fn capabilities(&self) -> u64 {
        self.capabilities
    }

    /// Whether capability `bit` (VIRTIO_ACCEL_F_OBJECTS or _FENCES) is
    /// enabled, by feature negotiation or with CAPABILITIES.
    pub fn has_capability(&self, bit: u32) -> bool {
        self.capabilities & feature(bit) != 0
    }

    /// Request queues set up.
    pub fn num_request_queues(&self) -> u16 {
        // queues.len() <= MAX_REQUEST_QUEUES + 1.
        u16::try_from(self.queues.len() - 1).unwrap_or(MAX_REQUEST_QUEUES)
    }

    /// The guest memory.
    pub fn memory(&self) -> &DmaMemory {
        &self.memory
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// The transport, mutably (e.g. to send a new memory table).
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// Timeout of blocking calls.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sets the timeout of blocking calls.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Resets the device and returns the transport.
    pub fn close(mut self) -> Result<T> {
        self.transport.reset()?;
        Ok(self.transport)
    }

    /// Returns the transport without resetting the device.
    pub fn into_transport(self) -> T {
        self.transport
    }

    fn request_queue(&self, queue: u16) -> Result<&DriverQueue> {
        queue
            .checked_add(FIRST_REQUEST_QUEUE)
            .and_then(|vq| self.queues.get(usize::from(vq)))
            .ok_or(Error::NoSuchQueue(queue))
    }

    fn virtqueue(&self, vq: u16) -> Result<&DriverQueue> {
        self.queues
            .get(usize::from(vq))
            .ok_or(Error::NoSuchVirtqueue(vq))
    }

    fn control_queue(&self) -> Result<&DriverQueue> {
        self.virtqueue(virtio_accel_spec::CONTROL_QUEUE)
    }

    // ---- requests ------------------------------------------------------------

    fn submit_inner(
        &self,
        dq: &DriverQueue,
        request: &Request,
        token: u64,
        wait: bool,
    ) -> Result<Submitted> {
        let header = request.header_bytes()?;
        dq.submit(
            &header,
            request.resp_len(),
            &request.input_segments(),
            &request.output_segments(),
            token,
            wait,
        )
    }

    /// Adds `request` to request queue `queue` without notifying the device
    /// and returns the fence the device will issue to it (spec §6.2: the
    /// n-th chain made available on a queue gets sequence number n), which
    /// later requests of the same queue may name as a dependency at once.
    /// Direct buffers must stay allocated until the request completes.
    ///
    /// After raw-queue use ([`raw_queue`](Self::raw_queue)) that jumps the
    /// avail index, the prediction counts the skipped entries as chains.
    pub fn submit(&self, queue: u16, request: &Request, token: u64) -> Result<Fence> {
        let dq = self.request_queue(queue)?;
        let submitted = self.submit_inner(dq, request, token, false)?;
        Ok(Fence::new(queue, submitted.seqno))
    }

    /// Publishes submitted requests and notifies the device if it asked to be.
    /// Returns whether it was notified.
    pub fn flush(&self, queue: u16) -> Result<bool> {
        self.request_queue(queue)?.flush(&self.transport)
    }

    /// Completions available now, in the order the device returned them.
    pub fn poll(&self, queue: u16) -> Result<Vec<Completion>> {
        Ok(self
            .request_queue(queue)?
            .poll()?
            .iter()
            .map(to_completion)
            .collect())
    }

    /// Waits up to `timeout` for at least one completion; empty on timeout.
    pub fn wait(&self, queue: u16, timeout: Duration) -> Result<Vec<Completion>> {
        Ok(self
            .request_queue(queue)?
            .wait_ready(&self.transport, Some(timeout))?
            .iter()
            .map(to_completion)
            .collect())
    }

    /// Waits up to `timeout` until at least `min` completions are ready and
    /// returns all ready ones (fewer on timeout). The device is asked for a
    /// single interrupt for the whole batch, which is how a busy driver keeps
    /// interrupts far below one per request.
    pub fn wait_batch(&self, queue: u16, min: usize, timeout: Duration) -> Result<Vec<Completion>> {
        Ok(self
            .request_queue(queue)?
            .wait_ready_batch(&self.transport, min, Some(timeout))?
            .iter()
            .map(to_completion)
            .collect())
    }

    /// Submits, flushes and waits for this request (within the device
    /// timeout); other completions of the queue stay available to
    /// [`poll`](Self::poll). The completion is returned whatever its status.
    ///
    /// On [`Error::Timeout`] the request is abandoned, not cancelled: the
    /// device may still read and write its direct buffers until it returns
    /// the chain (spec §11.1), so keep them allocated (or reset the device).
    pub fn run(&self, queue: u16, request: &Request) -> Result<Completion> {
        let dq = self.request_queue(queue)?;
        let id = self
            .submit_inner(dq, request, 0, true)?
            .waiter
            .ok_or(Error::NoSuchQueue(queue))?;
        dq.flush(&self.transport)?;
        match dq.wait_for(&self.transport, id, Some(self.timeout))? {
            Some(f) => Ok(to_completion(&f)),
            None => Err(Error::Timeout {
                queue: queue.saturating_add(FIRST_REQUEST_QUEUE),
                timeout: self.timeout,
            }),
        }
    }

    /// Requests added to request queue `queue` and not yet returned by the device.
    pub fn in_flight(&self, queue: u16) -> Result<usize> {
        Ok(self.request_queue(queue)?.in_flight())
    }

    // ---- control commands ------------------------------------------------------

    /// Sends a control command `header | payload` and waits for its response
    /// (within the device timeout). The response is returned whatever its status.
    pub fn control_raw(&self, header: CtrlReq, payload: &[u8]) -> Result<ControlCompletion> {
        self.control_raw_timeout(header, payload, self.timeout)
    }

    fn control_raw_timeout(
        &self,
        header: CtrlReq,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<ControlCompletion> {
        let dq = self.control_queue()?;
        let mut bytes = header.as_slice().to_vec();
        bytes.extend_from_slice(payload);
        let id = dq
            .submit(&bytes, CTRL_RESP_SIZE, &[], &[], 0, true)?
            .waiter
            .ok_or(Error::NoSuchVirtqueue(0))?;
        dq.flush(&self.transport)?;
        match dq.wait_for(&self.transport, id, Some(timeout))? {
            Some(f) => Ok(ControlCompletion::from_raw(f.used_len, &f.resp)),
            None => Err(Error::Timeout { queue: 0, timeout }),
        }
    }

    fn control(
        &self,
        cmd: ControlCommand,
        count: u32,
        arg: u64,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<u64> {
        self.control_raw_timeout(CtrlReq::new(cmd, count, arg), payload, timeout)?
            .check()
    }

    /// OBJECT_CREATE of guest memory segments `(gpa, len)`; returns the handle.
    pub fn create_object(&self, segments: &[(u64, u64)]) -> Result<u32> {
        let count = u32::try_from(segments.len()).unwrap_or(u32::MAX);
        let payload: Vec<u8> = segments
            .iter()
            .flat_map(|&(addr, len)| MemSeg::new(addr, len).as_slice().to_vec())
            .collect();
        let command = ControlCommand::ObjectCreate;
        let value = self.control(command, count, 0, &payload, self.timeout)?;
        u32::try_from(value)
            .ok()
            .filter(|&h| h != 0)
            .ok_or(Error::BadValue { command, value })
    }

    /// OBJECT_DESTROY of `handle`.
    pub fn destroy_object(&self, handle: u32) -> Result<()> {
        self.control(
            ControlCommand::ObjectDestroy,
            0,
            u64::from(handle),
            &[],
            self.timeout,
        )?;
        Ok(())
    }

    /// FENCE_QUERY: whether `fence` has signalled.
    pub fn query_fence(&self, fence: Fence) -> Result<bool> {
        let command = ControlCommand::FenceQuery;
        match self.control(command, 1, 0, fence.as_slice(), self.timeout)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(Error::BadValue { command, value }),
        }
    }

    /// FENCE_WAIT: returns once every fence has signalled (within the device timeout).
    pub fn wait_fences(&self, fences: &[Fence]) -> Result<()> {
        self.wait_fences_timeout(fences, self.timeout)
    }

    /// FENCE_WAIT with an explicit timeout.
    pub fn wait_fences_timeout(&self, fences: &[Fence], timeout: Duration) -> Result<()> {
        let count = u32::try_from(fences.len()).unwrap_or(u32::MAX);
        let payload: Vec<u8> = fences.iter().flat_map(|f| f.as_slice().to_vec()).collect();
        self.control(ControlCommand::FenceWait, count, 0, &payload, timeout)?;
        Ok(())
    }

    // ---- raw access --------------------------------------------------------------

    /// Virtqueue `vq` itself, for raw chains. Chains added here complete
    /// through [`wait_used`](Self::wait_used); publish them with
    /// [`SplitQueue::publish`] and kick with [`notify`](Self::notify).
    pub fn raw_queue(&mut self, vq: u16) -> Result<&mut SplitQueue> {
        let dq = self
            .queues
            .get_mut(usize::from(vq))
            .ok_or(Error::NoSuchVirtqueue(vq))?;
        Ok(&mut dq.state_mut().vq)
    }

    /// Notifies the device about virtqueue `vq` (no publish, no suppression check).
    pub fn notify(&self, vq: u16) -> Result<()> {
        self.virtqueue(vq)?;
        Ok(self.transport.notify(vq)?)
    }

    /// Waits up to `timeout` for the used entry of a raw chain of virtqueue `vq`.
    pub fn wait_used(&self, vq: u16, timeout: Duration) -> Result<Option<Used>> {
        self.virtqueue(vq)?.wait_raw(&self.transport, Some(timeout))
    }
}

fn to_completion(f: &Finished) -> Completion {
    Completion::from_raw(f.token, f.used_len, &f.resp)
}

#[cfg(test)]
mod tests;
