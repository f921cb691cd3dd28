//! `bst <target> [<service>] status|start|stop|restart`: systemd control with the result
//! waited for, the live release named, and health probed through the SSH connection.

use serde::Serialize;

use super::Audit;
use crate::error::Error;
use crate::health::{self, Action};
use crate::report::Printer;
use crate::service::{Probe, UnitState};
use crate::settings::{Globals, Service, Target};
use crate::transport;

#[derive(Serialize)]
struct Row<'a> {
    name: &'a str,
    unit: &'a str,
    #[serde(flatten)]
    state: &'a UnitState,
    health: Option<&'a Probe>,
    ok: bool,
}

#[derive(Serialize)]
struct Report<'a> {
    schema_version: u32,
    target: &'a str,
    action: &'static str,
    ok: bool,
    services: Vec<Row<'a>>,
}

/// Which services a command names: `bst t status` is all of them; other actions with no
/// service act on `app`.
pub fn select<'a>(target: &'a Target, service: Option<&str>, action: Action) -> anyhow::Result<Vec<&'a Service>> {
    let known = || target.services.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
    if target.services.is_empty() {
        return Err(Error::Usage(format!("target `{}` declares no services ([targets.{}.services.NAME])", target.name, target.name)).into());
    }
    match service {
        Some(name) => target.service(name).map(|s| vec![s]).ok_or_else(|| {
            Error::Usage(match crate::error::closest(name, target.services.iter().map(|s| s.name.as_str())) {
                Some(c) => format!("unknown service `{name}` for target `{}`; did you mean `{c}`?", target.name),
                None => format!("unknown service `{name}` for target `{}` (known: {})", target.name, crate::error::Listed(&known())),
            })
            .into()
        }),
        None if action == Action::Status => Ok(target.services.iter().collect()),
        None => target.service("app").map(|s| vec![s]).ok_or_else(|| {
            Error::Usage(format!(
                "target `{}` has no `app` service; name one: bst {} <service> {} (known: {})",
                target.name,
                target.name,
                action.as_str(),
                crate::error::Listed(&known())
            ))
            .into()
        }),
    }
}

pub fn run(target: &Target, globals: &Globals, p: &Printer, service: Option<&str>, action: Action) -> anyhow::Result<()> {
    let selected = select(target, service, action)?;
    let mut t = transport::connect(&target.host, globals)?;
    let (mut states, probes) = health::act(&mut *t, target, &selected, action)?;
    for ((svc, st), pr) in selected.iter().zip(states.iter_mut()).zip(&probes) {
        if !row_ok(action, st, pr.as_ref()) && st.journal.is_empty() {
            if let Ok(out) = t.run(&crate::remote::systemd::journal_script(&[svc])) {
                st.journal = out.stdout_str().lines().filter_map(|l| l.strip_prefix("J ")).map(str::to_string).collect();
            }
        }
    }
    if action != Action::Status {
        let ok = selected.iter().zip(&states).zip(&probes).all(|((_, st), pr)| row_ok(action, st, pr.as_ref()));
        let audit = Audit::new(action.as_str(), &target.name, if ok { "ok" } else { "failed" });
        let line = serde_json::json!({"at": audit.at, "who": audit.who, "command": action.as_str(), "target": target.name,
            "services": selected.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), "result": audit.result})
        .to_string();
        if let Err(e) = t.run(&crate::remote::append_audit(&target.base, &line)) {
            p.warn(format!("could not write the deploy log: {e:#}"));
        }
    }
    report(target, p, action, &selected, &states, &probes)
}

fn row_ok(action: Action, st: &UnitState, probe: Option<&Probe>) -> bool {
    match action {
        Action::Stop => !st.active() && st.error.is_none(),
        Action::Status => st.active() && probe.is_none_or(|p| p.healthy),
        _ => st.active() && st.error.is_none() && probe.is_none_or(|p| p.healthy),
    }
}

fn report(
    target: &Target,
    p: &Printer,
    action: Action,
    selected: &[&Service],
    states: &[UnitState],
    probes: &[Option<Probe>],
) -> anyhow::Result<()> {
    let rows: Vec<Row> = selected
        .iter()
        .zip(states)
        .zip(probes)
        .map(|((svc, st), pr)| Row {
            name: &svc.name,
            unit: &svc.unit,
            state: st,
            health: pr.as_ref(),
            ok: row_ok(action, st, pr.as_ref()),
        })
        .collect();
    let all_ok = rows.len() == selected.len() && rows.iter().all(|r| r.ok);
    for r in &rows {
        let health = r.health.map_or(String::new(), |h| format!("  health: {}", p.verdict(if h.healthy { "ok" } else { "FAIL" }, 0)));
        p.out(format!(
            "{} {:<10} {:<28} {}/{}  pid {}  since {}  release {}{health}",
            if r.ok { "●" } else { "×" },
            r.name,
            r.unit,
            if r.state.load_state == "not-found" { "not-found" } else { r.state.active_state.as_str() },
            if r.state.load_state == "not-found" { "no such unit" } else { r.state.sub_state.as_str() },
            r.state.main_pid,
            r.state.since.as_deref().unwrap_or("-"),
            r.state.release.as_deref().unwrap_or("-"),
        ));
        if let Some(h) = r.health {
            p.status(format!("  {}: {}", r.name, h.detail));
        }
        if let Some(e) = &r.state.error {
            p.warn(format!("{}: {e}", r.name));
        }
        if !r.ok {
            for j in &r.state.journal {
                p.detail(format!("  | {j}"));
            }
        }
    }
    p.json(&Report { schema_version: 1, target: &target.name, action: action.as_str(), ok: all_ok, services: rows });
    if all_ok {
        return Ok(());
    }
    let bad: Vec<String> = selected
        .iter()
        .zip(states)
        .zip(probes)
        .filter(|((_, st), pr)| !row_ok(action, st, pr.as_ref()))
        .map(|((svc, st), pr)| match pr {
            Some(pr) if !pr.healthy => format!("{} unhealthy ({})", svc.name, pr.detail),
            _ if st.active() && st.error.is_some() => format!("{}: {}", svc.name, st.error.as_deref().unwrap_or("")),
            _ if st.load_state == "not-found" => format!("{} not-found (no unit {} on the server)", svc.name, svc.unit),
            _ if st.error.as_deref().is_some_and(|e| e.contains("sudo")) => format!("{}: {}", svc.name, st.error.as_deref().unwrap_or("")),
            _ => format!("{} {}", svc.name, if st.active_state.is_empty() { "unknown" } else { &st.active_state }),
        })
        .collect();
    let msg = format!("{} on `{}`: {}", action.as_str(), target.name, bad.join("; "));
    // A unit that would not stay up is unhealthy (3), like one that is down; a systemctl
    // that failed is a failure (1).
    // No sudo on the server is a setup failure, not an unhealthy service.
    let no_sudo = states.iter().any(|s| s.error.as_deref().is_some_and(|e| e.starts_with("sudo is not installed")));
    if no_sudo || action != Action::Status && states.iter().any(|s| s.error.as_ref().is_some_and(|e| !e.starts_with("did not stay up"))) {
        return Err(Error::Failed(msg).into());
    }
    Err(Error::Unhealthy(msg).into())
}
