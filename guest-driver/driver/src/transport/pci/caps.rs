// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Finds the virtio structures of a virtio-pci function in its PCI
//! configuration space (virtio 1.2 §4.1.4).
//!
//! Everything here is a pure function of the configuration space bytes (as
//! read from sysfs `config`: 256 or 4096 bytes, as root) and of the BAR sizes,
//! so every malformed layout can be tested without a device.

use thiserror::Error;

use super::layout::{
    cap, common, pci_header, PCI_CAP_ID_VNDR, VIRTIO_PCI_CAP_COMMON_CFG, VIRTIO_PCI_CAP_DEVICE_CFG,
    VIRTIO_PCI_CAP_ISR_CFG, VIRTIO_PCI_CAP_NOTIFY_CFG, VIRTIO_PCI_MODERN_DEVICE_BASE,
    VIRTIO_PCI_MODERN_DEVICE_MAX, VIRTIO_PCI_VENDOR_ID,
};

/// Errors of configuration space parsing.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Error {
    /// Fewer bytes than the conventional 256-byte configuration space.
    #[error(
        "PCI configuration space is {0} bytes, at least 256 are needed \
         (sysfs gives only 64 bytes to non-root users: run as root)"
    )]
    Short(usize),
    /// The vendor ID is not virtio's.
    #[error("PCI vendor ID {0:#06x} is not virtio's (0x1af4)")]
    NotVirtio(u16),
    /// The device ID is not a modern (non-transitional) virtio ID.
    #[error("PCI device ID {0:#06x} is not a modern virtio device (0x1040..=0x107f)")]
    NotModern(u16),
    /// The status register says there is no capability list.
    #[error("the function has no PCI capability list")]
    NoCapabilities,
    /// A capability pointer points into the header or beyond the space.
    #[error("PCI capability pointer {ptr:#x} is outside 0x40..0x100")]
    BadPointer {
        /// The pointer.
        ptr: usize,
    },
    /// The capability list visits a capability twice.
    #[error("PCI capability list loops back to {ptr:#x}")]
    Loop {
        /// The capability visited twice.
        ptr: usize,
    },
    /// A virtio capability is shorter than its structure or overruns the space.
    #[error("virtio capability at {ptr:#x} has cap_len {len}, {min} needed within 0x100")]
    BadCapLength {
        /// Offset of the capability.
        ptr: usize,
        /// Its `cap_len`.
        len: u8,
        /// The size its type needs.
        min: usize,
    },
    /// A required structure has no capability.
    #[error("no virtio {0} capability")]
    Missing(&'static str),
    /// A capability names a reserved BAR (§4.1.4); reported when no instance
    /// of its type is usable and it is the first.
    #[error("virtio {what} capability names BAR {bar}, BARs are 0..=5")]
    BadBar {
        /// Structure.
        what: &'static str,
        /// BAR index.
        bar: u8,
    },
    /// A structure is too short, misaligned, or does not fit in its BAR.
    #[error(
        "virtio {what} structure at BAR {bar} offset {offset:#x} length {length:#x} is invalid: {why}"
    )]
    BadStructure {
        /// Structure.
        what: &'static str,
        /// BAR index.
        bar: u8,
        /// Offset in the BAR.
        offset: u32,
        /// Length.
        length: u32,
        /// What is wrong.
        why: &'static str,
    },
    /// `notify_off_multiplier` is neither 0 nor an even power of two (§4.1.4.4).
    #[error("notify_off_multiplier {0} is neither 0 nor an even power of two")]
    BadMultiplier(u32),
}

/// Result of this module's operations.
pub type Result<T> = std::result::Result<T, Error>;

/// Where a virtio structure lives: `length` bytes at `offset` in BAR `bar`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapRegion {
    /// BAR index, 0..=5.
    pub bar: u8,
    /// Offset in the BAR.
    pub offset: u32,
    /// Length in bytes.
    pub length: u32,
}

