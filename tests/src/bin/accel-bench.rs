// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `accel-bench`: throughput of every operation through the daemon over the
//! vhost-user socket, side by side with the same jobs on the engine called
//! directly, and memcpy on the same buffer sizes as the physical limit.
//!
//! Both paths keep `--depth` jobs in flight on one queue with the same number
//! of engine threads, so their ratio is the cost of virtio, vhost-user and the
//! daemon. They run alternately, `--rounds` times each, and the medians are
//! compared, so that a slow spell of a shared machine falls on both paths
//! instead of on one. Notification counts come from the driver's transport.
//!
//! With `--pin DRIVER,ENGINE` the CPUs are laid out as under a VM: the
//! driver (a vCPU) on one CPU, the daemon (its vring thread and its engine)
//! on another, and on the direct path the submitter and the engine the same
//! way. A ratio then shows what the daemon costs on the engine's CPU.
//!
//! Then one request at a time (`--latency` of them per path and mode, 4 KiB
//! CRC-32C): the latency percentiles through the daemon and direct, waiting
//! for an interrupt (the daemon's used-buffer notification; the engine's
//! completion event) and polling (the used ring; the completion queue).

use std::error::Error;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use accel_driver::{DmaBuf, DmaMemory, Request};
use accel_tests::harness::{cpu_time, tenant, AccelDevice, Daemon};
use accel_tests::workload::{engine_job, Workload};
use accelctl::bench::{make_slots, pipeline, BenchRun, Slot, BENCH_SEED};
use accelctl::data::DataSource;
use clap::Parser;
use vhost_user_accel::engine::software::SoftwareEngine;
use vhost_user_accel::engine::vulkan::VulkanEngine;
use vhost_user_accel::engine::{Engine, HwQueue, Job, Share};
use vhost_user_accel::{Config, EngineKind, TenantConfig};
use virtio_accel_spec::Op;

#[derive(Debug, Parser)]
#[command(about = "Benchmark: daemon over vhost-user vs engine called directly vs memcpy")]
struct Args {
    /// Request sizes in bytes.
    #[arg(long, value_delimiter = ',', default_values_t = [64usize, 4096, 65536, 1 << 20])]
    sizes: Vec<usize>,
    /// Operations (names as in `accelctl`: copy, fill, compare, crc32c, sha256,
    /// aes-gcm-seal, aes-gcm-open, deflate, inflate); all by default.
    #[arg(long, value_delimiter = ',')]
    ops: Vec<String>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 0.5)]
    seconds: f64,
    /// Alternating measurements of each path per point; medians are reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Jobs kept in flight.
    #[arg(long, default_value_t = 64)]
    depth: usize,
    /// Completions the driver waits for per interrupt (default: a quarter of --depth).
    #[arg(long)]
    batch: Option<usize>,
    /// Engine worker threads (both paths).
    #[arg(long, default_value_t = 2)]
    engine_threads: usize,
    /// The engine (both paths): `software`, or `vulkan` (the first Vulkan
    /// device able to run it; the operations it does not run go to its
    /// software engine of `--engine-threads`).
    #[arg(long, default_value = "software", value_parser = ["software", "vulkan"])]
    engine: String,
    /// Measure only the path through the daemon (for profiling it); prints no ratio.
    #[arg(long)]
    daemon_only: bool,
    /// Two CPUs: the driver (and the direct path's submitter) runs on the
    /// first, the daemon and both engines on the second, as a vCPU and the
    /// host's daemon would.
    #[arg(long, value_name = "DRIVER,ENGINE", value_parser = parse_pin)]
    pin: Option<Pin>,
    /// The daemon's longest poll of its request rings after an event, in
    /// µs (`--poll-us` of the daemon; 0: it never polls).
    #[arg(long, default_value_t = vhost_user_accel::config::DEFAULT_POLL_US)]
    poll_us: u32,
    /// Lone requests per path and mode in each round of the latency
    /// measurement; 0 leaves it out.
    #[arg(long, default_value_t = 2000)]
    latency: usize,
}

