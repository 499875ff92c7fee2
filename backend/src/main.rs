// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `vhost-user-accel`: the daemon binary. Parses the command line, then
//! supervises a process per tenant ([`vhost_user_accel::Supervisor`]); run
//! with the hidden `--tenant-process`, it is one of those processes
//! ([`vhost_user_accel::tenant_process`]).

mod args;

use std::process::ExitCode;

use clap::Parser;
use log::error;
use vhost_user_accel::log_limit::LimitedLogger;
use vhost_user_accel::{error_chain, tenant_process, Config, Supervisor};

use crate::args::Args;

/// What tenants' processes run: this very binary, even if its file has been
/// replaced since the daemon started.
const OWN_BINARY: &str = "/proc/self/exe";

/// `RUST_LOG` decides what is logged (`info` by default); lines of the crates
/// the daemon builds on are rate-limited, since a VMM or a guest can trigger
/// them ([`LimitedLogger`]). Never in colour: styled output asks whether
/// stderr is a terminal (an `ioctl`) at every line, which the sandbox of a
/// tenant's process does not allow.
fn init_logger() {
    let logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
            .write_style(env_logger::WriteStyle::Never)
            .build();
    let max_level = logger.filter();
    if log::set_boxed_logger(Box::new(LimitedLogger::new(logger))).is_ok() {
        log::set_max_level(max_level);
    }
}

fn main() -> ExitCode {
    init_logger();
    let args = Args::parse();
    if let Some(name) = &args.tenant_process {
        return match tenant_process::run(name, std::io::stdin().lock()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                error!("tenant process: {}", error_chain(&e));
                ExitCode::FAILURE
            }
        };
    }
    let config_file = args.config.clone();
    let config = match Config::try_from(args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("vhost-user-accel: {}", error_chain(&e));
            return ExitCode::from(2);
        }
    };
    if let Err(e) = vhost_user_accel::server::check_engine(&config) {
        eprintln!("vhost-user-accel: {}", error_chain(&e));
        return ExitCode::from(2);
    }
    let supervisor = Supervisor::bind(config, OWN_BINARY).map(|s| s.reload_from(config_file));
    match supervisor.and_then(Supervisor::run) {
        Ok(_signal) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
