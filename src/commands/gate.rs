//! The parts of the release gates that more than one command reports: the health gate after
//! a switch (deploy, rollback) and the env baseline (`env check`, `check`). Commands share
//! them through here and never call one another.

use serde::Serialize;

use super::lock::{self, Held};
use super::Audit;
use crate::dotenv::EnvFile;
use crate::error::Error;
use crate::release;
use crate::remote;
use crate::remote::watchdog;
use crate::report::Printer;
use crate::settings::{Globals, Target};
use crate::transport::{self, Transport};

/// The release a health gate is trying, and what to do once it is confirmed.
#[derive(Clone, Copy)]
pub struct Trial<'a> {
    pub id: &'a str,
    /// What `current` named before the switch: where the watchdog goes back to.
    pub previous: Option<&'a str>,
    pub held: &'a Held,
    /// A signal came before the gate started: do not confirm.
    pub interrupted: bool,
    /// Pruned in the confirming script, only once the trial passed.
    pub prune: &'a [String],
}

/// Reads `<base>/<rel>` from the target, as the target's dialect reads it; `None` when it
/// does not exist.
pub fn read_env(t: &mut dyn Transport, target: &Target, rel: &str) -> anyhow::Result<Option<EnvFile>> {
    Ok(read_env_counted(t, target, rel)?.0)
}

/// [`read_env`] and how many `.bak.*` backups of the file exist.
pub fn read_env_counted(t: &mut dyn Transport, target: &Target, rel: &str) -> anyhow::Result<(Option<EnvFile>, usize)> {
    let out = t.run(&remote::read_env(&target.base, rel))?;
    if out.status != 0 {
        return Err(Error::Failed(format!("cannot read {}/{rel} on {}: {}", target.base, target.host_label(), out.stderr_str())).into());
    }
    // The file's bytes as they are: a lossy decoding would turn a non-UTF-8 value into U+FFFD
    // and then write that back.
    let bytes = out.stdout;
    let nl = bytes.iter().position(|&b| b == b'\n').unwrap_or(bytes.len());
    let head = String::from_utf8_lossy(&bytes[..nl]).into_owned();
    let content = bytes.get(nl + 1..).unwrap_or_default().to_vec();
    let count = |n: &str| n.trim().parse::<usize>().ok();
    match head.split_once(' ') {
        Some(("FOUND", n)) if count(n).is_some() => Ok((Some(EnvFile::parse(content, target.env_dialect)), count(n).unwrap_or(0))),
        Some(("MISSING", n)) if count(n).is_some() => Ok((None, count(n).unwrap_or(0))),
        _ => Err(Error::Failed(format!("unexpected reply reading {}/{rel}", target.base)).into()),
    }
}

/// The target's env file, relative to its base.
pub(crate) fn shared_rel(target: &Target) -> String {
    format!("shared/{}", target.env_file)
}

#[derive(Debug, Serialize, Clone)]
pub struct KeyReport {
    pub key: String,
    /// ok | missing | empty | hidden
    pub status: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hidden: Vec<&'static str>,
}

#[derive(Debug, Serialize, Clone)]
pub struct ExpectReport {
    pub key: String,
    pub expected: String,
    /// match | mismatch | missing
    pub status: &'static str,
}

