//! `bst man`: one self-contained reference page, bst(1). clap_mangen's page points at a
//! `bst-deploy(1)` per subcommand that nobody installs; this page holds every command itself,
//! with the options taken from the clap definition (so they cannot drift), and the rest of
//! the reference from the README: exit codes, environment, files and the server layout,
//! the `targets.toml` keys, examples.

use std::io::Write;

use clap::CommandFactory;
use roff::{bold, italic, roman, Inline, Roff};

use crate::cli::Cli;

pub fn render(w: &mut dyn Write) -> std::io::Result<()> {
    let mut root = Cli::command();
    root.build();
    let mut r = Roff::new();
    let version = root.get_version().unwrap_or_default().to_string();

    r.control("SH", ["NAME"]);
    r.text([roman(format!("bst - {}", root.get_about().map(|a| a.to_string()).unwrap_or_default()))]);

    r.control("SH", ["SYNOPSIS"]);
    r.text([bold("bst"), roman(" ["), italic("OPTIONS"), roman("] "), italic("COMMAND"), roman(" ["), italic("ARGS"), roman("]")]);
    r.control("br", []);
    r.text([
        bold("bst"),
        roman(" ["),
        italic("OPTIONS"),
        roman("] "),
        italic("TARGET"),
        roman(" ["),
        italic("SERVICE"),
        roman("] "),
        bold("status"),
        roman("|"),
        bold("start"),
        roman("|"),
        bold("stop"),
        roman("|"),
        bold("restart"),
    ]);

    r.control("SH", ["DESCRIPTION"]);
    para(&mut r, "bst ships a snapshot of the local workspace to a server as a new release, switches the current link to it atomically, keeps the last releases, and rolls back in one command. A target in targets.toml names the host (or \"local\" for this machine), the base directory and what to run. Every remote step is a POSIX sh script run over one SSH connection; host keys are checked against known_hosts, and each target has a lock.");

    r.control("SH", ["OPTIONS"]);
    para(&mut r, "These apply to every command and may be given before or after it.");
    for a in root.get_arguments().filter(|a| !a.is_hide_set()) {
        arg_item(&mut r, a);
    }

    r.control("SH", ["COMMANDS"]);
    for sub in root.get_subcommands().filter(|s| !s.is_hide_set()) {
        command_items(&mut r, sub);
    }
    r.control("SS", ["bst TARGET [SERVICE] status|start|stop|restart"]);
    para(&mut r, "Service control. Without SERVICE: status shows every declared service, start, stop and restart act on the target's app service. Each action waits for its result, and start and restart also for health. status shows, per service, its active and sub state, main PID, since when, the release its process runs from, and health. Exit 3 when a service is inactive or unhealthy.");

    r.control("SH", ["EXIT STATUS"]);
    tagged(&mut r, EXIT_CODES, bold, roman);

    r.control("SH", ["ENVIRONMENT"]);
    tagged(&mut r, ENVIRONMENT, bold, roman);

    r.control("SH", ["FILES"]);
    tagged(&mut r, FILES, italic, roman);
    r.control("SS", ["Server layout"]);
    para(&mut r, "Under a target's base directory:");
    tagged(&mut r, LAYOUT, italic, roman);

    r.control("SH", ["CONFIGURATION"]);
    para(&mut r, "targets.toml has an optional [defaults] table, merged under every target, and one [targets.NAME] table per target. The safety lists (forbidden_paths, required_env, shared_files, shared_dirs, exclude, include) are unions of the defaults and the target's own; services merge by name; every other key set on the target overrides. Every unknown key (with the closest valid one), wrong type (with an example) and syntax error is reported in one run, as file:line:col. bst config show TARGET prints each resolved value and where it came from.");
    tagged(&mut r, TARGET_KEYS, bold, roman);
    r.control("SS", ["Services"]);
    para(&mut r, "[targets.NAME.services.SERVICE] declares a systemd unit:");
    tagged(&mut r, SERVICE_KEYS, bold, roman);

    r.control("SH", ["EXAMPLES"]);
    tagged(&mut r, EXAMPLES, roman, bold);

    r.control("SH", ["SEE ALSO"]);
    r.text([
        bold("ssh"),
        roman("(1), "),
        bold("ssh_config"),
        roman("(5), "),
        bold("sshd"),
        roman("(8), "),
        bold("systemctl"),
        roman("(1), "),
        bold("systemd.exec"),
        roman("(5)"),
    ]);
    // Non-ASCII as roff's own escapes: man pipes pages through groff without preconv on
    // some systems, and `…` then is "invalid input character".
    let mut page = String::new();
    // Written by hand: roff drops the empty date argument `.TH` needs before the version.
    let th = format!(".TH bst 1 \"\" \"bst {version}\" \"User Commands\"\n.SH NAME");
    for c in r.render().replacen(".SH NAME", &th, 1).chars() {
        if c.is_ascii() {
            page.push(c);
        } else {
            page.push_str(&format!("\\[u{:04X}]", c as u32));
        }
    }
    w.write_all(page.as_bytes())
}

