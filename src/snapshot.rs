//! The workspace snapshot: which files ship, and the streaming tar.gz writer.
//!
//! The list comes from git when `source` is inside a work tree (tracked files plus untracked
//! ones not ignored; modes from the index, so a Windows checkout still ships `chmod +x`
//! scripts and symlinks), else from a walk honouring ignore files. `.git` never ships.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use ignore::gitignore::{Gitignore, GitignoreBuilder};

use crate::interrupt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    File { exec: bool },
    Symlink,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative, `/`-separated, as it will appear in the release.
    pub path: String,
    pub kind: Kind,
    /// From the listing's own `lstat`, so the manifest need not stat 50,000 files a second
    /// time.
    pub stat: Option<Stat>,
}

/// What the hash cache trusts instead of reading a file again. Like git's index it covers
/// more than size and mtime: `touch -d`, `cp -p`, `rsync -a` and `tar -x` all put an old
/// mtime back on new content, but none of them can set the ctime, and a file renamed over
/// another has a new inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub size: u64,
    /// mtime, ctime, inode and device folded into one number: equal only if all are.
    pub stamp: u64,
    /// The newest of mtime and ctime (ns): an entry changed within the clock's granularity
    /// of the cache write is "racily clean" and is not cached.
    pub changed_ns: u64,
}

pub fn stat_of(md: &std::fs::Metadata) -> Option<Stat> {
    let mtime = mtime_ns(md)?;
    #[cfg(unix)]
    let (changed_ns, parts) = {
        use std::os::unix::fs::MetadataExt;
        let ctime = u64::try_from(md.ctime()).ok()?.saturating_mul(1_000_000_000).saturating_add(u64::try_from(md.ctime_nsec()).ok()?);
        (mtime.max(ctime), [mtime, ctime, md.ino(), md.dev()])
    };
    // Windows has no ctime in std; the creation time at least catches a file replaced by
    // another one with an older mtime.
    #[cfg(not(unix))]
    let (changed_ns, parts) = {
        let created = md.created().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos() as u64);
        (mtime.max(created), [mtime, created, 0, 0])
    };
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update(p.to_le_bytes());
    }
    let d = h.finalize();
    let stamp = u64::from_le_bytes(d[..8].try_into().expect("a sha256 has 8 bytes"));
    Some(Stat { size: md.len(), stamp, changed_ns })
}

/// Nanoseconds since the epoch (u64 lasts until 2554).
pub fn mtime_ns(md: &std::fs::Metadata) -> Option<u64> {
    u64::try_from(md.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos()).ok()
}

#[derive(Debug, Clone, Default)]
pub struct GitInfo {
    pub commit: Option<String>,
    pub branch: Option<String>,
    pub dirty: Option<bool>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    pub files: u64,
    /// Uncompressed content bytes.
    pub bytes: u64,
    /// The gzip level the upload settled on (0: stored), when it was measured.
    pub level: Option<u32>,
    /// Snapshot bytes per second through the whole pipeline, when measured.
    pub rates: Rates,
}

/// Uncompressed snapshot bytes per second through compressors, link and server, as one
/// upload measured them: `plain` with nothing deflated (stored members or bare tar), `gzip`
/// compressed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rates {
    pub plain: Option<f64>,
    pub gzip: Option<f64>,
}

/// What the last measured upload to a host said about its link, kept in the user's cache
/// directory. Where storing beat compression, the next uploads send bare tar. The verdict is
/// measured again once it is a day old, or as soon as a bare upload moves fewer bytes per
/// second than compression did (say the laptop left the LAN for a slower link).
#[derive(Debug)]
pub struct LinkMemo {
    file: Option<PathBuf>,
    /// The framing of this deploy's uploads.
    pub framing: Framing,
    /// What compression reached when storing won (bytes per second).
    gzip_rate: f64,
}

const LINK_MAGIC: &str = "bst-link-1";
const LINK_MAX_AGE_S: u64 = 24 * 3600;

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl LinkMemo {
    /// The memo for `host` (a target's host label); without one, gzip at `level`, probed.
    pub fn for_host(host: &str, level: u32) -> LinkMemo {
        LinkMemo::at(crate::delta::cache_file("link", host), level)
    }

    fn at(file: Option<PathBuf>, level: u32) -> LinkMemo {
        let saved = file.as_deref().and_then(|f| std::fs::read_to_string(f).ok());
        let now = unix_now();
        // `store <plain B/s> <gzip B/s> <unix time>`; a time ahead of the clock is stale.
        let fresh_store = saved.as_deref().and_then(|t| {
            let f: Vec<&str> = t.strip_prefix(LINK_MAGIC)?.split_whitespace().collect();
            let (gzip, at) = (f.get(2)?.parse::<f64>().ok()?, f.get(3)?.parse::<u64>().ok()?);
            (f.first() == Some(&"store") && at <= now + 60 && now.saturating_sub(at) < LINK_MAX_AGE_S).then_some(gzip)
        });
        match fresh_store {
            Some(gzip_rate) => LinkMemo { file, framing: Framing::Tar, gzip_rate },
            None => LinkMemo { file, framing: Framing::Gzip(level), gzip_rate: 0.0 },
        }
    }

    /// Whether verdicts are kept at all (there is a cache directory).
    pub fn kept(&self) -> bool {
        self.file.is_some()
    }

    /// Learns from a finished upload: the probe's verdict, or a bare upload slower than
    /// compression was (forget the verdict: the next upload probes again).
    pub fn record(&self, stats: &Stats) {
        let Some(file) = &self.file else { return };
        match (self.framing, stats.rates) {
            (Framing::Gzip(_), Rates { plain: Some(plain), gzip: Some(gzip) }) => {
                let verdict = if stats.level == Some(0) { "store" } else { "gzip" };
                let line = format!("{LINK_MAGIC} {verdict} {plain:.0} {gzip:.0} {}\n", unix_now());
                crate::delta::write_atomic(file, line.as_bytes());
            }
            (Framing::Tar, Rates { plain: Some(plain), .. }) if plain < self.gzip_rate => {
                let _ = std::fs::remove_file(file);
            }
            _ => {}
        }
    }
}

