// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `accelctl`'s commands as a library, against the daemon over vhost-user:
//! the self-test passes on a correct device, `run` cuts large inputs into
//! pieces the device accepts and puts them back together (multi-member gzip
//! included), reports the device's refusals, `bench` measures, and `chain`
//! runs its fence-chained rounds and refuses a device without objects or
//! fences.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use accel_driver::{
    feature, FrontendModel, OpenOptions, VhostUserOptions, VhostUserTransport, DEFAULT_FEATURES,
};
use accel_tests::data::TestRng;
use accel_tests::harness::{guest_ram, AccelDevice, Daemon};
use accel_tests::reference;
use accelctl::data::DataSource;
use accelctl::run::{execute, Error, Output, RunOp};
use accelctl::selftest::{CheckOutcome, SelfTest, SIZES};
use accelctl::{bench, chain, report};
use virtio_accel_spec::{DeflateFormat, Op, Status, VIRTIO_ACCEL_F_FENCES, VIRTIO_ACCEL_F_OBJECTS};

/// A daemon whose requests take at most `limit` bytes per buffer.
fn daemon_with_limit(limit: u64) -> Daemon {
    Daemon::start_with(|config| {
        config.request_queues = 2;
        config.limits.max_buffer_size = limit;
    })
}

fn data(output: &Output) -> &[u8] {
    output.data.as_deref().unwrap_or_default()
}

/// Splits a multi-member gzip file with the reference decoder.
fn gzip_members(mut file: &[u8]) -> Vec<Vec<u8>> {
    let mut members = Vec::new();
    while !file.is_empty() {
        let member = reference::decompress_prefix(DeflateFormat::Gzip, file, usize::MAX).unwrap();
        members.push(member.data);
        file = &file[member.consumed..];
    }
    members
}

/// Every check runs and passes, through each VMM's messages: cloud-hypervisor
/// passes on no device feature bits, so objects and fences come from the
/// CAPABILITIES command there (§3, §7.5).
#[test]
fn selftest_passes_every_check_on_the_daemon() {
    for model in [
        FrontendModel::Own,
        FrontendModel::Qemu {
            forwards_reset: false,
        },
        FrontendModel::CloudHypervisor,
    ] {
        selftest_passes_every_check(model);
    }
}

fn selftest_passes_every_check(model: FrontendModel) {
    let daemon = Daemon::start_with(|config| config.request_queues = 2);
    let memory = guest_ram(64);
    let options = VhostUserOptions::of(model);
    let transport = VhostUserTransport::connect_with(daemon.socket(), &memory, &options).unwrap();
    let device = AccelDevice::open_with(transport, &OpenOptions::default()).unwrap();
    let passed = model != FrontendModel::CloudHypervisor;
    assert_eq!(
        device.has_feature(VIRTIO_ACCEL_F_OBJECTS),
        passed,
        "{model:?} passes on the device's feature bits"
    );
    let mut data = DataSource::new(TestRng::new("selftest").seed());
    let mut seen = 0;
    let report = SelfTest::new(&device, &mut data)
        .run(|_| seen += 1)
        .unwrap();
    let not_passed: Vec<_> = report
        .checks
        .iter()
        .filter(|c| c.outcome != CheckOutcome::Passed)
        .collect();
    assert!(not_passed.is_empty(), "{model:?}: {not_passed:#?}");
    // Every operation at every size, then objects and fences.
    assert_eq!(report.checks.len(), Op::ALL.len() * SIZES.len() + 3);
    assert_eq!(seen, report.checks.len());
    assert!(report.passed(true));
}

#[test]
fn selftest_lists_what_it_cannot_check_and_strict_makes_that_a_failure() {
    // Below the 64 KiB the fence check would use: it runs with less.
    const LIMIT: u64 = 16 * 1024;
    let daemon = daemon_with_limit(LIMIT);
    let device = daemon.connect(&guest_ram(64));
    let mut data = DataSource::new(TestRng::new("selftest-skips").seed());
    let report = SelfTest::new(&device, &mut data).run(|_| ()).unwrap();
    // Every operation at every size is listed, those over the limit as not
    // run, with the reason.
    assert_eq!(report.checks.len(), Op::ALL.len() * SIZES.len() + 3);
    // With deflate's output room, these need more than 16 KiB.
    let over = [65536, (1 << 20) - 3];
    assert_eq!(report.skips(), Op::ALL.len() * over.len());
    for check in &report.checks {
        let too_large = over
            .iter()
            .any(|size| check.name.ends_with(&format!(" {size} B")));
        match &check.outcome {
            CheckOutcome::Skipped(why) => {
                assert!(too_large, "{} not run: {why}", check.name);
                assert!(why.contains("max_buffer_size"), "{why}");
            }
            outcome => assert!(!too_large && *outcome == CheckOutcome::Passed, "{check:?}"),
        }
    }
    assert_eq!(report.failures(), 0);
    assert!(report.passed(false));
    assert!(
        !report.passed(true),
        "--strict must fail a run with checks not run"
    );
}

