//! Issue 21, shell and terminal conventions: `--json` error documents, completion of target
//! and service names, colour, verbosity, the `list` header and the man page.

use std::process::Command;

use crate::harness::*;

/// Item 8: with `--json` every failure is a document on stdout, the `error:` line stays on
/// stderr, and a command that printed its own document gets no second one.
#[test]
fn json_errors_are_one_document_for_every_failure() {
    let ws = Workspace::new();
    let env = Env::new(None, &ws, "required_env = [\"OPS_DB_URL\"]");
    let doc = |kind: &str, message: &str, code: i32| serde_json::json!({"schema_version": 1, "error": {"kind": kind, "message": message, "exit_code": code}});
    // clap's own parse errors, --json anywhere on the line.
    let run = env.bst(&["deploy", "--json"]).code(2);
    assert_eq!(run.json(), doc("usage", "the following required arguments were not provided:\n  <TARGET>", 2));
    assert!(run.stderr.starts_with("error: the following required arguments were not provided:\n  <TARGET>\n"), "{}", run.stderr);
    let run = env.bst(&["--json", "list", "t", "--bogus"]).code(2);
    assert_eq!(run.json(), doc("usage", "unexpected argument '--bogus' found (tip: to pass '--bogus' as a value, use '-- --bogus')", 2));
    // Errors bst finds, in every form of the command line.
    let known = format!("unknown target `nosuch` in {} (targets: t)", env.config.display());
    for args in [&["list", "nosuch", "--json"][..], &["--json", "nosuch", "status"], &["nosuch", "status", "--json"]] {
        let run = env.bst(args).code(2);
        assert_eq!(run.json(), doc("unknown_target", &known, 2), "{args:?}");
        assert_eq!(run.stderr, format!("error: {known}\n"));
    }
    let run = env.bst(&["t", "status", "--bogus", "--json"]).code(2);
    assert_eq!(run.json(), doc("usage", "unknown option `--bogus`", 2));
    let run = env.bst(&["rollback", "t", "--release-id", "yesterday", "--json"]).code(2);
    assert_eq!(
        run.json(),
        doc("bad_release_id", "invalid release id `yesterday`: expected UTC YYYYMMDDTHHMMSSZ, e.g. 20260220T051228Z", 2)
    );
    let run = env.bst(&["rollback", "t", "--json"]).code(1);
    let j = run.json();
    assert_eq!((j["error"]["kind"].as_str(), j["error"]["exit_code"].as_i64()), (Some("failed"), Some(1)));
    assert_eq!(run.stderr, format!("error: {}\n", j["error"]["message"].as_str().unwrap()));
    // Exit 5 from an SSH target nobody listens for.
    let port = free_port();
    let unreachable = env.dir.path().join("unreachable.toml");
    std::fs::write(&unreachable, format!("[targets.u]\nhost = \"127.0.0.1\"\nport = {port}\nuser = \"x\"\nbase = \"/srv/x\"\n")).unwrap();
    let run = bst_with(&unreachable, &["list", "u", "--json"], &[]).code(5);
    let j = run.json();
    assert_eq!((j["error"]["kind"].as_str(), j["error"]["exit_code"].as_i64()), (Some("connect"), Some(5)));
    assert!(j["error"]["message"].as_str().unwrap().starts_with(&format!("cannot connect to 127.0.0.1:{port}: connection refused")));
    assert_eq!(run.stderr, format!("error: {}\n", j["error"]["message"].as_str().unwrap()));
    // A gate prints its own FAIL document and exits 1: that document, and no second one.
    let reports = env.dir.path().join("reports");
    let run = env.bst(&["env", "check", "t", "--json", "--reports", reports.to_str().unwrap()]).code(1);
    let j = run.json();
    assert_eq!((j["result"].as_str(), j.get("error")), (Some("FAIL"), None), "{}", run.stdout);
    assert!(run.stderr.ends_with("error: env-baseline gate failed\n"), "{}", run.stderr);
    // Without --json, a failure prints nothing on stdout.
    let run = env.bst(&["list", "nosuch"]).code(2);
    assert_eq!((run.stdout.as_str(), run.stderr), ("", format!("error: {known}\n")));
}