/// How the tar stream travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Gzip members, deflated at this level or stored as [`Probe`] measures mid-stream.
    Gzip(u32),
    /// Bare tar, for a link already measured to be faster than deflate: even stored gzip
    /// members cost the server a `gzip -d` (a CRC pass and one more pipe), 0.2 s per 60 MB.
    Tar,
}

fn git(source: &Path, args: &[&str]) -> Option<Vec<u8>> {
    let out = Command::new("git").arg("-C").arg(source).args(args).output().ok()?;
    out.status.success().then_some(out.stdout)
}

fn in_git_work_tree(source: &Path) -> bool {
    git(source, &["rev-parse", "--is-inside-work-tree"]).is_some_and(|o| o.starts_with(b"true"))
}

/// Outside a work tree (or before the first commit) the git commands fail: all `None`.
pub fn git_info(source: &Path) -> GitInfo {
    let refs = git(source, &["rev-parse", "HEAD", "--abbrev-ref", "HEAD"]).map(|o| String::from_utf8_lossy(&o).into_owned());
    let mut lines = refs.as_deref().unwrap_or("").lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string);
    let (commit, branch) = (lines.next(), lines.next());
    GitInfo { commit, branch, dirty: git(source, &["status", "--porcelain", "--untracked-files=no"]).map(|o| !o.is_empty()) }
}

/// The errors of [`collect`] that need no listing: a missing source, a bad exclude pattern.
pub fn check_source(source: &Path, exclude: &[String]) -> anyhow::Result<Gitignore> {
    if !source.is_dir() {
        bail!("source {} is not a directory", source.display());
    }
    check_patterns(source, exclude, "exclude")
}

/// Names bst itself writes at the root of a release. A workspace entry of the same name would
/// be written through (a committed `.release-meta -> ../../shared/.env` once replaced the
/// shared `.env` with the meta JSON), so one is refused, never shipped.
pub const BST_OWNED: &[&str] = &[crate::release::META_FILE, crate::release::META_TMP, crate::delta::UPLOAD_DIR];

/// What decides the listing beyond git's own rules.
#[derive(Debug, Default, Clone)]
pub struct Rules {
    /// gitignore-style patterns excluded on top of `.gitignore`.
    pub exclude: Vec<String>,
    /// gitignore-style patterns that ship although [`crate::withheld`] would hold them back.
    pub include: Vec<String>,
    /// Release paths that never ship: the shared links (so a local `.env` cannot reach the
    /// server), and bst's own byproducts inside the workspace (a local base, reports).
    pub skip: Vec<String>,
    /// Ship a plain directory (no git work tree) by walking it.
    pub allow_no_git: bool,
}

