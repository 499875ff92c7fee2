// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Register layouts of virtio over PCI (virtio 1.2 §4.1) and of the PCI
//! configuration header, as constants. `virtio-bindings` has none of these.

use virtio_accel_spec::VIRTIO_ID_ACCEL;

/// PCI vendor ID of every virtio device (§4.1.2).
pub const VIRTIO_PCI_VENDOR_ID: u16 = 0x1af4;
/// Modern (non-transitional) PCI device IDs are this plus the virtio device ID (§4.1.2).
pub const VIRTIO_PCI_MODERN_DEVICE_BASE: u16 = 0x1040;
/// Highest modern PCI device ID (0x1040 + 63) (§4.1.2).
pub const VIRTIO_PCI_MODERN_DEVICE_MAX: u16 = 0x107f;

/// PCI device ID of the accelerator: 0x1040 + `VIRTIO_ID_ACCEL` = 0x107f.
// VIRTIO_ID_ACCEL is 63: the sum fits in u16.
#[allow(clippy::cast_possible_truncation)]
pub const ACCEL_PCI_DEVICE_ID: u16 = VIRTIO_PCI_MODERN_DEVICE_BASE + VIRTIO_ID_ACCEL as u16;
const _: () = assert!(ACCEL_PCI_DEVICE_ID == 0x107f);

/// PCI configuration header (PCI Local Bus 3.0 §6.1).
pub mod pci_header {
    /// Vendor ID, le16.
    pub const VENDOR_ID: usize = 0x00;
    /// Device ID, le16.
    pub const DEVICE_ID: usize = 0x02;
    /// Command register, le16.
    pub const COMMAND: usize = 0x04;
    /// Status register, le16.
    pub const STATUS: usize = 0x06;
    /// Capabilities pointer, u8 (header types 0 and 1).
    pub const CAPABILITIES_POINTER: usize = 0x34;
    /// Interrupt pin, u8: 0 for none, 1 to 4 for INTA# to INTD#.
    pub const INTERRUPT_PIN: usize = 0x3d;
    /// Command bit: respond to memory-space accesses (BARs).
    pub const COMMAND_MEMORY: u16 = 1 << 1;
    /// Command bit: the function may master the bus (DMA).
    pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
    /// Command bit: INTx emulation disabled (managed by `uio_pci_generic`).
    pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
    /// Status bit: the capability list at [`CAPABILITIES_POINTER`] is valid.
    pub const STATUS_CAP_LIST: u16 = 1 << 4;
    /// First byte after the standard header; capabilities live at or above it.
    pub const HEADER_END: usize = 0x40;
    /// Size of the conventional configuration space, where the capability list lives.
    pub const CONVENTIONAL_SIZE: usize = 0x100;
    /// Number of base address registers of a type-0 header.
    pub const NUM_BARS: usize = 6;
}

/// Capability ID of vendor-specific capabilities, used by virtio (§4.1.4).
pub const PCI_CAP_ID_VNDR: u8 = 0x09;

/// `cfg_type` of the common configuration structure (§4.1.4.3).
pub const VIRTIO_PCI_CAP_COMMON_CFG: u8 = 1;
/// `cfg_type` of the notification structure (§4.1.4.4).
pub const VIRTIO_PCI_CAP_NOTIFY_CFG: u8 = 2;
/// `cfg_type` of the ISR status byte (§4.1.4.5).
pub const VIRTIO_PCI_CAP_ISR_CFG: u8 = 3;
/// `cfg_type` of the device-specific configuration (§4.1.4.6).
pub const VIRTIO_PCI_CAP_DEVICE_CFG: u8 = 4;
/// `cfg_type` of the PCI configuration access window (§4.1.4.9); unused here.
pub const VIRTIO_PCI_CAP_PCI_CFG: u8 = 5;