/// Item 12: bash completes target and service names from targets.toml, in a real bash.
#[test]
fn bash_completes_target_and_service_names() {
    let d = tempfile::tempdir().unwrap();
    let config = d.path().join("targets.toml");
    std::fs::write(
        &config,
        "[targets.staging]\nhost = \"local\"\nbase = \"/srv/a\"\n[targets.stage-eu]\nhost = \"local\"\nbase = \"/srv/b\"\n\
         [targets.stage-eu.services.app]\nunit = \"app.service\"\n[targets.stage-eu.services.redis]\nunit = \"redis-server.service\"\n\
         [targets.prod]\nhost = \"local\"\nbase = \"/srv/c\"\n",
    )
    .unwrap();
    // `bst` on PATH is the binary under test, whatever its file is called.
    let path_dir = d.path().join("bin");
    std::fs::create_dir(&path_dir).unwrap();
    std::os::unix::fs::symlink(bst_bin(), path_dir.join("bst")).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["bst", "deploy", "st"], "stage-eu staging"),
        (&["bst", "check", "p"], "prod"),
        (&["bst", "-v", "prune", "--keep", "3", "sta"], "stage-eu staging"),
        (&["bst", "env", "set", "pr"], "prod"),
        (&["bst", "env", "compare", "staging", "stag"], "stage-eu staging"),
        (&["bst", "drill", "rollback", "s"], "stage-eu staging"),
        (&["bst", "config", "show", "stage-"], "stage-eu"),
        (&["bst", "st"], "stage-eu staging"),
        (&["bst", "stage-eu", ""], "app redis restart start status stop"),
        (&["bst", "stage-eu", "re"], "redis restart"),
        (&["bst", "stage-eu", "redis", "st"], "start status stop"),
        (&["bst", "prod", "s"], "start status stop"),
        // The static completion still answers what targets.toml does not decide.
        (&["bst", "deploy", "--no"], "--no-restart"),
        (&["bst", "env", "ch"], "check"),
    ];
    let mut script = String::from("source <(bst completions bash)\n");
    script.push_str(
        "c() { COMP_WORDS=(\"$@\"); COMP_CWORD=$(( $# - 1 )); COMPREPLY=(); \
         _bst_names bst \"${COMP_WORDS[COMP_CWORD]}\" \"${COMP_WORDS[COMP_CWORD-1]}\"; echo \"${COMPREPLY[*]}\"; }\n",
    );
    for (words, _) in cases {
        script.push_str(&format!("c {}\n", words.iter().map(|w| sh_quote(w)).collect::<Vec<_>>().join(" ")));
    }
    // From another directory, the config named on the line.
    script.push_str(&format!(
        "cd {} && c bst --config {} list pro\n",
        sh_quote(elsewhere.path().to_str().unwrap()),
        sh_quote(config.to_str().unwrap())
    ));
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &script])
        .current_dir(d.path())
        .env("PATH", format!("{}:{}", path_dir.display(), std::env::var("PATH").unwrap_or_default()))
        .env_remove("BST_CONFIG")
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let mut expected: Vec<&str> = cases.iter().map(|(_, want)| *want).collect();
    expected.push("prod");
    assert_eq!(stdout.lines().collect::<Vec<_>>(), expected, "stderr: {}", String::from_utf8_lossy(&out.stderr));
}

const GREEN: &str = "\x1b[1m\x1b[32m";
const YELLOW: &str = "\x1b[1m\x1b[33m";
const RED: &str = "\x1b[1m\x1b[31m";
const RESET: &str = "\x1b[0m";

