// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `accel-budget`: the daemon's instructions per request, stage by stage,
//! counted by callgrind (instruction counts repeat on a noisy machine, where
//! times do not), next to the floor: virtio-queue's own
//! `pop_descriptor_chain`, a walk of the chain's descriptors and `add_used`
//! for a chain of the same shape.
//!
//! It runs itself under `valgrind --tool=callgrind` with `--workload`: a
//! daemon in this process serves `--requests` 64 B copies over a real
//! vhost-user socket, `--depth` in flight, then the floor runs as many
//! times. Each stage is the inclusive count of the daemon's function that
//! does it (kept out of line for this), per request:
//!
//! | stage | function |
//! |---|---|
//! | chain walk | `chain::walk` |
//! | decode | `command::decode_request` |
//! | objects and fences | `DeviceModel::resolve`, `DeviceModel::dependencies_signalled` (`device/accept.rs`) |
//! | submit | `DeviceModel::submit_ready` (`device/schedule.rs`) |
//! | completion | `DeviceModel::finish_all` (`device/complete.rs`) |
//! | used ring | `DeviceModel::publish_used` (`device/publish.rs`), less the notification |
//! | notify | `DeviceModel::notify` (`device/publish.rs`) |
//! | daemon side | `AccelBackend::handle_event`: all the vring thread does for an event |
//!
//! The daemon runs with polling off (`poll-us = 0`), so that every request
//! is taken in `handle_event`; a poll of the rings takes requests through
//! the same functions. The rest of the daemon side (reading the rings, the state record, the
//! engine's completion queue, locks) is printed as "other". Not counted: the
//! vring thread's epoll loop and its read of a kick (per event, not per
//! request), the engine's own work and the driver's. A stage's function that
//! callgrind did not count (renamed, moved or inlined) is an error. Counts
//! depend on the compiler and
//! on how many requests each event finds (batching): the baseline names the
//! `rustc` it was made with.
//!
//! `--write-baseline FILE` saves the figures; `--check FILE` compares the
//! daemon side with a saved one and exits non-zero on a rise of more than
//! `--tolerance` percent (`.ci/run` does this against
//! `tests/bench/instruction-budget.txt`).

use std::collections::BTreeMap;
use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use accel_tests::harness::{guest_ram, tenant, AccelDevice, Daemon};
use accel_tests::workload::Workload;
use accelctl::bench::{make_slots, Slot};
use clap::Parser;
use vhost_user_accel::{Config, TenantConfig};
use virtio_accel_spec::Op;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

#[derive(Debug, Parser)]
#[command(about = "The daemon's instructions per request, by stage, under callgrind")]
struct Args {
    /// Requests through the daemon, and chains through the floor.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    requests: u64,
    /// Requests in flight.
    #[arg(long, default_value_t = 64)]
    depth: usize,
    /// Save the figures to this file.
    #[arg(long, value_name = "FILE")]
    write_baseline: Option<PathBuf>,
    /// Compare the daemon side with the figures saved in this file.
    #[arg(long, value_name = "FILE")]
    check: Option<PathBuf>,
    /// The rise over the saved daemon side that `--check` accepts, in percent.
    #[arg(long, default_value_t = 10.0)]
    tolerance: f64,
    /// Run the workload (what callgrind counts) instead of measuring it.
    #[arg(long, hide = true)]
    workload: bool,
}

/// The stages, each with the functions whose inclusive counts make it, as
/// callgrind names them (a method of an `impl` block in a child module
/// carries that module's path).
const STAGES: [(&str, &[&str]); 7] = [
    ("chain walk", &["vhost_user_accel::chain::walk"]),
    ("decode", &["vhost_user_accel::command::decode_request"]),
    (
        "objects and fences",
        &[
            "vhost_user_accel::device::accept::<impl vhost_user_accel::device::DeviceModel>::resolve",
            "vhost_user_accel::device::accept::<impl vhost_user_accel::device::DeviceModel>::dependencies_signalled",
        ],
    ),
    (
        "submit",
        &["vhost_user_accel::device::schedule::<impl vhost_user_accel::device::DeviceModel>::submit_ready"],
    ),
    (
        "completion",
        &["vhost_user_accel::device::complete::<impl vhost_user_accel::device::DeviceModel>::finish_all"],
    ),
    (
        "used ring",
        &["vhost_user_accel::device::publish::<impl vhost_user_accel::device::DeviceModel>::publish_used"],
    ),
    (
        NOTIFY_STAGE,
        &["vhost_user_accel::device::publish::<impl vhost_user_accel::device::DeviceModel>::notify"],
    ),
];
/// The notification, which happens inside publishing used entries: the
/// workload's driver sleeps until notified, so it always runs.
const NOTIFY_STAGE: &str = "notify";
const DAEMON_SIDE: &str = "vhost_user_accel::vhost_user::dispatch::AccelBackend::handle_event";
const FLOOR: &str = "accel_budget::floor_request";

