// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The isolation suite: adversarial tenants against well-behaved ones, on one
//! daemon, over real vhost-user sockets (spec §12.5, §9, §10).
//!
//! Each test checks the exact status the adversary gets and that the victim's
//! results stay right: handles and fences of one tenant mean nothing to
//! another (a foreign handle or fence is "no such object/fence", exactly as a
//! never-issued one); addresses outside a tenant's own memory are refused
//! even where another tenant has memory; a flood of malformed requests, a
//! memory-table change or a VM killed in the middle of its jobs leaves the
//! other tenants' results and counters alone; quotas answer Busy and never
//! block; a tenant that goes away releases its objects, and reconnecting
//! finds none of its old handles.
//!
//! Against an installed daemon: start it with two tenants of default
//! settings and run `ACCEL_TEST_TENANTS=/run/a.sock,/run/b.sock cargo test
//! --release -p accel-tests --test tenants -- --test-threads 1`; the tests
//! that need quotas or the daemon's counters say that they skip.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use accel_driver::device::Error as DriverError;
use accel_driver::virtqueue::DESC_F_NEXT;
use accel_driver::{Buffer, Completion, DmaBuf, DmaMemory, RawDesc, RawNext, Request};
use accel_tests::data::TestRng;
use accel_tests::harness::{
    guest_ram, tenant, AccelDevice, Daemon, EXTERNAL_SOCKET_ENV, EXTERNAL_TENANTS_ENV,
};
use accel_tests::reference;
use vhost_user_accel::config::Quota;
use vhost_user_accel::quota::QuotaKind;
use vhost_user_accel::Config;
use virtio_accel_spec::{Fence, Op, Resp, Status};

const TIMEOUT: Duration = Duration::from_secs(10);
const MIB: usize = 1 << 20;
/// The largest buffer of a request (`max_buffer_size`, 64 MiB by default).
const BIG: usize = 64 * MIB;
/// Chained jobs on [`BIG`] bytes: long enough (seconds of engine time) for
/// the control commands a test sends meanwhile.
const CHAIN: u64 = 32;

/// Tenants of a daemon configured by the test, or `None` (skipped) when the
/// suite runs against an installed daemon.
fn configured(name: &str, tenants: Vec<vhost_user_accel::TenantConfig>) -> Option<Vec<Daemon>> {
    let external = [EXTERNAL_TENANTS_ENV, EXTERNAL_SOCKET_ENV]
        .iter()
        .any(|var| std::env::var_os(var).is_some());
    if external {
        eprintln!("{name}: skipped, it needs a daemon configuration of its own");
        return None;
    }
    Some(Daemon::start_config(Config::with_tenants(tenants)))
}

fn open(daemon: &Daemon, mem: &DmaMemory) -> AccelDevice {
    let mut dev = daemon.connect(mem);
    dev.set_timeout(TIMEOUT);
    dev
}

fn staged(mem: &DmaMemory, data: &[u8]) -> DmaBuf {
    let buf = mem.alloc(data.len().max(1)).unwrap();
    mem.write(&buf, 0, data).unwrap();
    buf
}

fn status(completion: &Completion) -> Status {
    completion.status().unwrap()
}

/// CRC-32C of `data` through `dev`, checked against the reference.
fn checked_crc(dev: &AccelDevice, mem: &DmaMemory, data: &[u8], what: &str) {
    let buf = staged(mem, data);
    let done = dev
        .run(0, &Request::new(Op::Crc32c).input(Buffer::direct(&buf)))
        .unwrap();
    assert_eq!(status(&done), Status::Ok, "{what}");
    assert_eq!(
        done.result_u32(),
        reference::crc32c(0, data),
        "{what}: wrong CRC"
    );
}

/// A copy of `len` bytes out of `object` at offset 0, as the guest reads it.
fn copy_out(dev: &AccelDevice, mem: &DmaMemory, source: Buffer, len: usize) -> (Status, Vec<u8>) {
    let out = mem.alloc(len).unwrap();
    mem.fill(&out, 0xee).unwrap();
    let done = dev
        .run(
            0,
            &Request::new(Op::Copy)
                .input(source)
                .output(Buffer::direct(&out)),
        )
        .unwrap();
    (status(&done), mem.read_vec(&out, 0, len).unwrap())
}

