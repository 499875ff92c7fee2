// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Writes the seed corpus of every fuzz target into `corpus/<target>/seed-*`
//! (docs/fuzzing.md): valid requests and commands of each kind, in the byte
//! format the targets read, so that the fuzzers start past the decoders.
//!
//! Run from `fuzz/`: `cargo run --example make_corpus`.

use std::fs;
use std::io;
use std::path::Path;

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_accel_fuzz::input::Writer;
use vhost_user_accel_fuzz::ring::{ChainSpec, DescSpec};
use vhost_user_accel_fuzz::vhost_user::{
    code, Action, FdMode, Features, RegionFile, RegionSpec, RingAddr, Step,
};
use virtio_accel_spec::{
    AesGcmParams, BufRef, ControlCommand, Crc32cParams, CtrlReq, DeflateParams, Fence, FillParams,
    MemSeg, Op, Req, Resp,
};
use vm_memory::ByteValued;

const RESP: u16 = std::mem::size_of::<Resp>() as u16;
const CTRL_RESP: u16 = 16;

/// The readable bytes of a request: header, fences, buffer references, data.
fn request(req: Req, deps: &[Fence], bufs: &[BufRef], data: &[u8]) -> Vec<u8> {
    let mut req = req;
    req.num_deps = (deps.len() as u16).into();
    let mut bytes = req.as_slice().to_vec();
    deps.iter()
        .for_each(|f| bytes.extend_from_slice(f.as_slice()));
    bufs.iter()
        .for_each(|b| bytes.extend_from_slice(b.as_slice()));
    bytes.extend_from_slice(data);
    bytes
}

/// A chain of `readable` split into pieces of `piece` bytes, then writable
/// buffers of `writable` lengths.
fn chain(readable: &[u8], piece: usize, writable: &[u16], indirect: bool) -> ChainSpec {
    let mut descs: Vec<DescSpec> = readable
        .chunks(piece)
        .map(|c| DescSpec::Read(c.to_vec()))
        .collect();
    descs.extend(writable.iter().map(|&len| DescSpec::Write(len)));
    ChainSpec { descs, indirect }
}

/// Requests of every operation, with the chain that carries each.
fn requests() -> Vec<(&'static str, ChainSpec)> {
    let data: Vec<u8> = (0..200u8).collect();
    let copy = request(
        Req::new(Op::Copy),
        &[],
        &[BufRef::direct(200), BufRef::direct(200)],
        &data,
    );
    let fill = request(
        Req::new(Op::Fill).with_params(&FillParams {
            pattern: 0x5a,
            ..Default::default()
        }),
        &[],
        &[BufRef::direct(300)],
        &[],
    );
    let crc = request(
        Req::new(Op::Crc32c).with_params(&Crc32cParams {
            seed: 7.into(),
            ..Default::default()
        }),
        &[Fence::new(0, 1)],
        &[BufRef::direct(200)],
        &data,
    );
    let sha = request(Req::new(Op::Sha256), &[], &[BufRef::direct(200)], &data);
    let compare = request(
        Req::new(Op::Compare),
        &[],
        &[BufRef::direct(100), BufRef::direct(100)],
        &data,
    );
    let seal = request(
        Req::new(Op::AesGcmSeal).with_params(&AesGcmParams {
            key: [3; 32],
            iv: [4; 12],
            ..Default::default()
        }),
        &[],
        &[BufRef::direct(16), BufRef::direct(184), BufRef::direct(184)],
        &data,
    );
    let deflate = request(
        Req::new(Op::DeflateCompress).with_params(&DeflateParams {
            format: 1,
            level: 6,
            ..Default::default()
        }),
        &[],
        &[BufRef::direct(200), BufRef::direct(512)],
        &data,
    );
    let object_fill = request(
        Req::new(Op::Fill).with_params(&FillParams {
            pattern: 1,
            ..Default::default()
        }),
        &[],
        &[BufRef::object(1, 16, 64)],
        &[],
    );
    vec![
        ("copy", chain(&copy, 4096, &[RESP, 200], false)),
        ("fill-split", chain(&fill, 24, &[RESP, 100, 200], false)),
        ("crc-dep-indirect", chain(&crc, 96, &[RESP], true)),
        ("sha", chain(&sha, 4096, &[RESP], false)),
        ("compare", chain(&compare, 150, &[RESP], false)),
        ("aes-seal", chain(&seal, 4096, &[RESP, 184], false)),
        ("deflate", chain(&deflate, 4096, &[RESP, 512], false)),
        ("object-fill", chain(&object_fill, 4096, &[RESP], false)),
    ]
}

