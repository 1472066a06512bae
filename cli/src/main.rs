//! `hardkey`: provision, seal and own hardware keys (TPM 2.0, PKCS#11) from one command.
//!
//! Exit status: 0 success, 1 the operation failed, 2 usage error.
#![deny(unsafe_code)]

mod args;
mod chains;
mod cmd;
mod config;
mod error;
mod identities;
mod inputs;
mod output;
mod reload;
mod secrets;
mod signals;
mod startup;
mod target;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command};
use crate::cmd::Ctx;
use crate::config::Config;
use crate::error::CliResult;
use crate::output::Output;

fn main() -> ExitCode {
    let tss_note = startup::quiet_tss();
    startup::no_dumps();
    if let Some(note) = tss_note {
        output::note(note);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_error(&e),
    };
    let json = cli.json;
    if json {
        output::set_json_on_stdout();
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Scripts asked for one JSON document on stdout: they get the error as one too.
            if json {
                output::write_stdout(&format!("{:#}", e.to_json()));
            }
            output::error_line(&format!("hardkey: error: {e}"));
            ExitCode::from(e.exit_code())
        }
    }
}

/// clap's own errors and `--help`: help goes out as clap writes it; an error is shown with
/// control characters escaped, and an unexpected argument is not quoted (it may be a secret
/// typed where an option's file belongs, or a PIN given as an argument).
fn clap_error(e: &clap::Error) -> ExitCode {
    if !e.use_stderr() {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    let text = if e.kind() == clap::error::ErrorKind::UnknownArgument {
        "error: an unexpected argument was given (not shown, in case it is a secret: secrets \
         go in files or environment variables, never on the command line)\n\nFor more \
         information, try '--help'."
            .to_owned()
    } else {
        e.render().to_string()
    };
    // `--json` anywhere on the command line (before the first `--`): the script gets the
    // usage error as a JSON document too.
    let json = std::env::args_os()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json");
    if json {
        let message = text.lines().next().unwrap_or_default();
        let message = message.strip_prefix("error: ").unwrap_or(message);
        let e = error::usage(output::printable(message).into_owned());
        output::write_stdout(&format!("{:#}", e.to_json()));
    }
    output::note(&text);
    ExitCode::from(error::EXIT_USAGE)
}

fn run(cli: Cli) -> CliResult {
    // Commands that need no configuration.
    match &cli.command {
        Command::Completions(a) => return cmd::meta::completions(a),
        Command::Man(a) => return cmd::meta::man(a),
        _ => {}
    }
    let ctx = Ctx {
        config: Config::load(cli.config.as_deref())?,
        out: Output { json: cli.json },
    };
    match &cli.command {
        Command::Keygen(a) => cmd::keys::keygen(a, &ctx),
        Command::List(a) => cmd::keys::list(a, &ctx),
        Command::Info(a) => cmd::keys::info(a, &ctx),
        Command::Delete(a) => cmd::keys::delete(a, &ctx),
        Command::Import(a) => cmd::keys::import(a, &ctx),
        Command::Pubkey(a) => cmd::keys::pubkey(a, &ctx),
        Command::Sign(a) => cmd::sign::sign(a, &ctx),
        Command::Verify(a) => cmd::sign::verify(a, &ctx),
        Command::Csr(a) => cmd::cert::csr(a, &ctx),
        Command::Selfsign(a) => cmd::cert::selfsign(a, &ctx),
        Command::Cert(c) => cmd::certs::run(c, &ctx),
        Command::Ca(c) => cmd::ca::run(c, &ctx),
        Command::Decrypt(a) => cmd::crypt::decrypt(a, &ctx),
        Command::Encrypt(a) => cmd::crypt::encrypt(a, &ctx),
        Command::Seal(a) => cmd::seal::seal(a, &ctx),
        Command::Unseal(a) => cmd::seal::unseal(a, &ctx),
        Command::Attest(a) => cmd::attest::attest(a, &ctx),
        Command::Tpm(c) => cmd::tpm::run(c, &ctx),
        Command::Token(c) => cmd::token::run(c, &ctx),
        Command::Bench(a) => cmd::bench::bench(a, &ctx),
        Command::Serve(a) => cmd::serve::serve(a, &ctx),
        Command::Request(a) => cmd::request::request(a, &ctx),
        Command::Completions(_) | Command::Man(_) => Ok(()),
    }
}
