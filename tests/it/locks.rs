//! Issue 13, item 11: a lock is broken only when its holder is provably gone, and breaking it
//! is atomic, against a real sshd.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::harness::*;

/// The owner record a real run writes, copied while that run holds the lock. The run has
/// ended since, so the record names a pid that is gone on this machine, this boot.
fn genuine_record(env: &Env) -> serde_json::Value {
    let mut child = bst_cmd(&env.config, &["deploy", "t", "--build", "-q"]).stdout(Stdio::null()).spawn().unwrap();
    let owner = env.base.join(".bst-lock/owner");
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        if let Ok(t) = std::fs::read_to_string(&owner) {
            if t.ends_with('\n') {
                break t;
            }
        }
        assert!(Instant::now() < deadline, "the deploy never took the lock");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(child.wait().unwrap().success());
    serde_json::from_str(text.trim()).unwrap()
}

fn plant(env: &Env, record: &serde_json::Value) {
    std::fs::create_dir(env.base.join(".bst-lock")).unwrap();
    std::fs::write(env.base.join(".bst-lock/owner"), format!("{record}\n")).unwrap();
}

fn planted(env: &Env) -> Option<String> {
    std::fs::read_to_string(env.base.join(".bst-lock/owner")).ok()
}

fn broken_leftovers(env: &Env) -> Vec<String> {
    std::fs::read_dir(&env.base)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".bst-lock."))
        .collect()
}

/// Field 22 of /proc/<pid>/stat: the process's start time in clock ticks since boot.
fn start_time(pid: u32) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat.rsplit_once(')').unwrap().1.split_whitespace().nth(19).unwrap().to_string()
}

#[test]
fn a_lock_is_broken_only_when_its_holder_is_provably_gone() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let env = Env::new(Some(&sshd), &ws, "build = \"sleep 1\"");
    env.bst(&["deploy", "t", "-q"]).ok();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();

    // A record written before machine and boot ids were recorded, on this host, by a pid that
    // is certainly not running (above Linux's pid_max): the host name alone proves nothing.
    let old = serde_json::json!({"user": "ghost", "host": host, "pid": 4_194_304u32, "command": "deploy",
        "started": "2026-01-01T00:00:00Z", "token": "bst-old-1"});
    plant(&env, &old);
    let run = env.bst(&["deploy", "t"]).code(4).stderr_has("ghost@").stderr_has("not broken automatically");
    assert!(run.stderr.contains("bst unlock t"), "{}", run.stderr);
    assert!(planted(&env).is_some_and(|o| o.contains("bst-old-1")), "an in-doubt lock was touched");
    env.bst(&["unlock", "t"]).ok().stdout_has("ghost@");
    assert!(!env.base.join(".bst-lock").exists());

    let rec = genuine_record(&env);
    for k in ["machine_id", "boot_id", "pid_start"] {
        assert!(rec[k].as_str().is_some_and(|v| !v.is_empty()), "the owner record lacks {k}: {rec}");
    }
    let with = |k: &str, v: serde_json::Value| {
        let mut r = rec.clone();
        r[k] = v;
        r
    };

    // Its process is gone, on this machine, this boot: broken.
    plant(&env, &rec);
    env.bst(&["deploy", "t"]).ok().stderr_has("breaking a stale lock").stderr_has("is gone");
    assert!(!env.base.join(".bst-lock").exists() && broken_leftovers(&env).is_empty());

    // Another boot of this machine: its processes all ended, even if the pid now runs (pid 1).
    let mut r = with("boot_id", "00000000-0000-4000-8000-000000000000".into());
    r["pid"] = 1.into();
    plant(&env, &r);
    env.bst(&["deploy", "t"]).ok().stderr_has("breaking a stale lock").stderr_has("rebooted");
    assert!(!env.base.join(".bst-lock").exists() && broken_leftovers(&env).is_empty());

    // A pid that runs now, but started at another time: reused by another process.
    let me = std::process::id();
    let mut r = with("pid", me.into());
    r["pid_start"] = format!("{}", start_time(me).parse::<u64>().unwrap() + 1).into();
    plant(&env, &r);
    env.bst(&["deploy", "t"]).ok().stderr_has("breaking a stale lock").stderr_has("another process");

    // That very process, still running: held.
    let mut r = with("pid", me.into());
    r["pid_start"] = start_time(me).into();
    plant(&env, &r);
    let run = env.bst(&["deploy", "t"]).code(4).stderr_has(&format!("pid {me}"));
    assert!(!run.stderr.contains("breaking"), "{}", run.stderr);
    std::fs::remove_dir_all(env.base.join(".bst-lock")).unwrap();

    // Another machine with the same host name, a pid that is gone here: not ours to judge.
    plant(&env, &with("machine_id", "0123456789abcdef0123456789abcdef".into()));
    env.bst(&["deploy", "t"]).code(4).stderr_has("not broken automatically").stderr_has("another machine");
    assert!(planted(&env).is_some(), "another machine's lock was broken");
    std::fs::remove_dir_all(env.base.join(".bst-lock")).unwrap();

    // Any one identity field missing: in doubt.
    for k in ["machine_id", "boot_id", "pid_start", "token"] {
        let mut r = rec.clone();
        r.as_object_mut().unwrap().remove(k);
        plant(&env, &r);
        env.bst(&["deploy", "t"]).code(4).stderr_has("not broken automatically");
        std::fs::remove_dir_all(env.base.join(".bst-lock")).unwrap();
    }
    env.bst(&["deploy", "t", "-q"]).ok();
}

/// Two clients find the same stale lock and both set out to break it. The one that breaks it
/// second must not delete the fresh lock the first has taken meanwhile: exactly one of them
/// holds the target at a time. Each holder's build records its tenure on the server; a second
/// tenant at the same moment is written down.
#[test]
fn two_clients_breaking_the_same_stale_lock_never_hold_it_together() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let build = r#"if mkdir "$BST_BASE/tenure" 2>/dev/null; then sleep 0.5; rmdir "$BST_BASE/tenure"; else echo "$BST_RELEASE_ID" >> "$BST_BASE/overlaps"; fi"#;
    let env = Env::new(Some(&sshd), &ws, &format!("keep_releases = 3\nbuild = '{build}'"));
    env.bst(&["deploy", "t", "-q"]).ok();
    let stale = genuine_record(&env);
    let mut proceeded = 0;
    for trial in 0..14u64 {
        plant(&env, &stale);
        let stagger = Duration::from_millis(trial * 20);
        let spawn = || bst_cmd(&env.config, &["deploy", "t", "--build"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let a = spawn();
        std::thread::sleep(stagger);
        let b = spawn();
        let runs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
        let context = format!("trial {trial} (second client {stagger:?} later)");
        for out in &runs {
            let err = String::from_utf8_lossy(&out.stderr);
            match out.status.code() {
                Some(0) => proceeded += 1,
                Some(4) => assert!(err.contains("is locked by") && err.contains("`deploy` run by"), "{context}: {err}"),
                c => panic!("{context}: exit {c:?}: {err}"),
            }
        }
        assert!(runs.iter().any(|o| o.status.success()), "{context}: nobody broke the stale lock");
        let overlaps = std::fs::read_to_string(env.base.join("overlaps")).unwrap_or_default();
        assert!(overlaps.is_empty(), "{context}: two clients held the lock at once (releases {overlaps})");
        assert!(!env.base.join(".bst-lock").exists(), "{context}: lock left behind");
        assert!(broken_leftovers(&env).is_empty(), "{context}: {:?}", broken_leftovers(&env));
    }
    assert!(proceeded >= 14);
}
