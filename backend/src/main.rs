//! `vhost-user-accel`: the daemon binary. Parses the command line, then hands
//! over to [`vhost_user_accel::Server`].

mod args;

use std::process::ExitCode;

use clap::Parser;
use log::error;
use vhost_user_accel::config::MetricsAddr;
use vhost_user_accel::{error_chain, shutdown, Config, Server, SocketSource};

use crate::args::Args;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let config = match Config::try_from(Args::parse()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("vhost-user-accel: {}", error_chain(&e));
            return ExitCode::from(2);
        }
    };
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{}", error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    // Before any thread starts, so that every thread inherits the mask.
    let signals = shutdown::block_exit_signals()?;
    let tenant_sockets = config
        .tenants
        .iter()
        .filter_map(|tenant| match &tenant.socket {
            SocketSource::Path(path) => Some(path.clone()),
            SocketSource::Fd(_) => None,
        });
    let metrics_socket = match &config.metrics {
        Some(MetricsAddr::Unix(path)) => Some(path.clone()),
        _ => None,
    };
    let sockets = tenant_sockets.chain(metrics_socket).collect();
    let server = Server::bind(config)?;
    shutdown::spawn_reporter(signals, server.stats(), sockets)?;
    Ok(server.serve_forever()?)
}
