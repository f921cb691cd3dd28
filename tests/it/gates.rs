//! Issue 4: release gates (env baseline, env edits with backups, parity, rollback drill,
//! preflight) against the real sshd, with a sentinel secret in every env file that must never
//! appear in any output, log, report or `--json`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::harness::*;

const SENTINEL: &str = "sentinel-S3CRET-9f4e";

const GATES: &str = r#"required_env = ["OPS_DB_URL", "REDIS_URL", "INGEST_SERVICE_TOKEN", "INGEST_SERVICE_SECRET"]
expect_env = { INGEST_QUEUE_ENABLED = "true" }"#;

fn good_env() -> String {
    format!(
        "# core-api\nOPS_DB_URL=postgres://ops:{SENTINEL}@db/ops\nexport REDIS_URL=\"redis://:{SENTINEL}@127.0.0.1:6379\"\nINGEST_SERVICE_TOKEN={SENTINEL}-token\nINGEST_SERVICE_SECRET='{SENTINEL}-secret'\nINGEST_QUEUE_ENABLED=true\n"
    )
}

struct Gated {
    _sshd: Sshd,
    _ws: Workspace,
    env: Env,
    reports: PathBuf,
}

fn setup(extra: &str) -> Gated {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let env = Env::new(Some(&sshd), &ws, &format!("shared_files = [\".env\"]\n{GATES}\n{extra}"));
    std::fs::create_dir_all(env.base.join("shared")).unwrap();
    std::fs::write(env.base.join("shared/.env"), good_env()).unwrap();
    let reports = env.dir.path().join("reports");
    Gated { _sshd: sshd, _ws: ws, env, reports }
}

impl Gated {
    fn bst(&self, args: &[&str]) -> Run {
        let mut a: Vec<&str> = args.to_vec();
        let r = self.reports.to_string_lossy().into_owned();
        if matches!(args.first(), Some(&"check")) || args.get(1).is_some_and(|s| *s == "check" || *s == "compare" || *s == "rollback") {
            a.extend(["--reports", &r]);
        }
        let run = bst_with(&self.env.config, &a, &[]);
        assert_no_secret(&run, &[&self.reports, &self.env.base.join("logs")]);
        run
    }

    fn evidence(&self, gate: &str) -> (serde_json::Value, String) {
        let dir = self.reports.join("gates").join(gate);
        let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        let json = files.iter().rev().find(|p| p.extension().is_some_and(|e| e == "json")).expect("json evidence");
        let md = json.with_extension("md");
        let stem = json.file_stem().unwrap().to_string_lossy().to_string();
        // 2026-02-20T05-49-54-811Z
        assert_eq!(stem.len(), 24, "timestamp format: {stem}");
        assert!(stem.ends_with('Z') && stem.as_bytes()[10] == b'T', "{stem}");
        (serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap(), std::fs::read_to_string(md).unwrap())
    }
}

#[track_caller]
fn assert_no_secret(run: &Run, dirs: &[&Path]) {
    assert!(!run.stdout.contains(SENTINEL), "secret in stdout:\n{}", run.stdout);
    assert!(!run.stderr.contains(SENTINEL), "secret in stderr:\n{}", run.stderr);
    for d in dirs {
        for f in walk_files(d) {
            let text = String::from_utf8_lossy(&std::fs::read(&f).unwrap()).into_owned();
            assert!(!text.contains(SENTINEL), "secret in {}", f.display());
        }
    }
}

