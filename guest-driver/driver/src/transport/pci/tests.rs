// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Tests of [`PciTransport`] against the in-memory device model, and of
//! [`PciTransport::open`] on a fake sysfs tree.

use std::fs;
use std::os::unix::fs::symlink;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_accel_spec::{Op, VirtioAccelConfig};
use virtio_bindings::virtio_config::{VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_VERSION_1};
use vm_memory::endian::{Le32, Le64};
use vm_memory::ByteValued;

use super::caps::{self, synth};
use super::fake::{FakeVirtioPci, BAR};
use super::irq::fake::FakeLine;
use super::layout::*;
use super::regs::Registers;
use super::sysfs::fake::FakeSysfs;
use super::transport::bring_up;
use super::*;
use crate::device::{feature, Device, DEFAULT_FEATURES};
use crate::memory::DmaMemory;
use crate::transport::{self, Transport};
use crate::virtqueue::QueueAddresses;

const VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;
const ACCESS_PLATFORM: u64 = 1 << VIRTIO_F_ACCESS_PLATFORM;

fn accel_config(request_queues: u32) -> Vec<u8> {
    VirtioAccelConfig {
        num_request_queues: Le32::from(request_queues),
        ops: Le32::from(Op::all_capabilities()),
        max_segments: Le32::from(64),
        max_deps: Le32::from(16),
        max_objects: Le32::from(1024),
        max_inflight: Le32::from(16),
        max_object_size: Le64::from(1 << 30),
        max_buffer_size: Le64::from(64 << 20),
    }
    .as_slice()
    .to_vec()
}

fn bars(dev: &Arc<FakeVirtioPci>) -> [Option<Arc<dyn Registers>>; 6] {
    let mut bars: [Option<Arc<dyn Registers>>; 6] = Default::default();
    bars[usize::from(BAR)] = Some(Arc::clone(dev) as Arc<dyn Registers>);
    bars
}

fn transport_for(dev: &Arc<FakeVirtioPci>, mem: &DmaMemory) -> Result<PciTransport> {
    let caps = caps::parse(&FakeVirtioPci::config_space(), &synth::QEMU_BARS).unwrap();
    PciTransport::with_registers(mem, &caps, &bars(dev), Duration::from_millis(50))
}

fn setup(features: u64, queue_max: &[u16]) -> (Arc<FakeVirtioPci>, DmaMemory, PciTransport) {
    let dev = FakeVirtioPci::new(features, queue_max, &accel_config(2));
    let mem = DmaMemory::new(1 << 20).unwrap();
    let t = transport_for(&dev, &mem).unwrap();
    (dev, mem, t)
}

fn addrs(size: u16, base: u64) -> QueueAddresses {
    QueueAddresses {
        size,
        desc: base,
        avail: base + 0x1000,
        used: base + 0x2000,
    }
}

fn pci_err(e: transport::Error) -> Error {
    match e {
        transport::Error::Backend(b) => *b.downcast::<Error>().unwrap(),
        other => panic!("not a PCI error: {other:?}"),
    }
}

