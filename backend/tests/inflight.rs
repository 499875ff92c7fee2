// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The front-end's inflight region (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD,
//! spec §11.3.3), as cloud-hypervisor v53 uses it and the harness front-end
//! plays it ([`FrontendModel::CloudHypervisor`]): at the first start of the
//! rings it asks for a region (`GET_INFLIGHT_FD`), which the daemon answers
//! with its tenant's device record; it hands the region back
//! (`SET_INFLIGHT_FD`) at every start, on a new connection too, and keeps
//! it across reconnections. So a daemon killed as a whole (supervisor and
//! tenant processes), and started again without a state directory, gets
//! the device record back from the VMM and resumes the device from it: a
//! pause for the guest. QEMU's generic device never sends the region: the
//! same kill then costs the guest its requests in flight until the driver
//! resets the device (§11.2). Regions that are not a record of the device
//! are ignored, with a line in the log, and the device serves on. A request
//! that makes the process fail whenever it runs is interrupted after two
//! failures there too (§11.3).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::time::{Duration, Instant};

use accel_driver::transport::vhost_user::InflightRegion;
use accel_driver::{
    Buffer, Completion, Device, DmaBuf, DmaMemory, FrontendModel, OpenOptions, Request,
    VhostUserOptions, VhostUserTransport,
};
use vhost::vhost_user::message::VhostUserInflight;
use vhost::vhost_user::{VhostUserFrontend, VhostUserProtocolFeatures};
use vhost_user_accel::config::{SocketSource, TenantConfig};
use vhost_user_accel::device_record::{DeviceRecord, MAGIC};
use virtio_accel_spec::{Op, Status};

use support::{
    assert_interrupted, fill_request, kill, submit_digests, submit_poison, Digests, Supervisor,
    PATIENCE,
};

type AccelDevice = Device<VhostUserTransport>;

/// Requests of the batch in flight at a kill; each digests a buffer of its own.
const BATCH: usize = 8;
const BATCH_INPUT: usize = 16 << 20;

/// What a daemon's log says when a device resumes from its record.
const RESUMED: &str = "resumed the device after a restart of the tenant's process";
/// What it says when it adopts the region a front-end handed back.
const ADOPTED: &str = "the front-end's inflight region is the device's record from now on";
/// What it says of a region it does not take.
const IGNORED: &str = "inflight region ignored";
/// What the supervisor says of a tenant's process that failed by itself
/// with a panic.
const CLOUD_HYPERVISOR: FrontendModel = FrontendModel::CloudHypervisor;
const STOCK_QEMU: FrontendModel = FrontendModel::Qemu {
    forwards_reset: false,
};

/// Opens the device of `socket` as `model`'s VMM does.
fn open(socket: &Path, memory: &DmaMemory, model: FrontendModel) -> AccelDevice {
    let options = VhostUserOptions::of(model);
    let transport = VhostUserTransport::connect_with(socket, memory, &options).unwrap();
    Device::open_with(transport, &OpenOptions::default()).unwrap()
}

/// Runs a FILL on request queue 0, which must complete Ok with fence
/// number `seqno` and fill its output.
fn fill_is(device: &AccelDevice, out: &DmaBuf, seqno: u64, what: &str) {
    let memory = device.memory();
    memory.write(out, 0, &[0; 64]).unwrap();
    let done = device
        .run(0, &fill_request(out))
        .unwrap_or_else(|e| panic!("{what}: {e}"))
        .check()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(u64::from(done.fence().seqno), seqno, "{what}: the fence");
    assert_eq!(memory.read_vec(out, 0, 64).unwrap(), [0x5a; 64], "{what}");
}

/// A CRC-32C of the first 9 bytes of object `handle`, which hold
/// "123456789".
fn crc_of_object(device: &AccelDevice, handle: u32) -> Completion {
    device
        .run(
            0,
            &Request::new(Op::Crc32c).input(Buffer::object(handle, 0, 9)),
        )
        .unwrap()
}

/// An object over "123456789".
fn digits_object(device: &AccelDevice) -> u32 {
    let memory = device.memory();
    let digits = memory.alloc(9).unwrap();
    memory.write(&digits, 0, b"123456789").unwrap();
    device.create_object(&[(digits.gpa(), 9)]).unwrap()
}

