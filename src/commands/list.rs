//! `bst list`: the current release and every release, newest first.

use serde::Serialize;

use crate::error::Error;
use crate::release::{self, State};
use crate::remote;
use crate::report::Printer;
use crate::settings::{Globals, Target};
use crate::transport;

#[derive(Serialize)]
struct Listing<'a> {
    schema_version: u32,
    target: &'a str,
    base: &'a str,
    current: Option<&'a str>,
    releases: Vec<Row<'a>>,
}

#[derive(Serialize)]
struct Row<'a> {
    id: &'a str,
    status: &'static str,
    current: bool,
    created_at: Option<&'a str>,
    commit: Option<&'a str>,
    branch: Option<&'a str>,
    dirty: Option<bool>,
    deployed_by: Option<&'a str>,
    build: Option<bool>,
    files: Option<u64>,
    bytes: Option<u64>,
    duration_ms: Option<u64>,
}

pub fn read(target: &Target, globals: &Globals) -> anyhow::Result<State> {
    let mut t = transport::connect(&target.host, globals)?;
    let out = t.run(&remote::read_state(&target.base))?;
    if out.status != 0 {
        return Err(Error::Failed(format!("cannot read {} on {}: {}", target.base, target.host_label(), out.stderr_str())).into());
    }
    Ok(release::parse_state(&out.stdout_str()))
}

pub fn run(target: &Target, globals: &Globals, p: &Printer) -> anyhow::Result<()> {
    let state = read(target, globals)?;
    super::tell_watchdog(p, &state);
    match (&state.current, &state.current_raw) {
        (Some(id), _) if state.get(id).is_none() => {
            p.warn(format!("{}/current points at releases/{id}, which does not exist: nothing is live; deploy or roll back", target.base))
        }
        (None, Some(raw)) if raw == "!not-a-symlink" => {
            p.warn(format!("{}/current is not a symlink; bst will not replace it: move it away, then deploy", target.base))
        }
        (None, Some(raw)) => p.warn(format!("{}/current points at `{raw}`, not at a release of this target", target.base)),
        _ => {}
    }
    let rows: Vec<Row> = state
        .releases
        .iter()
        .rev()
        .map(|r| {
            let m = r.meta.as_ref();
            Row {
                id: &r.id,
                status: r.status().as_str(),
                current: state.current.as_deref() == Some(r.id.as_str()),
                created_at: m.map(|m| m.created_at.as_str()),
                commit: m.and_then(|m| m.commit.as_deref()),
                branch: m.and_then(|m| m.branch.as_deref()),
                dirty: m.and_then(|m| m.dirty),
                deployed_by: m.map(|m| m.deployed_by.as_str()),
                build: m.map(|m| m.build),
                files: m.map(|m| m.files),
                bytes: m.map(|m| m.bytes),
                duration_ms: m.and_then(|m| m.duration_ms),
            }
        })
        .collect();
    if p.json {
        p.json(&Listing { schema_version: 1, target: &target.name, base: &target.base, current: state.current.as_deref(), releases: rows });
        return Ok(());
    }
    if !state.base_exists || rows.is_empty() {
        p.out(format!("{}: no releases in {} on {}", target.name, target.base, target.host_label()));
        return Ok(());
    }
    p.out(format!(
        "{}: {} on {} (current: {})",
        target.name,
        target.base,
        target.host_label(),
        state.current.as_deref().or(state.current_raw.as_deref()).unwrap_or("none")
    ));
    // Each column as wide as its widest value: an id is 16 characters, a time 20, a commit
    // 8 plus its dirty marker.
    p.out(format!("  {:<16}  {:<7}  {:<20}  {:<9}  {:<14}  {}", "RELEASE", "STATUS", "CREATED", "COMMIT", "BRANCH", "DEPLOYED BY"));
    for r in rows {
        // By characters: a `commit` from the server is data, not necessarily hex.
        let short: Option<String> = r.commit.map(|c| c.chars().take(8).collect());
        let commit = format!("{}{}", short.as_deref().unwrap_or("-"), if r.dirty == Some(true) { "+" } else { "" });
        p.out(format!(
            "{} {}  {:<7}  {:<20}  {:<9}  {:<14}  {}",
            if r.current { "*" } else { " " },
            r.id,
            r.status,
            r.created_at.unwrap_or("-"),
            commit,
            r.branch.unwrap_or("-"),
            r.deployed_by.unwrap_or("-"),
        ));
    }
    p.out("* = current release, + = deployed with uncommitted changes (dirty)");
    Ok(())
}