fn walk_files(d: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(d) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk_files(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn last_line(s: &str) -> &str {
    s.lines().last().unwrap_or("")
}

#[test]
fn env_check_passes_then_fails_on_empty_missing_hidden_and_expectations() {
    let g = setup("");
    let run = g.bst(&["env", "check", "t", "-vv"]).ok();
    assert_eq!(last_line(&run.stdout), "ENV_BASELINE_RESULT=PASS");
    let (doc, md) = g.evidence("env-baseline");
    assert_eq!(doc["result"], "PASS");
    assert!(md.contains("ENV_BASELINE_RESULT=PASS") && md.contains("INGEST_SERVICE_TOKEN"));

    std::fs::write(
        g.env.base.join("shared/.env"),
        format!("OPS_DB_URL=\nREDIS_URL={SENTINEL} \r\nINGEST_SERVICE_TOKEN=ab\u{200B}{SENTINEL}\nINGEST_QUEUE_ENABLED=false\n"),
    )
    .unwrap();
    let run = g.bst(&["env", "check", "t"]).code(1);
    assert_eq!(last_line(&run.stdout), "ENV_BASELINE_RESULT=FAIL");
    let status = |k: &str| run.stdout.lines().find(|l| l.starts_with(k)).unwrap_or("").to_string();
    assert!(status("OPS_DB_URL").contains("empty"));
    assert!(status("REDIS_URL").contains("hidden") && status("REDIS_URL").contains("trailing whitespace"));
    assert!(status("INGEST_SERVICE_TOKEN").contains("zero-width"));
    assert!(status("INGEST_SERVICE_SECRET").contains("missing"));
    assert!(status("INGEST_QUEUE_ENABLED").contains("mismatch"));
    let j = g.bst(&["env", "check", "t", "--json"]).code(1).json();
    assert_eq!(j["result_line"], "ENV_BASELINE_RESULT=FAIL");
    let keys = j["keys"].as_array().unwrap();
    assert_eq!(keys.iter().map(|k| k["status"].as_str().unwrap()).collect::<Vec<_>>(), vec!["empty", "hidden", "hidden", "missing"]);
    assert_eq!(j["expect"][0]["status"], "mismatch");
}

#[test]
fn env_set_unset_keys_back_up_write_atomically_and_keep_comments() {
    let g = setup("");
    let envf = g.env.base.join("shared/.env");
    let mode_before = std::fs::metadata(&envf).unwrap().permissions().mode() & 0o777;
    let new_secret = format!("{SENTINEL}-rotated");
    let mut c = bst_cmd(&g.env.config, &["env", "set", "t", "INGEST_SERVICE_TOKEN", "-vv"]);
    c.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(format!("{new_secret}\n").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let run = Run {
        code: out.status.code().unwrap(),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    };
    assert_no_secret(&run, &[&g.env.base.join("logs")]);
    let run = run.ok().stderr_has("backup: ");
    let text = std::fs::read_to_string(&envf).unwrap();
    assert!(text.starts_with("# core-api\n"), "comment lost: {text}");
    assert!(text.contains(&format!("INGEST_SERVICE_TOKEN={new_secret}\n")));
    assert!(text.contains(&format!("export REDIS_URL=\"redis://:{SENTINEL}@127.0.0.1:6379\"")), "other lines must stay byte for byte");
    // The file keeps the mode it had (the test wrote it with the umask's); only a new one is 0600.
    assert_eq!(std::fs::metadata(&envf).unwrap().permissions().mode() & 0o777, mode_before);
    let backups: Vec<_> = std::fs::read_dir(envf.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".env.bak."))
        .collect();
    assert_eq!(backups.len(), 1, "{backups:?}");
    let stamp = backups[0].trim_start_matches(".env.bak.");
    assert!(stamp.len() == 16 && stamp.ends_with('Z'), "{stamp}");
    assert_eq!(std::fs::read_to_string(envf.with_file_name(&backups[0])).unwrap(), good_env(), "backup is the old file");
    assert!(run.stdout.contains("set INGEST_SERVICE_TOKEN"));

    // A second edit in the same second must not overwrite the first backup.
    g.bst(&["env", "unset", "t", "INGEST_QUEUE_ENABLED"]).ok();
    let n = std::fs::read_dir(envf.parent().unwrap())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with(".env.bak."))
        .count();
    assert_eq!(n, 2);
    assert!(!std::fs::read_to_string(&envf).unwrap().contains("INGEST_QUEUE_ENABLED"));
    g.bst(&["env", "unset", "t", "INGEST_QUEUE_ENABLED"]).code(1).stderr_has("is not set");

    let keys = g.bst(&["env", "keys", "t"]).ok();
    assert_eq!(keys.stdout.lines().collect::<Vec<_>>(), vec!["OPS_DB_URL", "REDIS_URL", "INGEST_SERVICE_TOKEN", "INGEST_SERVICE_SECRET"]);
    let audit = std::fs::read_to_string(g.env.base.join("logs/deploys.jsonl")).unwrap();
    assert_eq!(audit.lines().filter(|l| l.contains("\"command\":\"env set\"") && l.contains("INGEST_SERVICE_TOKEN")).count(), 1);
    assert!(audit.contains("\"command\":\"env unset\""));

    // Hidden characters are refused at the door, and nothing changes.
    let before = std::fs::read_to_string(&envf).unwrap();
    let mut c = bst_cmd(&g.env.config, &["env", "set", "t", "REDIS_URL"]);
    c.stdin(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).stdout(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    child.stdin.take().unwrap().write_all(format!("{SENTINEL} \n").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("trailing whitespace") && !err.contains(SENTINEL), "{err}");
    assert_eq!(std::fs::read_to_string(&envf).unwrap(), before);
    g.bst(&["env", "set", "t", "bad key"]).code(2).stderr_has("invalid env key");
}

#[test]
fn env_compare_reports_parity_without_values() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let env = Env::new(Some(&sshd), &ws, "");
    // A second target on the same server: the emitter app, whose env lives inside its release.
    let other = env.dir.path().join("emitter");
    let cfg = std::fs::read_to_string(&env.config).unwrap();
    let second = cfg.replace("[targets.t]", "[targets.emitter]").replace(&toml_str(&env.base), &toml_str(&other));
    std::fs::write(&env.config, format!("{cfg}\n{second}")).unwrap();
    std::fs::create_dir_all(env.base.join("shared")).unwrap();
    std::fs::create_dir_all(other.join("current/app")).unwrap();
    std::fs::write(env.base.join("shared/.env"), format!("INGEST_SERVICE_TOKEN={SENTINEL}\nINGEST_SERVICE_SECRET={SENTINEL}-a\n")).unwrap();
    std::fs::write(other.join("current/app/.env"), format!("INGEST_SERVICE_TOKEN={SENTINEL}\nINGEST_SERVICE_SECRET={SENTINEL}-b\n"))
        .unwrap();
    let reports = env.dir.path().join("reports");
    let r = reports.to_string_lossy().into_owned();
    let keys = "INGEST_SERVICE_TOKEN,INGEST_SERVICE_SECRET,CORE_API_ADMIN_TOKEN";
    let run =
        bst_with(&env.config, &["env", "compare", "t", "emitter:current/app/.env", "--keys", keys, "--reports", &r, "-vv"], &[]).code(1);
    assert_no_secret(&run, &[&reports]);
    assert_eq!(last_line(&run.stdout), "ENV_PARITY_RESULT=FAIL");
    let line = |k: &str| run.stdout.lines().find(|l| l.starts_with(k)).unwrap().to_string();
    assert!(line("INGEST_SERVICE_TOKEN").ends_with("SAME"));
    assert!(line("INGEST_SERVICE_SECRET").ends_with("DIFFERENT"));
    assert!(line("CORE_API_ADMIN_TOKEN").ends_with("MISSING"));
    // Identical but for an invisible character is not parity.
    std::fs::write(
        other.join("current/app/.env"),
        format!("INGEST_SERVICE_TOKEN={SENTINEL}\u{FEFF}\nINGEST_SERVICE_SECRET={SENTINEL}-a\n"),
    )
    .unwrap();
    let j = bst_with(
        &env.config,
        &[
            "env",
            "compare",
            "t",
            "emitter:current/app/.env",
            "--keys",
            "INGEST_SERVICE_TOKEN,INGEST_SERVICE_SECRET",
            "--reports",
            &r,
            "--json",
        ],
        &[],
    )
    .code(1)
    .json();
    // npm dotenv (the default dialect without services) trims a trailing BOM, so the values
    // are the same to the app; the BOM in the file still fails parity.
    assert_eq!(j["keys"][0]["status"], "SAME");
    assert!(j["keys"][0]["hidden"].as_array().is_some_and(|h| !h.is_empty()), "{j}");
    std::fs::write(other.join("current/app/.env"), format!("INGEST_SERVICE_TOKEN={SENTINEL}\nINGEST_SERVICE_SECRET={SENTINEL}-a\n"))
        .unwrap();
    let run = bst_with(
        &env.config,
        &["env", "compare", "t", "emitter:current/app/.env", "--keys", "INGEST_SERVICE_TOKEN,INGEST_SERVICE_SECRET", "--reports", &r],
        &[],
    )
    .ok();
    assert_eq!(last_line(&run.stdout), "ENV_PARITY_RESULT=PASS");
    bst_with(&env.config, &["env", "compare", "t", "emitter:../../etc/passwd", "--keys", "A"], &[]).code(2);
    bst_with(&env.config, &["env", "compare", "t", "emitter", "--keys", "A;rm"], &[]).code(2);
}

#[test]
fn rollback_drill_ends_where_it_began_and_leaves_evidence() {
    let g = setup("");
    g.bst(&["drill", "rollback", "t"]).code(1).stderr_has("nothing deployed");
    g.bst(&["deploy", "t", "-q"]).ok();
    let run = g.bst(&["drill", "rollback", "t"]).code(1);
    assert_eq!(last_line(&run.stdout), "ROLLBACK_DRILL_RESULT=FAIL", "one release: nothing to drill");
    let first = g.env.current_id();
    g.bst(&["deploy", "t", "-q"]).ok();
    let second = g.env.current_id();
    // No services here: the switches are proven, the releases are not, and the result says
    // so (issue 20: a drill that verified nothing must not print a bare PASS).
    let run = g.bst(&["drill", "rollback", "t"]).code(1).stderr_has("verified no service");
    assert_eq!(last_line(&run.stdout), "ROLLBACK_DRILL_RESULT=UNVERIFIED");
    assert_eq!(g.env.current_id(), second, "the drill must end where it began");
    let (doc, md) = g.evidence("rollback-drill");
    assert_eq!(
        (doc["began_on"].as_str(), doc["rolled_back_to"].as_str(), doc["ended_on"].as_str()),
        (Some(second.as_str()), Some(first.as_str()), Some(second.as_str()))
    );
    // Arm, roll back, health, roll forward, health.
    assert_eq!(doc["steps"].as_array().unwrap().len(), 5, "{doc}");
    assert_eq!(doc["back_where_it_began"], true);
    assert_eq!(doc["services_verified"], 0);
    assert!(md.contains("ROLLBACK_DRILL_RESULT=UNVERIFIED"));
    let audit = std::fs::read_to_string(g.env.base.join("logs/deploys.jsonl")).unwrap();
    assert_eq!(audit.lines().filter(|l| l.contains("\"command\":\"drill\"")).count(), 2);
    assert!(!g.env.base.join(".bst-lock").exists());
}

#[test]
fn preflight_check_passes_and_catches_alias_paths_locks_and_env() {
    let g = setup("forbidden_paths = [\"/nonexistent/retired\"]");
    let run = g.bst(&["check", "t"]).ok();
    assert_eq!(last_line(&run.stdout), "CHECK_RESULT=PASS");
    for item in ["reachable", "host key", "base", "forbidden paths", "writable", "free disk", "tools", "lock", "env baseline"] {
        assert!(run.stdout.lines().any(|l| l.starts_with(item) && l.contains("PASS")), "{item} not PASS:\n{}", run.stdout);
    }
    let (doc, _) = g.evidence("check");
    assert_eq!(doc["result"], "PASS");

    // Lock held and env broken: FAIL, naming both.
    std::fs::create_dir_all(g.env.base.join(".bst-lock")).unwrap();
    std::fs::write(
        g.env.base.join(".bst-lock/owner"),
        "{\"user\":\"ann\",\"host\":\"laptop\",\"pid\":1,\"command\":\"deploy\",\"started\":\"x\"}",
    )
    .unwrap();
    std::fs::write(g.env.base.join("shared/.env"), "OPS_DB_URL=\n").unwrap();
    let run = g.bst(&["check", "t"]).code(1);
    assert_eq!(last_line(&run.stdout), "CHECK_RESULT=FAIL");
    assert!(run.stdout.lines().any(|l| l.starts_with("lock") && l.contains("FAIL") && l.contains("ann")));
    assert!(run.stdout.lines().any(|l| l.starts_with("env baseline") && l.contains("FAIL")));
}

#[test]
fn alias_base_into_a_forbidden_path_is_refused() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let scratch = tempfile::tempdir().unwrap();
    let retired = scratch.path().join("masterbst");
    std::fs::create_dir_all(&retired).unwrap();
    let alias = scratch.path().join("stagging-bst");
    std::os::unix::fs::symlink(&retired, &alias).unwrap();
    let env = Env::new(Some(&sshd), &ws, &format!("forbidden_paths = [{}]", toml_str(&retired)));
    let cfg = std::fs::read_to_string(&env.config).unwrap().replace(&toml_str(&env.base), &toml_str(&alias));
    std::fs::write(&env.config, cfg).unwrap();
    let reports = env.dir.path().join("r");
    let run = bst_with(&env.config, &["check", "t", "--reports", &reports.to_string_lossy()], &[]).code(1);
    assert!(run.stdout.lines().any(|l| l.starts_with("base") && l.contains("FAIL") && l.contains("symlink")), "{}", run.stdout);
    assert!(run.stdout.lines().any(|l| l.starts_with("forbidden paths") && l.contains("FAIL")), "{}", run.stdout);
    bst_with(&env.config, &["deploy", "t"], &[]).code(1).stderr_has("forbidden path");
    assert!(!retired.join("current").exists(), "nothing may be deployed into the retired path");
    // The literal path in the config is refused before connecting.
    let cfg = std::fs::read_to_string(&env.config).unwrap().replace(&toml_str(&alias), &toml_str(&retired.join("x")));
    std::fs::write(&env.config, cfg).unwrap();
    bst_with(&env.config, &["deploy", "t"], &[]).code(2).stderr_has("forbidden path");
}