/// A `.TP` list: each tag in `tag`'s font, its text in `text`'s.
fn tagged(r: &mut Roff, items: &[(&'static str, &'static str)], tag: fn(&'static str) -> Inline, text: fn(&'static str) -> Inline) {
    for (t, x) in items {
        r.control("TP", []);
        r.text([tag(t)]);
        r.text([text(x)]);
    }
}

fn para(r: &mut Roff, text: &str) {
    r.control("PP", []);
    r.text([roman(text)]);
}

fn plain(s: &clap::builder::StyledStr) -> String {
    s.to_string()
}

/// One `.TP` per option or positional: its spelling, then its help.
fn arg_item(r: &mut Roff, a: &clap::Arg) {
    let mut head: Vec<Inline> = Vec::new();
    let value = a.get_value_names().map(|v| v.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(" "));
    if a.is_positional() {
        head.push(italic(value.unwrap_or_else(|| a.get_id().to_string().to_uppercase())));
    } else {
        if let Some(s) = a.get_short() {
            head.push(bold(format!("-{s}")));
            if a.get_long().is_some() {
                head.push(roman(", "));
            }
        }
        if let Some(l) = a.get_long() {
            head.push(bold(format!("--{l}")));
        }
        if a.get_num_args().is_some_and(|n| n.takes_values()) {
            head.push(roman(" "));
            head.push(italic(value.unwrap_or_else(|| "VALUE".into())));
        }
    }
    r.control("TP", []);
    r.text(head);
    let mut help = a.get_long_help().or(a.get_help()).map(plain).unwrap_or_default();
    let values: Vec<String> = a.get_possible_values().iter().filter(|p| !p.is_hide_set()).map(|p| p.get_name().to_string()).collect();
    if !values.is_empty() && a.get_id() != "shell" {
        help.push_str(&format!(" (one of: {})", values.join(", ")));
    }
    if let Some(e) = a.get_env() {
        help.push_str(&format!(" [env: {}]", e.to_string_lossy()));
    }
    r.text([roman(help)]);
}

/// A `.SS` per command that runs something (groups like `env` list their commands instead).
fn command_items(r: &mut Roff, cmd: &clap::Command) {
    if cmd.get_name() == "help" {
        return;
    }
    if cmd.has_subcommands() {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            command_items(r, sub);
        }
        return;
    }
    let usage = plain(&cmd.clone().render_usage());
    let usage = usage.trim().trim_start_matches("Usage:").trim().to_string();
    r.control("SS", [usage.as_str()]);
    let about = cmd.get_long_about().or(cmd.get_about()).map(plain).unwrap_or_default();
    para(r, &about);
    if cmd.get_name() == "completions" {
        para(r, "SHELL is one of bash, zsh, fish, powershell, elvish. The bash script also completes target and service names from targets.toml: source <(bst completions bash).");
    }
    let args: Vec<&clap::Arg> = cmd
        .get_arguments()
        .filter(|a| !a.is_hide_set() && !a.is_global_set() && !matches!(a.get_id().as_str(), "help" | "version"))
        .collect();
    if !args.is_empty() {
        r.control("RS", []);
        for a in args {
            arg_item(r, a);
        }
        r.control("RE", []);
    }
}

