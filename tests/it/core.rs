//! Issue 2: deploy, list, rollback, prune, lock and host keys, against a real sshd.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::*;

#[test]
fn first_deploy_builds_the_layout_and_meta() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let env = Env::new(Some(&sshd), &ws, "");
    env.bst(&["deploy", "t"]).ok().stdout_has("t: current -> releases/");
    for d in ["releases", "shared", "logs"] {
        assert!(env.base.join(d).is_dir(), "{d} missing");
    }
    let id = env.current_id();
    assert_eq!(env.release_ids(), vec![id.clone()]);
    assert!(!env.base.join(".bst-lock").exists(), "lock left behind");
    assert!(!env.base.join(".bst-incoming").exists(), "staging dir left behind");
    let meta = env.meta(&id);
    assert_eq!(meta["id"], id.as_str());
    assert_eq!(meta["target"], "t");
    assert_eq!(meta["status"], "ok");
    assert_eq!(meta["commit"].as_str().map(str::len), Some(40));
    assert_eq!(meta["branch"], "main");
    // The workspace's untracked.txt ships, so the release is not the commit.
    assert_eq!(meta["dirty"], true);
    assert_eq!(meta["tool_version"], env!("CARGO_PKG_VERSION"));
    assert!(meta["deployed_by"].as_str().unwrap().contains('@'));
    assert_eq!(meta["files"], 6, "the six shipped files");
    assert!(meta["bytes"].as_u64().unwrap() > 0);
    assert!(meta["duration_ms"].is_u64());
    let audit = std::fs::read_to_string(env.base.join("logs/deploys.jsonl")).unwrap();
    let line: serde_json::Value = serde_json::from_str(audit.lines().last().unwrap()).unwrap();
    assert_eq!(
        (line["command"].as_str(), line["result"].as_str(), line["release"].as_str()),
        (Some("deploy"), Some("ok"), Some(id.as_str()))
    );
}

#[test]
fn shipped_content_equals_the_workspace() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let env = Env::new(Some(&sshd), &ws, "exclude = [\"*.log\"]");
    ws.write("debug.log", "excluded by pattern");
    env.bst(&["deploy", "t"]).ok();
    let rel = env.base.join("current");
    assert_eq!(
        release_files(&rel),
        vec![".gitignore", "apps/api/src/index.ts", "entry.ts", "package.json", "scripts/run.sh", "untracked.txt"],
        "ignored files, .git, .env and excluded patterns must not ship"
    );
    for f in ["package.json", "apps/api/src/index.ts", "untracked.txt", "scripts/run.sh"] {
        assert_eq!(std::fs::read(rel.join(f)).unwrap(), std::fs::read(ws.path().join(f)).unwrap(), "{f} differs");
    }
    let mode = std::fs::metadata(rel.join("scripts/run.sh")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o755, "exec bit lost");
    assert_eq!(std::fs::metadata(rel.join("package.json")).unwrap().permissions().mode() & 0o111, 0);
    assert_eq!(std::fs::read_link(rel.join("entry.ts")).unwrap(), Path::new("apps/api/src/index.ts"), "symlink not kept");
}

#[test]
fn seven_deploys_keep_five() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let env = Env::new(Some(&sshd), &ws, "keep_releases = 5");
    let mut ids = Vec::new();
    for n in 0..7 {
        ws.write("version.txt", &n.to_string());
        env.bst(&["deploy", "t", "-q"]).ok();
        ids.push(env.current_id());
    }
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, ids, "ids are unique and sort in creation order");
    assert_eq!(env.release_ids(), ids[2..].to_vec());
    assert_eq!(env.current_id(), ids[6]);
    assert_eq!(std::fs::read_to_string(env.base.join("current/version.txt")).unwrap(), "6");
    // A deploy deletes what it pruned after it returns; the trees do go.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while env.base.join(".bst-trash").exists() {
        assert!(std::time::Instant::now() < deadline, "pruned releases never deleted");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // By hand: keep 2 -> current and its rollback target remain, deleted before bst returns.
    let j = env.bst(&["prune", "t", "--keep", "2", "--json"]).ok().json();
    assert_eq!(j["pruned"].as_array().unwrap().len(), 3);
    assert_eq!(env.release_ids(), ids[5..].to_vec());
    assert!(!env.base.join(".bst-trash").exists());
}

