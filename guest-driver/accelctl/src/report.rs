// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! What `accelctl list` prints about a device: features, operations and
//! limits, from the configuration space (§5) and the negotiated features (§3)
//! (over the kernel transport, from the driver's GET_INFO).

use std::fmt::Write as _;

use accel_driver::kernel::DRIVER_NAME;
use accel_driver::{KernelDevice, Transport};
use virtio_accel_spec::{Op, VirtioAccelConfig, VIRTIO_ACCEL_F_FENCES, VIRTIO_ACCEL_F_OBJECTS};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

use crate::target::AnyDevice;

/// Names of the feature bits the driver knows.
const FEATURE_NAMES: &[(u32, &str)] = &[
    (VIRTIO_ACCEL_F_OBJECTS, "OBJECTS"),
    (VIRTIO_ACCEL_F_FENCES, "FENCES"),
    (VIRTIO_RING_F_INDIRECT_DESC, "RING_INDIRECT_DESC"),
    (VIRTIO_RING_F_EVENT_IDX, "RING_EVENT_IDX"),
    (VIRTIO_F_VERSION_1, "VERSION_1"),
];

/// The names of the set bits of `features`, unknown ones as `bit N`.
pub fn feature_names(features: u64) -> Vec<String> {
    (0..64)
        .filter(|bit| features & (1u64 << bit) != 0)
        .map(|bit| {
            FEATURE_NAMES
                .iter()
                .find(|(known, _)| *known == bit)
                .map_or_else(|| format!("bit {bit}"), |(_, name)| (*name).to_string())
        })
        .collect()
}

/// The operations whose capability bit `ops` sets.
pub fn supported_ops(ops: u32) -> Vec<Op> {
    Op::ALL
        .iter()
        .copied()
        .filter(|op| ops & op.capability() != 0)
        .collect()
}

/// A human-readable description of a device: its configuration, the
/// negotiated features and the capabilities enabled (§3).
pub fn describe(config: &VirtioAccelConfig, negotiated: u64, capabilities: u64) -> String {
    format!(
        "  features:        {}\n{}",
        feature_names(negotiated).join(" "),
        describe_config(config, capabilities)
    )
}

/// The capabilities enabled (§3) and the configuration (§5), one per line.
fn describe_config(config: &VirtioAccelConfig, capabilities: u64) -> String {
    let ops: Vec<&str> = supported_ops(u32::from(config.ops))
        .into_iter()
        .map(Op::name)
        .collect();
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        text,
        "  capabilities:    {}",
        feature_names(capabilities).join(" ")
    );
    let _ = writeln!(
        text,
        "  request queues:  {}",
        u32::from(config.num_request_queues)
    );
    let _ = writeln!(text, "  operations:      {}", ops.join(" "));
    let _ = writeln!(
        text,
        "  max segments:    {}",
        u32::from(config.max_segments)
    );
    let _ = writeln!(text, "  max deps:        {}", u32::from(config.max_deps));
    let _ = writeln!(text, "  max objects:     {}", u32::from(config.max_objects));
    let _ = writeln!(
        text,
        "  max in flight:   {}",
        u32::from(config.max_inflight)
    );
    let _ = writeln!(
        text,
        "  max object size: {} bytes",
        u64::from(config.max_object_size)
    );
    let _ = write!(
        text,
        "  max buffer size: {} bytes",
        u64::from(config.max_buffer_size)
    );
    text
}

/// [`describe`] for an opened device.
pub fn describe_device<T: Transport>(device: &accel_driver::Device<T>) -> String {
    describe(device.config(), device.features(), device.capabilities())
}

/// [`describe`] for the accel node of the kernel's driver, which
/// negotiates the features itself and reports the capabilities it enabled.
pub fn describe_kernel(device: &KernelDevice) -> String {
    let (major, minor, patch) = device.version();
    format!(
        "  driver:          {DRIVER_NAME} {major}.{minor}.{patch} (it negotiates the features)\n{}",
        describe_config(&device.config(), device.capabilities())
    )
}

/// [`describe`] for a device on any transport.
pub fn describe_any(device: &AnyDevice) -> String {
    match device {
        AnyDevice::Virtio(device) => describe_device(device),
        AnyDevice::Kernel(device) => describe_kernel(device),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::endian::{Le32, Le64};

    #[test]
    fn names_known_and_unknown_features() {
        let names = feature_names((1 << VIRTIO_ACCEL_F_FENCES) | (1 << 32) | (1 << 50));
        assert_eq!(names, ["FENCES", "VERSION_1", "bit 50"]);
    }

    #[test]
    fn describes_operations_and_limits() {
        let config = VirtioAccelConfig {
            num_request_queues: Le32::from(4),
            ops: Le32::from(Op::Crc32c.capability() | Op::DeflateCompress.capability()),
            max_buffer_size: Le64::from(1 << 26),
            ..Default::default()
        };
        let text = describe(&config, 1 << 32, 1 << VIRTIO_ACCEL_F_OBJECTS);
        assert!(text.contains("capabilities:    OBJECTS\n"), "{text}");
        assert!(text.contains("request queues:  4"), "{text}");
        assert!(text.contains("operations:      crc32c deflate"), "{text}");
        assert!(text.contains("max buffer size: 67108864 bytes"), "{text}");
    }
}
