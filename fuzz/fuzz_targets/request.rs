// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The descriptor-chain walker and the request decoder on one chain of a
//! split ring that the input lays out in guarded guest memory (two regions,
//! touching or not). Checks: no panic, no access outside guest memory, and
//! for a chain of placed buffers that walks cleanly, the readable list holds
//! exactly the chain's readable bytes and the writable list its writable
//! length; a decoded request respects the limits and the operation's arity.

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vhost_user_accel::chain::{walk, ChainStart, Walk};
use vhost_user_accel::command::decode_request;
use vhost_user_accel::config::Limits;
use vhost_user_accel_fuzz::input::Reader;
use vhost_user_accel_fuzz::ring::{guest_memory, ChainSpec, DataArea, DescSpec, SplitRing};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestAddress;

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let gap_pages = r.u8() % 4;
    let size = 1u16 << (1 + r.u8() % 6);
    let limits = Limits {
        max_segments: 1 + u32::from(r.u8() % 64),
        ..Limits::default()
    };
    let chain = ChainSpec::read(&mut r);
    let Ok(guarded) = guest_memory(gap_pages) else {
        return;
    };
    let mem = &guarded.mem;
    let mut ring = SplitRing::new(0, size);
    let (head, exact) = ring.place(mem, &mut DataArea::default(), &chain);
    ring.publish(mem, head);

    let mut queue = Queue::new(size).expect("a power of two is a valid size");
    queue.set_size(size);
    queue
        .try_set_desc_table_address(GuestAddress(ring.desc_table))
        .expect("aligned");
    queue
        .try_set_avail_ring_address(GuestAddress(ring.avail_ring))
        .expect("aligned");
    queue
        .try_set_used_ring_address(GuestAddress(ring.used_ring))
        .expect("aligned");
    queue.set_ready(true);
    let Ok(mut chains) = queue.iter(mem) else {
        return;
    };
    let Some(head) = chains.next().map(|chain| chain.head_index()) else {
        return;
    };
    let start = ChainStart {
        table: ring.desc_table,
        size,
        head,
    };
    // The lists hold this snapshot; they are dropped, with it, before
    // `guarded` unmaps its memory.
    let snapshot = Arc::new(mem.clone());
    let mut walked = Walk::default();
    walk(start, &snapshot, limits.max_segments, &mut walked);

    // A direct chain longer than the table wraps onto itself: not the chain
    // the input describes.
    let fits = chain.indirect || chain.descs.len() <= usize::from(size);
    let clean = exact
        && fits
        && walked.error.is_none()
        && chain.descs.len() <= limits.max_segments as usize;
    if let (true, Some(expected)) = (clean, chain.readable_bytes()) {
        let mut got = vec![0u8; walked.readable.len()];
        walked.readable.read_into(&mut got);
        assert_eq!(got, expected, "readable bytes differ from the chain's");
        let writable: usize = chain
            .descs
            .iter()
            .map(|desc| match desc {
                DescSpec::Write(len) => usize::from(*len),
                _ => 0,
            })
            .sum();
        assert_eq!(walked.writable.len(), writable, "writable length");
    }
    // The device writes its response and outputs through the writable list.
    walked.writable.fill(0xa5);

    let mut readable = walked.readable;
    if let Ok(request) = decode_request(&mut readable, &limits) {
        let op = request.operation.op();
        let arity = (request.inputs.len() as u8, request.outputs.len() as u8);
        assert_eq!(arity, op.arity(), "arity of {op:?}");
        assert!(request.deps.len() <= limits.max_deps as usize);
    }
});
