//! bst: a single-binary deploy tool. Data flows one way: CLI + targets.toml → settings →
//! remote scripts run over a transport → a report.

// Output goes through `report` (the printer, `diag`, `prompt`): one place decides what a
// quiet, JSON or verbose run shows.
#![warn(clippy::print_stdout, clippy::print_stderr)]

pub mod cli;
mod commands;
pub mod complete;
mod config;
#[cfg(test)]
mod corpus_tests;
mod dotenv;
mod error;
mod health;
pub mod interrupt;
mod known_hosts;
mod layout;
mod manpage;
mod platform;
mod release;
mod remote;
pub mod report;
mod schema;
mod service;
mod settings;
mod shell;
mod sshconfig;
mod transport;
mod workspace;

use cli::{Cli, Command, ConfigCommand, DrillCommand, EnvCommand};
use error::Error;
use report::Printer;
use settings::Globals;

/// Runs a parsed command line; reports a failure (`error:` on stderr, and with `--json` an
/// error document on stdout) and returns the exit code.
pub fn run(mut cli: Cli) -> i32 {
    let taken = match &mut cli.command {
        Command::Service(words) => take_global_flags(std::mem::take(words), &mut cli.global).map(|w| *words = w),
        _ => Ok(()),
    };
    let globals = Globals {
        json: cli.global.json,
        verbose: cli.global.verbose,
        quiet: cli.global.quiet,
        accept_new_host_key: cli.global.accept_new_host_key,
        color: cli.global.color,
    };
    let p = Printer::new(&globals);
    match taken.and_then(|()| dispatch(&cli, &globals, &p)) {
        Ok(()) => error::code::OK,
        Err(e) => p.fail(&e),
    }
}

fn dispatch(cli: &Cli, globals: &Globals, p: &Printer) -> anyhow::Result<()> {
    // Commands that need no target.
    match &cli.command {
        Command::Completions { shell } => {
            complete::print_script(*shell);
            return Ok(());
        }
        Command::Man => {
            manpage::render(&mut std::io::stdout())?;
            return Ok(());
        }
        Command::Init { path } => return commands::init::run(p, path.as_deref()),
        Command::Config { command: ConfigCommand::Validate } => {
            let path = config::discover(cli.global.config.as_deref())?;
            return commands::config::validate(p, &path);
        }
        _ => {}
    }

    // Everything that can be checked locally is checked before any connection.
    let service_args = match &cli.command {
        Command::Service(words) => Some(parse_service_words(words)?),
        _ => None,
    };
    let target_names: Vec<String> = match &cli.command {
        Command::Deploy { target, .. }
        | Command::List { target }
        | Command::Rollback { target, .. }
        | Command::Prune { target, .. }
        | Command::Unlock { target }
        | Command::Check { target, .. }
        | Command::Config { command: ConfigCommand::Show { target } }
        | Command::Drill { command: DrillCommand::Rollback { target, .. } } => vec![target.clone()],
        Command::Env { command } => match command {
            EnvCommand::Check { target, .. }
            | EnvCommand::Set { target, .. }
            | EnvCommand::Unset { target, .. }
            | EnvCommand::Keys { target } => {
                vec![target.clone()]
            }
            EnvCommand::Compare { left, right, keys, .. } => {
                for k in keys {
                    if !settings::valid_env_key(k) {
                        return Err(Error::Usage(format!("{} (in --keys)", settings::invalid_env_key(k))).into());
                    }
                }
                vec![commands::env::parse_side(left)?.target, commands::env::parse_side(right)?.target]
            }
        },
        Command::Service(words) => vec![words[0].clone()],
        Command::Completions { .. } | Command::Man | Command::Init { .. } | Command::Config { command: ConfigCommand::Validate } => {
            unreachable!("handled above")
        }
    };
    for name in &target_names {
        if !config::valid_target_name(name) {
            return Err(Error::Usage(format!("invalid target name `{name}`")).into());
        }
    }
    if let Command::Rollback { release_id: Some(id), .. } = &cli.command {
        if !release::is_release_id(id) {
            return Err(Error::BadReleaseId(id.clone()).into());
        }
    }
    if let Command::Env { command: EnvCommand::Set { key, .. } | EnvCommand::Unset { key, .. } } = &cli.command {
        if !settings::valid_env_key(key) {
            return Err(Error::Usage(settings::invalid_env_key(key)).into());
        }
    }
    let path = config::discover(cli.global.config.as_deref())?;
    let config = config::Config::load(&path)?;
    let target = settings::resolve_target(&config, &target_names[0])?;
    // Evidence lands next to targets.toml, whatever the current directory.
    let reports_of = |r: &cli::ReportsArg| r.reports.clone().unwrap_or_else(|| target.reports.clone());

    match &cli.command {
        Command::Deploy { build, no_restart, .. } => {
            commands::deploy::run(&target, &|| settings::siblings(&config, &target), globals, p, *build, !*no_restart)
        }
        Command::List { .. } => commands::list::run(&target, globals, p),
        Command::Rollback { release_id, no_restart, .. } => {
            commands::rollback::run(&target, globals, p, release_id.as_deref(), !*no_restart)
        }
        Command::Prune { keep, .. } => commands::prune::run(&target, globals, p, *keep),
        Command::Unlock { .. } => commands::unlock::run(&target, globals, p),
        Command::Check { reports, .. } => commands::check::run(&target, globals, p, &reports_of(reports)),
        Command::Config { .. } => commands::config::show(p, &target, config.origins.get(&target.name)),
        Command::Completions { .. } | Command::Man | Command::Init { .. } => unreachable!("handled above"),
        Command::Drill { command: DrillCommand::Rollback { reports, .. } } => {
            commands::drill::rollback(&target, globals, p, &reports_of(reports))
        }
        Command::Env { command } => match command {
            EnvCommand::Check { reports, .. } => commands::env::check(&target, globals, p, &reports_of(reports)),
            EnvCommand::Keys { .. } => commands::env::keys(&target, globals, p),
            EnvCommand::Set { key, .. } => {
                let value = commands::env::read_value_for_set(key)?;
                commands::env::edit(&target, globals, p, key, Some(value))
            }
            EnvCommand::Unset { key, .. } => commands::env::edit(&target, globals, p, key, None),
            EnvCommand::Compare { left, right, keys, reports } => {
                let (l, r) = (commands::env::parse_side(left)?, commands::env::parse_side(right)?);
                settings::resolve_target(&config, &r.target)?;
                commands::env::compare(&config, globals, p, &l, &r, keys, &reports_of(reports))
            }
        },
        Command::Service(_) => {
            let (service, action) = service_args.expect("parsed above");
            commands::service::run(&target, globals, p, service.as_deref(), action)
        }
    }
}