/// Keys of the baseline file.
const DAEMON_KEY: &str = "daemon side";
const FLOOR_KEY: &str = "floor";

fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    if args.workload {
        return workload(&args);
    }
    // A baseline that cannot be read fails before the long measurement.
    let baseline = args.check.as_deref().map(read_baseline).transpose()?;
    let counts = measure(&args)?;
    let figures = figures(&counts, args.requests)?;
    print(&figures, &args);
    if let Some(path) = &args.write_baseline {
        write_baseline(path, &figures)?;
    }
    match baseline {
        Some(baseline) => check(&baseline, &figures, args.tolerance),
        None => Ok(()),
    }
}

/// Runs this program with `--workload` under callgrind; returns each
/// function's inclusive instruction count.
fn measure(args: &Args) -> Result<BTreeMap<String, u64>, Box<dyn Error>> {
    let out = std::env::temp_dir().join(format!("accel-budget-{}.callgrind", std::process::id()));
    let counted = run_callgrind(args, &out);
    let _ = std::fs::remove_file(&out);
    counted
}

/// [`measure`], with callgrind's output in `out`.
fn run_callgrind(args: &Args, out: &Path) -> Result<BTreeMap<String, u64>, Box<dyn Error>> {
    let status = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(std::env::current_exe()?)
        .args(["--workload", "--requests"])
        .arg(args.requests.to_string())
        .arg("--depth")
        .arg(args.depth.to_string())
        .status()
        .map_err(|e| format!("cannot run valgrind (is it installed?): {e}"))?;
    if !status.success() {
        return Err(format!("the workload under callgrind failed: {status}").into());
    }
    let annotated = Command::new("callgrind_annotate")
        .args([
            "--inclusive=yes",
            "--threshold=100",
            "--auto=no",
            "--show=Ir",
        ])
        .arg(out)
        .output()
        .map_err(|e| format!("cannot run callgrind_annotate: {e}"))?;
    if !annotated.status.success() {
        return Err(format!("callgrind_annotate failed: {}", annotated.status).into());
    }
    Ok(inclusive_counts(&String::from_utf8_lossy(
        &annotated.stdout,
    )))
}

/// The inclusive count of every function in `callgrind_annotate
/// --inclusive=yes --auto=no` output (lines `COUNT (PERCENT)  FILE:FUNCTION
/// [OBJECT]`). A function is listed once for its own file, with its whole
/// count, and again for each file whose code was inlined into it, with that
/// code's part: its count is the largest.
fn inclusive_counts(annotated: &str) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for line in annotated.lines() {
        let Some((count, rest)) = line.trim_start().split_once(' ') else {
            continue;
        };
        let Ok(count) = count.replace(',', "").parse::<u64>() else {
            continue;
        };
        // The function's name may hold spaces (`<impl Trait for Type>`):
        // it runs up to the object in brackets at the end of the line.
        let Some(place) = rest.split_once(')').map(|(_, after)| {
            let after = after.trim();
            after.rsplit_once(" [").map_or(after, |(place, _)| place)
        }) else {
            continue;
        };
        let function = place.split_once(':').map_or(place, |(_, f)| f);
        let entry = counts.entry(function.to_owned()).or_insert(0);
        *entry = count.max(*entry);
    }
    counts
}