/// The virtio structures of a function, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioPciCaps {
    /// Virtio device ID (PCI device ID - 0x1040).
    pub virtio_id: u16,
    /// Common configuration (§4.1.4.3).
    pub common: CapRegion,
    /// Notification area (§4.1.4.4).
    pub notify: CapRegion,
    /// Bytes between the notification addresses of consecutive `queue_notify_off` values.
    pub notify_off_multiplier: u32,
    /// ISR status (§4.1.4.5).
    pub isr: CapRegion,
    /// Device-specific configuration (§4.1.4.6), absent for devices without one.
    pub device: Option<CapRegion>,
}

/// One vendor-specific capability as found in the list, before validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawVirtioCap {
    /// Offset of the capability in configuration space.
    pub ptr: usize,
    /// `cfg_type`.
    pub cfg_type: u8,
    /// `bar`.
    pub bar: u8,
    /// `id`.
    pub id: u8,
    /// `offset`.
    pub offset: u32,
    /// `length`.
    pub length: u32,
    /// `notify_off_multiplier`, for notify capabilities.
    pub notify_off_multiplier: Option<u32>,
}

fn le16(config: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([config[at], config[at + 1]])
}

fn le32(config: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([config[at], config[at + 1], config[at + 2], config[at + 3]])
}

/// Checks the vendor and device IDs; returns the virtio device ID.
pub fn virtio_id(config: &[u8]) -> Result<u16> {
    if config.len() < pci_header::CONVENTIONAL_SIZE {
        return Err(Error::Short(config.len()));
    }
    let vendor = le16(config, pci_header::VENDOR_ID);
    if vendor != VIRTIO_PCI_VENDOR_ID {
        return Err(Error::NotVirtio(vendor));
    }
    let device = le16(config, pci_header::DEVICE_ID);
    if !(VIRTIO_PCI_MODERN_DEVICE_BASE..=VIRTIO_PCI_MODERN_DEVICE_MAX).contains(&device) {
        return Err(Error::NotModern(device));
    }
    Ok(device - VIRTIO_PCI_MODERN_DEVICE_BASE)
}

/// Walks the capability list; returns the offsets of every capability, in order.
///
/// The list lives in the first 256 bytes; the low two bits of each pointer are
/// reserved and ignored. A pointer into the header or past the space, and a
/// capability visited twice, are errors.
pub fn capability_offsets(config: &[u8]) -> Result<Vec<usize>> {
    if config.len() < pci_header::CONVENTIONAL_SIZE {
        return Err(Error::Short(config.len()));
    }
    if le16(config, pci_header::STATUS) & pci_header::STATUS_CAP_LIST == 0 {
        return Err(Error::NoCapabilities);
    }
    let mut visited = [false; pci_header::CONVENTIONAL_SIZE];
    let mut out = Vec::new();
    let mut ptr = usize::from(config[pci_header::CAPABILITIES_POINTER] & !3);
    while ptr != 0 {
        // A capability needs at least its ID and next pointer.
        if !(pci_header::HEADER_END..pci_header::CONVENTIONAL_SIZE - 1).contains(&ptr) {
            return Err(Error::BadPointer { ptr });
        }
        if visited[ptr] {
            return Err(Error::Loop { ptr });
        }
        visited[ptr] = true;
        out.push(ptr);
        ptr = usize::from(config[ptr + cap::NEXT] & !3);
    }
    Ok(out)
}

/// Whether the driver uses structures of `cfg_type` (common, notify, ISR, device).
fn is_used_type(cfg_type: u8) -> bool {
    matches!(
        cfg_type,
        VIRTIO_PCI_CAP_COMMON_CFG
            | VIRTIO_PCI_CAP_NOTIFY_CFG
            | VIRTIO_PCI_CAP_ISR_CFG
            | VIRTIO_PCI_CAP_DEVICE_CFG
    )
}

