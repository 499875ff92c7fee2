// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Memory tables that their files do not cover (spec §12.1, §12.4), over the
//! real vhost-user socket, with two tenants on one daemon.
//!
//! Tenant A's VMM sends a table whose region is larger than its memfd, and
//! on its next connection one whose file offset lies past the end of the
//! memfd. A mapping beyond the end of a file faults (SIGBUS) when touched,
//! so a daemon that accepted either table would die at the first request
//! whose ring or buffer lies there; with the daemon in this process, so
//! would this test. Each table must get an error reply (after which the
//! daemon ends the connection); A's requests meanwhile stay
//! untouched (not taken, not answered); tenant B completes requests with
//! the right results throughout; and A's next VMM connection, with a valid
//! table, works.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use accel_driver::transport::vhost_user::Error as VhostUserError;
use accel_driver::{Buffer, DmaBuf, DmaMemory, MemoryRegion, RawDesc, Request};
use accel_tests::data::TestRng;
use accel_tests::harness::{guest_ram, AccelDevice, Daemon};
use accel_tests::reference;
use vhost::vhost_user::Error as ProtocolError;
use virtio_accel_spec::{Op, Resp, Status};

const TIMEOUT: Duration = Duration::from_secs(10);
const MIB: u64 = 1 << 20;
/// Size of tenant A's guest RAM (and of its memfd).
const RAM_MIB: usize = 4;
/// Virtqueue of A's raw requests (request queue 1).
const RAW_VQ: u16 = 2;
/// Bytes of each CRC-32C input.
const INPUT: usize = 4096;
/// What response buffers hold until the device writes them.
const UNTOUCHED: u8 = 0xff;

fn staged(mem: &DmaMemory, data: &[u8]) -> DmaBuf {
    let buf = mem.alloc(data.len()).unwrap();
    mem.write(&buf, 0, data).unwrap();
    buf
}

/// A request of A, added as a raw chain to [`RAW_VQ`]: CRC-32C of the
/// [`INPUT`] bytes at guest address `input`, which need not be guest memory.
struct Pending {
    token: u64,
    resp: DmaBuf,
    /// The expected CRC, when the input is A's memory.
    crc: Option<u32>,
}

/// Adds and kicks the request of `token` on [`RAW_VQ`].
fn submit_crc_at(dev: &mut AccelDevice, input: u64, crc: Option<u32>, token: u64) -> Pending {
    let mem = dev.memory().clone();
    let shape = mem.alloc(INPUT).unwrap();
    let header = Request::new(Op::Crc32c)
        .input(Buffer::direct(&shape))
        .encode_header()
        .unwrap();
    let header = staged(&mem, &header);
    let resp = mem.alloc(64).unwrap();
    mem.fill(&resp, UNTOUCHED).unwrap();
    let len = |buf: &DmaBuf| u32::try_from(buf.len()).unwrap();
    let chain = RawDesc::chain(&[
        (header.gpa(), len(&header), false),
        (input, u32::try_from(INPUT).unwrap(), false),
        (resp.gpa(), len(&resp), true),
    ]);
    let queue = dev.raw_queue(RAW_VQ).unwrap();
    queue.add_raw(&chain, token).unwrap();
    queue.publish().unwrap();
    dev.notify(RAW_VQ).unwrap();
    Pending { token, resp, crc }
}

/// A's request that `input` (in its memory) be checksummed.
fn submit_crc(dev: &mut AccelDevice, input: &[u8], token: u64) -> Pending {
    let buf = staged(&dev.memory().clone(), input);
    let crc = reference::crc32c(0, input);
    submit_crc_at(dev, buf.gpa(), Some(crc), token)
}

/// Nothing of `pending` was taken: no used entry for a while, responses untouched.
fn assert_untouched(dev: &AccelDevice, pending: &[Pending], when: &str) {
    let used = dev.wait_used(RAW_VQ, Duration::from_millis(300)).unwrap();
    assert!(used.is_none(), "{when}: request answered: {used:?}");
    for p in pending {
        let resp = dev.memory().read_vec(&p.resp, 0, 64).unwrap();
        assert!(
            resp.iter().all(|&b| b == UNTOUCHED),
            "{when}: response of request {} written",
            p.token
        );
    }
}

/// `pending` is answered with the right CRC.
fn assert_answered(dev: &AccelDevice, pending: &Pending) {
    let used = dev
        .wait_used(RAW_VQ, TIMEOUT)
        .unwrap()
        .expect("no used entry");
    assert_eq!(used.token, pending.token);
    let resp = dev.memory().read_obj::<Resp>(&pending.resp, 0).unwrap();
    let status = Status::try_from(u32::from(resp.status));
    assert_eq!(status, Ok(Status::Ok), "request {}", pending.token);
    let result = u32::from_le_bytes(resp.result[..4].try_into().unwrap());
    assert_eq!(
        Some(result),
        pending.crc,
        "request {}: wrong CRC",
        pending.token
    );
}