/// Item 13: colour on a terminal only, `--color` and `NO_COLOR` obeyed, none with `--json`.
#[test]
fn colour_on_a_terminal_never_in_pipes_or_json() {
    let ws = Workspace::new();
    let env = Env::new(None, &ws, "");
    let reports = env.dir.path().join("reports");
    let check = ["check", "t", "--reports", reports.to_str().unwrap()];
    let config_row = format!("config           {GREEN}PASS{RESET}  target `t` resolved\n");
    let skip_row = format!("host key         {YELLOW}SKIP{RESET}  local transport\n");
    let tty = on_tty(&env.config, &check, &[], "").1;
    assert!(tty.contains(&config_row) && tty.contains(&skip_row), "{tty:?}");
    // The machine-read result line is never painted.
    assert!(tty.ends_with("\nCHECK_RESULT=PASS\n"), "{tty:?}");
    let tty = on_tty(&env.config, &["list", "nosuch"], &[], "").1;
    assert_eq!(tty, format!("{RED}error:{RESET} unknown target `nosuch` in {} (targets: t)\n", env.config.display()));
    std::fs::create_dir_all(&env.base).unwrap();
    std::fs::write(env.base.join("current"), "not a link").unwrap();
    let tty = on_tty(&env.config, &["list", "t"], &[], "").1;
    assert!(tty.starts_with(&format!("{YELLOW}warning:{RESET} {}/current is not a symlink", env.base.display())), "{tty:?}");
    std::fs::remove_file(env.base.join("current")).unwrap();
    // Off: NO_COLOR (any non-empty value), --color never, --json; on: an empty NO_COLOR.
    for (args, vars) in [
        (&check[..], &[("NO_COLOR", "1")][..]),
        (&[&check[..], &["--color", "never"]].concat()[..], &[]),
        (&[&check[..], &["--json"]].concat()[..], &[]),
        (&[&check[..], &["--json", "--color", "always"]].concat()[..], &[]),
        (&["list", "nosuch", "--json"][..], &[]),
    ] {
        let tty = on_tty(&env.config, args, vars, "").1;
        assert!(!tty.contains('\x1b') && tty.contains("PASS") || args.contains(&"nosuch"), "{args:?} {vars:?}: {tty:?}");
        assert!(!tty.contains('\x1b'), "{args:?} {vars:?}: {tty:?}");
    }
    assert!(on_tty(&env.config, &check, &[("NO_COLOR", "")], "").1.contains(&config_row));
    // In a pipe: plain, unless asked for.
    let piped = bst_with(&env.config, &check, &[]).ok();
    assert!(piped.stdout.contains("config           PASS  target `t` resolved\n") && !piped.stdout.contains('\x1b'), "{piped:?}");
    let run = bst_with(&env.config, &[&check[..], &["--color=always"]].concat(), &[("NO_COLOR", "1")]).ok();
    assert!(run.stdout.contains(&config_row), "{:?}", run.stdout);
    let run = bst_with(&env.config, &["nosuch", "status", "--color", "always"], &[]).code(2);
    assert!(run.stderr.starts_with(&format!("{RED}error:{RESET} unknown target")), "{:?}", run.stderr);
}

/// Item 14, `-q`: nothing but errors and a gate's result line.
#[test]
fn quiet_prints_only_errors_and_the_result_line() {
    let ws = Workspace::new();
    let env = Env::new(None, &ws, "required_env = [\"OPS_DB_URL\"]");
    let run = env.bst(&["deploy", "t", "-q"]).ok();
    assert_eq!((run.stdout.as_str(), run.stderr.as_str()), ("", ""));
    let run = env.bst(&["list", "t", "-q"]).ok();
    assert_eq!((run.stdout.as_str(), run.stderr.as_str()), ("", ""));
    std::fs::write(env.base.join("shared/.env"), "OPS_DB_URL=postgres://db\n").unwrap();
    let reports = env.dir.path().join("reports");
    let run = env.bst(&["env", "check", "t", "-q", "--reports", reports.to_str().unwrap()]).ok();
    assert_eq!((run.stdout.as_str(), run.stderr.as_str()), ("ENV_BASELINE_RESULT=PASS\n", ""));
    let run = env.bst(&["list", "nosuch", "-q"]).code(2);
    assert_eq!(
        (run.stdout, run.stderr),
        (String::new(), format!("error: unknown target `nosuch` in {} (targets: t)\n", env.config.display()))
    );
    // Without -q the same commands do talk.
    assert!(!env.bst(&["list", "t"]).ok().stdout.is_empty());
}

