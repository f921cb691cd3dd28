//! `bst deploy`: snapshot → one streamed upload → optional build → atomic switch → prune.
//! Any failure leaves `current` where it was, marks the new release failed, removes the
//! staging dir and releases the lock.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::gate::{health_gate, Trial};
use super::lock::{self, Held};
use crate::error::Error;
use crate::release::{self, Meta, State};
use crate::report::{human_bytes, Printer};
use crate::settings::{Globals, Sibling, Target};
use crate::transport;
use crate::workspace;

mod finish;
mod plan;
mod recover;
mod upload;

use plan::listing_rules;
use upload::{announce, progress_bar, send_snapshot, show_continuation, upload_parts, Background};

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
    /// The sibling target whose pristine copy this first deploy started from, if any.
    seeded_from: Option<&'a str>,
    compression: Compression,
    /// Bytes the server's TCP acknowledged over the whole connection, handshake and SSH
    /// framing included: what crossed the link. Null where the transport cannot tell
    /// (not Linux, a jump host, local).
    wire_bytes: Option<u64>,
}

/// What the upload chose and measured, for `--json` and benchmarks.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub(super) struct Compression {
    /// The gzip level that carried most of the snapshot (0: stored, or bare tar).
    level: u32,
    /// Level changes during the upload, as the link or the content changed.
    switches: u32,
    /// The link's drain rate, bytes per second, when it was the bottleneck at some point;
    /// null when the link kept up with everything sent.
    link_bytes_per_sec: Option<f64>,
    /// The snapshot stream's bytes as written to the connection (the rest of `bytes_sent`
    /// is scripts and bst's own files).
    stream_bytes: u64,
}

impl Compression {
    pub(super) fn of(stats: &workspace::Stats) -> Compression {
        Compression {
            level: stats.level,
            switches: stats.switches,
            link_bytes_per_sec: stats.link_rate.map(f64::round),
            stream_bytes: stats.wire,
        }
    }
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
    /// The sibling whose pristine copy the delta starts from (this target had none).
    seed: Option<Sibling>,
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
    /// What the upload that went through chose and measured (set once it is done).
    compression: std::cell::Cell<Compression>,
}

