// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The command line of `accelctl`, and its translation into typed jobs.

use std::path::PathBuf;

use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};
use thiserror::Error;
use virtio_accel_spec::op::DEFLATE_MAX_LEVEL;
use virtio_accel_spec::op::{GCM_IV_SIZE, GCM_TAG_SIZE};
use virtio_accel_spec::{DeflateFormat, Op};

use crate::run::RunOp;

/// Command-line errors that clap cannot catch.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Error {
    /// An option the operation needs is missing.
    #[error("{op} needs --{option}")]
    Missing {
        /// Operation name.
        op: &'static str,
        /// The option.
        option: &'static str,
    },
    /// A hexadecimal value has the wrong length or a bad digit.
    #[error("--{option} must be {bytes} bytes in hexadecimal ({} digits)", 2 * bytes)]
    BadHex {
        /// The option.
        option: &'static str,
        /// Bytes expected.
        bytes: usize,
    },
    /// The compression level is out of range.
    #[error("--level must be 0 to {DEFLATE_MAX_LEVEL}, not {0}")]
    BadLevel(u8),
}

/// Control the virtio accelerator device: list it, run operations on files,
/// check it, measure it.
#[derive(Debug, Parser)]
#[command(name = "accelctl", version)]
pub struct Args {
    /// Use the daemon listening on this vhost-user socket (host transport:
    /// accelctl plays the VMM and the guest).
    #[arg(long, value_name = "SOCKET", global = true, conflicts_with = "pci")]
    pub vhost_user: Option<PathBuf>,
    /// Use the guest kernel's virtio_accel module through its accel node:
    /// the only one, or the one given as --kernel=NODE (guest transport; the
    /// default whenever the module drives a device).
    #[arg(
        long,
        value_name = "NODE",
        global = true,
        num_args = 0..=1,
        require_equals = true,
        conflicts_with_all = ["vhost_user", "pci"]
    )]
    pub kernel: Option<Option<PathBuf>>,
    /// Use the virtio-pci function at this address through uio_pci_generic
    /// (guest transport, once `accelctl bind` has handed it over; the
    /// default, with the only function present, when the virtio_accel
    /// module drives no device).
    #[arg(long, value_name = "BDF", global = true)]
    pub pci: Option<String>,
    /// Busy-poll the used rings instead of sleeping on the device's
    /// interrupt (virtio-pci; a function without an INTx line, as under
    /// cloud-hypervisor, is polled in any case, and accelctl says so).
    #[arg(long, global = true)]
    pub poll: bool,
    /// Seconds to wait for the device before giving up.
    #[arg(long, default_value_t = 30.0, global = true)]
    pub timeout: f64,
    /// Request queue to use (0-based).
    #[arg(long, default_value_t = 0, global = true)]
    pub queue: u16,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the device: features, operations and limits.
    List,
    /// Run one operation on files.
    Run(RunArgs),
    /// Check every operation, objects and fences against software references.
    Selftest {
        /// Seed of the random data (replays a run); from the clock by default.
        #[arg(long)]
        seed: Option<u64>,
        /// Fail if any check does not run (an operation the device does not
        /// offer, a size over its limit, objects or fences not enabled).
        #[arg(long)]
        strict: bool,
    },
    /// Measure jobs/s and GB/s per operation and size.
    Bench(BenchArgs),
    /// Run long fence-chained batches over every request queue on two
    /// objects kept for the whole run, each round checking itself.
    Chain(ChainArgs),
    /// Hand a virtio-pci device to uio_pci_generic so that accelctl can
    /// drive it (unbinding it from the kernel's virtio-pci driver).
    Bind {
        /// Print the commands instead of running them.
        #[arg(long)]
        dry_run: bool,
        /// Take the device from whatever driver has it, not only virtio-pci.
        #[arg(long)]
        force: bool,
    },
}

