// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Device core tests against an in-process fake accelerator.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use virtio_accel_spec::op::Op;
use virtio_accel_spec::{
    BufRef, ControlCommand, CtrlReq, CtrlResp, FillParams, Req, Resp, Status, DIRECT_HANDLE,
};
use vm_memory::endian::{Le32, Le64};

use super::*;
use crate::testing::{DevChain, FakeDevice};
use crate::virtqueue::{QueueAddresses, RawDesc, RawNext, DESC_F_INDIRECT};

// ---- a fake accelerator ------------------------------------------------------

struct Shared {
    mem: DmaMemory,
    devices: Mutex<Vec<Option<FakeDevice>>>,
    irqs: Mutex<Vec<u32>>,
    irq_cv: Condvar,
    features: Mutex<u64>,
    /// Feature bits offered ([`FAKE_FEATURES`] unless a test changes them).
    offered: AtomicU64,
    /// Whether the device knows CAPABILITIES (§7.5).
    knows_capabilities: AtomicBool,
    notifies: AtomicUsize,
    hold: AtomicBool,
    state: Mutex<AccelState>,
}

#[derive(Default)]
struct AccelState {
    next_handle: u32,
    handles: Vec<u32>,
    seqno: Vec<u64>,
}

struct FakeTransport {
    shared: Arc<Shared>,
    kick: Sender<u16>,
}

const FAKE_QUEUES: u16 = 3;
const FAKE_FEATURES: u64 = DEFAULT_FEATURES | feature(40);

fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn gather(mem: &DmaMemory, segs: &[(u64, u32)]) -> Vec<u8> {
    let mut out = Vec::new();
    for &(gpa, len) in segs {
        let mut b = vec![0; len as usize];
        mem.read_at(gpa, &mut b).unwrap();
        out.extend_from_slice(&b);
    }
    out
}

fn scatter(mem: &DmaMemory, segs: &[(u64, u32)], mut data: &[u8]) {
    for &(gpa, len) in segs {
        let n = data.len().min(len as usize);
        mem.write_at(gpa, &data[..n]).unwrap();
        data = &data[n..];
    }
}

impl Shared {
    fn process(&self, q: u16) {
        let mut devices = self.devices.lock().unwrap();
        let Some(dev) = devices[usize::from(q)].as_mut() else {
            return;
        };
        let mut batch = Vec::new();
        while let Some(head) = dev.pop_head() {
            // Fences number the chains in the order they are taken (§6.2).
            let seqno = (q > 0).then(|| {
                let mut st = self.state.lock().unwrap();
                st.seqno[usize::from(q - 1)] += 1;
                st.seqno[usize::from(q - 1)]
            });
            batch.push((head, dev.walk(head), seqno));
        }
        // Complete in reverse order: the driver must cope with any order.
        let mut irq = false;
        for (head, chain, seqno) in batch.into_iter().rev() {
            let len = match (chain, seqno) {
                (Ok(chain), None) => self.control(&chain),
                (Ok(chain), Some(seqno)) => self.request(q - 1, &chain, seqno),
                (Err(_), _) => 0,
            };
            irq |= dev.push_used(u32::from(head), len);
        }
        drop(devices);
        if irq {
            self.irqs.lock().unwrap()[usize::from(q)] += 1;
            self.irq_cv.notify_all();
        }
    }

    fn control(&self, chain: &DevChain) -> u32 {
        let data = gather(&self.mem, &chain.readable);
        let mut req = CtrlReq::default();
        req.as_mut_slice().copy_from_slice(&data[..16]);
        let mut st = self.state.lock().unwrap();
        let (status, value) = match ControlCommand::try_from(u32::from(req.cmd)) {
            Ok(ControlCommand::ObjectCreate) => {
                st.next_handle += 1;
                let h = st.next_handle;
                st.handles.push(h);
                (Status::Ok, u64::from(h))
            }
            Ok(ControlCommand::ObjectDestroy) => {
                let h = u32::try_from(u64::from(req.arg)).unwrap();
                match st.handles.iter().position(|&x| x == h) {
                    Some(i) => {
                        st.handles.remove(i);
                        (Status::Ok, 0)
                    }
                    None => (Status::NoObject, 0),
                }
            }
            Ok(ControlCommand::FenceQuery) => {
                let mut f = Fence::default();
                f.as_mut_slice().copy_from_slice(&data[16..32]);
                let q = usize::from(u16::from(f.queue));
                let seq = u64::from(f.seqno);
                if seq == 0 || seq > st.seqno[q] {
                    (Status::NoFence, 0)
                } else {
                    (Status::Ok, 1)
                }
            }
            Ok(ControlCommand::FenceWait) => (Status::Ok, 0),
            Ok(ControlCommand::Capabilities) if self.knows_capabilities.load(Ordering::SeqCst) => {
                (Status::Ok, u64::from(req.arg) & CAPABILITIES)
            }
            Ok(ControlCommand::Capabilities) | Err(_) => (Status::Unsupported, 0),
        };
        let w = &chain.writable;
        if w.is_empty() || w[0].1 < 16 {
            return 0;
        }
        self.mem
            .write_obj_at(w[0].0, CtrlResp::new(status, value))
            .unwrap();
        16
    }