/// The header of a CRC-32C request of one direct input of `len` bytes.
fn crc_header(mem: &DmaMemory, len: usize) -> DmaBuf {
    let shape = mem.alloc(len.max(1)).unwrap();
    let header = Request::new(Op::Crc32c)
        .input(Buffer::direct_range(&shape, 0, len).unwrap())
        .encode_header()
        .unwrap();
    staged(mem, &header)
}

/// `(gpa, len, device_writable)` of a buffer.
fn seg(buf: &DmaBuf, writable: bool) -> (u64, u32, bool) {
    (buf.gpa(), u32::try_from(buf.len()).unwrap(), writable)
}

/// Sends `chain` as it is on request queue 0 and waits for its used entry;
/// returns the used length.
fn raw_chain(dev: &mut AccelDevice, chain: &[RawDesc], token: u64) -> u32 {
    let queue = dev.raw_queue(1).unwrap();
    let head = queue.add_raw(chain, token).unwrap();
    queue.publish().unwrap();
    dev.notify(1).unwrap();
    let used = dev.wait_used(1, TIMEOUT).unwrap().expect("no used entry");
    assert_eq!((used.head, used.token), (head, token));
    used.len
}

/// A CRC-32C request whose `len`-byte input is the raw guest-physical range
/// at `gpa`, which need not be guest memory; returns the response.
fn crc_at(dev: &mut AccelDevice, mem: &DmaMemory, gpa: u64, len: usize, token: u64) -> Resp {
    let header = crc_header(mem, len);
    let resp = mem.alloc(64).unwrap();
    mem.fill(&resp, 0xff).unwrap();
    let len = u32::try_from(len).unwrap();
    let chain = RawDesc::chain(&[seg(&header, false), (gpa, len, false), seg(&resp, true)]);
    raw_chain(dev, &chain, token);
    mem.read_obj::<Resp>(&resp, 0).unwrap()
}

/// Malformed chains: a loop, a chain longer than `max_segments`, a length
/// past guest memory, an address that overflows. Each must come back, with
/// a failure status or used length 0 (§6.5), never a hang.
fn chain_attacks(dev: &mut AccelDevice, mem: &DmaMemory, token: &mut u64) {
    let header = crc_header(mem, 9);
    let long_header = crc_header(mem, 100);
    let data = staged(mem, &[7; 100]);
    let resp = mem.alloc(64).unwrap();
    let mut looped = RawDesc::chain(&[seg(&header, false), seg(&data, false), seg(&resp, true)]);
    looped[1].next = RawNext::Desc(0);
    looped[1].flags |= DESC_F_NEXT;
    let mut too_long = vec![seg(&long_header, false)];
    too_long.extend((0..100).map(|i| (data.gpa() + i, 1, false)));
    too_long.push(seg(&resp, true));
    let attacks = [
        looped,
        RawDesc::chain(&too_long),
        RawDesc::chain(&[seg(&header, false), (0, u32::MAX, false), seg(&resp, true)]),
        RawDesc::chain(&[
            seg(&header, false),
            (u64::MAX - 4, 9, false),
            seg(&resp, true),
        ]),
    ];
    for chain in &attacks {
        *token += 1;
        mem.fill(&resp, 0xff).unwrap();
        let used = raw_chain(dev, chain, *token);
        let answered = mem.read_obj::<Resp>(&resp, 0).unwrap();
        let status = Status::try_from(u32::from(answered.status));
        assert!(used == 0 || status.is_ok_and(|s| !s.is_ok()), "{status:?}");
    }
}

