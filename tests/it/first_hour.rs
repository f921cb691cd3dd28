//! The first hour of a new user (issue "The first hour"): what a deploy ships when the config
//! sits in the wrong folder, secrets that look like secrets, bst's own byproducts, and what
//! the deploy says before the bytes move.

use std::path::Path;

use crate::harness::{bst_in, bst_with, free_port, release_files, sh, toml_str, Env, Workspace};

#[test]
fn a_source_outside_git_is_refused_before_anything_is_touched() {
    // A config kept in a home folder: `source = "."` is that folder, keys and all.
    let home = tempfile::Builder::new().prefix("bst-home").tempdir().unwrap();
    sh(home.path(), "mkdir -p .ssh notes && echo k > .ssh/id_ed25519 && echo n > notes/a.txt && echo b > notes/b.txt");
    let base = home.path().join("srv");
    let config = home.path().join("targets.toml");
    std::fs::write(&config, format!("[targets.t]\nhost = \"local\"\nbase = {}\n", toml_str(&base))).unwrap();
    let run = bst_with(&config, &["deploy", "t"], &[]).code(2);
    let src = std::fs::canonicalize(home.path()).unwrap();
    assert_eq!(
        run.stderr,
        format!(
            "error: source {} is not inside a git work tree (no .git in it or any parent); bst ships what git would commit.\n  \
             check `source` (relative to the config file's folder) or --config; to ship a plain folder, set `source_is_not_git = true` on the target\n",
            src.display()
        )
    );
    assert!(!base.exists(), "nothing may be created for a refused source");

    // Asked for: the walk ships it, says so with the folders, and still holds the key back.
    std::fs::write(&config, format!("[targets.t]\nhost = \"local\"\nbase = {}\nsource_is_not_git = true\n", toml_str(&base))).unwrap();
    let run = bst_with(&config, &["deploy", "t"], &[]).ok();
    let lines: Vec<&str> = run.stderr.lines().collect();
    let toml_len = std::fs::metadata(&config).unwrap().len();
    assert_eq!(
        lines[..4],
        [
            format!("deploying {} (3 files, {} B, not a git work tree) to t (local:{})", src.display(), toml_len + 4, base.display())
                .as_str(),
            format!("  {:>10}       1 file   (top level)", format!("{toml_len} B")).as_str(),
            "         4 B       2 files  notes/",
            "warning: not shipping .ssh/id_ed25519: an SSH private key name (id_*); to ship it, add it to `include`",
        ],
        "{}",
        run.stderr
    );
    let release = base.join("current");
    assert_eq!(release_files(&release), ["notes/a.txt", "notes/b.txt", "targets.toml"]);
}

#[test]
fn files_that_look_like_secrets_are_named_and_not_shipped_unless_included() {
    let ws = Workspace::new();
    ws.write("deploy/id_ed25519", "not really a key\n");
    ws.write("deploy/id_ed25519.pub", "ssh-ed25519 AAAA test\n");
    ws.write("apps/web/.env.production", "SECRET=1\n");
    ws.write("certs/tls.key", "k\n");
    ws.write("certs/ca.pem", "public ca\n");
    ws.write("ops/deploy_key", "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaA==\n-----END OPENSSH PRIVATE KEY-----\n");
    ws.write("apps/api/src/keys.ts", "// -----BEGIN OPENSSH PRIVATE KEY----- in a string is code\n");
    ws.commit("keys");
    let env = Env::new(None, &ws, "include = [\"certs/ca.pem\"]");
    let run = env.bst(&["deploy", "t", "--json"]).ok();
    let warnings: Vec<&str> = run.stderr.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(
        warnings,
        [
            "warning: not shipping apps/web/.env.production: an env file (the server's own copy belongs in shared_files); to ship it, add it to `include`",
            "warning: not shipping certs/tls.key: a key or certificate file (*.pem, *.key); to ship it, add it to `include`",
            "warning: not shipping deploy/id_ed25519: an SSH private key name (id_*); to ship it, add it to `include`",
            "warning: not shipping ops/deploy_key: a private key (its first line says so); to ship it, add it to `include`",
        ]
    );
    let doc = run.json();
    assert_eq!(doc["withheld"], serde_json::json!(["apps/web/.env.production", "certs/tls.key", "deploy/id_ed25519", "ops/deploy_key"]));
    let files = release_files(&env.base.join("current"));
    for gone in ["apps/web/.env.production", "certs/tls.key", "deploy/id_ed25519", "ops/deploy_key"] {
        assert!(!files.contains(&gone.to_string()), "{gone} shipped: {files:?}");
    }
    for kept in ["certs/ca.pem", "deploy/id_ed25519.pub", "apps/api/src/keys.ts"] {
        assert!(files.contains(&kept.to_string()), "{kept} missing: {files:?}");
    }
    // -q promises errors only; the JSON document still lists them.
    let run = env.bst(&["deploy", "t", "-q"]).ok();
    assert_eq!((run.stdout.as_str(), run.stderr.as_str()), ("", ""));
}