/// Control commands of every kind.
fn controls() -> Vec<(&'static str, Vec<u8>)> {
    let with = |header: CtrlReq, tail: &[&[u8]]| {
        let mut bytes = header.as_slice().to_vec();
        tail.iter().for_each(|t| bytes.extend_from_slice(t));
        bytes
    };
    vec![
        (
            "object-create",
            with(
                CtrlReq::new(ControlCommand::ObjectCreate, 2, 0),
                &[
                    MemSeg::new(0x7_0000, 0x1000).as_slice(),
                    MemSeg::new(0x7_2000, 0x800).as_slice(),
                ],
            ),
        ),
        (
            "object-destroy",
            with(CtrlReq::new(ControlCommand::ObjectDestroy, 0, 1), &[]),
        ),
        (
            "fence-query",
            with(
                CtrlReq::new(ControlCommand::FenceQuery, 1, 0),
                &[Fence::new(0, 1).as_slice()],
            ),
        ),
        (
            "fence-wait",
            with(
                CtrlReq::new(ControlCommand::FenceWait, 2, 0),
                &[Fence::new(0, 1).as_slice(), Fence::new(1, 1).as_slice()],
            ),
        ),
    ]
}

fn write_seeds(target: &str, seeds: impl IntoIterator<Item = (String, Vec<u8>)>) -> io::Result<()> {
    let dir = Path::new("corpus").join(target);
    fs::create_dir_all(&dir)?;
    for (name, bytes) in seeds {
        fs::write(dir.join(format!("seed-{name}")), bytes)?;
    }
    Ok(())
}

fn main() -> io::Result<()> {
    // request: memory gap, queue size, max_segments, then the chain.
    write_seeds(
        "request",
        requests().into_iter().map(|(name, chain)| {
            let mut w = Writer::default();
            w.u8(0).u8(5).u8(63);
            chain.write(&mut w);
            (name.to_string(), w.data)
        }),
    )?;
    // control: segment size, then the command.
    write_seeds(
        "control",
        controls().into_iter().map(|(name, bytes)| {
            let mut w = Writer::default();
            w.u8(7).bytes(&bytes);
            (name.to_string(), w.data)
        }),
    )?;
    // fence: 2 queues; issue 0, 0, 1; wait on (0, 1); signal (0, 2) then
    // (0, 1); query (0, 1) and (1, 1).
    let mut fence = Writer::default();
    fence.u8(1);
    fence.u8(0).u8(0).u8(0).u8(0).u8(0).u8(1);
    fence
        .u8(5)
        .u8(0)
        .u16(2)
        .u8(3)
        .u8(0)
        .u16(1)
        .u8(3)
        .u8(0)
        .u16(2);
    fence.u8(6).u8(0).u16(2).u8(6).u8(1).u16(1);
    write_seeds("fence", [("issue-wait-signal".to_string(), fence.data)])?;
    // device: 2 request queues, size 64, features on; each request alone on
    // queue 1 then completions; and a scenario of an object, a request on it
    // and a FENCE_WAIT on the control queue.
    let setup = 1 | (4 << 5);
    let mut seeds: Vec<(String, Vec<u8>)> = requests()
        .into_iter()
        .map(|(name, chain)| {
            let mut w = Writer::default();
            w.u8(setup).u8(0).u8(0).u8(1);
            chain.write(&mut w);
            w.u8(12).u8(0);
            (name.to_string(), w.data)
        })
        .collect();
    let mut scenario = Writer::default();
    scenario.u8(setup).u8(0);
    let controls = controls();
    let requests = requests();
    let submit = |w: &mut Writer, vq: u8, chain: &ChainSpec| {
        w.u8(0).u8(vq);
        chain.write(w);
    };
    submit(
        &mut scenario,
        0,
        &chain(&controls[0].1, 4096, &[CTRL_RESP], false),
    );
    submit(&mut scenario, 1, &requests[7].1);
    submit(&mut scenario, 2, &requests[0].1);
    submit(
        &mut scenario,
        0,
        &chain(&controls[3].1, 4096, &[CTRL_RESP], false),
    );
    submit(&mut scenario, 1, &requests[2].1);
    scenario.u8(12).u8(0);
    submit(
        &mut scenario,
        0,
        &chain(&controls[2].1, 4096, &[CTRL_RESP], false),
    );
    submit(
        &mut scenario,
        0,
        &chain(&controls[1].1, 4096, &[CTRL_RESP], false),
    );
    scenario.u8(15).u8(0);
    submit(&mut scenario, 1, &requests[3].1);
    seeds.push(("objects-fences-reset".to_string(), scenario.data));
    write_seeds("device", seeds)?;
    write_seeds("vhost_user", vhost_user_seeds())
}