#[test]
fn check_reports_an_unknown_host_key_as_a_failed_item() {
    let g = setup("");
    std::fs::write(&g._sshd.known_hosts, "").unwrap();
    let run = g.bst(&["check", "t"]).code(1);
    assert!(run.stdout.lines().any(|l| l.starts_with("host key") && l.contains("FAIL") && l.contains("SHA256:")), "{}", run.stdout);
    assert!(run.stdout.lines().any(|l| l.starts_with("reachable") && l.contains("PASS")), "{}", run.stdout);
    assert_eq!(last_line(&run.stdout), "CHECK_RESULT=FAIL");
}

/// Issue 20, item 7: a base that does not exist yet under a symlinked parent, and a forbidden
/// path that is itself a symlink. Both used to pass `check`, and `deploy` created
/// `releases/`, `shared/` and `logs/` inside the forbidden tree before refusing.
#[test]
fn forbidden_paths_are_resolved_on_the_server_before_anything_is_created() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let scratch = tempfile::tempdir().unwrap();
    let retired = scratch.path().join("masterbst");
    std::fs::create_dir_all(&retired).unwrap();
    let alias = scratch.path().join("stagging-bst");
    std::os::unix::fs::symlink(&retired, &alias).unwrap();
    let reports = scratch.path().join("r");
    // (forbidden path as configured, base as configured)
    let cases = [(retired.clone(), alias.join("new/app")), (alias.clone(), retired.join("app"))];
    for (forbidden, base) in cases {
        let env = Env::new(Some(&sshd), &ws, &format!("forbidden_paths = [{}]", toml_str(&forbidden)));
        let cfg = std::fs::read_to_string(&env.config).unwrap().replace(&toml_str(&env.base), &toml_str(&base));
        std::fs::write(&env.config, cfg).unwrap();
        let run = bst_with(&env.config, &["check", "t", "--reports", &reports.to_string_lossy()], &[]).code(1);
        assert!(run.stdout.lines().any(|l| l.starts_with("forbidden paths") && l.contains("FAIL")), "{base:?}: {}", run.stdout);
        let run = bst_with(&env.config, &["deploy", "t"], &[]).code(1);
        let want = format!("on the server, at or under the forbidden path {}", forbidden.display());
        assert!(run.stderr.contains(&want) && run.stderr.contains("nothing was created"), "{base:?}: {}", run.stderr);
        let inside: Vec<_> = std::fs::read_dir(&retired).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(inside.is_empty(), "{base:?}: created inside the forbidden path: {inside:?}");
    }
}
