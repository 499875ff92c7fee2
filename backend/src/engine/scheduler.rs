// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Weighted fair queueing of jobs between tenants, by engine time.
//!
//! Each tenant's hardware queues feed one *flow*. Flows are served in the
//! order of their virtual time, which advances by the engine time their jobs
//! took divided by the flow's weight (start-time fair queueing with measured
//! service), so busy tenants share the engine in proportion to their weights
//! whatever their operations and sizes cost: a tenant of 1 MiB deflate jobs
//! gets no more engine time than one of 64-byte copies. A job is charged an
//! estimate of its cost when dispatched (the flow's recent average) and set
//! right when it completes, so that workers dispatching at the same time do
//! not all pick the same flow. A flow that goes idle keeps no credit: when
//! it has work again it starts from the current virtual time.
//!
//! Jobs are not preempted, so fair queueing alone would let a tenant of
//! long jobs occupy every worker, and a tenant of short jobs, arriving one at
//! a time, would wait for one of those to end. Workers are therefore first
//! one per flow: a flow that already runs a job may start another only if,
//! after it, as many workers stay idle as other flows are active (work
//! submitted within [`ACTIVE_WINDOW`], or queued) with nothing running. So
//! the weights order the flows waiting for a worker and share out the
//! workers beyond one per active flow, and a flow never holds a second
//! worker while an active flow has none; a flow alone uses every worker.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

/// How long after its last submission a flow still counts as active.
pub const ACTIVE_WINDOW: Duration = Duration::from_millis(1);

/// Virtual time units per nanosecond of engine time at weight 1 (weights up
/// to [`crate::config::MAX_WEIGHT`] divide it without losing much).
const SCALE: i128 = 1000;

/// Index of a flow in its [`Scheduler`].
pub type FlowId = usize;

/// What a dispatch charged, to be set right by [`Scheduler::complete`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge {
    flow: FlowId,
    estimate_ns: u64,
}

struct Flow<T> {
    key: u32,
    weight: i128,
    jobs: VecDeque<T>,
    /// Jobs dispatched and not completed.
    running: usize,
    /// The last submission.
    submitted: Option<Instant>,
    vtime: i128,
    /// Moving average of the engine time of this flow's jobs.
    estimate_ns: u64,
    /// Whether the flow has an entry in the heap.
    queued: bool,
}

impl<T> Flow<T> {
    /// Active with no job running: the next free worker is its own.
    fn wants_a_worker(&self, now: Instant) -> bool {
        self.running == 0 && self.active(now)
    }

    fn active(&self, now: Instant) -> bool {
        !self.jobs.is_empty()
            || self.running > 0
            || self
                .submitted
                .is_some_and(|at| now.saturating_duration_since(at) < ACTIVE_WINDOW)
    }
}

/// Flows of jobs, served by virtual time.
pub struct Scheduler<T> {
    /// Workers that run the jobs, to divide between active flows.
    workers: usize,
    flows: Vec<Flow<T>>,
    /// Backlogged flows by virtual time when queued; an entry whose time is
    /// out of date (its flow was charged since) is queued again when popped.
    heap: BinaryHeap<Reverse<(i128, u64, FlowId)>>,
    /// Virtual time of the last dispatch: where a flow that wakes up starts.
    vclock: i128,
    sequence: u64,
    len: usize,
}

impl<T> Scheduler<T> {
    /// An empty scheduler for `workers` workers.
    pub fn new(workers: usize) -> Self {
        Scheduler {
            workers: workers.max(1),
            flows: Vec::new(),
            heap: BinaryHeap::new(),
            vclock: 0,
            sequence: 0,
            len: 0,
        }
    }

    /// The flow of tenant `key`, made with `weight` (at least 1) the first time.
    pub fn flow(&mut self, key: u32, weight: u32) -> FlowId {
        if let Some(id) = self.flows.iter().position(|flow| flow.key == key) {
            return id;
        }
        self.flows.push(Flow {
            key,
            weight: i128::from(weight.max(1)),
            jobs: VecDeque::new(),
            running: 0,
            submitted: None,
            vtime: self.vclock,
            estimate_ns: 0,
            queued: false,
        });
        self.flows.len() - 1
    }

    /// Whether no job waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `job`, submitted at `now`, at the back of `flow` (an id from
    /// [`Scheduler::flow`]).
    pub fn push(&mut self, flow: FlowId, job: T, now: Instant) {
        self.push_all(flow, std::iter::once(job), now);
    }

