// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! A corrupted device record (spec §11.3): after a tenant's process is
//! killed with requests in flight and an object live, words of the record it
//! left are overwritten at random before the next process reads them. The
//! next process either resumes the device, and then every request completes
//! once with its own result, or says it cannot and refuses the rings of the
//! earlier instance (§11.2); it never dies, hangs or answers Ok with a wrong
//! result, and after the driver resets the device it serves again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use accel_driver::{
    Buffer, Device, DmaMemory, FrontendModel, OpenOptions, Request, VhostUserOptions,
    VhostUserTransport,
};
use sha2::Digest;
use support::{kill, Setup, Supervisor};
use vhost_user_accel::shared::SharedWords;
use virtio_accel_spec::Op;

/// Corrupted records tried.
const ROUNDS: u64 = 40;
/// Requests in flight at each kill.
const BATCH: usize = 4;
const INPUT: usize = 1 << 20;

/// The record memfd of the supervisor's tenant `t0`, mapped here through
/// the daemon's own [`SharedWords`] (which checks its seals and size).
struct Record(SharedWords);

impl Record {
    /// Finds the memfd among the supervisor's descriptors and maps it.
    fn open(supervisor: &Supervisor) -> Record {
        let fds = format!("/proc/{}/fd", supervisor.child.id());
        let path = std::fs::read_dir(&fds)
            .unwrap()
            .flatten()
            .map(|entry| entry.path())
            .find(|path| {
                std::fs::read_link(path)
                    .is_ok_and(|target| target.to_string_lossy().contains("record-t0"))
            })
            .expect("the supervisor holds no record of t0");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let words = usize::try_from(file.metadata().unwrap().len()).unwrap() / 8;
        Record(SharedWords::attach(OwnedFd::from(file), words).unwrap())
    }

    fn words(&self) -> usize {
        self.0.len()
    }

    // The tenant's process that writes the record is dead while the test
    // reads and writes it.
    fn read(&self, index: usize) -> u64 {
        self.0[index].load(Ordering::Relaxed)
    }

    fn write(&self, index: usize, value: u64) {
        self.0[index].store(value, Ordering::Relaxed);
    }
}

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() >> 32).unwrap() % n
    }
}

/// Overwrites one to four words of `record`: in use (non-zero) ones half
/// the time, else the header and the first words of each region; with a
/// random value, one bit flipped, zero or a small number. Returns what it
/// did, for failure messages.
fn corrupt(record: &Record, rng: &mut Rng) -> String {
    let in_use: Vec<usize> = (0..record.words())
        .filter(|&index| record.read(index) != 0)
        .collect();
    let mut done = Vec::new();
    for _ in 0..=rng.below(4) {
        let index = if rng.below(2) == 0 && !in_use.is_empty() {
            in_use[rng.below(in_use.len())]
        } else {
            rng.below(64)
        };
        let old = record.read(index);
        let new = match rng.below(4) {
            0 => rng.next(),
            1 => old ^ (1 << rng.below(64)),
            2 => 0,
            _ => u64::try_from(rng.below(300)).unwrap(),
        };
        record.write(index, new);
        done.push(format!("word {index}: {old:#x} -> {new:#x}"));
    }
    done.join(", ")
}

#[test]
fn a_corrupted_record_resumes_correctly_or_is_refused() {
    let supervisor = Supervisor::start_with(
        "record-fuzz",
        1,
        Setup {
            settings: "max-restart-pause-ms = 20\n",
            ..Setup::default()
        },
    );
    let socket = supervisor.socket("t0");
    let memory = DmaMemory::new(BATCH * INPUT + (4 << 20)).unwrap();
    let options = VhostUserOptions::of(FrontendModel::Qemu {
        forwards_reset: false,
    });
    let transport = VhostUserTransport::connect_with(&socket, &memory, &options).unwrap();
    let mut device = Device::open_with(transport, &OpenOptions::default()).unwrap();
    let object = memory.alloc(4096).unwrap();
    let inputs: Vec<_> = (0..BATCH).map(|_| memory.alloc(INPUT).unwrap()).collect();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let (mut resumed, mut refused) = (0, 0);
    for round in 0..ROUNDS {
        // An object live at the kill, for the record to keep.
        device.create_object(&[(object.gpa(), 4096)]).unwrap();
        let mut expected = Vec::new();
        let mut fences = Vec::new();
        for (token, input) in (0u64..).zip(&inputs) {
            let fill = u8::try_from((round * 7 + token) % 251).unwrap();
            let bytes = vec![fill; INPUT];
            memory.write(input, 0, &bytes).unwrap();
            expected.push(sha2::Sha256::digest(&bytes));
            let request = Request::new(Op::Sha256).input(Buffer::direct(input));
            fences.push(device.submit(0, &request, token).unwrap());
        }
        device.flush(0).unwrap();
        let mut completions = device.wait(0, Duration::from_secs(30)).unwrap();

        let pid = supervisor.tenant_pid("t0");
        kill(pid, libc::SIGKILL);
        supervisor.wait_until_gone("t0", pid);
        let next = supervisor.tenant_pid("t0");
        let record = Record::open(&supervisor);
        let corruption = corrupt(&record, &mut rng);
        drop(record);
        let refusals = supervisor.log().matches("cannot resume").count();
        device.transport_mut().reconnect(&socket, &options).unwrap();
        let refusal = || supervisor.log().matches("cannot resume").count() > refusals;
        let deadline = Instant::now() + Duration::from_secs(10);
        while completions.len() < BATCH && Instant::now() < deadline && !refusal() {
            completions.extend(device.wait(0, Duration::from_millis(50)).unwrap());
        }
        completions.extend(device.wait(0, Duration::from_millis(100)).unwrap());
        let context = format!("round {round}, {corruption}\n{}", supervisor.log());

        // Whatever came back is right, and came once.
        let mut tokens: Vec<u64> = completions.iter().map(|c| c.token).collect();
        tokens.sort_unstable();
        tokens.dedup();
        assert_eq!(tokens.len(), completions.len(), "twice: {context}");
        for completion in &completions {
            let index = usize::try_from(completion.token).unwrap();
            if completion.is_ok() {
                assert_eq!(completion.result()[..32], expected[index][..], "{context}");
                assert_eq!(completion.fence(), fences[index], "{context}");
            }
        }
        assert_eq!(
            supervisor.find_tenant_pid("t0"),
            Some(next),
            "the tenant's process died: {context}"
        );
        if refusal() {
            refused += 1;
        } else {
            // Resumed: nothing may be lost.
            assert_eq!(completions.len(), BATCH, "a request was lost: {context}");
            resumed += 1;
        }
        // A refusal, a resume, or a driver that saw the device go astray
        // (a completion it cannot match): in each case a reset serves.
        let transport = device.close().unwrap();
        device = Device::open_with(transport, &OpenOptions::default()).unwrap();
        let check = memory.alloc(9).unwrap();
        memory.write(&check, 0, b"123456789").unwrap();
        let crc = device
            .run(0, &Request::new(Op::Crc32c).input(Buffer::direct(&check)))
            .unwrap()
            .check()
            .unwrap();
        assert_eq!(crc.result_u32(), 0xe306_9283, "{context}");
    }
    eprintln!("{ROUNDS} corrupted records: {resumed} resumed, {refused} refused");
    assert!(refused > 0, "no corruption was ever caught");
}