const EXIT_CODES: &[(&str, &str)] = &[
    ("0", "Success."),
    ("1", "The operation failed (remote error, build failed, nothing to roll back, unknown release, a release gate that did not pass); current is unchanged."),
    ("2", "Usage or configuration error (bad arguments, malformed targets.toml, unknown target, bad release id); nothing was contacted. Also an env value that env set refuses; nothing was written."),
    ("3", "A service is inactive or unhealthy (status, or a start or restart that did not end healthy), as systemctl reports it."),
    ("4", "The target is locked by another run, or by one that cannot be proven gone; the holder is named. bst unlock TARGET breaks the lock."),
    ("5", "Cannot connect, authenticate, or trust the host key (unknown, changed, revoked, or vouched for only by a certificate authority)."),
    ("6", "The outcome is not known: the connection was lost during the deploy and the server could not be asked afterwards whether it switched. bst list TARGET says where current points."),
    ("130", "Interrupted (Ctrl-C, SIGTERM or SIGHUP); cleanup ran, and after a gated switch the server switched back."),
];

const ENVIRONMENT: &[(&str, &str)] = &[
    ("BST_CONFIG", "The config file, as --config. Default: targets.toml in the current directory or the nearest parent."),
    ("BST_SSH_CONFIG", "Read only this ssh config file, like ssh -F; none reads no ssh config at all."),
    ("BST_SSH_PASSPHRASE", "The passphrase of an encrypted private key. Without it bst asks on the terminal, or fails when there is none."),
    ("BST_CACHE_DIR", "Where the client keeps its hash cache and link verdicts. Default: $XDG_CACHE_HOME/bst or ~/.cache/bst (on Windows, bst under %LOCALAPPDATA%)."),
    ("SSH_AUTH_SOCK", "The ssh-agent to try keys from, unless identity_file, IdentitiesOnly or IdentityAgent none say otherwise."),
    ("NO_COLOR", "Any non-empty value turns colour off where --color is auto."),
    ("CI", "Any value other than empty or false: plain progress lines instead of a progress bar."),
    ("TERM", "dumb turns colour off where --color is auto."),
    ("SHELL", "On the server, the login shell that runs install and build (sh when unset)."),
];

const FILES: &[(&str, &str)] = &[
    ("targets.toml", "The targets, found in the current directory or the nearest parent (see CONFIGURATION). bst init writes a commented one."),
    ("~/.ssh/config, /etc/ssh/ssh_config", "Read as ssh reads them: HostName, User, Port, IdentityFile, ProxyJump, known hosts options and more; bst config show TARGET shows what was used from where."),
    ("~/.ssh/known_hosts, /etc/ssh/ssh_known_hosts", "Host keys; an unknown key is refused unless --accept-new-host-key records it in the first user file."),
    ("reports/gates/GATE/TIMESTAMP.json, .md", "Evidence written by the release gates (check, env check, env compare, drill rollback); --reports DIR moves it."),
    ("~/.cache/bst/", "The client's hash cache and per-host compression verdicts (BST_CACHE_DIR)."),
];

const LAYOUT: &[(&str, &str)] = &[
    ("releases/ID/", "One per deploy, ID = UTC YYYYMMDDTHHMMSSZ (sorts by name)."),
    ("releases/ID/.release-meta", "JSON: id, target, status (pending, ok, failed), created_at, commit, branch, dirty, deployed_by, tool_version, build, files, bytes, duration_ms."),
    ("current", "A relative link to releases/ID, switched atomically; only ever points at a complete ok release."),
    ("shared/", "The env file and other persistent files and directories, linked into each release (shared_files, shared_dirs)."),
    ("logs/ID.log", "Build output of that release."),
    ("logs/deploys.jsonl", "One audit line per deploy, rollback, drill, service action and env edit: when, who, what, release ids, result; never values."),
    (".bst-lock/", "Held during deploy, rollback, prune, drills and env edits; its owner record says who holds it."),
    (".bst-incoming/ID", "Upload staging; never counted as a release, removed on the next run."),
    (".bst-cache/", "The pristine copy of the last uploaded snapshot, its manifest and a spare copy, for delta redeploys."),
];

