// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! An in-memory model of a modern virtio-pci function's BAR, for tests.
//!
//! It behaves as a device does (virtio 1.2 §4.1.4): `queue_select` switches
//! the per-queue registers, the feature select registers pick 32-bit windows,
//! writing 0 to `device_status` resets, `FEATURES_OK` is refused for features
//! the device does not offer, notifications are recorded, ISR is read to clear.
//! Accesses of the wrong width to the common configuration panic, so tests
//! catch a driver that breaks §4.1.3.1.

use std::sync::{Arc, Mutex, MutexGuard};

use super::caps::synth;
use super::irq::fake::FakeLine;
use super::layout::{common as cc, *};
use super::regs::{self, check_access, Registers, Width};

/// BAR layout, as in [`synth::qemu_like`]: all structures in BAR 4.
pub(crate) const BAR: u8 = 4;
pub(crate) const ISR_OFF: u64 = 0x1000;
pub(crate) const DEVICE_OFF: u64 = 0x2000;
pub(crate) const NOTIFY_OFF: u64 = 0x3000;
pub(crate) const BAR_LEN: u64 = 0x4000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FakeQueue {
    pub max: u16,
    pub size: u16,
    pub msix: u16,
    pub enable: u16,
    pub notify_off: u16,
    pub desc: u64,
    pub driver: u64,
    pub device: u64,
}

impl FakeQueue {
    fn reset(&mut self) {
        self.size = self.max;
        self.msix = VIRTIO_MSI_NO_VECTOR;
        self.enable = 0;
        self.desc = 0;
        self.driver = 0;
        self.device = 0;
    }
}

#[derive(Debug)]
pub(crate) struct DevState {
    /// Features offered.
    pub features: u64,
    dfselect: u32,
    gfselect: u32,
    /// Features the driver wrote.
    pub driver_features: u64,
    pub status: u8,
    /// Every value written to `device_status`, in order.
    pub status_writes: Vec<u8>,
    pub generation: u8,
    qselect: u16,
    pub queues: Vec<FakeQueue>,
    pub config_msix: u16,
    pub config: Vec<u8>,
    /// Device configuration reads so far.
    pub config_reads: u32,
    /// After this many configuration reads, `config` becomes `config_next`
    /// and the generation moves (a configuration change mid-read).
    pub change_config_at: Option<(u32, Vec<u8>)>,
    /// Every configuration read moves the generation.
    pub unstable_config: bool,
    /// Notification writes: (offset in the notify area, value).
    pub notifies: Vec<(u64, u16)>,
    pub isr: u8,
    pub resets: u32,
    /// After a reset, `device_status` reads nonzero this many more times.
    pub reset_delay: u32,
    reset_reads_left: u32,
    /// Refuse `FEATURES_OK` whatever the features.
    pub refuse_features: bool,
}

#[derive(Debug)]
pub(crate) struct FakeVirtioPci {
    state: Mutex<DevState>,
    line: Option<Arc<FakeLine>>,
}

impl FakeVirtioPci {
    /// A device offering `features`, with one queue of each maximum size in
    /// `queue_max`, and configuration `config`.
    pub(crate) fn new(features: u64, queue_max: &[u16], config: &[u8]) -> Arc<Self> {
        Self::with_line(features, queue_max, config, None)
    }

