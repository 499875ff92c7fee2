// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Stopping and resetting the device with work in flight (spec §11): a ring
//! is stopped (`GET_VRING_BASE`) only after every request it accepted has
//! completed, a reset or a disconnection cancels the work still running
//! instead of waiting for it, a reset forgets objects and fences, and the
//! same connection can set the device up again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use accel_driver::{
    Buffer, DmaBuf, DmaMemory, FrontendModel, OpenOptions, Request, VhostUserOptions,
    VhostUserTransport, DEFAULT_FEATURES,
};
use accel_tests::data::TestRng;
use accel_tests::harness::{guest_ram, tenant, AccelDevice, Daemon};
use accel_tests::reference;
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_accel::Config;
use virtio_accel_spec::{DeflateFormat, DeflateParams, Fence, Op, Status};

const JOBS: usize = 6;
const SIZE: usize = 1 << 20;

/// Submits slow jobs (deflate level 9 of random data) spread over the request
/// queues; returns each input with its input and output buffers (which must
/// stay allocated while the jobs run).
fn submit_slow_jobs(
    device: &AccelDevice,
    memory: &DmaMemory,
    rng: &mut TestRng,
) -> Vec<(Vec<u8>, DmaBuf, DmaBuf)> {
    let params = DeflateParams {
        format: DeflateFormat::Raw.into(),
        level: 9,
        ..Default::default()
    };
    let mut jobs = Vec::new();
    for token in 0..JOBS {
        let input = rng.bytes(SIZE);
        let src = memory.alloc(SIZE).unwrap();
        memory.write(&src, 0, &input).unwrap();
        let dst = memory.alloc(SIZE + 4096).unwrap();
        let request = Request::new(Op::DeflateCompress)
            .params(&params)
            .input(Buffer::direct(&src))
            .output(Buffer::direct(&dst));
        let queue = u16::try_from(token).unwrap() % device.num_request_queues();
        device.submit(queue, &request, token as u64).unwrap();
        jobs.push((input, src, dst));
    }
    for queue in 0..device.num_request_queues() {
        device.flush(queue).unwrap();
    }
    wait_until_taken(device, JOBS);
    jobs
}

