//! `bst drill rollback`: prove the way back works. Roll back to the previous ok release,
//! health-check, roll forward to the release that was current, health-check again, all under
//! the lock, and end where it began even when a step fails.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;
use serde_json::json;

use super::lock::{self, Acquired};
use anyhow::Context;

use super::Audit;
use crate::error::Error;
use crate::health::{act, problems, Action};
use crate::release;
use crate::remote;
use crate::remote::watchdog;
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
    let out = t.run(&remote::guarded_switch(&target.base, id, &audit.json()))?;
    if out.stdout_str().lines().any(|l| l == "DECIDED") {
        return Err(Error::Failed("the server's watchdog took over (the drill ran past its deadline)".into()).into());
    }
    if out.status != 0 || !crate::remote::Reply::parse(&out.stdout_str()).switched {
        return Err(Error::Failed(format!("switch to {id} failed: {}", out.stderr_str())).into());
    }
    Ok(format!("current -> releases/{id}"))
}

/// Restarts the `restart` services and proves each is active, healthy and running `expect`
/// (its working directory): a probe of a process still running the other release proves
/// nothing. `Ok(None)` when there is no service to verify.
fn health(t: &mut dyn Transport, target: &Target, expect: &str) -> anyhow::Result<Option<String>> {
    let services: Vec<&crate::settings::Service> = target.restart.iter().filter_map(|n| target.service(n)).collect();
    if services.is_empty() {
        return Ok(None);
    }
    let (states, probes) = act(t, target, &services, Action::Restart)?;
    let mut bad = problems(&services, &states, &probes);
    for (svc, st) in services.iter().zip(&states) {
        if st.active() && st.release.as_deref() != Some(expect) {
            bad.push(format!(
                "{} runs release {}, expected {expect}",
                svc.name,
                st.release.as_deref().unwrap_or("(none: not under releases/)")
            ));
        }
    }
    if bad.is_empty() {
        Ok(Some(format!("healthy, running {expect}: {}", services.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", "))))
    } else {
        Err(Error::Failed(bad.join("; ")).into())
    }
}

/// A step's connection: the one in hand, or a fresh one when it broke (a dropped connection
/// must not end the drill on the wrong release).
fn retry<T>(
    t: &mut Box<dyn Transport>,
    target: &Target,
    globals: &Globals,
    mut f: impl FnMut(&mut dyn Transport) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    match f(&mut **t) {
        Err(e) if is_transport(&e) && !crate::interrupt::seen() => {
            *t = transport::connect(&target.host, globals)?;
            f(&mut **t)
        }
        r => r,
    }
}

/// A failure of the connection, not of the step.
fn is_transport(e: &anyhow::Error) -> bool {
    !e.chain().any(|c| c.downcast_ref::<Error>().is_some())
}

