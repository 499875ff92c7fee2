// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
use super::*;
use crate::testing::FakeDevice;

const BOTH: RingFeatures = RingFeatures {
    event_idx: true,
    indirect: true,
};
const NONE: RingFeatures = RingFeatures {
    event_idx: false,
    indirect: false,
};
const EVENT_ONLY: RingFeatures = RingFeatures {
    event_idx: true,
    indirect: false,
};

fn setup(size: u16, f: RingFeatures) -> (DmaMemory, SplitQueue, FakeDevice) {
    let mem = DmaMemory::new(1 << 20).unwrap();
    let q = SplitQueue::new(&mem, size, f).unwrap();
    let dev = FakeDevice::new(&mem, q.addresses(), f.event_idx);
    (mem, q, dev)
}

#[test]
fn sizes_and_alignment() {
    let mem = DmaMemory::new(1 << 20).unwrap();
    for bad in [0u16, 3, 100, 65535] {
        assert!(matches!(
            SplitQueue::new(&mem, bad, NONE),
            Err(Error::BadSize(_))
        ));
    }
    for size in [1u16, 2, 256, 1024] {
        let q = SplitQueue::new(&mem, size, BOTH).unwrap();
        let a = q.addresses();
        assert_eq!(a.size, size);
        assert_eq!(a.desc % 16, 0);
        assert_eq!(a.avail % 2, 0);
        assert_eq!(a.used % 4, 0);
        assert!(mem.contains(a.used, 6 + 8 * u64::from(size)));
        assert_eq!(q.num_free(), usize::from(size));
    }
}

#[test]
fn direct_chain_layout_and_free() {
    let (_mem, mut q, mut dev) = setup(8, EVENT_ONLY);
    let head = q
        .add(&[(0x1000, 10), (0x2000, 20)], &[(0x3000, 30)], 77)
        .unwrap();
    assert_eq!(q.num_free(), 5);
    // Not visible before publish.
    assert_eq!(dev.avail_idx(), 0);
    assert!(dev.pop().is_none());
    q.publish().unwrap();
    let chain = dev.pop().unwrap();
    assert_eq!(chain.head, head);
    assert!(!chain.indirect);
    assert_eq!(chain.readable, vec![(0x1000, 10), (0x2000, 20)]);
    assert_eq!(chain.writable, vec![(0x3000, 30)]);
    assert!(q.pop_used().unwrap().is_none());
    dev.push_used(u32::from(head), 30);
    let used = q.pop_used().unwrap().unwrap();
    assert_eq!(
        used,
        Used {
            head,
            token: 77,
            len: 30
        }
    );
    assert_eq!(q.num_free(), 8);
    assert_eq!(q.in_flight(), 0);
}

#[test]
fn indirect_chain_uses_one_slot_and_reuses_its_table() {
    let (mem, mut q, mut dev) = setup(4, BOTH);
    let before = mem.free_bytes();
    let head = q
        .add(
            &[(0x1000, 1), (0x1100, 2), (0x1200, 3)],
            &[(0x2000, 64), (0x3000, 5)],
            1,
        )
        .unwrap();
    assert_eq!(q.num_free(), 3);
    assert!(mem.free_bytes() < before);
    let d = q.read_desc(head).unwrap();
    assert_eq!(u16::from(d.flags), DESC_F_INDIRECT);
    assert_eq!(u32::from(d.len), 5 * 16);
    q.publish().unwrap();
    let chain = dev.pop().unwrap();
    assert!(chain.indirect);
    assert_eq!(chain.readable.len(), 3);
    assert_eq!(chain.writable, vec![(0x2000, 64), (0x3000, 5)]);
    // A single buffer never goes indirect.
    let single = q.add(&[(0x1000, 8)], &[], 2).unwrap();
    assert_eq!(u16::from(q.read_desc(single).unwrap().flags), 0);
    dev.push_used(u32::from(head), 64);
    assert_eq!(q.pop_used().unwrap().unwrap().token, 1);
    // The table is kept for the next indirect chain instead of being freed.
    let kept = mem.free_bytes();
    assert!(kept < before);
    let again = q.add(&[(0x1000, 1)], &[(0x2000, 64)], 3).unwrap();
    assert_eq!(
        u16::from(q.read_desc(again).unwrap().flags),
        DESC_F_INDIRECT
    );
    assert_eq!(mem.free_bytes(), kept, "the spare table is reused");
}

