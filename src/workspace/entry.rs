//! One file of the workspace as bst ships it: its kind, mode and stat, its link target in
//! tar's `/` form, and the parallel map every per-file pass uses.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

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
    /// git's clean-side line-ending rule, where it may change the file: what ships is what
    /// `git add` would store (a CRLF checkout ships LF). `stat` then still describes the
    /// working file.
    pub clean: Option<super::git::Clean>,
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

/// An entry's size: from the listing's own `lstat`, else the disk now.
pub fn entry_size(source: &Path, e: &Entry) -> u64 {
    e.stat.map(|st| st.size).or_else(|| std::fs::symlink_metadata(source.join(&e.path)).ok().map(|m| m.len())).unwrap_or(0)
}

/// A converted file's bytes as they ship: read whole, as git does to convert it.
pub fn shipped_bytes(full: &Path, clean: &super::git::Clean) -> io::Result<Vec<u8>> {
    let data = std::fs::read(full)?;
    Ok(clean.apply(&data)?.unwrap_or(data))
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

/// A path bst must ship byte for byte or not at all: a name that is not UTF-8 is refused,
/// never dropped or mangled without a word.
pub(crate) fn utf8_name(raw: &[u8]) -> anyhow::Result<&str> {
    std::str::from_utf8(raw).map_err(|_| {
        crate::error::Error::Usage(format!(
            "cannot ship `{}`: its name is not valid UTF-8; rename it, or ignore it in .gitignore",
            String::from_utf8_lossy(raw).escape_debug()
        ))
        .into()
    })
}

/// A walked path as it goes into the tar: on Windows the walk yields `apps\api\x.ts`, and the
/// server must see `apps/api/x.ts`.
pub(crate) fn release_path(rel: &Path) -> String {
    posix(&rel.to_string_lossy())
}

fn posix(p: &str) -> String {
    p.replace('\\', "/")
}

pub(crate) fn entry_from_fs(source: &Path, path: &str) -> anyhow::Result<Option<Entry>> {
    let Ok(md) = std::fs::symlink_metadata(source.join(path)) else { return Ok(None) };
    let kind = if md.file_type().is_symlink() {
        Kind::Symlink
    } else if md.is_file() {
        Kind::File { exec: is_exec(&md) }
    } else {
        return Ok(None);
    };
    Ok(Some(Entry { path: path.to_string(), kind, stat: stat_of(&md), clean: None }))
}

#[cfg(unix)]
pub(crate) fn is_exec(md: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    md.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
pub(crate) fn is_exec(_: &std::fs::Metadata) -> bool {
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

pub(crate) fn mtime(md: &std::fs::Metadata) -> u64 {
    md.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workspace::tar::{stream_tar, Framing};

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
            Entry { path: release_path(Path::new(".env")), kind: Kind::Symlink, stat: None, clean: None },
            Entry { path: release_path(Path::new(r"apps\api\src\index.ts")), kind: Kind::File { exec: false }, stat: None, clean: None },
        ];
        let mut buf = Vec::new();
        stream_tar(
            d.path(),
            &entries,
            &[],
            &mut buf,
            crate::workspace::tar::Link { framing: Framing::Gzip(6), remembered: None, acked: &|| None },
            &|_, _| {},
        )
        .unwrap();
        let mut tar = tar::Archive::new(flate2::read::MultiGzDecoder::new(&buf[..]));
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
