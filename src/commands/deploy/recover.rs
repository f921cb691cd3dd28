//! A deploy that failed: mark, clean up, unlock, and say where `current` is; after a
//! dropped connection, read that over a new one before saying anything.

use super::{Deploy, Prepared};
use crate::commands::Audit;
use crate::error::Error;
use crate::release::{Meta, Status};
use crate::transport::{self, Transport};

/// How long a new connection waits for the dropped one's script to finish on the server (it
/// may still be unpacking a large upload).
const AFTER_DROP_WAIT_SECS: u64 = 60;

impl Deploy<'_> {
    /// A failed deploy: the release is marked failed (unless it is live), the staging dir goes,
    /// the lock is released, and the error says where `current` still points. When the cleanup
    /// cannot even be sent, the connection is gone and what the server did with the deploy is not
    /// known here (it may have finished and switched): see [`after_drop`].
    pub(super) fn fail(&self, t: &mut dyn Transport, prep: &Prepared, e: anyhow::Error) -> anyhow::Result<(Box<dyn Transport>, String)> {
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
    pub(super) fn after_drop(
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
}