#[derive(Debug, Default)]
pub struct Listing {
    pub entries: Vec<Entry>,
    /// How many shipped files git does not track: a release holding any is not `dirty: false`.
    pub untracked: usize,
    /// Paths held back by [`crate::withheld`], with why; the user is told each one.
    pub withheld: Vec<(String, &'static str)>,
    /// Listed from a git work tree (else from a walk).
    pub git: bool,
}

/// An entry's size: from the listing's own `lstat`, else the disk now.
pub fn entry_size(source: &Path, e: &Entry) -> u64 {
    e.stat.map(|st| st.size).or_else(|| std::fs::symlink_metadata(source.join(&e.path)).ok().map(|m| m.len())).unwrap_or(0)
}

/// The refusal for a source outside any git work tree, found without running git (the
/// listing asks git itself later): a config kept in a home or temp folder once shipped that
/// whole folder, SSH keys included.
pub fn check_in_git(source: &Path, rules: &Rules) -> anyhow::Result<()> {
    if rules.allow_no_git || source.ancestors().any(|d| d.join(".git").exists()) {
        return Ok(());
    }
    Err(not_git(source, "no .git in it or any parent"))
}

fn not_git(source: &Path, why: &str) -> anyhow::Error {
    crate::error::Error::Usage(format!(
        "source {} is not inside a git work tree ({why}); bst ships what git would commit.\n  \
         check `source` (relative to the config file's folder) or --config; to ship a plain folder, set `source_is_not_git = true` on the target",
        source.display()
    ))
    .into()
}

/// Lists what ships.
pub fn collect(source: &Path, rules: &Rules) -> anyhow::Result<Listing> {
    let excluded = check_source(source, &rules.exclude)?;
    let included = check_patterns(source, &rules.include, "include")?;
    let keep = |path: &str| -> bool {
        !path.split('/').any(|c| c == ".git")
            && !rules.skip.iter().any(|s| under(path, s))
            && (rules.exclude.is_empty() || !excluded.matched_path_or_any_parents(path, false).is_ignore())
    };
    let git = in_git_work_tree(source);
    if !git && !rules.allow_no_git {
        return Err(not_git(source, "git does not see one"));
    }
    let (mut entries, untracked) = if git { from_git(source)? } else { (from_walk(source, &excluded)?, Vec::new()) };
    entries.retain(|e| keep(&e.path));
    if let Some(e) = entries.iter().find(|e| BST_OWNED.iter().any(|owned| under(&e.path, owned))) {
        bail!(crate::error::Error::Usage(format!(
            "cannot ship `{}`: bst writes that name into every release; rename it, or exclude it",
            e.path
        )));
    }
    let mut withheld = Vec::new();
    entries.retain(|e| {
        let why = crate::withheld::reason(source, e).filter(|_| !included.matched_path_or_any_parents(&e.path, false).is_ignore());
        if let Some(why) = why {
            withheld.push((e.path.clone(), why));
        }
        why.is_none()
    });
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    entries.dedup_by(|a, b| a.path == b.path);
    withheld.sort();
    let untracked: std::collections::HashSet<String> = untracked.into_iter().collect();
    let untracked = entries.iter().filter(|e| untracked.contains(&e.path)).count();
    Ok(Listing { entries, untracked, withheld, git })
}

fn check_patterns(source: &Path, patterns: &[String], key: &str) -> anyhow::Result<Gitignore> {
    let mut b = GitignoreBuilder::new(source);
    for pat in patterns {
        b.add_line(None, pat).with_context(|| format!("invalid {key} pattern `{pat}`"))?;
    }
    Ok(b.build()?)
}

/// The entries, and the paths among them that git does not track.
fn from_git(source: &Path) -> anyhow::Result<(Vec<Entry>, Vec<String>)> {
    // The untracked listing walks the whole tree (0.25 s at 50,000 files): the tracked files
    // are stat'ed on the other cores meanwhile.
    let (tracked, others) = std::thread::scope(|scope| {
        let others = scope.spawn(|| git(source, &["ls-files", "-z", "--others", "--exclude-standard"]));
        let checkout = scope.spawn(|| Checkout::of(source));
        let staged = git(source, &["ls-files", "-z", "--stage"]);
        let checkout = checkout.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        let tracked = staged.map(|staged| -> anyhow::Result<Vec<Entry>> {
            let mut recs = Vec::new();
            for rec in staged.split(|b| *b == 0).filter(|r| !r.is_empty()) {
                if let Some((mode, path)) = split_stage_record(rec)? {
                    recs.push((mode, path));
                }
            }
            // git does not look beyond a symbolic link: a tracked `apps/web/x` whose `apps/web`
            // is now a link (or a file) is deleted in git's eyes, and reading it would read
            // through the link, outside the workspace.
            let beyond = links_among_parents(source, recs.iter().map(|(_, p)| p.as_str()));
            recs.retain(|(_, p)| !beyond.iter().any(|d| under(p, d)));
            Ok(par_filter_map(&recs, |(mode, path)| staged_entry(source, mode, path, &checkout)))
        });
        (tracked, others.join().ok().flatten())
    });
    let mut out = tracked.context("git ls-files failed")??;
    let others = others.context("git ls-files failed")?;
    let mut untracked = Vec::new();
    for rec in others.split(|b| *b == 0).filter(|r| !r.is_empty()) {
        let path = utf8_name(rec)?;
        if path.ends_with('/') {
            continue; // a nested repository
        }
        if let Some(e) = entry_from_fs(source, path)? {
            untracked.push(e.path.clone());
            out.push(e);
        }
    }
    Ok((out, untracked))
}

fn under(path: &str, dir: &str) -> bool {
    path == dir || path.strip_prefix(dir).is_some_and(|rest| rest.starts_with('/'))
}

/// A path bst must ship byte for byte or not at all: a name that is not UTF-8 is refused,
/// never dropped or mangled without a word.
fn utf8_name(raw: &[u8]) -> anyhow::Result<&str> {
    std::str::from_utf8(raw).map_err(|_| {
        crate::error::Error::Usage(format!(
            "cannot ship `{}`: its name is not valid UTF-8; rename it, or ignore it in .gitignore",
            String::from_utf8_lossy(raw).escape_debug()
        ))
        .into()
    })
}

/// `<mode> <object> <stage>\t<path>` from `git ls-files --stage -z`.
fn split_stage_record(rec: &[u8]) -> anyhow::Result<Option<(String, String)>> {
    let Some(tab) = rec.iter().position(|&b| b == b'\t') else { return Ok(None) };
    let mode = String::from_utf8_lossy(&rec[..tab]).split(' ').next().unwrap_or("").to_string();
    Ok(Some((mode, utf8_name(&rec[tab + 1..])?.to_string())))
}

/// The parent directories of `paths` that are not real directories on disk now (symlinks,
/// files), outermost only.
fn links_among_parents<'a>(source: &Path, paths: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut dirs = std::collections::BTreeSet::new();
    for p in paths {
        let mut at = 0;
        while let Some(i) = p[at..].find('/') {
            dirs.insert(&p[..at + i]);
            at += i + 1;
        }
    }
    let dirs: Vec<&str> = dirs.into_iter().collect();
    // Sorted, so a parent comes before everything under it.
    let bad = par_filter_map(&dirs, |d| {
        let real = std::fs::symlink_metadata(source.join(d)).is_ok_and(|m| m.is_dir());
        (!real).then(|| d.to_string())
    });
    let mut outer: Vec<String> = Vec::new();
    for d in bad {
        if !outer.iter().any(|o| under(&d, o)) {
            outer.push(d);
        }
    }
    outer
}

/// How git maps the index onto this checkout: where `core.symlinks` is false (Git for
/// Windows' default) a link is checked out as a file holding its target; where
/// `core.fileMode` is false the disk's exec bits mean nothing and the index's count.
struct Checkout {
    symlinks: bool,
    file_mode: bool,
}

impl Checkout {
    fn of(source: &Path) -> Checkout {
        let mut c = Checkout { symlinks: cfg!(unix), file_mode: cfg!(unix) };
        // Exit 1 (None) when neither is set: the defaults hold.
        let out = git(source, &["config", "--bool", "--get-regexp", r"^core\.(symlinks|filemode)$"]).unwrap_or_default();
        for line in String::from_utf8_lossy(&out).lines() {
            match line.split_once(' ') {
                Some((k, v)) if k.eq_ignore_ascii_case("core.symlinks") => c.symlinks = v == "true",
                Some((k, v)) if k.eq_ignore_ascii_case("core.filemode") => c.file_mode = v == "true",
                _ => {}
            }
        }
        c
    }
}

/// `items.iter().filter_map(f)` on all cores (up to 8), in order: stat'ing and hashing tens
/// of thousands of files is syscall- and CPU-bound per file. A panic in `f` is the caller's.
pub fn par_filter_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> Option<R> + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 8);
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(items.len().div_ceil(threads).max(1))
            .map(|chunk| scope.spawn(move || chunk.iter().filter_map(f).collect::<Vec<R>>()))
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
    })
}

/// One `git ls-files --stage` record as an entry, if it ships. The kind is what is on disk
/// now (`lstat`), as `git add` would see it: a tracked file replaced by a link ships the
/// link, never the bytes behind it. The index only speaks for what the checkout cannot show
/// (links checked out as files, exec bits where `core.fileMode` is off).
fn staged_entry(source: &Path, mode: &str, path: &str, checkout: &Checkout) -> Option<Entry> {
    if !matches!(mode, "120000" | "100755" | "100644") {
        return None; // 160000: submodules are not snapshotted
    }
    // Files deleted in the work tree do not ship: the work tree is the truth.
    let md = std::fs::symlink_metadata(source.join(path)).ok()?;
    let kind = if md.file_type().is_symlink() {
        Kind::Symlink
    } else if md.is_file() {
        if mode == "120000" && !checkout.symlinks {
            Kind::Symlink
        } else if checkout.file_mode {
            Kind::File { exec: is_exec(&md) }
        } else {
            Kind::File { exec: mode == "100755" }
        }
    } else {
        // A directory now: what is in it is listed as untracked. Anything else never ships.
        return None;
    };
    Some(Entry { path: path.to_string(), kind, stat: stat_of(&md) })
}