const TARGET_KEYS: &[(&str, &str)] = &[
    ("host", "The server (an ssh config alias works), or \"local\": the same layout on this machine, no SSH."),
    ("port", "SSH port (default 22, or the ssh config's Port)."),
    ("user", "SSH user (default: the ssh config's User, else the local user)."),
    ("identity_file", "The private key to use, and only that one. Default: ssh-agent, then the ssh config's IdentityFile, then ~/.ssh/id_ed25519, id_ecdsa, id_rsa."),
    ("known_hosts", "The known_hosts file (default ~/.ssh/known_hosts; /etc/ssh/ssh_known_hosts is read too)."),
    ("base", "Absolute directory on the server that holds releases, current, shared and logs; / and ~ are refused. With host = \"local\" a relative base is relative to the config file."),
    ("source", "The workspace root to ship, relative to the config file (default \".\")."),
    ("keep_releases", "How many releases prune and deploy keep (default 5)."),
    ("shared_files", "Paths linked from the release to shared/ and never shipped from the workspace, e.g. [\".env\"]."),
    ("shared_dirs", "The same for directories (created empty in shared/ if missing)."),
    ("exclude", "Gitignore-style patterns excluded on top of .gitignore."),
    ("include", "Gitignore-style patterns of files that ship although they look like secrets: .env*, *.pem, *.key, id_* private key names, small extension-less files whose first line is a private key header. Without it each such file is named and not shipped."),
    ("source_is_not_git", "true: ship a source that is not inside a git work tree, by walking it (refused otherwise: a config kept in the wrong folder would ship that folder)."),
    ("install", "Run with --build in the release directory, in a login shell, e.g. \"pnpm install --frozen-lockfile\"."),
    ("build", "Run with --build after install, e.g. \"pnpm -r build\"."),
    ("forbidden_paths", "Directories the base may never be at or under, even through symlinks."),
    ("env_file", "The env file, relative to shared/ (default .env)."),
    ("required_env", "Keys env check requires present, non-empty and clean."),
    ("expect_env", "Keys with the values env check expects, e.g. { QUEUE_ENABLED = \"true\" }."),
    ("env_dialect", "Who reads the env file: systemd, dotenv or node (default systemd when services are declared, else dotenv)."),
    ("env_backups_keep", "Backups of the env file kept by env set and unset (default 10)."),
    ("restart", "Services restarted after each deploy's switch, then health-checked, e.g. [\"app\"]."),
    ("health_timeout", "How long a restarted service may take to become healthy (default 30s; at most 24h)."),
    ("settle", "How long a (re)started unit must keep its PID and NRestarts (default 3s)."),
    ("confirm_margin", "How much longer the server's watchdog waits before switching back (default 30s)."),
    ("seed_from_siblings", "The first deploy starts from the pristine copy of another target of this file on the same server (same host, port and user), once it is proven, and sends only the difference (default true); false: always a full first upload."),
];

const SERVICE_KEYS: &[(&str, &str)] = &[
    ("unit", "The systemd unit, e.g. \"bst-core-api.service\"."),
    ("scope", "system (default) or user (systemctl --user, with lingering)."),
    ("sudo", "true: sudo -n systemctl (not with scope = \"user\")."),
    ("health", "{ http = \"http://127.0.0.1:4100/health\", status = 200, body_contains = \"ok\" } or { redis = \"127.0.0.1:6379\" }; probed through the SSH connection, plain HTTP only."),
];

const EXAMPLES: &[(&str, &str)] = &[
    ("Write a targets.toml for this repository, then try the local demo target:", "bst init && bst deploy demo"),
    ("Check a server target before the first deploy:", "bst config validate && bst check staging"),
    (
        "Put a secret in place (the value comes from stdin, never from argv):",
        "printf %s \"$TOKEN\" | bst env set staging INGEST_SERVICE_TOKEN",
    ),
    ("Deploy with install and build, look, and roll back:", "bst deploy staging --build; bst list staging; bst rollback staging"),
    ("Rehearse a rollback and keep the evidence:", "bst drill rollback staging"),
    ("Restart a named service and see every service:", "bst core-api-prod redis restart; bst core-api-prod status"),
    ("Use the result in a script:", "bst list staging --json | jq -r .current"),
];

#[cfg(test)]
mod tests {
    /// A key added to targets.toml is a key the reference page must explain.
    #[test]
    fn every_target_key_is_documented() {
        let raw = serde_json::to_value(crate::config::RawTarget::default()).unwrap();
        let mut fields: Vec<&str> = raw.as_object().unwrap().keys().map(String::as_str).filter(|k| *k != "services").collect();
        let mut documented: Vec<&str> = super::TARGET_KEYS.iter().map(|(k, _)| *k).collect();
        fields.sort();
        documented.sort();
        assert_eq!(fields, documented);
    }
}