/// `siblings` finds the other targets on the same server and login (`settings::siblings`);
/// a first deploy may start from one's pristine copy. Called only for a first deploy from
/// this client: it resolves every other target, ssh config included.
pub fn run(
    target: &Target,
    siblings: &dyn Fn() -> Vec<Sibling>,
    globals: &Globals,
    p: &Printer,
    build: bool,
    restart: bool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let rules = listing_rules(target);
    let manifests = workspace::ManifestCache::for_target(&format!("{}:{}", target.host_label(), target.base));
    let link = workspace::LinkMemo::for_host(&target.host_label());
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
            let normalized = workspace::normalized(&entries, &local);
            let ms = ms(started);
            crate::report::timing(trace, started, "hashed (cache hits and changed files)");
            // Written while the deploy goes on; `Listed` holds the writer until the end.
            let saving = hashes
                .pending(&local, &encoded)
                .map(|(file, data)| Background::spawn(move || workspace::cache::write_atomic(&file, &data)));
            anyhow::Ok(Listed { entries, local, encoded, ms, saving: saving.into_iter().collect(), untracked, withheld, git, normalized })
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
    // Only a deploy without a pristine copy of its own can use a sibling's, and a client that
    // has deployed here (it kept the manifest it left) will almost surely find one: the
    // siblings' part of the script travels only with a first deploy from this client.
    let mut siblings = if known.is_none() { siblings() } else { Vec::new() };
    // Where storing beats compression (loopback, a fast LAN), the link carries the snapshot
    // about as fast as the server copies a sibling's tree, twice (its pristine copy and the
    // release): at 50,000 files seeding took 10 s where the full upload took 6.
    if link.framing == workspace::Framing::Tar && !siblings.is_empty() {
        p.verbose("not seeding from a sibling target: this link carries a full upload about as fast as the server copies one");
        siblings.clear();
    }
    // A sibling's manifest this client left there need not travel either.
    let sibling_manifests: Vec<workspace::ManifestCache> =
        siblings.iter().map(|s| workspace::ManifestCache::for_target(&format!("{}:{}", target.host_label(), s.base))).collect();
    let sibling_known: Vec<(String, String)> =
        siblings.iter().zip(&sibling_manifests).map(|(s, m)| (s.base.clone(), m.generation().unwrap_or_default())).collect();
    let session = crate::remote::deploy_session(
        &target.base,
        &serde_json::to_string(&owner)?,
        &owner.token,
        known.as_deref().unwrap_or(""),
        &target.forbidden_paths,
        &sibling_known,
    );
    let gated = restart && !target.restart.is_empty();
    // Without a build or a health gate nothing needs the client between the upload and the
    // switch: the upload script also switches (one remote command for the whole deploy).
    let combined = !build && !gated;
    let mut broke = false;
    let mut listed: Option<Listed> = None;
    let d = Deploy {
        target,
        globals,
        p,
        held,
        link,
        build,
        gated,
        combined,
        started,
        upload_started: Instant::now(),
        compression: Default::default(),
    };
    let mut attempts = 0;
    let (prep, first) = loop {
        attempts += 1;
        let mut prep: Option<Prepared> = None;
        let mut refusal: Option<anyhow::Error> = None;
        let mut head_text = String::new();
        let mut stats = workspace::Stats::default();
        let mut bar = None;
        let mut guard = None;
        let acked = t.acked_meter();
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
            // No pristine copy of its own: the server offers a sibling's, whose manifest is
            // the one that follows (`siblings.sh`).
            let report = crate::remote::sibling_report(&listing);
            for (i, why) in &report.passed {
                if let Some(s) = siblings.get(*i) {
                    p.verbose(format!("sibling target {} ({}) not used: {why}", s.name, s.base));
                }
            }
            let seed = report.offered.and_then(|(i, g)| Some((siblings.get(i)?, &sibling_manifests[i], g)));
            let base_generation = seed.as_ref().map(|(_, _, g)| g).or(state.cache_generation.as_ref());
            // The server still holds the manifest this client left there: no need to send it.
            let same: Option<usize> = listing.lines().find_map(|l| l.strip_prefix("MSAME ")?.parse().ok());
            let cached = match (same, base_generation, &seed) {
                (Some(_), Some(g), None) => preloaded.take().flatten().or_else(|| manifests.load()).filter(|(cg, _)| cg == g),
                (Some(_), Some(g), Some((_, m, _))) => m.load().filter(|(cg, _)| cg == g),
                _ => None,
            };
            let remote = match (remote_manifest, cached, same) {
                (Some(gz), _, _) => Remote::Gz(gz),
                (None, Some((_, recs)), Some(len)) => Remote::Known(recs, len),
                _ => Remote::None,
            };
            if p.verbose > 0 {
                let whose = seed.as_ref().map_or("server manifest".to_string(), |(s, _, _)| {
                    format!("server manifest: none; sibling target {}'s manifest", s.name)
                });
                match &remote {
                    Remote::Gz(gz) => p.verbose(format!("{whose}: received ({} bytes gzip'd)", gz.len())),
                    Remote::Known(..) => p.verbose(format!("{whose}: as this client left it, not sent")),
                    Remote::None if seed.is_some() => p.verbose(format!("{whose}: not received (full upload)")),
                    Remote::None => p.verbose("server manifest: none (full upload)"),
                }
            }
            let seed = seed.map(|(s, _, g)| (s.clone(), g));
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
            let pr = match d.prepare(state, remote, seed, &l.local, &git) {
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
            stats = send_snapshot(target, &d.link, &send, &extra, i.as_write(), &*acked, bar.as_ref(), combined.then_some(&mut guard))?;
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
            if let Some((requests, answers)) = t.round_trips() {
                // What a slow link charges for, beyond the bytes: each costs one RTT.
                p.timing(
                    started,
                    format!(
                        "round trips after the handshake: {} ({requests} for channels and commands, {answers} waiting for an answer)",
                        requests + answers
                    ),
                );
            }
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
                seeded_from: prep.seed.as_ref().map(|s| s.name.as_str()),
                compression: d.compression.get(),
                wire_bytes: (t.acked_meter())(),
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
    /// Files that ship with git's line-ending conversion applied.
    normalized: usize,
}

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