/// Every vendor-specific capability in list order, with its `cfg_type` and
/// either its fields or why its `cap_len` makes it unusable.
fn scan(config: &[u8]) -> Result<Vec<(u8, Result<RawVirtioCap>)>> {
    let mut out = Vec::new();
    for ptr in capability_offsets(config)? {
        if config[ptr + cap::VNDR] != PCI_CAP_ID_VNDR {
            continue;
        }
        let len = config[ptr + cap::LEN];
        // `ptr <= 0xfc`, so `cfg_type` (byte 3) is inside the 256 bytes.
        let cfg_type = config.get(ptr + cap::CFG_TYPE).copied().unwrap_or(0);
        let min = if cfg_type == VIRTIO_PCI_CAP_NOTIFY_CFG {
            cap::NOTIFY_SIZE
        } else {
            cap::SIZE
        };
        if usize::from(len) < min || ptr + min > pci_header::CONVENTIONAL_SIZE {
            out.push((cfg_type, Err(Error::BadCapLength { ptr, len, min })));
            continue;
        }
        out.push((
            cfg_type,
            Ok(RawVirtioCap {
                ptr,
                cfg_type,
                bar: config[ptr + cap::BAR],
                id: config[ptr + cap::ID],
                offset: le32(config, ptr + cap::OFFSET),
                length: le32(config, ptr + cap::LENGTH),
                notify_off_multiplier: (cfg_type == VIRTIO_PCI_CAP_NOTIFY_CFG)
                    .then(|| le32(config, ptr + cap::NOTIFY_OFF_MULTIPLIER)),
            }),
        ));
    }
    Ok(out)
}

/// Every vendor-specific (virtio) capability, in list order (§4.1.4).
///
/// Capabilities of types the driver does not use (reserved or unknown
/// `cfg_type`, PCI configuration access, shared memory, ...) whose `cap_len`
/// is too short for a `struct virtio_pci_cap` are left out: the driver ignores
/// them. A too-short capability of a used type is an error.
pub fn virtio_capabilities(config: &[u8]) -> Result<Vec<RawVirtioCap>> {
    let mut out = Vec::new();
    for (cfg_type, c) in scan(config)? {
        match c {
            Ok(c) => out.push(c),
            Err(e) if is_used_type(cfg_type) => return Err(e),
            Err(_) => {}
        }
    }
    Ok(out)
}

/// Requirements on one structure: minimum length and offset alignment.
struct Rule {
    what: &'static str,
    cfg_type: u8,
    min_length: u32,
    align: u32,
}

const COMMON: Rule = Rule {
    what: "common configuration",
    cfg_type: VIRTIO_PCI_CAP_COMMON_CFG,
    min_length: common::SIZE,
    // §4.1.4.3.2: the structure is 4-byte aligned.
    align: 4,
};
const NOTIFY: Rule = Rule {
    what: "notification",
    cfg_type: VIRTIO_PCI_CAP_NOTIFY_CFG,
    // Room for one 16-bit notification.
    min_length: 2,
    align: 2,
};
const ISR: Rule = Rule {
    what: "ISR",
    cfg_type: VIRTIO_PCI_CAP_ISR_CFG,
    min_length: 1,
    align: 1,
};
const DEVICE: Rule = Rule {
    what: "device configuration",
    cfg_type: VIRTIO_PCI_CAP_DEVICE_CFG,
    min_length: 1,
    // §4.1.4.6.1: the offset is 4-byte aligned.
    align: 4,
};

fn check_region(rule: &Rule, c: &RawVirtioCap, bar_sizes: &[Option<u64>; 6]) -> Result<CapRegion> {
    let region = CapRegion {
        bar: c.bar,
        offset: c.offset,
        length: c.length,
    };
    let bad = |why| Error::BadStructure {
        what: rule.what,
        bar: c.bar,
        offset: c.offset,
        length: c.length,
        why,
    };
    if c.length < rule.min_length {
        return Err(bad("too short"));
    }
    if c.offset % rule.align != 0 {
        return Err(bad("misaligned offset"));
    }
    let end = u64::from(c.offset) + u64::from(c.length);
    match bar_sizes[usize::from(c.bar)] {
        Some(0) => Err(bad("the BAR is not implemented")),
        Some(size) if end > size => Err(bad("does not fit in the BAR")),
        _ => Ok(region),
    }
}