fn step(need_reply: bool, action: Action) -> Step {
    Step { need_reply, action }
}

/// What QEMU sends to a vhost-user device before the guest runs: the
/// feature negotiation, the memory table, then each queue's ring set up
/// (`legacy`: without VHOST_USER_F_PROTOCOL_FEATURES, whose rings start
/// enabled, so no SET_VRING_ENABLE).
fn qemu_setup(queues: u8, table: Vec<RegionSpec>, legacy: bool) -> Vec<Step> {
    let protocol = VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::RESET_DEVICE;
    let mut features = Features::Offered(u64::MAX);
    if legacy {
        features = Features::Offered(!VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits());
    }
    let mut steps = vec![
        step(false, Action::GetFeatures),
        step(false, Action::GetProtocolFeatures),
        step(
            false,
            Action::SetProtocolFeatures(Features::Offered(protocol.bits())),
        ),
        step(false, Action::GetQueueNum),
        step(false, Action::SetOwner),
        step(
            false,
            Action::GetConfig {
                offset: 0,
                size: 32,
                flags: 0,
            },
        ),
        step(true, Action::SetFeatures(features)),
        step(
            true,
            Action::SetMemTable {
                regions: table,
                fd_delta: 0,
            },
        ),
    ];
    for index in 0..queues {
        steps.extend([
            step(true, Action::SetVringNum { index, num: 64 }),
            step(true, Action::SetVringBase { index, num: 0 }),
            step(
                true,
                Action::SetVringAddr {
                    index,
                    addr: RingAddr::Laid,
                },
            ),
            step(
                true,
                Action::SetVringFd {
                    code: code::SET_VRING_KICK,
                    index,
                    fd: FdMode::Event,
                },
            ),
            step(
                true,
                Action::SetVringFd {
                    code: code::SET_VRING_CALL,
                    index,
                    fd: FdMode::Event,
                },
            ),
        ]);
        if !legacy {
            steps.push(step(true, Action::SetVringEnable { index, num: 1 }));
        }
    }
    steps
}

/// The guest's work once the rings run: an object on the control queue,
/// a request on each request queue.
fn guest_work() -> Vec<Step> {
    let requests = requests();
    let controls = controls();
    vec![
        step(
            false,
            Action::Kick {
                index: 0,
                chain: chain(&controls[0].1, 4096, &[CTRL_RESP], false),
            },
        ),
        step(
            false,
            Action::Kick {
                index: 1,
                chain: requests[0].1.clone(),
            },
        ),
        step(
            false,
            Action::Kick {
                index: 2,
                chain: requests[3].1.clone(),
            },
        ),
        step(
            false,
            Action::Kick {
                index: 1,
                chain: requests[2].1.clone(),
            },
        ),
    ]
}

/// QEMU stopping the device: GET_VRING_BASE on each queue.
fn qemu_stop(queues: u8) -> Vec<Step> {
    (0..queues)
        .map(|index| step(false, Action::GetVringBase { index }))
        .collect()
}