#[test]
fn shared_files_and_dirs_are_links_into_shared() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let env = Env::new(Some(&sshd), &ws, "shared_files = [\".env\", \"apps/api/.env\"]\nshared_dirs = [\"storage\"]");
    std::fs::create_dir_all(env.base.join("shared/apps/api")).unwrap();
    std::fs::write(env.base.join("shared/.env"), "TOKEN=sentinel-SECRET-4242\n").unwrap();
    std::fs::write(env.base.join("shared/apps/api/.env"), "API=1\n").unwrap();
    ws.write("storage/cache.bin", "local cache");
    let run = env.bst(&["deploy", "t", "-vv"]).ok();
    assert!(!run.stdout.contains("sentinel-SECRET") && !run.stderr.contains("sentinel-SECRET"), "secret leaked");
    // -vv says when each step finished, in order of the critical path's steps.
    let at = |step: &str| run.stderr.find(step).unwrap_or_else(|| panic!("no `{step}` timing in {}", run.stderr));
    assert!(run.stderr.contains("ms] listed ") && run.stderr.contains("ms] connected"), "{}", run.stderr);
    assert!(at("ms] server state received") < at("ms] deploy prepared") && at("ms] deploy prepared") < at("ms] done"));
    let rel = env.base.join("current");
    assert_eq!(std::fs::read_link(rel.join(".env")).unwrap(), Path::new("../../shared/.env"));
    assert_eq!(std::fs::read_to_string(rel.join(".env")).unwrap(), "TOKEN=sentinel-SECRET-4242\n", "workspace .env must not ship");
    assert_eq!(std::fs::read_to_string(rel.join("apps/api/.env")).unwrap(), "API=1\n");
    assert!(std::fs::symlink_metadata(rel.join("storage")).unwrap().file_type().is_symlink());
    assert!(env.base.join("shared/storage").is_dir());
    assert!(!env.base.join("shared/storage/cache.bin").exists(), "shared dirs are not overwritten by the workspace");
}

#[test]
fn build_streams_output_into_the_log_and_runs_in_the_release() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let env = Env::new(Some(&sshd), &ws, "install = \"echo INSTALL-STEP > installed.txt\"\nbuild = \"echo BUILD-OUT-$BST_RELEASE_ID; test -f installed.txt && mkdir -p dist && echo built > dist/out.txt\"\nshared_files = [\".env\"]");
    let run = env.bst(&["deploy", "t", "--build"]).ok();
    let id = env.current_id();
    assert!(run.stderr.contains(&format!("BUILD-OUT-{id}")), "build output not streamed: {}", run.stderr);
    let log = std::fs::read_to_string(env.base.join(format!("logs/{id}.log"))).unwrap();
    assert!(log.contains(&format!("BUILD-OUT-{id}")) && log.contains("==> echo INSTALL-STEP"), "log: {log}");
    assert_eq!(std::fs::read_to_string(env.base.join("current/dist/out.txt")).unwrap(), "built\n");
    assert_eq!(env.meta(&id)["build"], true);
    // Without --build nothing runs.
    env.bst(&["deploy", "t"]).ok();
    assert!(!env.base.join("current/dist").exists());
}

