//! The workspace as it ships and the upload itself: the listing in the background, the
//! progress bar, the tar stream and its extra files, and a second full upload when the
//! server's pristine copy went stale.

use std::sync::Arc;

use super::plan::find;
use super::{Deploy, Listed, Prepared, Uploaded};
use crate::layout;
use crate::report::{human_bytes, Printer};
use crate::settings::Target;
use crate::transport::Transport;
use crate::workspace;

impl Deploy<'_> {
    /// An upload in a remote command of its own (the retry after a stale pristine copy), followed
    /// by `tail` in the same script (`critical` when `tail` switches).
    pub(super) fn upload_once(
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
        let acked = t.acked_meter();
        let out = t.run_with_input(&script, &mut |w| {
            stats = send_snapshot(target, link, &send, &extra, w, &*acked, bar.as_ref(), critical.then_some(&mut guard))?;
            Ok(())
        })?;
        drop(guard);
        if let Some(b) = &bar {
            b.finish_and_clear();
        }
        Ok((out, stats))
    }
}

/// A bar for a human at a terminal; CI and pipes get the plain summary line only.
pub(super) fn progress_bar(p: &Printer, target: &Target, entries: &[workspace::Entry]) -> Option<indicatif::ProgressBar> {
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

/// What is about to ship, said before the bytes move, so a wrong folder is obvious: the root,
/// the count and size, with `-v` (or for a folder git does not vouch for) the largest
/// folders; and every file held back as a secret, by name.
pub(super) fn announce(target: &Target, p: &Printer, l: &Listed) {
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
    if p.verbose > 0 && !l.git {
        p.status(if cfg!(windows) {
            "  exec bits are unknown without a git index: no file ships executable"
        } else {
            "  without a git index, exec bits and line endings ship as they are on disk"
        });
    } else if p.verbose > 0 && l.normalized > 0 {
        let one = l.normalized == 1;
        p.status(format!(
            "  {} file{} with CRLF line endings ship{} as LF, as `git add` would store {}",
            l.normalized,
            if one { "" } else { "s" },
            if one { "s" } else { "" },
            if one { "it" } else { "them" }
        ));
    }
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
pub(super) fn largest_folders(source: &std::path::Path, entries: &[workspace::Entry], n: usize) -> Vec<(String, usize, u64)> {
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
pub(super) struct Background<T> {
    handle: Option<std::thread::JoinHandle<T>>,
    value: Option<T>,
}

impl<T: Send + 'static> Background<T> {
    pub(super) fn spawn(f: impl FnOnce() -> T + Send + 'static) -> Self {
        Background { handle: Some(std::thread::spawn(f)), value: None }
    }

    fn wait(&mut self) {
        if let Some(h) = self.handle.take() {
            self.value = Some(h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)));
        }
    }

    pub(super) fn get(&mut self) -> &T {
        self.wait();
        self.value.as_ref().expect("a background result is kept until taken")
    }

    /// The result, once; `None` after that.
    pub(super) fn take(&mut self) -> Option<T> {
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

pub(super) fn show_continuation(p: &Printer, script: &str) {
    if p.verbose > 0 {
        crate::transport::show_command(p.verbose, "same command, after BST-GO", script);
    }
}

/// The upload script for a full snapshot or (with a plan) a delta, the entries to send and
/// bst's own files that travel with them.
pub(super) fn upload_parts<'a>(
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
                    prep.seed.as_ref().map(|s| s.base.as_str()),
                ),
                std::borrow::Cow::Owned(pl.send.iter().filter_map(|p| find(entries, p, |e| &e.path)).cloned().collect()),
                vec![manifest, file("removed", Arc::new(workspace::encode_paths(&pl.remove))), complete],
            )
        }
    }
}

/// Streams the upload with the bar ticking, and keeps what it measured of the link
/// (`acked` reads what the peer has acknowledged). With
/// `critical`, Ctrl-C is held back from the moment the last byte is out: the script is then
/// completing the deploy, and must not be reported failed.
// Each argument is a different party to the upload (the target, the link, the entries,
// the stream, the bar, Ctrl-C); a struct would only name them twice.
#[allow(clippy::too_many_arguments)]
pub(super) fn send_snapshot(
    target: &Target,
    link: &workspace::LinkMemo,
    send: &[workspace::Entry],
    extra: &[workspace::Extra],
    w: &mut dyn std::io::Write,
    acked: workspace::Acked<'_>,
    bar: Option<&indicatif::ProgressBar>,
    critical: Option<&mut Option<crate::interrupt::Critical>>,
) -> anyhow::Result<workspace::Stats> {
    let tick = |_: &workspace::Entry, n: u64| {
        if let Some(b) = bar {
            b.inc(n);
        }
    };
    let stats = workspace::stream_tar(
        &target.source,
        send,
        extra,
        w,
        workspace::tar::Link { framing: link.framing, remembered: link.link_rate, acked },
        &tick,
    )?;
    w.flush()?;
    link.record(&stats);
    if let Some(guard) = critical {
        *guard = Some(crate::interrupt::Critical::enter());
    }
    Ok(stats)
}