/// Checks one capability of `rule`'s type: a valid BAR, a structure that
/// fits, and for the notify structure a valid multiplier.
fn usable(rule: &Rule, c: &RawVirtioCap, bar_sizes: &[Option<u64>; 6]) -> Result<CapRegion> {
    if usize::from(c.bar) >= pci_header::NUM_BARS {
        return Err(Error::BadBar {
            what: rule.what,
            bar: c.bar,
        });
    }
    let region = check_region(rule, c, bar_sizes)?;
    if let Some(m) = c.notify_off_multiplier {
        if m != 0 && (!m.is_power_of_two() || m == 1) {
            return Err(Error::BadMultiplier(m));
        }
    }
    Ok(region)
}

/// Picks the first capability of `rule`'s type the driver can use (§4.1.4:
/// the driver ignores capabilities with a reserved BAR and SHOULD use the
/// first instance it can use): skips instances that are too short, name a
/// reserved BAR or do not fit. `Ok(None)` if the type is absent; the first
/// instance's problem if none is usable.
fn find(
    rule: &Rule,
    caps: &[(u8, Result<RawVirtioCap>)],
    bar_sizes: &[Option<u64>; 6],
) -> Result<Option<(CapRegion, RawVirtioCap)>> {
    let mut first_error = None;
    for (_, c) in caps.iter().filter(|(t, _)| *t == rule.cfg_type) {
        let checked = c
            .clone()
            .and_then(|c| usable(rule, &c, bar_sizes).map(|r| (r, c)));
        match checked {
            Ok(found) => return Ok(Some(found)),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(None), Err)
}

/// Finds and validates the virtio structures of a modern virtio-pci function.
///
/// `bar_sizes[i]` is the size of BAR `i` when known (`Some(0)`: not
/// implemented); structures must fit in their BAR.
pub fn parse(config: &[u8], bar_sizes: &[Option<u64>; 6]) -> Result<VirtioPciCaps> {
    let virtio_id = virtio_id(config)?;
    let caps = scan(config)?;
    let (common, _) = find(&COMMON, &caps, bar_sizes)?.ok_or(Error::Missing(COMMON.what))?;
    let (notify, notify_cap) =
        find(&NOTIFY, &caps, bar_sizes)?.ok_or(Error::Missing(NOTIFY.what))?;
    let multiplier = notify_cap.notify_off_multiplier.unwrap_or(0);
    let (isr, _) = find(&ISR, &caps, bar_sizes)?.ok_or(Error::Missing(ISR.what))?;
    let device = find(&DEVICE, &caps, bar_sizes)?.map(|(r, _)| r);
    Ok(VirtioPciCaps {
        virtio_id,
        common,
        notify,
        notify_off_multiplier: multiplier,
        isr,
        device,
    })
}

/// Builders of synthetic configuration spaces, for tests of this crate.
#[cfg(test)]
pub(crate) mod synth {
    use super::*;

    /// A configuration space with the given IDs, the capability-list status
    /// bit set and an empty list.
    pub(crate) fn header(vendor: u16, device: u16, size: usize) -> Vec<u8> {
        let mut c = vec![0u8; size];
        c[0..2].copy_from_slice(&vendor.to_le_bytes());
        c[2..4].copy_from_slice(&device.to_le_bytes());
        c[pci_header::STATUS..pci_header::STATUS + 2]
            .copy_from_slice(&pci_header::STATUS_CAP_LIST.to_le_bytes());
        c
    }

    /// Writes a virtio capability at `ptr` pointing to `next`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn virtio_cap(
        c: &mut [u8],
        ptr: usize,
        next: u8,
        cfg_type: u8,
        bar: u8,
        offset: u32,
        length: u32,
        multiplier: Option<u32>,
    ) {
        let len = if multiplier.is_some() { 20 } else { 16 };
        c[ptr] = PCI_CAP_ID_VNDR;
        c[ptr + 1] = next;
        c[ptr + 2] = len;
        c[ptr + 3] = cfg_type;
        c[ptr + 4] = bar;
        c[ptr + 8..ptr + 12].copy_from_slice(&offset.to_le_bytes());
        c[ptr + 12..ptr + 16].copy_from_slice(&length.to_le_bytes());
        if let Some(m) = multiplier {
            c[ptr + 16..ptr + 20].copy_from_slice(&m.to_le_bytes());
        }
    }

    /// The layout QEMU gives a modern virtio-pci function, all in BAR 4:
    /// common at 0, ISR at 0x1000, device at 0x2000, notify at 0x3000
    /// (multiplier 4), with an MSI-X capability first in the list.
    pub(crate) fn qemu_like(device: u16) -> Vec<u8> {
        let mut c = header(VIRTIO_PCI_VENDOR_ID, device, 4096);
        c[pci_header::CAPABILITIES_POINTER] = 0x98;
        c[pci_header::INTERRUPT_PIN] = 1;
        // MSI-X (ID 0x11), not a virtio capability.
        c[0x98] = 0x11;
        c[0x99] = 0x84;
        virtio_cap(&mut c, 0x84, 0x70, VIRTIO_PCI_CAP_PCI_CFG_T, 0, 0, 0, None);
        virtio_cap(
            &mut c,
            0x70,
            0x60,
            VIRTIO_PCI_CAP_NOTIFY_CFG,
            4,
            0x3000,
            0x1000,
            Some(4),
        );
        virtio_cap(
            &mut c,
            0x60,
            0x50,
            VIRTIO_PCI_CAP_DEVICE_CFG,
            4,
            0x2000,
            0x1000,
            None,
        );
        virtio_cap(
            &mut c,
            0x50,
            0x40,
            VIRTIO_PCI_CAP_ISR_CFG,
            4,
            0x1000,
            0x1000,
            None,
        );
        virtio_cap(
            &mut c,
            0x40,
            0,
            VIRTIO_PCI_CAP_COMMON_CFG,
            4,
            0,
            0x1000,
            None,
        );
        c
    }

    const VIRTIO_PCI_CAP_PCI_CFG_T: u8 = crate::transport::pci::layout::VIRTIO_PCI_CAP_PCI_CFG;

    /// BAR sizes matching [`qemu_like`]: BAR 4 is 16 KiB, BAR 1 (MSI-X table) 4 KiB.
    pub(crate) const QEMU_BARS: [Option<u64>; 6] = [
        Some(0),
        Some(0x1000),
        Some(0),
        Some(0),
        Some(0x4000),
        Some(0),
    ];
}