#[test]
fn handles_of_another_tenant_are_no_objects() {
    let tenants = Daemon::start_tenants(2);
    let (mem_a, mem_b) = (guest_ram(16), guest_ram(16));
    let (a, b) = (open(&tenants[0], &mem_a), open(&tenants[1], &mem_b));
    let mut rng = TestRng::new("handles_of_another_tenant_are_no_objects");
    let (secret_a, data_b) = (rng.bytes(4096), rng.bytes(4096));
    let buf_a = staged(&mem_a, &secret_a);
    let handle_a = a.create_object(&[(buf_a.gpa(), 4096)]).unwrap();
    let never = handle_a.wrapping_add(1000);

    // B has no object: A's handle is exactly as unknown as one never issued.
    for (what, handle) in [("A's handle", handle_a), ("a never-issued handle", never)] {
        let (got, out) = copy_out(&b, &mem_b, Buffer::object(handle, 0, 64), 64);
        assert_eq!(got, Status::NoObject, "B using {what}");
        assert!(
            out.iter().all(|&x| x == 0xee),
            "B using {what}: output written"
        );
        let destroyed = b.destroy_object(handle).unwrap_err();
        assert_eq!(
            destroyed.status(),
            Some(Status::NoObject),
            "B destroying {what}"
        );
    }
    // B's own first object may get the same handle value: it names B's memory.
    let buf_b = staged(&mem_b, &data_b);
    let handle_b = b.create_object(&[(buf_b.gpa(), 4096)]).unwrap();
    let (got, out) = copy_out(&b, &mem_b, Buffer::object(handle_b, 0, 4096), 4096);
    assert_eq!((got, out == data_b), (Status::Ok, true), "B's own object");
    // B destroying its handle (perhaps equal to A's) leaves A's object alone.
    b.destroy_object(handle_b).unwrap();
    let (got, out) = copy_out(&a, &mem_a, Buffer::object(handle_a, 0, 4096), 4096);
    assert_eq!(
        (got, out == secret_a),
        (Status::Ok, true),
        "A's object after B's attempts"
    );
}

#[test]
fn fences_of_another_tenant_are_no_fences() {
    let tenants = Daemon::start_tenants(2);
    let (mem_a, mem_b) = (guest_ram(16), guest_ram(16));
    let (a, b) = (open(&tenants[0], &mem_a), open(&tenants[1], &mem_b));
    let mut fences = Vec::new();
    for n in 0..5u8 {
        let buf = staged(&mem_a, &[n; 100]);
        let done = a
            .run(0, &Request::new(Op::Crc32c).input(Buffer::direct(&buf)))
            .unwrap();
        fences.push(done.resp.fence);
    }
    let signalled = fences[2];
    assert!(a.query_fence(signalled).unwrap());
    // B issued no fence: A's signalled fence and a never-issued one are alike.
    for (what, fence) in [
        ("A's fence", signalled),
        ("a never-issued fence", Fence::new(0, 99)),
    ] {
        let queried = b.query_fence(fence).unwrap_err();
        assert_eq!(queried.status(), Some(Status::NoFence), "B querying {what}");
        let waited = b.wait_fences(&[fence]).unwrap_err();
        assert_eq!(
            waited.status(),
            Some(Status::NoFence),
            "B waiting on {what}"
        );
        let buf = staged(&mem_b, b"abc");
        let done = b
            .run(
                0,
                &Request::new(Op::Crc32c)
                    .input(Buffer::direct(&buf))
                    .dep(fence),
            )
            .unwrap();
        assert_eq!(status(&done), Status::NoFence, "B depending on {what}");
    }
    // B's own timeline started at 1 and counts only B's chains (three so far).
    let buf = staged(&mem_b, b"123456789");
    let done = b
        .run(0, &Request::new(Op::Crc32c).input(Buffer::direct(&buf)))
        .unwrap();
    assert_eq!(status(&done), Status::Ok);
    assert_eq!(u64::from(done.resp.fence.seqno), 3);
    assert_eq!(done.result_u32(), 0xe306_9283);
}

#[test]
fn addresses_outside_the_tenants_memory_are_refused_where_another_has_memory() {
    let tenants = Daemon::start_tenants(2);
    // A has 16 MiB; B has 64 MiB, with its secret at 32 MiB, beyond A's end.
    let (mem_a, mem_b) = (guest_ram(16), guest_ram(64));
    let (mut a, b) = (open(&tenants[0], &mem_a), open(&tenants[1], &mem_b));
    let mut rng = TestRng::new("addresses_outside_the_tenants_memory");
    let secret = rng.bytes(8192);
    let secret_buf = mem_b.alloc_at(32 << 20, secret.len()).unwrap();
    mem_b.write(&secret_buf, 0, &secret).unwrap();
    let end = (16 * MIB) as u64;
    let cases: [(&str, u64, usize); 5] = [
        ("B's secret", 32 << 20, 8192),
        ("just past A's end", end, 64),
        ("straddling A's end", end - 4096, 8192),
        ("the last byte and one more", end - 1, 2),
        ("far outside", 1 << 40, 4096),
    ];
    for (token, (what, gpa, len)) in (1u64..).zip(cases) {
        let resp = crc_at(&mut a, &mem_a, gpa, len, token);
        assert_eq!(
            Status::try_from(u32::from(resp.status)),
            Ok(Status::BadAddress),
            "{what}"
        );
        assert_eq!(u64::from(resp.bytes_written), 0, "{what}");
        assert_eq!(resp.result, [0; 32], "{what}: a result leaked");
        let object = a.create_object(&[(gpa, len as u64)]).unwrap_err();
        assert_eq!(
            object.status(),
            Some(Status::BadAddress),
            "object over {what}"
        );
        checked_crc(&b, &mem_b, &secret, "B's secret meanwhile");
    }
    // A's own last byte is fine.
    let resp = crc_at(&mut a, &mem_a, end - 1, 1, 99);
    assert_eq!(Status::try_from(u32::from(resp.status)), Ok(Status::Ok));
}

