//! The repository, read in-process with gix: the index (modes, links, exec bits), the
//! untracked files git would show, HEAD, the branch and the dirty state, and the
//! attributes that decide git's clean-side line-ending conversion. No `git` process runs, so
//! a Windows machine without `git.exe` on PATH lists exactly what a Linux one does.
//!
//! Only the end-of-line part of git's clean filter is applied (`text`, `eol`, `crlf`,
//! `core.autocrlf`): `filter=` drivers (git-lfs) and `working-tree-encoding` would turn the
//! working file into what git stores, a pointer or another encoding, while the server runs
//! the working file itself. `ident` is left too: a deploy has no use for `$Id$`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use gix::filter::plumbing::eol::{self, AttributesDigest};

#[derive(Debug, Clone, Default)]
pub struct GitInfo {
    pub commit: Option<String>,
    pub branch: Option<String>,
    pub dirty: Option<bool>,
}

/// A work tree and where `source` sits in it.
pub struct Repo {
    repo: gix::Repository,
    /// The same repository for other threads (the untracked walk, the conversions):
    /// opened once, its index snapshot shared.
    shared: Arc<gix::ThreadSafeRepository>,
    /// `source` relative to the work tree, `/`-separated, with a trailing `/`; empty at the top.
    prefix: String,
}

/// How git's clean filter treats one file's line endings. Only files it may change get one.
#[derive(Clone)]
pub struct Clean {
    digest: AttributesDigest,
    /// The index's copy: git keeps CRLF that is already committed in an "auto" file.
    blob: Option<gix::ObjectId>,
    repo: Arc<gix::ThreadSafeRepository>,
}

impl std::fmt::Debug for Clean {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Clean({:?}, {:?})", self.digest, self.blob)
    }
}

impl PartialEq for Clean {
    fn eq(&self, other: &Clean) -> bool {
        (self.digest, self.blob) == (other.digest, other.blob)
    }
}

impl Eq for Clean {}

impl Clean {
    /// Folded into the hash cache's stamp, so a changed rule (a new `.gitattributes` line,
    /// `core.autocrlf` switched) hashes the untouched file again.
    pub fn rule_tag(&self) -> u64 {
        self.digest as u64 + 1
    }

    /// The bytes `git add` would store for `data` (the working file): CRLF turned into LF
    /// where the rule says so; `None` when they are the same.
    pub fn apply(&self, data: &[u8]) -> std::io::Result<Option<Vec<u8>>> {
        let mut buf = Vec::new();
        let index_object: &mut eol::convert_to_git::IndexObjectFn<'_> = &mut |out| {
            let Some(id) = self.blob else { return Ok(None) };
            Ok(read_blob(&self.repo, id).map(|b| {
                *out = b;
            }))
        };
        let opts = eol::convert_to_git::Options { round_trip_check: None, config: eol::Configuration::default() };
        let changed = eol::convert_to_git(data, self.digest, &mut buf, index_object, opts)
            .map_err(|e| std::io::Error::other(format!("line-ending conversion failed: {e}")))?;
        Ok(changed.then_some(buf))
    }
}

thread_local! {
    /// One thread-local repository per hashing thread: opening one per file would copy the
    /// configuration 50,000 times.
    static LOCAL: std::cell::RefCell<Option<(usize, gix::Repository)>> = const { std::cell::RefCell::new(None) };
}

fn read_blob(repo: &Arc<gix::ThreadSafeRepository>, id: gix::ObjectId) -> Option<Vec<u8>> {
    let key = Arc::as_ptr(repo) as usize;
    LOCAL.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.as_ref().is_none_or(|(k, _)| *k != key) {
            *cell = Some((key, repo.to_thread_local()));
        }
        let (_, r) = cell.as_ref()?;
        let obj = r.find_object(id).ok()?;
        (obj.kind == gix::object::Kind::Blob).then(|| obj.data.clone())
    })
}

/// One index record under `source`: its mode and path relative to `source`.
pub struct Tracked {
    pub mode: gix::index::entry::Mode,
    pub path: String,
    pub blob: gix::ObjectId,
}

