//! Command-line arguments and their conversion into a [`Config`].

use std::os::fd::RawFd;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use thiserror::Error;
use vhost_user_accel::config::MAX_QUEUES;
use vhost_user_accel::{Config, EngineKind, Limits, SocketSource};

/// Engines selectable on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EngineArg {
    /// Host CPU worker threads.
    Software,
}

/// vhost-user daemon exposing a shared accelerator to virtual machines.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
pub struct Args {
    /// Path of the vhost-user socket to listen on (replaced if it exists).
    #[arg(
        long,
        conflicts_with = "socket_fd",
        required_unless_present = "socket_fd"
    )]
    pub socket_path: Option<PathBuf>,
    /// An inherited, already listening vhost-user socket.
    #[arg(long)]
    pub socket_fd: Option<RawFd>,
    /// Number of request queues (the control queue comes on top).
    #[arg(long, default_value_t = 2)]
    pub queues: u16,
    /// Largest virtqueue size (a power of two).
    #[arg(long, default_value_t = 256)]
    pub queue_size: u16,
    /// The engine that runs the operations.
    #[arg(long, value_enum, default_value_t = EngineArg::Software)]
    pub engine: EngineArg,
    /// Worker threads of the software engine.
    #[arg(long, default_value_t = 2)]
    pub engine_threads: usize,
}

/// Invalid command-line values.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ArgsError {
    /// `--queues` out of range.
    #[error("--queues must be between 1 and {MAX_QUEUES}, got {0}")]
    Queues(u16),
    /// `--queue-size` not a power of two in range.
    #[error("--queue-size must be a power of two between 2 and 32768, got {0}")]
    QueueSize(u16),
    /// `--engine-threads` out of range.
    #[error("--engine-threads must be between 1 and 256, got {0}")]
    EngineThreads(usize),
    /// `--socket-fd` is not an open listening socket.
    #[error("--socket-fd {0} is not an open socket")]
    SocketFd(RawFd),
}

fn is_socket(fd: RawFd) -> bool {
    use std::os::fd::BorrowedFd;
    if fd < 0 {
        return false;
    }
    // SAFETY: the descriptor is only borrowed for the duration of this
    // check; if it is not open, fstat fails and we report that.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    match borrowed.try_clone_to_owned() {
        Ok(owned) => {
            let file = std::fs::File::from(owned);
            use std::os::unix::fs::FileTypeExt;
            file.metadata().is_ok_and(|m| m.file_type().is_socket())
        }
        Err(_) => false,
    }
}

impl TryFrom<Args> for Config {
    type Error = ArgsError;

    fn try_from(args: Args) -> Result<Self, Self::Error> {
        if !(1..=MAX_QUEUES).contains(&args.queues) {
            return Err(ArgsError::Queues(args.queues));
        }
        if args.queue_size < 2 || !args.queue_size.is_power_of_two() {
            return Err(ArgsError::QueueSize(args.queue_size));
        }
        if !(1..=256).contains(&args.engine_threads) {
            return Err(ArgsError::EngineThreads(args.engine_threads));
        }
        let socket = match (args.socket_path, args.socket_fd) {
            (Some(path), _) => SocketSource::Path(path),
            (None, Some(fd)) if is_socket(fd) => SocketSource::Fd(fd),
            (None, Some(fd)) => return Err(ArgsError::SocketFd(fd)),
            // clap requires one of the two.
            (None, None) => return Err(ArgsError::SocketFd(-1)),
        };
        Ok(Config {
            socket,
            request_queues: args.queues,
            queue_size: args.queue_size,
            engine: match args.engine {
                EngineArg::Software => EngineKind::Software,
            },
            engine_threads: args.engine_threads,
            limits: Limits::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn parse(extra: &[&str]) -> Result<Config, ArgsError> {
        let mut argv = vec!["vhost-user-accel", "--socket-path", "/tmp/x.sock"];
        argv.extend_from_slice(extra);
        Config::try_from(Args::try_parse_from(argv).unwrap())
    }

    #[test]
    fn defaults_and_bounds() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.request_queues, 2);
        assert_eq!(config.queue_size, 256);
        assert_eq!(parse(&["--queues", "0"]), Err(ArgsError::Queues(0)));
        assert_eq!(parse(&["--queues", "64"]), Err(ArgsError::Queues(64)));
        assert_eq!(parse(&["--queues", "63"]).unwrap().request_queues, 63);
        assert_eq!(
            parse(&["--queue-size", "100"]),
            Err(ArgsError::QueueSize(100))
        );
        assert_eq!(
            parse(&["--engine-threads", "0"]),
            Err(ArgsError::EngineThreads(0))
        );
    }

    #[test]
    fn socket_choice() {
        assert!(Args::try_parse_from(["vhost-user-accel"]).is_err());
        assert!(Args::try_parse_from([
            "vhost-user-accel",
            "--socket-path",
            "a",
            "--socket-fd",
            "3"
        ])
        .is_err());
        let args = Args::try_parse_from(["vhost-user-accel", "--socket-fd", "999"]).unwrap();
        assert_eq!(Config::try_from(args), Err(ArgsError::SocketFd(999)));
    }
}