    fn request(&self, rq: u16, chain: &DevChain, seqno: u64) -> u32 {
        let data = gather(&self.mem, &chain.readable);
        let mut req = Req::new(Op::Copy);
        req.as_mut_slice().copy_from_slice(&data[..80]);
        let deps = usize::from(u16::from(req.num_deps));
        let nbuf = usize::from(req.num_in) + usize::from(req.num_out);
        let refs_at = 80 + 16 * deps;
        let mut refs = Vec::new();
        for i in 0..nbuf {
            let mut r = BufRef::default();
            r.as_mut_slice()
                .copy_from_slice(&data[refs_at + 24 * i..refs_at + 24 * (i + 1)]);
            refs.push(r);
        }
        let mut direct = &data[refs_at + 24 * nbuf..];
        let mut inputs = Vec::new();
        for r in &refs[..usize::from(req.num_in)] {
            assert_eq!(u32::from(r.handle), DIRECT_HANDLE);
            let n = usize::try_from(u64::from(r.len)).unwrap();
            inputs.push(direct[..n].to_vec());
            direct = &direct[n..];
        }
        let out_len: u64 = refs[usize::from(req.num_in)..]
            .iter()
            .map(|r| u64::from(r.len))
            .sum();

        let mut resp = Resp::with_status(Status::Ok);
        resp.fence = Fence::new(rq, seqno);
        let mut output = Vec::new();
        match Op::try_from(u32::from(req.op)) {
            Ok(Op::Fill) => {
                let p: FillParams = req.params();
                output = vec![p.pattern; usize::try_from(out_len).unwrap()];
            }
            Ok(Op::Copy) => output = inputs[0].clone(),
            Ok(Op::Crc32c) => {
                resp.result[..4].copy_from_slice(&crc32c(&inputs[0]).to_le_bytes());
            }
            _ => resp.status = Le32::from(u32::from(Status::Unsupported)),
        }
        resp.bytes_written = Le64::from(output.len() as u64);
        let w = &chain.writable;
        if w.is_empty() || w[0].1 < 64 {
            return 0;
        }
        self.mem.write_obj_at(w[0].0, resp).unwrap();
        scatter(&self.mem, &w[1..], &output);
        64 + u32::try_from(output.len()).unwrap()
    }
}

impl FakeTransport {
    fn new(mem: &DmaMemory) -> Self {
        let shared = Arc::new(Shared {
            mem: mem.clone(),
            devices: Mutex::new((0..FAKE_QUEUES).map(|_| None).collect()),
            irqs: Mutex::new(vec![0; usize::from(FAKE_QUEUES)]),
            irq_cv: Condvar::new(),
            features: Mutex::new(0),
            offered: AtomicU64::new(FAKE_FEATURES),
            knows_capabilities: AtomicBool::new(true),
            notifies: AtomicUsize::new(0),
            hold: AtomicBool::new(false),
            state: Mutex::new(AccelState {
                seqno: vec![0; usize::from(FAKE_QUEUES)],
                ..Default::default()
            }),
        });
        let (kick, rx) = channel::<u16>();
        let dev = Arc::clone(&shared);
        std::thread::spawn(move || {
            while let Ok(q) = rx.recv() {
                if !dev.hold.load(Ordering::SeqCst) {
                    dev.process(q);
                }
            }
        });
        FakeTransport { shared, kick }
    }
}