#[test]
fn queue_full_then_recovers() {
    let (_mem, mut q, mut dev) = setup(4, NONE);
    let h1 = q
        .add(&[(0x1000, 1), (0x1000, 1)], &[(0x2000, 1)], 1)
        .unwrap();
    assert!(matches!(
        q.add(&[(0x1000, 1)], &[(0x2000, 1)], 2),
        Err(Error::QueueFull { needed: 2, free: 1 })
    ));
    assert!(matches!(
        q.add(&[(0x1000, 1); 5], &[], 2),
        Err(Error::ChainTooLong { len: 5, size: 4 })
    ));
    assert!(matches!(q.add(&[], &[], 2), Err(Error::EmptyChain)));
    q.publish().unwrap();
    dev.pop().unwrap();
    dev.push_used(u32::from(h1), 0);
    q.pop_used().unwrap().unwrap();
    q.add(&[(0x1000, 1)], &[(0x2000, 1)], 2).unwrap();
    q.add(&[(0x1000, 1)], &[(0x2000, 1)], 3).unwrap();
    assert_eq!(q.num_free(), 0);
}

#[test]
fn out_of_order_completion() {
    let (_mem, mut q, mut dev) = setup(8, BOTH);
    let heads: Vec<u16> = (0..5u64)
        .map(|t| q.add(&[(0x1000, 1)], &[(0x2000, 1)], t).unwrap())
        .collect();
    q.publish().unwrap();
    for _ in 0..5 {
        dev.pop().unwrap();
    }
    for &i in &[3usize, 0, 4, 1, 2] {
        dev.push_used(u32::from(heads[i]), 1);
    }
    let tokens: Vec<u64> = std::iter::from_fn(|| q.pop_used().unwrap())
        .map(|u| u.token)
        .collect();
    assert_eq!(tokens, vec![3, 0, 4, 1, 2]);
    assert_eq!(q.num_free(), 8);
}

#[test]
fn batching_and_avail_event() {
    let (_mem, mut q, mut dev) = setup(16, BOTH);
    // Device wants a notification when avail idx passes 0 (initial avail_event 0).
    for t in 0..4 {
        q.add(&[(0x1000, 1)], &[], t).unwrap();
    }
    assert!(!q.needs_notify().unwrap(), "nothing published yet");
    assert!(q.publish_and_check().unwrap());
    assert!(!q.needs_notify().unwrap(), "nothing new since last check");
    // Device consumes 2 and asks to be told at index 6.
    dev.pop().unwrap();
    dev.pop().unwrap();
    dev.set_avail_event(6);
    q.add(&[(0x1000, 1)], &[], 4).unwrap(); // avail idx 5
    assert!(!q.publish_and_check().unwrap());
    q.add(&[(0x1000, 1)], &[], 5).unwrap(); // 6
    q.add(&[(0x1000, 1)], &[], 6).unwrap(); // 7: crosses 6
    assert!(q.publish_and_check().unwrap());
}

#[test]
fn no_notify_flag_without_event_idx() {
    let (_mem, mut q, dev) = setup(8, NONE);
    q.add(&[(0x1000, 1)], &[], 0).unwrap();
    assert!(q.publish_and_check().unwrap());
    dev.set_used_flags(USED_F_NO_NOTIFY);
    q.add(&[(0x1000, 1)], &[], 1).unwrap();
    assert!(!q.publish_and_check().unwrap());
    dev.set_used_flags(0);
    q.add(&[(0x1000, 1)], &[], 2).unwrap();
    assert!(q.publish_and_check().unwrap());
}

#[test]
fn interrupt_suppression_event_idx() {
    let (_mem, mut q, mut dev) = setup(8, BOTH);
    let h: Vec<u16> = (0..4)
        .map(|t| q.add(&[(0x1000, 1)], &[], t).unwrap())
        .collect();
    q.publish().unwrap();
    (0..4).for_each(|_| {
        dev.pop().unwrap();
    });
    // Disabled by default: no interrupt.
    assert!(!dev.push_used(u32::from(h[0]), 0));
    // Enabling with an entry pending says so.
    assert!(q.enable_notifications().unwrap());
    q.pop_used().unwrap().unwrap();
    // Now enabled: next used entry interrupts, once.
    assert!(dev.push_used(u32::from(h[1]), 0));
    assert!(!dev.push_used(u32::from(h[2]), 0));
    q.pop_used().unwrap().unwrap();
    q.pop_used().unwrap().unwrap();
    q.disable_notifications().unwrap();
    assert!(!dev.push_used(u32::from(h[3]), 0));
    q.pop_used().unwrap().unwrap();
}

#[test]
fn interrupt_after_count() {
    let (_mem, mut q, mut dev) = setup(8, BOTH);
    let h: Vec<u16> = (0..3)
        .map(|t| q.add(&[(0x1000, 1)], &[], t).unwrap())
        .collect();
    q.publish().unwrap();
    (0..3).for_each(|_| {
        dev.pop().unwrap();
    });
    assert!(!q.enable_notifications_after(3).unwrap());
    assert!(!dev.push_used(u32::from(h[0]), 0));
    assert!(!dev.push_used(u32::from(h[1]), 0));
    assert!(dev.push_used(u32::from(h[2]), 0));
}

