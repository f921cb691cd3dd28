//! `bst deploy`: snapshot → one streamed upload → optional build → atomic switch → prune.
//! Any failure leaves `current` where it was, marks the new release failed, removes the
//! staging dir and releases the lock.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::gate::{health_gate, Trial};
use super::lock::{self, Held};
use super::Audit;
use crate::error::Error;
use crate::layout;
use crate::release::{self, Meta, Release, State, Status};
use crate::report::{human_bytes, Printer};
use crate::settings::{Globals, Target};
use crate::transport::{self, Stream, Transport};
use crate::watchdog;
use crate::workspace;

/// Level 1: ~4x faster than 6 for ~7% more bytes. The stream measures it against storing
/// (see `workspace::Probe`) and keeps whichever moves the snapshot faster over this link.
const GZIP_LEVEL: u32 = 1;

#[derive(Debug, Serialize)]
struct Summary<'a> {
    schema_version: u32,
    target: &'a str,
    release_id: &'a str,
    previous: Option<&'a str>,
    status: &'static str,
    build: bool,
    files: u64,
    bytes: u64,
    bytes_sent: u64,
    duration_ms: u64,
    pruned: Vec<String>,
    warnings: Vec<String>,
    /// Files that looked like secrets and were not shipped.
    withheld: Vec<String>,
    phases_ms: Phases,
    /// Only changed files were sent (the server kept a pristine copy of the last snapshot).
    delta: bool,
    files_sent: u64,
    /// How the snapshot travelled: `tar.gz` or `tar`.
    stream: &'static str,
}

/// Wall time per phase, for the summary and `--json` (benchmarks read it).
#[derive(Debug, Default, Clone, Copy, Serialize)]
struct Phases {
    snapshot_ms: u64,
    upload_ms: u64,
    build_ms: Option<u64>,
    switch_ms: u64,
}

fn ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// A bar for a human at a terminal; CI and pipes get the plain summary line only.
fn progress_bar(p: &Printer, target: &Target, entries: &[workspace::Entry]) -> Option<indicatif::ProgressBar> {
    if !p.tty || p.quiet || p.json {
        return None;
    }
    let total: u64 = entries.iter().map(|e| workspace::entry_size(&target.source, e)).sum();
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} uploading {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(format!("{} files", entries.len()));
    Some(bar)
}

/// Everything decided once the lock is held and the state is known, before the upload.
struct Prepared {
    state: State,
    meta: Meta,
    plan: Option<(String, workspace::Plan)>,
    /// What the upload script runs after it: the whole end of the deploy, or the cache job.
    tail: String,
    prologue: String,
    meta_json: String,
    prune: Vec<String>,
    audit_json: String,
    gated: bool,
    /// What `<base>/.bst-cache/generation` says once this upload is in the pristine copy.
    generation: String,
    /// Manifest records to append on the server instead of a whole manifest (delta only).
    patch: Option<Vec<u8>>,
}

/// One deploy's fixed inputs: what every step after the lock needs and none of them changes.
struct Deploy<'a> {
    target: &'a Target,
    globals: &'a Globals,
    p: &'a Printer,
    held: Held,
    link: workspace::LinkMemo,
    build: bool,
    /// Restart and health-check after the switch, with the server's watchdog armed.
    gated: bool,
    /// Neither a build nor a gate: the upload script also switches, in one remote command.
    combined: bool,
    started: Instant,
    upload_started: Instant,
}

