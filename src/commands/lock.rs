//! The per-target lock: an atomic `mkdir <base>/.bst-lock` plus an owner record. A lock is
//! broken automatically only when its holder is provably gone: taken on this machine (its
//! machine id), and either in an earlier boot or by a process that no longer runs (its pid
//! is gone, or now belongs to a process that started at another time). A host name proves
//! nothing (two laptops called `dev`, a container), and a pid alone can be reused. Any other
//! holder, or any doubt, is named so a human can decide (`bst unlock`).

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::platform::{hostname, local_user};
use crate::release::{self, State};
use crate::remote;
use crate::report::Printer;
use crate::settings::Target;
use crate::transport::Transport;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Owner {
    pub user: String,
    pub host: String,
    pub pid: u32,
    pub command: String,
    pub started: String,
    #[serde(default)]
    pub token: String,
    /// This machine, as a hash of its machine id (the id itself is meant to stay private).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<String>,
    /// The boot the pid belongs to: start times count from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// When the process started, in clock ticks since boot (`/proc/<pid>/stat`, field 22):
    /// a pid that runs again under another process has another start time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_start: Option<String>,
}

impl Owner {
    pub fn describe(&self) -> String {
        format!("`{}` run by {}@{} (pid {}) since {}", self.command, self.user, self.host, self.pid, self.started)
    }
}

pub struct Held {
    pub token: String,
}

pub enum Acquired {
    Held(Held, State),
    /// `create` was off and the target was never deployed to.
    NoBase,
}

pub fn who() -> String {
    format!("{}@{}", local_user().unwrap_or_else(|| "unknown".into()), hostname())
}

/// Where a process started, as far as this machine can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    Gone,
    At(String),
    /// Not readable here (no `/proc`, hidden pids, another OS).
    Unknown,
}

/// The ids of this machine and of its current boot; `None` where they cannot be read (then
/// no lock is ever judged stale: a human decides).
#[derive(Debug, Clone, Default)]
pub struct Identity {
    pub machine_id: Option<String>,
    pub boot_id: Option<String>,
}

fn read_id(path: &str) -> Option<String> {
    let s = std::fs::read_to_string(path).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

pub fn identity() -> Identity {
    if !cfg!(target_os = "linux") {
        return Identity::default();
    }
    let machine = read_id("/etc/machine-id").or_else(|| read_id("/var/lib/dbus/machine-id"));
    Identity {
        // systemd asks applications not to expose the id itself, but a keyed hash of it.
        machine_id: machine.map(|m| {
            use sha2::Digest;
            sha2::Sha256::digest(format!("bst-lock-owner:{m}").as_bytes()).iter().take(16).map(|b| format!("{b:02x}")).collect()
        }),
        boot_id: read_id("/proc/sys/kernel/random/boot_id"),
    }
}

/// Field 22 of `/proc/<pid>/stat` (after the parenthesised command name, which may itself
/// hold spaces and parentheses).
pub fn pid_start(pid: u32) -> Start {
    if !cfg!(target_os = "linux") {
        return Start::Unknown;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(19)).map_or(Start::Unknown, |t| Start::At(t.to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Start::Gone,
        Err(_) => Start::Unknown,
    }
}

/// What a lock's owner record says about its holder, judged from this machine.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Provably gone; why.
    Stale(String),
    Alive,
    /// Cannot be told from here; why.
    InDoubt(String),
}

pub fn judge(h: &Owner, me: &Identity, start_of: &dyn Fn(u32) -> Start) -> Verdict {
    let doubt = |why: &str| Verdict::InDoubt(why.to_string());
    let (Some(machine), Some(boot), Some(start)) = (&h.machine_id, &h.boot_id, &h.pid_start) else {
        return doubt("its record has no machine id, boot id or process start time (an older bst wrote it), so a pid on a host of that name proves nothing");
    };
    if h.token.is_empty() {
        return doubt("its record has no token, so breaking it could not be checked");
    }
    let (Some(my_machine), Some(my_boot)) = (&me.machine_id, &me.boot_id) else {
        return doubt("this machine's machine id or boot id cannot be read, so it cannot tell whether the lock was taken here");
    };
    if machine != my_machine {
        return doubt("it was taken on another machine (another machine id), whose processes cannot be seen from here");
    }
    if boot != my_boot {
        return Verdict::Stale("this machine has rebooted since, so that process is gone".into());
    }
    match start_of(h.pid) {
        Start::Gone => Verdict::Stale("and that process is gone".into()),
        Start::At(now) if now != *start => Verdict::Stale(format!("and pid {} is now another process (it started at another time)", h.pid)),
        Start::At(_) => Verdict::Alive,
        Start::Unknown => Verdict::InDoubt(format!("whether pid {} is still that process cannot be read here", h.pid)),
    }
}

pub fn new_token() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("bst-{}-{}-{:x}", hostname().replace(|c: char| !c.is_ascii_alphanumeric(), ""), std::process::id(), nanos)
}

