//! `accel-fairness`: how the daemon shares the host between tenants, each
//! served by a process of its own, over real vhost-user sockets. It runs the
//! daemon's binary (`vhost-user-accel` beside this program, or
//! `ACCEL_DAEMON_BIN`): build both with
//! `cargo build --release -p vhost-user-accel -p accel-tests`.
//!
//! 1. **Scale**: `--scale` VMs connected to one daemon at once, each having
//!    run a job and holding an object; prints the private memory (RssAnon:
//!    heap and stacks, not the guest RAM mappings, which are shared memory)
//!    of the supervisor and every tenant's process together, per tenant.
//! 2. **Equal tenants**: `--tenants` VMs each keep a queue of 64 KiB copies
//!    full for `--seconds`; prints each one's jobs/s and Jain's fairness
//!    index of their throughputs (1 is perfectly fair), for each of
//!    `--rounds` runs, and the median index.
//! 3. **Flood and victim**: a victim sends 4 KiB CRC-32C jobs one at a time,
//!    alone and then while another tenant floods 1 MiB copies, `--rounds`
//!    times alternately; prints the victim's latency percentiles in each run
//!    and the ratio of the median p99s, so that a slow spell of a shared
//!    machine does not decide it.

use std::error::Error;
use std::time::{Duration, Instant};

use accel_driver::{Buffer, Request};
use accel_tests::harness::{guest_ram, rss_anon, AccelDevice, Daemon, DaemonProcess};
use accel_tests::workload::Workload;
use accelctl::bench::{make_slots, pipeline, BENCH_SEED};
use accelctl::data::DataSource;
use clap::Parser;
use virtio_accel_spec::Op;

#[derive(Debug, Parser)]
#[command(about = "Benchmark: fairness between tenants of one daemon")]
struct Args {
    /// Equal tenants in the first measurement.
    #[arg(long, default_value_t = 4)]
    tenants: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Engine worker threads.
    #[arg(long, default_value_t = 2)]
    engine_threads: usize,
    /// Tenants connected at once in the scale measurement.
    #[arg(long, default_value_t = 64)]
    scale: usize,
    /// Runs of the first two measurements; medians are compared.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
}

/// The median of `values` (the upper one of an even count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Jain's fairness index of `values`.
fn jain(values: &[f64]) -> f64 {
    let sum: f64 = values.iter().sum();
    let squares: f64 = values.iter().map(|v| v * v).sum();
    sum * sum / (values.len() as f64 * squares)
}

/// Keeps a queue of `size`-byte `op` jobs `depth` deep for `seconds`.
fn saturate(
    daemon: &Daemon,
    op: Op,
    size: usize,
    depth: usize,
    seconds: f64,
) -> Result<f64, String> {
    let workload = Workload::new(op, DataSource::new(BENCH_SEED).text(size));
    let memory = guest_ram((depth * 3 * size).div_ceil(1 << 20) + 16);
    let device = daemon.connect(&memory);
    let slots = make_slots(&workload, &memory, depth).map_err(|e| e.to_string())?;
    let batch = (depth / 4).max(1);
    let run = pipeline(&device, 0, &slots, batch, Duration::from_secs_f64(seconds))
        .map_err(|e| e.to_string())?;
    device.into_transport().disconnect();
    Ok(run.jobs_per_sec())
}