#[test]
fn bst_byproducts_never_ship_and_untracked_files_make_a_release_dirty() {
    // The guide's own steps: a demo deploy into ./.bst-demo, gate evidence in ./reports,
    // both next to targets.toml inside the repository; then a deploy to another target.
    let ws = Workspace::new();
    sh(ws.path(), "rm untracked.txt");
    let config = ws.path().join("targets.toml");
    let base = tempfile::Builder::new().prefix("bst-base").tempdir().unwrap();
    std::fs::write(
        &config,
        format!(
            "[targets.demo]\nhost = \"local\"\nbase = \".bst-demo\"\n\n[targets.t]\nhost = \"local\"\nbase = {}\n",
            toml_str(&base.path().join("app"))
        ),
    )
    .unwrap();
    sh(ws.path(), "git add targets.toml && git -c user.name=t -c user.email=t@e commit -qm config");
    // The harness keeps bst's hash cache next to the config, here inside the workspace.
    let cache = tempfile::tempdir().unwrap();
    let cache_env = [("BST_CACHE_DIR", cache.path().to_str().unwrap())];
    bst_with(&config, &["deploy", "demo"], &cache_env).ok();
    // Run from elsewhere: evidence still lands next to targets.toml, not in the cwd.
    let elsewhere = tempfile::tempdir().unwrap();
    let mut c = crate::harness::bst_cmd(&config, &["env", "check", "demo"]);
    let out = c.current_dir(elsewhere.path()).env("BST_CACHE_DIR", cache.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(ws.path().join("reports/gates/env-baseline").is_dir());
    assert!(!elsewhere.path().join("reports").exists());

    let run = bst_with(&config, &["deploy", "t"], &cache_env).ok();
    let app = base.path().join("app");
    let files = release_files(&app.join("current"));
    assert!(files.iter().all(|f| !f.starts_with(".bst-demo/") && !f.starts_with("reports/")), "{files:?}");
    let id = std::fs::read_link(app.join("current")).unwrap().to_string_lossy().trim_start_matches("releases/").to_string();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(app.join("releases").join(&id).join(".release-meta")).unwrap()).unwrap();
    assert_eq!(meta["dirty"], false, "{}", run.stderr);

    // One untracked file that ships: the release is not the commit.
    ws.write("notes.md", "draft\n");
    bst_with(&config, &["deploy", "t"], &cache_env).ok();
    let id = std::fs::read_link(app.join("current")).unwrap().to_string_lossy().trim_start_matches("releases/").to_string();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(app.join("releases").join(&id).join(".release-meta")).unwrap()).unwrap();
    assert_eq!(meta["dirty"], true);
}

#[test]
fn deploy_says_what_it_ships_and_v_adds_the_largest_folders() {
    let ws = Workspace::new();
    ws.write("apps/web/big.bin", &"x".repeat(3000));
    let env = Env::new(None, &ws, "");
    let src = std::fs::canonicalize(ws.path()).unwrap();
    let run = env.bst(&["deploy", "t"]).ok();
    let head = format!("deploying {} (7 files, 3.1 KiB) to t (local:{})", src.display(), env.base.display());
    assert_eq!(run.stderr.lines().next(), Some(head.as_str()), "{}", run.stderr);
    assert_eq!(run.stderr.lines().nth(1).map(|l| l.starts_with("uploaded ")), Some(true), "no folder lines without -v:\n{}", run.stderr);
    let run = env.bst(&["deploy", "t", "-v"]).ok();
    let lines: Vec<&str> = run.stderr.lines().collect();
    let at = lines.iter().position(|l| *l == head).unwrap_or_else(|| panic!("{}", run.stderr));
    assert_eq!(
        lines[at + 1..at + 6],
        [
            "     2.9 KiB       2 files  apps/",
            "     2.9 KiB       1 file   apps/web/",
            "        90 B       4 files  (top level)",
            "        20 B       1 file   apps/api/",
            "        18 B       1 file   scripts/",
        ],
        "{}",
        run.stderr
    );
}

