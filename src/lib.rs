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
pub mod service;
pub mod settings;
pub mod shell;
pub mod snapshot;
pub mod transport;

use cli::{Cli, Command};
use error::Error;
use report::Printer;
use settings::Globals;

pub fn run(mut cli: Cli) -> anyhow::Result<()> {
    if let Command::Service(words) = &mut cli.command {
        *words = take_global_flags(std::mem::take(words), &mut cli.global)?;
    }
    let globals = Globals {
        json: cli.global.json,
        verbose: cli.global.verbose,
        quiet: cli.global.quiet,
        accept_new_host_key: cli.global.accept_new_host_key,
    };
    let p = Printer::new(&globals);

    // Everything that can be checked locally is checked before any connection.
    let service_args = match &cli.command {
        Command::Service(words) => Some(parse_service_words(words)?),
        _ => None,
    };
    let target_name = match &cli.command {
        Command::Deploy { target, .. }
        | Command::List { target }
        | Command::Rollback { target, .. }
        | Command::Prune { target, .. }
        | Command::Unlock { target } => target.as_str(),
        Command::Service(words) => words[0].as_str(),
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
        Command::Deploy { build, no_restart, .. } => commands::deploy::run(&target, &globals, &p, *build, !*no_restart),
        Command::List { .. } => commands::list::run(&target, &globals, &p),
        Command::Rollback { release_id, .. } => commands::rollback::run(&target, &globals, &p, release_id.as_deref()),
        Command::Prune { keep, .. } => commands::prune::run(&target, &globals, &p, *keep),
        Command::Unlock { .. } => commands::unlock::run(&target, &globals, &p),
        Command::Service(_) => {
            let (service, action) = service_args.expect("parsed above");
            commands::service::run(&target, &globals, &p, service.as_deref(), action)
        }
    }
}

/// clap passes an external subcommand's words through untouched, global flags included
/// (`bst core-api-prod status --json`): pick those out here.
fn take_global_flags(words: Vec<String>, g: &mut cli::GlobalArgs) -> anyhow::Result<Vec<String>> {
    let mut rest = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        match w.as_str() {
            "--json" => g.json = true,
            "-q" | "--quiet" => g.quiet = true,
            "--verbose" => g.verbose += 1,
            "--accept-new-host-key" => g.accept_new_host_key = true,
            "--config" => g.config = Some(it.next().ok_or_else(|| Error::Usage("--config needs a path".into()))?.into()),
            v if v.starts_with("--config=") => g.config = Some(v["--config=".len()..].into()),
            v if v.len() > 1 && v.starts_with('-') && !v.starts_with("--") && v[1..].chars().all(|c| c == 'v') => {
                g.verbose += u8::try_from(v.len() - 1).unwrap_or(u8::MAX);
            }
            v if v.starts_with('-') => return Err(Error::Usage(format!("unknown option `{v}`")).into()),
            _ => rest.push(w),
        }
    }
    if rest.is_empty() {
        return Err(Error::Usage("expected a command (see --help)".into()).into());
    }
    Ok(rest)
}

/// `TARGET ACTION` or `TARGET SERVICE ACTION`.
fn parse_service_words(words: &[String]) -> anyhow::Result<(Option<String>, commands::service::Action)> {
    use commands::service::Action;
    let usage = || {
        Error::Usage(format!(
            "unknown command `{}`; expected a command (see --help) or `bst <TARGET> [<SERVICE>] status|start|stop|restart`",
            words.join(" ")
        ))
    };
    match words {
        [_, action] => Ok((None, Action::parse(action).ok_or_else(usage)?)),
        [_, service, action] => {
            if !config::valid_target_name(service) {
                return Err(usage().into());
            }
            Ok((Some(service.clone()), Action::parse(action).ok_or_else(usage)?))
        }
        _ => Err(usage().into()),
    }
}
