// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `accelctl chain`: rounds of long fence-chained batches over every request
//! queue, on two objects that stay registered for the whole run (§6.2,
//! §7.1), each round checking itself with no software reference to compute.
//!
//! A round is two chains. In each, job `k` depends on job `k - 1`, and the
//! jobs go to the request queues in runs of [`RUN`]: a run's jobs are made
//! available together, each naming the fence that `submit` predicted for
//! the one before it; the first job of the next run, on the next queue,
//! names the last fence of the run once FENCE_QUERY says that fence is
//! issued (§6.2, "Naming fences of other queues"), which is as soon as the
//! device took the run, long before it ran it. So the whole chain is soon in
//! the device, most of it waiting on dependencies across queues.
//! - forward: AES-256-GCM SEAL of object `k mod 2` into object `k + 1 mod
//!   2`, with a nonce of its own (round, step);
//! - backward, from the last step to the first: OPEN of what each SEAL
//!   wrote, with that SEAL's tag, back into the object it read.
//!
//! Every OPEN must pass its tag check (AuthFailed otherwise): the bytes it
//! reads must be exactly what the matching SEAL wrote, which holds only if
//! every dependency held and no job ran on bytes another job had not
//! finished writing. After the round the first object must hold the round's
//! first bytes again. Each job must complete once, with status Ok and the
//! fence `submit` predicted. Jobs that run again after a restart of the
//! back-end (§11.3) give the same bytes: no job writes what it reads.

use std::time::{Duration, Instant};

use accel_driver::{Buffer, Completion, Device, Object, Request, Transport};
use thiserror::Error;
use virtio_accel_spec::op::{AesGcmParams, OpParams, AES_KEY_SIZE, GCM_IV_SIZE, GCM_TAG_SIZE};
use virtio_accel_spec::Fence;
use virtio_accel_spec::{Op, Status, VIRTIO_ACCEL_F_FENCES, VIRTIO_ACCEL_F_OBJECTS};

use crate::data::DataSource;

/// Bytes of additional authenticated data of every job.
const AAD_LEN: usize = 16;
/// Jobs of a chain that go to one request queue before the next.
pub const RUN: usize = 4;
/// How long to wait between two FENCE_QUERY of a fence not yet issued.
const QUERY_PAUSE: Duration = Duration::from_micros(200);

/// Errors of a chain run.
#[derive(Debug, Error)]
pub enum Error {
    /// The virtqueue driver or the device failed.
    #[error("device")]
    Device(#[from] accel_driver::device::Error),
    /// DMA memory ran out or failed.
    #[error("DMA memory")]
    Memory(#[from] accel_driver::memory::Error),
    /// Objects or fences are not enabled.
    #[error(
        "{0} is not enabled (neither negotiated nor enabled with CAPABILITIES): chain needs \
         objects and fences"
    )]
    Missing(&'static str),
    /// A round's check failed.
    #[error("round {round}: {why}")]
    Failed {
        /// The round, from 1.
        round: u64,
        /// What went wrong.
        why: String,
    },
}

/// What to run.
#[derive(Debug, Clone, Copy)]
pub struct ChainOptions {
    /// Jobs of each chain (a round runs two).
    pub jobs: usize,
    /// Bytes of each object (at most the device's `max_buffer_size`).
    pub size: usize,
    /// Rounds start until this much time has passed (at least one runs)...
    pub duration: Duration,
    /// ... or, if set, exactly this many rounds run.
    pub rounds: Option<u64>,
}

/// What a run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Rounds run, each checked.
    pub rounds: u64,
    /// Jobs completed.
    pub jobs: u64,
    /// Bytes of each object.
    pub size: usize,
}

/// DMA memory a run of `options` needs, with room for the driver's rings.
pub fn memory_needed(options: &ChainOptions) -> usize {
    2 * options.size + (4 << 20)
}

