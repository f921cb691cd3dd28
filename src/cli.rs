//! The command line. Every `///` line is help text users read.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Atomic releases over SSH: deploy, list, roll back and prune a workspace's snapshots.
#[derive(Debug, Parser)]
#[command(
    name = "bst",
    version,
    about,
    propagate_version = true,
    max_term_width = 100,
    after_help = "Service control:\n  bst <TARGET> status|start|stop|restart            the target's `app` service (status: all)\n  bst <TARGET> <SERVICE> status|start|stop|restart  a named service, e.g. `bst core-api-prod redis status`"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Config file [default: targets.toml in the current directory or the nearest parent]
    #[arg(long, global = true, env = "BST_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Print one JSON document on stdout instead of human output
    #[arg(long, global = true)]
    pub json: bool,

    /// Show each remote command on one line (-vv: each script in full)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Print only errors (a gate's `…_RESULT=` line still goes to stdout)
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Trust and record the host key of a host not yet in known_hosts
    #[arg(long, global = true)]
    pub accept_new_host_key: bool,

    /// Colour PASS/FAIL, `error:` and `warning:` [auto: on a terminal, unless NO_COLOR is set
    /// or --json is given]
    #[arg(long, global = true, value_name = "WHEN", default_value = "auto")]
    pub color: clap::ColorChoice,
}

/// A `--color` value, for the places that read it before or besides clap: `main` (clap's own
/// messages obey it) and the words of `bst <TARGET> …`, which clap does not parse.
pub fn parse_color(v: &str) -> Result<clap::ColorChoice, String> {
    <clap::ColorChoice as clap::ValueEnum>::from_str(v, false).map_err(|_| format!("invalid --color `{v}`: expected auto, always or never"))
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Upload the workspace as a new release and switch `current` to it
    Deploy {
        /// Target name from targets.toml
        target: String,
        /// Run the target's `install` and `build` commands in the new release before switching
        #[arg(long)]
        build: bool,
        /// Do not restart the target's `restart` services (and skip the health gate)
        #[arg(long)]
        no_restart: bool,
    },
    /// Show the current release and every release on the target
    List {
        /// Target name from targets.toml
        target: String,
    },
    /// Point `current` back at an earlier ok release
    Rollback {
        /// Target name from targets.toml
        target: String,
        /// Release to switch to [default: the newest ok release older than current]
        #[arg(long, value_name = "ID")]
        release_id: Option<String>,
        /// Do not restart the target's `restart` services (and skip the health gate)
        #[arg(long)]
        no_restart: bool,
    },
    /// Remove old releases, keeping the newest (never current or its rollback target)
    Prune {
        /// Target name from targets.toml
        target: String,
        /// How many releases to keep [default: the target's keep_releases]
        #[arg(long, value_name = "N")]
        keep: Option<usize>,
    },
    /// Break the target's deploy lock (after a crashed run), naming who held it
    Unlock {
        /// Target name from targets.toml
        target: String,
    },
    /// Release gate on the target's env file, and edits with backups (values never shown)
    Env {
        #[command(subcommand)]
        command: EnvCommand,
    },
    /// Rehearsals that leave evidence
    Drill {
        #[command(subcommand)]
        command: DrillCommand,
    },
    /// Preflight: config, reachability, host key, base, disk, tools, lock, env, units
    Check {
        /// Target name from targets.toml
        target: String,
        #[command(flatten)]
        reports: ReportsArg,
    },
    /// Write a commented targets.toml for this repository (never overwrites)
    Init {
        /// Where to write it [default: targets.toml at the repository root]
        #[arg(long, value_name = "PATH")]
        path: Option<PathBuf>,
    },
    /// Inspect the configuration
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Print a shell completion script
    Completions {
        /// bash, zsh, fish, powershell or elvish
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff)
    Man,
    /// `bst <TARGET> [<SERVICE>] status|start|stop|restart`
    #[command(external_subcommand)]
    Service(Vec<String>),
}

#[derive(Debug, Args)]
pub struct ReportsArg {
    /// Where evidence goes: <DIR>/gates/<gate>/<timestamp>.json|.md [default: reports/ next to targets.toml]
    #[arg(long, value_name = "DIR")]
    pub reports: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum EnvCommand {
    /// Required keys non-empty and clean, expected values as configured: ENV_BASELINE_RESULT
    Check {
        /// Target name from targets.toml
        target: String,
        #[command(flatten)]
        reports: ReportsArg,
    },
    /// Set KEY to a value read from stdin (never from the command line); backup first
    Set {
        /// Target name from targets.toml
        target: String,
        /// Env key, e.g. OPS_DB_URL
        key: String,
    },
    /// Remove KEY; backup first
    Unset {
        /// Target name from targets.toml
        target: String,
        /// Env key, e.g. OPS_DB_URL
        key: String,
    },
    /// List the key names (never values)
    Keys {
        /// Target name from targets.toml
        target: String,
    },
    /// Compare keys between two env files without revealing values: ENV_PARITY_RESULT
    Compare {
        /// TARGET or TARGET:PATH (PATH relative to the base, e.g. staging:current/app/.env)
        left: String,
        /// TARGET or TARGET:PATH
        right: String,
        /// Keys to compare, comma-separated
        #[arg(long, value_delimiter = ',', required = true)]
        keys: Vec<String>,
        #[command(flatten)]
        reports: ReportsArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print a target's resolved settings (defaults merged, paths expanded)
    Show {
        /// Target name from targets.toml
        target: String,
    },
    /// Load the file and resolve every target; report every problem
    Validate,
}

#[derive(Debug, Subcommand)]
pub enum DrillCommand {
    /// Roll back, health-check, roll forward, health-check: ROLLBACK_DRILL_RESULT
    Rollback {
        /// Target name from targets.toml
        target: String,
        #[command(flatten)]
        reports: ReportsArg,
    },
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }

    #[test]
    fn reserved_target_names_are_the_subcommands() {
        let mut names: Vec<String> = Cli::command().get_subcommands().map(|c| c.get_name().to_string()).collect();
        names.push("help".into());
        names.sort();
        let mut reserved: Vec<String> = crate::config::RESERVED_NAMES.iter().map(|s| s.to_string()).collect();
        reserved.sort();
        assert_eq!(names, reserved);
    }
}
