// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Kicks the device holds off while the engine has a backlog of a request
//! queue's jobs (spec §4, "Available buffer notifications", and §4.2), over
//! the real socket, with one engine thread: a long deflate runs, a batch of
//! short requests waits behind it, and the device leaves the ring's
//! available buffer notifications suppressed (2.7.10 of the virtio spec:
//! `avail_event` left where it was, or VIRTQ_USED_F_NO_NOTIFY left set), so
//! that the driver sends no kick for the requests it adds meanwhile. The
//! device takes them when the backlog runs out; before a pause stops the
//! ring, or the ring is disabled (§4.2, §11.2), it turns the notifications
//! back on, and the requests it did not take are taken when the ring starts
//! again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use accel_driver::{
    feature, Buffer, DmaBuf, DmaMemory, FrontendModel, OpenOptions, Request, VhostUserOptions,
    VhostUserTransport, DEFAULT_FEATURES,
};
use accel_tests::data::TestRng;
use accel_tests::harness::{guest_ram, tenant, AccelDevice, Daemon};
use accel_tests::reference;
use vhost_user_accel::Config;
use virtio_accel_spec::{DeflateFormat, DeflateParams, Fence, Op, Status, FIRST_REQUEST_QUEUE};

/// The request queue the tests use, and its virtqueue.
const QUEUE: u16 = 0;
const VQ: u16 = QUEUE + FIRST_REQUEST_QUEUE;
/// VIRTIO_RING_F_EVENT_IDX.
const EVENT_IDX: u32 = 29;
/// VIRTQ_USED_F_NO_NOTIFY, in the used ring's flags.
const USED_F_NO_NOTIFY: u16 = 1;
/// Input bytes of the long job: deflate at level 9 of random data, about
/// half a second on one core of the test machine, and far more than the
/// few milliseconds the checks made while it runs take.
const LONG: usize = 16 << 20;
/// Short requests made available in one go behind the long job: more than
/// the backlog (8 jobs waiting to start) at which the device holds kicks.
const BATCH: usize = 10;
/// Short requests added while the kicks are held.
const EXTRA: usize = 3;
/// Bytes of each short request's input.
const SHORT: usize = 4096;

/// What the requests on the ring must come to.
enum Expected {
    /// The long deflate: its output inflates to `input`.
    Deflate { input: Vec<u8>, output: DmaBuf },
    /// A CRC-32C of this value.
    Crc(u32),
}

/// The device's queue at the moment the driver has added [`EXTRA`]
/// requests while the kicks of their ring were held, and the long job still
/// runs.
struct Held {
    daemon: Daemon,
    device: AccelDevice,
    memory: DmaMemory,
    /// By token, what each request must come to; token 0 is the long job.
    expected: HashMap<u64, Expected>,
    /// The chains made available so far (the long job, the batch and the
    /// extra requests).
    made_available: u16,
    /// Kicks of the request ring so far.
    kicks: u64,
    /// The buffers of the requests, which must outlive them.
    _inputs: Vec<DmaBuf>,
}

/// Whether the device has taken the request of `fence`: FENCE_QUERY no
/// longer answers NoFence (§7.3).
fn taken(device: &AccelDevice, fence: Fence) -> bool {
    match device.query_fence(fence) {
        Ok(_) => true,
        Err(e) if e.status() == Some(Status::NoFence) => false,
        Err(e) => panic!("FENCE_QUERY {fence:?}: {e:?}"),
    }
}