/// Runs rounds on `device` with bytes and key from `data`, calling
/// `on_round` after each round that passed.
pub fn run<T: Transport>(
    device: &Device<T>,
    options: &ChainOptions,
    data: &mut DataSource,
    mut on_round: impl FnMut(u64),
) -> Result<Summary, Error> {
    for (bit, name) in [
        (VIRTIO_ACCEL_F_OBJECTS, "OBJECTS"),
        (VIRTIO_ACCEL_F_FENCES, "FENCES"),
    ] {
        if !device.has_capability(bit) {
            return Err(Error::Missing(name));
        }
    }
    let limit = usize::try_from(u64::from(device.config().max_buffer_size)).unwrap_or(usize::MAX);
    let size = options.size.clamp(1, limit.max(1));
    let memory = device.memory();
    let first_bytes = data.random(size);
    let (a, b, aad) = (
        memory.alloc(size)?,
        memory.alloc(size)?,
        memory.alloc(AAD_LEN)?,
    );
    memory.write(&a, 0, &first_bytes)?;
    memory.write(&aad, 0, &data.random(AAD_LEN))?;
    let mut key = [0; AES_KEY_SIZE];
    key.copy_from_slice(&data.random(AES_KEY_SIZE));
    let chain = Chain {
        device,
        objects: [device.register(&[&a])?, device.register(&[&b])?],
        aad: Buffer::direct(&aad),
        key,
        jobs: options.jobs.max(1),
        queues: device.num_request_queues().max(1),
    };
    let started = Instant::now();
    let mut rounds = 0;
    loop {
        rounds += 1;
        let failed = |why| Error::Failed { round: rounds, why };
        chain.round(rounds)?.map_err(failed)?;
        if memory.read_vec(&a, 0, size)? != first_bytes {
            return Err(failed(
                "the first object does not hold its bytes again after the round".into(),
            ));
        }
        on_round(rounds);
        let done = match options.rounds {
            Some(wanted) => rounds >= wanted,
            None => started.elapsed() >= options.duration,
        };
        if done {
            break;
        }
    }
    let [first, second] = chain.objects;
    first.destroy()?;
    second.destroy()?;
    Ok(Summary {
        rounds,
        jobs: rounds * 2 * chain.jobs as u64,
        size,
    })
}

/// A round's verdict: `Err` says what the device got wrong.
type Verdict<T> = Result<T, String>;

/// What every round uses.
struct Chain<'d, T: Transport> {
    device: &'d Device<T>,
    objects: [Object<'d, T>; 2],
    aad: Buffer,
    key: [u8; AES_KEY_SIZE],
    jobs: usize,
    queues: u16,
}