pub fn new_owner(command: &str) -> Owner {
    let me = identity();
    let pid_start = match pid_start(std::process::id()) {
        Start::At(t) => Some(t),
        _ => None,
    };
    Owner {
        user: local_user().unwrap_or_else(|| "unknown".into()),
        host: hostname(),
        pid: std::process::id(),
        command: command.to_string(),
        started: release::rfc3339(release::now_unix()),
        token: new_token(),
        machine_id: me.machine_id,
        boot_id: me.boot_id,
        pid_start,
    }
}

/// How many times a lock attempt is repeated while a dead run's last remote command ends
/// (about 20 s).
pub const ATTEMPTS: usize = 80;

pub fn acquire(t: &mut dyn Transport, target: &Target, command: &str, create: bool, p: &Printer) -> anyhow::Result<Acquired> {
    let owner = new_owner(command);
    let owner_json = serde_json::to_string(&owner)?;
    let mut broke = false;
    for _ in 0..ATTEMPTS {
        let out = match t.run(&remote::lock(&target.base, &owner_json, create, &target.forbidden_paths)) {
            Ok(o) => o,
            Err(e) => {
                // The server may have taken the lock before we lost the reply (Ctrl-C, cut
                // connection): the token is ours, so release it if we can.
                let _ = t.run(&remote::unlock(&target.base, &owner.token));
                return Err(e);
            }
        };
        if out.status != 0 {
            return Err(cannot_prepare(target, &out.stderr_str()));
        }
        let text = out.stdout_str();
        let first = text.lines().next().unwrap_or("");
        if first == "NOBASE" {
            return Ok(Acquired::NoBase);
        }
        if first == "LOCKED" {
            let state = release::parse_state(&text);
            super::tell_watchdog(p, &state);
            return Ok(Acquired::Held(Held { token: owner.token }, state));
        }
        not_locked(t, target, &text, &mut broke, p)?;
    }
    Err(Error::Locked { target: target.name.clone(), holder: "another run".into() }.into())
}

pub fn cannot_prepare(target: &Target, stderr: &str) -> anyhow::Error {
    Error::Failed(format!("cannot prepare {} on {}: {stderr}", target.base, target.host_label())).into()
}

/// The lock script found the lock held (`HELD <owner>`, maybe `ACTIVE`). `Ok` means try
/// again: a dead local run's lock was broken, or its last remote command is still ending.
pub fn not_locked(t: &mut dyn Transport, target: &Target, text: &str, broke: &mut bool, p: &Printer) -> anyhow::Result<()> {
    let first = text.lines().next().unwrap_or("");
    if let Some(i) = first.strip_prefix("FORBIDDEN ").and_then(|i| i.parse::<usize>().ok()) {
        let fact = |k: &str| text.lines().find_map(|l| l.strip_prefix(k)).unwrap_or("?").to_string();
        return Err(Error::Failed(format!(
            "{} resolves to {} on the server, at or under the forbidden path {} ({}); nothing was created",
            target.base,
            fact("REAL_BASE "),
            target.forbidden_paths.get(i).map_or("?", String::as_str),
            fact("REAL_FORBIDDEN "),
        ))
        .into());
    }
    let holder: Option<Owner> = first.strip_prefix("HELD ").and_then(|j| serde_json::from_str(j).ok());
    let desc = holder.as_ref().map_or_else(|| "an unknown holder (no owner record)".to_string(), Owner::describe);
    let locked = |holder: String| -> anyhow::Result<()> { Err(Error::Locked { target: target.name.clone(), holder }.into()) };
    let Some(h) = holder else { return locked(desc) };
    let why = match judge(&h, &identity(), &pid_start) {
        Verdict::Alive => return Err(Error::LockedLive { target: target.name.clone(), holder: desc, pid: h.pid }.into()),
        Verdict::InDoubt(why) => return locked(format!("{desc}\n  not broken automatically: {why}")),
        Verdict::Stale(_) if *broke => return locked(desc),
        Verdict::Stale(why) => why,
    };
    if text.lines().any(|l| l == "ACTIVE") {
        // The client is gone but its last script still runs on the server: let it finish.
        std::thread::sleep(std::time::Duration::from_millis(250));
        return Ok(());
    }
    p.warn(format!("breaking a stale lock on `{}`: {desc}, {why}", target.name));
    let out = t.run(&remote::break_stale(&target.base, &h.token, &new_token()))?;
    let answer = out.stdout_str();
    let line = answer.lines().next().unwrap_or("");
    match line {
        "BROKEN" => *broke = true,
        // Someone else broke it first: take our turn at the lock.
        "GONE" => {}
        _ => {
            let now: Option<Owner> = line.strip_prefix("HELD ").and_then(|j| serde_json::from_str(j).ok());
            let desc = now.as_ref().map_or_else(|| format!("an unknown holder ({})", out.stderr_str()), Owner::describe);
            return locked(desc);
        }
    }
    Ok(())
}

