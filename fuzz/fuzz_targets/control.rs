// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The control-command decoder (§7) on bytes split into segments of a size
//! the input chooses. Checks: no panic, and every decoded command is what
//! the wire structures of the spec crate say the bytes mean, within the
//! device's limits.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vhost_user_accel::command::{decode_control, Control, FenceId};
use vhost_user_accel::config::Limits;
use vhost_user_accel::sg::OwnedBuffers;
use virtio_accel_spec::{CtrlReq, Fence, MemSeg};
use vm_memory::ByteValued;

/// The `index`-th `T` after the control header in `bytes`.
fn wire<T: ByteValued + Default>(bytes: &[u8], index: usize) -> T {
    let header = std::mem::size_of::<CtrlReq>();
    let at = header + index * std::mem::size_of::<T>();
    let mut value = T::default();
    value
        .as_mut_slice()
        .copy_from_slice(&bytes[at..at + std::mem::size_of::<T>()]);
    value
}

fn fence_at(bytes: &[u8], index: usize) -> FenceId {
    let fence: Fence = wire(bytes, index);
    assert_eq!(fence.reserved, [0; 6], "fence with reserved bits accepted");
    FenceId {
        queue: fence.queue.into(),
        seqno: fence.seqno.into(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, bytes)) = data.split_first() else {
        return;
    };
    let limits = Limits::default();
    let owned = OwnedBuffers::new(vec![bytes.to_vec()]);
    let Some(mut list) = owned.sg(0, 1 + usize::from(split)) else {
        return;
    };
    let Ok(command) = decode_control(&mut list, &limits) else {
        return;
    };
    let header: CtrlReq = {
        let mut header = CtrlReq::default();
        header
            .as_mut_slice()
            .copy_from_slice(&bytes[..std::mem::size_of::<CtrlReq>()]);
        header
    };
    let count = u32::from(header.count) as usize;
    let arg = u64::from(header.arg);
    match command {
        Control::Capabilities(asked) => assert_eq!((asked, count), (arg, 0)),
        Control::ObjectCreate(segments) => {
            assert!((1..=limits.max_segments as usize).contains(&segments.len()));
            assert_eq!((segments.len(), arg), (count, 0));
            for (index, &(addr, len)) in segments.iter().enumerate() {
                let seg: MemSeg = wire(bytes, index);
                assert_eq!((addr, len), (seg.addr.into(), seg.len.into()));
                assert_ne!(len, 0, "empty object segment accepted");
            }
        }
        Control::ObjectDestroy(handle) => assert_eq!((u64::from(handle), count), (arg, 0)),
        Control::FenceQuery(fence) => {
            assert_eq!((count, arg), (1, 0));
            assert_eq!(fence, fence_at(bytes, 0));
        }
        Control::FenceWait(fences) => {
            assert!((1..=limits.max_deps as usize).contains(&fences.len()));
            assert_eq!((fences.len(), arg), (count, 0));
            for (index, fence) in fences.iter().enumerate() {
                assert_eq!(*fence, fence_at(bytes, index));
            }
        }
    }
});
