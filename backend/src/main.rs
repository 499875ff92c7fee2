//! `vhost-user-accel`: the daemon binary. Parses the command line, then
//! supervises a process per tenant ([`vhost_user_accel::Supervisor`]); run
//! with the hidden `--tenant-process`, it is one of those processes
//! ([`vhost_user_accel::tenant_process`]).

mod args;

use std::process::ExitCode;

use clap::Parser;
use log::error;
use vhost_user_accel::{error_chain, tenant_process, Config, Supervisor};

use crate::args::Args;

/// What tenants' processes run: this very binary, even if its file has been
/// replaced since the daemon started.
const OWN_BINARY: &str = "/proc/self/exe";

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
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
    let config = match Config::try_from(args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("vhost-user-accel: {}", error_chain(&e));
            return ExitCode::from(2);
        }
    };
    match Supervisor::bind(config, OWN_BINARY).and_then(Supervisor::run) {
        Ok(_signal) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
