// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Smoke run against a live daemon: `smoke SOCKET_PATH [FEATURES_HEX]`.
//!
//! Opens the device over vhost-user, prints its configuration, and runs a few
//! requests and control commands, checking their results.

use std::error::Error;
use std::time::Duration;

use accel_driver::{
    Buffer, Device, DmaMemory, RawDesc, RawNext, Request, VhostUserTransport, DEFAULT_FEATURES,
};
use virtio_accel_spec::{Fence, FillParams, Op, Status};

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: smoke SOCKET_PATH [FEATURES_HEX]")?;
    let features = match args.next() {
        Some(hex) => u64::from_str_radix(hex.trim_start_matches("0x"), 16)?,
        None => DEFAULT_FEATURES,
    };
    let memory = DmaMemory::with_regions(&[(0, 16 << 20), (1 << 32, 16 << 20)])?;
    let transport = VhostUserTransport::connect(&path, &memory)?;
    println!(
        "connected: features {:#x}, protocol {:?}",
        transport.backend_features(),
        transport.protocol_features()
    );
    let mut device = Device::open(transport, features)?;
    println!(
        "features {:#x}, config {:?}",
        device.features(),
        device.config()
    );

    // CRC32C of the check string.
    let data = memory.alloc(4096)?;
    memory.write(&data, 0, b"123456789")?;
    let crc = device
        .run(
            0,
            &Request::new(Op::Crc32c).input(Buffer::direct_range(&data, 0, 9)?),
        )?
        .check()?;
    println!(
        "crc32c = {:#010x}, fence {:?}",
        crc.result_u32(),
        crc.fence()
    );
    assert_eq!(crc.result_u32(), 0xe306_9283);

    // Fill then copy, in the high region.
    let out = memory.alloc_at(1 << 32, 8192)?;
    let fill = FillParams {
        pattern: 0xa5,
        ..Default::default()
    };
    let c = device
        .run(
            1,
            &Request::new(Op::Fill)
                .params(&fill)
                .output(Buffer::direct(&data)),
        )?
        .check()?;
    assert_eq!(c.used_len, 64 + 4096);
    let c = device
        .run(
            1,
            &Request::new(Op::Copy)
                .input(Buffer::direct(&data))
                .output(Buffer::direct(&out)),
        )?
        .check()?;
    assert_eq!(c.bytes_written(), 4096);
    assert_eq!(memory.read_vec(&out, 0, 4096)?, vec![0xa5; 4096]);
    println!("fill + copy ok, last fence {:?}", c.fence());

    // Objects and fences.
    let handle = device.create_object(&[data.segment(), out.segment()])?;
    let c = device
        .run(
            0,
            &Request::new(Op::Crc32c)
                .dep(c.fence())
                .input(Buffer::object(handle, 4090, 12)),
        )?
        .check()?;
    println!(
        "object {handle}: crc of a straddling range {:#010x}",
        c.result_u32()
    );
    assert!(device.query_fence(c.fence())?);
    device.wait_fences(&[c.fence(), Fence::new(1, 1)])?;
    device.destroy_object(handle)?;
    let err = device
        .destroy_object(handle)
        .err()
        .ok_or("double destroy succeeded")?;
    assert_eq!(err.status(), Some(Status::NoObject));

    // A batch: submit 100, flush once, reap out of order.
    let bufs: Vec<_> = (0..100)
        .map(|_| memory.alloc(512))
        .collect::<Result<_, _>>()?;
    let mut done = 0;
    let mut next = 0;
    while done < bufs.len() {
        while next < bufs.len() {
            let req = Request::new(Op::Sha256).input(Buffer::direct(&bufs[next]));
            match device.submit(0, &req, next as u64) {
                Ok(_) => next += 1,
                Err(accel_driver::device::Error::QueueFull { .. }) => break,
                Err(e) => return Err(e.into()),
            }
        }
        device.flush(0)?;
        for c in device.wait(0, Duration::from_secs(5))? {
            c.check()?;
            done += 1;
        }
    }
    println!("batch of {done} sha256 ok");

    // Memory-table updates: unplug the high region, then plug it back.
    let regions = memory.regions().to_vec();
    device.transport().set_mem_table_regions(&regions[..1])?;
    let c = device.run(0, &Request::new(Op::Crc32c).input(Buffer::direct(&out)))?;
    println!("crc of an unplugged buffer: {:?}", c.status());
    assert_eq!(c.status(), Ok(Status::BadAddress));
    device.transport().set_mem_table()?;
    let c = device
        .run(0, &Request::new(Op::Crc32c).input(Buffer::direct(&out)))?
        .check()?;
    println!("after re-plug: crc {:#010x}", c.result_u32());

    // A raw descriptor loop on request queue 0.
    let vq = device.raw_queue(1)?;
    let head = vq.add_raw(
        &[RawDesc::new(
            data.gpa(),
            80,
            accel_driver::virtqueue::DESC_F_NEXT,
            RawNext::Desc(0),
        )],
        7,
    )?;
    vq.publish()?;
    device.notify(1)?;
    let used = device
        .wait_used(1, Duration::from_secs(5))?
        .ok_or("descriptor loop not returned")?;
    println!(
        "descriptor loop: head {head} returned with len {}",
        used.len
    );

    // Threads sharing the device: requests on both queues, fence waits on the control queue.
    let start = std::time::Instant::now();
    std::thread::scope(|scope| -> Result<(), Box<dyn Error + Send + Sync>> {
        let device = &device;
        let memory = &memory;
        let workers: Vec<_> = (0..4u16)
            .map(|t| {
                scope.spawn(move || -> Result<(), Box<dyn Error + Send + Sync>> {
                    let buf = memory.alloc(1024)?;
                    for i in 0..500u32 {
                        let q = t % 2;
                        let c = device
                            .run(q, &Request::new(Op::Crc32c).input(Buffer::direct(&buf)))?
                            .check()?;
                        if i % 100 == 0 {
                            device.wait_fences(&[c.fence()])?;
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| "worker panicked")??;
        }
        Ok(())
    })
    .map_err(|e| e.to_string())?;
    println!("2000 requests from 4 threads in {:?}", start.elapsed());

    device.close()?.disconnect();
    println!("smoke ok");
    Ok(())
}