#[test]
fn interrupt_suppression_flags() {
    let (_mem, mut q, mut dev) = setup(8, NONE);
    let h0 = q.add(&[(0x1000, 1)], &[], 0).unwrap();
    let h1 = q.add(&[(0x1000, 1)], &[], 1).unwrap();
    q.publish().unwrap();
    dev.pop().unwrap();
    dev.pop().unwrap();
    assert_eq!(dev.avail_flags(), AVAIL_F_NO_INTERRUPT);
    assert!(!dev.push_used(u32::from(h0), 0));
    assert!(q.enable_notifications().unwrap());
    assert!(dev.push_used(u32::from(h1), 0));
}

/// A queue whose indices start at `start`, with the device in step.
fn setup_at(size: u16, f: RingFeatures, start: u16) -> (DmaMemory, SplitQueue, FakeDevice) {
    let (mem, mut q, mut dev) = setup(size, f);
    q.start_at(start).unwrap();
    dev.next_avail = start;
    dev.next_used = start;
    dev.set_avail_event(start);
    (mem, q, dev)
}

#[test]
fn indices_wrap_around_u16() {
    // 2000 cycles through a 4-entry queue starting 1000 below the wrap.
    let start = 65536 - 1000;
    let (_mem, mut q, mut dev) = setup_at(4, BOTH, start as u16);
    let mut interrupts = 0;
    for round in 0..2000u64 {
        let h = q.add(&[(0x1000, 4)], &[(0x2000, 4)], round).unwrap();
        let old_avail = q.avail_idx().wrapping_sub(1);
        let notify = q.publish_and_check().unwrap();
        // The device re-armed avail_event at its next index when it last popped.
        assert!(notify, "round {round} avail {old_avail}");
        let chain = dev.pop().unwrap();
        assert_eq!(chain.head, h);
        // Driver waits on every other round.
        let waiting = round % 2 == 0;
        if waiting {
            assert!(!q.enable_notifications().unwrap());
        }
        let irq = dev.push_used(u32::from(h), 4);
        assert_eq!(irq, waiting, "round {round}");
        interrupts += usize::from(irq);
        let used = q.pop_used().unwrap().unwrap();
        assert_eq!(used.token, round);
        if waiting {
            q.disable_notifications().unwrap();
        }
    }
    assert_eq!(interrupts, 1000);
    assert_eq!(q.avail_idx(), 1000);
    assert_eq!(q.last_used_idx(), 1000);
}

#[test]
fn batches_across_the_wrap() {
    // Batches of 3 published at once, straddling 65535 -> 0, completed in reverse.
    let (_mem, mut q, mut dev) = setup_at(8, BOTH, 65530);
    for round in 0..10u64 {
        let heads: Vec<u16> = (0..3)
            .map(|i| q.add(&[(0x1000, 1)], &[], round * 3 + i).unwrap())
            .collect();
        assert!(q.publish_and_check().unwrap(), "round {round}");
        for &h in &heads {
            assert_eq!(dev.pop().unwrap().head, h);
        }
        assert!(!q.enable_notifications_after(3).unwrap());
        let irqs: Vec<bool> = heads
            .iter()
            .rev()
            .map(|&h| dev.push_used(u32::from(h), 0))
            .collect();
        assert_eq!(irqs, vec![false, false, true], "round {round}");
        q.disable_notifications().unwrap();
        let tokens: Vec<u64> = std::iter::from_fn(|| q.pop_used().unwrap())
            .map(|u| u.token)
            .collect();
        assert_eq!(
            tokens,
            (0..3).rev().map(|i| round * 3 + i).collect::<Vec<_>>()
        );
    }
    assert_eq!(q.avail_idx(), 65530u16.wrapping_add(30));
}

#[test]
fn disabled_interrupts_stay_disabled_across_wrap() {
    // Completions with interrupts disabled never interrupt, across the wrap.
    let (_mem, mut q, mut dev) = setup_at(2, EVENT_ONLY, 65036);
    for round in 0..1000u64 {
        let h = q.add(&[(0x1000, 4)], &[], round).unwrap();
        q.publish().unwrap();
        dev.pop().unwrap();
        assert!(!dev.push_used(u32::from(h), 0), "round {round}");
        q.pop_used().unwrap().unwrap();
    }
}