fn from_walk(source: &Path, excluded: &Gitignore) -> anyhow::Result<Vec<Entry>> {
    let mut out = Vec::new();
    let walker = ignore::WalkBuilder::new(source)
        .hidden(false)
        .require_git(false)
        .follow_links(false)
        .filter_entry(|e| e.file_name() != ".git")
        .build();
    for dent in walker {
        let dent = dent?;
        if dent.depth() == 0 || dent.file_type().is_some_and(|t| t.is_dir()) {
            continue;
        }
        let rel = dent.path().strip_prefix(source).unwrap_or(dent.path());
        if rel.to_str().is_none() {
            return Err(crate::error::Error::Usage(format!(
                "cannot ship `{}`: its name is not valid UTF-8; rename it, or ignore it",
                rel.to_string_lossy().escape_debug()
            ))
            .into());
        }
        let path = release_path(rel);
        if excluded.matched_path_or_any_parents(&path, false).is_ignore() {
            continue;
        }
        if let Some(e) = entry_from_fs(source, &path)? {
            out.push(e);
        }
    }
    Ok(out)
}

/// A walked path as it goes into the tar: on Windows the walk yields `apps\api\x.ts`, and the
/// server must see `apps/api/x.ts`.
fn release_path(rel: &Path) -> String {
    posix(&rel.to_string_lossy())
}

fn posix(p: &str) -> String {
    p.replace('\\', "/")
}

fn entry_from_fs(source: &Path, path: &str) -> anyhow::Result<Option<Entry>> {
    let Ok(md) = std::fs::symlink_metadata(source.join(path)) else { return Ok(None) };
    let kind = if md.file_type().is_symlink() {
        Kind::Symlink
    } else if md.is_file() {
        Kind::File { exec: is_exec(&md) }
    } else {
        return Ok(None);
    };
    Ok(Some(Entry { path: path.to_string(), kind, stat: stat_of(&md) }))
}

#[cfg(unix)]
fn is_exec(md: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    md.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_exec(_: &std::fs::Metadata) -> bool {
    false
}

/// A symlink's target, as the release must carry it. On Unix that is the link's bytes exactly:
/// a backslash is an ordinary character there, and a target that is not UTF-8 must not be
/// rewritten (both shipped a different link with exit 0). On Windows a link's separators are
/// backslashes, and the server needs `/`. Where the checkout has no symlinks (Windows,
/// `core.symlinks=false`) git writes the target as the file's content.
pub fn link_target(full: &Path) -> io::Result<PathBuf> {
    match std::fs::read_link(full) {
        #[cfg(unix)]
        Ok(t) => Ok(t),
        #[cfg(not(unix))]
        Ok(t) => Ok(PathBuf::from(posix(&t.to_string_lossy()))),
        Err(_) => {
            let mut s = String::new();
            File::open(full)?.take(4096).read_to_string(&mut s)?;
            Ok(stored_link_target(&s))
        }
    }
}

/// The content git wrote in place of a link is the target verbatim; only a line ending added
/// by an editor (CRLF on Windows) is not part of it.
fn stored_link_target(content: &str) -> PathBuf {
    PathBuf::from(content.trim_end_matches(['\r', '\n']))
}

fn mtime(md: &std::fs::Metadata) -> u64 {
    md.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs())
}

/// Streams `entries` as a gzip'd tar into `w`. Memory stays bounded: files are copied
/// through, never loaded whole. `progress` gets each entry's content size.
pub fn write_tar_gz<W: Write>(
    source: &Path,
    entries: &[Entry],
    w: W,
    level: u32,
    progress: &mut dyn FnMut(&Entry, u64),
) -> anyhow::Result<Stats> {
    write_tar_gz_with(source, entries, &[], w, level, progress)
}

/// Files bst adds to the stream after the snapshot (the manifest, removals). Shared: the
/// manifest of 50,000 files is 5 MB, already encoded once for the client's own cache.
pub type Extra = (String, std::sync::Arc<Vec<u8>>);

pub fn write_tar_gz_with<W: Write>(
    source: &Path,
    entries: &[Entry],
    extra: &[Extra],
    w: W,
    level: u32,
    progress: &mut dyn FnMut(&Entry, u64),
) -> anyhow::Result<Stats> {
    let open = std::rc::Rc::new(std::cell::Cell::new(true));
    let valve = Valve { inner: w, open: open.clone() };
    let gz = flate2::write::GzEncoder::new(valve, flate2::Compression::new(level));
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    match append_all(&mut tar, source, entries, progress, &mut |_, _| {}).and_then(|stats| {
        append_extra(&mut tar, extra)?;
        Ok(stats)
    }) {
        Ok(stats) => {
            let gz = tar.into_inner()?;
            let mut w = gz.finish()?;
            w.flush()?;
            Ok(stats)
        }
        Err(e) => {
            // tar::Builder and GzEncoder finish the archive in Drop. After a failure or
            // Ctrl-C that would hand the server a well-formed but truncated snapshot.
            open.set(false);
            drop(tar);
            Err(e)
        }
    }
}

/// Passes writes through until closed; then every write fails.
struct Valve<W> {
    inner: W,
    open: std::rc::Rc<std::cell::Cell<bool>>,
}

impl<W: Write> Write for Valve<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.open.get() {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "snapshot aborted"));
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.open.get() {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "snapshot aborted"));
        }
        self.inner.flush()
    }
}

fn append_extra<W: Write>(tar: &mut tar::Builder<W>, extra: &[Extra]) -> anyhow::Result<()> {
    for (path, data) in extra {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o600);
        h.set_size(data.len() as u64);
        h.set_mtime(u64::try_from(crate::release::now_unix()).unwrap_or(0));
        tar.append_data(&mut h, path, &data[..])?;
    }
    Ok(())
}