    /// Adds `jobs`, in order, submitted at `now`, at the back of `flow`.
    /// Each job is moved into the flow's queue once.
    pub fn push_all(&mut self, flow: FlowId, jobs: impl IntoIterator<Item = T>, now: Instant) {
        let Some(entry) = self.flows.get_mut(flow) else {
            return;
        };
        let before = entry.jobs.len();
        entry.jobs.extend(jobs);
        let added = entry.jobs.len() - before;
        if added == 0 {
            return;
        }
        entry.submitted = Some(now);
        self.len += added;
        if !entry.queued {
            entry.queued = true;
            entry.vtime = entry.vtime.max(self.vclock);
            let key = (entry.vtime, self.next_sequence(), flow);
            self.heap.push(Reverse(key));
        }
    }

    /// The next job at `now`: the head of the flow with the least virtual
    /// time among those that may take a worker.
    pub fn pop(&mut self, now: Instant) -> Option<(T, Charge)> {
        let running: usize = self.flows.iter().map(|flow| flow.running).sum();
        let waiting = self.flows.iter().filter(|f| f.wants_a_worker(now)).count();
        // Whether a flow that runs a job already may take one more worker.
        let spare = self.workers.saturating_sub(running) > waiting;
        let mut held_back = Vec::new();
        let popped = self.pop_below(spare, &mut held_back);
        self.heap.extend(held_back);
        popped
    }

    fn pop_below(
        &mut self,
        spare: bool,
        held_back: &mut Vec<Reverse<(i128, u64, FlowId)>>,
    ) -> Option<(T, Charge)> {
        while let Some(Reverse((vtime, queued_at, id))) = self.heap.pop() {
            let sequence = self.next_sequence();
            let Some(flow) = self.flows.get_mut(id) else {
                continue;
            };
            if flow.vtime != vtime {
                // Charged since it was queued: take its place again.
                self.heap.push(Reverse((flow.vtime, sequence, id)));
                continue;
            }
            if flow.running > 0 && !spare && !flow.jobs.is_empty() {
                held_back.push(Reverse((vtime, queued_at, id)));
                continue;
            }
            let Some(job) = flow.jobs.pop_front() else {
                flow.queued = false;
                continue;
            };
            self.len -= 1;
            flow.running += 1;
            self.vclock = self.vclock.max(vtime);
            let estimate_ns = flow.estimate_ns;
            flow.vtime += i128::from(estimate_ns) * SCALE / flow.weight;
            if flow.jobs.is_empty() {
                flow.queued = false;
            } else {
                self.heap.push(Reverse((flow.vtime, sequence, id)));
            }
            let charge = Charge {
                flow: id,
                estimate_ns,
            };
            return Some((job, charge));
        }
        None
    }

    /// Charges a dispatched job the engine time it really took.
    pub fn complete(&mut self, charge: Charge, elapsed: Duration) {
        let Some(flow) = self.flows.get_mut(charge.flow) else {
            return;
        };
        flow.running = flow.running.saturating_sub(1);
        let actual = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let error = i128::from(actual) - i128::from(charge.estimate_ns);
        flow.vtime += error * SCALE / flow.weight;
        // An average over about eight jobs.
        flow.estimate_ns = flow.estimate_ns - flow.estimate_ns / 8 + actual / 8;
    }

    /// Takes out every waiting job that `pred` selects. A flow left empty
    /// leaves the heap, so that its next job starts from the current
    /// virtual time like any flow that went idle.
    pub fn remove_where(&mut self, mut pred: impl FnMut(&T) -> bool) -> Vec<T> {
        let mut removed = Vec::new();
        for flow in &mut self.flows {
            let (taken, kept): (VecDeque<T>, VecDeque<T>) = std::mem::take(&mut flow.jobs)
                .into_iter()
                .partition(&mut pred);
            flow.jobs = kept;
            flow.queued &= !flow.jobs.is_empty();
            removed.extend(taken);
        }
        let flows = &self.flows;
        self.heap
            .retain(|Reverse((_, _, id))| flows.get(*id).is_some_and(|flow| flow.queued));
        self.len -= removed.len();
        removed
    }

