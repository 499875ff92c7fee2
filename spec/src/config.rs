// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Device configuration layout (§5).

use vm_memory::endian::{Le32, Le64};
use vm_memory::ByteValued;

use crate::assert_wire_size;

/// The device configuration space, read-only for the driver (§5).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VirtioAccelConfig {
    /// Number of request queues (virtqueues 1..=N).
    pub num_request_queues: Le32,
    /// Bit `n` set means operation `n` is supported (§8).
    pub ops: Le32,
    /// Most descriptors in one chain, and most segments in one object.
    pub max_segments: Le32,
    /// Most fences one request or one FENCE_WAIT may list.
    pub max_deps: Le32,
    /// Most live objects.
    pub max_objects: Le32,
    /// Most requests in flight on one request queue.
    pub max_inflight: Le32,
    /// Largest object, in bytes.
    pub max_object_size: Le64,
    /// Largest buffer one request may reference, in bytes.
    pub max_buffer_size: Le64,
}
assert_wire_size!(VirtioAccelConfig, 40);

// SAFETY: `VirtioAccelConfig` is `repr(C)`, made only of little-endian integer
// wrappers, has no padding (asserted size equals the sum of its fields), and any
// bit pattern is a valid value.
unsafe impl ByteValued for VirtioAccelConfig {}