/// Appends the entries; `hint` learns, before each one, whether its bytes are already
/// compressed.
fn append_all<W: Write>(
    tar: &mut tar::Builder<W>,
    source: &Path,
    entries: &[Entry],
    progress: &mut dyn FnMut(&Entry, u64),
    hint: &mut dyn FnMut(&mut W, bool),
) -> anyhow::Result<Stats> {
    let mut stats = Stats::default();
    for e in entries {
        interrupt::check()?;
        hint(tar.get_mut(), matches!(e.kind, Kind::File { .. }) && already_compressed(&e.path));
        let full = source.join(&e.path);
        let md = std::fs::symlink_metadata(&full).with_context(|| format!("cannot read {}", full.display()))?;
        // The kind was listed from `lstat`; a file that became a link since must not be
        // read through it.
        if matches!(e.kind, Kind::File { .. }) && !md.is_file() {
            bail!("{} changed from a file to something else while being deployed; deploy again", e.path);
        }
        let mut h = tar::Header::new_gnu();
        h.set_mtime(mtime(&md));
        h.set_uid(0);
        h.set_gid(0);
        match e.kind {
            Kind::Symlink => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                let target = link_target(&full).with_context(|| format!("cannot read link {}", full.display()))?;
                tar.append_link(&mut h, &e.path, &target).with_context(|| format!("cannot add link {}", e.path))?;
                progress(e, 0);
            }
            Kind::File { exec } => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(if exec { 0o755 } else { 0o644 });
                let f = File::open(&full).with_context(|| format!("cannot open {}", full.display()))?;
                let size = md.len();
                h.set_size(size);
                // A file that changes while we read it must not corrupt the stream: send
                // exactly `size` bytes, failing if it shrank.
                let mut tick = |n: u64| progress(e, n);
                let mut body = Exact { inner: f.take(size), left: size, tick: &mut tick };
                tar.append_data(&mut h, &e.path, &mut body).with_context(|| format!("cannot add {}", e.path))?;
                stats.bytes += size;
            }
        }
        stats.files += 1;
    }
    Ok(stats)
}

struct Exact<'a, R> {
    inner: R,
    left: u64,
    /// Progress as bytes are read, so one large file still moves the bar.
    tick: &'a mut dyn FnMut(u64),
}

impl<R: Read> Read for Exact<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while being read"));
        }
        self.left -= n as u64;
        (self.tick)(n as u64);
        Ok(n)
    }
}

/// Raw tar bytes per gzip member. Members are compressed independently (in parallel) and
/// concatenated: `gzip -d` reads them as one stream; the dictionary reset costs <0.1%.
const BLOCK: usize = 1024 * 1024;

/// File types that are already compressed: deflating them again burns CPU for nothing (a
/// PNG is deflate inside, a woff2 is brotli). Blocks made of them are stored (level 0).
const COMPRESSED: &[&str] = &[
    "png", "jpg", "jpeg", "gif", "webp", "avif", "heic", "ico", "woff", "woff2", "gz", "tgz", "zip", "br", "zst", "xz", "bz2", "7z", "rar",
    "jar", "mp3", "mp4", "m4a", "webm", "ogg", "mov", "pdf",
];

fn already_compressed(path: &str) -> bool {
    path.rsplit_once('.').is_some_and(|(_, ext)| COMPRESSED.iter().any(|c| c.eq_ignore_ascii_case(ext)))
}

struct Block {
    seq: u64,
    data: Vec<u8>,
    level: u32,
    /// The level came from [`Probe`], not from the content being already compressed.
    adaptive: bool,
}

/// Picks the compression level by measurement: a few blocks at `level`, a few stored, then
/// whichever moved more snapshot bytes per second through the whole pipeline (compressors,
/// link, server) for the rest of the upload. Over a LAN or anything slower, compression wins;
/// where the link is faster than deflate (loopback, a fast LAN with a slow laptop) storing
/// wins, and the server's `gzip -d` has less to do too.
struct Probe {
    level: std::sync::Arc<std::sync::atomic::AtomicU32>,
    max: u32,
    /// Snapshot bytes and seconds observed per level (index 0: stored, 1: `max`).
    seen: [(u64, f64, u32); 2],
    decided: bool,
}

/// Blocks per probe phase; the first ones of a phase are not measured (pipeline refill).
const PROBE_BLOCKS: u32 = 6;
const PROBE_SKIP: u32 = 2;

impl Probe {
    /// Counts a block delivered; `i`: 0 plain, 1 deflated.
    fn measure(&mut self, i: usize, raw: usize, secs: f64) -> u32 {
        let s = &mut self.seen[i];
        s.2 += 1;
        if s.2 > PROBE_SKIP {
            s.0 += raw as u64;
            s.1 += secs;
        }
        s.2
    }

    fn rate(&self, i: usize) -> Option<f64> {
        let (b, t, n) = self.seen[i];
        (n >= PROBE_BLOCKS && t > 0.0).then(|| b as f64 / t)
    }

    fn observe(&mut self, block_level: u32, raw: usize, secs: f64) {
        use std::sync::atomic::Ordering;
        if self.decided || self.max == 0 {
            return;
        }
        let i = usize::from(block_level != 0);
        let n = self.measure(i, raw, secs);
        if i == 1 && n >= PROBE_BLOCKS {
            self.level.store(0, Ordering::Relaxed);
        }
        if i == 0 && n >= PROBE_BLOCKS {
            let rate = |i| self.rate(i).unwrap_or(0.0);
            // Ties go to compression: fewer bytes is kinder to a shared link.
            let store = rate(0) > rate(1) * 1.1;
            self.level.store(if store { 0 } else { self.max }, Ordering::Relaxed);
            self.decided = true;
        }
    }
}

/// Cuts the raw tar stream into blocks for the compressors, noting how much of each block
/// came from already-compressed files. After `close` every write fails, so an aborted
/// snapshot never gets its end-of-archive trailer (tar::Builder writes it in Drop).
struct BlockWriter {
    tx: std::sync::mpsc::SyncSender<Block>,
    /// One token per block in flight anywhere in the pipeline: memory stays bounded even if
    /// one compressor lags and the writer has to hold later blocks back.
    tokens: std::sync::mpsc::Receiver<()>,
    buf: Vec<u8>,
    seq: u64,
    level: std::sync::Arc<std::sync::atomic::AtomicU32>,
    incompressible: usize,
    current_incompressible: bool,
    open: bool,
}