/// The env baseline as data: shared by `env check`, `check` and the tests.
pub fn baseline(file: Option<&EnvFile>, target: &Target) -> (bool, Vec<KeyReport>, Vec<ExpectReport>) {
    let mut keys = Vec::new();
    for k in &target.required_env {
        let entry = file.and_then(|f| f.get(k));
        let lookalike = file.and_then(|f| f.lookalike(k));
        let (status, hidden) = match entry {
            None => match lookalike {
                Some((_, why)) => ("hidden", vec![why]),
                None => ("missing", Vec::new()),
            },
            Some(e) if e.value_str().trim().is_empty() => ("empty", e.hidden.clone()),
            Some(e) if !e.hidden.is_empty() => ("hidden", e.hidden.clone()),
            Some(_) => ("ok", Vec::new()),
        };
        keys.push(KeyReport { key: k.clone(), status, hidden });
    }
    let mut expects = Vec::new();
    for (k, expected) in &target.expect_env {
        let status = match file.and_then(|f| f.get(k)) {
            None => "missing",
            Some(e) if e.value == expected.as_bytes() && e.hidden.is_empty() => "match",
            Some(_) => "mismatch",
        };
        expects.push(ExpectReport { key: k.clone(), expected: expected.clone(), status });
    }
    let pass = file.is_some() && keys.iter().all(|k| k.status == "ok") && expects.iter().all(|e| e.status == "match");
    (pass, keys, expects)
}