impl Transport for FakeTransport {
    fn memory(&self) -> &DmaMemory {
        &self.shared.mem
    }

    fn device_features(&self) -> u64 {
        self.shared.offered.load(Ordering::SeqCst)
    }

    fn set_driver_features(&mut self, features: u64) -> transport::Result<()> {
        *self.shared.features.lock().unwrap() = features;
        Ok(())
    }

    fn max_queues(&self) -> u16 {
        FAKE_QUEUES
    }

    fn max_queue_size(&self, _queue: u16) -> transport::Result<u16> {
        Ok(16)
    }

    fn read_config(&mut self, offset: u32, buf: &mut [u8]) -> transport::Result<()> {
        let config = VirtioAccelConfig {
            num_request_queues: Le32::from(u32::from(FAKE_QUEUES) - 1),
            ops: Le32::from(Op::all_capabilities()),
            max_segments: Le32::from(64),
            max_deps: Le32::from(16),
            max_objects: Le32::from(1024),
            max_inflight: Le32::from(16),
            max_object_size: Le64::from(1 << 30),
            max_buffer_size: Le64::from(64 << 20),
        };
        let off = offset as usize;
        buf.copy_from_slice(&config.as_slice()[off..off + buf.len()]);
        Ok(())
    }

    fn setup_queue(&mut self, queue: u16, addrs: &QueueAddresses) -> transport::Result<()> {
        let event_idx =
            *self.shared.features.lock().unwrap() & feature(VIRTIO_RING_F_EVENT_IDX) != 0;
        self.shared.devices.lock().unwrap()[usize::from(queue)] =
            Some(FakeDevice::new(&self.shared.mem, *addrs, event_idx));
        Ok(())
    }

    fn activate(&mut self) -> transport::Result<()> {
        Ok(())
    }

    fn notify(&self, queue: u16) -> transport::Result<()> {
        self.shared.notifies.fetch_add(1, Ordering::SeqCst);
        self.kick.send(queue).unwrap();
        Ok(())
    }

