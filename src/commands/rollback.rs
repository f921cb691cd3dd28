//! `bst rollback`: point `current` at an earlier `ok` release, atomically, under the lock.

use serde::Serialize;

use super::gate::{health_gate, Trial};
use super::lock::{self, Acquired};
use super::Audit;
use crate::error::Error;
use crate::release::Status;
use crate::remote;
use crate::remote::watchdog;
use crate::report::Printer;
use crate::settings::{Globals, Target};
use crate::transport;

#[derive(Serialize)]
struct Done<'a> {
    schema_version: u32,
    target: &'a str,
    previous: Option<&'a str>,
    current: &'a str,
    changed: bool,
}

/// `release_id` was validated by the caller before anything connected.
/// With `restart`, the `restart` services are restarted on the release rolled back to and
/// must prove healthy, under the server's watchdog like a deploy's gate: a rollback target
/// that does not come up is marked failed and `current` goes back to where it was.
pub fn run(target: &Target, globals: &Globals, p: &Printer, release_id: Option<&str>, restart: bool) -> anyhow::Result<()> {
    let mut t = transport::connect(&target.host, globals)?;
    let (held, state) = match lock::acquire(&mut *t, target, "rollback", false, p)? {
        Acquired::Held(h, s) => (h, s),
        Acquired::NoBase => {
            return Err(Error::Failed(format!("nothing deployed to `{}` yet ({} does not exist)", target.name, target.base)).into())
        }
    };
    let chosen = match release_id {
        Some(id) => match state.get(id) {
            None => Err(Error::Failed(format!(
                "release {id} does not exist on `{}`; releases: {}",
                target.name,
                crate::error::Listed(&state.releases.iter().map(|r| r.id.clone()).collect::<Vec<_>>())
            ))),
            Some(r) if matches!(r.status(), Status::Failed | Status::Pending) => {
                Err(Error::Failed(format!("release {id} is {}, not ok; refusing to roll back to it", r.status().as_str())))
            }
            Some(r) => {
                if r.status() == Status::Unknown {
                    p.warn(format!("release {id} has no bst metadata; rolling back to it as asked"));
                }
                Ok(r.id.clone())
            }
        },
        None => state.rollback_target().map(|r| r.id.clone()).ok_or_else(|| {
            Error::Failed(format!(
                "nothing to roll back to on `{}`: no ok release older than the current one ({})",
                target.name,
                state.current.as_deref().unwrap_or("none")
            ))
        }),
    };
    let chosen = match chosen {
        Ok(c) => c,
        Err(e) => {
            lock::release(&mut *t, target, &held, p);
            return Err(e.into());
        }
    };
    let previous = state.current.as_deref();
    if previous == Some(chosen.as_str()) {
        lock::release(&mut *t, target, &held, p);
        p.status(format!("{chosen} is already current on `{}`; nothing to do", target.name));
        p.out(format!("{}: current -> releases/{chosen}", target.name));
        p.json(&Done { schema_version: 1, target: &target.name, previous, current: &chosen, changed: false });
        return Ok(());
    }
    let mut audit = Audit::new("rollback", &target.name, "ok");
    audit.release = Some(&chosen);
    audit.previous = previous;
    let gated = restart && !target.restart.is_empty();
    let meta = state.get(&chosen).and_then(|r| r.meta.clone());
    let mut script = remote::rollback(&target.base, &chosen, &audit.json(), &held.token, gated);
    if gated {
        let trial = match &meta {
            Some(m) => {
                let mut failed = m.clone();
                failed.status = Status::Failed;
                failed.error = Some(format!(
                    "not confirmed healthy after a rollback; the server's watchdog switched back to {}",
                    previous.unwrap_or("none")
                ));
                Some((chosen.as_str(), serde_json::to_string(&failed)?))
            }
            None => None,
        };
        let arm = watchdog::Arm {
            token: &held.token,
            secs: watchdog::deadline_secs(target, 1),
            restore: previous,
            trial,
            audit_members: watchdog::audit_members(&lock::who(), &target.name, previous, Some(&chosen)),
            restart: watchdog::restart_script(target),
        };
        script = watchdog::arm(&target.base, &arm) + &script;
    }
    let out = {
        let _critical = crate::interrupt::Critical::enter();
        t.run(&script)?
    };
    if out.status != 0 || !remote::Reply::parse(&out.stdout_str()).switched {
        lock::release(&mut *t, target, &held, p);
        return Err(Error::Failed(format!("rollback to {chosen} failed: {}", out.stderr_str())).into());
    }
    if gated {
        let interrupted = crate::interrupt::check().is_err();
        let trial = Trial { id: &chosen, previous, held: &held, interrupted, prune: &[] };
        health_gate(&mut *t, target, globals, p, &trial)?;
    }
    p.status(format!("rolled back `{}` from {} to {chosen}", target.name, previous.unwrap_or("none")));
    p.out(format!("{}: current -> releases/{chosen}", target.name));
    p.json(&Done { schema_version: 1, target: &target.name, previous, current: &chosen, changed: true });
    Ok(())
}