/// Instructions per request of each stage, "other", the daemon side and the
/// floor, in that order.
fn figures(
    counts: &BTreeMap<String, u64>,
    requests: u64,
) -> Result<Vec<(String, f64)>, Box<dyn Error>> {
    let count = |function: &str| {
        counts
            .get(function)
            .copied()
            .ok_or_else(|| format!("callgrind counted nothing in {function}: was it inlined?"))
    };
    let per_request = |n: u64| n as f64 / requests as f64;
    let mut figures = Vec::new();
    for (stage, functions) in STAGES {
        // A function renamed, moved or inlined fails the count, rather than
        // moving its stage into "other".
        let total = functions
            .iter()
            .map(|&f| count(f))
            .sum::<Result<u64, _>>()?;
        figures.push((stage.to_owned(), per_request(total)));
    }
    // Notifications happen inside publishing used entries.
    let notify = figures
        .iter()
        .find(|(s, _)| s == NOTIFY_STAGE)
        .map_or(0.0, |f| f.1);
    if let Some(used) = figures.iter_mut().find(|(s, _)| s == "used ring") {
        used.1 -= notify;
    }
    let daemon = per_request(count(DAEMON_SIDE)?);
    if !daemon.is_finite() || daemon <= 0.0 {
        return Err(format!("no instruction counted in {DAEMON_SIDE}").into());
    }
    let staged: f64 = figures.iter().map(|(_, n)| n).sum();
    figures.push(("other".to_owned(), daemon - staged));
    figures.push((DAEMON_KEY.to_owned(), daemon));
    figures.push((FLOOR_KEY.to_owned(), per_request(count(FLOOR)?)));
    Ok(figures)
}

fn print(figures: &[(String, f64)], args: &Args) {
    println!(
        "instructions per request (callgrind; {} 64 B copies, {} in flight):",
        args.requests, args.depth
    );
    for (stage, n) in figures {
        println!("  {stage:<20} {n:>8.0}");
    }
    let find = |key: &str| figures.iter().find(|(s, _)| s == key).map_or(0.0, |f| f.1);
    println!(
        "  daemon side ÷ floor  {:>8.2}   (floor: virtio-queue's pop_descriptor_chain, \
         descriptor walk and add_used of a chain of the same shape)",
        find(DAEMON_KEY) / find(FLOOR_KEY)
    );
}

fn write_baseline(path: &Path, figures: &[(String, f64)]) -> Result<(), Box<dyn Error>> {
    let rustc = Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_default();
    let mut text = format!(
        "# accel-budget: instructions per request by stage, the baseline of .ci/run,\n\
         # made with {rustc} by\n\
         # cargo run --release --locked -p accel-tests --features \
         vhost-user-accel/fault-injection --bin accel-budget -- --write-baseline FILE\n",
    );
    for (stage, n) in figures {
        text.push_str(&format!("{stage} = {n:.0}\n"));
    }
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()).into())
}

/// A saved daemon side and where it was read.
struct Baseline {
    path: PathBuf,
    daemon: f64,
}

/// The daemon side saved in `path` by `--write-baseline`.
fn read_baseline(path: &Path) -> Result<Baseline, Box<dyn Error>> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let daemon = text
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .find(|(key, _)| key.trim() == DAEMON_KEY)
        .and_then(|(_, value)| value.trim().parse::<f64>().ok())
        .filter(|daemon| *daemon > 0.0)
        .ok_or_else(|| format!("{}: no '{DAEMON_KEY} = N' line", path.display()))?;
    Ok(Baseline {
        path: path.to_owned(),
        daemon,
    })
}

/// Fails if the daemon side rose more than `tolerance` percent over
/// `baseline`.
fn check(
    baseline: &Baseline,
    figures: &[(String, f64)],
    tolerance: f64,
) -> Result<(), Box<dyn Error>> {
    let Baseline {
        path,
        daemon: saved,
    } = baseline;
    let now = figures
        .iter()
        .find(|(s, _)| s == DAEMON_KEY)
        .map_or(0.0, |f| f.1);
    let rise = 100.0 * (now / saved - 1.0);
    println!(
        "daemon side: {now:.0} instructions per request, {rise:+.1} % against {saved:.0} in {}",
        path.display()
    );
    if rise > tolerance {
        return Err(format!(
            "the daemon side rose {rise:.1} % (more than {tolerance} %) over {}",
            path.display()
        )
        .into());
    }
    Ok(())
}