/// Sends `regions` as A's memory table and checks that the daemon refuses
/// it with an error reply.
fn assert_refused(dev: &AccelDevice, regions: &[MemoryRegion], what: &str) {
    match dev.transport().set_mem_table_regions(regions) {
        Err(VhostUserError::Request {
            source: vhost::Error::VhostUserProtocol(ProtocolError::BackendInternalError),
            ..
        }) => {}
        Ok(()) => panic!("{what}: accepted"),
        Err(e) => panic!("{what}: no error reply but {e:?}"),
    }
}

/// A's one region, described as `size` bytes at `file_offset` of its memfd.
fn region(mem: &DmaMemory, size: u64, file_offset: u64) -> MemoryRegion {
    MemoryRegion {
        size,
        file_offset,
        ..mem.regions()[0]
    }
}

/// Tenant B checksums random data until `stop`, checking every result;
/// counts its requests in `done`.
fn neighbour(daemon: &Daemon, stop: &AtomicBool, done: &AtomicU64) {
    let mem = guest_ram(16);
    let mut dev = daemon.connect(&mem);
    dev.set_timeout(TIMEOUT);
    let mut rng = TestRng::new("memory_table neighbour");
    let buf = mem.alloc(64 * 1024).unwrap();
    while !stop.load(Ordering::Relaxed) {
        let len = rng.below(64 * 1024) + 1;
        let data = rng.bytes(len);
        mem.write(&buf, 0, &data).unwrap();
        let request = Request::new(Op::Crc32c).input(Buffer::direct_range(&buf, 0, len).unwrap());
        let completion = dev.run(0, &request).unwrap();
        assert_eq!(completion.status(), Ok(Status::Ok), "tenant B");
        assert_eq!(
            completion.result_u32(),
            reference::crc32c(0, &data),
            "tenant B: wrong CRC"
        );
        done.fetch_add(1, Ordering::Relaxed);
    }
}

/// Waits until B has completed `more` requests beyond `since`.
fn neighbour_progresses(done: &AtomicU64, since: u64, more: u64, when: &str) {
    let deadline = Instant::now() + TIMEOUT;
    while done.load(Ordering::Relaxed) < since + more {
        assert!(Instant::now() < deadline, "{when}: tenant B stalled");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn memory_tables_past_the_end_of_their_file_are_refused() {
    let _ = env_logger::builder().is_test(true).try_init();
    let tenants = Daemon::start_tenants(2);
    let (stop, done) = (AtomicBool::new(false), AtomicU64::new(0));
    std::thread::scope(|scope| {
        let b = scope.spawn(|| neighbour(&tenants[1], &stop, &done));
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            tenant_a(&tenants[0], &done);
        }));
        stop.store(true, Ordering::Relaxed);
        b.join().unwrap();
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    });
}

/// A new VMM connection of tenant A, its requests working.
fn connect_a(daemon: &Daemon, mem: &DmaMemory, rng: &mut TestRng, token: u64) -> AccelDevice {
    let mut dev = daemon.connect(mem);
    dev.set_timeout(TIMEOUT);
    let sanity = submit_crc(&mut dev, &rng.bytes(INPUT), token);
    assert_answered(&dev, &sanity);
    dev
}

fn tenant_a(daemon: &Daemon, b_done: &AtomicU64) {
    let mem = guest_ram(RAM_MIB);
    let mut rng = TestRng::new("memory_table tenant A");
    let file_size = (RAM_MIB as u64) * MIB;
    neighbour_progresses(b_done, 0, 20, "before");

    // A region twice the size of the memfd, then a request whose input lies
    // in the part of that region past the end of the file: taken from that
    // table, it would fault.
    let mut dev = connect_a(daemon, &mem, &mut rng, 1);
    let what = "a region larger than its memfd";
    assert_refused(&dev, &[region(&mem, 2 * file_size, 0)], what);
    let since = b_done.load(Ordering::Relaxed);
    let pending = [
        submit_crc_at(&mut dev, file_size + 2 * MIB, None, 2),
        submit_crc(&mut dev, &rng.bytes(INPUT), 3),
    ];
    assert_untouched(&dev, &pending, what);
    neighbour_progresses(b_done, since, 20, what);

    // A region that starts at the end of the memfd: its rings lie past the
    // end of the file, so much as looking at them would fault.
    let mut dev = connect_a(daemon, &mem, &mut rng, 1);
    let what = "a region past the end of its memfd";
    assert_refused(&dev, &[region(&mem, file_size, file_size)], what);
    let since = b_done.load(Ordering::Relaxed);
    let pending = [submit_crc(&mut dev, &rng.bytes(INPUT), 2)];
    assert_untouched(&dev, &pending, what);
    neighbour_progresses(b_done, since, 20, what);

    // The next connection, with a valid table, works.
    let dev = connect_a(daemon, &mem, &mut rng, 1);
    let data = rng.bytes(INPUT);
    let buf = staged(&mem, &data);
    let completion = dev
        .run(0, &Request::new(Op::Crc32c).input(Buffer::direct(&buf)))
        .unwrap();
    assert_eq!(completion.status(), Ok(Status::Ok));
    assert_eq!(completion.result_u32(), reference::crc32c(0, &data));
    let since = b_done.load(Ordering::Relaxed);
    neighbour_progresses(b_done, since, 20, "after");
}