#[test]
fn init_ignores_the_demo_base_and_reports() {
    let ws = Workspace::new();
    let run = crate::harness::bst_cmd(Path::new("/nonexistent/targets.toml"), &["init"]);
    let mut run = run;
    run.env_remove("BST_CONFIG");
    let out = run.current_dir(ws.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let root = std::fs::canonicalize(ws.path()).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "wrote {}/targets.toml (npm detected); try: bst deploy demo\nadded /.bst-demo/ and /reports/ to {}/.gitignore\n",
            root.display(),
            root.display()
        )
    );
    assert_eq!(
        std::fs::read_to_string(ws.path().join(".gitignore")).unwrap(),
        "node_modules/\nignored.txt\n.env\ndist/\n# bst: the demo target's local base and gate evidence\n/.bst-demo/\n/reports/\n"
    );
}

#[test]
fn typos_get_did_you_mean_and_a_config_gets_every_problem_at_once() {
    let d = tempfile::tempdir().unwrap();
    let dir = std::fs::canonicalize(d.path()).unwrap();
    let run = bst_in(&dir, &["list", "staging"], None).code(2);
    assert_eq!(
        run.stderr,
        format!(
            "error: no targets.toml in {} or any parent\n  run `bst init` here to write one, or pass --config <path> (or set BST_CONFIG)\n",
            dir.display()
        )
    );
    let base = dir.join("srv");
    std::fs::write(
        dir.join("targets.toml"),
        format!(
            "[targets.staging]\nhost = \"local\"\nbase = {}\n[targets.staging.services.redis]\nunit = \"redis-server.service\"\n[targets.prod]\nhost = \"local\"\nbase = \"/srv/p\"\n",
            toml_str(&base)
        ),
    )
    .unwrap();
    let cfg = dir.join("targets.toml");
    let cases: [(&[&str], String); 5] = [
        (&["list", "stagin"], format!("error: unknown target `stagin` in {}; did you mean `staging`?\n", cfg.display())),
        (&["list", "qa"], format!("error: unknown target `qa` in {} (targets: prod, staging)\n", cfg.display())),
        (&["deploi", "staging"], "error: unknown command `deploi`; did you mean `bst deploy staging`?\n".into()),
        (
            &["staging", "restrat"],
            "error: unknown action `restrat`; did you mean `restart`? (bst <TARGET> [<SERVICE>] status|start|stop|restart)\n".into(),
        ),
        (&["staging", "redsi", "status"], "error: unknown service `redsi` for target `staging`; did you mean `redis`?\n".into()),
    ];
    for (args, want) in cases {
        let run = bst_in(&dir, args, None).code(2);
        assert_eq!(run.stderr, want, "bst {args:?}");
    }
    assert!(!base.exists());

    std::fs::write(
        &cfg,
        "[targets.a]\nhost = \"local\"\nbase = \"/srv/a\"\nkeep_relases = 3\nport = \"22\"\nsource_is_not_git = \"yes\"\n[targets.b]\nhots = \"x\"\n",
    )
    .unwrap();
    let run = bst_in(&dir, &["config", "validate"], None).code(2);
    let c = cfg.display();
    assert_eq!(
        run.stderr,
        format!(
            "error: {c}:4:1: unknown key `keep_relases` in [targets.a]; did you mean `keep_releases`?\n  \
             {c}:5:8: port must be a number from 1 to 65535, e.g. `port = 22`\n  \
             {c}:6:21: source_is_not_git must be true or false, e.g. `source_is_not_git = true`\n  \
             {c}:8:1: unknown key `hots` in [targets.b]; did you mean `host`?\n  (4 problems)\n"
        )
    );
}

