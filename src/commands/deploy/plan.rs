//! What a deploy decides once it holds the lock and knows the server's state: the refusals,
//! the new id and meta, the delta plan, and the end of the deploy as script text. Pure apart
//! from `-v` lines, so each rule is unit-testable.

use super::{ms, Deploy, Prepared, Remote};
use crate::commands::lock;
use crate::commands::Audit;
use crate::error::Error;
use crate::release::{self, Meta, Release, State, Status};
use crate::settings::{Sibling, Target};
use crate::workspace;

impl Deploy<'_> {
    /// Refusals that need the server's state, the new id and meta, the delta plan, and the end of
    /// the deploy as script text. `seed`: the sibling (and its copy's generation) whose
    /// manifest `remote` is, when this target has no pristine copy of its own.
    pub(super) fn prepare(
        &self,
        state: State,
        remote: Remote<'_>,
        seed: Option<(Sibling, String)>,
        local: &[workspace::Record],
        git: &workspace::GitInfo,
    ) -> anyhow::Result<Prepared> {
        let Deploy { target, p, ref held, build, gated, combined, started, .. } = *self;
        if let Some(real) = &state.real_base {
            if let Some(f) = target.forbidden_paths.iter().find(|f| crate::settings::under(real, f)) {
                return Err(Error::Failed(format!(
                    "{} resolves to {real}, at or under the forbidden path {f}; refusing to deploy",
                    target.base
                ))
                .into());
            }
        }
        if let Some(raw) = &state.current_raw {
            return Err(Error::Failed(format!(
                "{}/current points at `{raw}`, not at a release of this target; refusing to replace it",
                target.base
            ))
            .into());
        }
        let id = release::next_id(release::now_unix(), state.newest_id());
        let meta = Meta {
            id: id.clone(),
            target: target.name.clone(),
            status: Status::Pending,
            created_at: release::rfc3339(release::now_unix()),
            commit: git.commit.clone(),
            branch: git.branch.clone(),
            dirty: git.dirty,
            deployed_by: lock::who(),
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            build,
            files: local.len() as u64,
            bytes: local.iter().map(|r| r.size).sum(),
            duration_ms: None,
            error: None,
        };
        // Delta when the server kept a pristine copy (this target's, else a sibling's) and most
        // files are unchanged.
        let decoded = match remote {
            Remote::Gz(gz) => decode_manifest(gz).unwrap_or_else(|e| {
                // A sibling's copy is an offer, not this target's state: no warning.
                let msg = format!("cannot read the server's manifest ({e:#}); sending the full snapshot");
                if seed.is_some() {
                    p.verbose(msg);
                } else {
                    p.warn(msg);
                }
                None
            }),
            Remote::Known(recs, len) => Some((recs, Some(len))),
            Remote::None => None,
        };
        let (mut seed, base_generation) = match seed {
            Some((sibling, g)) => (Some(sibling), Some(g)),
            None => (None, state.cache_generation.clone()),
        };
        let (mut plan, remote_len) = match (base_generation, decoded) {
            (Some(generation), Some((remote, raw_len))) => (Some((generation, workspace::plan(local, &remote))), raw_len),
            _ => (None, None),
        };
        if p.verbose > 0 {
            match (&plan, &seed) {
                (Some((_, pl)), Some(s)) => p.verbose(format!(
                    "seeding from sibling target {} ({}): {} of {} files reused; {} to send, {} to remove",
                    s.name,
                    s.base,
                    crate::report::count(local.len() - pl.send.len()),
                    crate::report::count(local.len()),
                    pl.send.len(),
                    pl.remove.len()
                )),
                (Some((g, pl)), None) => {
                    p.verbose(format!("delta against {g}: {} to send, {} to remove, of {}", pl.send.len(), pl.remove.len(), local.len()))
                }
                _ => {}
            }
        }
        if plan.as_ref().is_some_and(|(_, pl)| pl.send.len() * 5 > local.len() * 4) {
            if let Some(s) = &seed {
                p.verbose(format!("sibling target {} shares too few files with this workspace; sending the full snapshot", s.name));
            }
            plan = None;
        }
        if plan.is_none() {
            seed = None;
        }
        let meta_json = serde_json::to_string(&meta)?;
        let mut ok_meta = meta.clone();
        ok_meta.status = Status::Ok;
        let mut after = state.clone();
        after.releases.push(Release { id: id.clone(), meta: Some(ok_meta.clone()) });
        after.current = Some(id.clone());
        // A gated deploy prunes only once the gate has passed: a failed gate switches back.
        let prune = after.prune_plan(target.keep_releases, state.current.as_deref());
        let mut audit = Audit::new("deploy", &target.name, "ok");
        audit.release = Some(&id);
        audit.previous = state.current.as_deref();
        let audit_json = audit.json();
        // What the pristine copy holds after this upload: unique, so a client's cached manifest
        // is trusted only for exactly the upload it made.
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let generation = format!("{id} {:x}{:x}", nanos, std::process::id());
        // The changed records are appended to the server's manifest, unless replayed patches
        // would make it more than twice the size of a fresh one (or its size is unknown).
        let patch = plan.as_ref().and_then(|(_, pl)| {
            let changed: Vec<&workspace::Record> = pl.send.iter().filter_map(|p| find(local, p, |r| &r.path)).collect();
            let patch = workspace::encode_patch(&changed, &pl.remove);
            let fresh = local.len() * 100;
            remote_len.filter(|&len| len + patch.len() <= 2 * fresh.max(4096)).map(|_| patch)
        });
        let cache_job = crate::remote::start_cache_job(&generation);
        let tail = if combined {
            ok_meta.duration_ms = Some(crate::remote::DURATION_PLACEHOLDER);
            let finish =
                crate::remote::finish_deploy(&target.base, &id, &serde_json::to_string(&ok_meta)?, &prune, &audit_json, &held.token, true);
            // The job registers while the lock is still held: the next deploy's lock waits for it.
            // From here the stream has arrived whole: a write to a client that went away (the
            // clock mark) must not kill the script between the upload and the switch.
            format!(
                "trap '' PIPE HUP\n{}{finish}{}{cache_job}{}",
                crate::remote::clock_mark("TU"),
                crate::remote::clock_mark("TS"),
                crate::remote::unlock_fragment(&held.token)
            )
        } else {
            cache_job
        };
        Ok(Prepared {
            state,
            meta,
            plan,
            tail,
            prologue: crate::remote::clock_prologue(ms(started)),
            meta_json,
            prune,
            audit_json,
            gated,
            generation,
            patch,
            seed,
        })
    }
}