impl BlockWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let stored = self.incompressible * 10 >= self.buf.len() * 9;
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(BLOCK));
        let level = if stored { 0 } else { self.level.load(std::sync::atomic::Ordering::Relaxed) };
        let block = Block { seq: self.seq, data, level, adaptive: !stored };
        self.seq += 1;
        self.incompressible = 0;
        let gone = || io::Error::new(io::ErrorKind::BrokenPipe, "upload stopped");
        self.tokens.recv().map_err(|_| gone())?;
        self.tx.send(block).map_err(|_| gone())
    }
}

impl Write for BlockWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if !self.open {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "snapshot aborted"));
        }
        let n = data.len().min(BLOCK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.current_incompressible {
            self.incompressible += n;
        }
        if self.buf.len() >= BLOCK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.open {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "snapshot aborted"));
        }
        Ok(())
    }
}

/// The tar of `entries` (then `extra`), framed as `framing` says. Gzip members are
/// compressed on all cores while the caller's thread writes finished members, in order, to
/// `w` (the SSH channel): reading, compressing and the network overlap instead of taking
/// turns. Blocks of already-compressed files are stored, not deflated again. Bare tar goes
/// through the same pipeline, so reading files still overlaps the writes.
pub fn stream_tar(
    source: &Path,
    entries: &[Entry],
    extra: &[Extra],
    w: &mut dyn Write,
    framing: Framing,
    progress: &(dyn Fn(&Entry, u64) + Sync),
) -> anyhow::Result<Stats> {
    use std::sync::mpsc::{sync_channel, Receiver};
    use std::sync::{Arc, Mutex};
    // Four cores compress ~500 MB/s, more than a LAN carries; more workers only cost memory.
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 4);
    let in_flight = workers + 2;
    let level = match framing {
        Framing::Gzip(level) => level,
        Framing::Tar => 0,
    };
    let shared_level = Arc::new(std::sync::atomic::AtomicU32::new(level));
    let mut probe = Probe { level: Arc::clone(&shared_level), max: level, seen: [(0, 0.0, 0); 2], decided: false };
    let (block_tx, block_rx) = sync_channel::<Block>(workers);
    type Done = (u64, io::Result<Vec<u8>>, u32, bool, usize);
    let (done_tx, done_rx) = sync_channel::<Done>(in_flight);
    let (token_tx, token_rx) = sync_channel::<()>(in_flight);
    for _ in 0..in_flight {
        let _ = token_tx.send(());
    }
    let block_rx: Arc<Mutex<Receiver<Block>>> = Arc::new(Mutex::new(block_rx));
    std::thread::scope(|scope| {
        let producer = scope.spawn(move || {
            let mut bw = BlockWriter {
                tx: block_tx,
                tokens: token_rx,
                buf: Vec::with_capacity(BLOCK),
                seq: 0,
                level: shared_level,
                incompressible: 0,
                current_incompressible: false,
                open: true,
            };
            let mut tar = tar::Builder::new(&mut bw);
            tar.follow_symlinks(false);
            let r = append_all(&mut tar, source, entries, &mut |e, n| progress(e, n), &mut |bw, yes| bw.current_incompressible = yes)
                .and_then(|stats| {
                    append_extra(&mut tar, extra)?;
                    tar.finish()?;
                    Ok(stats)
                });
            if r.is_err() {
                // Before the Builder's Drop can write the end-of-archive trailer.
                tar.get_mut().open = false;
            }
            drop(tar);
            let stats = r?;
            bw.send()?;
            Ok(stats)
        });
        for _ in 0..workers {
            let rx = Arc::clone(&block_rx);
            let tx = done_tx.clone();
            scope.spawn(move || loop {
                let next = rx.lock().map_err(|_| ()).and_then(|r| r.recv().map_err(|_| ()));
                let Ok(block) = next else { break };
                let raw = block.data.len();
                let out = if framing == Framing::Tar {
                    Ok(block.data)
                } else {
                    // Stored output is the input plus 5 bytes per 64 KiB: sized so it never doubles.
                    let cap = if block.level == 0 { raw + raw / 8192 + 64 } else { raw / 2 + 64 };
                    let mut gz = flate2::write::GzEncoder::new(Vec::with_capacity(cap), flate2::Compression::new(block.level));
                    gz.write_all(&block.data).and_then(|()| gz.finish())
                };
                if tx.send((block.seq, out, block.level, block.adaptive, raw)).is_err() {
                    break;
                }
            });
        }
        drop(done_tx);
        let mut write_err: Option<anyhow::Error> = None;
        let mut next = 0u64;
        let mut waiting = std::collections::BTreeMap::new();
        let mut last = std::time::Instant::now();
        for (seq, out, lvl, adaptive, raw) in done_rx.iter() {
            waiting.insert(seq, (out, lvl, adaptive, raw));
            while let Some((out, lvl, adaptive, raw)) = waiting.remove(&next) {
                let r = out.map_err(anyhow::Error::from).and_then(|bytes| w.write_all(&bytes).map_err(anyhow::Error::from));
                if let Err(e) = r {
                    write_err = Some(e);
                    break;
                }
                let now = std::time::Instant::now();
                let secs = (now - last).as_secs_f64();
                if framing == Framing::Tar {
                    probe.measure(0, raw, secs);
                } else if adaptive {
                    probe.observe(lvl, raw, secs);
                }
                last = now;
                next += 1;
                let _ = token_tx.send(());
            }
            if write_err.is_some() {
                break;
            }
        }
        // Dropped before joining: a producer blocked on a full queue or waiting for a token
        // then fails fast instead of waiting forever.
        drop(done_rx);
        drop(token_tx);
        let produced = producer.join().map_err(|_| anyhow::anyhow!("snapshot thread panicked"))?;
        match (write_err, produced) {
            (Some(e), _) => Err(e.context("sending the snapshot failed")),
            (None, Err(e)) => Err(e),
            (None, Ok(stats)) => {
                w.flush()?;
                let level = probe.decided.then(|| probe.level.load(std::sync::atomic::Ordering::Relaxed));
                let rates = match framing {
                    Framing::Tar => Rates { plain: probe.rate(0), gzip: None },
                    Framing::Gzip(_) if probe.decided => Rates { plain: probe.rate(0), gzip: probe.rate(1) },
                    Framing::Gzip(_) => Rates::default(),
                };
                Ok(Stats { level, rates, ..stats })
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    fn sh(dir: &Path, script: &str) {
        let ok = Command::new("sh").arg("-c").arg(script).current_dir(dir).status().unwrap().success();
        assert!(ok, "{script}");
    }

    #[cfg(unix)]
    #[test]
    fn git_workspace_lists_tracked_and_untracked_minus_ignored() {
        let d = tempfile::tempdir().unwrap();
        sh(
            d.path(),
            "git init -q . && printf 'ignored.txt\\nbuild/\\n' > .gitignore && echo a > a.txt && printf '#!/bin/sh\\n' > run.sh && chmod +x run.sh \
             && ln -s a.txt link && mkdir build && echo x > build/out && echo i > ignored.txt && echo s > .env && mkdir sub && echo u > sub/new.txt \
             && git add .gitignore a.txt run.sh link && git -c user.name=t -c user.email=t@e commit -qm init && echo u > untracked.txt && echo z > zz.log",
        );
        let rules = Rules { exclude: vec!["*.log".into()], skip: vec![".env".into()], ..Rules::default() };
        let listing = collect(d.path(), &rules).unwrap();
        assert_eq!((listing.untracked, listing.git), (2, true));
        let e = listing.entries;
        let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, vec![".gitignore", "a.txt", "link", "run.sh", "sub/new.txt", "untracked.txt"]);
        assert_eq!(e[2].kind, Kind::Symlink);
        assert_eq!(e[3].kind, Kind::File { exec: true });
        let info = git_info(d.path());
        assert_eq!(info.commit.as_deref().map(str::len), Some(40));
        assert_eq!(info.dirty, Some(false));
    }

    #[cfg(unix)]
    #[test]
    fn plain_directory_walk_honours_gitignore_and_skips_dot_git() {
        let d = tempfile::tempdir().unwrap();
        sh(
            d.path(),
            "printf 'secret\\n' > .gitignore && echo s > secret && mkdir .git && echo x > .git/config && echo a > a && echo h > .hidden",
        );
        assert!(collect(d.path(), &Rules::default()).unwrap_err().to_string().contains("is not inside a git work tree"));
        let e = collect(d.path(), &Rules { allow_no_git: true, ..Rules::default() }).unwrap().entries;
        let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, vec![".gitignore", ".hidden", "a"]);
    }

    #[cfg(unix)]
    #[test]
    fn parallel_members_round_trip_and_compressed_files_are_stored() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir(&src).unwrap();
        // xorshift noise: incompressible, like a PNG's deflate stream.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..3_000_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(src.join("logo.png"), &noise).unwrap();
        let text: String = (0..60_000).map(|i| format!("export const v{i} = {i};\n")).collect();
        std::fs::write(src.join("mod.ts"), &text).unwrap();
        let entries = collect(&src, &Rules { allow_no_git: true, ..Rules::default() }).unwrap().entries;
        let mut tgz = Vec::new();
        let stats = stream_tar(&src, &entries, &[], &mut tgz, Framing::Gzip(1), &|_, _| {}).unwrap();
        assert_eq!(stats.bytes, (noise.len() + text.len()) as u64);
        // Stored blocks cost ~5 bytes per 64 KiB; the text still shrinks to well under half.
        assert!(tgz.len() > noise.len() && tgz.len() < noise.len() + text.len() / 2 + 4096, "{} bytes", tgz.len());
        std::fs::create_dir(d.path().join("out")).unwrap();
        let mut child =
            Command::new("tar").args(["-xzf", "-", "-C"]).arg(d.path().join("out")).stdin(std::process::Stdio::piped()).spawn().unwrap();
        child.stdin.take().unwrap().write_all(&tgz).unwrap();
        assert!(child.wait().unwrap().success());
        assert!(std::fs::read(d.path().join("out/logo.png")).unwrap() == noise);
        assert_eq!(std::fs::read_to_string(d.path().join("out/mod.ts")).unwrap(), text);
    }

    #[test]
    fn the_probe_stores_only_when_storing_moves_more_bytes() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let run = |secs_stored: f64| {
            let level = std::sync::Arc::new(AtomicU32::new(1));
            let mut p = Probe { level: level.clone(), max: 1, seen: [(0, 0.0, 0); 2], decided: false };
            for _ in 0..PROBE_BLOCKS {
                p.observe(level.load(Ordering::Relaxed), BLOCK, 0.010);
            }
            assert_eq!(level.load(Ordering::Relaxed), 0, "the second phase stores");
            for _ in 0..PROBE_BLOCKS {
                p.observe(0, BLOCK, secs_stored);
            }
            assert!(p.decided);
            level.load(Ordering::Relaxed)
        };
        // A link faster than deflate: stored blocks go through in half the time.
        assert_eq!(run(0.005), 0);
        // A slow link: stored blocks take longer per snapshot byte; keep compressing.
        assert_eq!(run(0.016), 1);
        // Within 10%: compression (fewer bytes on a shared link).
        assert_eq!(run(0.0095), 1);
    }

    #[test]
    fn the_link_memo_sends_bare_tar_only_while_storing_won_recently() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("link");
        let memo = || LinkMemo::at(Some(file.clone()), 1);
        let measured = |level, plain, gzip| Stats { level: Some(level), rates: Rates { plain, gzip }, ..Stats::default() };
        assert_eq!(memo().framing, Framing::Gzip(1), "nothing measured yet: probe");
        // The probe stored: bare tar from now on.
        memo().record(&measured(0, Some(90e6), Some(40e6)));
        assert_eq!(memo().framing, Framing::Tar);
        // A bare upload about as fast as storing was keeps the verdict; an unmeasured one too.
        memo().record(&measured(0, Some(80e6), None));
        memo().record(&Stats::default());
        assert_eq!(memo().framing, Framing::Tar);
        // Slower than compression was: forget it, probe again.
        memo().record(&measured(0, Some(30e6), None));
        assert_eq!(memo().framing, Framing::Gzip(1));
        assert!(!file.exists());
        // The probe kept compressing: keep probing.
        memo().record(&measured(1, Some(10e6), Some(40e6)));
        assert_eq!(memo().framing, Framing::Gzip(1));
        // A verdict a day old, or from the future (the clock was set back), is measured again.
        let now = unix_now();
        for at in [now - LINK_MAX_AGE_S, now + 3600] {
            std::fs::write(&file, format!("{LINK_MAGIC} store 90000000 40000000 {at}\n")).unwrap();
            assert_eq!(memo().framing, Framing::Gzip(1), "at {at}, now {now}");
        }
        std::fs::write(&file, format!("{LINK_MAGIC} store 90000000 40000000 {}\n", now - 60)).unwrap();
        assert_eq!(memo().framing, Framing::Tar);
        std::fs::write(&file, "bst-link-0 store 1 1 1\n").unwrap();
        assert_eq!(memo().framing, Framing::Gzip(1), "an unknown format is ignored");
    }

    #[cfg(unix)]
    #[test]
    fn bare_tar_round_trips_and_is_measured() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let text: String = (0..400_000).map(|i| format!("export const v{i} = {i};\n")).collect();
        std::fs::write(src.join("mod.ts"), &text).unwrap();
        let entries = collect(&src, &Rules { allow_no_git: true, ..Rules::default() }).unwrap().entries;
        let mut raw = Vec::new();
        let stats = stream_tar(&src, &entries, &[], &mut raw, Framing::Tar, &|_, _| {}).unwrap();
        assert!(raw.len() > text.len() && raw.len() < text.len() + 4096, "bare tar is the content plus headers: {} bytes", raw.len());
        assert!(stats.rates.plain.is_some_and(|r| r > 0.0) && stats.rates.gzip.is_none(), "{:?}", stats.rates);
        std::fs::create_dir(d.path().join("out")).unwrap();
        let mut child =
            Command::new("tar").args(["-xf", "-", "-C"]).arg(d.path().join("out")).stdin(std::process::Stdio::piped()).spawn().unwrap();
        child.stdin.take().unwrap().write_all(&raw).unwrap();
        assert!(child.wait().unwrap().success());
        assert_eq!(std::fs::read_to_string(d.path().join("out/mod.ts")).unwrap(), text);
    }

    #[test]
    fn a_failed_snapshot_never_ends_as_a_valid_archive() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), "a").unwrap();
        let entries = vec![
            Entry { path: "a".into(), kind: Kind::File { exec: false }, stat: None },
            Entry { path: "missing".into(), kind: Kind::File { exec: false }, stat: None },
        ];
        let mut buf = Vec::new();
        assert!(write_tar_gz(d.path(), &entries, &mut buf, 1, &mut |_, _| {}).is_err());
        let mut out = Vec::new();
        let gz = flate2::read::GzDecoder::new(&buf[..]).read_to_end(&mut out);
        assert!(gz.is_err(), "the gzip stream must stay unfinished, not a valid archive of the files so far");
    }

    #[cfg(unix)]
    #[test]
    fn tar_round_trips_through_gnu_tar() {
        let d = tempfile::tempdir().unwrap();
        let long = "d/".repeat(60) + "long-name-file.txt";
        sh(
            d.path(),
            &format!("mkdir -p src/$(dirname {long}) && echo hi > src/{long} && printf x > src/x && chmod +x src/x && ln -s x src/l"),
        );
        let src = d.path().join("src");
        let entries = collect(&src, &Rules { allow_no_git: true, ..Rules::default() }).unwrap().entries;
        let mut buf = Vec::new();
        let stats = write_tar_gz(&src, &entries, &mut buf, 1, &mut |_, _| {}).unwrap();
        assert_eq!(stats.files, 3);
        std::fs::create_dir(d.path().join("out")).unwrap();
        let mut child =
            Command::new("tar").args(["-xzf", "-", "-C"]).arg(d.path().join("out")).stdin(std::process::Stdio::piped()).spawn().unwrap();
        child.stdin.take().unwrap().write_all(&buf).unwrap();
        assert!(child.wait().unwrap().success());
        assert_eq!(std::fs::read_to_string(d.path().join("out").join(&long)).unwrap(), "hi\n");
        assert_eq!(std::fs::read_link(d.path().join("out/l")).unwrap(), PathBuf::from("x"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(d.path().join("out/x")).unwrap().permissions().mode() & 0o777, 0o755);
    }

    /// A Windows checkout, seen from any OS: the walk spells paths with `\`, and a link is a
    /// plain file holding its target.
    #[test]
    fn windows_paths_and_stored_links_become_posix_tar_entries() {
        assert_eq!(release_path(Path::new(r"apps\api\src\index.ts")), "apps/api/src/index.ts");
        assert_eq!(release_path(Path::new("apps/api/src/index.ts")), "apps/api/src/index.ts");
        assert_eq!(stored_link_target("../shared/.env"), PathBuf::from("../shared/.env"));
        assert_eq!(stored_link_target("../shared/.env\r\n"), PathBuf::from("../shared/.env"));

        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("apps/api/src")).unwrap();
        std::fs::write(d.path().join("apps/api/src/index.ts"), "x").unwrap();
        std::fs::write(d.path().join(".env"), "../../shared/.env\n").unwrap();
        let entries = [
            Entry { path: release_path(Path::new(".env")), kind: Kind::Symlink, stat: None },
            Entry { path: release_path(Path::new(r"apps\api\src\index.ts")), kind: Kind::File { exec: false }, stat: None },
        ];
        let mut buf = Vec::new();
        write_tar_gz(d.path(), &entries, &mut buf, 1, &mut |_, _| {}).unwrap();
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&buf[..]));
        let got: Vec<(String, tar::EntryType, Option<PathBuf>)> = tar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.path().unwrap().to_string_lossy().into_owned(), e.header().entry_type(), e.link_name().unwrap().map(|l| l.into_owned()))
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (".env".into(), tar::EntryType::Symlink, Some(PathBuf::from("../../shared/.env"))),
                ("apps/api/src/index.ts".into(), tar::EntryType::Regular, None),
            ]
        );
    }
}
