//! The workspace listing: which files ship.
//!
//! The list comes from the repository when `source` is inside a work tree (tracked files plus
//! untracked ones not ignored; modes from the index, so a Windows checkout still ships
//! `chmod +x` scripts and symlinks; read by [`super::git`], no `git` process), else from a walk
//! honouring ignore files. `.git` never ships.

use std::path::Path;

use anyhow::{bail, Context};
use ignore::gitignore::{Gitignore, GitignoreBuilder};

use super::entry::{entry_from_fs, is_exec, par_filter_map, release_path, stat_of, Entry, Kind};
use super::git::{GitInfo, Repo, Tracked};

/// Outside a work tree (or before the first commit) all `None`.
pub fn git_info(source: &Path) -> GitInfo {
    Repo::open(source).map(|r| r.info()).unwrap_or_default()
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
pub const BST_OWNED: &[&str] = &[crate::layout::META_FILE, crate::layout::META_TMP, crate::layout::UPLOAD_DIR];

/// What decides the listing beyond git's own rules.
#[derive(Debug, Default, Clone)]
pub struct Rules {
    /// gitignore-style patterns excluded on top of `.gitignore`.
    pub exclude: Vec<String>,
    /// gitignore-style patterns that ship although [`super::withheld`] would hold them back.
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
    /// Paths held back by [`super::withheld`], with why; the user is told each one.
    pub withheld: Vec<(String, &'static str)>,
    /// Listed from a git work tree (else from a walk).
    pub git: bool,
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
    let repo = Repo::open(source);
    let git = repo.is_some();
    if !git && !rules.allow_no_git {
        return Err(not_git(source, "no work tree holds it"));
    }
    let (mut entries, untracked) = match &repo {
        Some(repo) => from_git(source, repo)?,
        None => (from_walk(source, &excluded)?, Vec::new()),
    };
    entries.retain(|e| keep(&e.path));
    if let Some(e) = entries.iter().find(|e| BST_OWNED.iter().any(|owned| under(&e.path, owned))) {
        bail!(crate::error::Error::Usage(format!(
            "cannot ship `{}`: bst writes that name into every release; rename it, or exclude it",
            e.path
        )));
    }
    let mut withheld = Vec::new();
    entries.retain(|e| {
        let why = super::withheld::reason(source, e).filter(|_| !included.matched_path_or_any_parents(&e.path, false).is_ignore());
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
fn from_git(source: &Path, repo: &Repo) -> anyhow::Result<(Vec<Entry>, Vec<String>)> {
    // The untracked listing walks the whole tree (0.25 s at 50,000 files): the tracked files
    // are stat'ed on the other cores meanwhile.
    let (symlinks, file_mode) = repo.checkout_flags();
    let checkout = Checkout { symlinks, file_mode };
    let walker = repo.for_another_thread();
    let (tracked, others) = std::thread::scope(|scope| {
        let others = scope.spawn(move || walker.untracked());
        let tracked = repo.tracked().map(|mut recs| {
            // git does not look beyond a symbolic link: a tracked `apps/web/x` whose `apps/web`
            // is now a link (or a file) is deleted in git's eyes, and reading it would read
            // through the link, outside the workspace.
            let beyond = links_among_parents(source, recs.iter().map(|t| t.path.as_str()));
            recs.retain(|t| !beyond.iter().any(|d| under(&t.path, d)));
            par_filter_map(&recs, |t| staged_entry(source, t, &checkout).map(|e| (e, t.blob)))
        });
        (tracked, others.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
    });
    let tracked = tracked?;
    let mut untracked = Vec::new();
    let mut out: Vec<(Entry, Option<gix::ObjectId>)> = tracked.into_iter().map(|(e, b)| (e, Some(b))).collect();
    for path in others? {
        if let Some(e) = entry_from_fs(source, &path)? {
            untracked.push(e.path.clone());
            out.push((e, None));
        }
    }
    // Only regular files are converted; a link checked out as a file holds its target.
    let is_file = |e: &Entry| matches!(e.kind, Kind::File { .. });
    let files: Vec<(&str, Option<gix::ObjectId>)> = out.iter().filter(|(e, _)| is_file(e)).map(|(e, b)| (e.path.as_str(), *b)).collect();
    let rules = repo.clean_rules(&files)?;
    for ((e, _), rule) in out.iter_mut().filter(|(e, _)| is_file(e)).zip(rules) {
        e.clean = rule;
        if let (Some(c), Some(st)) = (&e.clean, e.stat.as_mut()) {
            // The hash cache keys a converted file by its working copy's stat and the
            // rule: its cached size is the converted one.
            st.stamp = st.stamp.rotate_left(7) ^ st.size.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ c.rule_tag();
        }
    }
    Ok((out.into_iter().map(|(e, _)| e).collect(), untracked))
}

fn under(path: &str, dir: &str) -> bool {
    path == dir || path.strip_prefix(dir).is_some_and(|rest| rest.starts_with('/'))
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

/// One index record as an entry, if it ships. The kind is what is on disk
/// now (`lstat`), as `git add` would see it: a tracked file replaced by a link ships the
/// link, never the bytes behind it. The index only speaks for what the checkout cannot show
/// (links checked out as files, exec bits where `core.fileMode` is off).
fn staged_entry(source: &Path, t: &Tracked, checkout: &Checkout) -> Option<Entry> {
    use gix::index::entry::Mode;
    let (mode, path) = (t.mode, t.path.as_str());
    if !(mode == Mode::SYMLINK || mode == Mode::FILE || mode == Mode::FILE_EXECUTABLE) {
        return None; // submodules are not snapshotted; a sparse index's directories are not files
    }
    // Files deleted in the work tree do not ship: the work tree is the truth.
    let md = std::fs::symlink_metadata(source.join(path)).ok()?;
    let kind = if md.file_type().is_symlink() {
        Kind::Symlink
    } else if md.is_file() {
        if mode == Mode::SYMLINK && !checkout.symlinks {
            Kind::Symlink
        } else if checkout.file_mode {
            Kind::File { exec: is_exec(&md) }
        } else {
            Kind::File { exec: mode == Mode::FILE_EXECUTABLE }
        }
    } else {
        // A directory now: what is in it is listed as untracked. Anything else never ships.
        return None;
    };
    Some(Entry { path: path.to_string(), kind, stat: stat_of(&md), clean: None })
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

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[cfg(unix)]
    use crate::workspace::sh;

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
}
