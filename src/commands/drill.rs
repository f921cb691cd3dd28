//! `bst drill rollback`: prove the way back works. Roll back to the previous ok release,
//! health-check, roll forward to the release that was current, health-check again, all under
//! the lock, and end where it began even when a step fails.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;
use serde_json::json;

use super::lock::{self, Acquired};
use super::service::restart_and_verify;
use super::Audit;
use crate::error::Error;
use crate::remote;
use crate::report::{md_cell, Gate, Printer};
use crate::settings::{Globals, Target};
use crate::transport::{self, Transport};

#[derive(Serialize)]
struct Step {
    step: String,
    ok: bool,
    detail: String,
    duration_ms: u64,
}

fn timed(steps: &mut Vec<Step>, p: &Printer, name: &str, f: impl FnOnce() -> anyhow::Result<String>) -> bool {
    let started = Instant::now();
    let (ok, detail) = match f() {
        Ok(d) => (true, d),
        Err(e) => (false, format!("{e:#}")),
    };
    p.status(format!("{} {name}: {detail}", if ok { "✓" } else { "✗" }));
    steps.push(Step { step: name.to_string(), ok, detail, duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX) });
    ok
}

fn switch(t: &mut dyn Transport, target: &Target, id: &str, from: &str) -> anyhow::Result<String> {
    let mut audit = Audit::new("drill", &target.name, "ok");
    audit.release = Some(id);
    audit.previous = Some(from);
    let out = t.run(&remote::switch(&target.base, id, &audit.json()))?;
    if out.status != 0 || !out.stdout_str().lines().any(|l| l == "SWITCHED") {
        return Err(Error::Failed(format!("switch to {id} failed: {}", out.stderr_str())).into());
    }
    Ok(format!("current -> releases/{id}"))
}

fn health(t: &mut dyn Transport, target: &Target) -> anyhow::Result<String> {
    if target.services.is_empty() {
        return Ok("no services configured; skipped".into());
    }
    let bad = restart_and_verify(t, target)?;
    if bad.is_empty() {
        Ok("healthy".into())
    } else {
        Err(Error::Failed(bad.join("; ")).into())
    }
}

pub fn rollback(target: &Target, globals: &Globals, p: &Printer, reports: &Path) -> anyhow::Result<()> {
    let mut t = transport::connect(target, globals)?;
    let (held, state) = match lock::acquire(&mut *t, target, "drill rollback", false, p)? {
        Acquired::Held(h, s) => (h, s),
        Acquired::NoBase => return Err(Error::Failed(format!("nothing deployed to `{}` yet", target.name)).into()),
    };
    let mut steps = Vec::new();
    let start = state.current.clone();
    let back = state.rollback_target().map(|r| r.id.clone());
    let mut ended_on = start.clone();
    match (&start, &back) {
        (Some(from), Some(to)) => {
            let rolled = timed(&mut steps, p, "roll back", || switch(&mut *t, target, to, from));
            if rolled {
                ended_on = Some(to.clone());
                timed(&mut steps, p, &format!("health on {to}"), || health(&mut *t, target));
                // Forward again whatever the health said: the drill ends where it began.
                if timed(&mut steps, p, "roll forward", || switch(&mut *t, target, from, to))
                    || timed(&mut steps, p, "roll forward (retry)", || switch(&mut *t, target, from, to))
                {
                    ended_on = Some(from.clone());
                }
                timed(&mut steps, p, &format!("health on {from}"), || health(&mut *t, target));
            }
        }
        (None, _) => {
            timed(&mut steps, p, "choose release", || Err(Error::Failed("no current release".into()).into()));
        }
        (Some(cur), None) => {
            timed(&mut steps, p, "choose release", || Err(Error::Failed(format!("no ok release older than {cur} to roll back to")).into()));
        }
    }
    lock::release(&mut *t, target, &held, p);
    let back_where_it_began = ended_on == start;
    let pass = back_where_it_began && !steps.is_empty() && steps.iter().all(|s| s.ok);
    if !back_where_it_began {
        p.warn(format!(
            "the drill could NOT restore current: it is on {}, it began on {}",
            ended_on.as_deref().unwrap_or("?"),
            start.as_deref().unwrap_or("?")
        ));
    }
    let mut md = format!(
        "# Rollback drill: {}\n\n- host: {}\n- base: `{}`\n- began on: {}\n- rolled back to: {}\n- ended on: {}\n\n| step | result | detail | ms |\n|---|---|---|---|\n",
        target.name,
        target.host_label(),
        target.base,
        start.as_deref().unwrap_or("-"),
        back.as_deref().unwrap_or("-"),
        ended_on.as_deref().unwrap_or("-")
    );
    for s in &steps {
        md.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            md_cell(&s.step),
            if s.ok { "ok" } else { "FAILED" },
            md_cell(&s.detail),
            s.duration_ms
        ));
    }
    let doc = json!({"target": target.name, "host": target.host_label(), "began_on": start, "rolled_back_to": back, "ended_on": ended_on,
        "back_where_it_began": back_where_it_began, "steps": steps});
    Gate { name: "rollback-drill", key: "ROLLBACK_DRILL_RESULT", reports }.finish(p, pass, doc, &md)
}
