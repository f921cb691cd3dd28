//! Shell completion of the names only targets.toml knows: targets and their services.
//!
//! `bst completions <shell>` prints clap_complete's static script (subcommands, options). For
//! bash it also installs a wrapper that first asks the hidden helper `bst __complete -- <words
//! up to the cursor>`, which prints the target or service names that fit the word under the
//! cursor, or nothing, and then the static script answers. A helper rather than clap's
//! dynamic engine: that engine is behind clap_complete's `unstable-dynamic` feature (no
//! semver promise), and it cannot see past an external subcommand, so `bst <TARGET>
//! <SERVICE> <ACTION>` would get no service names.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::CommandFactory;

use crate::cli::Cli;
use crate::config;
use crate::health::Action;

pub const HELPER: &str = "__complete";

/// Runs the helper when `args` (the whole argv) ask for it; returns the exit code.
pub fn helper(args: &[OsString]) -> Option<i32> {
    if args.get(1).is_none_or(|a| a != HELPER) {
        return None;
    }
    let mut words: Vec<String> = args[2..].iter().map(|a| a.to_string_lossy().into_owned()).collect();
    if words.first().is_some_and(|w| w == "--") {
        words.remove(0);
    }
    // words[0] is the program as typed; an empty line completes an empty word.
    let words = if words.len() > 1 { &words[1..] } else { &[String::new()][..] };
    let mut out = String::new();
    for c in candidates(words) {
        out.push_str(&c);
        out.push('\n');
    }
    let _ = std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes());
    Some(0)
}

/// The names fitting the last word of `words` (the command line after `bst`), sorted; empty
/// where something other than a target or service name is expected.
pub fn candidates(words: &[String]) -> Vec<String> {
    let Some((cur, before)) = words.split_last() else { return Vec::new() };
    // Options are the static script's; `TARGET:PATH` is split at `:` by bash.
    if cur.starts_with('-') || cur.contains(':') || before.last().is_some_and(|w| w == ":") {
        return Vec::new();
    }
    let mut root = Cli::command();
    root.build();
    let mut config: Option<PathBuf> = std::env::var_os("BST_CONFIG").filter(|v| !v.is_empty()).map(PathBuf::from);
    let mut node = &root;
    let mut free: Vec<&str> = Vec::new();
    let mut i = 0;
    while i < before.len() {
        let w = before[i].as_str();
        i += 1;
        if w == "--config" {
            config = before.get(i).map(PathBuf::from);
            i += 1;
        } else if let Some(v) = w.strip_prefix("--config=") {
            config = Some(v.into());
        } else if let Some(long) = w.strip_prefix("--") {
            if !long.contains('=') && takes_value(node, |a| a.get_long() == Some(long)) {
                i += 1;
            }
        } else if w.len() > 1 && w.starts_with('-') {
            let last = w.chars().last().unwrap_or('-');
            if takes_value(node, |a| a.get_short() == Some(last)) {
                i += 1;
            }
        } else if free.is_empty() && node.get_subcommands().any(|s| s.get_name() == w) {
            node = node.find_subcommand(w).expect("just found");
        } else {
            free.push(w);
        }
    }
    let Some(cfg) = config::discover(config.as_deref()).ok().and_then(|p| config::Config::load(&p).ok()) else {
        return Vec::new();
    };
    let targets = || cfg.targets.keys().cloned().collect::<Vec<_>>();
    let services = |t: &str| -> Vec<String> {
        cfg.targets.get(t).and_then(|t| t.services.as_ref()).map(|s| s.keys().cloned().collect()).unwrap_or_default()
    };
    let mut found: Vec<String> = if node.get_name() == root.get_name() {
        // `bst <TARGET> [<SERVICE>] <ACTION>`: the external subcommand form.
        match free.as_slice() {
            [] => root.get_subcommands().filter(|s| !s.is_hide_set()).map(|s| s.get_name().to_string()).chain(targets()).collect(),
            [t] => services(t).into_iter().chain(Action::NAMES.map(String::from)).collect(),
            [t, s] if services(t).iter().any(|n| n == s) => Action::NAMES.map(String::from).to_vec(),
            _ => Vec::new(),
        }
    } else {
        match node.get_positionals().nth(free.len()).map(|a| a.get_id().as_str()) {
            Some("target" | "left" | "right") => targets(),
            _ => Vec::new(),
        }
    };
    found.retain(|c| c.starts_with(cur.as_str()));
    found.sort();
    found.dedup();
    found
}

fn takes_value(cmd: &clap::Command, is: impl Fn(&clap::Arg) -> bool) -> bool {
    cmd.get_arguments().find(|a| is(a)).is_some_and(|a| a.get_num_args().is_some_and(|n| n.takes_values()))
}

/// Appended to clap's bash script: the helper's names first, else clap's own completion.
pub const BASH: &str = include_str!("complete.bash");

/// `bst completions <shell>`.
pub fn print_script(shell: clap_complete::Shell) {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "bst", &mut out);
    if shell == clap_complete::Shell::Bash {
        out.extend_from_slice(BASH.as_bytes());
    }
    let _ = std::io::Write::write_all(&mut std::io::stdout(), &out);
}

#[cfg(test)]
mod tests {
    #[test]
    fn options_and_their_values_are_not_positionals() {
        let d = tempfile::tempdir().unwrap();
        let cfg = d.path().join("targets.toml");
        std::fs::write(&cfg, "[targets.staging]\nhost = \"local\"\nbase = \"/srv/a\"\n[targets.stage-eu]\nhost = \"local\"\nbase = \"/srv/b\"\n[targets.stage-eu.services.redis]\nunit = \"redis.service\"\n").unwrap();
        let c = cfg.to_string_lossy().into_owned();
        let words = |w: &[&str]| super::candidates(&w.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(words(&["--config", &c, "prune", "--keep", "3", "st"]), ["stage-eu", "staging"]);
        assert_eq!(words(&["--config", &c, "prune", "stage-eu", ""]), Vec::<String>::new());
        assert_eq!(words(&["--config", &c, "env", "compare", "staging", "stage-"]), ["stage-eu"]);
        assert_eq!(words(&["--config", &c, "stage-eu", ""]), ["redis", "restart", "start", "status", "stop"]);
        assert_eq!(words(&["--config", &c, "-v", "stage-eu", "redis", "st"]), ["start", "status", "stop"]);
        assert_eq!(words(&["--config", &c, "deploy", "--b"]), Vec::<String>::new());
    }
}