#[test]
fn raw_chains_are_written_verbatim() {
    let (mem, mut q, mut dev) = setup(8, BOTH);
    // A loop: 0 -> 1 -> 0.
    let looped = [
        RawDesc::new(0x1000, 8, DESC_F_NEXT, RawNext::Following),
        RawDesc::new(0x1100, 8, DESC_F_NEXT, RawNext::Desc(0)),
    ];
    let h_loop = q.add_raw(&looped, 10).unwrap();
    // Out-of-range next.
    let oob = [RawDesc::new(
        0x1000,
        8,
        DESC_F_NEXT,
        RawNext::Absolute(8 + 3),
    )];
    let h_oob = q.add_raw(&oob, 11).unwrap();
    assert_eq!(u16::from(q.read_desc(h_oob).unwrap().next), 11);
    // Writable then readable.
    let mut wr = RawDesc::chain(&[(0x1000, 64, true), (0x2000, 8, false)]);
    assert_eq!(wr[0].flags, DESC_F_WRITE | DESC_F_NEXT);
    assert_eq!(wr[1].flags, 0);
    wr[1].len = 9;
    let h_wr = q.add_raw(&wr, 12).unwrap();
    // Indirect table outside memory.
    let ind = [RawDesc::new(
        0xdead_0000_0000,
        64,
        DESC_F_INDIRECT,
        RawNext::Absolute(0),
    )];
    let h_ind = q.add_raw(&ind, 13).unwrap();
    assert_eq!(q.num_free(), 8 - 6);
    assert!(matches!(
        q.add_raw(&[RawDesc::new(0, 0, 0, RawNext::Desc(1))], 0),
        Err(Error::BadRawNext { .. })
    ));
    q.publish().unwrap();

    let h = dev.pop_head().unwrap();
    assert_eq!(h, h_loop);
    assert_eq!(dev.walk(h), Err("loop".to_string()));
    let h = dev.pop_head().unwrap();
    assert_eq!(dev.walk(h), Err("next 11 out of range".into()));
    let h = dev.pop_head().unwrap();
    assert_eq!(dev.walk(h), Err("readable after writable".into()));
    let h = dev.pop_head().unwrap();
    assert_eq!(dev.walk(h), Err("indirect table outside memory".into()));
    // A valid raw indirect table built by hand.
    let table = mem.alloc(32).unwrap();
    mem.write(
        &table,
        0,
        &Descriptor::table_bytes(&[
            Descriptor::new(0x1000, 4, DESC_F_NEXT, 1),
            Descriptor::new(0x2000, 4, DESC_F_WRITE, 0),
        ]),
    )
    .unwrap();
    let h_tab = q
        .add_raw(
            &[RawDesc::new(
                table.gpa(),
                32,
                DESC_F_INDIRECT,
                RawNext::Absolute(0),
            )],
            14,
        )
        .unwrap();
    q.publish().unwrap();
    let c = dev.pop().unwrap();
    assert_eq!(c.head, h_tab);
    assert_eq!(c.readable, vec![(0x1000, 4)]);
    assert_eq!(c.writable, vec![(0x2000, 4)]);

    for (head, token) in [
        (h_loop, 10),
        (h_oob, 11),
        (h_wr, 12),
        (h_ind, 13),
        (h_tab, 14),
    ] {
        dev.push_used(u32::from(head), 0);
        assert_eq!(q.pop_used().unwrap().unwrap().token, token);
    }
    assert_eq!(q.num_free(), 8);
}

#[test]
fn raw_avail_entries_and_bad_used_ids() {
    let (_mem, mut q, mut dev) = setup(4, BOTH);
    q.push_avail_raw(9).unwrap();
    q.publish().unwrap();
    assert_eq!(dev.pop_head(), Some(9));
    dev.push_used(9, 0);
    assert!(matches!(
        q.pop_used(),
        Err(Error::BadUsedId { id: 9, len: 0 })
    ));
    // The bad entry was consumed; the queue keeps working.
    let h = q.add(&[(0x1000, 1)], &[], 5).unwrap();
    q.publish().unwrap();
    dev.pop().unwrap();
    dev.push_used(u32::from(h), 0);
    assert_eq!(q.pop_used().unwrap().unwrap().token, 5);
    // Returning the same head twice is caught.
    dev.push_used(u32::from(h), 0);
    assert!(matches!(q.pop_used(), Err(Error::BadUsedId { .. })));
    // An avail index jump is written verbatim.
    q.write_avail_idx_raw(100).unwrap();
    assert_eq!(dev.avail_idx(), 100);
}

#[test]
fn bad_used_index_jump_is_reported() {
    let (mem, mut q, _dev) = setup(4, BOTH);
    mem.guest_memory()
        .store(
            10u16,
            GuestAddress(q.addresses().used + 2),
            Ordering::Release,
        )
        .unwrap();
    assert!(matches!(
        q.pop_used(),
        Err(Error::BadUsedIdx { used: 10, last: 0 })
    ));
}