/// deploy-rs's "magic rollback": after the switch (made with the server's watchdog armed),
/// restart the `restart` services and wait for health. Healthy: the caller confirms. Not
/// healthy, interrupted (Ctrl-C, SIGTERM, SIGHUP) or cut off: the watchdog is asked to switch
/// back now (over a fresh connection when this one is gone), and the health of the release it
/// restored is proven over a new connection. A client that cannot even do that leaves it to
/// the watchdog's deadline. Either way a deploy that did not end on the new release fails
/// (deploy-rs #214).
pub fn health_gate(
    t: &mut dyn Transport,
    target: &Target,
    globals: &Globals,
    p: &Printer,
    trial: &Trial<'_>,
) -> anyhow::Result<Vec<String>> {
    use crate::health::restart_and_verify;
    let Trial { id, previous, held, interrupted, prune } = *trial;
    let names = target.restart.join(", ");
    let id = id.to_string();
    let secs = watchdog::deadline_secs(target, 1);
    p.status(format!("restarting {names}; waiting up to {}s for health", target.health_timeout.as_secs()));
    let gate = if interrupted { Err(Error::Interrupted.into()) } else { restart_and_verify(t, target) };
    let reason = match gate {
        // Confirmed in one script with the verdict's audit line, the prune and the unlock,
        // held back from Ctrl-C: a signal that came at any point before it means no
        // confirmation (the channel that would carry it may have swallowed the signal).
        Ok(bad) if bad.is_empty() && !crate::interrupt::seen() => {
            let mut audit = Audit::new("restart", &target.name, "ok");
            audit.release = Some(&id);
            let out = {
                let _critical = crate::interrupt::Critical::enter();
                t.run(&crate::remote::confirm_and_prune(&target.base, prune, &held.token, &audit.json()))
            };
            match out {
                Ok(out) if out.stdout_str().lines().any(|l| l.starts_with("NOT-CONFIRMED")) => {
                    // Let the watchdog finish before saying where current is.
                    let _ = t.run(&watchdog::fire(&target.base, &held.token, "late", target.health_timeout.as_secs() + 30));
                    return Err(Error::Failed(format!(
                        "release {id} became healthy only after the server's watchdog deadline ({secs}s); the watchdog switched back to {}",
                        previous.unwrap_or("none")
                    ))
                    .into());
                }
                Ok(out) => {
                    if out.status != 0 {
                        p.warn(format!("pruning after the health gate failed: {}", out.stderr_str()));
                        lock::release(t, target, held, p);
                    }
                    p.status(format!("{names} healthy on {id}"));
                    return Ok(remote::Reply::parse(&out.stdout_str()).pruned);
                }
                // Whether the confirmation got there is the server's to say.
                Err(e) => Gone::Lost(format!("{e:#}")),
            }
        }
        Ok(bad) if bad.is_empty() => Gone::Interrupted,
        Ok(bad) => Gone::Unhealthy(bad.join("; ")),
        Err(e) if e.downcast_ref::<Error>().is_some_and(|e| matches!(e, Error::Interrupted)) => Gone::Interrupted,
        Err(e) => Gone::Lost(format!("{e:#}")),
    };
    let why = match &reason {
        Gone::Unhealthy(r) => format!("unhealthy: {r}"),
        Gone::Interrupted => "interrupted (Ctrl-C, SIGTERM or SIGHUP) during the health gate".to_string(),
        Gone::Lost(e) => format!("the connection was lost during the health gate: {e}"),
    };
    match (&reason, previous) {
        (Gone::Unhealthy(r), Some(prev)) => p.warn(format!("release {id} is unhealthy ({r}); rolling back to {prev}")),
        (Gone::Unhealthy(_), None) => {}
        (_, Some(prev)) => p.warn(format!("{why}; asking the server to switch back to {prev}")),
        (_, None) => p.warn(format!("{why}; asking the server to mark {id} failed")),
    }
    let wait = target.health_timeout.as_secs() + 30;
    let fire = watchdog::fire(&target.base, &held.token, &why, wait);
    // The connection in hand first (it may be fine: an unhealthy release, a Ctrl-C), then a
    // fresh one.
    let mut fresh: Option<Box<dyn Transport>> = None;
    let mut out = match &reason {
        Gone::Lost(_) => None,
        _ => t.run(&fire).ok(),
    };
    if out.is_none() {
        if let Ok(mut f) = transport::connect(&target.host, globals) {
            out = f.run(&fire).ok();
            fresh = Some(f);
        }
    }
    let fallback = |what: &str| {
        let when = release::rfc3339(release::now_unix() + secs as i64);
        match previous {
            Some(prev) => format!("{what}; the server's watchdog switches current back to {prev} by {when} on its own"),
            None => format!("{what}; the server's watchdog marks {id} failed and releases the lock by {when}"),
        }
    };
    let Some(out) = out else {
        return Err(Error::Failed(fallback(&format!("{why}, and the server could not be reached"))).into());
    };
    let seen = watchdog::parse_outcome(&out.stdout_str());
    if seen.confirmed && seen.current.as_deref() == Some(id.as_str()) {
        // The confirmation had reached the server before the connection went.
        p.status(format!("{names} healthy on {id} (confirmed before the connection was lost)"));
        return Ok(Vec::new());
    }
    if seen.running || seen.held {
        return Err(Error::Failed(fallback(&format!("{why}, and the server has not finished switching back yet"))).into());
    }
    let Some(prev) = previous else {
        return Err(Error::Failed(format!(
            "release {id}: {why}; there is no earlier release to roll back to; it stays current, marked failed"
        ))
        .into());
    };
    if seen.current.as_deref() != Some(prev) {
        return Err(Error::Failed(format!(
            "release {id}: {why}; switching back to {prev} FAILED: current is {} (see logs/watchdog.log on the server)",
            seen.current.as_deref().unwrap_or("missing")
        ))
        .into());
    }
    if matches!(reason, Gone::Interrupted) {
        return Err(anyhow::Error::from(Error::Interrupted)
            .context(format!("interrupted during the health gate; the server switched back to {prev} and marked {id} failed")));
    }
    // The watchdog restarted the services on the restored release; prove they are healthy,
    // over a fresh connection (not the one that may be wedged).
    let mut proof = match fresh {
        Some(f) => f,
        None => transport::connect(&target.host, globals)?,
    };
    let still_bad = crate::health::verify_running(&mut *proof, target)?;
    let r = match &reason {
        Gone::Unhealthy(r) => format!("failed its health check ({r})"),
        _ => why.clone(),
    };
    if still_bad.is_empty() {
        Err(Error::Failed(format!("release {id} {r}; rolled back to {prev}, which is healthy again; {id} is marked failed")).into())
    } else {
        Err(Error::Failed(format!("release {id} {r}; rolled back to {prev}, but it is NOT healthy either: {}", still_bad.join("; ")))
            .into())
    }
}

/// Why a gate did not confirm its release.
enum Gone {
    Unhealthy(String),
    Interrupted,
    Lost(String),
}