#[test]
fn open_resets_acknowledges_and_reads_features() {
    let offered = VERSION_1 | ACCESS_PLATFORM | 0b11;
    let (dev, _mem, t) = setup(offered, &[256, 128, 64]);
    {
        let st = dev.state();
        assert_eq!(st.status_writes, vec![0, 1, 3]);
        assert_eq!(st.resets, 1);
        assert_eq!(st.status, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    }
    assert_eq!(t.offered_features(), offered);
    // ACCESS_PLATFORM is the transport's business.
    assert_eq!(t.device_features(), VERSION_1 | 0b11);
    assert_eq!(t.max_queues(), 3);
    // Queue sizes are discovered after FEATURES_OK (§3.1.1 step 7).
    assert!(matches!(
        pci_err(t.max_queue_size(0).unwrap_err()),
        Error::Sequence(_)
    ));
    assert!(matches!(
        t.max_queue_size(3),
        Err(transport::Error::InvalidQueue(3))
    ));
}

#[test]
fn features_are_negotiated_in_both_windows() {
    let offered = VERSION_1 | ACCESS_PLATFORM | 0b11;
    let (dev, _mem, mut t) = setup(offered, &[256, 128, 64]);
    t.set_driver_features(VERSION_1 | 1).unwrap();
    {
        let st = dev.state();
        assert_eq!(st.driver_features, VERSION_1 | ACCESS_PLATFORM | 1);
        assert_eq!(st.status_writes.last(), Some(&(1 | 2 | 8)));
        assert_ne!(st.status & STATUS_FEATURES_OK, 0);
    }
    assert_eq!(
        t.negotiated_features(),
        Some(VERSION_1 | ACCESS_PLATFORM | 1)
    );
    assert_eq!(t.max_queue_size(0).unwrap(), 256);
    assert_eq!(t.max_queue_size(2).unwrap(), 64);
    // Twice without a reset is refused.
    assert!(matches!(
        pci_err(t.set_driver_features(VERSION_1).unwrap_err()),
        Error::Sequence(_)
    ));
}

#[test]
fn features_not_offered_are_refused_before_the_device_sees_them() {
    let (dev, _mem, mut t) = setup(VERSION_1, &[8]);
    let err = pci_err(t.set_driver_features(VERSION_1 | 4).unwrap_err());
    assert!(matches!(err, Error::FeaturesNotOffered { wanted, .. } if wanted == VERSION_1 | 4));
    // Asking for the transport's bit directly is refused too.
    assert!(t.set_driver_features(ACCESS_PLATFORM).is_err());
    assert_eq!(dev.state().driver_features, 0);
}

#[test]
fn features_ok_refused_by_the_device_then_reset_recovers() {
    let (dev, _mem, mut t) = setup(VERSION_1 | 1, &[8, 8]);
    dev.state().refuse_features = true;
    let err = pci_err(t.set_driver_features(VERSION_1).unwrap_err());
    assert!(
        matches!(err, Error::FeaturesRefused(f) if f == VERSION_1),
        "{err}"
    );
    assert_ne!(dev.state().status & STATUS_FAILED, 0);
    assert!(t.setup_queue(0, &addrs(8, 0x10000)).is_err());
    dev.state().refuse_features = false;
    t.reset().unwrap();
    assert_eq!(dev.state().resets, 2);
    t.set_driver_features(VERSION_1 | 1).unwrap();
    assert_eq!(dev.state().driver_features, VERSION_1 | 1);
}

#[test]
fn queues_are_programmed() {
    let (dev, _mem, mut t) = setup(VERSION_1, &[256, 128, 64]);
    assert!(matches!(
        pci_err(t.setup_queue(1, &addrs(64, 0x1_0000)).unwrap_err()),
        Error::Sequence(_)
    ));
    t.set_driver_features(VERSION_1).unwrap();
    let high = 0x1_2345_6000;
    t.setup_queue(1, &addrs(64, high)).unwrap();
    t.setup_queue(2, &addrs(64, 0x4_0000)).unwrap();
    {
        let st = dev.state();
        let q = &st.queues[1];
        assert_eq!(q.size, 64);
        assert_eq!(q.msix, VIRTIO_MSI_NO_VECTOR);
        assert_eq!(q.desc, high);
        assert_eq!(q.driver, high + 0x1000);
        assert_eq!(q.device, high + 0x2000);
        assert_eq!(q.enable, 1);
        assert_eq!(st.queues[0].enable, 0);
        assert_eq!(st.queues[2].desc, 0x4_0000);
    }
    for (queue, size, max) in [(2, 128, 64), (0, 0, 256), (0, 48, 256)] {
        let err = pci_err(t.setup_queue(queue, &addrs(size, 0)).unwrap_err());
        assert!(
            matches!(err, Error::QueueSize { queue: q, size: s, max: m } if (q, s, m) == (queue, size, max)),
            "{err}"
        );
    }
    assert!(matches!(
        t.setup_queue(3, &addrs(8, 0)),
        Err(transport::Error::InvalidQueue(3))
    ));
    t.activate().unwrap();
    assert_eq!(dev.state().status, 1 | 2 | 8 | 4);
}

#[test]
fn notifications_go_to_each_queues_address() {
    let (dev, _mem, mut t) = setup(VERSION_1, &[8, 8, 8]);
    assert!(matches!(
        t.notify(1),
        Err(transport::Error::QueueNotReady(1))
    ));
    t.set_driver_features(VERSION_1).unwrap();
    for q in 0..3 {
        t.setup_queue(q, &addrs(8, 0x1_0000 * (u64::from(q) + 1)))
            .unwrap();
    }
    t.notify(2).unwrap();
    t.notify(0).unwrap();
    t.notify(1).unwrap();
    // The model's queue_notify_off is 3 * index; the multiplier is 4.
    assert_eq!(dev.state().notifies, vec![(24, 2), (0, 0), (12, 1)]);
    assert!(matches!(
        t.notify(3),
        Err(transport::Error::InvalidQueue(3))
    ));
}

#[test]
fn notify_offsets_outside_the_area_are_refused() {
    let (dev, _mem, mut t) = setup(VERSION_1, &[8, 8]);
    dev.state().queues[1].notify_off = 0x400; // 0x1000: just past the area
    t.set_driver_features(VERSION_1).unwrap();
    let err = pci_err(t.setup_queue(1, &addrs(8, 0x1_0000)).unwrap_err());
    assert!(
        matches!(
            err,
            Error::NotifyOutOfRange {
                queue: 1,
                offset: 0x1000
            }
        ),
        "{err}"
    );
    assert_eq!(dev.state().queues[1].enable, 0);
}

#[test]
fn config_reads_use_natural_accesses() {
    let (dev, _mem, mut t) = setup(VERSION_1, &[8]);
    let expected = accel_config(2);
    let mut buf = vec![0u8; expected.len()];
    t.read_config(0, &mut buf).unwrap();
    assert_eq!(buf, expected);
    // 40 bytes in ten 32-bit reads.
    assert_eq!(dev.state().config_reads, 10);
    let mut odd = [0u8; 3];
    t.read_config(5, &mut odd).unwrap();
    assert_eq!(odd, expected[5..8]);
    let mut past = [0u8; 8];
    assert!(matches!(
        pci_err(t.read_config(0xffc, &mut past).unwrap_err()),
        Error::ConfigOutOfRange { .. }
    ));
}

#[test]
fn config_read_retries_across_a_generation_change() {
    let (dev, _mem, mut t) = setup(VERSION_1, &[8]);
    let next = accel_config(7);
    // The configuration changes in the middle of the first pass.
    dev.state().change_config_at = Some((4, next.clone()));
    let mut buf = vec![0u8; next.len()];
    t.read_config(0, &mut buf).unwrap();
    assert_eq!(buf, next, "a torn read would mix old and new values");
    assert_eq!(dev.state().config_reads, 20);
    dev.state().unstable_config = true;
    assert!(matches!(
        pci_err(t.read_config(0, &mut buf).unwrap_err()),
        Error::ConfigUnstable(_)
    ));
}

#[test]
fn no_device_config_structure() {
    let dev = FakeVirtioPci::new(VERSION_1, &[8], &[]);
    let mem = DmaMemory::new(1 << 16).unwrap();
    let mut caps = caps::parse(&FakeVirtioPci::config_space(), &synth::QEMU_BARS).unwrap();
    caps.device = None;
    let mut t =
        PciTransport::with_registers(&mem, &caps, &bars(&dev), Duration::from_millis(50)).unwrap();
    assert!(matches!(
        pci_err(t.read_config(0, &mut [0u8; 4]).unwrap_err()),
        Error::NoDeviceConfig
    ));
}

#[test]
fn reset_forgets_queues_and_waits_for_status_zero() {
    let (dev, _mem, mut t) = setup(VERSION_1, &[8, 8]);
    t.set_driver_features(VERSION_1).unwrap();
    t.setup_queue(0, &addrs(8, 0x1_0000)).unwrap();
    t.activate().unwrap();
    dev.state().reset_delay = 3;
    t.reset().unwrap();
    {
        let st = dev.state();
        assert_eq!(st.resets, 2);
        assert_eq!(st.queues[0].enable, 0);
        assert_eq!(st.queues[0].desc, 0);
        assert_eq!(st.status, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    }
    assert!(matches!(
        t.notify(0),
        Err(transport::Error::QueueNotReady(0))
    ));
    assert_eq!(t.negotiated_features(), None);
    // Set up again after the reset.
    t.set_driver_features(VERSION_1).unwrap();
    t.setup_queue(0, &addrs(8, 0x2_0000)).unwrap();
    assert_eq!(dev.state().queues[0].desc, 0x2_0000);

    // A device that never finishes its reset.
    dev.state().reset_delay = u32::MAX;
    let err = pci_err(t.reset().unwrap_err());
    assert!(
        matches!(err, Error::ResetTimeout { status: 1, .. }),
        "{err}"
    );
}

#[test]
fn drop_resets_the_device() {
    let (dev, _mem, mut t) = setup(VERSION_1, &[8]);
    t.set_driver_features(VERSION_1).unwrap();
    t.activate().unwrap();
    drop(t);
    let st = dev.state();
    assert_eq!(st.resets, 2);
    assert_eq!(st.status, 0);
}

#[test]
fn polling_mode_sleeps_and_reports_possible_work() {
    let (_dev, _mem, mut t) = setup(VERSION_1, &[8]);
    assert!(matches!(
        t.wait_interrupt(0, Some(Duration::ZERO)),
        Err(transport::Error::QueueNotReady(0))
    ));
    t.set_driver_features(VERSION_1).unwrap();
    t.setup_queue(0, &addrs(8, 0x1_0000)).unwrap();
    assert!(t.wait_interrupt(0, None).unwrap());
    assert!(t.wait_interrupt(0, Some(Duration::from_secs(1))).unwrap());
    assert!(!t.wait_interrupt(0, Some(Duration::from_micros(1))).unwrap());
}

#[test]
fn intx_interrupts_are_acknowledged_through_isr() {
    let line = FakeLine::new();
    let dev = FakeVirtioPci::with_line(VERSION_1, &[8, 8], &accel_config(1), Some(line.clone()));
    let mem = DmaMemory::new(1 << 20).unwrap();
    let mut t = transport_for(&dev, &mem).unwrap();
    t.set_intx(Box::new(Arc::clone(&line))).unwrap();
    t.set_driver_features(VERSION_1).unwrap();
    t.setup_queue(0, &addrs(8, 0x1_0000)).unwrap();
    t.setup_queue(1, &addrs(8, 0x2_0000)).unwrap();
    t.activate().unwrap();
    assert!(!t
        .wait_interrupt(1, Some(Duration::from_millis(10)))
        .unwrap());
    let t = Arc::new(t);
    let waiter = {
        let t = Arc::clone(&t);
        std::thread::spawn(move || t.wait_interrupt(1, Some(Duration::from_secs(5))).unwrap())
    };
    std::thread::sleep(Duration::from_millis(20));
    let start = Instant::now();
    dev.queue_interrupt();
    assert!(waiter.join().unwrap());
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(dev.state().isr, 0, "ISR read to acknowledge the interrupt");
    assert_eq!(line.counts(), (1, 2));
    // Queue 0 sees the same (shared) interrupt once.
    assert!(t
        .wait_interrupt(0, Some(Duration::from_millis(10)))
        .unwrap());
    assert!(!t
        .wait_interrupt(0, Some(Duration::from_millis(10)))
        .unwrap());
}

#[test]
fn the_device_core_runs_over_the_transport() {
    let offered = DEFAULT_FEATURES | ACCESS_PLATFORM;
    let dev = FakeVirtioPci::new(offered, &[64, 32, 32], &accel_config(2));
    let mem = DmaMemory::new(1 << 20).unwrap();
    let t = transport_for(&dev, &mem).unwrap();
    let device = Device::open(t, DEFAULT_FEATURES).unwrap();
    assert_eq!(device.features(), DEFAULT_FEATURES);
    assert_eq!(device.num_request_queues(), 2);
    let st = dev.state();
    assert_eq!(st.driver_features, DEFAULT_FEATURES | ACCESS_PLATFORM);
    assert_eq!(st.status, 1 | 2 | 8 | 4);
    assert!(st.queues.iter().all(|q| q.enable == 1));
    assert_eq!(st.queues[0].size, 64);
    assert!(st.queues.iter().all(|q| mem.contains(q.desc, 16)));
    assert!(DEFAULT_FEATURES & feature(VIRTIO_F_VERSION_1) != 0);
}

const RESOURCE: &str = "\
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x00000000febd1000 0x00000000febd1fff 0x0000000000040200
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x00000000fe000000 0x00000000fe003fff 0x000000000014220c
0x0000000000000000 0x0000000000000000 0x0000000000000000
";

/// Where the fake functions sit.
const BDF: &str = "0000:00:04.0";

/// A fake sysfs tree with one accelerator function at [`BDF`] bound to a
/// driver (pin INTA#, IRQ 11, `uio0` when bound to `uio_pci_generic`), an
/// empty device-node directory, options that poll it, and DMA memory to open
/// it with.
struct FakeFunction {
    fake: FakeSysfs,
    dir: std::path::PathBuf,
    options: PciOptions,
    mem: DmaMemory,
}

impl FakeFunction {
    fn new(name: &str, driver: &str) -> Self {
        let fake = FakeSysfs::new(name);
        let dir = fake_function(&fake, BDF, driver);
        let dev_root = fake.root.join("dev");
        fs::create_dir(&dev_root).unwrap();
        let options = PciOptions {
            poll: true,
            sysfs_root: fake.root.clone(),
            dev_root,
            ..PciOptions::default()
        };
        let mem = DmaMemory::new(1 << 16).unwrap();
        FakeFunction {
            fake,
            dir,
            options,
            mem,
        }
    }
}

fn fake_function(fake: &FakeSysfs, bdf: &str, driver: &str) -> std::path::PathBuf {
    let dir = fake.add_device(
        bdf,
        VIRTIO_PCI_VENDOR_ID,
        ACCEL_PCI_DEVICE_ID,
        Some(driver),
        Some(0),
    );
    let mut config = synth::qemu_like(ACCEL_PCI_DEVICE_ID);
    config[pci_header::COMMAND] = pci_header::COMMAND_MEMORY as u8;
    fs::write(dir.join("config"), &config).unwrap();
    fs::write(dir.join("resource"), RESOURCE).unwrap();
    fs::write(dir.join("resource4"), vec![0u8; 0x4000]).unwrap();
    fs::write(dir.join("irq"), "11\n").unwrap();
    dir
}

impl FakeFunction {
    /// Gives the file standing for BAR 4 one queue of at most 8 entries
    /// (the file keeps what the driver writes, so negotiation succeeds).
    fn with_one_queue(self) -> Self {
        let bar = self.dir.join("resource4");
        let mut regs = fs::read(&bar).unwrap();
        let mut put16 = |at: u64, v: u16| {
            let at = usize::try_from(at).unwrap();
            regs[at..at + 2].copy_from_slice(&v.to_le_bytes());
        };
        put16(common::NUM_QUEUES, 1);
        put16(common::QUEUE_SIZE, 8);
        fs::write(&bar, regs).unwrap();
        self
    }

    /// Sets the Interrupt Pin register and the sysfs `irq`.
    fn set_intx(&self, pin: u8, irq: &str) {
        let mut config = fs::read(self.dir.join("config")).unwrap();
        config[pci_header::INTERRUPT_PIN] = pin;
        fs::write(self.dir.join("config"), &config).unwrap();
        fs::write(self.dir.join("irq"), irq).unwrap();
    }

    /// The command register in the fake configuration space.
    fn command(&self) -> u16 {
        let config = fs::read(self.dir.join("config")).unwrap();
        u16::from_le_bytes([config[4], config[5]])
    }

    /// Sets INTX_DISABLE, as `uio_pci_generic`'s handler does when the line fires.
    fn mask_intx(&self) {
        let mut config = fs::read(self.dir.join("config")).unwrap();
        config[5] |= pci_header::COMMAND_INTX_DISABLE.to_le_bytes()[1];
        fs::write(self.dir.join("config"), &config).unwrap();
    }

    /// Options that wait for INTx.
    fn intx_options(&self) -> PciOptions {
        PciOptions {
            poll: false,
            ..self.options.clone()
        }
    }
}

/// Negotiates no features and sets up queue 0 of a transport opened on a
/// [`FakeFunction::with_one_queue`].
fn set_up_queue_0(t: &mut PciTransport) {
    t.set_driver_features(0).unwrap();
    t.setup_queue(0, &addrs(8, 0x1_0000)).unwrap();
    t.activate().unwrap();
}

#[test]
fn open_on_a_fake_sysfs_tree() {
    let bdf = BDF;
    let FakeFunction {
        fake: _fake,
        dir,
        options,
        mem,
    } = FakeFunction::new("open", UIO_DRIVER);
    // The BAR is a plain file: the "device" offers nothing and has no queues.
    let t = PciTransport::open(bdf, &mem, &options).unwrap();
    assert_eq!(t.max_queues(), 0);
    assert_eq!(t.interrupt_mode(), InterruptMode::PollRequested);
    drop(t);
    let config = fs::read(dir.join("config")).unwrap();
    let command = u16::from_le_bytes([config[4], config[5]]);
    assert_eq!(
        command,
        pci_header::COMMAND_MEMORY | pci_header::COMMAND_BUS_MASTER
    );
    let bar = fs::read(dir.join("resource4")).unwrap();
    assert_eq!(
        bar[usize::try_from(common::DEVICE_STATUS).unwrap()],
        0,
        "reset on close"
    );

    // INTx mode opens uio0 in the device-node directory, which is empty.
    let intx = PciOptions {
        poll: false,
        ..options.clone()
    };
    let err = PciTransport::open(bdf, &mem, &intx).unwrap_err();
    let node = options.dev_root.join("uio0");
    assert!(
        matches!(&err, Error::OpenUio { path, .. } if *path == node),
        "{err}"
    );
}

#[test]
fn a_function_without_an_intx_line_is_polled_and_says_why() {
    // cloud-hypervisor's functions have no pin; a pin the kernel could not
    // route leaves uio_pci_generic without an IRQ just the same.
    let cases = [
        (0, "11\n", NoIntx::NoPin),
        (1, "0\n", NoIntx::NoIrq { pin: 1, irq: 0 }),
        (
            2,
            "2147483648\n",
            NoIntx::NoIrq {
                pin: 2,
                irq: 1 << 31,
            },
        ),
    ];
    for (pin, irq, why) in cases {
        let f = FakeFunction::new("no-intx", UIO_DRIVER).with_one_queue();
        f.set_intx(pin, irq);
        f.mask_intx();
        // No /dev/uio0 exists: waiting for INTx would fail to open it.
        let mut t = PciTransport::open(BDF, &f.mem, &f.intx_options()).unwrap();
        assert_eq!(t.interrupt_mode(), InterruptMode::PollNoIntx(why));
        assert!(t.interrupt_mode().polls());
        let said = t.interrupt_mode().to_string();
        assert!(
            said.contains("polling the used rings: no INTx line"),
            "{said}"
        );
        set_up_queue_0(&mut t);
        // It works by polling: each round reports possible work...
        let start = Instant::now();
        assert!(t.wait_interrupt(0, None).unwrap());
        assert!(t.wait_interrupt(0, Some(Duration::from_secs(5))).unwrap());
        assert!(start.elapsed() < Duration::from_secs(1), "a polling round");
        // ...and a timeout below a round is honoured.
        assert!(!t.wait_interrupt(0, Some(Duration::from_nanos(1))).unwrap());
        assert_ne!(
            f.command() & pci_header::COMMAND_INTX_DISABLE,
            0,
            "INTx left alone"
        );
    }
    assert!(NoIntx::NoPin.to_string().contains("cloud-hypervisor"));
    assert!(NoIntx::NoIrq { pin: 1, irq: 0 }
        .to_string()
        .contains("pin INTA# but the kernel assigned it no IRQ (irq 0)"));
}

/// Makes a FIFO at `path`: a `/dev/uioN` stand-in, readable when written to.
fn mkfifo(path: &std::path::Path) {
    use std::os::unix::ffi::OsStrExt;
    let name = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `name` is a NUL-terminated path that lives across the call;
    // mkfifo reads it and touches no other memory.
    let rc = unsafe { libc::mkfifo(name.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo: {}", std::io::Error::last_os_error());
}

#[test]
fn a_function_with_an_intx_line_takes_interrupts() {
    let f = FakeFunction::new("intx", UIO_DRIVER).with_one_queue();
    let node = f.options.dev_root.join("uio0");
    mkfifo(&node);
    // Masked, as uio_pci_generic leaves a line that fired before.
    f.mask_intx();
    let mut t = PciTransport::open(BDF, &f.mem, &f.intx_options()).unwrap();
    assert_eq!(t.interrupt_mode(), InterruptMode::Intx { irq: 11 });
    assert!(!t.interrupt_mode().polls());
    assert_eq!(
        f.command() & pci_header::COMMAND_INTX_DISABLE,
        0,
        "unmasked"
    );
    set_up_queue_0(&mut t);
    // No interrupt: the wait times out (a polling transport would report work).
    assert!(!t
        .wait_interrupt(0, Some(Duration::from_millis(30)))
        .unwrap());
    // The kernel masks the line and counts the interrupt on /dev/uio0.
    f.mask_intx();
    let mut uio = fs::OpenOptions::new().write(true).open(&node).unwrap();
    std::io::Write::write_all(&mut uio, &1u32.to_ne_bytes()).unwrap();
    assert!(t.wait_interrupt(0, Some(Duration::from_secs(5))).unwrap());
    assert_eq!(
        f.command() & pci_header::COMMAND_INTX_DISABLE,
        0,
        "unmasked after the acknowledgement"
    );
    assert!(!t
        .wait_interrupt(0, Some(Duration::from_millis(10)))
        .unwrap());
    drop(t);
    // --poll stays a choice: the same function is polled when asked.
    let t = PciTransport::open(BDF, &f.mem, &f.options).unwrap();
    assert_eq!(t.interrupt_mode(), InterruptMode::PollRequested);
}

#[test]
fn interrupt_mode_reads_the_irq_only_when_it_matters() {
    let unread = || -> sysfs::Result<u32> { panic!("irq read") };
    assert_eq!(
        InterruptMode::choose(true, 1, unread).unwrap(),
        InterruptMode::PollRequested
    );
    assert_eq!(
        InterruptMode::choose(true, 0, unread).unwrap(),
        InterruptMode::PollRequested
    );
    assert_eq!(
        InterruptMode::choose(false, 0, unread).unwrap(),
        InterruptMode::PollNoIntx(NoIntx::NoPin)
    );
    assert_eq!(
        InterruptMode::choose(false, 1, || Ok(11)).unwrap(),
        InterruptMode::Intx { irq: 11 }
    );
    assert_eq!(
        InterruptMode::choose(false, 4, || Ok(0)).unwrap(),
        InterruptMode::PollNoIntx(NoIntx::NoIrq { pin: 4, irq: 0 })
    );
    let err = InterruptMode::choose(false, 1, || {
        Err(sysfs::Error::Parse {
            path: "irq".into(),
            what: "a decimal IRQ number",
        })
    })
    .unwrap_err();
    assert!(
        matches!(err, Error::Sysfs(sysfs::Error::Parse { .. })),
        "{err}"
    );
    assert_eq!(
        InterruptMode::Intx { irq: 11 }.to_string(),
        "INTx through uio_pci_generic, IRQ 11"
    );
}

#[test]
fn open_explains_a_missing_uio_binding() {
    let bdf = BDF;
    let FakeFunction {
        fake,
        dir,
        options,
        mem,
    } = FakeFunction::new("unbound", "virtio-pci");
    let err = PciTransport::open(bdf, &mem, &options).unwrap_err();
    assert!(
        matches!(err, Error::Sysfs(sysfs::Error::NotBoundToUio { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("driver_override"), "{err}");
    // Bound, but the configuration space is what a non-root user sees.
    fs::remove_file(dir.join("driver")).unwrap();
    symlink(fake.add_driver(UIO_DRIVER), dir.join("driver")).unwrap();
    fs::write(
        dir.join("config"),
        &synth::qemu_like(ACCEL_PCI_DEVICE_ID)[..64],
    )
    .unwrap();
    let err = PciTransport::open(bdf, &mem, &options).unwrap_err();
    assert!(matches!(err, Error::Caps(caps::Error::Short(64))), "{err}");
    // A virtio function of another type.
    fs::write(dir.join("config"), synth::qemu_like(0x1041)).unwrap();
    let err = PciTransport::open(bdf, &mem, &options).unwrap_err();
    assert!(matches!(err, Error::NotAccel(1)), "{err}");
}

#[test]
fn a_second_open_finds_the_device_in_use() {
    let bdf = BDF;
    let FakeFunction {
        fake,
        dir,
        options,
        mem,
    } = FakeFunction::new("inuse", UIO_DRIVER);
    let first = PciTransport::open(bdf, &mem, &options).unwrap();
    // The first user's device is running: a second open must not reset it.
    let status = usize::try_from(common::DEVICE_STATUS).unwrap();
    let mut bar = fs::read(dir.join("resource4")).unwrap();
    bar[status] = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK;
    fs::write(dir.join("resource4"), &bar).unwrap();
    let err = PciTransport::open(bdf, &mem, &options).unwrap_err();
    assert!(
        matches!(err, Error::Sysfs(sysfs::Error::InUse { .. })),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("device 0000:00:04.0 is in use by another process"),
        "{err}"
    );
    assert_eq!(
        fs::read(dir.join("resource4")).unwrap()[status],
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK,
        "not reset by the refused open"
    );
    // Listing does not take the device.
    assert_eq!(list_devices(&fake.root).unwrap().len(), 1);
    drop(first);
    PciTransport::open(bdf, &mem, &options).unwrap();
}

#[test]
fn bus_mastering_is_enabled_only_after_the_reset() {
    use std::cell::{Cell, RefCell};
    let command = Cell::new(0u16);
    let log = RefCell::new(Vec::new());
    let mut set = |bits: u16| {
        let old = command.get();
        command.set(old | bits);
        log.borrow_mut().push(format!("command |= {bits:#x}"));
        Ok(old)
    };
    let dev = FakeVirtioPci::new(VERSION_1, &[8], &accel_config(1));
    let mem = DmaMemory::new(1 << 16).unwrap();
    let t = bring_up(&mut set, || {
        assert_eq!(
            command.get() & pci_header::COMMAND_BUS_MASTER,
            0,
            "bus mastering before the reset"
        );
        assert_ne!(command.get() & pci_header::COMMAND_MEMORY, 0, "BARs decode");
        log.borrow_mut().push("reset".into());
        transport_for(&dev, &mem)
    })
    .unwrap();
    assert_eq!(
        *log.borrow(),
        vec!["command |= 0x2", "reset", "command |= 0x4"]
    );
    drop(t);
    // A device that does not finish its reset never gets bus mastering.
    let dev = FakeVirtioPci::new(VERSION_1, &[8], &accel_config(1));
    dev.state().reset_delay = u32::MAX;
    command.set(0);
    let mut set = |bits: u16| {
        let old = command.get();
        command.set(old | bits);
        Ok(old)
    };
    let err = bring_up(&mut set, || transport_for(&dev, &mem)).unwrap_err();
    assert!(matches!(err, Error::ResetTimeout { .. }), "{err}");
    assert_eq!(command.get(), pci_header::COMMAND_MEMORY);
}

#[test]
fn access_platform_is_refused_behind_a_translating_iommu() {
    let offered = VERSION_1 | ACCESS_PLATFORM | 1;
    let (dev, _mem, mut t) = setup(offered, &[8]);
    t.set_translating_iommu("DMA-FQ");
    let err = pci_err(t.set_driver_features(VERSION_1 | 1).unwrap_err());
    assert!(
        matches!(&err, Error::TranslatingIommu { domain } if domain == "DMA-FQ"),
        "{err}"
    );
    assert!(err.to_string().contains("guest-physical"), "{err}");
    assert_eq!(dev.state().driver_features, 0, "the device saw nothing");
    // A device without ACCESS_PLATFORM bypasses the IOMMU: fine.
    let (dev, _mem, mut t) = setup(VERSION_1 | 1, &[8]);
    t.set_translating_iommu("DMA");
    t.set_driver_features(VERSION_1 | 1).unwrap();
    assert_eq!(dev.state().driver_features, VERSION_1 | 1);
}

#[test]
fn unimplemented_transport_features_are_refused() {
    const RING_PACKED: u64 = 1 << 34;
    const IN_ORDER: u64 = 1 << 35;
    const NOTIFICATION_DATA: u64 = 1 << 38;
    const RING_RESET: u64 = 1 << 40;
    let ring = feature(virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX)
        | feature(virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC);
    let offered = VERSION_1 | ring | RING_PACKED | IN_ORDER | NOTIFICATION_DATA | RING_RESET | 0xff;
    for bad in [
        RING_PACKED,
        IN_ORDER,
        NOTIFICATION_DATA,
        RING_RESET,
        1 << 24,
    ] {
        let (dev, _mem, mut t) = setup(offered | (1 << 24), &[8]);
        let err = pci_err(t.set_driver_features(VERSION_1 | bad).unwrap_err());
        assert!(
            matches!(err, Error::UnsupportedFeatures(b) if b == bad),
            "{bad:#x}: {err}"
        );
        assert_eq!(dev.state().driver_features, 0);
    }
    let (dev, _mem, mut t) = setup(offered, &[8]);
    t.set_driver_features(VERSION_1 | ring | 0xff).unwrap();
    assert_eq!(dev.state().driver_features, VERSION_1 | ring | 0xff);
    // The device core asks only for what it implements.
    let dev = FakeVirtioPci::new(offered | DEFAULT_FEATURES, &[64, 32], &accel_config(1));
    let mem = DmaMemory::new(1 << 20).unwrap();
    let device = Device::open(transport_for(&dev, &mem).unwrap(), DEFAULT_FEATURES).unwrap();
    assert_eq!(device.features(), DEFAULT_FEATURES);
}

#[test]
fn negotiating_again_after_a_refusal_resets_first() {
    let (dev, _mem, mut t) = setup(VERSION_1 | 1, &[8]);
    dev.state().refuse_features = true;
    assert!(t.set_driver_features(VERSION_1 | 1).is_err());
    assert_ne!(dev.state().status & STATUS_FAILED, 0);
    dev.state().refuse_features = false;
    // No explicit reset: the transport must reset before writing features again.
    t.set_driver_features(VERSION_1).unwrap();
    let st = dev.state();
    assert_eq!(st.resets, 2, "§3.1.1: reset before a new negotiation");
    let failed = st
        .status_writes
        .iter()
        .position(|&w| w & STATUS_FAILED != 0)
        .unwrap();
    assert_eq!(&st.status_writes[failed + 1..], &[0, 1, 3, 1 | 2 | 8]);
    assert_eq!(st.driver_features, VERSION_1);
    assert_eq!(st.status, 1 | 2 | 8);
}