#[cfg(test)]
mod tests {
    use super::synth::*;
    use super::*;
    use crate::transport::pci::layout::ACCEL_PCI_DEVICE_ID;

    fn expected() -> VirtioPciCaps {
        VirtioPciCaps {
            virtio_id: 63,
            common: CapRegion {
                bar: 4,
                offset: 0,
                length: 0x1000,
            },
            notify: CapRegion {
                bar: 4,
                offset: 0x3000,
                length: 0x1000,
            },
            notify_off_multiplier: 4,
            isr: CapRegion {
                bar: 4,
                offset: 0x1000,
                length: 0x1000,
            },
            device: Some(CapRegion {
                bar: 4,
                offset: 0x2000,
                length: 0x1000,
            }),
        }
    }

    #[test]
    fn parses_a_qemu_like_layout() {
        let c = qemu_like(ACCEL_PCI_DEVICE_ID);
        assert_eq!(parse(&c, &QEMU_BARS).unwrap(), expected());
        // A 256-byte space (sysfs without extended config) works too.
        assert_eq!(parse(&c[..256], &QEMU_BARS).unwrap(), expected());
        // Unknown BAR sizes are not checked.
        assert_eq!(parse(&c, &[None; 6]).unwrap(), expected());
        let caps = virtio_capabilities(&c).unwrap();
        assert_eq!(caps.len(), 5);
        assert_eq!(caps[0].cfg_type, 5);
        assert_eq!(caps[1].notify_off_multiplier, Some(4));
    }

