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

use std::fmt::Write as _;

use crate::remote::{base_var, printf_json, switch_fragment, write_meta, DETACHED};
use crate::settings::Target;
use crate::shell::quote;

/// The watchdog's process name on the server: a pid file left by a reboot must never make
/// us wait for, or signal, an unrelated process that reused the pid.
pub const NAME: &str = "bst-watchdog";

const LOCK: &str = "$B/.bst-lock";

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
    /// The `restart` services' restart script ([`crate::remote::systemd::action_script`]), empty
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
        crate::remote::systemd::action_script(&services, "restart", target.health_timeout)
    }
}

/// The watchdog itself: run detached, with `$1` the base.
fn body(a: &Arm) -> String {
    let mut s = format!(
        r#"B=$1; L="{LOCK}"; TOKEN={token}; SECS={secs}
cd "$B" || exit 0
ours() {{ grep -qF "$TOKEN" "$L/owner" 2>/dev/null; }}
ours || exit 0
echo $$ > "$L/watchdog.pid.tmp" && mv -f "$L/watchdog.pid.tmp" "$L/watchdog.pid" || exit 0
end=$(( $(date +%s) + SECS ))
why='"not confirmed healthy within '"$SECS"'s: the client went away"'
how=deadline
while :; do
  ours || exit 0
  [ -d "$L/decided" ] && exit 0
  if [ -f "$L/fire" ]; then why=$(cat "$L/fire" 2>/dev/null); how=asked; break; fi
  [ "$(date +%s)" -lt "$end" ] || break
  # While armed the lock is in use: a lock whose scripts all ended must not look stale.
  a=$(cat "$L/active" 2>/dev/null); if [ -z "$a" ] || ! kill -0 "$a" 2>/dev/null; then echo $$ > "$L/active" 2>/dev/null; fi
  sleep 0.2 2>/dev/null || sleep 1
done
mkdir "$L/decided" 2>/dev/null || exit 0
echo watchdog > "$L/decided/by"
n=0; while [ -d "$L/busy" ] && [ $n -lt 300 ]; do sleep 0.1 2>/dev/null || sleep 1; n=$((n+1)); done
trap '' PIPE HUP TERM INT
echo "$(date -u +%FT%TZ) $how: $why"
"#,
        token = quote(a.token),
        secs = a.secs,
    );
    if let Some(r) = a.restore {
        let _ = writeln!(
            s,
            "if [ \"$(readlink current)\" != releases/{r} ]; then ( set -e; {} ) >&2 || echo 'could not switch back'; fi",
            switch_fragment(r).trim_end().replace('\n', "\n  ")
        );
    }
    if let Some((id, meta)) = &a.trial {
        let _ = writeln!(
            s,
            "if [ -d releases/{id} ] && {{ [ \"$(readlink current)\" != releases/{id} ] || {none}; }}; then {}; fi",
            write_meta(&format!("releases/{id}"), &printf_json(meta)),
            none = if a.restore.is_none() { "true" } else { "false" },
        );
    }
    if !a.restart.is_empty() {
        let _ = writeln!(s, "sh -c {} > /dev/null 2>&1", quote(&a.restart));
    }
    let _ = write!(
        s,
        r#"line=$(printf '{{"at":"%s",%s,"error":%s}}' "$(date -u +%FT%TZ)" {members} "$why")
printf '%s\n' "$line" >> logs/deploys.jsonl
# The next bst command tells whoever runs it: nobody was there to see this one.
if [ "$how" = deadline ]; then printf '%s\n' "$line" >> logs/.watchdog-unseen; fi
if ours; then rm -rf "$L"; fi
"#,
        members = quote(&a.audit_members),
    );
    s
}