impl Repo {
    /// The work tree holding `source`, if any. A bare repository or a `.git` folder is none.
    pub fn open(source: &Path) -> Option<Repo> {
        let shared = Arc::new(gix::ThreadSafeRepository::discover(source).ok()?);
        let repo = shared.to_thread_local();
        let top = repo.workdir()?;
        let (top, at) = (real(top), real(source));
        let rel = at.strip_prefix(&top).ok()?;
        if rel.components().any(|c| c.as_os_str() == ".git") {
            return None;
        }
        let mut prefix = super::entry::release_path(rel);
        if !prefix.is_empty() {
            prefix.push('/');
        }
        Some(Repo { repo, shared, prefix })
    }

    /// This repository for another thread (`gix::Repository` is not `Sync`).
    pub fn for_another_thread(&self) -> Repo {
        Repo { repo: self.shared.to_thread_local(), shared: self.shared.clone(), prefix: self.prefix.clone() }
    }

    fn index(&self) -> anyhow::Result<gix::worktree::Index> {
        self.repo.index_or_empty().context("cannot read the git index")
    }

    /// Every index record under `source` (all stages; the caller dedups by path).
    pub fn tracked(&self) -> anyhow::Result<Vec<Tracked>> {
        let index = self.index()?;
        let mut out = Vec::new();
        for e in index.entries() {
            let path = e.path(&index);
            let Some(rest) = path.strip_prefix(self.prefix.as_bytes()) else { continue };
            out.push(Tracked { mode: e.mode, path: super::entry::utf8_name(rest)?.to_string(), blob: e.id });
        }
        Ok(out)
    }

    /// What `git ls-files --others --exclude-standard` lists under `source`: files git does
    /// not track and does not ignore, relative to `source`. Nested repositories are not
    /// entered, as git does not.
    pub fn untracked(&self) -> anyhow::Result<Vec<String>> {
        use gix::dir::{entry, walk::EmissionMode};
        let index = self.index()?;
        let options = self
            .repo
            .dirwalk_options()
            .context("cannot read the work tree's settings")?
            .emit_untracked(EmissionMode::Matching)
            .emit_ignored(None)
            .emit_tracked(false)
            .recurse_repositories(false)
            .emit_pruned(false);
        // `:(top,literal)` so the prefix is neither taken relative to bst's own working
        // directory nor read as a glob.
        let patterns: Vec<gix::bstr::BString> =
            if self.prefix.is_empty() { Vec::new() } else { vec![format!(":(top,literal){}", self.prefix).into()] };
        let mut collect = gix::dir::walk::delegate::Collect::default();
        let interrupt = std::sync::atomic::AtomicBool::new(false);
        self.repo.dirwalk(&index, patterns, &interrupt, options, &mut collect).context("cannot walk the work tree")?;
        let mut out = Vec::new();
        for (e, _) in collect.unorded_entries {
            if e.status != entry::Status::Untracked || !matches!(e.disk_kind, Some(entry::Kind::File | entry::Kind::Symlink)) {
                continue;
            }
            let Some(rest) = e.rela_path.strip_prefix(self.prefix.as_bytes()) else { continue };
            out.push(super::entry::utf8_name(rest)?.to_string());
        }
        Ok(out)
    }

    /// `core.symlinks` and `core.fileMode`, defaulting as git does on this platform. Off
    /// Unix the disk has no exec bits at all, so the index's mode counts even where the
    /// repository says `core.fileMode=true` (one made by Linux git, shared with WSL): git
    /// there would drop every `+x`, and a deploy would ship scripts that cannot run.
    pub fn checkout_flags(&self) -> (bool, bool) {
        let cfg = self.repo.config_snapshot();
        let symlinks = cfg.boolean("core.symlinks").unwrap_or(cfg!(unix));
        let file_mode = cfg!(unix) && cfg.boolean("core.fileMode").unwrap_or(true);
        (symlinks, file_mode)
    }

    /// The line-ending rule for each of `paths` (relative to `source`, with their index
    /// blob if tracked), `None` where git's clean filter never changes the file.
    pub fn clean_rules(&self, paths: &[(&str, Option<gix::ObjectId>)]) -> anyhow::Result<Vec<Option<Clean>>> {
        let index = self.index()?;
        let config = eol_config(&self.repo);
        let mut stack = self
            .repo
            .attributes_only(&index, gix::worktree::stack::state::attributes::Source::WorktreeThenIdMapping)
            .context("cannot read .gitattributes")?;
        let mut outcome = stack.selected_attribute_matches(["text", "eol", "crlf"]);
        let mut out = Vec::with_capacity(paths.len());
        for (path, blob) in paths {
            let full = format!("{}{path}", self.prefix);
            let platform = stack.at_entry(full.as_str(), Some(gix::index::entry::Mode::FILE)).context("cannot read .gitattributes")?;
            outcome.reset();
            platform.matching_attributes(&mut outcome);
            let attrs: Vec<_> = outcome.iter_selected().map(|m| m.assignment.state).collect();
            let digest = digest(&attrs, config);
            out.push((digest != AttributesDigest::Binary).then(|| Clean { digest, blob: *blob, repo: self.shared.clone() }));
        }
        Ok(out)
    }

