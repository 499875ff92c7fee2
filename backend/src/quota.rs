// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Admission of a tenant's requests and objects against its quotas (§10:
//! host quotas are reported with Busy). Nothing here blocks: a request over
//! a quota is refused at once.

use std::time::Instant;

use crate::config::Quota;

/// The quota that refused something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaKind {
    /// Objects held.
    Objects,
    /// Bytes of objects held.
    ObjectBytes,
    /// Requests in flight.
    Inflight,
    /// Requests per second.
    JobRate,
    /// Buffer bytes per second.
    ByteRate,
}

impl QuotaKind {
    /// Every kind, in the order of [`QuotaKind::index`].
    pub const ALL: [QuotaKind; 5] = [
        QuotaKind::Objects,
        QuotaKind::ObjectBytes,
        QuotaKind::Inflight,
        QuotaKind::JobRate,
        QuotaKind::ByteRate,
    ];

    /// Position in [`QuotaKind::ALL`].
    pub fn index(self) -> usize {
        match self {
            QuotaKind::Objects => 0,
            QuotaKind::ObjectBytes => 1,
            QuotaKind::Inflight => 2,
            QuotaKind::JobRate => 3,
            QuotaKind::ByteRate => 4,
        }
    }

    /// Name in metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            QuotaKind::Objects => "objects",
            QuotaKind::ObjectBytes => "object_bytes",
            QuotaKind::Inflight => "inflight",
            QuotaKind::JobRate => "jobs_per_sec",
            QuotaKind::ByteRate => "bytes_per_sec",
        }
    }
}

/// Nanotokens per token: the bucket counts in units of 1e-9 of a job or byte
/// so that refilling by elapsed nanoseconds needs no division.
const NANO: i128 = 1_000_000_000;

/// A token bucket of `rate` tokens per second holding one second's worth.
/// A request is admitted while the bucket is not in debt and then takes its
/// whole cost, which may put it in debt: a request larger than the bucket
/// still passes when the bucket is full, and the long-run rate holds.
#[derive(Debug, Clone)]
struct TokenBucket {
    rate: i128,
    nanotokens: i128,
    refilled: Instant,
}

impl TokenBucket {
    /// Holding one second's worth.
    fn full(rate: u64, now: Instant) -> Self {
        let rate = i128::from(rate);
        TokenBucket {
            rate,
            nanotokens: rate * NANO,
            refilled: now,
        }
    }

    /// Holding nothing: the rate holds from the first request on.
    fn empty(rate: u64, now: Instant) -> Self {
        TokenBucket {
            nanotokens: 0,
            ..TokenBucket::full(rate, now)
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_nanos();
        let elapsed = i128::try_from(elapsed).unwrap_or(i128::MAX / 2);
        self.refilled = now;
        let capacity = self.rate * NANO;
        self.nanotokens = self
            .nanotokens
            .saturating_add(elapsed.saturating_mul(self.rate))
            .min(capacity);
    }

    fn ready(&self) -> bool {
        self.nanotokens > 0
    }

    fn take(&mut self, cost: u64) {
        self.nanotokens -= i128::from(cost) * NANO;
    }
}

/// The quotas of one device instance and the state of its rate buckets.
#[derive(Debug, Clone)]
pub struct Admission {
    quota: Quota,
    jobs: Option<TokenBucket>,
    bytes: Option<TokenBucket>,
}

impl Admission {
    /// Full buckets for `quota`.
    pub fn new(quota: Quota, now: Instant) -> Self {
        Admission::with_buckets(quota, now, TokenBucket::full)
    }

    /// Empty buckets for `quota`: for a tenant whose process was restarted,
    /// so that ending its own process never buys its guest a burst
    /// (§10.3.2).
    pub fn drained(quota: Quota, now: Instant) -> Self {
        Admission::with_buckets(quota, now, TokenBucket::empty)
    }

    fn with_buckets(quota: Quota, now: Instant, bucket: fn(u64, Instant) -> TokenBucket) -> Self {
        Admission {
            quota,
            jobs: quota.jobs_per_sec.map(|rate| bucket(rate, now)),
            bytes: quota.bytes_per_sec.map(|rate| bucket(rate, now)),
        }
    }

    /// Admits a request of `bytes` buffer bytes while `inflight` requests are
    /// in flight, taking its cost from the rate buckets; or names the quota
    /// that refuses it (and takes nothing).
    pub fn admit_request(
        &mut self,
        inflight: usize,
        bytes: u64,
        now: Instant,
    ) -> Result<(), QuotaKind> {
        if exceeds(self.quota.inflight, inflight as u64 + 1) {
            return Err(QuotaKind::Inflight);
        }
        for bucket in [&mut self.jobs, &mut self.bytes].into_iter().flatten() {
            bucket.refill(now);
        }
        if self.jobs.as_ref().is_some_and(|b| !b.ready()) {
            return Err(QuotaKind::JobRate);
        }
        if self.bytes.as_ref().is_some_and(|b| !b.ready()) {
            return Err(QuotaKind::ByteRate);
        }
        if let Some(bucket) = &mut self.jobs {
            bucket.take(1);
        }
        if let Some(bucket) = &mut self.bytes {
            bucket.take(bytes);
        }
        Ok(())
    }