    #[test]
    fn ids_are_checked() {
        let c = qemu_like(ACCEL_PCI_DEVICE_ID);
        assert_eq!(virtio_id(&c).unwrap(), 63);
        assert_eq!(virtio_id(&c[..64]), Err(Error::Short(64)));
        let mut other = c.clone();
        other[0] = 0x86;
        other[1] = 0x80;
        assert_eq!(parse(&other, &QEMU_BARS), Err(Error::NotVirtio(0x8086)));
        let legacy = {
            let mut l = c.clone();
            l[2..4].copy_from_slice(&0x1000u16.to_le_bytes());
            l
        };
        assert_eq!(parse(&legacy, &QEMU_BARS), Err(Error::NotModern(0x1000)));
        // virtio-net modern is still virtio: the ID is reported.
        assert_eq!(virtio_id(&qemu_like(0x1041)).unwrap(), 1);
    }

    #[test]
    fn no_capability_list() {
        let mut c = qemu_like(ACCEL_PCI_DEVICE_ID);
        c[pci_header::STATUS] = 0;
        assert_eq!(parse(&c, &QEMU_BARS), Err(Error::NoCapabilities));
        let mut empty = header(VIRTIO_PCI_VENDOR_ID, ACCEL_PCI_DEVICE_ID, 256);
        empty[pci_header::CAPABILITIES_POINTER] = 0;
        assert_eq!(capability_offsets(&empty).unwrap(), Vec::<usize>::new());
        assert_eq!(
            parse(&empty, &QEMU_BARS),
            Err(Error::Missing("common configuration"))
        );
    }

    #[test]
    fn loops_are_detected() {
        let mut c = qemu_like(ACCEL_PCI_DEVICE_ID);
        // Last capability (0x40) points back to the first (0x98).
        c[0x41] = 0x98;
        assert_eq!(parse(&c, &QEMU_BARS), Err(Error::Loop { ptr: 0x98 }));
        // Self loop.
        let mut s = header(VIRTIO_PCI_VENDOR_ID, ACCEL_PCI_DEVICE_ID, 256);
        s[pci_header::CAPABILITIES_POINTER] = 0x40;
        s[0x41] = 0x40;
        assert_eq!(capability_offsets(&s), Err(Error::Loop { ptr: 0x40 }));
    }

    #[test]
    fn pointers_out_of_range() {
        let mut c = qemu_like(ACCEL_PCI_DEVICE_ID);
        c[pci_header::CAPABILITIES_POINTER] = 0x20;
        assert_eq!(parse(&c, &QEMU_BARS), Err(Error::BadPointer { ptr: 0x20 }));
        let mut c = qemu_like(ACCEL_PCI_DEVICE_ID);
        c[0x41] = 0x3f; // masked to 0x3c: inside the header
        assert_eq!(parse(&c, &QEMU_BARS), Err(Error::BadPointer { ptr: 0x3c }));
        // 0xfc holds a two-byte capability header: valid, and here the end.
        let mut c = qemu_like(ACCEL_PCI_DEVICE_ID);
        c[0x41] = 0xff;
        assert_eq!(parse(&c, &QEMU_BARS).unwrap(), expected());
        // Low two bits are ignored.
        let mut c = qemu_like(ACCEL_PCI_DEVICE_ID);
        c[pci_header::CAPABILITIES_POINTER] = 0x9b;
        assert_eq!(parse(&c, &QEMU_BARS).unwrap(), expected());
    }

    #[test]
    fn capability_overrunning_the_space() {
        let mut c = header(VIRTIO_PCI_VENDOR_ID, ACCEL_PCI_DEVICE_ID, 4096);
        c[pci_header::CAPABILITIES_POINTER] = 0xf8;
        virtio_cap(
            &mut c,
            0xf8,
            0,
            VIRTIO_PCI_CAP_COMMON_CFG,
            4,
            0,
            0x1000,
            None,
        );
        assert!(matches!(
            parse(&c, &QEMU_BARS),
            Err(Error::BadCapLength { ptr: 0xf8, .. })
        ));
        // A notify capability with the 16-byte length of a plain capability.
        let mut c = qemu_like(ACCEL_PCI_DEVICE_ID);
        c[0x72] = 16;
        assert_eq!(
            parse(&c, &QEMU_BARS),
            Err(Error::BadCapLength {
                ptr: 0x70,
                len: 16,
                min: 20
            })
        );
    }