    fn wait_interrupt(&self, queue: u16, timeout: Option<Duration>) -> transport::Result<bool> {
        let deadline = Instant::now() + timeout.unwrap_or(Duration::from_secs(3600));
        let mut irqs = self.shared.irqs.lock().unwrap();
        loop {
            if irqs[usize::from(queue)] > 0 {
                irqs[usize::from(queue)] = 0;
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            irqs = self
                .shared
                .irq_cv
                .wait_timeout(irqs, deadline - now)
                .unwrap()
                .0;
        }
    }

    fn reset(&mut self) -> transport::Result<()> {
        for d in self.shared.devices.lock().unwrap().iter_mut() {
            *d = None;
        }
        Ok(())
    }
}

fn open(options: &OpenOptions) -> (DmaMemory, Device<FakeTransport>) {
    let mem = DmaMemory::new(4 << 20).unwrap();
    let dev = Device::open_with(FakeTransport::new(&mem), options).unwrap();
    (mem, dev)
}

fn fill(pattern: u8) -> FillParams {
    FillParams {
        pattern,
        ..Default::default()
    }
}

// ---- tests -----------------------------------------------------------------------

#[test]
fn open_negotiates_and_sets_up_queues() {
    let (_mem, mut dev) = open(&OpenOptions {
        features: feature(VIRTIO_RING_F_EVENT_IDX) | feature(VIRTIO_ACCEL_F_OBJECTS) | feature(50),
        queue_size: Some(12),
        ..Default::default()
    });
    assert_eq!(
        dev.features(),
        feature(VIRTIO_F_VERSION_1)
            | feature(VIRTIO_RING_F_EVENT_IDX)
            | feature(VIRTIO_ACCEL_F_OBJECTS)
    );
    assert!(!dev.has_feature(VIRTIO_RING_F_INDIRECT_DESC));
    assert_eq!(dev.num_request_queues(), 2);
    assert_eq!(u32::from(dev.config().max_segments), 64);
    // 12 rounds down to 8.
    assert_eq!(dev.raw_queue(0).unwrap().size(), 8);
    assert_eq!(dev.raw_queue(2).unwrap().size(), 8);
    assert!(dev.raw_queue(3).is_err());
    assert!(matches!(dev.flush(2), Err(Error::NoSuchQueue(2))));

    let (_mem, dev) = open(&OpenOptions {
        request_queues: Some(1),
        ..Default::default()
    });
    assert_eq!(dev.num_request_queues(), 1);
    assert_eq!(dev.features(), DEFAULT_FEATURES);
}

/// §3, §7.5: a VMM that passes on no device feature bits (cloud-hypervisor)
/// still lets the driver enable objects and fences, with CAPABILITIES; a
/// device older than the command leaves the driver with what it negotiated.
#[test]
fn capabilities_the_vmm_filtered_are_enabled_on_the_control_queue() {
    for knows in [true, false] {
        let mem = DmaMemory::new(4 << 20).unwrap();
        let transport = FakeTransport::new(&mem);
        transport
            .shared
            .offered
            .store(FAKE_FEATURES & !CAPABILITIES, Ordering::SeqCst);
        transport
            .shared
            .knows_capabilities
            .store(knows, Ordering::SeqCst);
        let dev = Device::open_with(transport, &OpenOptions::default()).unwrap();
        assert!(!dev.has_feature(VIRTIO_ACCEL_F_OBJECTS));
        let enabled = if knows { CAPABILITIES } else { 0 };
        assert_eq!(
            dev.capabilities(),
            enabled,
            "device knows CAPABILITIES: {knows}"
        );
        assert_eq!(dev.has_capability(VIRTIO_ACCEL_F_FENCES), knows);
    }
    // Only what the driver wants is asked for.
    let (_mem, dev) = open(&OpenOptions {
        features: DEFAULT_FEATURES & !feature(VIRTIO_ACCEL_F_FENCES),
        ..Default::default()
    });
    assert_eq!(dev.capabilities(), feature(VIRTIO_ACCEL_F_OBJECTS));
}

#[test]
fn run_fill_copy_crc() {
    let (mem, dev) = open(&OpenOptions::default());
    let out = mem.alloc(1000).unwrap();
    let c = dev
        .run(
            0,
            &Request::new(Op::Fill)
                .params(&fill(0x5a))
                .output(Buffer::direct(&out)),
        )
        .unwrap()
        .check()
        .unwrap();
    assert_eq!(c.used_len, 64 + 1000);
    assert_eq!(c.bytes_written(), 1000);
    assert_eq!(c.fence(), Fence::new(0, 1));
    assert_eq!(mem.read_vec(&out, 0, 1000).unwrap(), vec![0x5a; 1000]);

    let src = mem.alloc(300).unwrap();
    let data: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
    mem.write(&src, 0, &data).unwrap();
    let c = dev
        .run(
            0,
            &Request::new(Op::Copy)
                .input(Buffer::direct(&src))
                .output(Buffer::direct_range(&out, 100, 300).unwrap()),
        )
        .unwrap();
    assert!(c.is_ok());
    assert_eq!(c.fence(), Fence::new(0, 2));
    assert_eq!(mem.read_vec(&out, 100, 300).unwrap(), data);

    let c = dev
        .run(
            1,
            &Request::new(Op::Crc32c).input(Buffer::direct_range(&src, 0, 9).unwrap()),
        )
        .unwrap();
    mem.write(&src, 0, b"123456789").unwrap();
    let c2 = dev
        .run(
            1,
            &Request::new(Op::Crc32c).input(Buffer::direct_range(&src, 0, 9).unwrap()),
        )
        .unwrap();
    assert_ne!(c.result_u32(), c2.result_u32());
    assert_eq!(c2.result_u32(), 0xe306_9283);
    assert_eq!(c2.fence(), Fence::new(1, 2));
}

#[test]
fn scattered_input_is_split_over_descriptors() {
    let (mem, dev) = open(&OpenOptions::default());
    let a = mem.alloc(64).unwrap();
    let b = mem.alloc(64).unwrap();
    mem.write(&a, 0, b"1234").unwrap();
    mem.write(&b, 0, b"56789").unwrap();
    let c = dev
        .run(
            0,
            &Request::new(Op::Crc32c).input(Buffer::Scattered(vec![(a.gpa(), 4), (b.gpa(), 5)])),
        )
        .unwrap();
    assert_eq!(c.result_u32(), 0xe306_9283);
}

#[test]
fn batch_submit_flush_once_out_of_order() {
    let (mem, dev) = open(&OpenOptions::default());
    let out = mem.alloc(16 * 8).unwrap();
    let before = dev.transport().shared.notifies.load(Ordering::SeqCst);
    for i in 0..8u8 {
        let req = Request::new(Op::Fill)
            .params(&fill(i))
            .output(Buffer::direct_range(&out, usize::from(i) * 16, 16).unwrap());
        dev.submit(0, &req, 100 + u64::from(i)).unwrap();
    }
    assert_eq!(dev.in_flight(0).unwrap(), 8);
    assert!(dev.flush(0).unwrap());
    assert!(!dev.flush(0).unwrap(), "nothing new to publish");
    assert_eq!(
        dev.transport().shared.notifies.load(Ordering::SeqCst),
        before + 1
    );
    let mut got = Vec::new();
    while got.len() < 8 {
        let batch = dev.wait(0, Duration::from_secs(5)).unwrap();
        assert!(!batch.is_empty(), "timed out");
        got.extend(batch);
    }
    let tokens: Vec<u64> = got.iter().map(|c| c.token).collect();
    assert_eq!(
        tokens,
        (100..108).rev().collect::<Vec<_>>(),
        "fake completes in reverse"
    );
    let mut seqnos: Vec<u64> = got.iter().map(|c| u64::from(c.fence().seqno)).collect();
    seqnos.sort_unstable();
    assert_eq!(seqnos, (1..=8).collect::<Vec<_>>());
    for i in 0..8u8 {
        assert_eq!(
            mem.read_vec(&out, usize::from(i) * 16, 16).unwrap(),
            vec![i; 16]
        );
    }
    assert!(dev.poll(0).unwrap().is_empty());
}

#[test]
fn queue_full_is_distinct_and_recoverable() {
    let (mem, dev) = open(&OpenOptions {
        queue_size: Some(4),
        ..Default::default()
    });
    let out = mem.alloc(64).unwrap();
    let req = Request::new(Op::Fill).output(Buffer::direct(&out));
    // Indirect: one slot per request.
    for t in 0..4 {
        dev.submit(0, &req, t).unwrap();
    }
    assert!(matches!(
        dev.submit(0, &req, 4),
        Err(Error::QueueFull { queue: 1 })
    ));
    dev.flush(0).unwrap();
    let mut n = 0;
    while n < 4 {
        n += dev.wait(0, Duration::from_secs(5)).unwrap().len();
    }
    dev.submit(0, &req, 4).unwrap();

    // Without indirect descriptors a Fill (header, response, output) takes 3 slots.
    let (mem, mut dev) = open(&OpenOptions {
        queue_size: Some(4),
        features: DEFAULT_FEATURES & !feature(VIRTIO_RING_F_INDIRECT_DESC),
        ..Default::default()
    });
    let out = mem.alloc(64).unwrap();
    let req = Request::new(Op::Fill).output(Buffer::direct(&out));
    dev.submit(0, &req, 0).unwrap();
    assert_eq!(dev.raw_queue(1).unwrap().num_free(), 1);
    assert!(matches!(
        dev.submit(0, &req, 1),
        Err(Error::QueueFull { .. })
    ));
}

#[test]
fn control_commands_and_status_errors() {
    let (mem, dev) = open(&OpenOptions::default());
    let buf = mem.alloc(4096).unwrap();
    let h1 = dev.create_object(&[buf.segment()]).unwrap();
    let h2 = dev
        .create_object(&[(buf.gpa(), 10), (buf.gpa() + 100, 10)])
        .unwrap();
    assert_ne!(h1, h2);
    dev.destroy_object(h1).unwrap();
    let err = dev.destroy_object(h1).unwrap_err();
    assert_eq!(err.status(), Some(Status::NoObject));
    assert!(matches!(err, Error::Status(Status::NoObject)));

    assert_eq!(
        dev.query_fence(Fence::new(0, 1)).unwrap_err().status(),
        Some(Status::NoFence)
    );
    let out = mem.alloc(64).unwrap();
    let c = dev
        .run(0, &Request::new(Op::Fill).output(Buffer::direct(&out)))
        .unwrap();
    assert!(dev.query_fence(c.fence()).unwrap());
    dev.wait_fences(&[c.fence()]).unwrap();

    let raw = dev
        .control_raw(CtrlReq::new(ControlCommand::ObjectCreate, 0, 0), &[])
        .unwrap();
    assert_eq!(raw.used_len, 16);
    let unknown = CtrlReq {
        cmd: Le32::from(0x999),
        ..Default::default()
    };
    let raw = dev.control_raw(unknown, &[]).unwrap();
    assert_eq!(raw.status(), Ok(Status::Unsupported));
    assert!(matches!(
        raw.check(),
        Err(Error::Status(Status::Unsupported))
    ));
}

#[test]
fn short_response_is_reported() {
    let (mem, dev) = open(&OpenOptions::default());
    let data = mem.alloc(64).unwrap();
    for resp_len in [0, 32] {
        let req = Request::new(Op::Crc32c)
            .input(Buffer::direct(&data))
            .with_resp_len(resp_len);
        let c = dev.run(0, &req).unwrap();
        assert_eq!(c.used_len, 0);
        assert!(c.status().is_err(), "pre-filled 0xff, not a status");
        assert!(matches!(
            c.check(),
            Err(Error::ShortResponse { used_len: 0, .. })
        ));
    }
}

#[test]
fn threads_share_queues() {
    let (mem, dev) = open(&OpenOptions {
        queue_size: Some(8),
        ..Default::default()
    });
    let dev = Arc::new(dev);
    let mut handles = Vec::new();
    for t in 0..6u8 {
        let dev = Arc::clone(&dev);
        let mem = mem.clone();
        handles.push(std::thread::spawn(move || {
            let out = mem.alloc(32).unwrap();
            for i in 0..200u32 {
                let q = u16::from(t % 2);
                let pattern = t.wrapping_mul(31).wrapping_add(i as u8);
                let req = Request::new(Op::Fill)
                    .params(&fill(pattern))
                    .output(Buffer::direct(&out));
                loop {
                    match dev.run(q, &req) {
                        Ok(c) => {
                            assert!(c.is_ok());
                            break;
                        }
                        Err(Error::QueueFull { .. }) => std::thread::yield_now(),
                        Err(e) => panic!("{e:?}"),
                    }
                }
                assert_eq!(mem.read_vec(&out, 0, 32).unwrap(), vec![pattern; 32]);
                if i % 50 == 0 {
                    dev.wait_fences(&[Fence::new(q, 1)]).unwrap();
                }
            }
        }));
    }
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn timeout_abandons_the_request() {
    let (mem, mut dev) = open(&OpenOptions::default());
    dev.set_timeout(Duration::from_millis(50));
    let out = mem.alloc(64).unwrap();
    dev.transport().shared.hold.store(true, Ordering::SeqCst);
    let err = dev
        .run(0, &Request::new(Op::Fill).output(Buffer::direct(&out)))
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { queue: 1, .. }));
    dev.transport().shared.hold.store(false, Ordering::SeqCst);
    dev.set_timeout(Duration::from_secs(5));
    // The device gets around to the abandoned request (it still owes a look at
    // the queue: with EVENT_IDX, the next publish does not kick again).
    dev.notify(1).unwrap();
    let c = dev
        .run(0, &Request::new(Op::Fill).output(Buffer::direct(&out)))
        .unwrap();
    assert!(c.is_ok());
    assert!(dev.poll(0).unwrap().is_empty());
    assert_eq!(dev.in_flight(0).unwrap(), 0);
}

