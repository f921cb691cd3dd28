//! The per-target lock: an atomic `mkdir <base>/.bst-lock` plus an owner record. A lock left
//! by a dead process on this same machine is recognised and broken with a warning; any
//! other holder is named so a human can decide (`bst unlock`).

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::release::{self, State};
use crate::remote;
use crate::report::Printer;
use crate::settings::{local_user, Target};
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

pub fn hostname() -> String {
    #[cfg(unix)]
    {
        let mut buf = [0u8; 256];
        // SAFETY: gethostname writes at most buf.len() bytes into our buffer.
        if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0 {
            let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
            return String::from_utf8_lossy(&buf[..end]).into_owned();
        }
    }
    std::env::var("COMPUTERNAME").or_else(|_| std::env::var("HOSTNAME")).unwrap_or_else(|_| "unknown".into())
}

pub fn who() -> String {
    format!("{}@{}", local_user().unwrap_or_else(|| "unknown".into()), hostname())
}

fn pid_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(p) = i32::try_from(pid) else { return false };
        // SAFETY: signal 0 only checks that the process exists.
        let r = unsafe { libc::kill(p, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(windows)]
    {
        use windows_sys::Win32::Foundation::{CloseHandle, STILL_ACTIVE};
        use windows_sys::Win32::System::Threading::{GetExitCodeProcess, OpenProcess, PROCESS_QUERY_LIMITED_INFORMATION};
        // SAFETY: plain Win32 calls; the handle is closed before returning.
        unsafe {
            let h = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid);
            if h.is_null() {
                // No such process (or not ours to query: then assume it lives).
                return windows_sys::Win32::Foundation::GetLastError() == windows_sys::Win32::Foundation::ERROR_ACCESS_DENIED;
            }
            let mut code = 0u32;
            let ok = GetExitCodeProcess(h, &mut code) != 0;
            CloseHandle(h);
            !ok || code == STILL_ACTIVE as u32
        }
    }
    #[cfg(not(any(unix, windows)))]
    {
        let _ = pid;
        true
    }
}

pub fn new_token() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("bst-{}-{}-{:x}", hostname().replace(|c: char| !c.is_ascii_alphanumeric(), ""), std::process::id(), nanos)
}

pub fn new_owner(command: &str) -> Owner {
    Owner {
        user: local_user().unwrap_or_else(|| "unknown".into()),
        host: hostname(),
        pid: std::process::id(),
        command: command.to_string(),
        started: release::rfc3339(release::now_unix()),
        token: new_token(),
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
        not_locked(t, target, &owner, &text, &mut broke, p)?;
    }
    Err(Error::Locked { target: target.name.clone(), holder: "another run".into() }.into())
}

pub fn cannot_prepare(target: &Target, stderr: &str) -> anyhow::Error {
    Error::Failed(format!("cannot prepare {} on {}: {stderr}", target.base, target.host_label())).into()
}

/// The lock script found the lock held (`HELD <owner>`, maybe `ACTIVE`). `Ok` means try
/// again: a dead local run's lock was broken, or its last remote command is still ending.
pub fn not_locked(t: &mut dyn Transport, target: &Target, owner: &Owner, text: &str, broke: &mut bool, p: &Printer) -> anyhow::Result<()> {
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
    let stale = holder.as_ref().is_some_and(|h| h.host == owner.host && !pid_alive(h.pid));
    if stale && !*broke {
        if text.lines().any(|l| l == "ACTIVE") {
            // The client is gone but its last script still runs on the server: let it finish.
            std::thread::sleep(std::time::Duration::from_millis(250));
            return Ok(());
        }
        p.warn(format!("breaking a stale lock on `{}`: {desc}, and that process is gone", target.name));
        t.run(&remote::force_unlock(&target.base))?;
        *broke = true;
        return Ok(());
    }
    Err(Error::Locked { target: target.name.clone(), holder: desc }.into())
}

pub fn release(t: &mut dyn Transport, target: &Target, held: &Held, p: &Printer) {
    match t.run(&remote::unlock(&target.base, &held.token)) {
        Ok(o) if o.status == 0 => {}
        Ok(o) => p.warn(format!("could not release the lock on `{}`: {}", target.name, o.stderr_str())),
        Err(e) => p.warn(format!("could not release the lock on `{}`: {e:#}", target.name)),
    }
}