/// Item 14, `-v` and `-vv`: each remote command on one line, or each script in full.
#[test]
fn verbose_shows_each_command_on_one_line_and_vv_in_full() {
    let ws = Workspace::new();
    let env = Env::new(None, &ws, "");
    env.bst(&["deploy", "t", "-q"]).ok();
    let base = env.base.display().to_string();
    // After the prologue (the base, then the layout's names).
    let start = format!("[local] $ B={base}; ");
    let body = "; if [ ! -d \"$B\" ]; then exit 0; fi; echo B; cd \"$B\" || exit 1; ";
    let run = env.bst(&["list", "t", "-v"]).ok();
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one remote command, one line: {}", run.stderr);
    assert!(lines[0].starts_with(&start) && lines[0].contains(body) && lines[0].ends_with(" lines; -vv shows them)"), "{}", lines[0]);
    // A deploy runs several commands; each is one line and the build output is not touched.
    let run = env.bst(&["deploy", "t", "-v"]).ok();
    let shown: Vec<&str> = run.stderr.lines().filter(|l| l.starts_with("[local] $ ")).collect();
    assert!(!shown.is_empty(), "{}", run.stderr);
    // (The deploy's own `-v` rows of folder sizes are indented too, but start with a number.)
    let continued = |l: &str| l.starts_with("    ") && !l.trim_start().starts_with(|c: char| c.is_ascii_digit());
    assert!(!run.stderr.lines().any(continued), "a script spread over lines: {}", run.stderr);
    let run = env.bst(&["list", "t", "-vv"]).ok();
    assert!(
        run.stderr.starts_with(&format!("[local] $ B={base}\n    "))
            && run.stderr.contains(
                "\n    if [ ! -d \"$B\" ]; then exit 0; fi\n    echo B\n    cd \"$B\" || exit 1\n    printf 'P %s\\n' \"$(pwd -P)\"\n    for d in releases/*/; do\n"
            ),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("-vv shows them"), "{}", run.stderr);
}

/// Item 15: `list` has a header row and says what its markers mean.
#[test]
fn list_has_a_header_and_a_legend() {
    let ws = Workspace::new();
    // An untracked file that ships would make the first release dirty too.
    sh(ws.path(), "rm untracked.txt");
    let env = Env::new(None, &ws, "");
    env.bst(&["deploy", "t", "-q"]).ok();
    ws.write("package.json", "{\"name\":\"changed\"}\n");
    env.bst(&["deploy", "t", "-q"]).ok();
    let j = env.bst(&["list", "t", "--json"]).ok().json();
    let rels = j["releases"].as_array().unwrap();
    let row = |r: &serde_json::Value, mark: &str, dirty: &str| {
        let s = |k: &str| r[k].as_str().unwrap().to_string();
        format!(
            "{mark} {}  ok       {}  {:<9}  main            {}",
            s("id"),
            s("created_at"),
            format!("{}{dirty}", &s("commit")[..8]),
            s("deployed_by")
        )
    };
    let run = env.bst(&["list", "t"]).ok();
    assert_eq!(
        run.stdout.lines().collect::<Vec<_>>(),
        vec![
            format!("t: {} on local (current: {})", env.base.display(), env.current_id()),
            "  RELEASE           STATUS   CREATED               COMMIT     BRANCH          DEPLOYED BY".to_string(),
            row(&rels[0], "*", "+"),
            row(&rels[1], " ", ""),
            "* = current release, + = deployed with uncommitted changes (dirty)".to_string(),
        ]
    );
}