    /// HEAD's commit and branch (`HEAD` when detached), and whether tracked files differ
    /// from HEAD, as `git status --untracked-files=no` would say. Before the first commit
    /// there is no commit and no branch.
    pub fn info(&self) -> GitInfo {
        let commit = self.repo.head_id().ok().map(|id| id.to_string());
        let branch = commit.as_ref().map(|_| match self.repo.head_name() {
            Ok(Some(name)) => name.shorten().to_string(),
            _ => "HEAD".to_string(),
        });
        GitInfo { commit, branch, dirty: self.repo.is_dirty().ok() }
    }
}

/// Canonical as `source` is (see `settings::resolve_target`), so a `source` reached through a
/// symlink still sits inside the work tree.
fn real(p: &Path) -> PathBuf {
    crate::platform::canonical(p).unwrap_or_else(|_| p.to_path_buf())
}

fn eol_config(repo: &gix::Repository) -> eol::Configuration {
    let cfg = repo.config_snapshot();
    let auto_crlf = match cfg.string("core.autocrlf").map(|v| v.to_string().to_ascii_lowercase()) {
        Some(v) if v == "input" => eol::AutoCrlf::Input,
        Some(v) if matches!(v.as_str(), "true" | "yes" | "on" | "1") => eol::AutoCrlf::Enabled,
        _ => eol::AutoCrlf::Disabled,
    };
    let eol = match cfg.string("core.eol").map(|v| v.to_string().to_ascii_lowercase()) {
        Some(v) if v == "lf" => Some(eol::Mode::Lf),
        Some(v) if v == "crlf" => Some(eol::Mode::CrLf),
        _ => None,
    };
    eol::Configuration { auto_crlf, eol }
}

/// git's `git_path_check_crlf` and friends, as gix-filter's pipeline computes them (that part
/// of gix-filter is private): `crlf` is the old spelling of `text`, `eol` implies `text`, and
/// with neither, `core.autocrlf` decides. `attrs` is `[text, eol, crlf]`.
fn digest(attrs: &[gix::attrs::StateRef<'_>], config: eol::Configuration) -> AttributesDigest {
    use gix::attrs::StateRef;
    let text_like = |s: &StateRef<'_>| match s {
        StateRef::Unspecified => None,
        StateRef::Set => Some(AttributesDigest::Text),
        StateRef::Unset => Some(AttributesDigest::Binary),
        StateRef::Value(v) if v.as_bstr() == "input" => Some(AttributesDigest::TextInput),
        StateRef::Value(v) if v.as_bstr() == "auto" => Some(AttributesDigest::TextAuto),
        StateRef::Value(_) => None,
    };
    let eol_of = |s: &StateRef<'_>| match s {
        StateRef::Value(v) if v.as_bstr() == "lf" => Some(eol::Mode::Lf),
        StateRef::Value(v) if v.as_bstr() == "crlf" => Some(eol::Mode::CrLf),
        _ => None,
    };
    let (text, eol_attr, crlf) = (&attrs[0], &attrs[1], &attrs[2]);
    let mut digest = text_like(crlf).or_else(|| text_like(text));
    if digest != Some(AttributesDigest::Binary) {
        let eol = eol_of(eol_attr);
        digest = match (digest, eol) {
            (Some(AttributesDigest::TextAuto), Some(eol::Mode::Lf)) => Some(AttributesDigest::TextAutoInput),
            (Some(AttributesDigest::TextAuto), Some(eol::Mode::CrLf)) => Some(AttributesDigest::TextAutoCrlf),
            (_, Some(eol::Mode::CrLf)) => Some(AttributesDigest::TextCrlf),
            (_, Some(eol::Mode::Lf)) => Some(AttributesDigest::TextInput),
            (d, None) => d,
        };
    }
    match digest {
        None => config.auto_crlf.into(),
        Some(AttributesDigest::Text) => config.to_eol().into(),
        Some(d) => d,
    }
}