#[test]
fn env_messages_say_what_to_do_next() {
    let ws = Workspace::new();
    let env = Env::new(None, &ws, "required_env = [\"DATABASE_URL\"]");
    env.bst(&["deploy", "t"]).ok();
    let run = env.bst(&["env", "keys", "t"]).code(1);
    assert_eq!(
        run.stderr,
        format!(
            "error: {}/shared/.env does not exist\n  create it with: bst env set t KEY   (the value is read from stdin)\n",
            env.base.display()
        )
    );
    let run = env.bst(&["env", "check", "t"]).code(1);
    assert!(run.stderr.contains("  create it with: bst env set t KEY   (the value is read from stdin)\n"), "{}", run.stderr);
    let run = env.bst(&["env", "set", "t", "2FA"]).code(2);
    assert_eq!(
        run.stderr,
        "error: invalid env key `2FA`: a key is letters, digits, `_` and `.`, not starting with a digit, e.g. DATABASE_URL\n"
    );
    // An empty required value is refused before anything is touched; another only warned of.
    let run = env.bst(&["env", "set", "t", "DATABASE_URL"]).code(2);
    assert_eq!(
        run.stderr,
        "error: refusing an empty value for DATABASE_URL: target `t` lists it in required_env, which must be non-empty; nothing was written\n"
    );
    assert!(!env.base.join("shared/.env").exists());
    let run = env.bst(&["env", "set", "t", "OPTIONAL"]).ok();
    assert!(run.stderr.starts_with("warning: OPTIONAL is set to an empty value (stdin was empty)\n"), "{}", run.stderr);
    assert_eq!(std::fs::read_to_string(env.base.join("shared/.env")).unwrap(), "OPTIONAL=\n");
}

/// The README's five-minute guide, line by line as the README writes it, from `bst init` to the
/// drill, against the real systemd host (sshd on a loopback port, the app under a unit). The
/// one step that is prose, describing the server target, is done the way a user would: by
/// editing the `staging` table `bst init` wrote.
#[test]
fn the_readme_five_minute_guide_works_as_written() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let guide = readme.split("## Five-minute guide").nth(1).expect("README has a five-minute guide");
    let guide = guide.split("\n## ").next().unwrap();
    let block = guide.split("```sh\n").nth(1).and_then(|b| b.split("\n```").next()).expect("the guide has a ```sh block");
    let lines: Vec<&str> = block.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.iter().any(|l| l.starts_with("# describe a server target")), "{block}");

    let h = crate::systemd::host();
    let (port, unit, base) = (free_port(), "bst-first-hour.service", "/srv/first-hour");
    h.ssh(&format!(
        "rm -rf {base}; printf '%s\\n' '[Unit]' 'Description=first hour' '[Service]' 'WorkingDirectory={base}/current' \
         'Environment=PORT={port}' 'ExecStart=/usr/bin/node server.js' > /etc/systemd/system/{unit} && systemctl daemon-reload"
    ));
    let repo = tempfile::Builder::new().prefix("bst-repo").tempdir().unwrap();
    sh(repo.path(), "git init -q . && git checkout -q -b main 2>/dev/null; mkdir -p public && echo '<h1>hi</h1>' > public/index.html");
    std::fs::write(repo.path().join("server.js"), crate::systemd::SERVER_JS).unwrap();
    sh(repo.path(), "git add -A && git -c user.name=t -c user.email=t@e commit -qm app");
    let scratch = tempfile::tempdir().unwrap();
    let known_hosts = scratch.path().join("known_hosts");
    std::fs::write(&known_hosts, "").unwrap();
    // `bst` on PATH, as the README assumes: this build, or BST_TEST_BIN's.
    let bin = scratch.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let exe = std::env::var_os("BST_TEST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_bst").into());
    std::os::unix::fs::symlink(exe, bin.join("bst")).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());

    let mut outputs = Vec::new();
    for line in &lines {
        if line.starts_with('#') {
            if line.starts_with("# describe a server target") {
                describe(&repo.path().join("targets.toml"), h, &known_hosts, base, unit, port);
            }
            continue;
        }
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(line)
            .current_dir(repo.path())
            .env("PATH", &path)
            .env("DATABASE_URL", "postgres://app@db/app")
            .env("BST_SSH_CONFIG", "none")
            .env("BST_CACHE_DIR", scratch.path().join("cache"))
            .env("CI", "true")
            .env_remove("BST_CONFIG")
            .env_remove("SSH_AUTH_SOCK")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
        let want = if line.contains("exit 1:") { 1 } else { 0 };
        assert_eq!(out.status.code(), Some(want), "`{line}`\nstdout:\n{stdout}\nstderr:\n{stderr}");
        assert!(!stdout.contains("postgres://") && !stderr.contains("postgres://"), "a secret was shown by `{line}`");
        outputs.push((line.to_string(), stdout, stderr));
    }
    let out_of = |prefix: &str| outputs.iter().filter(|(l, _, _)| l.starts_with(prefix)).map(|(_, o, _)| o.as_str()).collect::<Vec<_>>();
    assert!(out_of("bst check staging --accept-new-host-key")[0].lines().any(|l| l.starts_with("env baseline") && l.contains("FAIL")));
    assert_eq!(out_of("bst check staging ").last().unwrap().lines().last(), Some("CHECK_RESULT=PASS"));
    assert_eq!(out_of("bst drill rollback staging")[0].lines().last(), Some("ROLLBACK_DRILL_RESULT=PASS"));
    // The first thing a newcomer runs is clean: no warning about files the demo never needed.
    let demo = outputs.iter().find(|(l, _, _)| l.starts_with("bst deploy demo")).unwrap();
    assert!(!demo.2.contains("warning:"), "{}", demo.2);

    // What shipped is the repository: its files (tracked, and untracked ones git would add),
    // plus the shared link and the build's output, nothing else.
    let mut repo_files: Vec<String> = sh(repo.path(), "git ls-files -co --exclude-standard").lines().map(|l| format!("./{l}")).collect();
    repo_files.extend(["./.env".to_string(), "./built.txt".to_string()]);
    repo_files.sort();
    let first = h.ssh(&format!("ls {base}/releases | head -1")).trim().to_string();
    let shipped = h.ssh(&format!("cd {base}/releases/{first} && find . \\( -type f -o -type l \\) ! -name .release-meta | LC_ALL=C sort"));
    assert_eq!(shipped.lines().collect::<Vec<_>>(), repo_files.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(repo_files.iter().all(|f| !f.starts_with("./.bst-demo") && !f.starts_with("./reports")));
    // The rollback at the end went back to the first release; the evidence is next to targets.toml.
    assert_eq!(h.ssh(&format!("readlink {base}/current")).trim(), format!("releases/{first}"));
    assert!(repo.path().join("reports/gates/rollback-drill").is_dir());
    h.ssh(&format!("systemctl stop {unit}; rm -f /etc/systemd/system/{unit}; systemctl daemon-reload; rm -rf {base}"));
}