/// Operation names as on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OpName {
    /// COPY: --in FILE --out FILE.
    Copy,
    /// FILL: --len N --pattern BYTE --out FILE.
    Fill,
    /// COMPARE: --in A --in B; exit status 1 if they differ.
    Compare,
    /// CRC-32C: --in FILE [--seed HEX].
    Crc32c,
    /// SHA-256: --in FILE.
    Sha256,
    /// AES-256-GCM seal: --key --iv [--aad FILE] --in --out; prints the tag.
    AesGcmSeal,
    /// AES-256-GCM open: --key --iv --tag [--aad FILE] --in --out.
    AesGcmOpen,
    /// Deflate compression: [--format] [--level] --in --out.
    Deflate,
    /// Deflate decompression: [--format] [--max-output] --in --out.
    Inflate,
}

/// Stream framing of deflate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Raw deflate (RFC 1951).
    Raw,
    /// zlib (RFC 1950).
    Zlib,
    /// gzip (RFC 1952).
    Gzip,
}

impl From<Format> for DeflateFormat {
    fn from(format: Format) -> Self {
        match format {
            Format::Raw => DeflateFormat::Raw,
            Format::Zlib => DeflateFormat::Zlib,
            Format::Gzip => DeflateFormat::Gzip,
        }
    }
}

/// `accelctl run`.
#[derive(Debug, ClapArgs)]
pub struct RunArgs {
    /// The operation.
    pub op: OpName,
    /// Input file (twice for compare).
    #[arg(long = "in", value_name = "FILE")]
    pub inputs: Vec<PathBuf>,
    /// Output file (operations with an output; without it nothing is written).
    #[arg(long = "out", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Deflate framing.
    #[arg(long, value_enum, default_value_t = Format::Gzip)]
    pub format: Format,
    /// Deflate level, 0 to 9.
    #[arg(long, default_value_t = 6)]
    pub level: u8,
    /// AES-256 key, 64 hex digits.
    #[arg(long)]
    pub key: Option<String>,
    /// AES-GCM nonce, 24 hex digits.
    #[arg(long)]
    pub iv: Option<String>,
    /// AES-GCM tag to check (open), 32 hex digits.
    #[arg(long)]
    pub tag: Option<String>,
    /// File of additional authenticated data (AES-GCM).
    #[arg(long, value_name = "FILE")]
    pub aad: Option<PathBuf>,
    /// Fill byte.
    #[arg(long, default_value_t = 0)]
    pub pattern: u8,
    /// Bytes to fill.
    #[arg(long)]
    pub len: Option<usize>,
    /// CRC-32C of the data before the input, 8 hex digits.
    #[arg(long, default_value = "00000000")]
    pub seed: String,
    /// Largest decompressed output accepted, in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    pub max_output: usize,
}

/// `accelctl bench`.
#[derive(Debug, ClapArgs)]
pub struct BenchArgs {
    /// Operations (all the device offers by default).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub ops: Vec<OpName>,
    /// Job sizes in bytes.
    #[arg(long, value_delimiter = ',', default_values_t = [64usize, 4096, 65536, 1 << 20])]
    pub sizes: Vec<usize>,
    /// Seconds per point.
    #[arg(long, default_value_t = 0.5)]
    pub seconds: f64,
    /// Requests kept in flight.
    #[arg(long, default_value_t = 64)]
    pub depth: usize,
    /// Completions per interrupt (default: a quarter of --depth).
    #[arg(long)]
    pub batch: Option<usize>,
    /// DMA memory in MiB (the depth shrinks for sizes that do not fit).
    #[arg(long, default_value_t = 256)]
    pub memory: usize,
}

/// `accelctl chain`.
#[derive(Debug, ClapArgs)]
pub struct ChainArgs {
    /// Jobs of each chain (a round runs a chain of SEALs and one of OPENs).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: u16,
    /// Bytes of each of the two objects.
    #[arg(long, default_value_t = 256 << 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub size: u32,
    /// Seconds of rounds (at least one round runs).
    #[arg(long, default_value_t = 5.0, conflicts_with = "rounds")]
    pub seconds: f64,
    /// Run exactly this many rounds, however long they take.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub rounds: Option<u64>,
    /// Seed of the bytes and the key (replays a run); from the clock by default.
    #[arg(long)]
    pub seed: Option<u64>,
}