/// Waits until the device has taken the request of `fence`. The answer
/// comes from the device's worker after the pass over the ring that took
/// it, kick hold included.
fn wait_taken(device: &AccelDevice, fence: Fence) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !taken(device, fence) {
        assert!(Instant::now() < deadline, "request {fence:?} never taken");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Kicks the driver sent on the request ring.
fn kicks(device: &AccelDevice) -> u64 {
    device.transport().queue_stats(VQ).unwrap().kicks
}

/// Where the device left the ring's notifications: its `avail_event` with
/// EVENT_IDX (at the end of the used ring), else whether
/// VIRTQ_USED_F_NO_NOTIFY is set.
#[derive(Debug, PartialEq, Eq)]
enum Notifications {
    /// Asked for at this avail index.
    Event(u16),
    /// On (VIRTQ_USED_F_NO_NOTIFY clear).
    On,
    /// Off (VIRTQ_USED_F_NO_NOTIFY set).
    Off,
}

/// The request ring's notifications, as the device left them.
fn notifications(device: &mut AccelDevice) -> Notifications {
    let event_idx = device.has_feature(EVENT_IDX);
    let ring = device.raw_queue(VQ).unwrap();
    if event_idx {
        Notifications::Event(ring.avail_event().unwrap())
    } else if ring.used_flags().unwrap() & USED_F_NO_NOTIFY != 0 {
        Notifications::Off
    } else {
        Notifications::On
    }
}

/// Notifications as the device leaves them on, after taking `next_avail`
/// chains.
fn on_at(event_idx: bool, next_avail: u16) -> Notifications {
    if event_idx {
        Notifications::Event(next_avail)
    } else {
        Notifications::On
    }
}

/// Notifications as the device leaves them held: with EVENT_IDX,
/// `avail_event` where a pass that took `next_avail` chains in all left it.
fn held_since(event_idx: bool, next_avail: u16) -> Notifications {
    if event_idx {
        Notifications::Event(next_avail)
    } else {
        Notifications::Off
    }
}

/// A daemon with one engine thread, and a VM on it as QEMU presents the
/// device (whose stop and start the pause below is), with EVENT_IDX
/// negotiated or not; the device's kicks held off behind a long job.
///
/// 1. The long job is made available and taken: the driver kicked.
/// 2. [`BATCH`] short requests in one go: the driver kicks, the device takes
///    them, and with [`BATCH`] jobs waiting behind the long one it leaves the
///    ring's notifications off.
/// 3. [`EXTRA`] more: the driver sends no kick, and the device does not take
///    them while the long job runs.
fn hold_kicks(name: &str, event_idx: bool) -> Held {
    let config = Config {
        engine_threads: 1,
        ..Config::with_tenants(vec![tenant("0")])
    };
    let daemon = Daemon::start_config(config).remove(0);
    let memory = guest_ram(64);
    let options = VhostUserOptions::of(FrontendModel::Qemu {
        forwards_reset: false,
    });
    let transport = VhostUserTransport::connect_with(daemon.socket(), &memory, &options).unwrap();
    let features = if event_idx {
        DEFAULT_FEATURES
    } else {
        DEFAULT_FEATURES & !feature(EVENT_IDX)
    };
    let open = OpenOptions {
        features,
        ..OpenOptions::default()
    };
    let mut device = AccelDevice::open_with(transport, &open).unwrap();
    assert_eq!(device.has_feature(EVENT_IDX), event_idx);
    let mut rng = TestRng::new(name);
    let mut expected = HashMap::new();
    let mut inputs = Vec::new();

    // 1. The long job.
    let input = rng.bytes(LONG);
    let src = memory.alloc(LONG).unwrap();
    memory.write(&src, 0, &input).unwrap();
    let output = memory.alloc(LONG + (1 << 20)).unwrap();
    let params = DeflateParams {
        format: DeflateFormat::Raw.into(),
        level: 9,
        ..DeflateParams::default()
    };
    let long = Request::new(Op::DeflateCompress)
        .params(&params)
        .input(Buffer::direct(&src))
        .output(Buffer::direct(&output));
    let long_fence = device.submit(QUEUE, &long, 0).unwrap();
    assert!(device.flush(QUEUE).unwrap(), "no kick for the long job");
    wait_taken(&device, long_fence);
    inputs.push(src);
    expected.insert(0, Expected::Deflate { input, output });
    assert_eq!(
        notifications(&mut device),
        on_at(event_idx, 1),
        "notifications are on after the long job alone"
    );

    // 2. The batch, and 3. the extra requests.
    let mut short = |device: &AccelDevice, token: u64| {
        let data = rng.bytes(SHORT);
        let buf = memory.alloc(SHORT).unwrap();
        memory.write(&buf, 0, &data).unwrap();
        let request = Request::new(Op::Crc32c).input(Buffer::direct(&buf));
        let fence = device.submit(QUEUE, &request, token).unwrap();
        inputs.push(buf);
        expected.insert(token, Expected::Crc(reference::crc32c(0, &data)));
        fence
    };
    let batch: Vec<Fence> = (1..=BATCH as u64).map(|t| short(&device, t)).collect();
    let before = kicks(&device);
    assert!(device.flush(QUEUE).unwrap(), "no kick for the batch");
    assert_eq!(kicks(&device), before + 1);
    wait_taken(&device, *batch.last().unwrap());
    let seen = notifications(&mut device);
    assert!(
        !device.query_fence(long_fence).unwrap(),
        "the long job ended before the checks: make LONG longer"
    );
    assert_eq!(
        seen,
        held_since(event_idx, 1),
        "the device turned notifications on again with {BATCH} jobs waiting"
    );

    let first_extra = BATCH as u64 + 1;
    let extra: Vec<Fence> = (first_extra..first_extra + EXTRA as u64)
        .map(|t| short(&device, t))
        .collect();
    let kicks_before = kicks(&device);
    assert!(
        !device.flush(QUEUE).unwrap(),
        "the driver kicked for requests added while the device held kicks"
    );
    assert_eq!(kicks(&device), kicks_before);
    assert!(
        !taken(&device, extra[0]),
        "the device took a request added while the long job ran"
    );
    // Only now is the long job known to have run at that query: the batch
    // waits behind it on the one engine thread.
    assert!(
        !device.query_fence(batch[0]).unwrap(),
        "the long job ended before the checks: make LONG longer"
    );
    Held {
        daemon,
        device,
        memory,
        expected,
        made_available: u16::try_from(1 + BATCH + EXTRA).unwrap(),
        kicks: kicks_before,
        _inputs: inputs,
    }
}

impl Held {
    /// Waits for the completion of every request and checks each against
    /// what it must come to.
    fn check_all_complete(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut done = HashMap::new();
        while done.len() < self.expected.len() {
            assert!(
                Instant::now() < deadline,
                "only {} of {} requests completed",
                done.len(),
                self.expected.len()
            );
            for completion in self.device.wait(QUEUE, Duration::from_secs(1)).unwrap() {
                let token = completion.token;
                let completion = completion.check().unwrap();
                assert!(
                    done.insert(token, completion).is_none(),
                    "request {token} completed twice"
                );
            }
        }
        for (token, want) in &self.expected {
            let got = &done[token];
            match want {
                Expected::Crc(crc) => assert_eq!(got.result_u32(), *crc, "request {token}"),
                Expected::Deflate { input, output } => {
                    let out = self.memory.read_vec(output, 0, output.len()).unwrap();
                    let inflated =
                        reference::decompress_prefix(DeflateFormat::Raw, &out, LONG).unwrap();
                    assert!(
                        &inflated.data == input,
                        "the long job's output does not inflate to its input"
                    );
                }
            }
        }
    }
}

/// §4.2 over vhost-user: the VM pauses (QEMU's stop: every ring disabled,
/// then stopped) while the device holds the request ring's kicks with
/// requests it did not take. The stop returns where the device stopped
/// taking, with the ring's notifications on from there (`avail_event`, left
/// at the long job by the hold, is the base the stop returned; or
/// VIRTQ_USED_F_NO_NOTIFY clear). Started again, the device takes the
/// requests left in the ring without a kick and completes every request.
fn a_pause_turns_held_kicks_on(name: &str, event_idx: bool) {
    let mut held = hold_kicks(name, event_idx);
    let taken = u16::try_from(1 + BATCH).unwrap();

    let bases = held.device.transport_mut().stop_rings().unwrap();
    let base = bases[usize::from(VQ)];
    assert_eq!(base, taken, "the ring stopped past the requests taken");
    assert_eq!(
        held.device.raw_queue(VQ).unwrap().used_idx().unwrap(),
        base,
        "the stop returned before the requests taken completed"
    );
    assert_eq!(
        notifications(&mut held.device),
        on_at(event_idx, base),
        "the stop left the ring's notifications as the hold had them"
    );

    held.device.transport_mut().start_rings(&bases).unwrap();
    held.check_all_complete();
    assert_eq!(kicks(&held.device), held.kicks, "the driver kicked");
}

/// [`a_pause_turns_held_kicks_on`] with EVENT_IDX: `avail_event` stays
/// behind while the kicks are held, and the pause moves it to where the
/// ring stopped.
#[test]
fn a_pause_moves_a_held_avail_event_to_the_stop() {
    a_pause_turns_held_kicks_on("a_pause_moves_a_held_avail_event_to_the_stop", true);
}

/// [`a_pause_turns_held_kicks_on`] without EVENT_IDX:
/// VIRTQ_USED_F_NO_NOTIFY stays set while the kicks are held, and the pause
/// clears it.
#[test]
fn a_pause_clears_a_held_no_notify_flag() {
    a_pause_turns_held_kicks_on("a_pause_clears_a_held_no_notify_flag", false);
}

/// §4.2 over vhost-user: GET_VRING_BASE alone (no SET_VRING_ENABLE 0
/// first) stops the request ring whose kicks the device holds: as
/// [`a_pause_turns_held_kicks_on`], the ring's `avail_event` is the base
/// the stop returned. Started again at that base (the other rings ran on),
/// the device takes the requests left beyond it and completes every
/// request.
#[test]
fn a_stop_of_the_ring_alone_turns_held_kicks_on() {
    use vhost::VhostBackend;

    let mut held = hold_kicks("a_stop_of_the_ring_alone_turns_held_kicks_on", true);
    let taken = u16::try_from(1 + BATCH).unwrap();
    let transport = held.device.transport_mut();
    let kick = transport.kick_event(VQ).unwrap().try_clone().unwrap();
    let call = transport.call_event(VQ).unwrap().try_clone().unwrap();
    let frontend = transport.frontend();
    let base = frontend.get_vring_base(usize::from(VQ)).unwrap();
    let base = u16::try_from(base).unwrap();
    // The stop marks the ring stopped before it returns: nothing more is
    // taken from it.
    assert_eq!(base, taken, "the ring stopped past the requests taken");
    assert_eq!(
        notifications(&mut held.device),
        on_at(true, base),
        "the stop left the ring's avail_event where the hold had it"
    );

    let frontend = held.device.transport_mut().frontend();
    frontend.set_vring_base(usize::from(VQ), base).unwrap();
    frontend.set_vring_call(usize::from(VQ), &call).unwrap();
    frontend.set_vring_kick(usize::from(VQ), &kick).unwrap();
    held.check_all_complete();
    assert_eq!(kicks(&held.device), held.kicks, "the driver kicked");
}

/// §4.2: requests the driver added without a kick while the device held
/// them off are taken when the device handles the queue's completions or
/// the end of its backlog (not by a poll of the rings, which the device
/// makes only once the engine has nothing of its own), and complete; the
/// device then asks for kicks again, so that the next request is kicked
/// for.
#[test]
fn requests_added_while_kicks_are_held_complete_without_a_kick() {
    let mut held = hold_kicks(
        "requests_added_while_kicks_are_held_complete_without_a_kick",
        true,
    );
    let polled = held.daemon.stats().unwrap().polled_count();
    held.check_all_complete();
    assert_eq!(kicks(&held.device), held.kicks, "the driver kicked");
    assert_eq!(
        held.daemon.stats().unwrap().polled_count(),
        polled,
        "a poll of the rings took the requests, not the end of the backlog"
    );
    assert_eq!(
        notifications(&mut held.device),
        on_at(true, held.made_available),
        "the device left the ring's notifications off without a backlog"
    );

    let data = held.memory.alloc(9).unwrap();
    held.memory.write(&data, 0, b"123456789").unwrap();
    let request = Request::new(Op::Crc32c).input(Buffer::direct(&data));
    held.device.submit(QUEUE, &request, 99).unwrap();
    assert!(
        held.device.flush(QUEUE).unwrap(),
        "no kick for a request after the backlog"
    );
    let done = held.device.wait(QUEUE, Duration::from_secs(10)).unwrap();
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(done[0].token, 99);
    assert_eq!(done[0].check().unwrap().result_u32(), 0xe306_9283);
}

/// Rounds of [`a_disabled_ring_keeps_its_requests`].
const ROUNDS: usize = 2;

/// §4 and §4.2 over vhost-user: disabling a ring (SET_VRING_ENABLE 0)
/// whose kicks the device holds turns them on again, and stops the device
/// taking chains from it: the requests the driver added while the kicks
/// were held stay in the ring while the requests taken before complete
/// into it (the long job's end and the batch's completions wake the
/// device), and are taken at once when the ring is enabled again. (With
/// REPLY_ACK, the disable is answered once the device has handled it; the
/// control queue, still enabled, asks whether the first extra request was
/// taken.)
#[test]
fn a_disabled_ring_keeps_its_requests() {
    use vhost::vhost_user::VhostUserFrontend;

    let taken_before = u16::try_from(1 + BATCH).unwrap();
    for round in 0..ROUNDS {
        let mut held = hold_kicks("a_disabled_ring_keeps_its_requests", true);
        let first_extra = Fence::new(QUEUE, u64::from(taken_before) + 1);
        held.device
            .transport_mut()
            .frontend()
            .set_vring_enable(usize::from(VQ), false)
            .unwrap();
        assert_eq!(
            notifications(&mut held.device),
            on_at(true, taken_before),
            "round {round}: the disable left the ring's avail_event where the hold had it"
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        while held.device.raw_queue(VQ).unwrap().used_idx().unwrap() < taken_before {
            assert!(
                Instant::now() < deadline,
                "round {round}: the batch never completed"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            !taken(&held.device, first_extra),
            "round {round}: the device took a request from the disabled ring"
        );
        held.device
            .transport_mut()
            .frontend()
            .set_vring_enable(usize::from(VQ), true)
            .unwrap();
        held.check_all_complete();
        assert_eq!(kicks(&held.device), held.kicks, "the driver kicked");
    }
}
