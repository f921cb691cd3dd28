//! `bst <target> [<service>] status|start|stop|restart`: systemd control with the result
//! waited for, the live release named, and health probed through the SSH connection.

use serde::Serialize;

use super::Audit;
use crate::error::Error;
use crate::report::Printer;
use crate::service::{self, Probe, UnitState};
use crate::settings::{Globals, Service, Target};
use crate::transport::{self, Transport};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Status,
    Start,
    Stop,
    Restart,
}

impl Action {
    /// Every action's word, for suggestions and completion.
    pub const NAMES: [&'static str; 4] = ["status", "start", "stop", "restart"];

    pub fn parse(s: &str) -> Option<Action> {
        Some(match s {
            "status" => Action::Status,
            "start" => Action::Start,
            "stop" => Action::Stop,
            "restart" => Action::Restart,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Status => "status",
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Restart => "restart",
        }
    }
}

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
    let mut t = transport::connect(target, globals)?;
    let (mut states, probes) = act(&mut *t, target, &selected, action)?;
    for ((svc, st), pr) in selected.iter().zip(states.iter_mut()).zip(&probes) {
        if !row_ok(action, st, pr.as_ref()) && st.journal.is_empty() {
            if let Ok(out) = t.run(&service::journal_script(&[svc])) {
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

/// Runs the action, then reads state and probes health (waiting up to `health_timeout`
/// after start/restart).
pub fn act(
    t: &mut dyn Transport,
    target: &Target,
    selected: &[&Service],
    action: Action,
) -> anyhow::Result<(Vec<UnitState>, Vec<Option<Probe>>)> {
    let script = if action == Action::Status {
        service::status_script(selected)
    } else {
        service::action_script(selected, action.as_str(), target.health_timeout)
    };
    // health_timeout counts from here: the restart's own time is part of it.
    let started = std::time::Instant::now();
    let out = t.run(&script)?;
    if out.status != 0 {
        return Err(Error::Failed(format!("systemctl failed on {}: {}", target.host_label(), out.stderr_str())).into());
    }
    let states = service::parse_status(&out.stdout_str());
    let mut probes = Vec::new();
    for (svc, st) in selected.iter().zip(&states) {
        let probe = match (&svc.health, action) {
            (None, _) | (_, Action::Stop) => None,
            (Some(_), _) if !st.active() => None,
            (Some(h), Action::Start | Action::Restart) => {
                Some(service::wait_healthy(t, h, target.health_timeout.saturating_sub(started.elapsed()))?)
            }
            (Some(h), Action::Status) => Some(service::probe(t, h)),
        };
        probes.push(probe);
    }
    if matches!(action, Action::Start | Action::Restart) && !target.settle.is_zero() {
        return settle(t, target, selected, states, probes);
    }
    Ok((states, probes))
}

/// A unit with `Restart=always` that dies every second is `active` half the time and answers
/// a probe now and then: it passes only if it stays up for the whole settle period (same main
/// pid, same `NRestarts`) and is healthy at its end.
fn settle(
    t: &mut dyn Transport,
    target: &Target,
    selected: &[&Service],
    before: Vec<UnitState>,
    probes: Vec<Option<Probe>>,
) -> anyhow::Result<(Vec<UnitState>, Vec<Option<Probe>>)> {
    if !before.iter().zip(&probes).all(|(st, pr)| st.active() && pr.as_ref().is_none_or(|p| p.healthy)) {
        return Ok((before, probes));
    }
    let until = std::time::Instant::now() + target.settle;
    while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
        crate::interrupt::check()?;
        std::thread::sleep(left.min(std::time::Duration::from_millis(200)));
    }
    let out = t.run(&service::status_script(selected))?;
    let mut after = service::parse_status(&out.stdout_str());
    let mut probes = Vec::new();
    let secs = target.settle.as_secs_f64();
    for (svc, (now, then)) in selected.iter().zip(after.iter_mut().zip(&before)) {
        if !now.active() || now.main_pid != then.main_pid || now.n_restarts != then.n_restarts {
            now.error = Some(format!(
                "did not stay up for the {secs}s settle period (main pid {} -> {}, restarts {} -> {})",
                then.main_pid,
                now.main_pid,
                then.n_restarts.map_or("?".into(), |n| n.to_string()),
                now.n_restarts.map_or("?".into(), |n| n.to_string()),
            ));
        }
        probes.push(match &svc.health {
            Some(h) if now.active() => Some(service::probe_within(t, h, std::time::Duration::from_secs(1))),
            _ => None,
        });
    }
    Ok((after, probes))
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
                eprintln!("  | {j}");
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

/// Restarts the target's `restart` services and waits for health: the problems found, empty
/// when all are active and healthy. Used by the deploy gate and the rollback drill.
pub fn restart_and_verify(t: &mut dyn Transport, target: &Target) -> anyhow::Result<Vec<String>> {
    let services: Vec<&Service> = target.restart.iter().filter_map(|n| target.service(n)).collect();
    if services.is_empty() {
        // Nothing to restart: probe whatever has a health check, once per service.
        let with_health: Vec<&Service> = target.services.iter().filter(|s| s.health.is_some()).collect();
        let (states, probes) = act(t, target, &with_health, Action::Status)?;
        return Ok(problems(&with_health, &states, &probes));
    }
    let (states, probes) = act(t, target, &services, Action::Restart)?;
    Ok(problems(&services, &states, &probes))
}

/// After someone else restarted the `restart` services (the server's watchdog, switching
/// back): waits for them to be active and healthy, without restarting them again.
pub fn verify_running(t: &mut dyn Transport, target: &Target) -> anyhow::Result<Vec<String>> {
    let mut services: Vec<&Service> = target.restart.iter().filter_map(|n| target.service(n)).collect();
    if services.is_empty() {
        services = target.services.iter().filter(|s| s.health.is_some()).collect();
    }
    let out = t.run(&service::status_script(&services))?;
    let states = service::parse_status(&out.stdout_str());
    let mut probes = Vec::new();
    for (svc, st) in services.iter().zip(&states) {
        probes.push(match &svc.health {
            Some(h) if st.active() => Some(service::wait_healthy(t, h, target.health_timeout)?),
            _ => None,
        });
    }
    Ok(problems(&services, &states, &probes))
}

pub fn problems(services: &[&Service], states: &[UnitState], probes: &[Option<Probe>]) -> Vec<String> {
    services
        .iter()
        .zip(states)
        .zip(probes)
        .filter_map(|((svc, st), pr)| {
            if !st.active() {
                Some(format!("{} is {}", svc.name, if st.active_state.is_empty() { "unknown" } else { &st.active_state }))
            } else if let Some(e) = st.error.as_ref().filter(|e| e.starts_with("did not stay up")) {
                Some(format!("{}: {e}", svc.name))
            } else {
                pr.as_ref().filter(|pr| !pr.healthy).map(|pr| format!("{}: {}", svc.name, pr.detail))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::Action;

    #[test]
    fn every_action_name_parses_to_itself() {
        for n in Action::NAMES {
            assert_eq!(Action::parse(n).map(Action::as_str), Some(n));
        }
    }
}