/// The CPUs of `--pin`.
#[derive(Debug, Clone, Copy)]
struct Pin {
    driver: usize,
    engine: usize,
}

fn parse_pin(text: &str) -> Result<Pin, String> {
    let cpu = |part: &str| {
        part.trim()
            .parse::<usize>()
            .map_err(|e| format!("{part:?} is not a CPU number: {e}"))
    };
    let pin = match text.split(',').collect::<Vec<_>>()[..] {
        [driver, engine] => Pin {
            driver: cpu(driver)?,
            engine: cpu(engine)?,
        },
        _ => return Err(format!("{text:?} is not two CPU numbers, DRIVER,ENGINE")),
    };
    if pin.driver == pin.engine {
        // A spinning driver would then time-share the engine's CPU.
        return Err(format!(
            "{text:?}: the driver and the engine need CPUs of their own"
        ));
    }
    Ok(pin)
}

/// Binds the calling thread, and every thread it starts from now on, to
/// `cpu`.
fn pin_to(cpu: usize) -> Result<(), Box<dyn Error>> {
    let limit = usize::try_from(libc::CPU_SETSIZE).unwrap_or(0);
    if cpu >= limit {
        return Err(format!("CPU {cpu} is past the {limit} a CPU set holds").into());
    }
    // SAFETY: all zeroes is an empty `cpu_set_t`, a plain bit array.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below CPU_SETSIZE, inside the set.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; the set is a whole `cpu_set_t`
    // of the size passed, only read.
    let pinned =
        unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if pinned != 0 {
        let error = io::Error::last_os_error();
        return Err(format!("cannot run on CPU {cpu}: {error}").into());
    }
    Ok(())
}

/// The slot a cookie names.
fn slot(slots: &[Slot], cookie: u64) -> Result<&Slot, Box<dyn Error>> {
    usize::try_from(cookie)
        .ok()
        .and_then(|index| slots.get(index))
        .ok_or_else(|| format!("no slot {cookie}").into())
}

/// The direct path: `slots.len()` jobs kept in flight on `queue` for
/// `seconds`, woken once `batch` completions are pending (or the queue has
/// run all it had), as the daemon's driver asks to be.
fn direct(
    queue: &dyn HwQueue,
    workload: &Workload,
    memory: &DmaMemory,
    slots: &[Slot],
    (batch_size, seconds): (usize, f64),
) -> Result<BenchRun, Box<dyn Error>> {
    let job = |cookie: u64| -> Result<_, Box<dyn Error>> {
        engine_job(workload, memory, &slot(slots, cookie)?.1, cookie)
            .ok_or_else(|| "buffer outside guest memory".into())
    };
    let mut batch = (0..slots.len() as u64)
        .map(job)
        .collect::<Result<Vec<_>, _>>()?;
    queue.coalesce(batch_size);
    queue.submit(&mut batch)?;
    let duration = Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let (mut jobs, mut outstanding, mut stopping) = (0, slots.len(), false);
    let mut done = Vec::new();
    while outstanding > 0 {
        queue.completion_event().read()?;
        queue.reap(&mut done);
        stopping |= start.elapsed() >= duration;
        for completion in done.drain(..) {
            if !completion.outcome.status.is_ok() {
                return Err(format!("direct job failed: {:?}", completion.outcome.status).into());
            }
            jobs += 1;
            if stopping {
                outstanding -= 1;
            } else {
                batch.push(job(completion.cookie)?);
            }
        }
        queue.submit(&mut batch)?;
    }
    queue.coalesce(0);
    Ok(BenchRun {
        jobs,
        elapsed: start.elapsed(),
    })
}

/// How a lone request's completion is awaited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Await {
    /// Sleeping until the interrupt (daemon) or completion event (direct).
    Interrupt,
    /// Spinning on the used ring (daemon) or completion queue (direct).
    Poll,
}

/// How long a lone request may take before the measurement gives up.
const LONE_TIMEOUT: Duration = Duration::from_secs(10);