/// Waits until the device has taken `count` requests spread round-robin over
/// its queues: a request is taken once its fence is issued (FENCE_QUERY no
/// longer answers NoFence). Only taken requests are the device's to finish.
fn wait_until_taken(device: &AccelDevice, count: usize) {
    let queues = usize::from(device.num_request_queues());
    let deadline = Instant::now() + Duration::from_secs(10);
    for queue in 0..queues.min(count) {
        // Round-robin: queue q got count / queues requests, plus one if q
        // is below the remainder; its last request has that sequence number.
        let on_queue = count / queues + usize::from(queue < count % queues);
        let last = u64::try_from(on_queue).unwrap();
        let fence = Fence::new(u16::try_from(queue).unwrap(), last);
        while device.query_fence(fence).is_err() {
            assert!(
                Instant::now() < deadline,
                "queue {queue} never took request {last}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Every job's output is complete: the daemon drained its work before
/// answering the stop.
fn assert_all_done(memory: &DmaMemory, jobs: &[(Vec<u8>, DmaBuf, DmaBuf)]) {
    for (index, (input, _, dst)) in jobs.iter().enumerate() {
        let out = memory.read_vec(dst, 0, SIZE + 4096).unwrap();
        let inflated = reference::decompress_prefix(DeflateFormat::Raw, &out, SIZE).unwrap();
        assert!(
            &inflated.data == input,
            "job {index}: output does not inflate to its input"
        );
    }
}

#[test]
fn reset_waits_for_work_in_flight_and_forgets_objects_and_fences() {
    let daemon = Daemon::start();
    let memory = guest_ram(64);
    let device = daemon.connect(&memory);
    let mut rng = TestRng::new("reset");
    let object = device
        .create_object(&[(memory.alloc(4096).unwrap().gpa(), 4096)])
        .unwrap();
    let jobs = submit_slow_jobs(&device, &memory, &mut rng);

    let started = Instant::now();
    let transport = device.close().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "reset took {:?}",
        started.elapsed()
    );
    assert_all_done(&memory, &jobs);

    // The same connection sets the device up again, from scratch.
    let options = OpenOptions {
        features: DEFAULT_FEATURES,
        ..OpenOptions::default()
    };
    let device = AccelDevice::open_with(transport, &options).unwrap();
    assert_eq!(served(&device, &memory), 1, "fences restart after a reset");
    let err = device.destroy_object(object).unwrap_err();
    assert_eq!(
        err.status(),
        Some(Status::NoObject),
        "objects die with the reset"
    );
}

#[test]
fn stopping_the_rings_waits_for_work_in_flight() {
    let daemon = Daemon::start();
    let memory = guest_ram(64);
    // Without RESET_DEVICE, closing only stops the rings (GET_VRING_BASE), as
    // a VMM does when it pauses or migrates a VM.
    let options = VhostUserOptions {
        protocol_features: VhostUserOptions::default().protocol_features
            - VhostUserProtocolFeatures::RESET_DEVICE,
        ..VhostUserOptions::default()
    };
    let transport = VhostUserTransport::connect_with(daemon.socket(), &memory, &options).unwrap();
    let device = AccelDevice::open_with(transport, &OpenOptions::default()).unwrap();
    let mut rng = TestRng::new("stop");
    let jobs = submit_slow_jobs(&device, &memory, &mut rng);
    device.close().unwrap();
    assert_all_done(&memory, &jobs);
}

#[test]
fn a_head_made_available_twice_is_answered_once() {
    use accel_driver::RawDesc;
    use virtio_accel_spec::request::Resp;
    use vm_memory::ByteValued;

    let daemon = Daemon::start();
    let memory = guest_ram(8);
    let mut device = daemon.connect(&memory);
    let data = memory.alloc(9).unwrap();
    memory.write(&data, 0, b"123456789").unwrap();
    let request = Request::new(Op::Crc32c).input(Buffer::direct(&data));
    // A request that fails at once (unknown operation): its head must stay
    // in flight until its used entry is published, or the duplicate entry
    // right behind it would be taken as a new request.
    let bad = Request::raw_op(0).input(Buffer::direct(&data));
    let header = bad.encode_header().unwrap();
    let hdr = memory.alloc(header.len()).unwrap();
    memory.write(&hdr, 0, &header).unwrap();
    let resp = memory.alloc(64).unwrap();
    let chain = RawDesc::chain(&[
        (hdr.gpa(), u32::try_from(header.len()).unwrap(), false),
        (data.gpa(), 9, false),
        (resp.gpa(), 64, true),
    ]);
    let vq = 1;
    let queue = device.raw_queue(vq).unwrap();
    // The same head twice in one batch: the second entry names a chain that
    // is already in flight and must not be answered (§6.5).
    let head = queue.add_raw(&chain, 7).unwrap();
    queue.push_avail_raw(head).unwrap();
    queue.publish().unwrap();
    device.notify(vq).unwrap();

    let used = device
        .wait_used(vq, Duration::from_secs(5))
        .unwrap()
        .expect("the chain comes back");
    assert_eq!((used.head, used.len), (head, 64));
    let mut answer = Resp::default();
    answer
        .as_mut_slice()
        .copy_from_slice(&memory.read_vec(&resp, 0, 64).unwrap());
    assert_eq!(u32::from(answer.status), u32::from(Status::Unsupported));
    assert!(
        device
            .wait_used(vq, Duration::from_millis(300))
            .unwrap()
            .is_none(),
        "the duplicate entry was answered"
    );
    // The queue keeps working; the duplicate consumed fence 2.
    let done = device.run(0, &request).unwrap().check().unwrap();
    assert_eq!(u64::from(done.fence().seqno), 3);
}

/// §11: a device instance whose rings resume where an earlier instance left
/// them (as QEMU does after the back-end restarted: it rewinds each ring to
/// its used index) takes nothing from them until the driver resets it, since
/// some of those entries were completed already and the rest name objects and
/// fences it does not have.
#[test]
fn rings_resumed_from_an_earlier_device_instance_are_left_alone() {
    use vhost::vhost_user::message::VhostUserVirtioFeatures;
    use vhost::vhost_user::{Frontend, VhostUserFrontend};
    use vhost::VhostBackend;
    use virtio_accel_spec::FillParams;

    let daemon = Daemon::start();
    let memory = guest_ram(8);
    let mut device = daemon.connect(&memory);
    let out = memory.alloc(64).unwrap();
    let fill = Request::new(Op::Fill)
        .params(&FillParams {
            pattern: 0x5a,
            ..Default::default()
        })
        .output(Buffer::direct(&out));
    for _ in 0..3 {
        device.run(0, &fill).unwrap().check().unwrap();
    }

    // A new device instance behind the same rings: the front-end resets the
    // device without the driver knowing, then starts request queue 0 again at
    // the index where the driver's ring stands.
    let vq = 1;
    let features = device.features() | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
    let transport = device.transport_mut();
    let kick = transport.kick_event(vq).unwrap().try_clone().unwrap();
    let call = transport.call_event(vq).unwrap().try_clone().unwrap();
    let frontend: &mut Frontend = transport.frontend();
    frontend.set_vring_enable(usize::from(vq), false).unwrap();
    frontend.get_vring_base(usize::from(vq)).unwrap();
    frontend.reset_device().unwrap();
    frontend.set_features(features).unwrap();
    frontend.set_vring_base(usize::from(vq), 3).unwrap();
    frontend.set_vring_call(usize::from(vq), &call).unwrap();
    frontend.set_vring_kick(usize::from(vq), &kick).unwrap();
    frontend.set_vring_enable(usize::from(vq), true).unwrap();

    memory.write(&out, 0, &[0; 64]).unwrap();
    device.submit(0, &fill, 1).unwrap();
    device.flush(0).unwrap();
    let early = device.wait(0, Duration::from_millis(500)).unwrap();
    assert!(early.is_empty(), "a request was taken: {early:?}");
    assert_eq!(memory.read_vec(&out, 0, 64).unwrap(), [0; 64], "and run");
    assert_eq!(device.in_flight(0).unwrap(), 1);

    // The driver starts over (a reset, then a new setup): the device serves.
    let transport = device.close().unwrap();
    let device = AccelDevice::open_with(transport, &OpenOptions::default()).unwrap();
    let done = device.run(0, &fill).unwrap().check().unwrap();
    assert_eq!(u64::from(done.fence().seqno), 1);
    assert_eq!(memory.read_vec(&out, 0, 64).unwrap(), [0x5a; 64]);
}

/// Input bytes of [`LongJob`]: compressing random data at level 9 takes
/// about a second per 32 MiB on one core of the test machine.
const LONG: usize = 48 << 20;

/// A job that runs for a second or more: deflate at level 9 of [`LONG`]
/// random bytes.
struct LongJob {
    request: Request,
    _buffers: (DmaBuf, DmaBuf),
}

impl LongJob {
    fn new(memory: &DmaMemory) -> LongJob {
        let src = memory.alloc(LONG).unwrap();
        memory
            .write(&src, 0, &TestRng::new("long job").bytes(LONG))
            .unwrap();
        let dst = memory.alloc(LONG + (1 << 20)).unwrap();
        let params = DeflateParams {
            format: DeflateFormat::Raw.into(),
            level: 9,
            ..Default::default()
        };
        let request = Request::new(Op::DeflateCompress)
            .params(&params)
            .input(Buffer::direct(&src))
            .output(Buffer::direct(&dst));
        LongJob {
            request,
            _buffers: (src, dst),
        }
    }

    /// How long the job takes on `device`, run to its end.
    fn duration(&self, device: &AccelDevice) -> Duration {
        let started = Instant::now();
        device.run(0, &self.request).unwrap().check().unwrap();
        started.elapsed()
    }

    /// Submits the job on request queue 0 of `device`; returns once the
    /// engine runs it.
    fn start(&self, device: &AccelDevice) {
        device.submit(0, &self.request, 1).unwrap();
        device.flush(0).unwrap();
        wait_until_taken(device, 1);
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A daemon whose engine runs at the daemon's own priority, so that how
/// long a job takes depends less on what else the test machine runs.
fn daemon_at_full_priority() -> Daemon {
    let config = Config {
        engine_nice: 0,
        ..Config::with_tenants(vec![tenant("0")])
    };
    Daemon::start_config(config).remove(0)
}

/// A short request that checks the device serves; its fence's number.
fn served(device: &AccelDevice, memory: &DmaMemory) -> u64 {
    served_on(device, memory, 0)
}

/// [`served`] on request queue `queue`.
fn served_on(device: &AccelDevice, memory: &DmaMemory, queue: u16) -> u64 {
    let buf = memory.alloc(16).unwrap();
    let done = device
        .run(queue, &Request::new(Op::Sha256).input(Buffer::direct(&buf)))
        .unwrap()
        .check()
        .unwrap();
    u64::from(done.fence().seqno)
}

/// §11.2: a VMM that does not send `RESET_DEVICE` shows a driver's reset as
/// every ring stopped and started again at index 0, in its own message order
/// ([`FrontendModel`]). Three drivers in turn on one connection (as three
/// `accelctl` runs in one boot): each finds fences numbered from 1 and none
/// of the previous driver's objects.
fn drivers_in_turn_each_find_a_reset_device(model: FrontendModel) {
    let daemon = Daemon::start();
    let memory = guest_ram(16);
    let options = VhostUserOptions::of(model);
    let mut transport =
        VhostUserTransport::connect_with(daemon.socket(), &memory, &options).unwrap();
    let mut objects = Vec::new();
    for driver in 0..3 {
        let device = AccelDevice::open_with(transport, &OpenOptions::default()).unwrap();
        for object in &objects {
            let err = device.destroy_object(*object).unwrap_err();
            assert_eq!(err.status(), Some(Status::NoObject), "driver {driver}");
        }
        assert_eq!(
            served_on(&device, &memory, 0),
            1,
            "driver {driver}, queue 0"
        );
        assert_eq!(
            served_on(&device, &memory, 0),
            2,
            "driver {driver}, queue 0"
        );
        assert_eq!(
            served_on(&device, &memory, 1),
            1,
            "driver {driver}, queue 1"
        );
        if device.has_capability(virtio_accel_spec::VIRTIO_ACCEL_F_OBJECTS) {
            let buf = memory.alloc(4096).unwrap();
            objects.push(device.create_object(&[(buf.gpa(), 4096)]).unwrap());
        }
        transport = device.close().unwrap();
    }
}

#[test]
fn drivers_in_turn_under_cloud_hypervisor_each_find_a_reset_device() {
    drivers_in_turn_each_find_a_reset_device(FrontendModel::CloudHypervisor);
}

#[test]
fn drivers_in_turn_under_stock_qemu_each_find_a_reset_device() {
    drivers_in_turn_each_find_a_reset_device(FrontendModel::Qemu {
        forwards_reset: false,
    });
}

/// §11.2: a paused VM (QEMU's stop and cont: every ring stopped, then
/// started again where it stopped) is not a reset: fences and objects go on.
#[test]
fn a_paused_vm_resumes_with_its_fences_and_objects() {
    let daemon = Daemon::start();
    let memory = guest_ram(16);
    let options = VhostUserOptions::of(FrontendModel::Qemu {
        forwards_reset: false,
    });
    let transport = VhostUserTransport::connect_with(daemon.socket(), &memory, &options).unwrap();
    let mut device = AccelDevice::open_with(transport, &OpenOptions::default()).unwrap();
    let buf = memory.alloc(4096).unwrap();
    let object = device.create_object(&[(buf.gpa(), 4096)]).unwrap();
    assert_eq!(served(&device, &memory), 1);
    assert_eq!(served(&device, &memory), 2);
    for _ in 0..2 {
        let transport = device.transport_mut();
        let bases = transport.stop_rings().unwrap();
        assert_eq!(bases.len(), 1 + usize::from(device.num_request_queues()));
        device.transport_mut().start_rings(&bases).unwrap();
    }
    assert_eq!(served(&device, &memory), 3, "the fences went on");
    device.destroy_object(object).unwrap();
}

/// §11: the connection ends in the middle of a long job; the daemon cancels
/// it instead of waiting for its end before it serves the next VMM.
#[test]
fn a_disconnect_cancels_running_work_and_the_next_vmm_is_served_at_once() {
    let daemon = daemon_at_full_priority();
    let memory = guest_ram(128);
    let job = LongJob::new(&memory);
    let device = daemon.connect(&memory);
    let whole = job.duration(&device);
    job.start(&device);

    let disconnected = Instant::now();
    device.into_transport().disconnect();
    let device = daemon.connect(&memory);
    assert_eq!(served(&device, &memory), 1);
    let took = disconnected.elapsed();
    assert!(
        took < whole / 4,
        "the next VMM was served {took:?} after the disconnection; the job takes {whole:?}"
    );
}

/// §11: a reset in the middle of a long job (RESET_DEVICE with the rings
/// still running, so no GET_VRING_BASE waits for the job first) cancels it
/// instead of waiting for its end; the device is then set up again.
#[test]
fn a_reset_cancels_running_work() {
    use vhost::vhost_user::message::VhostUserVirtioFeatures;
    use vhost::vhost_user::VhostUserFrontend;
    use vhost::VhostBackend;

    let daemon = daemon_at_full_priority();
    let memory = guest_ram(128);
    let job = LongJob::new(&memory);
    let mut device = daemon.connect(&memory);
    let features = device.features() | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
    let whole = job.duration(&device);
    job.start(&device);

    let reset = Instant::now();
    let frontend = device.transport_mut().frontend();
    frontend.reset_device().unwrap();
    // Messages are handled in order: this answer comes after the reset's.
    frontend.get_features().unwrap();
    let took = reset.elapsed();
    assert!(
        took < whole / 4,
        "the reset took {took:?}; the job takes {whole:?}"
    );
    // The reset cleared the negotiated features; the rings still run.
    frontend.set_features(features).unwrap();
    let transport = device.close().unwrap();
    let device = AccelDevice::open_with(transport, &OpenOptions::default()).unwrap();
    assert_eq!(served(&device, &memory), 1, "fences restart after a reset");
}

/// §3.2: the device has no legacy interface. A SET_FEATURES without
/// VIRTIO_F_VERSION_1 (a VMM that let a legacy driver through) stops the
/// device from taking requests, until features with it arrive.
#[test]
fn features_without_version_1_serve_nothing_until_they_include_it() {
    use vhost::vhost_user::message::VhostUserVirtioFeatures;
    use vhost::VhostBackend;

    let daemon = Daemon::start();
    let memory = guest_ram(16);
    let mut device = daemon.connect(&memory);
    assert_eq!(served(&device, &memory), 1);
    let features = device.features() | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
    let legacy = features & !(1 << 32);
    device
        .transport_mut()
        .frontend()
        .set_features(legacy)
        .unwrap();
    let buf = memory.alloc(16).unwrap();
    let request = Request::new(Op::Sha256).input(Buffer::direct(&buf));
    device.submit(0, &request, 7).unwrap();
    device.flush(0).unwrap();
    let early = device.wait(0, Duration::from_millis(500)).unwrap();
    assert!(early.is_empty(), "a request was taken: {early:?}");

    device
        .transport_mut()
        .frontend()
        .set_features(features)
        .unwrap();
    device.notify(1).unwrap();
    let done = device.wait(0, Duration::from_secs(5)).unwrap();
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(u64::from(done[0].fence().seqno), 2);
}
