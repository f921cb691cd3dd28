//! `bst rollback`: point `current` at an earlier `ok` release, atomically, under the lock.

use serde::Serialize;

use super::lock::{self, Acquired};
use super::Audit;
use crate::error::Error;
use crate::release::Status;
use crate::remote;
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
pub fn run(target: &Target, globals: &Globals, p: &Printer, release_id: Option<&str>) -> anyhow::Result<()> {
    let mut t = transport::connect(target, globals)?;
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
    let out = t.run(&remote::rollback(&target.base, &chosen, &audit.json(), &held.token))?;
    if out.status != 0 || !out.stdout_str().lines().any(|l| l == "SWITCHED") {
        lock::release(&mut *t, target, &held, p);
        return Err(Error::Failed(format!("rollback to {chosen} failed: {}", out.stderr_str())).into());
    }
    p.status(format!("rolled back `{}` from {} to {chosen}", target.name, previous.unwrap_or("none")));
    p.out(format!("{}: current -> releases/{chosen}", target.name));
    p.json(&Done { schema_version: 1, target: &target.name, previous, current: &chosen, changed: true });
    Ok(())
}