#[test]
fn raw_chains_complete_through_wait_used() {
    let (mem, mut dev) = open(&OpenOptions::default());
    let out = mem.alloc(64).unwrap();
    // A well-formed raw Fill request.
    let header = Request::new(Op::Fill)
        .params(&fill(7))
        .output(Buffer::direct(&out))
        .encode_header()
        .unwrap();
    let hbuf = mem.alloc(256).unwrap();
    mem.write(&hbuf, 0, &header).unwrap();
    let chain = RawDesc::chain(&[
        (hbuf.gpa(), header.len() as u32, false),
        (hbuf.gpa() + 128, 64, true),
        (out.gpa(), 64, true),
    ]);
    let vq = dev.raw_queue(1).unwrap();
    let head = vq.add_raw(&chain, 0xabc).unwrap();
    // And a loop, which the fake returns with used len 0.
    let looped = [RawDesc::new(
        hbuf.gpa(),
        80,
        crate::virtqueue::DESC_F_NEXT,
        RawNext::Desc(0),
    )];
    let head_loop = vq.add_raw(&looped, 0xdef).unwrap();
    let bad_ind = [RawDesc::new(
        1 << 40,
        64,
        DESC_F_INDIRECT,
        RawNext::Absolute(0),
    )];
    let head_ind = vq.add_raw(&bad_ind, 0x123).unwrap();
    vq.publish().unwrap();
    dev.notify(1).unwrap();
    let mut got = Vec::new();
    while got.len() < 3 {
        got.push(
            dev.wait_used(1, Duration::from_secs(5))
                .unwrap()
                .expect("timeout"),
        );
    }
    got.sort_by_key(|u| u.token);
    assert_eq!(got[0].token, 0x123);
    assert_eq!((got[0].head, got[0].len), (head_ind, 0));
    assert_eq!((got[1].head, got[1].len), (head, 128));
    assert_eq!((got[2].head, got[2].len), (head_loop, 0));
    assert_eq!(mem.read_vec(&out, 0, 64).unwrap(), vec![7; 64]);
    let mut resp = Resp::default();
    mem.read_at(hbuf.gpa() + 128, resp.as_mut_slice()).unwrap();
    assert_eq!(u32::from(resp.status), 0);
    assert!(dev
        .wait_used(1, Duration::from_millis(20))
        .unwrap()
        .is_none());
    assert_eq!(dev.raw_queue(1).unwrap().num_free(), 16);
}