pub fn rollback(target: &Target, globals: &Globals, p: &Printer, reports: &Path) -> anyhow::Result<()> {
    // Found before anything switches: a drill whose evidence cannot be written must not run.
    let gates = reports.join("gates");
    std::fs::create_dir_all(&gates).with_context(|| format!("cannot create the reports dir {}", reports.display()))?;
    let probe = gates.join(format!(".bst-writable-{}", std::process::id()));
    std::fs::write(&probe, b"").with_context(|| format!("the reports dir {} is not writable", reports.display()))?;
    let _ = std::fs::remove_file(&probe);
    let mut t = transport::connect(&target.host, globals)?;
    let (held, state) = match lock::acquire(&mut *t, target, "drill rollback", false, p)? {
        Acquired::Held(h, s) => (h, s),
        Acquired::NoBase => return Err(Error::Failed(format!("nothing deployed to `{}` yet", target.name)).into()),
    };
    let mut steps = Vec::new();
    let start = state.current.clone();
    let back = state.rollback_target().map(|r| r.id.clone());
    let mut verified = 0;
    let mut armed = false;
    match (&start, &back) {
        (Some(from), Some(to)) => {
            // The server restores `from` on its own unless this drill confirms it is back:
            // two health waits, then the margin.
            let arm = watchdog::Arm {
                token: &held.token,
                secs: watchdog::deadline_secs(target, 2),
                restore: Some(from),
                trial: None,
                audit_members: watchdog::audit_members(&lock::who(), &target.name, Some(from), Some(to)),
                restart: watchdog::restart_script(target),
            };
            armed = timed(&mut steps, p, "arm the server's watchdog", || {
                let out = t.run(&watchdog::arm(&target.base, &arm))?;
                if out.status == 0 && watchdog::armed(&out.stdout_str()) {
                    Ok(format!("restores {from} unless confirmed within {}s", arm.secs))
                } else {
                    Err(Error::Failed(format!("could not arm the watchdog: {}", out.stderr_str())).into())
                }
            });
            if armed && timed(&mut steps, p, "roll back", || retry(&mut t, target, globals, |t| switch(t, target, to, from))) {
                let mut checked = |steps: &mut Vec<Step>, t: &mut Box<dyn Transport>, id: &str| {
                    let name = format!("health on {id}");
                    let mut none = false;
                    let ok = timed(steps, p, &name, || match retry(t, target, globals, |t| health(t, target, id))? {
                        Some(d) => Ok(d),
                        None => {
                            none = true;
                            Ok("no `restart` services: nothing verified".into())
                        }
                    });
                    if ok && !none {
                        verified += 1;
                    }
                };
                if !crate::interrupt::seen() {
                    checked(&mut steps, &mut t, to);
                }
                // Forward again whatever the health said: the drill ends where it began.
                if !crate::interrupt::seen() {
                    timed(&mut steps, p, "roll forward", || retry(&mut t, target, globals, |t| switch(t, target, from, to)));
                }
                if !crate::interrupt::seen() {
                    checked(&mut steps, &mut t, from);
                }
            }
        }
        (None, _) => {
            timed(&mut steps, p, "choose release", || Err(Error::Failed("no current release".into()).into()));
        }
        (Some(cur), None) => {
            timed(&mut steps, p, "choose release", || Err(Error::Failed(format!("no ok release older than {cur} to roll back to")).into()));
        }
    }
    // Where the drill ended is the server's word, read now, never this client's memory.
    let ended_on = end_on_server(&mut t, target, globals, &held, start.as_deref(), armed, &steps);
    let interrupted = crate::interrupt::seen();
    let back_where_it_began = ended_on.is_some() && ended_on == start;
    let all_ok = !steps.is_empty() && steps.iter().all(|s| s.ok) && !interrupted;
    let verdict = match (back_where_it_began && all_ok, verified) {
        (true, 2) => "PASS",
        (true, _) => "UNVERIFIED",
        (false, _) => "FAIL",
    };
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
        "back_where_it_began": back_where_it_began, "services_verified": verified, "interrupted": interrupted, "steps": steps});
    let gate = Gate { name: "rollback-drill", key: "ROLLBACK_DRILL_RESULT", reports };
    let r = gate.finish_with(p, verdict, verdict == "PASS", doc, &md);
    if verdict == "UNVERIFIED" {
        return r.context("the drill switched back and forth but verified no service: list the services it must restart in `restart`");
    }
    if interrupted {
        return Err(Error::Interrupted.into());
    }
    r
}

/// Ends the drill on the server: confirms the watchdog when `current` is back where it
/// began, else asks it to restore now, and waits. Returns `current` as the server says it
/// is afterwards (a fresh connection when this one broke), `None` when unknown.
fn end_on_server(
    t: &mut Box<dyn Transport>,
    target: &Target,
    globals: &Globals,
    held: &lock::Held,
    start: Option<&str>,
    armed: bool,
    steps: &[Step],
) -> Option<String> {
    let clean = steps.iter().all(|s| s.ok) && !crate::interrupt::seen();
    let reason = if crate::interrupt::seen() {
        "interrupted (Ctrl-C, SIGTERM or SIGHUP) during the drill"
    } else {
        "the drill did not end where it began"
    };
    let wait = target.health_timeout.as_secs() + 30;
    let attempt = |t: &mut dyn Transport| -> anyhow::Result<Option<String>> {
        let now = release::parse_state(&t.run(&remote::read_state(&target.base))?.stdout_str()).current;
        if !armed || (clean && now.as_deref() == start) {
            let out = t.run(&remote::confirm_and_prune(&target.base, &[], &held.token, ""))?;
            if !out.stdout_str().lines().any(|l| l.starts_with("NOT-CONFIRMED")) {
                return Ok(now);
            }
        }
        let out = t.run(&watchdog::fire(&target.base, &held.token, reason, wait))?;
        Ok(watchdog::parse_outcome(&out.stdout_str()).current)
    };
    match attempt(&mut **t) {
        Ok(c) => c,
        Err(_) => match transport::connect(&target.host, globals) {
            Ok(mut fresh) => {
                let c = attempt(&mut *fresh).ok().flatten();
                *t = fresh;
                c
            }
            Err(_) => None,
        },
    }
}