/// Fails once `start` is [`LONE_TIMEOUT`] ago.
fn in_time(start: Instant) -> Result<(), Box<dyn Error>> {
    if start.elapsed() > LONE_TIMEOUT {
        return Err(format!("a lone request took more than {LONE_TIMEOUT:?}").into());
    }
    Ok(())
}

/// Waits until `fd` is readable, for at most [`LONE_TIMEOUT`].
fn wait_readable(fd: RawFd) -> Result<(), Box<dyn Error>> {
    let mut pollfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let timeout = i32::try_from(LONE_TIMEOUT.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd, for the duration of the call.
    match unsafe { libc::poll(&mut pollfd, 1, timeout) } {
        1 => Ok(()),
        0 => Err(format!("no completion event in {LONE_TIMEOUT:?}").into()),
        _ => Err(io::Error::last_os_error().into()),
    }
}

/// One lone request through the daemon, from submission to completion.
fn daemon_once(
    device: &AccelDevice,
    request: &Request,
    how: Await,
) -> Result<Duration, Box<dyn Error>> {
    let start = Instant::now();
    let completion = match how {
        Await::Interrupt => device.run(0, request)?,
        Await::Poll => {
            device.submit(0, request, 0)?;
            device.flush(0)?;
            loop {
                if let Some(completion) = device.poll(0)?.pop() {
                    break completion;
                }
                in_time(start)?;
                std::hint::spin_loop();
            }
        }
    };
    let elapsed = start.elapsed();
    completion.check()?;
    Ok(elapsed)
}

/// One lone job on the engine's queue, from submission to completion.
fn direct_once(queue: &dyn HwQueue, job: Job, how: Await) -> Result<Duration, Box<dyn Error>> {
    let mut done = Vec::with_capacity(1);
    let start = Instant::now();
    queue.submit(&mut vec![job])?;
    while done.is_empty() {
        match how {
            Await::Interrupt => {
                let event = queue.completion_event();
                wait_readable(event.as_raw_fd())?;
                event.read()?;
            }
            Await::Poll => {
                in_time(start)?;
                std::hint::spin_loop();
            }
        }
        queue.reap(&mut done);
    }
    let elapsed = start.elapsed();
    match done.first() {
        Some(completion) if completion.outcome.status.is_ok() => Ok(elapsed),
        other => Err(format!("direct job failed: {other:?}").into()),
    }
}

/// The `percent` percentile of sorted `samples`, in µs.
fn percentile_us(samples: &[Duration], percent: usize) -> f64 {
    let index = (samples.len() * percent / 100).min(samples.len().saturating_sub(1));
    samples.get(index).map_or(0.0, |d| d.as_secs_f64() * 1e6)
}

/// Lone 4 KiB CRC-32C requests, `count` per path and mode in each of
/// `rounds` rounds (the paths alternate), then the percentiles side by side.
fn latency(
    device: &AccelDevice,
    queue: &dyn HwQueue,
    memory: &DmaMemory,
    data: &mut DataSource,
    count: usize,
    rounds: u32,
) -> Result<(), Box<dyn Error>> {
    let workload = Workload::new(Op::Crc32c, data.text(4096));
    let slots = make_slots(&workload, memory, 1)?;
    let (request, buffers) = slots.first().ok_or("no slot for the latency request")?;
    let job = || engine_job(&workload, memory, buffers, 0).ok_or("buffer outside guest memory");
    println!("one request at a time, 4 KiB crc32c, {count} per path and mode in each of {rounds} rounds:");
    println!(
        "{:<10} | {:>10} {:>10} | {:>10} {:>10} | {:>10} {:>10}",
        "await", "daemon p50", "p99", "direct p50", "p99", "ratio p50", "ratio p99"
    );
    for how in [Await::Interrupt, Await::Poll] {
        let (mut through, mut straight) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            for _ in 0..count {
                through.push(daemon_once(device, request, how)?);
            }
            for _ in 0..count {
                straight.push(direct_once(queue, job()?, how)?);
            }
        }
        through.sort_unstable();
        straight.sort_unstable();
        let [d50, d99, s50, s99] = [
            percentile_us(&through, 50),
            percentile_us(&through, 99),
            percentile_us(&straight, 50),
            percentile_us(&straight, 99),
        ];
        println!(
            "{:<10} | {:>8.1}µs {:>8.1}µs | {:>8.1}µs {:>8.1}µs | {:>10.2} {:>10.2}",
            format!("{how:?}").to_lowercase(),
            d50,
            d99,
            s50,
            s99,
            d50 / s50,
            d99 / s99
        );
    }
    Ok(())
}