pub fn release(t: &mut dyn Transport, target: &Target, held: &Held, p: &Printer) {
    match t.run(&remote::unlock(&target.base, &held.token)) {
        Ok(o) if o.status == 0 => {}
        Ok(o) => p.warn(format!("could not release the lock on `{}`: {}", target.name, o.stderr_str())),
        Err(e) => p.warn(format!("could not release the lock on `{}`: {e:#}", target.name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(machine: Option<&str>, boot: Option<&str>, start: Option<&str>) -> Owner {
        Owner {
            user: "u".into(),
            host: "dev".into(),
            pid: 42,
            command: "deploy".into(),
            started: "2026-01-01T00:00:00Z".into(),
            token: "tok".into(),
            machine_id: machine.map(Into::into),
            boot_id: boot.map(Into::into),
            pid_start: start.map(Into::into),
        }
    }

    #[test]
    fn only_a_holder_provably_gone_is_stale() {
        let me = Identity { machine_id: Some("m".into()), boot_id: Some("b".into()) };
        let at = |t: &'static str| move |_: u32| Start::At(t.into());
        let stale = |v: Verdict| matches!(v, Verdict::Stale(_));
        let doubt = |v: Verdict| matches!(v, Verdict::InDoubt(_));
        let h = owner(Some("m"), Some("b"), Some("100"));
        assert!(stale(judge(&h, &me, &|_| Start::Gone)));
        assert!(stale(judge(&h, &me, &at("101"))), "a reused pid");
        assert_eq!(judge(&h, &me, &at("100")), Verdict::Alive);
        assert!(doubt(judge(&h, &me, &|_| Start::Unknown)));
        // Another boot: gone, whatever runs under that pid now.
        assert!(stale(judge(&owner(Some("m"), Some("b0"), Some("100")), &me, &at("100"))));
        assert!(doubt(judge(&owner(Some("m2"), Some("b"), Some("100")), &me, &|_| Start::Gone)), "another machine");
        for h in [owner(None, Some("b"), Some("1")), owner(Some("m"), None, Some("1")), owner(Some("m"), Some("b"), None)] {
            assert!(doubt(judge(&h, &me, &|_| Start::Gone)), "{h:?}");
        }
        let mut no_token = owner(Some("m"), Some("b"), Some("100"));
        no_token.token.clear();
        assert!(doubt(judge(&no_token, &me, &|_| Start::Gone)));
        assert!(doubt(judge(&h, &Identity::default(), &|_| Start::Gone)), "this machine unknown");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_is_recorded_and_judged_alive() {
        let o = new_owner("test");
        assert!(o.machine_id.is_some() && o.boot_id.is_some() && o.pid_start.is_some(), "{o:?}");
        assert_eq!(judge(&o, &identity(), &pid_start), Verdict::Alive);
        let old: Owner = serde_json::from_str(r#"{"user":"u","host":"h","pid":1,"command":"c","started":"s"}"#).unwrap();
        assert!(old.machine_id.is_none() && old.token.is_empty());
    }
}