/// Seeds of the vhost_user target: a QEMU-like session (2 request queues,
/// the guest memory as laid out) and variants of it.
fn vhost_user_seeds() -> Vec<(String, Vec<u8>)> {
    let guest = vec![RegionSpec::Guest(0), RegionSpec::Guest(1)];
    let past_end = RegionSpec::Custom {
        file: RegionFile::Guest,
        guest_addr: 0x10_0000,
        size: 0x2_0000,
        offset: 0x8_0000,
        user_addr: None,
    };
    let unsealed = RegionSpec::Custom {
        file: RegionFile::Fresh {
            pages: 0x80,
            sealed: false,
        },
        guest_addr: 0x10_0000,
        size: 0x8_0000,
        offset: 0,
        user_addr: None,
    };
    let garbage = |code, body: Vec<u8>| {
        step(
            false,
            Action::Garbage {
                code,
                flags: 1,
                body,
                fds: 0,
            },
        )
    };

    let session = [
        qemu_setup(3, guest.clone(), false),
        guest_work(),
        qemu_stop(3),
    ]
    .concat();
    let legacy = [
        qemu_setup(3, guest.clone(), true),
        guest_work(),
        qemu_stop(3),
    ]
    .concat();
    // A reboot: stop, reset, the same table again, rings again, more work.
    let reboot = [
        qemu_setup(3, guest.clone(), false),
        guest_work(),
        qemu_stop(3),
        vec![step(true, Action::ResetDevice)],
        qemu_setup(3, guest.clone(), false)[6..].to_vec(),
        guest_work(),
        vec![step(true, Action::ResetOwner)],
    ]
    .concat();
    // A table whose second region reaches past the end of its file: refused.
    let too_large = qemu_setup(3, vec![RegionSpec::Guest(0), past_end], false);
    // An extra region on a memfd not sealed against shrinking: accepted.
    let unsealed_table = [
        qemu_setup(
            3,
            vec![RegionSpec::Guest(0), RegionSpec::Guest(1), unsealed],
            false,
        ),
        guest_work(),
    ]
    .concat();
    // Memory slots: regions added and removed one at a time.
    let slots = vec![
        step(false, Action::GetFeatures),
        step(
            false,
            Action::SetProtocolFeatures(Features::Raw(
                (VhostUserProtocolFeatures::REPLY_ACK
                    | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS)
                    .bits(),
            )),
        ),
        step(true, Action::SetFeatures(Features::Offered(u64::MAX))),
        step(false, Action::GetMaxMemSlots),
        step(true, Action::AddMemReg(RegionSpec::Guest(0))),
        step(true, Action::AddMemReg(RegionSpec::Guest(1))),
        step(true, Action::RemMemReg(RegionSpec::Guest(1))),
        step(true, Action::AddMemReg(past_end)),
    ];
    // Messages the back-end does not implement or refuses, in a running
    // session: a SET_CONFIG, then a GET_CONFIG cut short and SEND_RARP as
    // raw messages (either ends the connection).
    let odd = [
        qemu_setup(3, guest, false),
        guest_work(),
        vec![
            step(
                true,
                Action::SetConfig {
                    offset: 0,
                    flags: 0,
                    data: vec![1; 8],
                },
            ),
            garbage(code::GET_CONFIG, vec![0; 4]),
            garbage(code::SET_VRING_ERR + 5, vec![0; 8]),
        ],
    ]
    .concat();

    let setup = 1 | (2 << 2);
    [
        ("qemu-session", session),
        ("qemu-legacy-features", legacy),
        ("qemu-reboot", reboot),
        ("region-past-end", too_large),
        ("unsealed-region", unsealed_table),
        ("mem-slots", slots),
        ("unimplemented-messages", odd),
    ]
    .into_iter()
    .map(|(name, steps)| {
        assert!(
            steps.len() <= vhost_user_accel_fuzz::vhost_user::MAX_STEPS,
            "{name}"
        );
        let mut w = Writer::default();
        w.u8(setup).u8(0);
        steps.iter().for_each(|s| s.write(&mut w));
        (name.to_string(), w.data)
    })
    .collect()
}