/// The run with the median rate (the upper one of an even count).
fn median(mut runs: Vec<BenchRun>) -> BenchRun {
    runs.sort_by(|a, b| a.jobs_per_sec().total_cmp(&b.jobs_per_sec()));
    let middle = runs.len() / 2;
    runs.into_iter().nth(middle).unwrap_or(BenchRun {
        jobs: 0,
        elapsed: Duration::from_secs(1),
    })
}

/// The share of one CPU this process (the daemon's threads and both
/// engines'; this thread sleeps) uses over `seconds` with a device connected
/// and nothing submitted: what an idle guest costs the host.
fn idle_cpu_share(seconds: f64) -> Result<f64, Box<dyn Error>> {
    let pid = std::process::id();
    let (before, start) = (cpu_time(pid)?, Instant::now());
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let used = cpu_time(pid)?.saturating_sub(before);
    Ok(used.as_secs_f64() / start.elapsed().as_secs_f64())
}

/// memcpy bandwidth between two `size`-byte buffers of guest RAM, in GB/s.
fn memcpy_gbps(memory: &DmaMemory, size: usize, seconds: f64) -> Result<f64, Box<dyn Error>> {
    let (src, dst) = (memory.alloc(size.max(1))?, memory.alloc(size.max(1))?);
    let host = |buf: &DmaBuf| {
        memory
            .host_address(buf.gpa())
            .ok_or("buffer outside guest memory")
    };
    let (from, to) = (host(&src)? as *const u8, host(&dst)? as *mut u8);
    let start = Instant::now();
    let mut copies = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        for _ in 0..64 {
            // SAFETY: both are distinct live `size`-byte allocations of the
            // mapped guest RAM, which `memory` keeps mapped.
            unsafe { std::ptr::copy_nonoverlapping(std::hint::black_box(from), to, size) };
        }
        copies += 64;
    }
    Ok(copies as f64 * size as f64 / start.elapsed().as_secs_f64() / 1e9)
}

fn selected_ops(names: &[String]) -> Result<Vec<Op>, String> {
    if names.is_empty() {
        return Ok(Op::ALL.to_vec());
    }
    names
        .iter()
        .map(|name| {
            Op::ALL
                .iter()
                .copied()
                .find(|op| op.name() == name)
                .ok_or_else(|| format!("unknown operation {name:?}"))
        })
        .collect()
}

fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    let ops = selected_ops(&args.ops)?;
    let largest = args.sizes.iter().copied().max().unwrap_or(0);
    // Threads keep the CPUs of the thread that starts them: the daemon and
    // both engines start on the engine's CPU, then this thread moves.
    if let Some(pin) = args.pin {
        pin_to(pin.engine)?;
    }
    let vulkan = args.engine == "vulkan";
    let config = Config {
        engine: if vulkan {
            EngineKind::Vulkan
        } else {
            EngineKind::Software
        },
        engine_threads: args.engine_threads,
        ..Config::with_tenants(vec![TenantConfig {
            poll_us: args.poll_us,
            ..tenant("bench")
        }])
    };
    let daemon = Daemon::start_config(config).remove(0);
    let ram = (args.depth * (3 * largest + largest / 4 + 8192)).div_ceil(1 << 20) + 64;
    let memory = accel_tests::harness::guest_ram(ram);
    let device = daemon.connect(&memory);
    let software = SoftwareEngine::new(args.engine_threads)?;
    let engine: Box<dyn Engine> = if vulkan {
        Box::new(VulkanEngine::with_software(None, software)?)
    } else {
        Box::new(software)
    };
    let queue = engine.create_queue(args.depth, Share::default())?;
    if let Some(Pin { driver, engine }) = args.pin {
        pin_to(driver)?;
        println!("pinned: the driver on CPU {driver}, the daemon and the engines on CPU {engine}");
    }
    // The data `accelctl bench` uses, so both report on the same jobs.
    let mut data = DataSource::new(BENCH_SEED);
    let duration = Duration::from_secs_f64(args.seconds);

    println!(
        "engine {} ({} threads), daemon polls up to {} µs, depth {}, driver batch {}, median of {} alternating runs of {:.1} s per path and point; GB/s counts the job's input bytes",
        engine.name(),
        args.engine_threads,
        args.poll_us,
        args.depth,
        args.batch.unwrap_or(args.depth / 4).max(1),
        args.rounds,
        args.seconds
    );
    if !args.daemon_only {
        // Ticks of 10 ms: 3 s tell a share of 0.33 % apart from none.
        println!(
            "idle: a device connected, nothing submitted: {:.2} % of a CPU over 3 s",
            100.0 * idle_cpu_share(3.0)?
        );
        println!("memcpy on guest RAM (physical limit):");
        for &size in &args.sizes {
            println!(
                "  {:>8} B: {:>7.2} GB/s",
                size,
                memcpy_gbps(&memory, size, args.seconds)?
            );
        }
    }
    println!(
        "{:<13} {:>8} | {:>11} {:>8} | {:>11} {:>8} | {:>6} | {:>8} {:>8}",
        "op", "size", "daemon j/s", "GB/s", "direct j/s", "GB/s", "ratio", "irq/req", "kick/req"
    );
    for op in ops {
        for &size in &args.sizes {
            let workload = Workload::new(op, data.text(size));
            let slots = make_slots(&workload, &memory, args.depth)?;
            let before = device.transport().queue_stats(1).unwrap_or_default();
            let batch = args.batch.unwrap_or(args.depth / 4).max(1);
            let (mut daemon_runs, mut direct_runs) = (Vec::new(), Vec::new());
            for _ in 0..args.rounds {
                daemon_runs.push(pipeline(&device, 0, &slots, batch, duration)?);
                if !args.daemon_only {
                    direct_runs.push(direct(
                        queue.as_ref(),
                        &workload,
                        &memory,
                        &slots,
                        (batch, args.seconds),
                    )?);
                }
            }
            // Collect interrupts the driver did not need to wait for.
            let _ = accel_driver::Transport::wait_interrupt(
                device.transport(),
                1,
                Some(Duration::ZERO),
            );
            let after = device.transport().queue_stats(1).unwrap_or_default();
            let daemon_jobs: u64 = daemon_runs.iter().map(|run| run.jobs).sum();
            let through = median(daemon_runs);
            let straight = median(direct_runs);
            let per_request = |n: u64| n as f64 / daemon_jobs as f64;
            println!(
                "{:<13} {:>8} | {:>11.0} {:>8.3} | {:>11.0} {:>8.3} | {:>6.3} | {:>8.3} {:>8.3}",
                op.name(),
                size,
                through.jobs_per_sec(),
                through.gb_per_sec(workload.bytes),
                straight.jobs_per_sec(),
                straight.gb_per_sec(workload.bytes),
                through.jobs_per_sec() / straight.jobs_per_sec(),
                per_request(after.interrupts - before.interrupts),
                per_request(after.kicks - before.kicks),
            );
        }
    }
    if args.latency > 0 && !args.daemon_only {
        latency(
            &device,
            queue.as_ref(),
            &memory,
            &mut data,
            args.latency,
            args.rounds,
        )?;
    }
    Ok(())
}