/// clap passes an external subcommand's words through untouched, global flags included
/// (`bst core-api-prod status --json`): pick those out here.
fn take_global_flags(words: Vec<String>, g: &mut cli::GlobalArgs) -> anyhow::Result<Vec<String>> {
    let mut rest = Vec::new();
    // The first problem is reported, but only after every word is read: a `--json` after
    // a bad option still asks for the error as a document.
    let mut problem: Option<String> = None;
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        match w.as_str() {
            "--json" => g.json = true,
            "-q" | "--quiet" => g.quiet = true,
            "--verbose" => g.verbose += 1,
            "--accept-new-host-key" => g.accept_new_host_key = true,
            "--config" => match it.next() {
                Some(v) => g.config = Some(v.into()),
                None => problem = problem.or(Some("--config needs a path".into())),
            },
            v if v.starts_with("--config=") => g.config = Some(v["--config=".len()..].into()),
            "--color" => match it.next().as_deref().map(cli::parse_color) {
                Some(Ok(c)) => g.color = c,
                Some(Err(e)) => problem = problem.or(Some(e)),
                None => problem = problem.or(Some("--color needs auto, always or never".into())),
            },
            v if v.starts_with("--color=") => match cli::parse_color(&v["--color=".len()..]) {
                Ok(c) => g.color = c,
                Err(e) => problem = problem.or(Some(e)),
            },
            v if v.len() > 1 && v.starts_with('-') && !v.starts_with("--") && v[1..].chars().all(|c| c == 'v') => {
                g.verbose += u8::try_from(v.len() - 1).unwrap_or(u8::MAX);
            }
            v if v.starts_with('-') => problem = problem.or(Some(format!("unknown option `{v}`"))),
            _ => rest.push(w),
        }
    }
    if let Some(p) = problem {
        return Err(Error::Usage(p).into());
    }
    if rest.is_empty() {
        return Err(Error::Usage("expected a command (see --help)".into()).into());
    }
    Ok(rest)
}

/// `TARGET ACTION` or `TARGET SERVICE ACTION`.
fn parse_service_words(words: &[String]) -> anyhow::Result<(Option<String>, crate::health::Action)> {
    use crate::health::Action;
    let usage = || {
        // The likeliest slip first: a mistyped command (`bst deploi staging`), then a
        // mistyped action (`bst core-api-prod restrat`).
        let subcommands = config::RESERVED_NAMES.iter().copied().filter(|c| *c != "help");
        if let Some(cmd) = error::closest(&words[0], subcommands) {
            let rest: Vec<&str> = words[1..].iter().map(String::as_str).collect();
            return Error::Usage(format!(
                "unknown command `{}`; did you mean `bst {cmd}{}{}`?",
                words[0],
                if rest.is_empty() { "" } else { " " },
                rest.join(" ")
            ));
        }
        let last = words.last().map_or("", String::as_str);
        if words.len() > 1 {
            if let Some(a) = error::closest(last, Action::NAMES) {
                return Error::Usage(format!(
                    "unknown action `{last}`; did you mean `{a}`? (bst <TARGET> [<SERVICE>] status|start|stop|restart)"
                ));
            }
        }
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
