//! The server-side watchdog: deploy-rs's "magic rollback", done for releases.
//!
//! A switch that a health gate must confirm (a gated deploy, a rollback drill) arms a
//! detached process on the server *before* `current` moves. Unless the client confirms within
//! the deadline (`health_timeout` + `confirm_margin`), the watchdog switches `current` back to
//! the release that was live before, marks the release on trial failed, restarts the
//! `restart` services, writes the audit line and releases the lock. A client that dies in any
//! way (kill -9, Ctrl-C, SIGTERM, a cut connection, a panic, a closed lid) therefore ends with
//! the previous release live. A client that is still alive and wants the way back (unhealthy,
//! interrupted) "fires" the watchdog instead of switching back itself: one code path, on the
//! server, for every way back.
//!
//! Files, all inside the lock directory (they go when the lock goes):
//! - `watchdog.pid`: the armed process (its command line names [`NAME`]);
//! - `decided/`: made with `mkdir` by whoever decides first, the client (confirmed) or the
//!   watchdog (switching back), so exactly one of them acts; `decided/by` says who;
//! - `fire`: the client's request to switch back now, holding the reason as a JSON string;
//! - `busy/`: held by a client switch made while armed (the drill), which the watchdog waits
//!   for before it touches `current`.

use super::{Script, DETACHED_SH, META, REGISTER, STRICT, SWITCH};
use crate::settings::Target;

const WATCHDOG: &str = include_str!("sh/watchdog.sh");
const ARM: &str = include_str!("sh/arm.sh");
const CONFIRM: &str = include_str!("sh/confirm.sh");
const FIRE: &str = include_str!("sh/fire.sh");

/// The watchdog's process name on the server: a pid file left by a reboot must never make
/// us wait for, or signal, an unrelated process that reused the pid.
pub const NAME: &str = "bst-watchdog";

/// What the watchdog restores, and how.
pub struct Arm<'a> {
    pub token: &'a str,
    /// Seconds from arming until it acts unless confirmed.
    pub secs: u64,
    /// The release `current` goes back to; `None` when there is none (a first deploy).
    pub restore: Option<&'a str>,
    /// The release on trial, marked failed (with `failed_meta`) when it is not `current` in
    /// the end, or when there is nothing to restore.
    pub trial: Option<(&'a str, String)>,
    /// The audit line's fields after `at` (JSON object members, no braces); the watchdog
    /// adds `at` and `error` (the reason).
    pub audit_members: String,
    /// The `restart` services' restart script ([`super::systemd::action_script`]), empty
    /// when there is nothing to restart.
    pub restart: String,
}

/// Seconds until the watchdog acts: `gates` health waits and settle periods, then the
/// margin. Whole seconds, rounded up, at least one.
pub fn deadline_secs(target: &Target, gates: u32) -> u64 {
    let d = (target.health_timeout + target.settle) * gates + target.confirm_margin;
    (d.as_millis().div_ceil(1000) as u64).max(1)
}

/// The audit line the watchdog writes when it acts, without `at` and `error` (it adds them).
pub fn audit_members(who: &str, target: &str, restore: Option<&str>, trial: Option<&str>) -> String {
    let mut m = serde_json::Map::new();
    m.insert("who".into(), who.into());
    m.insert("command".into(), "watchdog".into());
    m.insert("target".into(), target.into());
    if let Some(r) = restore {
        m.insert("release".into(), r.into());
    }
    if let Some(t) = trial {
        m.insert("previous".into(), t.into());
    }
    m.insert("result".into(), if restore.is_some() { "rolled-back" } else { "failed" }.into());
    let json = serde_json::Value::Object(m).to_string();
    json[1..json.len() - 1].to_string()
}

/// Restarts the `restart` services, for the watchdog to run after it switched back.
pub fn restart_script(target: &Target) -> String {
    let services: Vec<&crate::settings::Service> = target.restart.iter().filter_map(|n| target.service(n)).collect();
    if services.is_empty() {
        String::new()
    } else {
        super::systemd::action_script(&services, "restart", target.health_timeout)
    }
}