impl<T: Transport> Chain<'_, T> {
    /// The forward chain, then the backward one with the forward tags.
    fn round(&self, round: u64) -> Result<Verdict<()>, Error> {
        let seals: Vec<Request> = (0..self.jobs)
            .map(|step| self.job(Op::AesGcmSeal, round, step, [0; GCM_TAG_SIZE]))
            .collect();
        let sealed = match self.run_chain(&seals, 0)? {
            Ok(sealed) => sealed,
            Err(why) => return Ok(Err(format!("forward chain (SEAL): {why}"))),
        };
        let opens: Vec<Request> = (0..self.jobs)
            .rev()
            .map(|step| {
                let mut tag = [0; GCM_TAG_SIZE];
                tag.copy_from_slice(&sealed[step].result()[..GCM_TAG_SIZE]);
                self.job(Op::AesGcmOpen, round, step, tag)
            })
            .collect();
        let first_token = self.jobs as u64;
        Ok(self
            .run_chain(&opens, first_token)?
            .map(drop)
            .map_err(|why| format!("backward chain (OPEN): {why}")))
    }

    /// Step `step` of either chain: from object `step mod 2` into the other
    /// (SEAL), or back (OPEN, checking `tag`).
    fn job(&self, op: Op, round: u64, step: usize, tag: [u8; GCM_TAG_SIZE]) -> Request {
        let mut iv = [0; GCM_IV_SIZE];
        iv[..8].copy_from_slice(&round.to_le_bytes());
        // Steps are fewer than `--jobs`, a u16.
        let nonce_step = u32::try_from(step).unwrap_or(u32::MAX);
        iv[8..].copy_from_slice(&nonce_step.to_le_bytes());
        let params = AesGcmParams {
            key: self.key,
            iv,
            tag,
            ..Default::default()
        };
        let (plain, cipher) = (&self.objects[step % 2], &self.objects[(step + 1) % 2]);
        let (from, to) = if op == Op::AesGcmSeal {
            (plain, cipher)
        } else {
            (cipher, plain)
        };
        Request::new(op)
            .raw_params(params.to_params())
            .input(self.aad.clone())
            .input(from.all())
            .output(to.all())
    }

    /// Submits `requests`, request `k` depending on request `k - 1`, in
    /// runs of [`RUN`] per queue (see the module documentation), and waits
    /// for all of them: their completions in order, if each completed once,
    /// Ok, with the fence predicted.
    fn run_chain(
        &self,
        requests: &[Request],
        first_token: u64,
    ) -> Result<Verdict<Vec<Completion>>, Error> {
        let mut predicted: Vec<Fence> = Vec::with_capacity(requests.len());
        let mut per_queue = vec![0usize; usize::from(self.queues)];
        for (k, request) in requests.iter().enumerate() {
            let queue = self.queue_of(k);
            let request = match predicted.last() {
                Some(&previous) if u16::from(previous.queue) == queue => {
                    request.clone().dep(previous)
                }
                Some(&previous) => {
                    self.device.flush(u16::from(previous.queue))?;
                    if let Err(why) = self.wait_issued(previous)? {
                        return Ok(Err(why));
                    }
                    request.clone().dep(previous)
                }
                None => request.clone(),
            };
            predicted.push(
                self.device
                    .submit(queue, &request, first_token + k as u64)?,
            );
            per_queue[usize::from(queue)] += 1;
        }
        for queue in 0..self.queues {
            self.device.flush(queue)?;
        }
        let mut done: Vec<Option<Completion>> = vec![None; requests.len()];
        for (queue, &expected) in (0..self.queues).zip(&per_queue) {
            let mut got = 0;
            while got < expected {
                let more = self
                    .device
                    .wait_batch(queue, expected - got, self.device.timeout())?;
                if more.is_empty() {
                    return Ok(Err(format!(
                        "{} of {expected} jobs of request queue {queue} not completed within {:?}",
                        expected - got,
                        self.device.timeout()
                    )));
                }
                for completion in more {
                    got += 1;
                    let slot = completion
                        .token
                        .checked_sub(first_token)
                        .and_then(|k| usize::try_from(k).ok())
                        .and_then(|k| done.get_mut(k));
                    match slot {
                        Some(slot @ None) => *slot = Some(completion),
                        Some(Some(_)) => {
                            return Ok(Err(format!("token {} completed twice", completion.token)))
                        }
                        None => return Ok(Err(format!("unknown token {}", completion.token))),
                    }
                }
            }
        }
        Ok(done
            .into_iter()
            .zip(predicted)
            .enumerate()
            .map(|(k, (completion, fence))| check(k, completion, fence))
            .collect())
    }

    /// Returns once `fence`, of a request submitted and flushed, is issued:
    /// FENCE_QUERY answers NoFence until the device has taken its request.
    fn wait_issued(&self, fence: Fence) -> Result<Verdict<()>, Error> {
        let deadline = Instant::now() + self.device.timeout();
        loop {
            match self.device.query_fence(fence) {
                Ok(_) => return Ok(Ok(())),
                Err(accel_driver::device::Error::Status(Status::NoFence))
                    if Instant::now() < deadline =>
                {
                    std::thread::sleep(QUERY_PAUSE);
                }
                Err(accel_driver::device::Error::Status(Status::NoFence)) => {
                    return Ok(Err(format!(
                        "fence {fence:?} not issued within {:?}",
                        self.device.timeout()
                    )))
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn queue_of(&self, k: usize) -> u16 {
        u16::try_from(k / RUN % usize::from(self.queues)).unwrap_or_default()
    }
}

/// Job `k`'s completion: there, Ok, with fence `predicted`.
fn check(k: usize, completion: Option<Completion>, predicted: Fence) -> Verdict<Completion> {
    let completion = completion.ok_or_else(|| format!("job {k} did not complete"))?;
    if !completion.is_ok() {
        return Err(format!("job {k} answered {:?}", completion.status()));
    }
    if completion.fence() != predicted {
        return Err(format!(
            "job {k} completed with fence {:?}, {predicted:?} predicted",
            completion.fence()
        ));
    }
    Ok(completion)
}