/// `struct virtio_pci_cap` field offsets, relative to the capability (§4.1.4).
pub mod cap {
    /// `cap_vndr`: [`PCI_CAP_ID_VNDR`](super::PCI_CAP_ID_VNDR).
    pub const VNDR: usize = 0;
    /// `cap_next`: offset of the next capability, 0 at the end.
    pub const NEXT: usize = 1;
    /// `cap_len`: length of this capability structure.
    pub const LEN: usize = 2;
    /// `cfg_type`: which structure this is.
    pub const CFG_TYPE: usize = 3;
    /// `bar`: index of the BAR holding the structure.
    pub const BAR: usize = 4;
    /// `id`: distinguishes several capabilities of one type.
    pub const ID: usize = 5;
    /// `offset`, le32: where the structure starts in the BAR.
    pub const OFFSET: usize = 8;
    /// `length`, le32: length of the structure.
    pub const LENGTH: usize = 12;
    /// Size of `struct virtio_pci_cap`.
    pub const SIZE: usize = 16;
    /// `notify_off_multiplier`, le32, of `struct virtio_pci_notify_cap` (§4.1.4.4).
    pub const NOTIFY_OFF_MULTIPLIER: usize = 16;
    /// Size of `struct virtio_pci_notify_cap`.
    pub const NOTIFY_SIZE: usize = 20;
}

/// `struct virtio_pci_common_cfg` field offsets (§4.1.4.3).
pub mod common {
    /// le32, driver writes: selects the 32-bit window of `device_feature`.
    pub const DEVICE_FEATURE_SELECT: u64 = 0;
    /// le32, read-only: the selected 32 feature bits the device offers.
    pub const DEVICE_FEATURE: u64 = 4;
    /// le32: selects the 32-bit window of `driver_feature`.
    pub const DRIVER_FEATURE_SELECT: u64 = 8;
    /// le32: the selected 32 feature bits the driver accepts.
    pub const DRIVER_FEATURE: u64 = 12;
    /// le16: MSI-X vector of configuration change notifications.
    pub const CONFIG_MSIX_VECTOR: u64 = 16;
    /// le16, read-only: number of virtqueues.
    pub const NUM_QUEUES: u64 = 18;
    /// u8: device status (§2.1).
    pub const DEVICE_STATUS: u64 = 20;
    /// u8, read-only: configuration generation (§2.5.1).
    pub const CONFIG_GENERATION: u64 = 21;
    /// le16: selects the queue the following fields refer to.
    pub const QUEUE_SELECT: u64 = 22;
    /// le16: queue size; the device's maximum after reset.
    pub const QUEUE_SIZE: u64 = 24;
    /// le16: MSI-X vector of the queue.
    pub const QUEUE_MSIX_VECTOR: u64 = 26;
    /// le16: 1 enables the queue.
    pub const QUEUE_ENABLE: u64 = 28;
    /// le16, read-only: the queue's notification offset, in multiplier units.
    pub const QUEUE_NOTIFY_OFF: u64 = 30;
    /// le64: guest-physical address of the descriptor table.
    pub const QUEUE_DESC: u64 = 32;
    /// le64: guest-physical address of the driver (available) ring.
    pub const QUEUE_DRIVER: u64 = 40;
    /// le64: guest-physical address of the device (used) ring.
    pub const QUEUE_DEVICE: u64 = 48;
    /// Size of the structure up to `queue_device` (virtio 1.0 layout).
    pub const SIZE: u32 = 56;
}

/// Device status bit: the guest noticed the device (§2.1).
pub const STATUS_ACKNOWLEDGE: u8 = 1;
/// Device status bit: the guest knows how to drive the device (§2.1).
pub const STATUS_DRIVER: u8 = 2;
/// Device status bit: the driver is ready (§2.1).
pub const STATUS_DRIVER_OK: u8 = 4;
/// Device status bit: feature negotiation is complete (§2.1).
pub const STATUS_FEATURES_OK: u8 = 8;
/// Device status bit: the device hit an error and needs a reset (§2.1).
pub const STATUS_DEVICE_NEEDS_RESET: u8 = 64;
/// Device status bit: the driver gave up on the device (§2.1).
pub const STATUS_FAILED: u8 = 128;

/// "No MSI-X vector" (§4.1.5.1.2): the device then uses INTx.
pub const VIRTIO_MSI_NO_VECTOR: u16 = 0xffff;

/// ISR bit: a queue interrupt (§4.1.4.5).
pub const ISR_QUEUE: u8 = 1;
/// ISR bit: a device configuration change (§4.1.4.5).
pub const ISR_CONFIG: u8 = 2;