#[test]
fn a_flood_of_malformed_requests_leaves_the_victim_alone() {
    let tenants = Daemon::start_tenants(2);
    let victim_daemon = tenants[1].clone();
    let adversary = std::thread::spawn({
        let daemon = tenants[0].clone();
        move || {
            let mem = guest_ram(16);
            let mut dev = open(&daemon, &mem);
            let buf = staged(&mem, &[1; 512]);
            let deadline = Instant::now() + Duration::from_millis(1500);
            let (mut refused, mut token) = (0u64, 0u64);
            while Instant::now() < deadline {
                chain_attacks(&mut dev, &mem, &mut token);
                let bad = [
                    Request::raw_op(0xdead).input(Buffer::direct(&buf)),
                    Request::new(Op::Copy).input(Buffer::object(77, 0, 512)),
                    Request::new(Op::Crc32c)
                        .input(Buffer::direct(&buf))
                        .dep(Fence::new(0, 1 << 40)),
                    Request::new(Op::Crc32c).input(Buffer::object(5, u64::MAX - 2, 8)),
                ];
                for request in &bad {
                    let done = dev.run(0, request).unwrap();
                    assert_ne!(status(&done), Status::Ok);
                    refused += 1;
                }
            }
            refused
        }
    });
    let mem = guest_ram(32);
    let victim = open(&victim_daemon, &mem);
    let mut rng = TestRng::new("a_flood_of_malformed_requests_leaves_the_victim_alone");
    let mut jobs = 0;
    while !adversary.is_finished() {
        let len = 1 + rng.below(64 << 10);
        checked_crc(&victim, &mem, &rng.bytes(len), "victim during the flood");
        jobs += 1;
    }
    let refused = adversary.join().unwrap();
    assert!(
        refused > 100 && jobs > 10,
        "{refused} refused, {jobs} victim jobs"
    );
    if let (Some(bad), Some(good)) = (tenants[0].stats(), tenants[1].stats()) {
        assert_eq!(bad.requests(Status::Ok), 0);
        assert!(bad.requests(Status::Unsupported) > 0 && bad.requests(Status::NoObject) > 0);
        assert_eq!(good.requests(Status::Ok), jobs);
        for status in Status::ALL.iter().filter(|s| !s.is_ok()) {
            assert_eq!(good.requests(*status), 0, "victim counted {status:?}");
        }
    }
}

#[test]
fn a_memory_table_change_of_one_tenant_leaves_the_other_alone() {
    let tenants = Daemon::start_tenants(2);
    let high = 1u64 << 32;
    let mem_a = DmaMemory::with_regions(&[(0, 16 * MIB), (high, 16 * MIB)]).unwrap();
    let mem_b = guest_ram(32);
    let (a, b) = (open(&tenants[0], &mem_a), open(&tenants[1], &mem_b));
    let mut rng = TestRng::new("a_memory_table_change_of_one_tenant");
    let data = rng.bytes(MIB);
    let hi = mem_a.alloc_at(high, data.len()).unwrap();
    mem_a.write(&hi, 0, &data).unwrap();
    let source = staged(&mem_b, &data);
    // B keeps a queue of large jobs busy while A's table changes twice.
    let batch: Vec<Fence> = (0..16u64)
        .map(|token| {
            let request = Request::new(Op::Crc32c).input(Buffer::direct(&source));
            b.submit(0, &request, token).unwrap()
        })
        .collect();
    b.flush(0).unwrap();
    let regions = mem_a.regions().to_vec();
    a.transport().set_mem_table_regions(&regions[..1]).unwrap();
    let gone = a
        .run(0, &Request::new(Op::Crc32c).input(Buffer::direct(&hi)))
        .unwrap();
    assert_eq!(status(&gone), Status::BadAddress, "A's removed region");
    a.transport().set_mem_table().unwrap();
    checked_crc(&a, &mem_a, &data, "A after its region came back");
    for completion in collect(&b, batch.len()) {
        assert_eq!(status(&completion), Status::Ok);
        assert_eq!(completion.result_u32(), reference::crc32c(0, &data));
    }
}