    #[test]
    fn missing_structures() {
        let mut c = qemu_like(ACCEL_PCI_DEVICE_ID);
        c[0x43] = 7; // common becomes an unknown type
        assert_eq!(
            parse(&c, &QEMU_BARS),
            Err(Error::Missing("common configuration"))
        );
        let mut c = qemu_like(ACCEL_PCI_DEVICE_ID);
        c[0x73] = 7;
        assert_eq!(parse(&c, &QEMU_BARS), Err(Error::Missing("notification")));
        let mut c = qemu_like(ACCEL_PCI_DEVICE_ID);
        c[0x53] = 7;
        assert_eq!(parse(&c, &QEMU_BARS), Err(Error::Missing("ISR")));
        // The device configuration is optional.
        let mut c = qemu_like(ACCEL_PCI_DEVICE_ID);
        c[0x63] = 7;
        assert_eq!(parse(&c, &QEMU_BARS).unwrap().device, None);
    }

    #[test]
    fn bad_bars() {
        let mut c = qemu_like(ACCEL_PCI_DEVICE_ID);
        c[0x44] = 6;
        assert_eq!(
            parse(&c, &QEMU_BARS),
            Err(Error::BadBar {
                what: "common configuration",
                bar: 6
            })
        );
        // A reserved-BAR capability is skipped in favour of a later valid one.
        let mut c = qemu_like(ACCEL_PCI_DEVICE_ID);
        virtio_cap(
            &mut c,
            0xa0,
            0x84,
            VIRTIO_PCI_CAP_COMMON_CFG,
            7,
            0,
            0x1000,
            None,
        );
        c[0x99] = 0xa0;
        assert_eq!(parse(&c, &QEMU_BARS).unwrap(), expected());
        // BAR not implemented.
        let mut c = qemu_like(ACCEL_PCI_DEVICE_ID);
        c[0x54] = 2;
        assert!(matches!(
            parse(&c, &QEMU_BARS),
            Err(Error::BadStructure {
                what: "ISR",
                bar: 2,
                why: "the BAR is not implemented",
                ..
            })
        ));
    }

    #[test]
    fn structures_must_fit_and_be_long_enough() {
        let mut c = qemu_like(ACCEL_PCI_DEVICE_ID);
        // Notify at 0x3800 + 0x1000 > 0x4000.
        c[0x78..0x7c].copy_from_slice(&0x3800u32.to_le_bytes());
        assert!(matches!(
            parse(&c, &QEMU_BARS),
            Err(Error::BadStructure {
                why: "does not fit in the BAR",
                ..
            })
        ));
        // Offset + length overflowing u32 is caught (computed in u64).
        let mut c = qemu_like(ACCEL_PCI_DEVICE_ID);
        c[0x68..0x6c].copy_from_slice(&0xffff_f000u32.to_le_bytes());
        assert!(parse(&c, &QEMU_BARS).is_err());
        // Common configuration shorter than its fields.
        let mut c = qemu_like(ACCEL_PCI_DEVICE_ID);
        c[0x4c..0x50].copy_from_slice(&0x30u32.to_le_bytes());
        assert!(matches!(
            parse(&c, &QEMU_BARS),
            Err(Error::BadStructure {
                what: "common configuration",
                why: "too short",
                ..
            })
        ));
        // Misaligned device configuration.
        let mut c = qemu_like(ACCEL_PCI_DEVICE_ID);
        c[0x68..0x6c].copy_from_slice(&0x2002u32.to_le_bytes());
        assert!(matches!(
            parse(&c, &QEMU_BARS),
            Err(Error::BadStructure {
                why: "misaligned offset",
                ..
            })
        ));
    }