fn equal_tenants(args: &Args) -> Result<(), Box<dyn Error>> {
    let names: Vec<String> = (0..args.tenants).map(|i| format!("equal{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let (_daemon, tenants) = DaemonProcess::start(&names, args.engine_threads)?;
    println!(
        "2. {} equal tenants, 64 KiB copies, 16 deep each (jobs/s):",
        args.tenants
    );
    let mut indices = Vec::new();
    for round in 1..=args.rounds {
        let rates: Vec<f64> = std::thread::scope(|scope| {
            let runs: Vec<_> = tenants
                .iter()
                .map(|t| scope.spawn(|| saturate(t, Op::Copy, 65536, 16, args.seconds)))
                .collect();
            runs.into_iter()
                .map(|run| run.join().map_err(|_| String::from("panicked"))?)
                .collect::<Result<_, String>>()
        })?;
        let each: Vec<String> = rates.iter().map(|rate| format!("{rate:.0}")).collect();
        println!(
            "   run {round}: {} (total {:.0}), Jain index {:.4}",
            each.join(" "),
            rates.iter().sum::<f64>(),
            jain(&rates)
        );
        indices.push(jain(&rates));
    }
    println!("   median Jain fairness index {:.4}", median(indices));
    Ok(())
}

/// Latencies of `size`-byte CRC-32C jobs run one at a time for `seconds`.
fn latencies(device: &AccelDevice, seconds: f64) -> Result<Vec<Duration>, Box<dyn Error>> {
    let memory = device.memory();
    let buf = memory.alloc(4096)?;
    memory.write(&buf, 0, &DataSource::new(BENCH_SEED).text(4096))?;
    let request = Request::new(Op::Crc32c).input(Buffer::direct(&buf));
    let mut samples = Vec::new();
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < seconds {
        let sent = Instant::now();
        device.run(0, &request)?.check()?;
        samples.push(sent.elapsed());
    }
    samples.sort_unstable();
    Ok(samples)
}

fn percentile(sorted: &[Duration], per_mille: usize) -> Duration {
    let index = (sorted.len() * per_mille / 1000).min(sorted.len().saturating_sub(1));
    sorted.get(index).copied().unwrap_or_default()
}

/// The victim's latencies while `flood` keeps 1 MiB copies 16 deep, and the
/// flood's rate.
fn flooded(
    victim: &AccelDevice,
    flood: &Daemon,
    seconds: f64,
) -> Result<(Vec<Duration>, f64), Box<dyn Error>> {
    std::thread::scope(|scope| {
        let flood = scope.spawn(|| saturate(flood, Op::Copy, 1 << 20, 16, seconds + 0.4));
        std::thread::sleep(Duration::from_millis(200));
        let measured = latencies(victim, seconds);
        let rate = flood.join().map_err(|_| "flood panicked")??;
        Ok((measured?, rate))
    })
}

fn print_latencies(label: &str, samples: &[Duration]) {
    println!(
        "   {label:<20} {:>8} {:>10.1?} {:>10.1?} {:>10.1?}",
        samples.len(),
        percentile(samples, 500),
        percentile(samples, 990),
        percentile(samples, 999)
    );
}

fn flood_and_victim(args: &Args) -> Result<(), Box<dyn Error>> {
    let (_daemon, tenants) = DaemonProcess::start(&["victim", "flood"], args.engine_threads)?;
    let memory = guest_ram(16);
    let victim = tenants[0].connect(&memory);
    println!("3. victim: 4 KiB CRC-32C one at a time; flood: 1 MiB copies, 16 deep");
    println!(
        "   {:<20} {:>8} {:>10} {:>10} {:>10}",
        "", "jobs", "p50", "p99", "p99.9"
    );
    let (mut solo_p99, mut flooded_p99) = (Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        let solo = latencies(&victim, args.seconds)?;
        print_latencies(&format!("run {round} solo"), &solo);
        let (under_flood, rate) = flooded(&victim, &tenants[1], args.seconds)?;
        print_latencies(&format!("run {round} flooded"), &under_flood);
        println!("   {:<20} flood {rate:.0} jobs/s", "");
        solo_p99.push(percentile(&solo, 990).as_secs_f64());
        flooded_p99.push(percentile(&under_flood, 990).as_secs_f64());
    }
    let (solo, flooded) = (median(solo_p99), median(flooded_p99));
    println!(
        "   median p99: solo {:.1} µs, flooded {:.1} µs; flooded / solo: {:.2}",
        solo * 1e6,
        flooded * 1e6,
        flooded / solo
    );
    Ok(())
}

/// Private resident memory of the daemon: the supervisor and every
/// tenant's process.
fn daemon_memory(daemon: &DaemonProcess) -> Result<u64, String> {
    daemon
        .pids()
        .iter()
        .map(|pid| rss_anon(&pid.to_string()))
        .sum()
}

fn scale(args: &Args) -> Result<(), Box<dyn Error>> {
    let names: Vec<String> = (0..args.scale).map(|i| format!("vm{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let (process, tenants) = DaemonProcess::start(&names, args.engine_threads)?;
    std::thread::sleep(Duration::from_millis(500));
    let before = daemon_memory(&process)?;
    let mut vms = Vec::new();
    for daemon in &tenants {
        let memory = guest_ram(4);
        let device = daemon.connect(&memory);
        let buf = memory.alloc(4096)?;
        let handle = device.create_object(&[(buf.gpa(), 4096)])?;
        let request = Request::new(Op::Sha256).input(Buffer::object(handle, 0, 4096));
        device.run(0, &request)?.check()?;
        vms.push((device, memory));
    }
    let after = daemon_memory(&process)?;
    let per_tenant = after as f64 / args.scale as f64;
    println!(
        "1. {} tenants connected at once: the daemon's private memory (supervisor and \
         {} tenant processes) {:.1} MiB before connecting, {:.1} MiB after; {:.2} MiB per tenant",
        args.scale,
        process.pids().len().saturating_sub(1),
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        per_tenant / 1048576.0
    );
    for (device, _) in vms {
        device.into_transport().disconnect();
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    println!(
        "engine threads {}, {:.1} s per measurement, {} rounds",
        args.engine_threads, args.seconds, args.rounds
    );
    scale(&args)?;
    equal_tenants(&args)?;
    flood_and_victim(&args)?;
    Ok(())
}
