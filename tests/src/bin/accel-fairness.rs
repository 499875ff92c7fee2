// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
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
//! 2. **Equal tenants**: `--tenants` VMs, connected and ready, start
//!    together and each keep a queue of 64 KiB copies full for `--seconds`;
//!    prints each one's jobs/s and Jain's fairness index of their
//!    throughputs (1 is perfectly fair), for each of `--rounds` runs, and the
//!    median index. Under each run: the CPU time each tenant's process got
//!    (in CPUs), which tells the host scheduler's share apart from what a
//!    tenant made of it.
//! 3. **Flood and victim**: a victim sends 4 KiB CRC-32C jobs one at a time,
//!    alone and then while another tenant floods 1 MiB copies, `--rounds`
//!    times alternately; prints the victim's latency percentiles in each run
//!    and the ratio of the median p99s, so that a slow spell of a shared
//!    machine does not decide it.
//!
//! The VMs' guests are threads of this program, one per VM. They run at
//! real-time priority (`SCHED_FIFO` 1, where the program may set it: as
//! root) so that a guest never waits for a CPU behind the daemon's threads or
//! another guest: as a VM's vCPU has CPU time of its own, the rates and
//! latencies are then the daemon's, not this program's scheduling. (At
//! normal priority a guest thread that woke on a CPU busy with engine work
//! could wait milliseconds for it each time, its queue ran dry, and its VM
//! got a tenth of another's rate or less for reasons of the client alone.)
//! The output says which, and how long the guests waited for a CPU. Every
//! equal tenant connects and fills its queue before any starts, so that all
//! measure the same span of time.

use std::error::Error;
use std::io;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use accel_driver::{Buffer, Request};
use accel_tests::harness::{cpu_time, guest_ram, rss_anon, AccelDevice, Daemon, DaemonProcess};
use accel_tests::workload::Workload;
use accelctl::bench::{make_slots, pipeline, Slot, BENCH_SEED};
use accelctl::data::DataSource;
use clap::Parser;
use virtio_accel_spec::Op;

#[derive(Debug, Parser)]
#[command(about = "Benchmark: fairness between tenants of one daemon")]
struct Args {
    /// Equal tenants in the first measurement.
    #[arg(long, default_value_t = 4)]
    tenants: usize,
    /// Seconds per measurement (a tenant's rate over a short run depends
    /// much on where the scheduler happened to put its threads).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// The daemon's `engine-threads`: engine workers per tenant (it runs
    /// fewer when tenants would together outnumber the CPUs).
    #[arg(long, default_value_t = 2)]
    engine_threads: usize,
    /// Tenants connected at once in the scale measurement.
    #[arg(long, default_value_t = 64)]
    scale: usize,
    /// The daemon's `poll-us`: its tenants' longest poll of their request
    /// rings after an event (0: they never poll).
    #[arg(long, default_value_t = vhost_user_accel::config::DEFAULT_POLL_US)]
    poll_us: u32,
    /// The daemon's `engine`: `software`, or `vulkan` (each tenant's
    /// process opens the first able Vulkan device; COPY runs there).
    #[arg(long, default_value = "software", value_parser = ["software", "vulkan"])]
    engine: String,
    /// Runs of the last two measurements; medians are compared.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
}

impl Args {
    /// The daemon's configuration, but for its tenants.
    fn daemon_settings(&self) -> String {
        format!(
            "engine = \"{}\"\nengine-threads = {}\npoll-us = {}",
            self.engine, self.engine_threads, self.poll_us
        )
    }
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

/// Puts the calling thread, a guest of the benchmark, at real-time priority
/// (`SCHED_FIFO` 1); threads and processes it starts would not inherit it.
fn raise_guest_priority() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: changes the scheduling policy of the calling thread only, with
    // a valid parameter that outlives the call.
    let rc = unsafe {
        libc::sched_setscheduler(0, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &param)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Runs `work` on a guest thread of its own, at the guests' priority.
fn as_guest<T: Send>(work: impl FnOnce() -> T + Send) -> Result<T, String> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let _ = raise_guest_priority();
                work()
            })
            .join()
            .map_err(|_| String::from("a guest thread panicked"))
    })
}

/// Whether guests run at real-time priority, for the output.
fn guest_priority() -> String {
    match as_guest(raise_guest_priority) {
        Ok(Ok(())) => String::from(
            "guests: a thread per VM at real-time priority (SCHED_FIFO 1), never waiting \
             behind the daemon: the rates are the daemon's",
        ),
        Ok(Err(e)) => format!(
            "guests: a thread per VM at normal priority (real-time refused: {e}): \
             the guests' own scheduling may decide the rates"
        ),
        Err(e) => e,
    }
}

/// How long the calling thread has waited on a run queue for a CPU.
fn cpu_wait() -> Duration {
    let schedstat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let waited = schedstat
        .split_whitespace()
        .nth(1)
        .and_then(|ns| ns.parse().ok());
    Duration::from_nanos(waited.unwrap_or(0))
}

/// A VM that keeps a queue of `size`-byte `op` jobs `depth` deep.
struct Loader {
    device: AccelDevice,
    slots: Vec<Slot>,
}

/// What one [`Loader`] achieved.
struct Load {
    jobs_per_sec: f64,
    /// Share of the run its thread spent waiting for a CPU.
    waited: f64,
}