#[test]
fn close_resets_transport() {
    let (_mem, dev) = open(&OpenOptions::default());
    let t = dev.close().unwrap();
    assert!(t.shared.devices.lock().unwrap().iter().all(Option::is_none));
}

#[test]
fn config_is_checked_against_the_features() {
    let good = VirtioAccelConfig {
        num_request_queues: Le32::from(1),
        ops: Le32::from(Op::all_capabilities()),
        max_segments: Le32::from(2),
        max_deps: Le32::from(1),
        max_objects: Le32::from(1),
        max_inflight: Le32::from(1),
        max_object_size: Le64::from(1),
        max_buffer_size: Le64::from(1),
    };
    check_config(&good, DEFAULT_FEATURES).unwrap();
    let bad_ops = VirtioAccelConfig {
        ops: Le32::from(1),
        ..good
    };
    assert!(matches!(
        check_config(&bad_ops, 0),
        Err(Error::BadConfig(_))
    ));
    let no_deps = VirtioAccelConfig {
        max_deps: Le32::from(0),
        ..good
    };
    assert!(check_config(&no_deps, feature(VIRTIO_ACCEL_F_FENCES)).is_err());
    check_config(&no_deps, feature(VIRTIO_ACCEL_F_OBJECTS)).unwrap();
    let one_segment = VirtioAccelConfig {
        max_segments: Le32::from(1),
        ..good
    };
    assert!(check_config(&one_segment, 0).is_err());
}