#[test]
fn failed_build_marks_the_release_failed_and_keeps_current() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let env = Env::new(Some(&sshd), &ws, "build = \"echo compiling; exit 7\"");
    env.bst(&["deploy", "t"]).ok();
    let good = env.current_id();
    let run = env
        .bst(&["deploy", "t", "--build"])
        .code(1)
        .stderr_has("build failed with exit code 7")
        .stderr_has(&format!("current still points at releases/{good}"));
    assert!(run.stderr.contains("compiling"));
    assert_eq!(env.current_id(), good);
    let ids = env.release_ids();
    assert_eq!(ids.len(), 2);
    let failed = ids.iter().find(|i| **i != good).unwrap();
    assert_eq!(env.meta(failed)["status"], "failed");
    assert!(!env.base.join(".bst-lock").exists(), "lock not released after failure");
    let list = env.bst(&["list", "t", "--json"]).ok().json();
    let statuses: Vec<_> = list["releases"].as_array().unwrap().iter().map(|r| r["status"].as_str().unwrap().to_string()).collect();
    assert_eq!(statuses, vec!["failed", "ok"]);
    // A failed release is never a rollback target, and the next deploy works.
    env.bst(&["deploy", "t"]).ok();
    env.bst(&["rollback", "t"]).ok();
    assert_eq!(env.current_id(), good);
}

#[test]
fn list_json_is_one_document() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let env = Env::new(Some(&sshd), &ws, "");
    let empty = env.bst(&["list", "t", "--json"]).ok().json();
    assert_eq!(empty["releases"].as_array().unwrap().len(), 0);
    assert!(empty["current"].is_null());
    env.bst(&["deploy", "t", "-q"]).ok();
    env.bst(&["deploy", "t", "-q"]).ok();
    let j = env.bst(&["list", "t", "--json"]).ok().json();
    assert_eq!(j["schema_version"], 1);
    assert_eq!(j["target"], "t");
    assert_eq!(j["current"], env.current_id().as_str());
    let rels = j["releases"].as_array().unwrap();
    assert_eq!(rels.len(), 2);
    assert_eq!(rels[0]["id"], env.current_id().as_str());
    assert_eq!((rels[0]["current"].as_bool(), rels[1]["current"].as_bool()), (Some(true), Some(false)));
    for r in rels {
        assert_eq!(r["status"], "ok");
        assert_eq!(r["commit"].as_str().map(str::len), Some(40));
    }
    let human = env.bst(&["list", "t"]).ok();
    assert!(human.stdout.lines().any(|l| l.starts_with("* ") && l.contains(&env.current_id())), "{}", human.stdout);
}

#[test]
fn rollback_default_by_id_and_refusals() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let env = Env::new(Some(&sshd), &ws, "");
    env.bst(&["rollback", "t"]).code(1).stderr_has("nothing deployed");
    let mut ids = Vec::new();
    for n in 0..3 {
        ws.write("version.txt", &n.to_string());
        env.bst(&["deploy", "t", "-q"]).ok();
        ids.push(env.current_id());
    }
    let j = env.bst(&["rollback", "t", "--json"]).ok().json();
    assert_eq!((j["previous"].as_str(), j["current"].as_str()), (Some(ids[2].as_str()), Some(ids[1].as_str())));
    assert_eq!(env.current_id(), ids[1]);
    assert_eq!(std::fs::read_to_string(env.base.join("current/version.txt")).unwrap(), "1");
    env.bst(&["rollback", "t", "--release-id", &ids[2]]).ok();
    assert_eq!(env.current_id(), ids[2]);
    env.bst(&["rollback", "t", "--release-id", &ids[0]]).ok();
    assert_eq!(env.current_id(), ids[0]);
    env.bst(&["rollback", "t"]).code(1).stderr_has("nothing to roll back to");
    env.bst(&["rollback", "t", "--release-id", "20200101T000000Z"]).code(1).stderr_has("does not exist");
    assert_eq!(env.current_id(), ids[0]);
    assert!(!env.base.join(".bst-lock").exists());
    let audit = std::fs::read_to_string(env.base.join("logs/deploys.jsonl")).unwrap();
    assert_eq!(audit.lines().filter(|l| l.contains("\"command\":\"rollback\"")).count(), 3);
}

