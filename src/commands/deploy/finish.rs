//! After the upload: the build, the switch (unless the upload script made it), prune.

use std::sync::Arc;
use std::time::Instant;

use super::{ms, Compression, Deploy, Phases, Prepared, Uploaded};
use crate::commands::lock;
use crate::error::Error;
use crate::release::Status;
use crate::remote::watchdog;
use crate::remote::Reply;
use crate::report::human_bytes;
use crate::transport::{Stream, Transport};
use crate::workspace;

impl Deploy<'_> {
    /// After the upload: a stale pristine copy means one more (full) upload; then the build and
    /// the switch when the upload script did not already switch. Returns what was pruned, the
    /// warnings, and (files sent, files removed) for a delta.
    #[allow(clippy::type_complexity)]
    pub(super) fn after_upload(
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
                    p.verbose(format!("server cache: {v}"));
                }
            }
        }
        let (mut out, stats) = match uploaded {
            Some((out, _)) if prep.plan.is_some() && out.status == crate::remote::DELTA_STALE => {
                // A sibling's copy was an offer: not taking it up is no news for the operator.
                match prep.seed.take() {
                    Some(s) => p.verbose(format!(
                        "sibling target {}'s pristine copy could not be used after all; sending the full snapshot",
                        s.name
                    )),
                    None => p.warn("the server's pristine copy changed under us; sending the full snapshot"),
                }
                prep.plan = None;
                self.upload_once(t, prep, entries, manifest, combined)?
            }
            Some(u) => u,
            None => self.upload_once(t, prep, entries, manifest, combined)?,
        };
        let delta_used = prep.plan.as_ref().map(|(_, pl)| (pl.send.len(), pl.remove.len()));
        let reply = Reply::parse(&out.stdout_str());
        let switched = reply.switched;
        let uploaded = !combined || reply.mark("TU").is_some();
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
        for w in &reply.warnings {
            p.warn(w);
            warnings.push(w.clone());
        }
        p.timing(started, "upload command done");
        phases.switch_ms = match (reply.mark("TU"), reply.mark("TS")) {
            (Some(u), Some(s)) => s.saturating_sub(u),
            _ => 0,
        };
        phases.upload_ms = ms(upload_started).saturating_sub(phases.switch_ms);
        self.compression.set(Compression::of(&stats));
        if p.verbose > 0 {
            p.verbose(compression_line(link, &stats));
        }
        if let (true, Some(pacing)) = (p.verbose > 1, &stats.pacing) {
            p.verbose(format!("pacing: {pacing}"));
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
            return Ok((reply.pruned, warnings, delta_used));
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
            script = crate::remote::watchdog::arm(&target.base, &arm) + &script;
        }
        let switch_started = Instant::now();
        let out = {
            let _critical = crate::interrupt::Critical::enter();
            t.run(&script)?
        };
        phases.switch_ms = ms(switch_started);
        let reply = Reply::parse(&out.stdout_str());
        if out.status != 0 || !reply.switched {
            return Err(Error::Failed(format!("switching current to {id} failed: {}", out.stderr_str())).into());
        }
        for w in &reply.warnings {
            p.warn(w);
            warnings.push(w.clone());
        }
        Ok((reply.pruned, warnings, delta_used))
    }
}

/// `-v`'s account of the compression: what was chosen, and what the link measured.
fn compression_line(link: &workspace::LinkMemo, stats: &workspace::Stats) -> String {
    let rate = match stats.link_rate {
        Some(r) => format!("the link drained {}/s", human_bytes(r as u64)),
        None => "the link kept up with everything sent".to_string(),
    };
    let switches = match stats.switches {
        0 => String::new(),
        1 => ", 1 level change".to_string(),
        n => format!(", {n} level changes"),
    };
    match (link.framing, stats.level) {
        (workspace::Framing::Tar, _) if stats.gzip_would_win => {
            format!("compression: none, bare tar; {rate}, where gzip would have been faster: the next upload compresses")
        }
        (workspace::Framing::Tar, _) => format!("compression: none, bare tar (storing won on this link when last measured); {rate}"),
        (_, level) => {
            let next = stats.storing_may_win && link.kept() && stats.bytes >= workspace::link_memo::MEASURED_BYTES;
            let what = if level == 0 { "stored".to_string() } else { format!("gzip level {level}") };
            format!("compression: {what}, {rate}{switches}{}", if next { "; later uploads to this host send bare tar" } else { "" })
        }
    }
}