    fn next_sequence(&mut self) -> u64 {
        self.sequence += 1;
        self.sequence
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Instant {
        Instant::now()
    }

    /// Runs `rounds` dispatches where a job of `flow` costs `cost(flow)`,
    /// with every flow always backlogged; returns engine time per flow.
    fn share(weights: &[u32], cost: impl Fn(usize) -> u64, rounds: usize) -> Vec<u64> {
        let mut scheduler = Scheduler::new(1);
        let flows: Vec<FlowId> = (0u32..)
            .zip(weights)
            .map(|(key, weight)| scheduler.flow(key, *weight))
            .collect();
        for &flow in &flows {
            scheduler.push(flow, flow, now());
            scheduler.push(flow, flow, now());
        }
        let mut time = vec![0u64; flows.len()];
        for _ in 0..rounds {
            let (flow, charge) = scheduler.pop(now()).unwrap_or_else(|| panic!("no job"));
            let ns = cost(flow);
            time[flow] += ns;
            scheduler.complete(charge, Duration::from_nanos(ns));
            scheduler.push(flow, flow, now());
        }
        time
    }

    fn jain(values: &[f64]) -> f64 {
        let sum: f64 = values.iter().sum();
        let squares: f64 = values.iter().map(|v| v * v).sum();
        sum * sum / (values.len() as f64 * squares)
    }

    #[test]
    fn equal_tenants_get_equal_time_whatever_their_job_sizes() {
        // 1 µs, 16 µs and 1 ms jobs.
        let time = share(&[1, 1, 1], |flow| [1_000, 16_000, 1_000_000][flow], 20_000);
        let time: Vec<f64> = time.iter().map(|t| *t as f64).collect();
        assert!(jain(&time) > 0.99, "{time:?}");
    }

    /// Engine time per flow on `workers` simulated workers over 200 ms of
    /// simulated time, every flow always backlogged, a job of `flow` taking
    /// `cost(flow)` nanoseconds.
    fn simulate(workers: usize, weights: &[u32], cost: impl Fn(usize) -> u64) -> Vec<u64> {
        let mut scheduler = Scheduler::new(workers);
        let flows: Vec<FlowId> = (0u32..)
            .zip(weights)
            .map(|(key, weight)| scheduler.flow(key, *weight))
            .collect();
        let start = Instant::now();
        for &flow in &flows {
            (0..64).for_each(|_| scheduler.push(flow, flow, start));
        }
        let mut time = vec![0u64; flows.len()];
        // (finish time, flow, charge) of the running jobs.
        let mut running: Vec<(u64, FlowId, Charge)> = Vec::new();
        let mut clock = 0u64;
        while clock < 200_000_000 {
            while running.len() < workers {
                let at = start + Duration::from_nanos(clock);
                let Some((flow, charge)) = scheduler.pop(at) else {
                    break;
                };
                running.push((clock + cost(flow), flow, charge));
            }
            let next = (0..running.len())
                .min_by_key(|index| running[*index].0)
                .unwrap_or_else(|| panic!("no job running"));
            let (finish, flow, charge) = running.swap_remove(next);
            clock = finish;
            time[flow] += cost(flow);
            scheduler.complete(charge, Duration::from_nanos(cost(flow)));
            scheduler.push(flow, flow, start + Duration::from_nanos(clock));
        }
        time
    }

    #[test]
    fn weights_share_out_the_workers_beyond_one_per_flow() {
        // Four workers, two flows: one each, and the other two to weight 3.
        let time = simulate(4, &[1, 3], |flow| [50_000, 10_000][flow]);
        let ratio = time[1] as f64 / time[0] as f64;
        assert!((2.7..3.3).contains(&ratio), "{time:?}");
    }

    #[test]
    fn weights_order_the_flows_waiting_for_a_worker() {
        // Two workers, three flows: the heavy one takes a free worker
        // whenever it has none, but never holds both.
        let time = simulate(2, &[1, 1, 4], |_| 20_000);
        let total: u64 = time.iter().sum();
        let heavy = time[2] as f64 / total as f64;
        assert!((0.45..=0.5).contains(&heavy), "{time:?}");
        assert!(jain(&[time[0] as f64, time[1] as f64]) > 0.99, "{time:?}");
    }

    #[test]
    fn equal_flows_share_several_workers_and_keep_them_busy() {
        let time = simulate(3, &[1, 1], |flow| [1_000_000, 20_000][flow]);
        assert!(jain(&[time[0] as f64, time[1] as f64]) > 0.99, "{time:?}");
        let busy: u64 = time.iter().sum();
        assert!(
            busy > 3 * 190_000_000,
            "workers left idle: {busy} ns of work"
        );
    }

    #[test]
    fn weights_divide_the_time() {
        let time = share(&[1, 3], |_| 10_000, 4_000);
        let ratio = time[1] as f64 / time[0] as f64;
        assert!((2.8..3.2).contains(&ratio), "{time:?}");
    }

    #[test]
    fn an_idle_flow_banks_no_credit() {
        let mut scheduler = Scheduler::new(1);
        let (busy, idle) = (scheduler.flow(1, 1), scheduler.flow(2, 1));
        for _ in 0..1000 {
            scheduler.push(busy, busy, now());
            let (_, charge) = scheduler.pop(now()).unwrap_or_else(|| panic!("no job"));
            scheduler.complete(charge, Duration::from_micros(10));
        }
        // The idle flow wakes up: it alternates with the busy one instead of
        // running 1000 jobs in a row.
        for _ in 0..4 {
            scheduler.push(busy, busy, now());
            scheduler.push(idle, idle, now());
        }
        let mut order = Vec::new();
        while let Some((flow, charge)) = scheduler.pop(now()) {
            order.push(flow);
            scheduler.complete(charge, Duration::from_micros(10));
        }
        let idle_first_half = order[..4].iter().filter(|f| **f == idle).count();
        assert!((1..=3).contains(&idle_first_half), "{order:?}");
    }

    #[test]
    fn concurrent_dispatches_spread_over_flows() {
        let mut scheduler = Scheduler::new(1);
        let (a, b) = (scheduler.flow(1, 1), scheduler.flow(2, 1));
        // Teach both flows, side by side, that their jobs take 100 µs.
        for _ in 0..32 {
            scheduler.push(a, a, now());
            scheduler.push(b, b, now());
            for _ in 0..2 {
                let (_, charge) = scheduler.pop(now()).unwrap_or_else(|| panic!("no job"));
                scheduler.complete(charge, Duration::from_micros(100));
            }
        }
        for _ in 0..2 {
            scheduler.push(a, a, now());
            scheduler.push(b, b, now());
        }
        // Two of four workers take a job each before either completes: one
        // per flow (each flow's share, two workers, would allow both).
        scheduler.workers = 4;
        let first = scheduler.pop(now()).map(|(flow, _)| flow);
        let second = scheduler.pop(now()).map(|(flow, _)| flow);
        assert_ne!(first, second);
    }

    #[test]
    fn removal_and_length() {
        let mut scheduler = Scheduler::new(1);
        let a = scheduler.flow(7, 2);
        assert_eq!(scheduler.flow(7, 5), a, "one flow per tenant");
        let b = scheduler.flow(8, 1);
        (0..5).for_each(|n| scheduler.push(a, n, now()));
        (10..13).for_each(|n| scheduler.push(b, n, now()));
        let mut removed = scheduler.remove_where(|n| n % 2 == 0);
        removed.sort_unstable();
        assert_eq!(removed, [0, 2, 4, 10, 12]);
        let mut rest = Vec::new();
        while let Some((n, charge)) = scheduler.pop(now()) {
            rest.push(n);
            scheduler.complete(charge, Duration::from_micros(1));
        }
        rest.sort_unstable();
        assert_eq!(rest, [1, 3, 11]);
        assert!(scheduler.is_empty());
    }
}

#[cfg(test)]
mod share_tests {
    use super::*;