#[test]
fn bad_release_ids_are_refused_before_any_connection() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let env = Env::new(Some(&sshd), &ws, "");
    let before = sshd.connections();
    for bad in ["../../etc", "x;rm -rf /", "20261301T000000Z", "$(reboot)"] {
        env.bst(&["rollback", "t", "--release-id", bad]).code(2).stderr_has("invalid release id");
    }
    env.bst(&["deploy", "no-such-target"]).code(2).stderr_has("unknown target `no-such-target`");
    env.bst(&["deploy", "../t"]).code(2).stderr_has("invalid target name");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(sshd.connections(), before, "a refused command still connected");
}

#[test]
fn malformed_config_names_file_line_and_column() {
    let ws = Workspace::new();
    let env = Env::new(None, &ws, "keep_releses = 3");
    let run = env.bst(&["deploy", "t"]).code(2);
    let expected = format!("{}:5:1:", env.config.display());
    assert!(run.stderr.contains(&expected) && run.stderr.contains("keep_releses"), "{}", run.stderr);
    std::fs::write(&env.config, "[targets.t]\nhost = \"local\"\nbase = \"/\"\n").unwrap();
    env.bst(&["deploy", "t"]).code(2).stderr_has(":3:1:").stderr_has("refusing to use `/`");
    std::fs::write(&env.config, "[targets.t\n").unwrap();
    env.bst(&["list", "t"]).code(2).stderr_has(&format!("{}:1:", env.config.display()));
}

#[test]
fn concurrent_deploy_is_blocked_while_the_lock_is_held() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let env = Env::new(Some(&sshd), &ws, "build = \"sleep 3\"");
    let mut first = bst_cmd(&env.config, &["deploy", "t", "--build", "-q"]).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !env.base.join(".bst-lock/owner").exists() {
        assert!(Instant::now() < deadline, "first deploy never took the lock");
        std::thread::sleep(Duration::from_millis(20));
    }
    let run = env.bst(&["deploy", "t"]).code(4).stderr_has("is locked by").stderr_has("`deploy` run by");
    assert!(run.stderr.contains(&format!("pid {}", first.id())), "holder not named: {}", run.stderr);
    env.bst(&["rollback", "t"]).code(4);
    assert!(first.wait().unwrap().success(), "the lock holder must finish fine");
    assert!(!env.base.join(".bst-lock").exists());
    assert_eq!(env.release_ids().len(), 1);
}

#[test]
fn a_lock_recorded_by_host_name_only_is_not_broken_and_unlock_names_the_holder() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let env = Env::new(Some(&sshd), &ws, "");
    env.bst(&["deploy", "t", "-q"]).ok();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    std::fs::create_dir(env.base.join(".bst-lock")).unwrap();
    // pid 4194304 is above Linux's pid_max: certainly not running.
    let owner = format!("{{\"user\":\"ghost\",\"host\":\"{host}\",\"pid\":4194304,\"command\":\"deploy\",\"started\":\"2026-01-01T00:00:00Z\",\"token\":\"x\"}}");
    std::fs::write(env.base.join(".bst-lock/owner"), &owner).unwrap();
    // No machine or boot id: the same host name and a dead pid prove nothing (tests/it/locks.rs
    // has the records that do).
    env.bst(&["deploy", "t"]).code(4).stderr_has("ghost@").stderr_has("not broken automatically");
    std::fs::remove_dir_all(env.base.join(".bst-lock")).unwrap();
    // A holder on another machine is not ours to judge: refused, and `unlock` breaks it.
    std::fs::create_dir(env.base.join(".bst-lock")).unwrap();
    std::fs::write(env.base.join(".bst-lock/owner"), owner.replace(&host, "other-laptop")).unwrap();
    env.bst(&["deploy", "t"]).code(4).stderr_has("ghost@other-laptop");
    env.bst(&["unlock", "t"]).ok().stdout_has("ghost@other-laptop");
    assert!(!env.base.join(".bst-lock").exists());
    env.bst(&["unlock", "t"]).ok().stdout_has("not locked");
    env.bst(&["deploy", "t", "-q"]).ok();
}