/// Item 16: `bst man` is one reference page that groff and man render without a warning.
#[test]
fn man_page_is_a_complete_reference_without_warnings() {
    let d = tempfile::tempdir().unwrap();
    let out = Command::new(bst_bin()).arg("man").output().unwrap();
    assert!(out.status.success());
    let roff = String::from_utf8(out.stdout).unwrap();
    let page = d.path().join("bst.1");
    std::fs::write(&page, &roff).unwrap();
    let groff = Command::new("groff").args(["-man", "-ww", "-z", "-Tutf8"]).arg(&page).output().expect("groff (groff-base) runs");
    assert!(groff.status.success() && groff.stderr.is_empty(), "groff: {}", String::from_utf8_lossy(&groff.stderr));
    let man = Command::new("man")
        .args(["--warnings", "-l"])
        .arg(&page)
        .env("MANWIDTH", "100")
        .env("MANPAGER", "cat")
        .env("LC_ALL", "C.UTF-8")
        .output()
        .expect("man (man-db) runs");
    assert!(man.status.success() && man.stderr.is_empty(), "man: {}", String::from_utf8_lossy(&man.stderr));
    let text = String::from_utf8_lossy(&man.stdout).to_string();
    let headings: Vec<&str> =
        text.lines().filter(|l| l.chars().next().is_some_and(|c| c.is_ascii_uppercase()) && !l.starts_with("bst")).collect();
    assert_eq!(
        headings,
        [
            "NAME",
            "SYNOPSIS",
            "DESCRIPTION",
            "OPTIONS",
            "COMMANDS",
            "EXIT STATUS",
            "ENVIRONMENT",
            "FILES",
            "CONFIGURATION",
            "EXAMPLES",
            "SEE ALSO"
        ]
    );
    for cmd in [
        "bst deploy [OPTIONS] <TARGET>",
        "bst list [OPTIONS] <TARGET>",
        "bst rollback [OPTIONS] <TARGET>",
        "bst prune [OPTIONS] <TARGET>",
        "bst unlock [OPTIONS] <TARGET>",
        "bst env check [OPTIONS] <TARGET>",
        "bst env set [OPTIONS] <TARGET> <KEY>",
        "bst env unset [OPTIONS] <TARGET> <KEY>",
        "bst env keys [OPTIONS] <TARGET>",
        "bst env compare [OPTIONS] --keys <KEYS> <LEFT> <RIGHT>",
        "bst drill rollback [OPTIONS] <TARGET>",
        "bst check [OPTIONS] <TARGET>",
        "bst init [OPTIONS]",
        "bst config show [OPTIONS] <TARGET>",
        "bst config validate [OPTIONS]",
        "bst completions [OPTIONS] <SHELL>",
        "bst man [OPTIONS]",
        "bst TARGET [SERVICE] status|start|stop|restart",
    ] {
        assert!(text.contains(&format!("\n   {cmd}\n")), "no `{cmd}` in the man page:\n{text}");
    }
    let items = |section: &str| -> Vec<String> {
        let head = if section.contains(' ') { format!(".SH \"{section}\"\n") } else { format!(".SH {section}\n") };
        roff.split(&head)
            .nth(1)
            .unwrap_or_else(|| panic!("no {head:?}"))
            .split("\n.SH ")
            .next()
            .unwrap()
            .split(".TP\n")
            .skip(1)
            .map(|i| i.lines().next().unwrap().replace("\\fB", "").replace("\\fI", "").replace("\\fR", "").replace("\\-", "-"))
            .collect()
    };
    assert_eq!(items("EXIT STATUS"), ["0", "1", "2", "3", "4", "5", "6", "130"]);
    let vars = items("ENVIRONMENT");
    for v in ["BST_CONFIG", "BST_SSH_CONFIG", "BST_SSH_PASSPHRASE", "BST_CACHE_DIR", "NO_COLOR", "CI", "SSH_AUTH_SOCK"] {
        assert!(vars.iter().any(|i| i == v), "{v} not in ENVIRONMENT: {vars:?}");
    }
    let keys = items("CONFIGURATION");
    for k in [
        "host",
        "port",
        "user",
        "identity_file",
        "known_hosts",
        "base",
        "source",
        "keep_releases",
        "shared_files",
        "shared_dirs",
        "exclude",
        "install",
        "build",
        "forbidden_paths",
        "env_file",
        "required_env",
        "expect_env",
        "env_dialect",
        "env_backups_keep",
        "restart",
        "health_timeout",
        "settle",
        "confirm_margin",
        "unit",
        "scope",
        "sudo",
        "health",
    ] {
        assert!(keys.iter().any(|i| i == k), "{k} not in CONFIGURATION: {keys:?}");
    }
    assert!(items("FILES").iter().any(|i| i == "current") && items("FILES").iter().any(|i| i == "targets.toml"));
    assert!(items("EXAMPLES").len() >= 5);
    // Every page it points at exists on a machine with OpenSSH and systemd; none is a bst-*(1).
    let refs: Vec<&str> = text.split_whitespace().filter(|w| w.contains("(1)") || w.contains("(5)") || w.contains("(8)")).collect();
    assert_eq!(refs, ["bst(1)", "bst(1)", "ssh(1),", "ssh_config(5),", "sshd(8),", "systemctl(1),", "systemd.exec(5)", "bst(1)"]);
}