/// Starts the watchdog while the lock is held, before the switch it guards, and waits until
/// it is registered: prints `WATCHDOG <pid>`, or fails the script (nothing switched yet).
pub fn arm_fragment(a: &Arm) -> String {
    let q = quote(&body(a)).into_owned();
    format!(
        r#"rm -rf "{LOCK}/decided" "{LOCK}/fire" "{LOCK}/busy" "{LOCK}/watchdog.pid"
if command -v setsid >/dev/null 2>&1; then setsid sh -c {q} {NAME} "$B" < /dev/null >> "$B/logs/watchdog.log" 2>&1 &
else sh -c {q} {NAME} "$B" < /dev/null >> "$B/logs/watchdog.log" 2>&1 & fi
n=0; while [ ! -f "{LOCK}/watchdog.pid" ] && [ $n -lt 500 ]; do sleep 0.01 2>/dev/null || sleep 1; n=$((n+1)); done
if [ ! -f "{LOCK}/watchdog.pid" ]; then echo "could not start the watchdog on the server; nothing was switched" >&2; exit 1; fi
echo "WATCHDOG $(cat "{LOCK}/watchdog.pid")"
"#
    )
}

/// A script of its own that arms the watchdog (the drill arms before its first switch).
pub fn arm(base: &str, a: &Arm) -> String {
    base_var(base) + DETACHED + "set -e\n" + &arm_fragment(a)
}

/// The client's confirmation, first in the script that ends a passed gate: prints
/// `CONFIRMED`, or `NOT-CONFIRMED` and exits when the watchdog decided first (its deadline
/// passed while the gate was still running).
/// The confirmation also leaves this run's token in `logs/.bst-confirmed`: a client whose
/// connection broke while confirming learns from it whether the confirmation got there.
pub fn confirm_fragment(token: &str) -> String {
    format!(
        r#"if mkdir "{LOCK}/decided" 2>/dev/null; then echo client > "{LOCK}/decided/by"; printf '%s\n' {token} > "$B/logs/.bst-confirmed"; echo CONFIRMED
else echo "NOT-CONFIRMED $(cat "{LOCK}/decided/by" 2>/dev/null)"; exit 0; fi
"#,
        token = quote(token)
    )
}

/// Asks the armed watchdog to switch back now (unless someone decided already) and waits,
/// bounded, until it has finished. Prints `C <current>` and `HELD` if the lock is still ours.
/// Safe to run over any connection, again and again.
pub fn fire(base: &str, token: &str, reason: &str, wait_secs: u64) -> String {
    let reason = serde_json::to_string(reason).unwrap_or_else(|_| "\"asked\"".into());
    format!(
        r#"{B}L="{LOCK}"; TOKEN={token}
ours() {{ grep -qF "$TOKEN" "$L/owner" 2>/dev/null; }}
if ours && [ ! -d "$L/decided" ]; then printf '%s' {reason} > "$L/fire.tmp" && mv -f "$L/fire.tmp" "$L/fire"; fi
p=$(cat "$L/watchdog.pid" 2>/dev/null)
alive() {{ [ -n "$p" ] && kill -0 "$p" 2>/dev/null && {{ if [ -r "/proc/$p/cmdline" ]; then tr '\0' ' ' < "/proc/$p/cmdline" | grep -q {NAME}; else ps -p "$p" -o args= 2>/dev/null | grep -q {NAME}; fi; }}; }}
n=0; while alive && [ $n -lt {ticks} ]; do sleep 0.1 2>/dev/null || sleep 1; n=$((n+1)); done
printf 'C %s\n' "$(readlink "$B/current" 2>/dev/null)"
if grep -qxF "$TOKEN" "$B/logs/.bst-confirmed" 2>/dev/null; then echo CONFIRMED; fi
if ours; then echo HELD; fi
if alive; then echo RUNNING; fi
"#,
        B = base_var(base),
        token = quote(token),
        reason = quote(&reason),
        ticks = wait_secs * 10,
    )
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
        let confirm = format!("{}{}", base_var(base), confirm_fragment("tok-1"));
        assert_eq!(run(confirm.clone()), "CONFIRMED\n");
        assert_eq!(run(confirm), "NOT-CONFIRMED client\n");
        let seen = parse_outcome(&run(fire(base, "tok-1", "late", 0)));
        assert!(seen.confirmed && seen.held && !seen.running, "{seen:?}");
        assert!(!b.join(".bst-lock/fire").exists(), "fire after a decision must not ask for a switch back");
        let other = parse_outcome(&run(fire(base, "tok-2", "late", 0)));
        assert!(!other.confirmed && !other.held, "{other:?}");
    }
}