impl Deploy<'_> {
    /// A failed deploy: the release is marked failed (unless it is live), the staging dir goes,
    /// the lock is released, and the error says where `current` still points. When the cleanup
    /// cannot even be sent, the connection is gone and what the server did with the deploy is not
    /// known here (it may have finished and switched): see [`after_drop`].
    fn fail(&self, t: &mut dyn Transport, prep: &Prepared, e: anyhow::Error) -> anyhow::Result<(Box<dyn Transport>, String)> {
        let Deploy { target, p, ref held, started, .. } = *self;
        let mut meta = prep.meta.clone();
        let id = meta.id.clone();
        meta.status = Status::Failed;
        meta.error = Some(format!("{e:#}").lines().next().unwrap_or("").to_string());
        meta.duration_ms = Some(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
        let mut audit = Audit::new("deploy", &target.name, "failed");
        audit.release = Some(&id);
        audit.previous = prep.state.current.as_deref();
        audit.error = meta.error.clone();
        let script = crate::remote::abort_deploy(&target.base, &id, &serde_json::to_string(&meta)?, &audit.json(), &held.token);
        let interrupted = crate::error::exit_code_of(&e) == crate::error::code::INTERRUPTED;
        match t.run(&script) {
            Ok(o) if o.status == 0 => {}
            Ok(o) => p.warn(format!("cleanup after the failed deploy did not finish: {}", o.stderr_str())),
            Err(ce) if !interrupted => return self.after_drop(prep, &script, e, &ce),
            Err(ce) => p.warn(format!("cleanup after the failed deploy did not run: {ce:#}")),
        }
        let now = prep.state.current.as_deref().map_or("nothing (first deploy)".to_string(), |c| format!("releases/{c}"));
        Err(e.context(format!("deploy of {id} to {} failed; current still points at {now}", target.name)))
    }

    /// The deploy's connection is gone, possibly after the server had everything it needed to
    /// finish: the upload script switches on its own once the stream is complete. So nothing is
    /// said about `current` until it has been read again, over a new connection (a few tries),
    /// once this run's script there has ended. Switched: `Ok` with the new connection (a gated
    /// deploy's health gate runs over it, its watchdog armed meanwhile) and a note. Not switched:
    /// the cleanup runs over the new connection and the error names `current` as read. Not
    /// reachable, or still at work: [`Error::Unknown`], exit 6.
    fn after_drop(
        &self,
        prep: &Prepared,
        abort: &str,
        e: anyhow::Error,
        cleanup: &anyhow::Error,
    ) -> anyhow::Result<(Box<dyn Transport>, String)> {
        let Deploy { target, globals, p, ref held, .. } = *self;
        let id = prep.meta.id.as_str();
        let name = &target.name;
        let lost = format!("{e:#}");
        p.warn(format!("the connection to {} was lost ({lost}); reconnecting to read what the server did", target.host_label()));
        let unknown = |why: String| -> anyhow::Error {
            Error::Unknown(format!(
            "deploy of {id} to {name}: the connection was lost ({lost}), and {why}; the server may have switched current to {id}; run `bst list {name}` to see where current points"
        ))
        .into()
        };
        let mut last = format!("{cleanup:#}");
        let mut fresh = None;
        for pause in [0, 1, 2, 4] {
            std::thread::sleep(std::time::Duration::from_secs(pause));
            if crate::interrupt::seen() {
                break;
            }
            match transport::connect(&target.host, globals) {
                Ok(f) => {
                    fresh = Some(f);
                    break;
                }
                Err(ce) => last = format!("{ce:#}"),
            }
        }
        let Some(mut f) = fresh else {
            return Err(unknown(format!("could not reconnect ({last})")));
        };
        let out = match f.run(&crate::remote::after_drop(&target.base, &held.token, id, AFTER_DROP_WAIT_SECS)) {
            Ok(o) if o.status == 0 => o,
            Ok(o) => return Err(unknown(format!("the server could not be asked ({})", o.stderr_str()))),
            Err(ae) => return Err(unknown(format!("the server could not be asked ({ae:#})"))),
        };
        let text = out.stdout_str();
        let current = text
            .lines()
            .find_map(|l| l.strip_prefix("C "))
            .map(|c| c.trim_start_matches("releases/").to_string())
            .filter(|c| !c.is_empty());
        let ok = text
            .lines()
            .find_map(|l| l.strip_prefix("M "))
            .and_then(|m| serde_json::from_str::<Meta>(m).ok())
            .is_some_and(|m| m.status == Status::Ok);
        if current.as_deref() == Some(id) && ok {
            let note = format!("the connection was lost at the end of the deploy ({lost}), but the server finished the deploy and switched current to {id} (read after reconnecting)");
            p.warn(&note);
            return Ok((f, note));
        }
        if text.lines().any(|l| l == "RUNNING") {
            return Err(unknown(format!("after {AFTER_DROP_WAIT_SECS}s the server is still working on it")));
        }
        // Not switched, and nothing of this run is at work there any more: clean up from here.
        match f.run(abort) {
            Ok(o) if o.status == 0 => {}
            Ok(o) => p.warn(format!("cleanup after the failed deploy did not finish: {}", o.stderr_str())),
            Err(ce) => p.warn(format!("cleanup after the failed deploy did not run: {ce:#}")),
        }
        let now = match (&current, prep.state.current.as_deref()) {
            (None, None) => "still nothing (first deploy)".to_string(),
            (Some(c), Some(prev)) if c == prev => format!("still points at releases/{c}"),
            (Some(c), _) => format!("points at releases/{c}"),
            (None, Some(_)) => "is missing".to_string(),
        };
        Err(e.context(format!("deploy of {id} to {name} failed; current {now} (read from the server after reconnecting)")))
    }

    /// Refusals that need the server's state, the new id and meta, the delta plan, and the end of
    /// the deploy as script text.
    fn prepare(&self, state: State, remote: Remote<'_>, local: &[workspace::Record], git: &workspace::GitInfo) -> anyhow::Result<Prepared> {
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
        // Delta when the server kept a pristine copy and most files are unchanged.
        let decoded = match remote {
            Remote::Gz(gz) => decode_manifest(gz).unwrap_or_else(|e| {
                p.warn(format!("cannot read the server's manifest ({e:#}); sending the full snapshot"));
                None
            }),
            Remote::Known(recs, len) => Some((recs, Some(len))),
            Remote::None => None,
        };
        let (mut plan, remote_len) = match (&state.cache_generation, decoded) {
            (Some(generation), Some((remote, raw_len))) => (Some((generation.clone(), workspace::plan(local, &remote))), raw_len),
            _ => (None, None),
        };
        if p.verbose > 0 {
            if let Some((g, pl)) = &plan {
                eprintln!("delta against {g}: {} to send, {} to remove, of {}", pl.send.len(), pl.remove.len(), local.len());
            }
        }
        if plan.as_ref().is_some_and(|(_, pl)| pl.send.len() * 5 > local.len() * 4) {
            plan = None;
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
        })
    }

    /// After the upload: a stale pristine copy means one more (full) upload; then the build and
    /// the switch when the upload script did not already switch. Returns what was pruned, the
    /// warnings, and (files sent, files removed) for a delta.
    #[allow(clippy::type_complexity)]
    fn after_upload(
        &self,
        t: &mut dyn Transport,
        prep: &mut Prepared,
        entries: &[workspace::Entry],
        manifest: &Arc<Vec<u8>>,
        uploaded: Option<Uploaded>,
        phases: &mut Phases,
    ) -> anyhow::Result<(Vec<String>, Vec<String>, Option<(usize, usize)>)> {
        let Deploy { target, p, ref held, ref link, build, combined, started, upload_started, .. } = *self;
        let id = prep.meta.id.clone();
        let mut warnings = Vec::new();
        if p.verbose > 0 {
            if let Some((out, _)) = &uploaded {
                for v in out.stderr_str().lines().filter_map(|l| l.strip_prefix("V ")) {
                    eprintln!("server cache: {v}");
                }
            }
        }
        let (mut out, stats) = match uploaded {
            Some((out, _)) if prep.plan.is_some() && out.status == crate::remote::DELTA_STALE => {
                p.warn("the server's pristine copy changed under us; sending the full snapshot");
                prep.plan = None;
                self.upload_once(t, prep, entries, manifest, combined)?
            }
            Some(u) => u,
            None => self.upload_once(t, prep, entries, manifest, combined)?,
        };
        let delta_used = prep.plan.as_ref().map(|(_, pl)| (pl.send.len(), pl.remove.len()));
        let text = out.stdout_str();
        let mark = |tag: &str| text.lines().find_map(|l| l.strip_prefix(tag)?.strip_prefix(' ')?.parse::<u64>().ok());
        let switched = text.lines().any(|l| l == "SWITCHED");
        let uploaded = !combined || mark("TU").is_some();
        if !switched && (out.status != 0 || !uploaded) {
            let mut msg = if uploaded {
                format!("switching current to {id} failed: {}", out.stderr_str())
            } else {
                format!("upload failed: {}", out.stderr_str())
            };
            if let Some(fe) = &out.feed_error {
                msg.push_str(&format!(" (while sending: {fe:#})"));
            }
            return Err(Error::Failed(msg).into());
        }
        if let Some(fe) = out.feed_error.take() {
            if !switched {
                return Err(fe.context("upload failed"));
            }
        }
        for w in text.lines().filter_map(|l| l.strip_prefix("W ")) {
            p.warn(w);
            warnings.push(w.to_string());
        }
        p.timing(started, "upload command done");
        phases.switch_ms = match (mark("TU"), mark("TS")) {
            (Some(u), Some(s)) => s.saturating_sub(u),
            _ => 0,
        };
        phases.upload_ms = ms(upload_started).saturating_sub(phases.switch_ms);
        if p.verbose > 0 {
            match (link.framing, stats.level) {
                (workspace::Framing::Tar, _) => {
                    eprintln!("compression: none, bare tar (storing beat gzip on this link when last measured)")
                }
                (_, Some(0)) => eprintln!(
                    "compression: stored (measured against gzip level {GZIP_LEVEL}){}",
                    if link.kept() { "; later uploads to this host send bare tar" } else { "" }
                ),
                (_, Some(level)) => eprintln!("compression: gzip level {level} (measured against storing)"),
                (_, None) => {}
            }
        }
        let local_files = prep.meta.files;
        p.status(match delta_used {
            Some((sent, removed)) => format!(
                "uploaded {sent} changed files ({}), {removed} removed, of {local_files} in {:.1}s",
                human_bytes(stats.bytes),
                phases.upload_ms as f64 / 1000.0
            ),
            None => format!("uploaded {} files ({}) in {:.1}s", stats.files, human_bytes(stats.bytes), phases.upload_ms as f64 / 1000.0),
        });
        let meta = &mut prep.meta;
        if combined {
            if out.status != 0 {
                p.warn(format!("the release went live, but a step after the switch failed: {}", out.stderr_str()));
            }
            meta.status = Status::Ok;
            meta.duration_ms = Some(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
            let pruned = crate::remote::pruned_ids(&text);
            return Ok((pruned, warnings, delta_used));
        }

        if build {
            let steps: Vec<&str> = target.install.iter().chain(&target.build).map(String::as_str).collect();
            if steps.is_empty() {
                p.warn(format!("--build given but target `{}` has no `install` or `build` command", target.name));
            } else {
                p.status(format!("building in {}/releases/{id} (log: logs/{id}.log)", target.base));
                let script = crate::remote::build(&target.base, &id, &target.name, &steps);
                let build_started = Instant::now();
                let rc = t.run_streaming(&script, &mut |_: Stream, data: &[u8]| p.passthrough(data))?;
                phases.build_ms = Some(ms(build_started));
                if rc != 0 {
                    return Err(Error::Failed(format!("build failed with exit code {rc} (log: {}/logs/{id}.log)", target.base)).into());
                }
            }
        }

        meta.status = Status::Ok;
        meta.duration_ms = Some(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
        let mut script = crate::remote::finish_deploy(
            &target.base,
            &id,
            &serde_json::to_string(&meta)?,
            if prep.gated { &[] } else { &prep.prune },
            &prep.audit_json,
            &held.token,
            prep.gated,
        );
        if prep.gated {
            // Armed before the switch, in the same script: from the moment `current` moves, the
            // way back no longer depends on this client staying alive.
            let mut failed = meta.clone();
            failed.status = Status::Failed;
            let previous = prep.state.current.as_deref();
            failed.error = Some(match previous {
                Some(prev) => format!("not confirmed healthy; the server's watchdog switched back to {prev}"),
                None => "not confirmed healthy, and there was no earlier release to switch back to".to_string(),
            });
            let arm = watchdog::Arm {
                token: &held.token,
                secs: watchdog::deadline_secs(target, 1),
                restore: previous,
                trial: Some((&id, serde_json::to_string(&failed)?)),
                audit_members: watchdog::audit_members(&lock::who(), &target.name, previous, Some(&id)),
                restart: watchdog::restart_script(target),
            };
            script = crate::watchdog::arm(&target.base, &arm) + &script;
        }
        let switch_started = Instant::now();
        let out = {
            let _critical = crate::interrupt::Critical::enter();
            t.run(&script)?
        };
        phases.switch_ms = ms(switch_started);
        let text = out.stdout_str();
        if out.status != 0 || !text.lines().any(|l| l == "SWITCHED") {
            return Err(Error::Failed(format!("switching current to {id} failed: {}", out.stderr_str())).into());
        }
        for w in text.lines().filter_map(|l| l.strip_prefix("W ")) {
            p.warn(w);
            warnings.push(w.to_string());
        }
        Ok((crate::remote::pruned_ids(&text), warnings, delta_used))
    }

    /// An upload in a remote command of its own (the retry after a stale pristine copy), followed
    /// by `tail` in the same script (`critical` when `tail` switches).
    fn upload_once(
        &self,
        t: &mut dyn Transport,
        prep: &Prepared,
        entries: &[workspace::Entry],
        manifest: &Arc<Vec<u8>>,
        critical: bool,
    ) -> anyhow::Result<Uploaded> {
        let Deploy { target, p, ref link, .. } = *self;
        let mut stats = workspace::Stats::default();
        let (script, send, extra) = upload_parts(target, prep, entries, manifest, link.framing);
        let script = format!("{}{script}{}", prep.prologue, prep.tail);
        let bar = progress_bar(p, target, &send);
        let mut guard = None;
        let out = t.run_with_input(&script, &mut |w| {
            stats = send_snapshot(target, link, &send, &extra, w, bar.as_ref(), critical.then_some(&mut guard))?;
            Ok(())
        })?;
        drop(guard);
        if let Some(b) = &bar {
            b.finish_and_clear();
        }
        Ok((out, stats))
    }
}

pub fn run(target: &Target, globals: &Globals, p: &Printer, build: bool, restart: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    let rules = listing_rules(target);
    let manifests = workspace::ManifestCache::for_target(&format!("{}:{}", target.host_label(), target.base));
    let link = workspace::LinkMemo::for_host(&target.host_label(), GZIP_LEVEL);
    // Refused here, before anything touches the server; later listing errors still leave it
    // unchanged (the lock is released), but may have created an empty base on a first deploy.
    workspace::check_source(&target.source, &target.exclude)?;
    workspace::check_in_git(&target.source, &rules)?;
    // The listing and hashing, git's view of the workspace and the cached manifest run while
    // the connection is made and the remote command takes the lock and reports the state
    // (at 50,000 files each is tens to hundreds of milliseconds, as is a round trip): they
    // are waited for only where first needed.
    let mut scan = {
        let (source, trace) = (target.source.clone(), p.verbose > 1);
        Background::spawn(move || {
            let mut hashes = {
                let source = source.clone();
                Background::spawn(move || workspace::HashCache::open(&source))
            };
            let workspace::Listing { entries, untracked, withheld, git } = workspace::collect(&source, &rules)?;
            crate::report::timing(trace, started, format_args!("listed {} files", entries.len()));
            let mut hashes = hashes.take().expect("taken once");
            let local = workspace::local_manifest(&source, &entries, &mut hashes);
            let encoded = Arc::new(workspace::encode(&local));
            let ms = ms(started);
            crate::report::timing(trace, started, "hashed (cache hits and changed files)");
            // Written while the deploy goes on; `Listed` holds the writer until the end.
            let saving = hashes
                .pending(&local, &encoded)
                .map(|(file, data)| Background::spawn(move || workspace::cache::write_atomic(&file, &data)));
            anyhow::Ok(Listed { entries, local, encoded, ms, saving: saving.into_iter().collect(), untracked, withheld, git })
        })
    };
    let mut git = {
        let (source, trace) = (target.source.clone(), p.verbose > 1);
        Background::spawn(move || {
            let info = workspace::git_info(&source);
            crate::report::timing(trace, started, "git commit, branch and status read");
            info
        })
    };
    let mut preloaded = {
        let manifests = manifests.clone();
        Background::spawn(move || manifests.load())
    };
    let mut t = transport::connect(&target.host, globals)?;
    p.timing(started, "connected");
    let owner = lock::new_owner("deploy");
    let held = Held { token: owner.token.clone() };
    let known = manifests.generation();
    let session = crate::remote::deploy_session(
        &target.base,
        &serde_json::to_string(&owner)?,
        &owner.token,
        known.as_deref().unwrap_or(""),
        &target.forbidden_paths,
    );
    let gated = restart && !target.restart.is_empty();
    // Without a build or a health gate nothing needs the client between the upload and the
    // switch: the upload script also switches (one remote command for the whole deploy).
    let combined = !build && !gated;
    let mut broke = false;
    let mut listed: Option<Listed> = None;
    let d = Deploy { target, globals, p, held, link, build, gated, combined, started, upload_started: Instant::now() };
    let mut attempts = 0;
    let (prep, first) = loop {
        attempts += 1;
        let mut prep: Option<Prepared> = None;
        let mut refusal: Option<anyhow::Error> = None;
        let mut head_text = String::new();
        let mut stats = workspace::Stats::default();
        let mut bar = None;
        let mut guard = None;
        // One remote command: lock + state + manifest, then (same command) upload and switch.
        let r = t.converse(&session, &mut |i| {
            let head = i.read_until(&|b| crate::remote::split_session_head(b).is_some())?;
            let Some((listing, remote_manifest)) = crate::remote::split_session_head(&head) else {
                head_text = String::from_utf8_lossy(&head).into_owned();
                return Ok(());
            };
            p.timing(started, "server state received (lock held)");
            let listing = String::from_utf8_lossy(listing);
            let state = release::parse_state(&listing);
            super::tell_watchdog(p, &state);
            // The server still holds the manifest this client left there: no need to send it.
            let same: Option<usize> = listing.lines().find_map(|l| l.strip_prefix("MSAME ")?.parse().ok());
            let cached = match (same, &state.cache_generation) {
                (Some(_), Some(g)) => preloaded.take().flatten().or_else(|| manifests.load()).filter(|(cg, _)| cg == g),
                _ => None,
            };
            let remote = match (remote_manifest, cached, same) {
                (Some(gz), _, _) => Remote::Gz(gz),
                (None, Some((_, recs)), Some(len)) => Remote::Known(recs, len),
                _ => Remote::None,
            };
            if p.verbose > 0 {
                match &remote {
                    Remote::Gz(gz) => eprintln!("server manifest: received ({} bytes gzip'd)", gz.len()),
                    Remote::Known(..) => eprintln!("server manifest: as this client left it, not sent"),
                    Remote::None => eprintln!("server manifest: none (full upload)"),
                }
            }
            let l = match &mut listed {
                Some(l) => l,
                None => match scan.take().expect("the listing is taken once") {
                    Ok(l) => {
                        announce(target, p, &l);
                        listed.insert(l)
                    }
                    Err(e) => {
                        // Closing stdin without BST-GO: the script unlocks and exits.
                        refusal = Some(e);
                        return Ok(());
                    }
                },
            };
            // Untracked files that ship make the release differ from the commit as surely as
            // an edit does.
            let mut git = git.get().clone();
            git.dirty = git.dirty.map(|d| d || l.untracked > 0);
            let pr = match d.prepare(state, remote, &l.local, &git) {
                Ok(pr) => pr,
                Err(e) => {
                    refusal = Some(e);
                    return Ok(());
                }
            };
            let (script, send, extra) = upload_parts(target, &pr, &l.entries, &l.encoded, d.link.framing);
            let mut continuation = format!("{}{script}{}", pr.prologue, pr.tail);
            if !continuation.ends_with('\n') {
                continuation.push('\n');
            }
            show_continuation(p, &continuation);
            p.timing(started, "deploy prepared, upload starts");
            prep = Some(pr);
            i.write_all(continuation.as_bytes())?;
            i.write_all(b"BST-GO\n")?;
            bar = progress_bar(p, target, &send);
            stats = send_snapshot(target, &d.link, &send, &extra, i.as_write(), bar.as_ref(), combined.then_some(&mut guard))?;
            Ok(())
        });
        drop(guard);
        if let Some(b) = &bar {
            b.finish_and_clear();
        }
        match (r, prep) {
            (Ok(out), Some(pr)) => break (pr, Ok((out, stats))),
            // The server may go on without us: what it did is found out below.
            (Err(e), Some(pr)) => break (pr, Err(e)),
            (Err(e), None) => {
                // The server may hold the lock for us with nobody reading: release it.
                let _ = t.run(&crate::remote::unlock(&target.base, &d.held.token));
                return Err(e);
            }
            (Ok(out), None) => {
                if let Some(e) = refusal {
                    return Err(e);
                }
                if out.status != 0 {
                    return Err(lock::cannot_prepare(target, &out.stderr_str()));
                }
                lock::not_locked(&mut *t, target, &head_text, &mut broke, p)?;
                if attempts >= lock::ATTEMPTS {
                    return Err(Error::Locked { target: target.name.clone(), holder: "another run".into() }.into());
                }
            }
        }
    };
    let mut prep = prep;
    let Listed { entries, encoded, ms: snapshot_ms, mut saving, withheld, .. } = listed.expect("a prepared deploy has its listing");
    // What the server's manifest will say (by content), for the next deploy from here.
    let generation = prep.generation.clone();
    saving.push({
        let encoded = Arc::clone(&encoded);
        Background::spawn(move || manifests.save(&generation, &encoded))
    });
    let mut phases = Phases { snapshot_ms, ..Phases::default() };
    let done = match first {
        Ok(uploaded) => d.after_upload(&mut *t, &mut prep, &entries, &encoded, Some(uploaded), &mut phases),
        Err(e) => Err(e),
    };
    let done = match done {
        Ok(d) => Ok((d, t)),
        // Ok: the connection dropped, and over a new one the server says it switched.
        Err(e) => d.fail(&mut *t, &prep, e).map(|(fresh, note)| {
            let delta_used = prep.plan.as_ref().map(|(_, pl)| (pl.send.len(), pl.remove.len()));
            ((Vec::new(), vec![note], delta_used), fresh)
        }),
    };
    match done {
        Ok(((mut pruned, mut warnings, delta_used), mut t)) => {
            let withheld: Vec<String> = withheld.into_iter().map(|(p, _)| p).collect();
            warnings.extend(withheld.iter().map(|w| format!("not shipped (looks like a secret): {w}")));
            let id = prep.meta.id.clone();
            let interrupted = crate::interrupt::check().is_err();
            if interrupted && !gated {
                return Err(anyhow::Error::from(Error::Interrupted)
                    .context(format!("interrupted during the switch, which completed: current -> releases/{id}")));
            }
            if gated {
                // Pruned only now: only now is it known which releases are no longer needed
                // to switch back to.
                let trial =
                    Trial { id: &prep.meta.id, previous: prep.state.current.as_deref(), held: &d.held, interrupted, prune: &prep.prune };
                pruned = health_gate(&mut *t, target, globals, p, &trial)?;
            }
            let meta = &prep.meta;
            let sent = t.bytes_sent();
            p.status(format!(
                "deployed {} to {} in {:.1}s ({} files, {}, {} sent; snapshot {} ms, upload {} ms{}, switch {} ms){}",
                id,
                target.name,
                started.elapsed().as_secs_f64(),
                meta.files,
                human_bytes(meta.bytes),
                human_bytes(sent),
                phases.snapshot_ms,
                phases.upload_ms,
                phases.build_ms.map_or(String::new(), |b| format!(", build {b} ms")),
                phases.switch_ms,
                if pruned.is_empty() { String::new() } else { format!("; pruned {}", pruned.join(", ")) }
            ));
            p.out(format!("{}: current -> releases/{id}", target.name));
            p.timing(started, "done");
            p.json(&Summary {
                schema_version: 1,
                target: &target.name,
                release_id: &id,
                previous: prep.state.current.as_deref(),
                status: "ok",
                build,
                files: meta.files,
                bytes: meta.bytes,
                bytes_sent: sent,
                duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                pruned,
                warnings,
                withheld,
                phases_ms: phases,
                delta: delta_used.is_some(),
                files_sent: delta_used.map_or(meta.files, |(sent, _)| sent as u64),
                stream: if d.link.framing == workspace::Framing::Tar { "tar" } else { "tar.gz" },
            });
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// The workspace as it ships: entries to stream and their manifest.
struct Listed {
    entries: Vec<workspace::Entry>,
    local: Vec<workspace::Record>,
    /// `local`, encoded once: both caches and the upload's manifest share it.
    encoded: Arc<Vec<u8>>,
    /// How long listing and hashing took (the summary's snapshot phase).
    ms: u64,
    /// Cache files being written.
    saving: Vec<Background<()>>,
    /// Shipped files git does not track.
    untracked: usize,
    /// Held back as secrets (named to the user).
    withheld: Vec<(String, &'static str)>,
    /// Listed from git (else a walk).
    git: bool,
}

/// What never ships besides git's own ignore rules: the shared paths (the server's copy is
/// linked in), and bst's byproducts inside the workspace: a local target's base (the demo's
/// `.bst-demo/`) and the reports folder. Shipping those once made a deploy send 1,530 files
/// instead of 303, and every later one fresh reports.
fn listing_rules(target: &Target) -> workspace::Rules {
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

/// What is about to ship, said before the bytes move, so a wrong folder is obvious: the root,
/// the count and size, with `-v` (or for a folder git does not vouch for) the largest
/// folders; and every file held back as a secret, by name.
fn announce(target: &Target, p: &Printer, l: &Listed) {
    let bytes: u64 = l.entries.iter().map(|e| workspace::entry_size(&target.source, e)).sum();
    p.status(format!(
        "deploying {} ({} files, {}{}) to {} ({}:{})",
        target.source.display(),
        l.entries.len(),
        human_bytes(bytes),
        if l.git { String::new() } else { ", not a git work tree".to_string() },
        target.name,
        target.host_label(),
        target.base
    ));
    if p.verbose > 0 || !l.git {
        for (dir, files, size) in largest_folders(&target.source, &l.entries, 10) {
            p.status(format!("  {:>10}  {files:>6} file{}  {dir}", human_bytes(size), if files == 1 { " " } else { "s" }));
        }
    }
    for (path, why) in &l.withheld {
        p.warn(format!("not shipping {path}: {why}; to ship it, add it to `include`"));
    }
}

/// Folders by the bytes under them (all depths below), as `du` counts, for the first two
/// levels (`apps/`, `apps/web/`): deep enough to tell a monorepo's apps apart, shallow enough
/// that ten lines cover it. Files at the root count as `(top level)`.
fn largest_folders(source: &std::path::Path, entries: &[workspace::Entry], n: usize) -> Vec<(String, usize, u64)> {
    let mut by: std::collections::BTreeMap<String, (usize, u64)> = std::collections::BTreeMap::new();
    for e in entries {
        let size = workspace::entry_size(source, e);
        let dirs: Vec<&str> = e.path.split('/').collect();
        let dirs = &dirs[..dirs.len() - 1];
        let mut keys = vec![];
        if dirs.is_empty() {
            keys.push("(top level)".to_string());
        }
        for depth in 1..=dirs.len().min(2) {
            keys.push(format!("{}/", dirs[..depth].join("/")));
        }
        for k in keys {
            let slot = by.entry(k).or_default();
            slot.0 += 1;
            slot.1 += size;
        }
    }
    let mut v: Vec<(String, usize, u64)> = by.into_iter().map(|(k, (f, b))| (k, f, b)).collect();
    v.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
    v.truncate(n);
    v
}

/// Work started on a thread of its own and waited for where its result is first needed, or
/// when dropped: no thread outlives the deploy (a hash cache is never left half written).
struct Background<T> {
    handle: Option<std::thread::JoinHandle<T>>,
    value: Option<T>,
}

impl<T: Send + 'static> Background<T> {
    fn spawn(f: impl FnOnce() -> T + Send + 'static) -> Self {
        Background { handle: Some(std::thread::spawn(f)), value: None }
    }

    fn wait(&mut self) {
        if let Some(h) = self.handle.take() {
            self.value = Some(h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)));
        }
    }

    fn get(&mut self) -> &T {
        self.wait();
        self.value.as_ref().expect("a background result is kept until taken")
    }

    /// The result, once; `None` after that.
    fn take(&mut self) -> Option<T> {
        self.wait();
        self.value.take()
    }
}

impl<T> Drop for Background<T> {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn show_continuation(p: &Printer, script: &str) {
    if p.verbose > 0 {
        crate::transport::show_command(p.verbose, "same command, after BST-GO", script);
    }
}

/// How long a new connection waits for the dropped one's script to finish on the server (it
/// may still be unpacking a large upload).
const AFTER_DROP_WAIT_SECS: u64 = 60;

/// What the client knows of the server's manifest.
enum Remote<'a> {
    /// Sent by the server, gzip'd.
    Gz(&'a [u8]),
    /// The one this client left there (the server said its generation is unchanged), and the
    /// size of the server's copy.
    Known(Vec<workspace::Record>, usize),
    None,
}

type Uploaded = (crate::transport::Output, workspace::Stats);

/// The item of `sorted` (by path: entries and manifests are) at `path`.
fn find<'a, T>(sorted: &'a [T], path: &str, key: impl Fn(&T) -> &String) -> Option<&'a T> {
    sorted.binary_search_by(|x| key(x).as_str().cmp(path)).ok().map(|i| &sorted[i])
}

/// The records and the manifest's raw size (which grows with every appended patch).
fn decode_manifest(gz: &[u8]) -> anyhow::Result<Option<(Vec<workspace::Record>, Option<usize>)>> {
    use std::io::Read;
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(gz).read_to_end(&mut raw)?;
    Ok(workspace::decode(&raw).map(|r| (r, Some(raw.len()))))
}

/// The upload script for a full snapshot or (with a plan) a delta, the entries to send and
/// bst's own files that travel with them.
fn upload_parts<'a>(
    target: &Target,
    prep: &Prepared,
    entries: &'a [workspace::Entry],
    manifest: &Arc<Vec<u8>>,
    framing: workspace::Framing,
) -> (String, std::borrow::Cow<'a, [workspace::Entry]>, Vec<workspace::Extra>) {
    let id = &prep.meta.id;
    let file = |name: &str, data: Arc<Vec<u8>>| (format!("{}/{name}", layout::UPLOAD_DIR), data);
    let complete = (layout::COMPLETE_MARKER.to_string(), Arc::default());
    match &prep.plan {
        None => (
            crate::remote::upload(&target.base, id, &target.shared_files, &target.shared_dirs, &prep.meta_json, framing),
            std::borrow::Cow::Borrowed(entries),
            vec![file("manifest", Arc::clone(manifest)), complete],
        ),
        Some((generation, pl)) => {
            let manifest = match &prep.patch {
                Some(patch) => file("manifest-patch", Arc::new(patch.clone())),
                None => file("manifest", Arc::clone(manifest)),
            };
            (
                crate::remote::upload_delta(
                    &target.base,
                    id,
                    generation,
                    &target.shared_files,
                    &target.shared_dirs,
                    &prep.meta_json,
                    framing,
                ),
                std::borrow::Cow::Owned(pl.send.iter().filter_map(|p| find(entries, p, |e| &e.path)).cloned().collect()),
                vec![manifest, file("removed", Arc::new(workspace::encode_paths(&pl.remove))), complete],
            )
        }
    }
}

/// Streams the upload with the bar ticking, and keeps what it measured of the link. With
/// `critical`, Ctrl-C is held back from the moment the last byte is out: the script is then
/// completing the deploy, and must not be reported failed.
fn send_snapshot(
    target: &Target,
    link: &workspace::LinkMemo,
    send: &[workspace::Entry],
    extra: &[workspace::Extra],
    w: &mut dyn std::io::Write,
    bar: Option<&indicatif::ProgressBar>,
    critical: Option<&mut Option<crate::interrupt::Critical>>,
) -> anyhow::Result<workspace::Stats> {
    let tick = |_: &workspace::Entry, n: u64| {
        if let Some(b) = bar {
            b.inc(n);
        }
    };
    let stats = workspace::stream_tar(&target.source, send, extra, w, link.framing, &tick)?;
    w.flush()?;
    link.record(&stats);
    if let Some(guard) = critical {
        *guard = Some(crate::interrupt::Critical::enter());
    }
    Ok(stats)
}