#[test]
fn selftest_lists_object_and_fence_checks_as_not_run_without_the_features() {
    let daemon = Daemon::start_with(|config| config.request_queues = 2);
    let without = feature(VIRTIO_ACCEL_F_OBJECTS) | feature(VIRTIO_ACCEL_F_FENCES);
    let device = daemon.connect_with(&guest_ram(64), DEFAULT_FEATURES & !without);
    let mut data = DataSource::new(TestRng::new("selftest-features").seed());
    let report = SelfTest::new(&device, &mut data).run(|_| ()).unwrap();
    let (ops, rest) = report.checks.split_at(Op::ALL.len() * SIZES.len());
    assert!(
        ops.iter().all(|c| c.outcome == CheckOutcome::Passed),
        "{ops:#?}"
    );
    assert_eq!(rest.len(), 3);
    for check in rest {
        assert!(
            matches!(&check.outcome, CheckOutcome::Skipped(why) if why.contains("not enabled")),
            "{check:?}"
        );
    }
    assert!(report.passed(false));
    assert!(!report.passed(true));
}

#[test]
fn large_inputs_are_cut_into_pieces_and_put_back_together() {
    const LIMIT: usize = 64 * 1024;
    let daemon = daemon_with_limit(LIMIT as u64);
    let device = daemon.connect(&guest_ram(64));
    let mut rng = TestRng::new("accelctl-pieces");
    let text = rng.text(5 * LIMIT + 1234);

    let copied = execute(&device, 0, &RunOp::Copy, std::slice::from_ref(&text)).unwrap();
    assert!(data(&copied) == text.as_slice(), "copy in pieces differs");

    let crc = execute(
        &device,
        1,
        &RunOp::Crc32c { seed: 7 },
        std::slice::from_ref(&text),
    )
    .unwrap();
    assert_eq!(crc.summary, format!("{:08x}", reference::crc32c(7, &text)));

    let fill = RunOp::Fill {
        pattern: 0xa5,
        len: 3 * LIMIT + 5,
    };
    let filled = execute(&device, 0, &fill, &[]).unwrap();
    assert!(data(&filled).len() == 3 * LIMIT + 5 && data(&filled).iter().all(|&b| b == 0xa5));

    // gzip: one member per piece, and inflate walks the members back.
    let deflate = RunOp::Deflate {
        format: DeflateFormat::Gzip,
        level: 6,
    };
    let packed = execute(&device, 0, &deflate, std::slice::from_ref(&text)).unwrap();
    let members = gzip_members(data(&packed));
    assert_eq!(members.len(), 6, "one member per 64 KiB piece");
    assert!(members.concat() == text, "members decode to other data");
    let inflate = RunOp::Inflate {
        format: DeflateFormat::Gzip,
        max_output: usize::MAX,
    };
    let unpacked = execute(&device, 1, &inflate, &[data(&packed).to_vec()]).unwrap();
    assert!(
        data(&unpacked) == text.as_slice(),
        "multi-member inflate differs"
    );
}

#[test]
fn operations_that_cannot_be_cut_refuse_inputs_over_the_limit() {
    let daemon = daemon_with_limit(4096);
    let device = daemon.connect(&guest_ram(16));
    let big = vec![1u8; 4097];
    for job in [
        RunOp::Sha256,
        RunOp::Deflate {
            format: DeflateFormat::Zlib,
            level: 1,
        },
    ] {
        match execute(&device, 0, &job, std::slice::from_ref(&big)) {
            // Deflate's limit leaves room for the stream's growth.
            Err(Error::TooLarge { len, limit, .. }) => {
                assert!(len == 4097 && limit <= 4096, "{job:?}: {len} {limit}")
            }
            other => panic!("{job:?}: {other:?}"),
        }
    }
    let fits = execute(&device, 0, &RunOp::Sha256, &[big[..4096].to_vec()]).unwrap();
    assert_eq!(
        fits.summary,
        accelctl::run::hex(&reference::sha256(&big[..4096]))
    );
}