#[test]
fn unknown_host_key_is_refused_with_nothing_created_then_accepted() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let env = Env::new(Some(&sshd), &ws, "");
    std::fs::write(&sshd.known_hosts, "").unwrap();
    let run = env.bst(&["deploy", "t"]).code(5).stderr_has("is not known (SHA256:").stderr_has("--accept-new-host-key");
    let expected_fp = sh(sshd.dir.path(), "ssh-keygen -lf host_ed25519.pub | awk '{print $2}'");
    assert!(run.stderr.contains(expected_fp.trim()), "fingerprint differs from ssh-keygen's: {}", run.stderr);
    assert!(!env.base.exists(), "nothing may be created on an untrusted host");
    env.bst(&["deploy", "t", "--accept-new-host-key"]).ok().stderr_has("recorded host key");
    let kh = std::fs::read_to_string(&sshd.known_hosts).unwrap();
    assert_eq!(kh.trim(), format!("[127.0.0.1]:{} {}", sshd.port, sshd.host_key));
    // Recorded entries are understood by OpenSSH itself.
    let found = std::process::Command::new("ssh-keygen")
        .args(["-F", &format!("[127.0.0.1]:{}", sshd.port), "-f"])
        .arg(&sshd.known_hosts)
        .output()
        .unwrap();
    assert!(found.status.success());
    env.bst(&["list", "t"]).ok();
}

#[test]
fn changed_host_key_is_always_refused() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let env = Env::new(Some(&sshd), &ws, "");
    let other = tempfile::tempdir().unwrap();
    keygen(&other.path().join("k"));
    let fake = std::fs::read_to_string(other.path().join("k.pub")).unwrap();
    let fake: Vec<&str> = fake.split_whitespace().take(2).collect();
    std::fs::write(&sshd.known_hosts, format!("[127.0.0.1]:{} {}\n", sshd.port, fake.join(" "))).unwrap();
    env.bst(&["deploy", "t", "--accept-new-host-key"]).code(5).stderr_has("HAS CHANGED");
    assert!(!env.base.exists());
}

#[test]
fn hostile_paths_are_data_not_code() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let canary = ws.path().join("pwned");
    let name = format!("it's a $(touch {}) `touch {}` dir", canary.display(), canary.display());
    let env = Env::with_base_name(Some(&sshd), &ws, &name, "shared_files = [\"con fig/it's.env\"]");
    env.bst(&["deploy", "t", "-q"]).ok();
    env.bst(&["deploy", "t", "-q"]).ok();
    env.bst(&["rollback", "t", "-q"]).ok();
    assert!(!canary.exists(), "a path was executed");
    assert_eq!(env.release_ids().len(), 2);
    assert!(std::fs::symlink_metadata(env.base.join("current/con fig/it's.env")).unwrap().file_type().is_symlink());
}

#[test]
fn unreachable_host_is_a_clear_error() {
    let ws = Workspace::new();
    let port = free_port();
    let env = Env::new(None, &ws, "");
    std::fs::write(
        &env.config,
        format!("[targets.t]\nhost = \"127.0.0.1\"\nport = {port}\nuser = \"x\"\nbase = \"/srv/x\"\nsource = {}\n", toml_str(ws.path())),
    )
    .unwrap();
    env.bst(&["deploy", "t"]).code(5).stderr_has(&format!("cannot connect to 127.0.0.1:{port}: connection refused"));
}

