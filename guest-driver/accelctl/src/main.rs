// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `accelctl`: see the library's documentation for the commands.

use std::error::Error;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use accel_driver::transport::pci::{self, SYSFS_ROOT, UIO_DRIVER};
use accelctl::args::{Args, BenchArgs, ChainArgs, Command, RunArgs};
use accelctl::data::DataSource;
use accelctl::report::{describe_any, supported_ops};
use accelctl::run::execute;
use accelctl::selftest::{self, CheckOutcome, SelfTest, TransportChecks};
use accelctl::target::{kernel_nodes, pci_address, pci_devices, AnyDevice, Target};
use accelctl::{bench, chain};
use clap::Parser;
use virtio_accel_spec::Op;

/// DMA memory of `list` and `selftest`: the largest self-test job with room.
const SMALL_MEMORY: usize = 64 << 20;

/// `error` and its causes on one line.
fn error_chain(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = Args::parse();
    match dispatch(&args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("accelctl: error: {error}");
            let mut cause = error.source();
            while let Some(inner) = cause {
                eprintln!("  caused by: {inner}");
                cause = inner.source();
            }
            ExitCode::FAILURE
        }
    }
}

fn target(args: &Args) -> Result<Target, Box<dyn Error>> {
    Ok(Target::choose(args, kernel_nodes)?)
}

fn timeout(args: &Args) -> Result<Duration, Box<dyn Error>> {
    Duration::try_from_secs_f64(args.timeout)
        .map_err(|_| format!("--timeout {} is not a duration", args.timeout).into())
}

fn open(args: &Args, memory: usize) -> Result<AnyDevice, Box<dyn Error>> {
    let timeout = timeout(args)?;
    Ok(target(args)?.open(memory, timeout)?)
}

fn dispatch(args: &Args) -> Result<ExitCode, Box<dyn Error>> {
    match &args.command {
        Command::List => list_command(args),
        Command::Bind { dry_run, force } => bind_command(args, *dry_run, *force),
        Command::Run(run) => run_command(args, run),
        Command::Selftest { seed, strict } => selftest_command(args, *seed, *strict),
        Command::Bench(bench) => bench_command(args, bench),
        Command::Chain(chain) => chain_command(args, chain),
    }
}