#[test]
fn streams_that_cannot_be_cut_and_odd_gzip_files() {
    const LIMIT: usize = 64 * 1024;
    let daemon = daemon_with_limit(LIMIT as u64);
    let device = daemon.connect(&guest_ram(16));
    let mut rng = TestRng::new("accelctl-streams");
    // zlib between the deflate piece and the limit: one stream or nothing,
    // never several streams glued together.
    let zlib = |level| RunOp::Deflate {
        format: DeflateFormat::Zlib,
        level,
    };
    let text = rng.text(60_000);
    assert!(matches!(
        execute(&device, 0, &zlib(6), std::slice::from_ref(&text)),
        Err(Error::TooLarge { len: 60_000, .. })
    ));
    let text = rng.text(50_000);
    let packed = execute(&device, 0, &zlib(6), std::slice::from_ref(&text)).unwrap();
    let decoded = reference::decompress(DeflateFormat::Zlib, data(&packed)).unwrap();
    assert!(decoded == text, "zlib stream decodes to other data");

    let gzip = |max_output| RunOp::Inflate {
        format: DeflateFormat::Gzip,
        max_output,
    };
    // A small output budget: no panic, the data or a clear refusal.
    let small = reference::compress(DeflateFormat::Gzip, 6, &text[..500]);
    let out = execute(&device, 0, &gzip(1000), std::slice::from_ref(&small)).unwrap();
    assert_eq!(data(&out), &text[..500]);
    let two: Vec<u8> = [small.clone(), small.clone()].concat();
    assert!(matches!(
        execute(&device, 0, &gzip(700), &[two]),
        Err(Error::OutputLimit(_))
    ));
    // Zero padding after the last member is ignored, as by gzip -d.
    let mut padded = small.clone();
    padded.extend([0; 100]);
    let out = execute(&device, 0, &gzip(usize::MAX), &[padded]).unwrap();
    assert_eq!(data(&out), &text[..500]);
    assert!(
        out.summary
            .ends_with("(100 bytes after the stream ignored)"),
        "{}",
        out.summary
    );
    // A member longer than one request may read.
    let incompressible = rng.bytes(LIMIT + 10);
    let big = reference::compress(DeflateFormat::Gzip, 0, &incompressible);
    assert!(matches!(
        execute(&device, 0, &gzip(usize::MAX), &[big]),
        Err(Error::MemberTooLarge(LIMIT))
    ));
}

#[test]
fn run_reports_results_and_refusals() {
    let daemon = Daemon::start();
    let device = daemon.connect(&guest_ram(16));
    let (key, iv, aad) = ([3u8; 32], [4u8; 12], b"header".to_vec());
    let plain = b"attack at dawn".to_vec();
    let seal = RunOp::Seal {
        key,
        iv,
        aad: aad.clone(),
    };
    let sealed = execute(&device, 0, &seal, std::slice::from_ref(&plain)).unwrap();
    let (cipher, tag) = reference::aes256_gcm_seal(&key, &iv, &aad, &plain);
    assert_eq!(data(&sealed), cipher.as_slice());
    assert_eq!(sealed.summary, format!("tag {}", accelctl::run::hex(&tag)));
    let open = |tag| RunOp::Open {
        key,
        iv,
        tag,
        aad: aad.clone(),
    };
    let opened = execute(&device, 0, &open(tag), std::slice::from_ref(&cipher)).unwrap();
    assert_eq!(data(&opened), plain.as_slice());
    let mut forged = tag;
    forged[15] ^= 0x80;
    match execute(&device, 0, &open(forged), &[cipher]) {
        Err(Error::Device(e)) => assert_eq!(e.status(), Some(Status::AuthFailed)),
        other => panic!("forged tag: {other:?}"),
    }

    let a = b"same prefix, then x".to_vec();
    let mut b = a.clone();
    b[17] = b'y';
    let differ = execute(&device, 0, &RunOp::Compare, &[a.clone(), b]).unwrap();
    assert_eq!(
        (differ.summary.as_str(), differ.same),
        ("differ at byte 17", false)
    );
    let equal = execute(&device, 0, &RunOp::Compare, &[a.clone(), a.clone()]).unwrap();
    assert_eq!((equal.summary.as_str(), equal.same), ("equal", true));
    assert!(matches!(
        execute(&device, 0, &RunOp::Compare, &[a]),
        Err(Error::Inputs {
            expected: 2,
            given: 1,
            ..
        })
    ));

    // Decoded data beyond --max-output: refused after growing to the limit.
    let packed = reference::compress(DeflateFormat::Raw, 9, &[0u8; 100_000]);
    let inflate = RunOp::Inflate {
        format: DeflateFormat::Raw,
        max_output: 50_000,
    };
    assert!(matches!(
        execute(&device, 0, &inflate, &[packed]),
        Err(Error::OutputLimit(50_000))
    ));
}

