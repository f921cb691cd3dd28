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
    /// The gzip'd manifest of the server's pristine copy (deploy's lock only).
    pub cache_manifest: Option<Vec<u8>>,
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

fn new_token() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("bst-{}-{}-{:x}", hostname().replace(|c: char| !c.is_ascii_alphanumeric(), ""), std::process::id(), nanos)
}

pub fn acquire(t: &mut dyn Transport, target: &Target, command: &str, create: bool, p: &Printer) -> anyhow::Result<Acquired> {
    acquire_with(t, target, command, create, false, p)
}

/// The deploy's lock, which also brings the cache manifest (one round trip, not two).
pub fn acquire_for_deploy(t: &mut dyn Transport, target: &Target, p: &Printer) -> anyhow::Result<Acquired> {
    acquire_with(t, target, "deploy", true, true, p)
}

fn acquire_with(
    t: &mut dyn Transport,
    target: &Target,
    command: &str,
    create: bool,
    deploy: bool,
    p: &Printer,
) -> anyhow::Result<Acquired> {
    let owner = Owner {
        user: local_user().unwrap_or_else(|| "unknown".into()),
        host: hostname(),
        pid: std::process::id(),
        command: command.to_string(),
        started: release::rfc3339(release::now_unix()),
        token: new_token(),
    };
    let owner_json = serde_json::to_string(&owner)?;
    let mut broke = false;
    // Up to ~20 s for a dead run's last remote command to end.
    for _ in 0..80 {
        let script =
            if deploy { remote::lock_for_deploy(&target.base, &owner_json) } else { remote::lock(&target.base, &owner_json, create) };
        let out = match t.run(&script) {
            Ok(o) => o,
            Err(e) => {
                // The server may have taken the lock before we lost the reply (Ctrl-C, cut
                // connection): the token is ours, so release it if we can.
                let _ = t.run(&remote::unlock(&target.base, &owner.token));
                return Err(e);
            }
        };
        if out.status != 0 {
            return Err(Error::Failed(format!("cannot prepare {} on {}: {}", target.base, target.host_label(), out.stderr_str())).into());
        }
        let (listing, cache_manifest) = match out.stdout.windows(remote::MANIFEST_MARKER.len()).position(|w| w == remote::MANIFEST_MARKER) {
            Some(i) => (&out.stdout[..=i], Some(out.stdout[i + remote::MANIFEST_MARKER.len()..].to_vec())),
            None => (&out.stdout[..], None),
        };
        let text = String::from_utf8_lossy(listing);
        let first = text.lines().next().unwrap_or("");
        if first == "NOBASE" {
            return Ok(Acquired::NoBase);
        }
        if first == "LOCKED" {
            let state = release::parse_state(&text);
            return Ok(Acquired::Held(Held { token: owner.token, cache_manifest }, state));
        }
        let holder: Option<Owner> = first.strip_prefix("HELD ").and_then(|j| serde_json::from_str(j).ok());
        let desc = holder.as_ref().map_or_else(|| "an unknown holder (no owner record)".to_string(), Owner::describe);
        let stale = holder.as_ref().is_some_and(|h| h.host == owner.host && !pid_alive(h.pid));
        if stale && !broke {
            if text.lines().any(|l| l == "ACTIVE") {
                // The client is gone but its last script still runs on the server: let it finish.
                std::thread::sleep(std::time::Duration::from_millis(250));
                continue;
            }
            p.warn(format!("breaking a stale lock on `{}`: {desc}, and that process is gone", target.name));
            t.run(&remote::force_unlock(&target.base))?;
            broke = true;
            continue;
        }
        return Err(Error::Locked { target: target.name.clone(), holder: desc }.into());
    }
    Err(Error::Locked { target: target.name.clone(), holder: "another run".into() }.into())
}

pub fn release(t: &mut dyn Transport, target: &Target, held: &Held, p: &Printer) {
    match t.run(&remote::unlock(&target.base, &held.token)) {
        Ok(o) if o.status == 0 => {}
        Ok(o) => p.warn(format!("could not release the lock on `{}`: {}", target.name, o.stderr_str())),
        Err(e) => p.warn(format!("could not release the lock on `{}`: {e:#}", target.name)),
    }
}