    /// Admits one more object of `size` bytes next to `objects` objects of
    /// `bytes` bytes already held.
    pub fn admit_object(&self, objects: u64, bytes: u64, size: u64) -> Result<(), QuotaKind> {
        if exceeds(self.quota.objects, objects.saturating_add(1)) {
            return Err(QuotaKind::Objects);
        }
        if exceeds(self.quota.object_bytes, bytes.saturating_add(size)) {
            return Err(QuotaKind::ObjectBytes);
        }
        Ok(())
    }
}

fn exceeds(quota: Option<u64>, wanted: u64) -> bool {
    quota.is_some_and(|quota| wanted > quota)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn no_quota_admits_everything() {
        let now = Instant::now();
        let mut admission = Admission::new(Quota::default(), now);
        for _ in 0..10_000 {
            assert_eq!(admission.admit_request(1 << 20, u64::MAX, now), Ok(()));
        }
        assert_eq!(admission.admit_object(u64::MAX, u64::MAX, u64::MAX), Ok(()));
    }

    #[test]
    fn inflight_and_object_quotas_are_hard_limits() {
        let quota = Quota {
            inflight: Some(4),
            objects: Some(2),
            object_bytes: Some(100),
            ..Quota::default()
        };
        let now = Instant::now();
        let mut admission = Admission::new(quota, now);
        assert_eq!(admission.admit_request(3, 0, now), Ok(()));
        assert_eq!(admission.admit_request(4, 0, now), Err(QuotaKind::Inflight));
        assert_eq!(admission.admit_object(1, 50, 50), Ok(()));
        assert_eq!(admission.admit_object(2, 50, 1), Err(QuotaKind::Objects));
        assert_eq!(
            admission.admit_object(1, 50, 51),
            Err(QuotaKind::ObjectBytes)
        );
    }

    #[test]
    fn the_job_rate_allows_a_burst_then_refills_over_time() {
        let quota = Quota {
            jobs_per_sec: Some(100),
            ..Quota::default()
        };
        let start = Instant::now();
        let mut admission = Admission::new(quota, start);
        let admitted = (0..1000)
            .filter(|_| admission.admit_request(0, 0, start).is_ok())
            .count();
        assert_eq!(admitted, 100, "one second's worth at once");
        assert_eq!(
            admission.admit_request(0, 0, start),
            Err(QuotaKind::JobRate)
        );
        // 50 ms later, 5 more.
        let later = start + Duration::from_millis(50);
        let admitted = (0..1000)
            .filter(|_| admission.admit_request(0, 0, later).is_ok())
            .count();
        assert_eq!(admitted, 5);
    }

    #[test]
    fn drained_buckets_admit_only_the_rate_from_the_start() {
        let quota = Quota {
            jobs_per_sec: Some(100),
            bytes_per_sec: Some(1_000_000),
            ..Quota::default()
        };
        let start = Instant::now();
        let mut admission = Admission::drained(quota, start);
        assert_eq!(
            admission.admit_request(0, 0, start),
            Err(QuotaKind::JobRate)
        );
        // 50 ms later, 5 jobs and no burst.
        let later = start + Duration::from_millis(50);
        let admitted = (0..1000)
            .filter(|_| admission.admit_request(0, 1, later).is_ok())
            .count();
        assert_eq!(admitted, 5);
    }

    #[test]
    fn a_large_request_passes_a_full_byte_bucket_and_leaves_it_in_debt() {
        let quota = Quota {
            bytes_per_sec: Some(1000),
            jobs_per_sec: Some(1_000_000),
            ..Quota::default()
        };
        let start = Instant::now();
        let mut admission = Admission::new(quota, start);
        assert_eq!(admission.admit_request(0, 5000, start), Ok(()));
        let jobs_before = admission.jobs.as_ref().map(|b| b.nanotokens);
        // 4000 bytes of debt: refused for 4 s, and a refusal takes nothing.
        let at = |ms| start + Duration::from_millis(ms);
        assert_eq!(
            admission.admit_request(0, 1, at(3900)),
            Err(QuotaKind::ByteRate)
        );
        assert!(admission.jobs.as_ref().map(|b| b.nanotokens) >= jobs_before);
        assert_eq!(admission.admit_request(0, 1, at(4100)), Ok(()));
    }
}
