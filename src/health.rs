//! Restart-and-verify: an action on the target's services, the result waited for and probed
//! (including the settle period that catches a unit that keeps dying). The deploy gate, the
//! rollback drill and the service commands all use it, so none of them calls another.

use crate::error::Error;
use crate::remote::systemd;
use crate::service::{self, Probe, UnitState};
use crate::settings::{Service, Target};
use crate::transport::Transport;

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

/// Runs the action, then reads state and probes health (waiting up to `health_timeout`
/// after start/restart).
pub fn act(
    t: &mut dyn Transport,
    target: &Target,
    selected: &[&Service],
    action: Action,
) -> anyhow::Result<(Vec<UnitState>, Vec<Option<Probe>>)> {
    let script = if action == Action::Status {
        systemd::status_script(selected)
    } else {
        systemd::action_script(selected, action.as_str(), target.health_timeout)
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
    let out = t.run(&systemd::status_script(selected))?;
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
    let out = t.run(&systemd::status_script(&services))?;
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
