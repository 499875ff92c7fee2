//! `vhost-user-accel`: the daemon binary. Parses the command line, then hands
//! over to [`vhost_user_accel::Server`].

mod args;

use std::process::ExitCode;

use clap::Parser;
use log::error;
use vhost_user_accel::{Config, Server};

use crate::args::Args;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let config = match Config::try_from(Args::parse()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("vhost-user-accel: {e}");
            return ExitCode::from(2);
        }
    };
    let result = Server::bind(config).and_then(|mut server| server.serve_forever());
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                message = format!("{message}: {cause}");
                source = cause.source();
            }
            error!("{message}");
            ExitCode::FAILURE
        }
    }
}