#[test]
fn power_of_two_rounding() {
    assert_eq!(power_of_two_floor(0), 0);
    assert_eq!(power_of_two_floor(1), 1);
    assert_eq!(power_of_two_floor(255), 128);
    assert_eq!(power_of_two_floor(256), 256);
    assert_eq!(power_of_two_floor(u16::MAX), 32768);
}

#[test]
fn a_device_that_restarted_is_reported_and_takes_no_more_requests() {
    let (mem, dev) = open(&OpenOptions::default());
    let out = mem.alloc(64).unwrap();
    let req = Request::new(Op::Fill)
        .params(&fill(5))
        .output(Buffer::direct(&out));
    for _ in 0..3 {
        dev.run(0, &req).unwrap().check().unwrap();
    }
    // The device instance restarts behind the driver: numbering from 1 again.
    dev.transport().shared.state.lock().unwrap().seqno[0] = 0;
    let c = dev.run(0, &req).unwrap();
    assert!(
        c.is_ok(),
        "the request itself was done, by the new instance"
    );
    assert_eq!(u64::from(c.fence().seqno), 1);
    let err = dev.run(0, &req).unwrap_err();
    assert!(
        matches!(
            err,
            Error::DeviceRestarted {
                queue: 1,
                expected: 4,
                reported: 1
            }
        ),
        "{err:?}"
    );
    assert!(
        matches!(
            dev.run(1, &req),
            Err(Error::DeviceRestarted { queue: 1, .. })
        ),
        "the whole device restarted, not one queue"
    );
}