impl From<OpName> for Op {
    fn from(name: OpName) -> Self {
        match name {
            OpName::Copy => Op::Copy,
            OpName::Fill => Op::Fill,
            OpName::Compare => Op::Compare,
            OpName::Crc32c => Op::Crc32c,
            OpName::Sha256 => Op::Sha256,
            OpName::AesGcmSeal => Op::AesGcmSeal,
            OpName::AesGcmOpen => Op::AesGcmOpen,
            OpName::Deflate => Op::DeflateCompress,
            OpName::Inflate => Op::DeflateDecompress,
        }
    }
}

/// Decodes `text` as exactly `N` bytes of hexadecimal.
pub fn parse_hex<const N: usize>(option: &'static str, text: &str) -> Result<[u8; N], Error> {
    let bad = || Error::BadHex { option, bytes: N };
    let digits = text.as_bytes();
    if digits.len() != 2 * N {
        return Err(bad());
    }
    let mut out = [0; N];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let pair = std::str::from_utf8(pair).map_err(|_| bad())?;
        *byte = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

impl RunArgs {
    /// The typed job, with `aad` the contents of the `--aad` file.
    pub fn job(&self, aad: Vec<u8>) -> Result<RunOp, Error> {
        let op = Op::from(self.op).name();
        fn need<'a>(
            value: &'a Option<String>,
            op: &'static str,
            option: &'static str,
        ) -> Result<&'a str, Error> {
            value.as_deref().ok_or(Error::Missing { op, option })
        }
        Ok(match self.op {
            OpName::Copy => RunOp::Copy,
            OpName::Fill => RunOp::Fill {
                pattern: self.pattern,
                len: self.len.ok_or(Error::Missing { op, option: "len" })?,
            },
            OpName::Compare => RunOp::Compare,
            OpName::Crc32c => RunOp::Crc32c {
                seed: u32::from_be_bytes(parse_hex("seed", &self.seed)?),
            },
            OpName::Sha256 => RunOp::Sha256,
            OpName::AesGcmSeal => RunOp::Seal {
                key: parse_hex("key", need(&self.key, op, "key")?)?,
                iv: parse_hex::<GCM_IV_SIZE>("iv", need(&self.iv, op, "iv")?)?,
                aad,
            },
            OpName::AesGcmOpen => RunOp::Open {
                key: parse_hex("key", need(&self.key, op, "key")?)?,
                iv: parse_hex::<GCM_IV_SIZE>("iv", need(&self.iv, op, "iv")?)?,
                tag: parse_hex::<GCM_TAG_SIZE>("tag", need(&self.tag, op, "tag")?)?,
                aad,
            },
            OpName::Deflate => {
                if self.level > DEFLATE_MAX_LEVEL {
                    return Err(Error::BadLevel(self.level));
                }
                RunOp::Deflate {
                    format: self.format.into(),
                    level: self.level,
                }
            }
            OpName::Inflate => RunOp::Inflate {
                format: self.format.into(),
                max_output: self.max_output,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// `docs/man/accelctl.1` and `accelctl-COMMAND.1` are these definitions,
    /// rendered; with `ACCEL_UPDATE_MAN=1` the test writes them instead of
    /// comparing.
    #[test]
    fn the_man_pages_are_rendered_from_the_arguments() {
        let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/man"));
        let rendered = std::env::temp_dir().join(format!("accelctl-man-{}", std::process::id()));
        std::fs::create_dir_all(&rendered).expect("a directory for the pages");
        clap_mangen::generate_to(Args::command(), &rendered).expect("the pages render");
        let pages = std::fs::read_dir(&rendered).expect("the rendered pages");
        let mut names = Vec::new();
        for page in pages {
            let name = page.expect("a rendered page").file_name();
            let text = std::fs::read(rendered.join(&name)).expect("a rendered page");
            if std::env::var_os("ACCEL_UPDATE_MAN").is_some() {
                std::fs::write(dir.join(&name), &text).expect("the committed page");
            }
            let committed = std::fs::read(dir.join(&name)).unwrap_or_default();
            assert!(
                committed == text,
                "docs/man/{name:?} is out of date: ACCEL_UPDATE_MAN=1 cargo test -p accelctl \
                 man_pages"
            );
            names.push(name);
        }
        std::fs::remove_dir_all(&rendered).expect("the rendered pages removed");
        let stale: Vec<_> = std::fs::read_dir(dir)
            .expect("docs/man")
            .map(|entry| entry.expect("a page").file_name())
            .filter(|name| name.to_string_lossy().starts_with("accelctl") && !names.contains(name))
            .collect();
        assert!(stale.is_empty(), "pages of no accelctl command: {stale:?}");
    }

    fn run_args(line: &[&str]) -> RunArgs {
        let args = Args::try_parse_from(line).unwrap();
        match args.command {
            Command::Run(run) => run,
            other => panic!("parsed {other:?}"),
        }
    }

    #[test]
    fn kernel_takes_its_node_only_after_an_equals_sign() {
        let args = Args::try_parse_from(["accelctl", "--kernel", "selftest"]).unwrap();
        assert_eq!(args.kernel, Some(None));
        assert!(matches!(args.command, Command::Selftest { .. }));
        let args =
            Args::try_parse_from(["accelctl", "list", "--kernel=/dev/accel/accel1"]).unwrap();
        assert_eq!(args.kernel, Some(Some(PathBuf::from("/dev/accel/accel1"))));
        let args = Args::try_parse_from(["accelctl", "list"]).unwrap();
        assert_eq!(args.kernel, None);
        for clash in [
            ["accelctl", "--kernel", "--pci", "0000:00:04.0", "list"].as_slice(),
            &["accelctl", "--kernel", "--vhost-user", "/tmp/s", "list"],
        ] {
            assert!(Args::try_parse_from(clash).is_err(), "{clash:?}");
        }
    }

    #[test]
    fn hex_values_are_checked() {
        assert_eq!(parse_hex::<2>("x", "0aFf"), Ok([0x0a, 0xff]));
        assert_eq!(
            parse_hex::<2>("key", "0aF"),
            Err(Error::BadHex {
                option: "key",
                bytes: 2
            })
        );
        assert!(parse_hex::<2>("key", "0g00").is_err());
        assert!(parse_hex::<1>("key", "é").is_err());
    }

    #[test]
    fn run_lines_become_jobs() {
        let run = run_args(&[
            "accelctl", "run", "deflate", "--level", "9", "--in", "a", "--out", "b",
        ]);
        assert_eq!(
            run.job(vec![]),
            Ok(RunOp::Deflate {
                format: DeflateFormat::Gzip,
                level: 9
            })
        );
        let run = run_args(&[
            "accelctl", "run", "crc32c", "--in", "a", "--seed", "e3069283",
        ]);
        assert_eq!(run.job(vec![]), Ok(RunOp::Crc32c { seed: 0xe306_9283 }));
        let run = run_args(&["accelctl", "run", "aes-gcm-seal", "--in", "a", "--iv", "00"]);
        assert_eq!(
            run.job(vec![]),
            Err(Error::Missing {
                op: "aes-gcm-seal",
                option: "key"
            })
        );
        let run = run_args(&["accelctl", "run", "deflate", "--level", "10"]);
        assert_eq!(run.job(vec![]), Err(Error::BadLevel(10)));
        assert!(Args::try_parse_from(["accelctl", "run", "frobnicate"]).is_err());
    }
}
