//! bst: a single-binary deploy tool. Data flows one way: CLI + targets.toml → settings →
//! remote scripts run over a transport → a report.

pub mod cli;
pub mod commands;
pub mod config;
pub mod error;
pub mod interrupt;
pub mod release;
pub mod remote;
pub mod report;
pub mod settings;
pub mod shell;
pub mod snapshot;
pub mod transport;

use cli::{Cli, Command};
use error::Error;
use report::Printer;
use settings::Globals;

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let globals = Globals {
        json: cli.global.json,
        verbose: cli.global.verbose,
        quiet: cli.global.quiet,
        accept_new_host_key: cli.global.accept_new_host_key,
    };
    let p = Printer::new(&globals);

    // Everything that can be checked locally is checked before any connection.
    let target_name = match &cli.command {
        Command::Deploy { target, .. }
        | Command::List { target }
        | Command::Rollback { target, .. }
        | Command::Prune { target, .. }
        | Command::Unlock { target } => target.as_str(),
    };
    if !config::valid_target_name(target_name) {
        return Err(Error::Usage(format!("invalid target name `{target_name}`")).into());
    }
    if let Command::Rollback { release_id: Some(id), .. } = &cli.command {
        if !release::is_release_id(id) {
            return Err(Error::BadReleaseId(id.clone()).into());
        }
    }
    let path = config::discover(cli.global.config.as_deref())?;
    let config = config::Config::load(&path)?;
    let target = settings::resolve_target(&config, target_name)?;

    match &cli.command {
        Command::Deploy { build, .. } => commands::deploy::run(&target, &globals, &p, *build),
        Command::List { .. } => commands::list::run(&target, &globals, &p),
        Command::Rollback { release_id, .. } => commands::rollback::run(&target, &globals, &p, release_id.as_deref()),
        Command::Prune { keep, .. } => commands::prune::run(&target, &globals, &p, *keep),
        Command::Unlock { .. } => commands::unlock::run(&target, &globals, &p),
    }
}