    #[test]
    fn a_busy_flow_leaves_workers_to_a_recently_active_one_whatever_the_weights() {
        for (flood_weight, victim_weight) in [(1, 1), (3, 1), (1, 3)] {
            leaves_a_worker(flood_weight, victim_weight);
        }
    }

    fn leaves_a_worker(flood_weight: u32, victim_weight: u32) {
        let mut scheduler = Scheduler::new(2);
        let flood = scheduler.flow(1, flood_weight);
        let victim = scheduler.flow(2, victim_weight);
        let start = Instant::now();
        (0..8).for_each(|n| scheduler.push(flood, n, start));
        // Alone, the flood may use both workers.
        let (_, first) = scheduler.pop(start).unwrap_or_else(|| panic!("no job"));
        let (_, second) = scheduler.pop(start).unwrap_or_else(|| panic!("no job"));
        scheduler.complete(first, Duration::from_micros(100));
        scheduler.complete(second, Duration::from_micros(100));
        // The victim submits and completes a short job.
        scheduler.push(victim, 100, start);
        let (job, charge) = scheduler.pop(start).unwrap_or_else(|| panic!("no job"));
        assert_eq!(job, 100, "the victim's job comes first");
        scheduler.complete(charge, Duration::from_micros(2));
        // While the victim is active, the flood runs one job at a time.
        let (_, running) = scheduler.pop(start).unwrap_or_else(|| panic!("no job"));
        assert!(
            scheduler.pop(start).is_none(),
            "the second worker stays free"
        );
        scheduler.push(victim, 101, start);
        let (job, charge) = scheduler.pop(start).unwrap_or_else(|| panic!("no job"));
        assert_eq!(job, 101, "the victim's next job takes the free worker");
        scheduler.complete(charge, Duration::from_micros(2));
        scheduler.complete(running, Duration::from_micros(100));
        // Once the victim has been quiet for the window, both workers again.
        let later = start + ACTIVE_WINDOW * 2;
        let mut flood_jobs = 0;
        while scheduler.pop(later).is_some() {
            flood_jobs += 1;
        }
        assert_eq!(flood_jobs, 2);
    }
}