/// Waits until the device has taken the chain of `fence` (FENCE_QUERY
/// answers Ok for an issued fence, §6.2), so that control commands sent
/// next find its request in flight.
fn wait_taken(dev: &AccelDevice, fence: Fence) {
    eventually("the chain is taken", || dev.query_fence(fence).is_ok());
}

/// `count` completions of request queue 0, failing instead of waiting
/// forever for a lost one.
fn collect(dev: &AccelDevice, count: usize) -> Vec<Completion> {
    let mut done = Vec::new();
    while done.len() < count {
        let more = dev.wait(0, TIMEOUT).unwrap();
        assert!(
            !more.is_empty(),
            "{} of {count} completions in {TIMEOUT:?}",
            done.len()
        );
        done.extend(more);
    }
    done
}

/// Starts [`CHAIN`] CRC-32C jobs on the first [`BIG`] bytes of object
/// `handle`, each depending on the one before (tokens 0, 1, ...), and waits
/// until the device has taken them all.
fn run_long_chain(dev: &AccelDevice, handle: u32) {
    let mut fence: Option<Fence> = None;
    for token in 0..CHAIN {
        let mut request = Request::new(Op::Crc32c).input(Buffer::object(handle, 0, BIG as u64));
        if let Some(previous) = fence {
            request = request.dep(previous);
        }
        fence = Some(dev.submit(0, &request, token).unwrap());
    }
    dev.flush(0).unwrap();
    wait_taken(dev, fence.unwrap());
}