#[test]
fn bench_measures_every_point_it_is_asked_for() {
    let daemon = Daemon::start();
    let device = daemon.connect(&guest_ram(64));
    let options = bench::BenchOptions {
        ops: vec![Op::Crc32c, Op::DeflateDecompress],
        sizes: vec![64, 65536],
        duration: std::time::Duration::from_millis(50),
        depth: 32,
        batch: 8,
        queue: 0,
    };
    let mut progress = Vec::new();
    let points = bench::measure(
        &device,
        &options,
        &mut DataSource::new(1),
        |n, total, op, size| {
            progress.push((n, total, op, size));
        },
    )
    .unwrap();
    assert_eq!(progress.len(), 4);
    assert_eq!(progress[3], (4, 4, Op::DeflateDecompress, 65536));
    for point in &points {
        assert!(point.run.jobs >= point.depth as u64, "{point:?}");
        assert_eq!(point.depth, 32);
    }
    assert!(report::describe_device(&device).contains("crc32c"));
}

/// Chains longer than a queue's share and across every queue (runs of
/// `chain::RUN`, FENCE_QUERY before naming another queue's fence), under
/// both ways of enabling objects and fences: each round checks itself (every
/// OPEN's tag, the first object's bytes, fences as predicted).
#[test]
fn chain_rounds_pass_across_queues() {
    for model in [FrontendModel::Own, FrontendModel::CloudHypervisor] {
        let daemon = Daemon::start_with(|config| config.request_queues = 3);
        let memory = guest_ram(64);
        let options = VhostUserOptions::of(model);
        let transport =
            VhostUserTransport::connect_with(daemon.socket(), &memory, &options).unwrap();
        let device = AccelDevice::open_with(transport, &OpenOptions::default()).unwrap();
        let options = chain::ChainOptions {
            jobs: 5 * chain::RUN + 1,
            size: 4096,
            duration: std::time::Duration::ZERO,
            rounds: None,
        };
        let mut rounds = Vec::new();
        let summary = chain::run(&device, &options, &mut DataSource::new(7), |round| {
            rounds.push(round);
        })
        .unwrap();
        assert_eq!(rounds, [1], "{model:?}");
        assert_eq!(summary.rounds, 1);
        assert_eq!(summary.jobs, 2 * 21);
        assert_eq!(summary.size, 4096);
        // Both objects were destroyed at the end: the next run gets handles
        // again and passes, as many rounds as asked for however long.
        let options = chain::ChainOptions {
            rounds: Some(2),
            duration: std::time::Duration::from_secs(3600),
            ..options
        };
        let summary = chain::run(&device, &options, &mut DataSource::new(8), |_| ()).unwrap();
        assert_eq!(summary.rounds, 2, "{model:?}");
    }
}

#[test]
fn chain_refuses_a_device_without_fences() {
    let daemon = Daemon::start();
    let device = daemon.connect_with(
        &guest_ram(64),
        DEFAULT_FEATURES & !feature(VIRTIO_ACCEL_F_FENCES),
    );
    let options = chain::ChainOptions {
        jobs: 4,
        size: 64,
        duration: std::time::Duration::ZERO,
        rounds: None,
    };
    let error = chain::run(&device, &options, &mut DataSource::new(1), |_| ()).unwrap_err();
    assert!(
        matches!(error, chain::Error::Missing("FENCES")),
        "{error:?}"
    );
}