/// What callgrind counts: the requests through the daemon, then the floor.
fn workload(args: &Args) -> Result<(), Box<dyn Error>> {
    // Polling off: every request is then taken in `handle_event` (the
    // daemon side), none by a poll of the rings, which runs the same path
    // outside it.
    let config = Config {
        engine_threads: 1,
        ..Config::with_tenants(vec![TenantConfig {
            poll_us: 0,
            ..tenant("budget")
        }])
    };
    let daemon = Daemon::start_config(config).remove(0);
    let memory = guest_ram(64);
    let device = daemon.connect(&memory);
    let workload = Workload::new(Op::Copy, vec![0x5a; 64]);
    let slots = make_slots(&workload, &memory, args.depth)?;
    run_requests(&device, &slots, args.requests)?;
    run_floor(args.requests)
}

/// Keeps the slots' requests in flight until `total` have completed.
fn run_requests(device: &AccelDevice, slots: &[Slot], total: u64) -> Result<(), Box<dyn Error>> {
    let (mut submitted, mut done) = (0u64, 0u64);
    for (token, (request, _)) in (0u64..).zip(slots) {
        if submitted == total {
            break;
        }
        device.submit(0, request, token)?;
        submitted += 1;
    }
    device.flush(0)?;
    let batch = (slots.len() / 4).max(1);
    while done < total {
        let completions = device.wait_batch(0, batch, Duration::from_secs(60))?;
        if completions.is_empty() {
            return Err("no completion in 60 s".into());
        }
        for completion in completions {
            let token = completion.token;
            completion.check()?;
            done += 1;
            if submitted < total {
                let slot = usize::try_from(token).ok().and_then(|i| slots.get(i));
                let (request, _) = slot.ok_or("a completion of no slot")?;
                device.submit(0, request, token)?;
                submitted += 1;
            }
        }
        device.flush(0)?;
    }
    Ok(())
}

/// Where the floor's virtqueue lies in its memory.
const TABLE: u32 = 0x0;
const AVAIL: u32 = 0x1000;
const USED: u32 = 0x2000;
const BUFFERS: u64 = 0x10000;
const QUEUE_SIZE: u16 = 256;

/// The chain of a 64 B copy as the driver makes it: header and input
/// readable, response and output writable.
const CHAIN: [(u32, u16); 4] = [(48, 0), (64, 0), (32, DESC_F_WRITE), (64, DESC_F_WRITE)];
const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;

/// `chains` times: the driver's side makes the chain available (not
/// counted), then [`floor_request`] takes it.
fn run_floor(chains: u64) -> Result<(), Box<dyn Error>> {
    let mem: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)])?;
    let last = CHAIN.len() - 1;
    for (index, &(len, flags)) in CHAIN.iter().enumerate() {
        let next = if index < last { DESC_F_NEXT } else { 0 };
        let desc = virtio_queue::desc::split::Descriptor::new(
            BUFFERS + 0x100 * u64::try_from(index)?,
            len,
            flags | next,
            u16::try_from(index + 1)?,
        );
        mem.write_obj(
            desc,
            GuestAddress(u64::from(TABLE) + 16 * u64::try_from(index)?),
        )?;
    }
    let mut queue = Queue::new(QUEUE_SIZE)?;
    queue.set_size(QUEUE_SIZE);
    queue.set_desc_table_address(Some(TABLE), Some(0));
    queue.set_avail_ring_address(Some(AVAIL), Some(0));
    queue.set_used_ring_address(Some(USED), Some(0));
    queue.set_ready(true);
    let mut avail: u16 = 0;
    for _ in 0..chains {
        let slot = u64::from(AVAIL) + 4 + 2 * u64::from(avail % QUEUE_SIZE);
        mem.write_obj(0u16, GuestAddress(slot))?;
        avail = avail.wrapping_add(1);
        mem.write_obj(avail, GuestAddress(u64::from(AVAIL) + 2))?;
        floor_request(&mut queue, &mem).ok_or("the floor took no chain")?;
    }
    Ok(())
}

/// The least a back-end does for one chain: virtio-queue takes it, each
/// descriptor is read once, and its used entry is returned.
#[inline(never)]
fn floor_request(queue: &mut Queue, mem: &GuestMemoryMmap) -> Option<u32> {
    let chain = queue.pop_descriptor_chain(mem)?;
    let head = chain.head_index();
    let len: u32 = chain.map(|desc| desc.len()).sum();
    queue.add_used(mem, head, len).ok()?;
    Some(len)
}