/// Polls `condition` for up to ten seconds.
fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within {TIMEOUT:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_vm_killed_mid_job_releases_everything_and_finds_nothing_on_reconnect() {
    let tenants = Daemon::start_tenants(2);
    let mut rng = TestRng::new("a_vm_killed_mid_job");
    let mem_a = guest_ram(160);
    let a = open(&tenants[0], &mem_a);
    let big = staged(&mem_a, &rng.bytes(BIG));
    let handle = a.create_object(&[(big.gpa(), BIG as u64)]).unwrap();
    run_long_chain(&a, handle);
    a.destroy_object(handle).unwrap();
    if let Some(stats) = tenants[0].stats() {
        assert_eq!(stats.held().0, 1, "a destroyed object in use is still held");
    }
    // The VMM dies: the connection closes with the jobs queued and running.
    a.into_transport().disconnect();
    let mem_b = guest_ram(16);
    let b = open(&tenants[1], &mem_b);
    checked_crc(&b, &mem_b, &rng.bytes(100_000), "B while A goes away");
    if let Some(stats) = tenants[0].stats() {
        eventually("A's objects released", || stats.held() == (0, 0));
    }
    // The VM comes back: a fresh device, no handle, fences from 1.
    let a = open(&tenants[0], &mem_a);
    let (got, _) = copy_out(&a, &mem_a, Buffer::object(handle, 0, 16), 16);
    assert_eq!(got, Status::NoObject, "a stale handle after reconnecting");
    let stale = a.query_fence(Fence::new(0, 5)).unwrap_err();
    assert_eq!(
        stale.status(),
        Some(Status::NoFence),
        "a stale fence after reconnecting"
    );
    let buf = staged(&mem_a, b"x");
    let done = a
        .run(0, &Request::new(Op::Crc32c).input(Buffer::direct(&buf)))
        .unwrap();
    assert_eq!(
        u64::from(done.resp.fence.seqno),
        2,
        "fences start again from 1"
    );
    checked_crc(&b, &mem_b, &rng.bytes(1000), "B after A's return");
}

// ---- quotas ------------------------------------------------------------------

/// Two tenants with quotas `first` and `second`.
fn with_quota(name: &str, first: Quota, second: Quota) -> Option<(Daemon, Daemon)> {
    let (mut one, mut two) = (tenant("first"), tenant("second"));
    (one.quota, two.quota) = (first, second);
    let mut tenants = configured(name, vec![one, two])?;
    let two = tenants.pop()?;
    Some((tenants.pop()?, two))
}

#[test]
fn the_inflight_quota_answers_busy_without_running_the_request() {
    let quota = Quota {
        inflight: Some(4),
        ..Quota::default()
    };
    // Both tenants have the quota; each counts only its own requests.
    let Some((limited, other)) = with_quota("inflight", quota, quota) else {
        return;
    };
    let mem = guest_ram(96);
    let dev = open(&limited, &mem);
    let big = staged(&mem, &vec![3; BIG]);
    let source = staged(&mem, &vec![4; MIB]);
    let outputs: Vec<DmaBuf> = (0..12)
        .map(|_| {
            let out = mem.alloc(MIB).unwrap();
            mem.fill(&out, 0xee).unwrap();
            out
        })
        .collect();
    // Sixteen chains in one kick: four long CRC-32C jobs are taken within
    // the quota, then twelve copies are over it.
    let crc = Request::new(Op::Crc32c).input(Buffer::direct(&big));
    let mut last = None;
    for token in 0..4 {
        last = Some(dev.submit(0, &crc, token).unwrap());
    }
    for (token, out) in (4u64..).zip(&outputs) {
        let request = Request::new(Op::Copy)
            .input(Buffer::direct(&source))
            .output(Buffer::direct(out));
        last = Some(dev.submit(0, &request, token).unwrap());
    }
    dev.flush(0).unwrap();
    wait_taken(&dev, last.unwrap());
    // Meanwhile the other tenant gets its own four.
    let mem_other = guest_ram(16);
    let second = open(&other, &mem_other);
    let small = staged(&mem_other, &[9; 1000]);
    for token in 0..4 {
        let request = Request::new(Op::Crc32c).input(Buffer::direct(&small));
        second.submit(0, &request, token).unwrap();
    }
    second.flush(0).unwrap();
    for completion in collect(&second, 4) {
        assert_eq!(
            status(&completion),
            Status::Ok,
            "the other tenant's quota is its own"
        );
    }
    let done = collect(&dev, 16);
    let crcs: Vec<u32> = done
        .iter()
        .filter(|c| c.token < 4)
        .map(|c| {
            assert_eq!(status(c), Status::Ok, "within the quota");
            c.result_u32()
        })
        .collect();
    assert!(
        crcs.len() == 4 && crcs.iter().all(|c| *c == crcs[0]),
        "{crcs:x?}"
    );
    for completion in done.iter().filter(|c| c.token >= 4) {
        let slot = usize::try_from(completion.token - 4).unwrap();
        let out = mem.read_vec(&outputs[slot], 0, MIB).unwrap();
        assert_eq!(status(completion), Status::Busy, "over the quota");
        assert_eq!(completion.bytes_written(), 0);
        assert!(out.iter().all(|&x| x == 0xee), "a Busy request ran");
    }
    let refusals = |d: &Daemon| d.stats().unwrap().quota_refusals(QuotaKind::Inflight);
    assert_eq!((refusals(&limited), refusals(&other)), (12, 0));
    // Once they have completed, the next request runs.
    let again = Request::new(Op::Copy)
        .input(Buffer::direct(&source))
        .output(Buffer::direct(&outputs[0]));
    assert_eq!(status(&dev.run(0, &again).unwrap()), Status::Ok);
}

#[test]
fn the_job_rate_quota_refuses_past_its_burst_and_refills() {
    let quota = Quota {
        jobs_per_sec: Some(50),
        ..Quota::default()
    };
    let Some((limited, _)) = with_quota("job rate", quota, Quota::default()) else {
        return;
    };
    let mem = guest_ram(16);
    let dev = open(&limited, &mem);
    let buf = staged(&mem, b"123456789");
    let crc = Request::new(Op::Crc32c).input(Buffer::direct(&buf));
    let start = Instant::now();
    let statuses: Vec<Status> = (0..120)
        .map(|_| status(&dev.run(0, &crc).unwrap()))
        .collect();
    let elapsed = start.elapsed();
    let ok = statuses.iter().filter(|s| **s == Status::Ok).count();
    assert!(statuses
        .iter()
        .all(|s| matches!(s, Status::Ok | Status::Busy)));
    // A burst of 50, plus what refilled at 50/s meanwhile.
    let refilled = usize::try_from(elapsed.as_millis() / 20).unwrap();
    let most = 50 + refilled + 1;
    assert!((50..=most).contains(&ok), "{ok} admitted in {elapsed:?}");
    assert_eq!(statuses[..50], [Status::Ok; 50], "the burst comes first");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(status(&dev.run(0, &crc).unwrap()), Status::Ok, "refilled");
    assert!(limited.stats().unwrap().quota_refusals(QuotaKind::JobRate) >= 120 - most as u64);
    // A new connection, a new device instance, does not refill the bucket
    // (§10.3.2): the VM that reconnects still finds it nearly empty.
    let spent = (0..20).filter(|_| status(&dev.run(0, &crc).unwrap()) == Status::Ok);
    assert!(spent.count() < 20);
    let start = Instant::now();
    dev.into_transport().disconnect();
    let dev = open(&limited, &mem);
    let buf = staged(&mem, b"123456789");
    let crc = Request::new(Op::Crc32c).input(Buffer::direct(&buf));
    let ok = (0..30)
        .filter(|_| status(&dev.run(0, &crc).unwrap()) == Status::Ok)
        .count();
    let refilled = usize::try_from(start.elapsed().as_millis() / 20).unwrap();
    assert!(ok <= refilled + 1, "{ok} of 30 admitted after reconnecting");
}

#[test]
fn the_byte_rate_quota_counts_every_buffer_of_a_request() {
    let quota = Quota {
        bytes_per_sec: Some(MIB as u64),
        ..Quota::default()
    };
    let Some((limited, _)) = with_quota("byte rate", quota, Quota::default()) else {
        return;
    };
    let mem = guest_ram(16);
    let dev = open(&limited, &mem);
    let (source, out) = (staged(&mem, &vec![1; MIB / 2]), mem.alloc(MIB / 2).unwrap());
    // 512 KiB in and 512 KiB out: one second's worth per copy.
    let copy = Request::new(Op::Copy)
        .input(Buffer::direct(&source))
        .output(Buffer::direct(&out));
    let start = Instant::now();
    let statuses: Vec<Status> = (0..4)
        .map(|_| status(&dev.run(0, &copy).unwrap()))
        .collect();
    assert!(
        start.elapsed() < Duration::from_millis(900),
        "too slow to judge"
    );
    // The full bucket admits the first; the second passes on what refilled
    // meanwhile and leaves the bucket a second in debt.
    assert_eq!(statuses[0], Status::Ok);
    assert_eq!(statuses[2..], [Status::Busy; 2], "{statuses:?}");
    let stats = limited.stats().unwrap();
    assert!(stats.quota_refusals(QuotaKind::ByteRate) >= 2);
    assert_eq!(stats.quota_refusals(QuotaKind::JobRate), 0);
}

#[test]
fn object_quotas_count_destroyed_objects_until_their_work_completes() {
    let quota = Quota {
        objects: Some(2),
        object_bytes: Some((80 * MIB) as u64),
        ..Quota::default()
    };
    let Some((limited, _)) = with_quota("objects", quota, Quota::default()) else {
        return;
    };
    let mem = guest_ram(160);
    let dev = open(&limited, &mem);
    let big = staged(&mem, &vec![5; BIG]);
    let small = staged(&mem, &[6; 4096]);
    let busy = |e: DriverError| assert_eq!(e.status(), Some(Status::Busy), "{e}");
    let first = dev.create_object(&[(big.gpa(), BIG as u64)]).unwrap();
    busy(
        dev.create_object(&[(big.gpa(), (32 * MIB) as u64)])
            .unwrap_err(),
    );
    let second = dev.create_object(&[(small.gpa(), 4096)]).unwrap();
    busy(dev.create_object(&[(small.gpa(), 4096)]).unwrap_err());
    dev.destroy_object(second).unwrap();
    // Chained jobs on the whole first object keep it in use after its destruction.
    run_long_chain(&dev, first);
    dev.destroy_object(first).unwrap();
    busy(
        dev.create_object(&[(big.gpa(), (32 * MIB) as u64)])
            .unwrap_err(),
    );
    let done = collect(&dev, usize::try_from(CHAIN).unwrap());
    assert!(done.iter().all(|c| status(c) == Status::Ok));
    let third = dev
        .create_object(&[(big.gpa(), (32 * MIB) as u64)])
        .unwrap();
    let stats = limited.stats().unwrap();
    assert_eq!(stats.held(), (1, (32 * MIB) as u64));
    assert_eq!(stats.quota_refusals(QuotaKind::ObjectBytes), 2);
    assert_eq!(stats.quota_refusals(QuotaKind::Objects), 1);
    dev.destroy_object(third).unwrap();
}