/// The watchdog itself (`sh/watchdog.sh`), run detached with `$1` the base.
fn body(a: &Arm) -> String {
    let (trial, trial_meta) = a.trial.as_ref().map_or(("", ""), |(id, meta)| (*id, meta.as_str()));
    let switch_back = a.restore.map_or(String::new(), |r| Script::new().var("bst_id", r).part(SWITCH).build());
    Script::new()
        .var("bst_token", a.token)
        .var("bst_secs", &a.secs.to_string())
        .var("bst_restore", a.restore.unwrap_or(""))
        .var("bst_switch_back", &switch_back)
        .var("bst_trial", trial)
        .var("bst_trial_meta", trial_meta)
        .var("bst_restart", &a.restart)
        .var("bst_members", &a.audit_members)
        .part(META)
        .part(WATCHDOG)
        .build()
}

/// Starts the watchdog while the lock is held, before the switch it guards, and waits until
/// it is registered: prints `WATCHDOG <pid>`, or fails the script (nothing switched yet).
/// Runs after a prologue that set `B`.
pub fn arm_fragment(a: &Arm) -> String {
    Script::new().var("bst_watchdog", &body(a)).var("bst_name", NAME).part(ARM).build()
}

/// A script of its own that arms the watchdog (the drill arms before its first switch).
pub fn arm(base: &str, a: &Arm) -> String {
    Script::at(base).part(DETACHED_SH).part(REGISTER).part(STRICT).build() + &arm_fragment(a)
}

/// The client's confirmation, first in the script that ends a passed gate: prints
/// `CONFIRMED`, or `NOT-CONFIRMED` and exits when the watchdog decided first (its deadline
/// passed while the gate was still running).
/// The confirmation also leaves this run's token in `logs/.bst-confirmed`: a client whose
/// connection broke while confirming learns from it whether the confirmation got there.
pub fn confirm_fragment(token: &str) -> String {
    Script::new().var("bst_token", token).part(CONFIRM).build()
}

/// Asks the armed watchdog to switch back now (unless someone decided already) and waits,
/// bounded, until it has finished. Prints `C <current>` and `HELD` if the lock is still ours.
/// Safe to run over any connection, again and again.
pub fn fire(base: &str, token: &str, reason: &str, wait_secs: u64) -> String {
    let reason = serde_json::to_string(reason).unwrap_or_else(|_| "\"asked\"".into());
    Script::at(base)
        .var("bst_token", token)
        .var("bst_reason", &reason)
        .var("bst_ticks", &(wait_secs * 10).to_string())
        .var("bst_name", NAME)
        .part(FIRE)
        .build()
}

/// What [`fire`] saw.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The release `current` names afterwards (`None`: no link).
    pub current: Option<String>,
    /// The lock is still ours (the watchdog did not finish, or was never armed).
    pub held: bool,
    /// The watchdog is still at work after the wait.
    pub running: bool,
    /// This run's confirmation reached the server (the watchdog stood down).
    pub confirmed: bool,
}

pub fn parse_outcome(stdout: &str) -> Outcome {
    let current =
        stdout.lines().find_map(|l| l.strip_prefix("C ")).map(|c| c.trim_start_matches("releases/").to_string()).filter(|c| !c.is_empty());
    let has = |tag: &str| stdout.lines().any(|l| l == tag);
    Outcome { current, held: has("HELD"), running: has("RUNNING"), confirmed: has("CONFIRMED") }
}