    pub(crate) fn with_line(
        features: u64,
        queue_max: &[u16],
        config: &[u8],
        line: Option<Arc<FakeLine>>,
    ) -> Arc<Self> {
        let queues = queue_max
            .iter()
            .enumerate()
            .map(|(i, &max)| {
                let mut q = FakeQueue {
                    max,
                    size: 0,
                    msix: 0,
                    enable: 0,
                    // Not the identity, so that tests see the driver uses it.
                    notify_off: u16::try_from(i * 3).unwrap(),
                    desc: 0,
                    driver: 0,
                    device: 0,
                };
                q.reset();
                q
            })
            .collect();
        Arc::new(FakeVirtioPci {
            state: Mutex::new(DevState {
                features,
                dfselect: 0,
                gfselect: 0,
                driver_features: 0,
                // Left over from firmware or a previous driver.
                status: STATUS_ACKNOWLEDGE | STATUS_DRIVER,
                status_writes: Vec::new(),
                generation: 0,
                qselect: 0,
                queues,
                config_msix: VIRTIO_MSI_NO_VECTOR,
                config: config.to_vec(),
                config_reads: 0,
                change_config_at: None,
                unstable_config: false,
                notifies: Vec::new(),
                isr: 0,
                resets: 0,
                reset_delay: 0,
                reset_reads_left: 0,
                refuse_features: false,
            }),
            line,
        })
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, DevState> {
        self.state.lock().unwrap()
    }

    /// The device signals a used buffer: ISR queue bit, INTx asserted.
    pub(crate) fn queue_interrupt(&self) {
        self.state().isr |= ISR_QUEUE;
        if let Some(line) = &self.line {
            line.raise();
        }
    }

    /// The configuration space of a function with this BAR layout.
    pub(crate) fn config_space() -> Vec<u8> {
        synth::qemu_like(ACCEL_PCI_DEVICE_ID)
    }

    fn reset(st: &mut DevState) {
        st.driver_features = 0;
        st.dfselect = 0;
        st.gfselect = 0;
        st.status = 0;
        st.qselect = 0;
        st.isr = 0;
        st.config_msix = VIRTIO_MSI_NO_VECTOR;
        st.queues.iter_mut().for_each(FakeQueue::reset);
        st.resets += 1;
        st.reset_reads_left = st.reset_delay;
    }
}

fn expect(width: Width, want: Width, offset: u64) {
    assert_eq!(width, want, "wrong access width at common cfg {offset:#x}");
}

fn half(value: u64, offset: u64, width: Width, field: u64, old: u64) -> u64 {
    match (width, offset - field) {
        (Width::W64, 0) => value,
        (Width::W32, 0) => (old & !0xffff_ffff) | value,
        (Width::W32, 4) => (old & 0xffff_ffff) | (value << 32),
        _ => panic!("bad access to 64-bit field {field:#x} at {offset:#x} width {width:?}"),
    }
}

fn read_half(value: u64, offset: u64, width: Width, field: u64) -> u64 {
    match (width, offset - field) {
        (Width::W64, 0) => value,
        (Width::W32, 0) => value & 0xffff_ffff,
        (Width::W32, 4) => value >> 32,
        _ => panic!("bad access to 64-bit field {field:#x} at {offset:#x} width {width:?}"),
    }
}

impl DevState {
    fn queue(&mut self) -> Option<&mut FakeQueue> {
        self.queues.get_mut(usize::from(self.qselect))
    }

    fn read_common(&mut self, offset: u64, width: Width) -> u64 {
        use Width::*;
        let q = |st: &mut DevState, f: fn(&FakeQueue) -> u64| st.queue().map_or(0, |q| f(q));
        match offset {
            cc::DEVICE_FEATURE_SELECT => {
                expect(width, W32, offset);
                self.dfselect.into()
            }
            cc::DEVICE_FEATURE => {
                expect(width, W32, offset);
                match self.dfselect {
                    0 => self.features & 0xffff_ffff,
                    1 => self.features >> 32,
                    _ => 0,
                }
            }
            cc::DRIVER_FEATURE_SELECT => {
                expect(width, W32, offset);
                self.gfselect.into()
            }
            cc::DRIVER_FEATURE => {
                expect(width, W32, offset);
                match self.gfselect {
                    0 => self.driver_features & 0xffff_ffff,
                    1 => self.driver_features >> 32,
                    _ => 0,
                }
            }
            cc::CONFIG_MSIX_VECTOR => {
                expect(width, W16, offset);
                self.config_msix.into()
            }
            cc::NUM_QUEUES => {
                expect(width, W16, offset);
                self.queues.len() as u64
            }
            cc::DEVICE_STATUS => {
                expect(width, W8, offset);
                if self.reset_reads_left > 0 {
                    self.reset_reads_left -= 1;
                    return u64::from(STATUS_ACKNOWLEDGE);
                }
                self.status.into()
            }
            cc::CONFIG_GENERATION => {
                expect(width, W8, offset);
                self.generation.into()
            }
            cc::QUEUE_SELECT => {
                expect(width, W16, offset);
                self.qselect.into()
            }
            cc::QUEUE_SIZE => {
                expect(width, W16, offset);
                q(self, |q| q.size.into())
            }
            cc::QUEUE_MSIX_VECTOR => {
                expect(width, W16, offset);
                q(self, |q| q.msix.into())
            }
            cc::QUEUE_ENABLE => {
                expect(width, W16, offset);
                q(self, |q| q.enable.into())
            }
            cc::QUEUE_NOTIFY_OFF => {
                expect(width, W16, offset);
                q(self, |q| q.notify_off.into())
            }
            32..=39 => read_half(q(self, |q| q.desc), offset, width, cc::QUEUE_DESC),
            40..=47 => read_half(q(self, |q| q.driver), offset, width, cc::QUEUE_DRIVER),
            48..=55 => read_half(q(self, |q| q.device), offset, width, cc::QUEUE_DEVICE),
            _ => 0,
        }
    }