/// What a user types into the `staging` table `bst init` wrote: the server, a build, a
/// required key, the app's unit and its health check.
fn describe(config: &Path, h: &crate::systemd::Host, known_hosts: &Path, base: &str, unit: &str, port: u16) {
    let text = std::fs::read_to_string(config).unwrap();
    let at = text.find("[targets.staging]").expect("bst init writes a staging target");
    let mut staging = String::new();
    for line in text[at..].lines() {
        let l = line.trim_start_matches("# ");
        let key = l.split(" = ").next().unwrap_or("");
        let set = match key {
            "host" => "host = \"127.0.0.1\"".to_string(),
            "port" => format!("port = {}", h.port),
            "user" => "user = \"root\"".to_string(),
            "identity_file" => format!("identity_file = {}\nknown_hosts = {}", toml_str(&h.key), toml_str(known_hosts)),
            "base" => format!("base = \"{base}\""),
            "install" => "# install = \"…\"".to_string(),
            "build" => "build = \"echo built > built.txt\"".to_string(),
            "restart" => "restart = [\"app\"]".to_string(),
            "health_timeout" => "health_timeout = \"10s\"".to_string(),
            "required_env" => "required_env = [\"DATABASE_URL\"]".to_string(),
            "[targets.staging.services.app]" => l.to_string(),
            "unit" => format!("unit = \"{unit}\""),
            "health" => format!("health = {{ http = \"http://127.0.0.1:{port}/health\", status = 200, body_contains = \"ok\" }}"),
            _ => line.to_string(),
        };
        staging.push_str(&set);
        staging.push('\n');
    }
    std::fs::write(config, format!("{}{staging}", &text[..at])).unwrap();
}