fn list_command(args: &Args) -> Result<ExitCode, Box<dyn Error>> {
    if args.vhost_user.is_some() || args.pci.is_some() || args.kernel.is_some() {
        println!("transport: {}", target(args)?);
        println!("{}", describe_any(&open(args, SMALL_MEMORY)?));
        return Ok(ExitCode::SUCCESS);
    }
    let nodes = kernel_nodes()?;
    let devices = pci_devices()?;
    if nodes.is_empty() && devices.is_empty() {
        return Err(accelctl::target::Error::NoPciDevice.into());
    }
    match Target::choose(args, || Ok(nodes.clone())) {
        Ok(chosen) => println!("transport: {chosen}"),
        Err(error) => println!("transport: none chosen: {}", error_chain(&error)),
    }
    for node in &nodes {
        let pci = node.pci.as_deref().unwrap_or("not on PCI");
        let virtio = node.virtio.as_deref().unwrap_or("?");
        println!(
            "{} (the {} module, {virtio} on {pci})",
            node.node.display(),
            accel_driver::kernel::DRIVER_NAME
        );
        match Target::Kernel(node.node.clone()).open(SMALL_MEMORY, timeout(args)?) {
            Ok(opened) => println!("{}", describe_any(&opened)),
            Err(error) => println!("  cannot open: {}", error_chain(&error)),
        }
    }
    for device in devices {
        let driver = device.driver.as_deref().unwrap_or("no driver");
        println!("{} ({driver})", device.bdf);
        let module_node = nodes.iter().find(|n| n.pci.as_deref() == Some(&device.bdf));
        if device.driver.as_deref() == Some(UIO_DRIVER) {
            let target = Target::Pci {
                address: Some(device.bdf.clone()),
                poll: args.poll,
            };
            // A device another process holds (or that fails) is reported,
            // and the others are still listed.
            match target.open(SMALL_MEMORY, timeout(args)?) {
                Ok(opened) => println!("{}", describe_any(&opened)),
                Err(error) => println!("  cannot open: {}", error_chain(&error)),
            }
        } else if let Some(node) = module_node {
            println!(
                "  driven by the kernel module: {} (accelctl --pci {} bind hands it to {UIO_DRIVER})",
                node.node.display(),
                device.bdf
            );
        } else {
            println!(
                "  not usable until bound: accelctl --pci {} bind",
                device.bdf
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn bind_command(args: &Args, dry_run: bool, force: bool) -> Result<ExitCode, Box<dyn Error>> {
    if args.vhost_user.is_some() || args.kernel.is_some() {
        return Err("bind applies to virtio-pci devices, not to --vhost-user or --kernel".into());
    }
    let bdf = pci_address(args.pci.as_deref())?;
    let root = Path::new(SYSFS_ROOT);
    if dry_run {
        let commands = pci::bind_commands(root, &bdf)?;
        if commands.is_empty() {
            println!("# {bdf} is already bound to {UIO_DRIVER}");
        }
        commands.iter().for_each(|line| println!("{line}"));
    } else {
        let node = pci::bind_uio(root, &bdf, force)?;
        println!("{bdf} bound to {UIO_DRIVER}: {}", node.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn read(path: &Path) -> Result<Vec<u8>, Box<dyn Error>> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()).into())
}

fn run_command(args: &Args, run: &RunArgs) -> Result<ExitCode, Box<dyn Error>> {
    let aad = run
        .aad
        .as_deref()
        .map(read)
        .transpose()?
        .unwrap_or_default();
    let job = run.job(aad)?;
    let inputs = run
        .inputs
        .iter()
        .map(|path| read(path))
        .collect::<Result<Vec<_>, _>>()?;
    let input_len = inputs.iter().map(Vec::len).sum();
    let device = open(args, job.memory_needed(input_len))?;
    let output = execute(device.accelerator(), args.queue, &job, &inputs)?;
    if let (Some(data), Some(path)) = (&output.data, &run.output) {
        std::fs::write(path, data).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    println!("{}", output.summary);
    Ok(if output.same {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn selftest_command(
    args: &Args,
    seed: Option<u64>,
    strict: bool,
) -> Result<ExitCode, Box<dyn Error>> {
    let chosen = target(args)?;
    let device = chosen.open(SMALL_MEMORY, timeout(args)?)?;
    let mut data = seed.map_or_else(DataSource::from_clock, DataSource::new);
    println!(
        "selftest: seed {} (replay with --seed {}), transport: {chosen}",
        data.seed(),
        data.seed()
    );
    let report = match &device {
        AnyDevice::Virtio(device) => run_selftest(device, &mut data)?,
        AnyDevice::Kernel(device) => run_selftest(device, &mut data)?,
    };
    let (failures, skips) = (report.failures(), report.skips());
    println!(
        "selftest: {} checks, {failures} failed, {skips} not run{}, {} not applicable to the \
         transport, sizes {:?}",
        report.checks.len(),
        if strict && skips > 0 {
            " (--strict: a failure)"
        } else {
            ""
        },
        report.not_applicable(),
        selftest::SIZES
    );
    Ok(if report.passed(strict) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Runs the self-test on `device`, printing each check as it ends.
fn run_selftest<D: TransportChecks>(
    device: &D,
    data: &mut DataSource,
) -> Result<selftest::Report, selftest::Error> {
    SelfTest::new(device, data).run(|check| match &check.outcome {
        CheckOutcome::Passed => println!("ok    {}", check.name),
        CheckOutcome::Failed(why) => println!("FAIL  {}: {why}", check.name),
        CheckOutcome::Skipped(why) => println!("skip  {}: {why}", check.name),
        CheckOutcome::NotApplicable(why) => println!("n/a   {}: {why}", check.name),
    })
}

fn bench_command(args: &Args, bench_args: &BenchArgs) -> Result<ExitCode, Box<dyn Error>> {
    let device = open(args, bench_args.memory << 20)?;
    let offered = supported_ops(u32::from(device.accelerator().config().ops));
    let ops: Vec<Op> = if bench_args.ops.is_empty() {
        offered
    } else {
        bench_args.ops.iter().map(|&name| Op::from(name)).collect()
    };
    let options = bench::BenchOptions {
        ops,
        sizes: bench_args.sizes.clone(),
        duration: Duration::try_from_secs_f64(bench_args.seconds)
            .map_err(|_| format!("--seconds {} is not a duration", bench_args.seconds))?,
        depth: bench_args.depth.max(1),
        batch: bench_args.batch.unwrap_or(bench_args.depth / 4).max(1),
        queue: args.queue,
    };
    println!(
        "{:<14} {:>9} | {:>6} {:>12} {:>10}",
        "op", "size", "depth", "jobs/s", "GB/s"
    );
    let mut data = DataSource::new(bench::BENCH_SEED);
    let progress = |n, total, op: Op, size| {
        eprint!("\r[{n}/{total}] {} {size} B          ", op.name());
        let _ = std::io::stderr().flush();
    };
    let mut left_out = Vec::new();
    let points = match &device {
        AnyDevice::Virtio(device) => bench::measure(device, &options, &mut data, progress)?,
        AnyDevice::Kernel(device) => {
            bench::measure_kernel(device, &options, &mut data, progress, |op, size, error| {
                left_out.push(format!(
                    "{:<14} {:>9} | not measured: {}",
                    op.name(),
                    size,
                    error_chain(&error)
                ));
            })?
        }
    };
    eprintln!();
    for point in points {
        println!(
            "{:<14} {:>9} | {:>6} {:>12.0} {:>10.3}",
            point.op.name(),
            point.size,
            point.depth,
            point.run.jobs_per_sec(),
            point.run.gb_per_sec(point.size)
        );
    }
    left_out.iter().for_each(|line| println!("{line}"));
    Ok(ExitCode::SUCCESS)
}

fn chain_command(args: &Args, chain_args: &ChainArgs) -> Result<ExitCode, Box<dyn Error>> {
    let options = chain::ChainOptions {
        jobs: usize::from(chain_args.jobs),
        size: usize::try_from(chain_args.size)?,
        duration: Duration::try_from_secs_f64(chain_args.seconds)
            .map_err(|_| format!("--seconds {} is not a duration", chain_args.seconds))?,
        rounds: chain_args.rounds,
    };
    let chosen = target(args)?;
    let AnyDevice::Virtio(device) = chosen.open(chain::memory_needed(&options), timeout(args)?)?
    else {
        return Err(
            "chain drives the virtqueues itself: use --vhost-user or --pci, not the \
                    kernel module's node"
                .into(),
        );
    };
    let mut data = chain_args
        .seed
        .map_or_else(DataSource::from_clock, DataSource::new);
    println!(
        "chain: seed {} (replay with --seed {}), transport: {chosen}, {} jobs each way over {} \
         request queues",
        data.seed(),
        data.seed(),
        options.jobs,
        device.num_request_queues()
    );
    let summary = chain::run(&device, &options, &mut data, |round| {
        println!("round {round}: ok");
        let _ = std::io::stdout().flush();
    })?;
    println!(
        "chain: {} rounds, {} jobs, 2 objects of {} bytes, 0 failed",
        summary.rounds, summary.jobs, summary.size
    );
    Ok(ExitCode::SUCCESS)
}