    fn write_common(&mut self, offset: u64, width: Width, value: u64) {
        use Width::*;
        let v16 = u16::try_from(value).unwrap_or(0);
        match offset {
            cc::DEVICE_FEATURE_SELECT => {
                expect(width, W32, offset);
                self.dfselect = u32::try_from(value).unwrap();
            }
            cc::DRIVER_FEATURE_SELECT => {
                expect(width, W32, offset);
                self.gfselect = u32::try_from(value).unwrap();
            }
            cc::DRIVER_FEATURE => {
                expect(width, W32, offset);
                match self.gfselect {
                    0 => self.driver_features = (self.driver_features & !0xffff_ffff) | value,
                    1 => {
                        self.driver_features = (self.driver_features & 0xffff_ffff) | (value << 32)
                    }
                    _ => {}
                }
            }
            cc::CONFIG_MSIX_VECTOR => {
                expect(width, W16, offset);
                self.config_msix = v16;
            }
            cc::DEVICE_STATUS => {
                expect(width, W8, offset);
                let v = u8::try_from(value).unwrap();
                self.status_writes.push(v);
                if v == 0 {
                    FakeVirtioPci::reset(self);
                    return;
                }
                let new_features_ok =
                    v & STATUS_FEATURES_OK != 0 && self.status & STATUS_FEATURES_OK == 0;
                let acceptable =
                    !self.refuse_features && self.driver_features & !self.features == 0;
                self.status = if new_features_ok && !acceptable {
                    v & !STATUS_FEATURES_OK
                } else {
                    v
                };
            }
            cc::QUEUE_SELECT => {
                expect(width, W16, offset);
                self.qselect = v16;
            }
            cc::QUEUE_SIZE => {
                expect(width, W16, offset);
                if let Some(q) = self.queue() {
                    q.size = v16;
                }
            }
            cc::QUEUE_MSIX_VECTOR => {
                expect(width, W16, offset);
                if let Some(q) = self.queue() {
                    // No MSI-X table is enabled: every vector is refused.
                    q.msix = VIRTIO_MSI_NO_VECTOR;
                }
            }
            cc::QUEUE_ENABLE => {
                expect(width, W16, offset);
                if let Some(q) = self.queue() {
                    q.enable = v16;
                }
            }
            32..=39 => {
                if let Some(q) = self.queue() {
                    q.desc = half(value, offset, width, cc::QUEUE_DESC, q.desc);
                }
            }
            40..=47 => {
                if let Some(q) = self.queue() {
                    q.driver = half(value, offset, width, cc::QUEUE_DRIVER, q.driver);
                }
            }
            48..=55 => {
                if let Some(q) = self.queue() {
                    q.device = half(value, offset, width, cc::QUEUE_DEVICE, q.device);
                }
            }
            _ => panic!("write to read-only or unknown common cfg {offset:#x}"),
        }
    }

    fn read_config(&mut self, offset: u64, width: Width) -> u64 {
        self.config_reads += 1;
        if self.unstable_config {
            self.generation = self.generation.wrapping_add(1);
        }
        if let Some((at, next)) = self.change_config_at.take() {
            if self.config_reads >= at {
                self.config = next;
                self.generation = self.generation.wrapping_add(1);
            } else {
                self.change_config_at = Some((at, next));
            }
        }
        let start = usize::try_from(offset).unwrap();
        let mut bytes = [0u8; 8];
        for (i, b) in bytes
            .iter_mut()
            .take(usize::from(width.bytes()))
            .enumerate()
        {
            *b = self.config.get(start + i).copied().unwrap_or(0);
        }
        u64::from_le_bytes(bytes)
    }
}

impl Registers for FakeVirtioPci {
    fn len(&self) -> u64 {
        BAR_LEN
    }

    fn read(&self, offset: u64, width: Width) -> regs::Result<u64> {
        check_access(BAR_LEN, offset, width)?;
        let mut st = self.state();
        Ok(match offset {
            0..ISR_OFF => st.read_common(offset, width),
            ISR_OFF..DEVICE_OFF => {
                expect(width, Width::W8, offset);
                u64::from(std::mem::take(&mut st.isr))
            }
            DEVICE_OFF..NOTIFY_OFF => st.read_config(offset - DEVICE_OFF, width),
            _ => 0,
        })
    }

    fn write(&self, offset: u64, width: Width, value: u64) -> regs::Result<()> {
        check_access(BAR_LEN, offset, width)?;
        let mut st = self.state();
        match offset {
            0..ISR_OFF => st.write_common(offset, width, value),
            NOTIFY_OFF.. => {
                expect(width, Width::W16, offset);
                st.notifies
                    .push((offset - NOTIFY_OFF, u16::try_from(value).unwrap()));
            }
            _ => panic!("write to read-only register {offset:#x}"),
        }
        Ok(())
    }
}
