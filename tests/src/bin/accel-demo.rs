// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `accel-demo`: starts the daemon on a unix socket (or uses a running one
//! with `--socket`), connects to it as a VM would, runs a job of every
//! operation through the socket and prints what came back, checking each
//! result against an independent reference.

use std::error::Error;
use std::path::PathBuf;

use accel_driver::{Buffer, DmaMemory, Request};
use accel_tests::harness::{guest_ram, AccelDevice, Daemon};
use accel_tests::reference;
use clap::Parser;
use virtio_accel_spec::op::COMPARE_EQUAL;
use virtio_accel_spec::{
    AesGcmParams, Crc32cParams, DeflateFormat, DeflateParams, Fence, FillParams, Op,
};

#[derive(Debug, Parser)]
#[command(about = "Run a job of every operation through vhost-user-accel and print the results")]
struct Args {
    /// Socket of a running daemon; without it the demo starts its own.
    #[arg(long)]
    socket: Option<PathBuf>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn fence(fence: Fence) -> String {
    format!(
        "queue {} #{}",
        u16::from(fence.queue),
        u64::from(fence.seqno)
    )
}

fn check(ok: bool, what: &str) -> Result<(), Box<dyn Error>> {
    if ok {
        Ok(())
    } else {
        Err(format!("{what}: result differs from the reference").into())
    }
}

/// Writes `bytes` to a new guest buffer.
fn guest_buffer(memory: &DmaMemory, bytes: &[u8]) -> Result<accel_driver::DmaBuf, Box<dyn Error>> {
    let buf = memory.alloc(bytes.len().max(1))?;
    memory.write(&buf, 0, bytes)?;
    Ok(buf)
}

fn demo(device: &AccelDevice) -> Result<(), Box<dyn Error>> {
    let memory = device.memory().clone();
    let config = device.config();
    println!(
        "device: {} request queues, ops mask {:#x}, features {:#x}",
        u32::from(config.num_request_queues),
        u32::from(config.ops),
        device.features()
    );
    let text: Vec<u8> = b"The quick brown fox jumps over the lazy dog. "
        .iter()
        .copied()
        .cycle()
        .take(64 * 1024)
        .collect();
    let input = guest_buffer(&memory, &text)?;
    let direct = || Buffer::direct(&input);

    let crc = device
        .run(
            0,
            &Request::new(Op::Crc32c)
                .params(&Crc32cParams::default())
                .input(direct()),
        )?
        .check()?;
    check(crc.result_u32() == reference::crc32c(0, &text), "crc32c")?;
    println!(
        "crc32c  {} bytes -> {:#010x} (fence {})",
        text.len(),
        crc.result_u32(),
        fence(crc.fence())
    );

    let sha = device
        .run(
            1 % device.num_request_queues(),
            &Request::new(Op::Sha256).input(direct()),
        )?
        .check()?;
    check(sha.result()[..] == reference::sha256(&text)[..], "sha256")?;
    println!("sha256  -> {}", hex(sha.result()));

    let packed = memory.alloc(text.len())?;
    let params = DeflateParams {
        format: DeflateFormat::Gzip.into(),
        level: 6,
        ..Default::default()
    };
    let deflate = device
        .run(
            0,
            &Request::new(Op::DeflateCompress)
                .params(&params)
                .input(direct())
                .output(Buffer::direct(&packed)),
        )?
        .check()?;
    let gz = memory.read_vec(&packed, 0, usize::try_from(deflate.bytes_written())?)?;
    check(
        reference::decompress(DeflateFormat::Gzip, &gz)
            .ok()
            .as_deref()
            == Some(&text[..]),
        "deflate",
    )?;
    println!(
        "deflate gzip level 6: {} -> {} bytes (the reference inflates it back)",
        text.len(),
        gz.len()
    );

    let key = AesGcmParams {
        key: [7; 32],
        iv: [9; 12],
        ..Default::default()
    };
    let aad = guest_buffer(&memory, b"header")?;
    let sealed = memory.alloc(text.len())?;
    let seal = device
        .run(
            0,
            &Request::new(Op::AesGcmSeal)
                .params(&key)
                .input(Buffer::direct(&aad))
                .input(direct())
                .output(Buffer::direct(&sealed)),
        )?
        .check()?;
    let (cipher, tag) = reference::aes256_gcm_seal(&key.key, &key.iv, b"header", &text);
    check(
        memory.read_vec(&sealed, 0, text.len())? == cipher && seal.result()[..16] == tag,
        "aes-gcm-seal",
    )?;
    println!("aes-256-gcm seal: tag {}", hex(&seal.result()[..16]));

    // Objects and fences: fill an object on queue 0, compare it on the last
    // queue once the fill's fence has signalled.
    let region = memory.alloc(8192)?;
    let object = device.create_object(&[(region.gpa(), 8192)])?;
    let fill = device
        .run(
            0,
            &Request::new(Op::Fill)
                .params(&FillParams {
                    pattern: 0x5a,
                    ..Default::default()
                })
                .output(Buffer::object(object, 0, 8192)),
        )?
        .check()?;
    let expected = guest_buffer(&memory, &[0x5a; 8192])?;
    let last = device.num_request_queues() - 1;
    let compare = device
        .run(
            last,
            &Request::new(Op::Compare)
                .dep(fill.fence())
                .input(Buffer::object(object, 0, 8192))
                .input(Buffer::direct(&expected)),
        )?
        .check()?;
    check(compare.result_u64() == COMPARE_EQUAL, "fill + compare")?;
    println!(
        "object {object}: filled (fence {}), then compared equal on queue {last} after that fence",
        fence(fill.fence())
    );
    device.destroy_object(object)?;
    println!("all results match the references");
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    let daemon = match args.socket {
        Some(socket) => Daemon::external(socket),
        None => Daemon::start(),
    };
    println!("daemon listening on {}", daemon.socket().display());
    let memory = guest_ram(16);
    let device = daemon.connect(&memory);
    demo(&device)
}