/// The size in bytes of the record of a tenant with the harness's default
/// configuration.
fn record_bytes(socket: &Path) -> u64 {
    let config = TenantConfig::new("t0", SocketSource::Path(socket.to_path_buf()));
    8 * u64::try_from(DeviceRecord::words_for(&config)).unwrap()
}

fn file_id(file: &File) -> (u64, u64) {
    let meta = file.metadata().unwrap();
    (meta.dev(), meta.ino())
}

/// The seals of `file` (F_GET_SEALS); -1 if it cannot have any.
fn seals(file: &File) -> libc::c_int {
    // SAFETY: F_GET_SEALS only reads the flags of a descriptor we own.
    unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) }
}

const SIZE_SEALS: libc::c_int = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;

/// A zeroed memfd of `len` bytes, sealed at its size if `sealed`.
fn memfd(len: u64, sealed: bool) -> File {
    // SAFETY: a valid C string and valid flags; the result is checked.
    let fd = unsafe {
        libc::memfd_create(
            c"inflight-test".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: memfd_create returned a new descriptor that nothing else owns.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.set_len(len).unwrap();
    if sealed {
        // SAFETY: adds seals to a memfd we own.
        let added = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, SIZE_SEALS) };
        assert_eq!(added, 0, "F_ADD_SEALS: {}", std::io::Error::last_os_error());
    }
    file
}