impl Loader {
    /// Connects a VM to `daemon` and prepares its jobs.
    fn connect(daemon: &Daemon, op: Op, size: usize, depth: usize) -> Result<Self, String> {
        let workload = Workload::new(op, DataSource::new(BENCH_SEED).text(size));
        let memory = guest_ram((depth * 3 * size).div_ceil(1 << 20) + 16);
        let device = daemon.connect(&memory);
        let slots = make_slots(&workload, &memory, depth).map_err(|e| e.to_string())?;
        Ok(Loader { device, slots })
    }

    /// Once every thread waiting on `start` is there, keeps the queue full
    /// for `seconds`, on the calling thread as a guest.
    fn run(&self, seconds: f64, start: &Barrier) -> Result<Load, String> {
        let _ = raise_guest_priority();
        start.wait();
        let batch = (self.slots.len() / 4).max(1);
        let waited = cpu_wait();
        let duration = Duration::from_secs_f64(seconds);
        let run =
            pipeline(&self.device, 0, &self.slots, batch, duration).map_err(|e| e.to_string())?;
        Ok(Load {
            jobs_per_sec: run.jobs_per_sec(),
            waited: (cpu_wait().saturating_sub(waited)).as_secs_f64() / run.elapsed.as_secs_f64(),
        })
    }

    fn disconnect(self) {
        self.device.into_transport().disconnect();
    }
}

/// The CPU time each of `pids` has used.
fn cpu_times(pids: &[u32]) -> Result<Vec<Duration>, String> {
    pids.iter().map(|pid| cpu_time(*pid)).collect()
}

fn equal_tenants(args: &Args) -> Result<(), Box<dyn Error>> {
    let names: Vec<String> = (0..args.tenants).map(|i| format!("equal{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let (daemon, tenants) = DaemonProcess::start(&names, &args.daemon_settings())?;
    let pids = names
        .iter()
        .map(|name| daemon.tenant_pid(name))
        .collect::<Result<Vec<u32>, String>>()?;
    println!(
        "2. {} equal tenants, 64 KiB copies, 16 deep each, started together (jobs/s):",
        args.tenants
    );
    let log = daemon.log();
    if let Some(how) = log.lines().find_map(|l| l.split_once("fair sharing: ")) {
        println!("   daemon: {}", how.1);
    }
    let mut indices = Vec::new();
    for round in 1..=args.rounds {
        let loaders = tenants
            .iter()
            .map(|t| Loader::connect(t, Op::Copy, 65536, 16))
            .collect::<Result<Vec<_>, String>>()?;
        let start = Barrier::new(loaders.len());
        let (cpu_before, began) = (cpu_times(&pids)?, Instant::now());
        let loads: Vec<Load> = std::thread::scope(|scope| {
            let runs: Vec<_> = loaders
                .iter()
                .map(|loader| scope.spawn(|| loader.run(args.seconds, &start)))
                .collect();
            runs.into_iter()
                .map(|run| run.join().map_err(|_| String::from("panicked"))?)
                .collect::<Result<_, String>>()
        })?;
        let elapsed = began.elapsed().as_secs_f64();
        let cpus: Vec<String> = cpu_times(&pids)?
            .iter()
            .zip(&cpu_before)
            .map(|(after, before)| {
                format!(
                    "{:.2}",
                    after.saturating_sub(*before).as_secs_f64() / elapsed
                )
            })
            .collect();
        loaders.into_iter().for_each(Loader::disconnect);
        let rates: Vec<f64> = loads.iter().map(|load| load.jobs_per_sec).collect();
        let each: Vec<String> = rates.iter().map(|rate| format!("{rate:.0}")).collect();
        println!(
            "   run {round}: {} (total {:.0}), Jain index {:.4}",
            each.join(" "),
            rates.iter().sum::<f64>(),
            jain(&rates)
        );
        let waited = loads.iter().map(|load| load.waited).fold(0.0, f64::max);
        println!(
            "          CPUs used by each tenant's process: {}; guests waited for a CPU \
             {:.1}% of the run at most",
            cpus.join(" "),
            waited * 100.0
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
    let flood = Loader::connect(flood, Op::Copy, 1 << 20, 16)?;
    let result = std::thread::scope(|scope| {
        let load = scope.spawn(|| flood.run(seconds + 0.4, &Barrier::new(1)));
        std::thread::sleep(Duration::from_millis(200));
        let measured = as_guest(|| latencies(victim, seconds).map_err(|e| e.to_string()));
        let load = load.join().map_err(|_| "flood panicked")??;
        Ok::<_, Box<dyn Error>>((measured??, load.jobs_per_sec))
    });
    flood.disconnect();
    result
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
    let (_daemon, tenants) = DaemonProcess::start(&["victim", "flood"], &args.daemon_settings())?;
    let memory = guest_ram(16);
    let victim = tenants[0].connect(&memory);
    println!("3. victim: 4 KiB CRC-32C one at a time; flood: 1 MiB copies, 16 deep");
    println!(
        "   {:<20} {:>8} {:>10} {:>10} {:>10}",
        "", "jobs", "p50", "p99", "p99.9"
    );
    let (mut solo_p99, mut flooded_p99) = (Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        let solo = as_guest(|| latencies(&victim, args.seconds).map_err(|e| e.to_string()))??;
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
    let (process, tenants) = DaemonProcess::start(&names, &args.daemon_settings())?;
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
        "daemon: {}; {:.1} s per measurement, {} rounds",
        args.daemon_settings(),
        args.seconds,
        args.rounds
    );
    println!("{}", guest_priority());
    scale(&args)?;
    equal_tenants(&args)?;
    flood_and_victim(&args)?;
    Ok(())
}