    /// `qemu_like` with a capability at 0xb0 inserted after the MSI-X one.
    fn with_extra_first(
        cfg_type: u8,
        bar: u8,
        offset: u32,
        length: u32,
        m: Option<u32>,
    ) -> Vec<u8> {
        let mut c = qemu_like(ACCEL_PCI_DEVICE_ID);
        virtio_cap(&mut c, 0xb0, 0x84, cfg_type, bar, offset, length, m);
        c[0x99] = 0xb0;
        c
    }

    #[test]
    fn short_capabilities_of_unknown_types_are_ignored() {
        for (cfg_type, cap_len) in [
            (7u8, 4u8),
            (0x42, 8),
            (crate::transport::pci::layout::VIRTIO_PCI_CAP_PCI_CFG, 3),
            (0, 15),
        ] {
            let mut c = with_extra_first(cfg_type, 0, 0, 0, None);
            c[0xb2] = cap_len;
            assert_eq!(
                parse(&c, &QEMU_BARS).unwrap(),
                expected(),
                "cfg_type {cfg_type} cap_len {cap_len}"
            );
            let caps = virtio_capabilities(&c).unwrap();
            assert_eq!(caps.len(), 5, "the short capability is left out");
            assert!(caps.iter().all(|k| k.ptr != 0xb0));
        }
        // A short capability of a used type is still an error if it is the only one.
        let mut c = qemu_like(ACCEL_PCI_DEVICE_ID);
        c[0x52] = 8;
        assert_eq!(
            parse(&c, &QEMU_BARS),
            Err(Error::BadCapLength {
                ptr: 0x50,
                len: 8,
                min: 16
            })
        );
    }

    #[test]
    fn the_first_usable_instance_of_a_type_is_used() {
        // A common configuration that does not fit BAR 4 comes first.
        let c = with_extra_first(VIRTIO_PCI_CAP_COMMON_CFG, 4, 0x3800, 0x1000, None);
        assert_eq!(parse(&c, &QEMU_BARS).unwrap(), expected());
        // ...one in an unimplemented BAR.
        let c = with_extra_first(VIRTIO_PCI_CAP_ISR_CFG, 2, 0, 1, None);
        assert_eq!(parse(&c, &QEMU_BARS).unwrap(), expected());
        // ...a notify capability with an invalid multiplier.
        let c = with_extra_first(VIRTIO_PCI_CAP_NOTIFY_CFG, 4, 0x3000, 0x1000, Some(3));
        assert_eq!(parse(&c, &QEMU_BARS).unwrap(), expected());
        // ...a device configuration too short for its type (cap_len 8).
        let mut c = with_extra_first(VIRTIO_PCI_CAP_DEVICE_CFG, 4, 0x2000, 0x1000, None);
        c[0xb2] = 8;
        assert_eq!(parse(&c, &QEMU_BARS).unwrap(), expected());
        // A usable first instance wins over a later one.
        let c = with_extra_first(VIRTIO_PCI_CAP_ISR_CFG, 4, 0x1800, 0x10, None);
        assert_eq!(
            parse(&c, &QEMU_BARS).unwrap().isr,
            CapRegion {
                bar: 4,
                offset: 0x1800,
                length: 0x10
            }
        );
        // When none is usable, the first instance's problem is reported.
        let mut c = with_extra_first(VIRTIO_PCI_CAP_COMMON_CFG, 4, 0x3800, 0x1000, None);
        c[0x44] = 9;
        assert!(matches!(
            parse(&c, &QEMU_BARS),
            Err(Error::BadStructure {
                what: "common configuration",
                why: "does not fit in the BAR",
                ..
            })
        ));
    }

    #[test]
    fn notify_multiplier_rules() {
        for (m, ok) in [
            (0, true),
            (2, true),
            (4, true),
            (4096, true),
            (1, false),
            (6, false),
        ] {
            let mut c = qemu_like(ACCEL_PCI_DEVICE_ID);
            c[0x80..0x84].copy_from_slice(&u32::to_le_bytes(m));
            assert_eq!(parse(&c, &QEMU_BARS).is_ok(), ok, "multiplier {m}");
        }
    }
}