/// Whether an arming script's output says the watchdog started (`WATCHDOG <pid>`).
pub fn armed(stdout: &str) -> bool {
    stdout.lines().any(|l| l.starts_with("WATCHDOG "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_lines() {
        assert_eq!(
            parse_outcome("C releases/20260101T000000Z\nHELD\n"),
            Outcome { current: Some("20260101T000000Z".into()), held: true, running: false, confirmed: false }
        );
        assert_eq!(parse_outcome("C \nCONFIRMED\n"), Outcome { current: None, held: false, running: false, confirmed: true });
    }

    /// The client confirms once; a second decider (the watchdog, or a repeated confirm) is
    /// told NOT-CONFIRMED, and `fire` afterwards reports this run's confirmation, not
    /// another run's.
    #[cfg(unix)]
    #[test]
    fn confirmation_is_decided_once_and_reported_to_its_own_run() {
        let d = tempfile::tempdir().unwrap();
        let b = d.path();
        std::fs::create_dir_all(b.join(".bst-lock")).unwrap();
        std::fs::create_dir_all(b.join("logs")).unwrap();
        std::fs::write(b.join(".bst-lock/owner"), "{\"token\":\"tok-1\"}\n").unwrap();
        let run = |script: String| {
            let out = std::process::Command::new("sh").arg("-c").arg(script).output().unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let base = b.to_str().unwrap();
        let confirm = format!("{}{}", Script::at(base).build(), confirm_fragment("tok-1"));
        assert_eq!(run(confirm.clone()), "CONFIRMED\n");
        assert_eq!(run(confirm), "NOT-CONFIRMED client\n");
        let seen = parse_outcome(&run(fire(base, "tok-1", "late", 0)));
        assert!(seen.confirmed && seen.held && !seen.running, "{seen:?}");
        assert!(!b.join(".bst-lock/fire").exists(), "fire after a decision must not ask for a switch back");
        let other = parse_outcome(&run(fire(base, "tok-2", "late", 0)));
        assert!(!other.confirmed && !other.held, "{other:?}");
    }

    /// arm.sh starts watchdog.sh detached; nobody confirms, so at its deadline it switches
    /// current back, marks the trial failed, writes the audit line and releases the lock.
    #[cfg(unix)]
    #[test]
    fn an_unconfirmed_watchdog_switches_back_marks_the_trial_failed_and_unlocks() {
        let d = tempfile::tempdir().unwrap();
        let b = d.path();
        let (old, new) = ("20260101T000000Z", "20260102T000000Z");
        // current -> the trial release, the first one named.
        crate::remote::layout_with(b, &[(new, "ok"), (old, "ok")]);
        std::fs::create_dir_all(b.join(".bst-lock")).unwrap();
        std::fs::write(b.join(".bst-lock/owner"), "{\"token\":\"tok-9\"}\n").unwrap();
        let restarted = b.join("restarted");
        let arm_it = Arm {
            token: "tok-9",
            secs: 1,
            restore: Some(old),
            trial: Some((new, "{\"status\":\"failed\"}".into())),
            audit_members: audit_members("me@here", "t", Some(old), Some(new)),
            restart: format!("touch '{}'", restarted.display()),
        };
        let out = std::process::Command::new("sh").arg("-c").arg(arm(b.to_str().unwrap(), &arm_it)).output().unwrap();
        assert!(out.status.success() && armed(&String::from_utf8_lossy(&out.stdout)), "{out:?}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while b.join(".bst-lock").exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "the watchdog never acted: {:?}",
                std::fs::read_to_string(b.join("logs/watchdog.log"))
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert_eq!(std::fs::read_link(b.join("current")).unwrap(), std::path::PathBuf::from(format!("releases/{old}")));
        assert_eq!(std::fs::read_to_string(b.join("releases").join(new).join(".release-meta")).unwrap(), "{\"status\":\"failed\"}\n");
        assert!(restarted.exists(), "the restart script ran");
        let audit = std::fs::read_to_string(b.join("logs/deploys.jsonl")).unwrap();
        let line: serde_json::Value = serde_json::from_str(audit.trim()).unwrap();
        assert_eq!(
            (line["command"].as_str(), line["result"].as_str(), line["release"].as_str()),
            (Some("watchdog"), Some("rolled-back"), Some(old))
        );
        assert!(line["error"].as_str().unwrap().contains("not confirmed healthy within 1s"), "{line}");
        assert_eq!(std::fs::read_to_string(b.join("logs/.watchdog-unseen")).unwrap(), audit);
    }
}