#[test]
fn demo_target_on_the_local_transport() {
    let ws = Workspace::new();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("targets.toml");
    std::fs::write(&config, format!("[targets.demo]\nhost = \"local\"\nbase = \".bst-demo\"\nsource = {}\n", toml_str(ws.path()))).unwrap();
    bst_with(&config, &["deploy", "demo"], &[]).ok();
    bst_with(&config, &["deploy", "demo"], &[]).ok();
    let base = dir.path().join(".bst-demo");
    let cur = std::fs::read_link(base.join("current")).unwrap();
    assert!(cur.starts_with("releases/"));
    assert_eq!(std::fs::read_to_string(base.join("current/package.json")).unwrap(), "{\"name\":\"ws\"}\n");
    let j = bst_with(&config, &["list", "demo", "--json"], &[]).ok().json();
    assert_eq!(j["releases"].as_array().unwrap().len(), 2);
    bst_with(&config, &["rollback", "demo"], &[]).ok();
    // Config discovery: the nearest targets.toml from the working directory.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bst"))
        .args(["list", "demo", "--json"])
        .current_dir(dir.path())
        .env_remove("BST_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn ctrl_c_during_build_stops_it_releases_the_lock_and_keeps_current() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let env = Env::new(Some(&sshd), &ws, "build = \"echo started; sleep 47; touch finished\"");
    env.bst(&["deploy", "t", "-q"]).ok();
    let good = env.current_id();
    let mut child = bst_cmd(&env.config, &["deploy", "t", "--build"]).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let log = loop {
        let logs: Vec<_> = std::fs::read_dir(env.base.join("logs")).unwrap().map(|e| e.unwrap().path()).collect();
        if let Some(l) = logs.iter().find(|p| std::fs::read_to_string(p).is_ok_and(|t| t.contains("started"))) {
            break l.clone();
        }
        assert!(Instant::now() < deadline, "build never started");
        std::thread::sleep(Duration::from_millis(50));
    };
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let started = Instant::now();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(started.elapsed() < Duration::from_secs(10), "Ctrl-C took too long");
    assert_eq!(env.current_id(), good);
    assert!(!env.base.join(".bst-lock").exists(), "lock not released on Ctrl-C");
    let id = log.file_stem().unwrap().to_string_lossy().to_string();
    assert_eq!(env.meta(&id)["status"], "failed");
    std::thread::sleep(Duration::from_millis(300));
    let ps = std::process::Command::new("pgrep").args(["-af", "sleep 47"]).output().unwrap();
    assert!(ps.stdout.is_empty(), "the remote build kept running after Ctrl-C: {}", String::from_utf8_lossy(&ps.stdout));
    env.bst(&["deploy", "t", "-q"]).ok();
}

#[test]
fn hostile_source_and_base_names_with_newlines_and_unicode() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let parent = tempfile::tempdir().unwrap();
    let canary = parent.path().join("pwned");
    let marker = format!("bst-canary-{}", std::process::id());
    let evil = format!("ws it's \"q\" $(touch {marker}) `touch {marker}` é 日本\nline2");
    let src = parent.path().join(&evil);
    std::fs::rename(ws.path(), &src).unwrap();
    let env = Env::with_base_name(Some(&sshd), &ws, &format!("base é\n$(touch {})", canary.display()), "shared_files = [\"x y/.env\"]");
    let cfg = std::fs::read_to_string(&env.config).unwrap().replace(&toml_str(ws.path()), &toml_str(&src));
    std::fs::write(&env.config, cfg).unwrap();
    env.bst(&["deploy", "t", "-q"]).ok();
    env.bst(&["deploy", "t", "-vv"]).ok();
    env.bst(&["rollback", "t", "-q"]).ok();
    env.bst(&["list", "t", "--json"]).ok();
    assert!(!canary.exists(), "a path was executed");
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let found =
        sh(Path::new("/"), &format!("find /tmp {home} {} -maxdepth 8 -name '{marker}' 2>/dev/null || true", env.dir.path().display()));
    assert!(found.trim().is_empty(), "a path was executed: {found}");
    assert_eq!(std::fs::read(env.base.join("current/package.json")).unwrap(), std::fs::read(src.join("package.json")).unwrap());
    std::fs::rename(&src, ws.path()).unwrap();
}