/// The read end of a new pipe.
fn pipe() -> File {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors are new and nothing else owns them.
    let (read, _write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    File::from(read)
}

/// Lines of `log` that contain `what`.
fn count(log: &str, what: &str) -> usize {
    log.lines().filter(|line| line.contains(what)).count()
}

/// Waits (`PATIENCE` at most) until the log has more lines with `what`
/// than `before`.
fn wait_for_more(supervisor: &Supervisor, what: &str, before: usize, context: &str) {
    let deadline = Instant::now() + PATIENCE;
    while count(&supervisor.log(), what) <= before {
        assert!(
            Instant::now() < deadline,
            "{context}: no new {what:?} in the log:\n{}",
            supervisor.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Under cloud-hypervisor's model the front-end asks for a region when
/// the rings first start and hands it back: the daemon answers with the
/// tenant's device record (the very memfd the supervisor keeps, sealed at
/// the record's size, from offset 0, for every virtqueue of the device),
/// and the device serves. A request for a region of another number of
/// virtqueues gets none.
#[test]
fn cloud_hypervisor_gets_the_device_record_as_its_inflight_region() {
    let supervisor = Supervisor::start("inflight-get", 1);
    let socket = supervisor.socket("t0");
    let memory = DmaMemory::new(4 << 20).unwrap();
    let device = open(&socket, &memory, CLOUD_HYPERVISOR);
    let transport = device.transport();
    assert!(
        transport
            .protocol_features()
            .contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD),
        "INFLIGHT_SHMFD not negotiated: {:?}",
        transport.protocol_features()
    );
    let region = transport
        .inflight_region()
        .expect("the front-end holds no region after GET_INFLIGHT_FD");
    let virtqueues = device.num_request_queues() + 1;
    assert_eq!(
        (region.mmap_offset, region.num_queues, region.queue_size),
        (0, virtqueues, VhostUserOptions::default().queue_size),
        "{region:?}"
    );
    let region_bytes = region.mmap_size;
    assert_eq!(region_bytes, record_bytes(&socket), "{region:?}");
    assert_eq!(region.file.metadata().unwrap().len(), region.mmap_size);
    assert_eq!(
        seals(&region.file) & SIZE_SEALS,
        SIZE_SEALS,
        "the region is not sealed at its size"
    );
    // The record itself: its magic word, and the memfd the supervisor holds.
    let mut word = [0u8; 8];
    region.file.read_exact_at(&mut word, 0).unwrap();
    assert_eq!(u64::from_ne_bytes(word), MAGIC);
    let ours = file_id(&region.file);
    let held = std::fs::read_dir(format!("/proc/{}/fd", supervisor.child.id()))
        .unwrap()
        .flatten()
        .filter_map(|entry| std::fs::metadata(entry.path()).ok())
        .any(|meta| (meta.dev(), meta.ino()) == ours);
    assert!(held, "the region is not the record the supervisor keeps");

    let out = memory.alloc(64).unwrap();
    for seqno in 1..=3 {
        fill_is(&device, &out, seqno, "a fill after SET_INFLIGHT_FD");
    }
    let handle = digits_object(&device);
    assert_eq!(
        crc_of_object(&device, handle).check().unwrap().result_u32(),
        0xe306_9283
    );
    device.into_transport().disconnect();

    // One connection at a time is served: each ask on a connection of its
    // own. More virtqueues than the device has, none, or a larger queue get
    // no region; fewer (cloud-hypervisor asks for those the driver set up)
    // get the record, which covers them all.
    let too_large = VhostUserOptions::default().queue_size * 2;
    for (num_queues, queue_size, given) in [
        (virtqueues + 1, 256, false),
        (0, 256, false),
        (virtqueues, too_large, false),
        (1, 256, true),
    ] {
        let options = VhostUserOptions::of(CLOUD_HYPERVISOR);
        let mut raw = VhostUserTransport::connect_with(&socket, &memory, &options).unwrap();
        let asked = VhostUserInflight {
            mmap_size: 0,
            mmap_offset: 0,
            num_queues,
            queue_size,
        };
        let size = match raw.frontend().get_inflight_fd(&asked) {
            Err(_) => 0,
            Ok((info, _)) => info.mmap_size,
        };
        assert_eq!(
            size != 0,
            given,
            "a region for {num_queues} virtqueues of {virtqueues}, {size} bytes"
        );
        if given {
            assert_eq!(size, region_bytes);
        }
        raw.disconnect();
    }
    // And the daemon serves on.
    let device = open(&socket, &memory, CLOUD_HYPERVISOR);
    let out = memory.alloc(64).unwrap();
    fill_is(&device, &out, 1, "a new connection");
}

/// The batch of [`batch_across_a_daemon_kill`].
struct Batch {
    digests: Digests,
    completions: Vec<Completion>,
    /// The log's length when the daemon was killed.
    mark: usize,
}

/// Three FILLs (fences 1 to 3) and an object over "123456789", then
/// [`BATCH`] SHA-256 digests made available, and the whole daemon SIGKILLed
/// while some of them are taken and not completed; a new daemon starts on
/// the same sockets, without a state directory. Returns the batch, its
/// completions published before the kill, and the object's handle.
fn batch_across_a_daemon_kill(
    supervisor: &mut Supervisor,
    device: &AccelDevice,
    out: &DmaBuf,
) -> (Batch, u32) {
    for seqno in 1..=3 {
        fill_is(device, out, seqno, "before the kill");
    }
    let handle = digits_object(device);
    let digests = submit_digests(device, BATCH, BATCH_INPUT, 0x3c);
    let completions = device.wait(0, PATIENCE).unwrap();
    assert!(
        !completions.is_empty() && completions.len() < BATCH,
        "{} of {BATCH} done before the kill",
        completions.len()
    );
    let mark = supervisor.log().len();
    supervisor.kill_and_start_again();
    let batch = Batch {
        digests,
        completions,
        mark,
    };
    (batch, handle)
}

/// What the region is for: the whole daemon (supervisor and tenant
/// processes) SIGKILLed under a batch and started again without a state
/// directory, cloud-hypervisor reconnects and hands back the region it
/// kept, which is the record of the killed daemon's device: the new daemon
/// takes it as its device's record and resumes the device from it. Every
/// request of the batch completes exactly once with its own digest and the
/// fence it was given, numbering goes on after the batch, and the object
/// made before the kill keeps its handle and bytes.
#[test]
fn a_killed_daemon_resumes_from_the_region_cloud_hypervisor_hands_back() {
    let mut supervisor = Supervisor::start("inflight-daemon-kill-ch", 1);
    let socket = supervisor.socket("t0");
    let memory = DmaMemory::new(BATCH * BATCH_INPUT + (8 << 20)).unwrap();
    let mut device = open(&socket, &memory, CLOUD_HYPERVISOR);
    let out = memory.alloc(64).unwrap();
    let region = file_id(
        &device
            .transport()
            .inflight_region()
            .expect("no region")
            .file,
    );
    let (mut batch, handle) = batch_across_a_daemon_kill(&mut supervisor, &device, &out);

    let options = VhostUserOptions::of(CLOUD_HYPERVISOR);
    device.transport_mut().reconnect(&socket, &options).unwrap();
    let held = device
        .transport()
        .inflight_region()
        .expect("the region was dropped");
    assert_eq!(
        file_id(&held.file),
        region,
        "the front-end kept another region"
    );
    let deadline = Instant::now() + PATIENCE;
    while batch.completions.len() < BATCH && Instant::now() < deadline {
        let more = device.wait(0, Duration::from_millis(200)).unwrap();
        batch.completions.extend(more);
    }
    // Anything more would be a request completed twice.
    let more = device.wait(0, Duration::from_millis(300)).unwrap();
    batch.completions.extend(more);
    let log = supervisor.log();
    let after = &log[batch.mark..];
    let mut tokens: Vec<u64> = batch.completions.iter().map(|c| c.token).collect();
    tokens.sort_unstable();
    assert_eq!(
        tokens,
        (0..BATCH as u64).collect::<Vec<_>>(),
        "every request once; the new daemon's log:\n{after}"
    );
    for completion in std::mem::take(&mut batch.completions) {
        let index = usize::try_from(completion.token).unwrap();
        let completion = completion.check().unwrap();
        assert_eq!(completion.fence(), batch.digests.fences[index]);
        assert_eq!(completion.result()[..32], batch.digests.expected[index][..]);
    }
    assert!(after.contains(ADOPTED), "{after}");
    assert!(after.contains(&format!("{RESUMED}: 1 objects")), "{after}");
    assert!(
        !after.contains(" 0 requests run again"),
        "nothing was in flight at the kill: {after}"
    );
    assert!(
        !after.contains("used by an earlier device instance"),
        "{after}"
    );
    assert!(!after.contains("cannot resume"), "{after}");
    assert!(!after.contains(IGNORED), "{after}");

    fill_is(&device, &out, 4 + BATCH as u64, "after the resume");
    let crc = crc_of_object(&device, handle).check().unwrap();
    assert_eq!(
        crc.result_u32(),
        0xe306_9283,
        "the object made before the kill"
    );
    let new = digits_object(&device);
    assert_ne!(new, handle);
}

/// The same kill under QEMU's generic device, which never hands a region
/// back: the new daemon has nothing to resume from (no state directory),
/// so it starts the device afresh and takes nothing from the rings the
/// killed daemon's device used (§11.2): the requests in flight are not
/// answered. The driver's reset then brings a device that serves, with
/// fences from 1 and no objects.
#[test]
fn without_a_region_a_killed_daemon_starts_the_device_afresh() {
    let mut supervisor = Supervisor::start("inflight-daemon-kill-qemu", 1);
    let socket = supervisor.socket("t0");
    let memory = DmaMemory::new(BATCH * BATCH_INPUT + (8 << 20)).unwrap();
    let mut device = open(&socket, &memory, STOCK_QEMU);
    assert!(device.transport().inflight_region().is_none());
    let out = memory.alloc(64).unwrap();
    let (mut batch, handle) = batch_across_a_daemon_kill(&mut supervisor, &device, &out);
    // Completions the killed daemon published after the first wait.
    batch.completions.extend(device.poll(0).unwrap());
    assert!(
        batch.completions.len() < BATCH,
        "the batch ended before the kill: nothing to tell"
    );

    let options = VhostUserOptions::of(STOCK_QEMU);
    device.transport_mut().reconnect(&socket, &options).unwrap();
    assert!(device.transport().inflight_region().is_none());
    let late = device.wait(0, Duration::from_secs(2)).unwrap();
    let after = supervisor.log()[batch.mark..].to_owned();
    assert!(
        late.is_empty(),
        "{} requests answered by a device with nothing to resume from:\n{after}",
        late.len()
    );
    assert!(!after.contains(RESUMED), "{after}");
    assert!(!after.contains(ADOPTED), "{after}");
    assert!(
        after.contains("used by an earlier device instance"),
        "{after}"
    );

    let transport = device.close().unwrap();
    let device = Device::open_with(transport, &OpenOptions::default()).unwrap();
    fill_is(&device, &out, 1, "after the driver's reset");
    let gone = crc_of_object(&device, handle);
    assert_eq!(gone.status(), Ok(Status::NoObject));
}

/// A bogus region for [`bogus_inflight_regions_are_ignored`].
fn bogus(what: &str, record: u64, dir: &Path) -> InflightRegion {
    let (file, mmap_size, mmap_offset) = match what {
        "an unsealed memfd of the record's size" => (memfd(record, false), record, 0),
        "a sealed memfd one page larger" => (memfd(record + 4096, true), record + 4096, 0),
        "a sealed memfd one word smaller" => (memfd(record - 8, true), record - 8, 0),
        "a sealed memfd of the record's size at offset 8" => (memfd(record, true), record, 8),
        "a sealed memfd of the record's size with no record in it" => {
            (memfd(record, true), record, 0)
        }
        "a regular file of the record's size" => {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(dir.join("region"))
                .unwrap();
            file.set_len(record).unwrap();
            (file, record, 0)
        }
        "a pipe" => (pipe(), record, 0),
        "/dev/null" => (File::open("/dev/null").unwrap(), record, 0),
        _ => unreachable!("{what}"),
    };
    InflightRegion {
        file,
        mmap_size,
        mmap_offset,
        num_queues: 3,
        queue_size: VhostUserOptions::default().queue_size,
    }
}

/// Regions that are not a record of the device, handed back by
/// `SET_INFLIGHT_FD` on a live connection (a paused VM that resumes) and
/// on a reconnection to a restarted tenant process, are ignored: the
/// message is acknowledged, the daemon says why in its log, the device
/// keeps its own record (after each restart it resumes from it: fences go
/// on), and the tenant's process never dies of it (an unsealed memfd is
/// truncated under the device). At the end, with the real region handed
/// back, a daemon killed whole resumes the device: the record stayed the
/// device's throughout.
#[test]
fn bogus_inflight_regions_are_ignored() {
    let mut supervisor = Supervisor::start("inflight-bogus", 1);
    let socket = supervisor.socket("t0");
    let memory = DmaMemory::new(4 << 20).unwrap();
    let mut device = open(&socket, &memory, CLOUD_HYPERVISOR);
    let options = VhostUserOptions::of(CLOUD_HYPERVISOR);
    let out = memory.alloc(64).unwrap();
    let mut seqno = 1;
    fill_is(&device, &out, seqno, "before any bogus region");
    let record = device
        .transport()
        .inflight_region()
        .expect("no region")
        .mmap_size;
    let kinds = [
        "an unsealed memfd of the record's size",
        "a sealed memfd one page larger",
        "a sealed memfd one word smaller",
        "a sealed memfd of the record's size at offset 8",
        "a sealed memfd of the record's size with no record in it",
        "a regular file of the record's size",
        "a pipe",
        "/dev/null",
    ];
    let mut real = None;
    for what in kinds {
        let region = bogus(what, record, &supervisor.dir);
        let unsealed = seals(&region.file) == 0;
        let replaced = device.transport_mut().replace_inflight_region(Some(region));
        real = real.or(replaced);

        // A pause and a resume on the live connection.
        let before = count(&supervisor.log(), IGNORED);
        let transport = device.transport_mut();
        let bases = transport.stop_rings().unwrap();
        transport
            .start_rings(&bases)
            .unwrap_or_else(|e| panic!("{what}: SET_INFLIGHT_FD refused: {e}"));
        if unsealed {
            let held = device.transport().inflight_region().unwrap();
            held.file.set_len(0).unwrap();
        }
        seqno += 1;
        fill_is(
            &device,
            &out,
            seqno,
            &format!("{what}, on the live connection"),
        );
        wait_for_more(&supervisor, IGNORED, before, what);

        // A restarted tenant process that gets it on reconnection.
        let pid = supervisor.tenant_pid("t0");
        let before = count(&supervisor.log(), IGNORED);
        let mark = supervisor.log().len();
        kill(pid, libc::SIGKILL);
        supervisor.wait_until_gone("t0", pid);
        device
            .transport_mut()
            .reconnect(&socket, &options)
            .unwrap_or_else(|e| panic!("{what}: reconnecting: {e}"));
        seqno += 1;
        fill_is(&device, &out, seqno, &format!("{what}, after a restart"));
        wait_for_more(&supervisor, IGNORED, before, what);
        let after = &supervisor.log()[mark..];
        assert!(after.contains(RESUMED), "{what}: {after}");
        assert!(!after.contains(ADOPTED), "{what}: {after}");
    }
    // No process ended but by the test's kills.
    let log = supervisor.log();
    let ended = count(&log, "was killed by") + count(&log, "exited with status");
    assert_eq!(ended, kinds.len(), "{log}");
    assert_eq!(count(&log, "was killed by SIGKILL"), kinds.len(), "{log}");

    // The real region back, and the whole daemon killed.
    device.transport_mut().replace_inflight_region(real);
    let mark = supervisor.log().len();
    supervisor.kill_and_start_again();
    device.transport_mut().reconnect(&socket, &options).unwrap();
    seqno += 1;
    fill_is(&device, &out, seqno, "after the daemon's kill");
    let after = &supervisor.log()[mark..];
    assert!(after.contains(ADOPTED), "{after}");
    assert!(after.contains(RESUMED), "{after}");
}

/// A region that could be a record of the device (a sealed memfd of the
/// record's size, from offset 0, here all zeros) handed back on a
/// connection where the device has already worked (a paused VM that
/// resumes; no object live, no request in flight, every ring stopped) is
/// not taken: the device keeps its record and its fences go on, and the
/// daemon says why it ignored the region.
#[test]
fn a_region_handed_back_after_the_device_worked_is_ignored() {
    let supervisor = Supervisor::start("inflight-late", 1);
    let socket = supervisor.socket("t0");
    let memory = DmaMemory::new(4 << 20).unwrap();
    let mut device = open(&socket, &memory, CLOUD_HYPERVISOR);
    let out = memory.alloc(64).unwrap();
    for seqno in 1..=3 {
        fill_is(&device, &out, seqno, "before the region");
    }
    let record = device
        .transport()
        .inflight_region()
        .expect("no region")
        .mmap_size;
    let other = InflightRegion {
        file: memfd(record, true),
        mmap_size: record,
        mmap_offset: 0,
        num_queues: device.num_request_queues() + 1,
        queue_size: VhostUserOptions::default().queue_size,
    };
    device.transport_mut().replace_inflight_region(Some(other));
    let before = count(&supervisor.log(), IGNORED);
    let transport = device.transport_mut();
    let bases = transport.stop_rings().unwrap();
    transport.start_rings(&bases).unwrap();
    fill_is(&device, &out, 4, "after the region");
    wait_for_more(&supervisor, IGNORED, before, "a late region");
    let log = supervisor.log();
    assert!(!log.contains(ADOPTED), "{log}");
}

/// A request that makes the tenant's process fail whenever it runs is
/// answered Interrupted after two failures (§11.3) also once the device
/// keeps its state in the region cloud-hypervisor handed back after a
/// restart of the whole daemon: the supervisor marks the failures on the
/// record it hands each process, which the device reads before it takes
/// the front-end's region instead.
#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs the fault-injection feature (cargo test --all-features)"
)]
fn a_poison_request_is_interrupted_in_the_region_handed_back() {
    let mut supervisor = Supervisor::start_poisoned("inflight-poison");
    let socket = supervisor.socket("t0");
    let memory = DmaMemory::new(8 << 20).unwrap();
    let options = VhostUserOptions::of(CLOUD_HYPERVISOR);
    let mut device = open(&socket, &memory, CLOUD_HYPERVISOR);
    let out = memory.alloc(64).unwrap();
    fill_is(&device, &out, 1, "before the daemon's kill");
    supervisor.kill_and_start_again();
    device.transport_mut().reconnect(&socket, &options).unwrap();
    fill_is(&device, &out, 2, "after the daemon's restart");
    assert_eq!(count(&supervisor.log(), ADOPTED), 1, "{}", supervisor.log());

    let (fence, _poison) = submit_poison(&device, 7);
    supervisor.wait_for_aborted(0, "the first run");
    // The next process takes the region again, runs the request again and
    // fails too, maybe before the reconnection is done.
    let _ = device.transport_mut().reconnect(&socket, &options);
    supervisor.wait_for_aborted(1, "the second run");
    device.transport_mut().reconnect(&socket, &options).unwrap();
    let completions = device.wait(0, PATIENCE).unwrap();
    assert_interrupted(&completions, 7, fence, &supervisor.log());
    fill_is(&device, &out, 4, "after the interrupted request");
    assert_eq!(supervisor.aborted(), 2, "{}", supervisor.log());
}