/// What never ships besides git's own ignore rules: the shared paths (the server's copy is
/// linked in), and bst's byproducts inside the workspace: a local target's base (the demo's
/// `.bst-demo/`) and the reports folder. Shipping those once made a deploy send 1,530 files
/// instead of 303, and every later one fresh reports.
pub(super) fn listing_rules(target: &Target) -> workspace::Rules {
    let mut skip: Vec<String> = target.shared_files.iter().chain(&target.shared_dirs).cloned().collect();
    for b in &target.byproducts {
        if let Ok(inside) = b.strip_prefix(&target.source) {
            let rel = inside.to_string_lossy().replace('\\', "/");
            if !rel.is_empty() && !skip.contains(&rel) {
                skip.push(rel);
            }
        }
    }
    workspace::Rules { exclude: target.exclude.clone(), include: target.include.clone(), skip, allow_no_git: target.source_is_not_git }
}

/// The item of `sorted` (by path: entries and manifests are) at `path`.
pub(super) fn find<'a, T>(sorted: &'a [T], path: &str, key: impl Fn(&T) -> &String) -> Option<&'a T> {
    sorted.binary_search_by(|x| key(x).as_str().cmp(path)).ok().map(|i| &sorted[i])
}

/// The records and the manifest's raw size (which grows with every appended patch).
pub(super) fn decode_manifest(gz: &[u8]) -> anyhow::Result<Option<(Vec<workspace::Record>, Option<usize>)>> {
    use std::io::Read;
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(gz).read_to_end(&mut raw)?;
    Ok(workspace::decode(&raw).map(|r| (r, Some(raw.len()))))
}
