//! Issue 20: after `current` moves, the server's watchdog decides, not the client's luck. A
//! client killed, interrupted or cut off during the health gate ends with the previous
//! release live, its services restarted on it, the new release marked failed, and the lock
//! free. On the real systemd container.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::systemd::{app, host, App};

/// An app whose gate is short: health_timeout 3 s, confirm_margin 2 s (with the default 3 s
/// settle, the watchdog acts 8 s after the switch).
fn quick_app(name: &str) -> App {
    let a = app(name, "");
    let cfg = std::fs::read_to_string(&a.env.config).unwrap();
    let cfg = cfg.replacen("health_timeout = \"8s\"", "health_timeout = \"3s\"\nconfirm_margin = \"2s\"", 1);
    std::fs::write(&a.env.config, cfg).unwrap();
    a
}

fn spawn(a: &App, args: &[&str]) -> Child {
    bst_cmd(&a.env.config, args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

fn wait_switch(a: &App, from: &str) {
    let t0 = Instant::now();
    while a.current_id() == from {
        assert!(t0.elapsed() < Duration::from_secs(60), "the deploy never switched");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn finish(mut c: Child) -> Run {
    let out = std::mem::take(&mut c.stdout);
    let err = std::mem::take(&mut c.stderr);
    let st = c.wait().unwrap();
    let read = |r: Option<Box<dyn std::io::Read>>| {
        let mut s = String::new();
        if let Some(mut r) = r {
            let _ = r.read_to_string(&mut s);
        }
        s
    };
    Run {
        code: st.code().unwrap_or(-1),
        stdout: read(out.map(|o| Box::new(o) as Box<dyn std::io::Read>)),
        stderr: read(err.map(|e| Box::new(e) as Box<dyn std::io::Read>)),
    }
}

/// Waits (bounded) until the lock is gone: the watchdog acts at its deadline.
fn wait_unlocked(a: &App, within: Duration) {
    let t0 = Instant::now();
    while host().ssh(&format!("test -d {}/.bst-lock && echo held || true", a.base)).contains("held") {
        assert!(t0.elapsed() < within, "the lock is still held after {within:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn meta_status(a: &App, id: &str) -> String {
    let m = host().ssh(&format!("cat {}/releases/{id}/.release-meta", a.base));
    let v: serde_json::Value = serde_json::from_str(&m).unwrap();
    v["status"].as_str().unwrap_or("").to_string()
}

fn last_audit(a: &App) -> serde_json::Value {
    serde_json::from_str(host().ssh(&format!("tail -n 1 {}/logs/deploys.jsonl", a.base)).trim()).unwrap()
}

/// What every ending must look like when the new release was not confirmed.
fn assert_restored(a: &App, good: &str, bad: &str) {
    assert_eq!(a.current_id(), good, "current must be back on the release that was live before");
    assert_eq!(meta_status(a, good), "ok");
    assert_eq!(meta_status(a, bad), "failed", "the unconfirmed release must be marked failed");
    let body = a.http_health().expect("the app answers");
    assert!(body.contains(&format!("/releases/{good}")), "the services must run the restored release: {body}");
    assert!(!host().ssh(&format!("ls -a {}", a.base)).lines().any(|l| l == ".bst-lock"), "the lock is left held");
}

fn new_release(a: &App, good: &str) -> String {
    let ids = host().ssh(&format!("ls {}/releases", a.base));
    ids.lines().filter(|l| *l != good).max().expect("the new release is kept").to_string()
}

#[test]
fn a_client_killed_during_the_gate_ends_on_the_previous_release() {
    let a = quick_app("wd-kill");
    a.bst(&["deploy", "t", "-q"]).ok();
    let good = a.current_id();
    // Unhealthy: the gate polls for its whole health_timeout, and the client dies inside it.
    a.ws.write("UNHEALTHY", "yes");
    let c = spawn(&a, &["deploy", "t"]);
    wait_switch(&a, &good);
    std::thread::sleep(Duration::from_millis(700));
    unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
    let run = finish(c);
    assert_ne!(run.code, 0);
    wait_unlocked(&a, Duration::from_secs(20));
    let bad = new_release(&a, &good);
    assert_restored(&a, &good, &bad);
    let audit = last_audit(&a);
    assert_eq!(audit["command"], "watchdog", "{audit}");
    assert_eq!(audit["release"], good.as_str(), "{audit}");
    assert_eq!(audit["previous"], bad.as_str(), "{audit}");
    assert!(audit["error"].as_str().unwrap().contains("not confirmed healthy within 8s"), "{audit}");
    // Nobody saw that happen: the next command says so, once.
    a.bst(&["list", "t"]).ok().stderr_has(&format!("the server's watchdog switched back from {bad} to {good}"));
    let again = a.bst(&["list", "t"]).ok();
    assert!(!again.stderr.contains("watchdog switched back"), "reported twice: {}", again.stderr);
}

#[test]
fn sigterm_and_ctrl_c_during_the_gate_switch_back_at_once() {
    for (sig, code) in [(libc::SIGTERM, 130), (libc::SIGINT, 130), (libc::SIGHUP, 130)] {
        let a = quick_app(&format!("wd-sig{sig}"));
        a.bst(&["deploy", "t", "-q"]).ok();
        let good = a.current_id();
        a.ws.write("UNHEALTHY", "yes");
        let c = spawn(&a, &["deploy", "t"]);
        wait_switch(&a, &good);
        std::thread::sleep(Duration::from_millis(500));
        let t0 = Instant::now();
        unsafe { libc::kill(c.id() as i32, sig) };
        let run = finish(c);
        // Well before the watchdog's own deadline (5 s after the switch): the client asked.
        assert!(t0.elapsed() < Duration::from_secs(4), "signal {sig}: took {:?}", t0.elapsed());
        assert_eq!(run.code, code, "signal {sig}: {run:?}");
        assert!(run.stderr.contains(&format!("the server switched back to {good}")), "signal {sig}: {}", run.stderr);
        let bad = new_release(&a, &good);
        assert_restored(&a, &good, &bad);
        let audit = last_audit(&a);
        assert_eq!(audit["command"], "watchdog", "{audit}");
        assert!(audit["error"].as_str().unwrap().contains("interrupted"), "{audit}");
    }
}

#[test]
fn a_healthy_gate_confirms_and_the_watchdog_stands_down() {
    let a = quick_app("wd-ok");
    a.bst(&["deploy", "t", "-q"]).ok();
    a.ws.write("v2.txt", "2");
    a.bst(&["deploy", "t"]).ok().stderr_has("healthy on");
    let id = a.current_id();
    // Past the deadline: nothing switches back.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(a.current_id(), id);
    assert_eq!(meta_status(&a, &id), "ok");
    assert!(!host().ssh(&format!("cat {}/logs/deploys.jsonl", a.base)).contains("\"command\":\"watchdog\""));
    // `[b]`: the pattern must not match the shell that runs pgrep.
    let left = host().ssh(&format!("pgrep -f '[b]st-watchdog {}$' || true", a.base));
    assert!(!left.contains(char::is_numeric), "a watchdog outlived its gate");
}

fn evidence(dir: &std::path::Path) -> serde_json::Value {
    let d = dir.join("gates/rollback-drill");
    let f = std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().path()).find(|p| p.extension().is_some_and(|x| x == "json")).unwrap();
    serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap()
}

#[test]
fn a_drill_killed_half_way_ends_where_it_began() {
    let a = quick_app("wd-drill");
    a.bst(&["deploy", "t", "-q"]).ok();
    let older = a.current_id();
    a.ws.write("v2.txt", "2");
    a.bst(&["deploy", "t", "-q"]).ok();
    let began = a.current_id();
    let reports = a.env.dir.path().join("reports");
    let c = spawn(&a, &["drill", "rollback", "t", "--reports", &reports.to_string_lossy()]);
    // Killed while it stands on the older release.
    wait_switch(&a, &began);
    assert_eq!(a.current_id(), older);
    unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
    finish(c);
    wait_unlocked(&a, Duration::from_secs(25));
    assert_eq!(a.current_id(), began, "the watchdog must restore the release the drill began on");
    let body = a.http_health().expect("the app answers");
    assert!(body.contains(&format!("/releases/{began}")), "the services must run the release the drill began on: {body}");
    assert_eq!(meta_status(&a, &began), "ok");
    assert_eq!(meta_status(&a, &older), "ok", "a drill marks nothing failed");
    assert_eq!(last_audit(&a)["command"], "watchdog");
}

#[test]
fn an_interrupted_drill_writes_evidence_from_the_server() {
    let a = quick_app("wd-drill-int");
    a.bst(&["deploy", "t", "-q"]).ok();
    a.ws.write("v2.txt", "2");
    a.bst(&["deploy", "t", "-q"]).ok();
    let began = a.current_id();
    let reports = a.env.dir.path().join("reports");
    let c = spawn(&a, &["drill", "rollback", "t", "--reports", &reports.to_string_lossy()]);
    wait_switch(&a, &began);
    unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
    let run = finish(c);
    assert_eq!(run.code, 130, "{run:?}");
    assert_eq!(run.stdout.lines().last(), Some("ROLLBACK_DRILL_RESULT=FAIL"), "{run:?}");
    assert_eq!(a.current_id(), began);
    let e = evidence(&reports);
    assert_eq!(e["ended_on"], began.as_str(), "{e}");
    assert_eq!(e["back_where_it_began"], true, "{e}");
    assert_eq!(e["interrupted"], true, "{e}");
    assert!(!host().ssh(&format!("ls -a {}", a.base)).lines().any(|l| l == ".bst-lock"), "the lock is left held");
}

#[test]
fn a_drill_that_verifies_no_service_does_not_pass() {
    let a = quick_app("wd-drill-none");
    a.bst(&["deploy", "t", "-q"]).ok();
    a.ws.write("v2.txt", "2");
    a.bst(&["deploy", "t", "-q"]).ok();
    let began = a.current_id();
    let cfg = std::fs::read_to_string(&a.env.config).unwrap().replacen("restart = [\"app\"]", "restart = []", 1);
    std::fs::write(&a.env.config, cfg).unwrap();
    let reports = a.env.dir.path().join("reports");
    let run = a.bst(&["drill", "rollback", "t", "--reports", &reports.to_string_lossy()]).code(1).stderr_has("verified no service");
    assert_eq!(run.stdout.lines().last(), Some("ROLLBACK_DRILL_RESULT=UNVERIFIED"));
    assert_eq!(a.current_id(), began);
    assert_eq!(evidence(&reports)["services_verified"], 0);
}

fn override_unit(a: &App, lines: &[&str]) {
    let body: Vec<String> = lines.iter().map(|l| format!("'{l}'")).collect();
    host().ssh(&format!(
        "mkdir -p /etc/systemd/system/{u}.d && printf '%s\\n' '[Service]' {} > /etc/systemd/system/{u}.d/override.conf && systemctl daemon-reload",
        body.join(" "),
        u = a.unit
    ));
}

/// Issue 20, item 13: `Restart=always` on a process that dies every second used to pass
/// `restart` whenever a probe hit it while it was up.
#[test]
fn a_flapping_unit_does_not_pass_restart() {
    let a = quick_app("wd-flap");
    a.bst(&["deploy", "t", "-q", "--no-restart"]).ok();
    override_unit(
        &a,
        &[
            "ExecStart=",
            "ExecStart=/usr/bin/timeout 1 /usr/bin/node server.js",
            "Restart=always",
            "RestartSec=100ms",
            "StartLimitIntervalSec=0",
        ],
    );
    a.bst(&["t", "restart"]).code(3).stderr_has("did not stay up for the 3s settle period");
    let audit = last_audit(&a);
    assert_eq!(audit["result"], "failed", "{audit}");
    host().ssh(&format!("rm -rf /etc/systemd/system/{}.d && systemctl daemon-reload && systemctl stop {}", a.unit, a.unit));
}

/// A `Type=notify` unit that never says ready keeps `systemctl restart` waiting for its
/// TimeoutStartSec (here: forever); bst stops waiting after health_timeout.
#[test]
fn a_start_that_never_becomes_ready_is_bounded_by_health_timeout() {
    let a = quick_app("wd-notify");
    a.bst(&["deploy", "t", "-q", "--no-restart"]).ok();
    override_unit(&a, &["Type=notify", "TimeoutStartSec=infinity"]);
    let t0 = Instant::now();
    let run = a.bst(&["t", "restart"]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(t0.elapsed() < Duration::from_secs(15), "took {:?}", t0.elapsed());
    assert!(run.stderr.contains("app"), "{}", run.stderr);
    host().ssh(&format!("systemctl stop {} ; rm -rf /etc/systemd/system/{}.d && systemctl daemon-reload", a.unit, a.unit));
}

/// Issue 20, smaller items: a missing unit says `not-found`; a service that needs sudo on a
/// server without it is a setup failure (exit 1, with the reason), not "unknown" (exit 3).
#[test]
fn a_missing_unit_and_a_missing_sudo_say_so() {
    assert!(host().ssh("command -v sudo || echo none").contains("none"), "the container must not have sudo for this test");
    let a = quick_app("wd-units");
    let cfg = std::fs::read_to_string(&a.env.config).unwrap();
    std::fs::write(
        &a.env.config,
        format!("{cfg}[targets.t.services.ghost]\nunit = \"bst-no-such-unit.service\"\n[targets.t.services.root]\nunit = \"redis-server.service\"\nsudo = true\n"),
    )
    .unwrap();
    let run = a.bst(&["t", "ghost", "status"]).code(3).stderr_has("ghost not-found (no unit bst-no-such-unit.service on the server)");
    assert!(run.stdout.contains("not-found/no such unit"), "{}", run.stdout);
    a.bst(&["t", "root", "status"]).code(1).stderr_has("sudo is not installed on the server");
}

/// A rollback that does not restart leaves the app running the release it left (its cwd is
/// the old directory). `rollback` restarts and gates like a deploy, under the watchdog.
#[test]
fn rollback_restarts_onto_the_release_and_switches_back_if_it_is_unhealthy() {
    let a = quick_app("wd-rollback");
    a.ws.write("UNHEALTHY", "yes");
    a.bst(&["deploy", "t", "-q", "--no-restart"]).ok();
    let sick = a.current_id();
    std::fs::remove_file(a.ws.path().join("UNHEALTHY")).unwrap();
    a.bst(&["deploy", "t", "-q"]).ok();
    let good = a.current_id();
    a.ws.write("v3.txt", "3");
    a.bst(&["deploy", "t", "-q"]).ok();
    let newest = a.current_id();
    // Healthy target: the app now runs it.
    a.bst(&["rollback", "t", "--release-id", &good]).ok().stderr_has("healthy on");
    assert_eq!(a.current_id(), good);
    assert!(a.http_health().unwrap().contains(&format!("/releases/{good}")), "the app still runs the release it left");
    // Unhealthy target: marked failed, current back where it was, the app on it.
    let run = a.bst(&["rollback", "t", "--release-id", &sick]).code(1);
    assert!(run.stderr.contains(&format!("rolled back to {good}, which is healthy again")), "{}", run.stderr);
    assert_eq!(a.current_id(), good);
    assert_eq!(meta_status(&a, &sick), "failed");
    assert!(a.http_health().unwrap().contains(&format!("/releases/{good}")));
    // --no-restart: the switch only.
    let pid = a.main_pid();
    a.bst(&["rollback", "t", "--release-id", &newest, "--no-restart"]).ok();
    assert_eq!(a.main_pid(), pid);
    assert!(!host().ssh(&format!("ls -a {}", a.base)).lines().any(|l| l == ".bst-lock"));
}
