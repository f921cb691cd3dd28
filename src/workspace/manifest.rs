//! Delta redeploys. The server keeps a pristine copy of the last uploaded snapshot (never
//! built in) and its manifest; the client compares that manifest with the workspace and sends
//! only what changed plus the list of removals. Change detection is by content (SHA-256, the
//! CPU's SHA extensions make it ~2 GB/s), not by mtime: a CI checkout or a second laptop has
//! fresh mtimes for every file, and must still send only what differs. Hashes are cached
//! locally by path, size and mtime, so a redeploy hashes only the files that were touched.
//!
//! Size: about 380 lines of code; the rest is its tests (encode/decode round trips, the
//! racy-clean rule, a corrupt cache).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::Digest;

use super::cache::{cache_file, write_atomic_with};
use super::entry::{Entry, Kind};

/// First record of a manifest; an older format does not decode (one full upload follows).
const MAGIC: &[u8] = b"bst-manifest-2";

/// The first 128 bits of a SHA-256: collisions need 2^64 files, and half the memory and
/// manifest bytes of the full digest.
pub type Hash = [u8; 16];

/// One file of a manifest. Manifests are kept sorted by path (byte order, as `collect`
/// sorts entries), so comparing two of them, or a workspace with its hash cache, is a merge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// `f` file, `x` executable, `l` symlink.
    pub kind: char,
    pub size: u64,
    /// [`super::entry::Stat::stamp`]: the hash cache's proof that the file is untouched.
    /// The server keeps it opaque.
    pub stamp: u64,
    /// When the file last changed (ns), for the racy-clean rule; not encoded (0 once decoded).
    pub changed_ns: u64,
    /// Of the content, or of the link target.
    pub hash: Hash,
    pub path: String,
}

fn kind_char(k: &Kind) -> char {
    match k {
        Kind::File { exec: true } => 'x',
        Kind::File { exec: false } => 'f',
        Kind::Symlink => 'l',
    }
}

fn push_hex(out: &mut Vec<u8>, h: &Hash) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in h {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 15)]);
    }
}

fn parse_hex(s: &[u8]) -> Option<Hash> {
    if s.len() != 32 {
        return None;
    }
    let nib = |c: u8| -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    };
    let mut h = [0u8; 16];
    for (i, pair) in s.chunks(2).enumerate() {
        h[i] = nib(pair[0])? << 4 | nib(pair[1])?;
    }
    Some(h)
}

fn digest16(h: sha2::Sha256) -> Hash {
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize()[..16]);
    out
}

/// The hash of what ships, and its size when that is not the working file's (a converted
/// file).
fn hash_entry(path: &Path, symlink: bool, clean: Option<&super::git::Clean>) -> Option<(Hash, Option<u64>)> {
    let mut h = sha2::Sha256::new();
    if symlink {
        // The target exactly as it ships (see `link_target`): what the server's copy hashes to.
        let target = super::entry::link_target(path).ok()?;
        #[cfg(unix)]
        h.update(std::os::unix::ffi::OsStrExt::as_bytes(target.as_os_str()));
        #[cfg(not(unix))]
        h.update(target.to_string_lossy().as_bytes());
    } else if let Some(clean) = clean {
        let data = super::entry::shipped_bytes(path, clean).ok()?;
        h.update(&data);
        return Some((digest16(h), Some(data.len() as u64)));
    } else {
        let mut f = std::fs::File::open(path).ok()?;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => h.update(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
    }
    Some((digest16(h), None))
}

/// The workspace's manifest, in entry order. Entries that vanished since listing are skipped
/// (the upload would fail on them anyway). Files whose size and mtime match `cache` are not
/// read again; the others are hashed on all cores.
pub fn local_manifest(source: &Path, entries: &[Entry], cache: &mut HashCache) -> Vec<Record> {
    let cached = std::mem::take(&mut cache.recs);
    let mut at = 0;
    let mut hits = 0;
    // `None`: vanished; `Some((record, false))`: still to hash.
    let mut recs: Vec<Option<(Record, bool)>> = entries
        .iter()
        .map(|e| {
            let st = match e.stat {
                Some(st) => st,
                None => super::entry::stat_of(&std::fs::symlink_metadata(source.join(&e.path)).ok()?)?,
            };
            let (size, stamp) = (st.size, st.stamp);
            let kind = kind_char(&e.kind);
            // Both sides are sorted by path: a merge, not 50,000 hash lookups.
            while cached.get(at).is_some_and(|c| c.path < e.path) {
                at += 1;
            }
            // A converted file's record holds the converted size; its stamp covers the
            // working file's size and the rule instead (see `listing::from_git`).
            let hit = cached
                .get(at)
                .filter(|c| {
                    c.path == e.path && (e.clean.is_some() || c.size == size) && c.stamp == stamp && (c.kind == 'l') == (kind == 'l')
                })
                .map(|c| (c.hash, c.size));
            hits += usize::from(hit.is_some());
            let changed_ns = st.changed_ns;
            let (hash, size) = hit.unwrap_or(([0; 16], size));
            Some((Record { kind, size, stamp, changed_ns, hash, path: e.path.clone() }, hit.is_some()))
        })
        .collect();
    let misses: Vec<usize> = recs.iter().enumerate().filter(|(_, r)| r.as_ref().is_some_and(|(_, known)| !known)).map(|(i, _)| i).collect();
    // Nothing to write back when every cached record was used once and nothing was hashed.
    cache.changed = !misses.is_empty() || hits != cached.len();
    drop(cached);
    if !misses.is_empty() {
        let hashed = super::entry::par_filter_map(&misses, |&i| {
            let (r, _) = recs[i].as_ref().expect("a miss has a record");
            Some((i, hash_entry(&source.join(&r.path), r.kind == 'l', entries[i].clean.as_ref())))
        });
        for (i, h) in hashed {
            match h {
                Some((h, shipped)) => {
                    let r = &mut recs[i].as_mut().expect("a miss has a record").0;
                    r.hash = h;
                    r.size = shipped.unwrap_or(r.size);
                }
                None => recs[i] = None,
            }
        }
    }
    recs.into_iter().flatten().map(|(r, _)| r).collect()
}

/// How many of `entries` ship other bytes than the working file's (git's line-ending
/// conversion only ever shortens a file). `local` is `local_manifest(entries)`.
pub fn normalized(entries: &[Entry], local: &[Record]) -> usize {
    let mut at = 0;
    let mut n = 0;
    for r in local {
        while entries.get(at).is_some_and(|e| e.path < r.path) {
            at += 1;
        }
        if let Some(e) = entries.get(at).filter(|e| e.path == r.path && e.clean.is_some()) {
            n += usize::from(e.stat.is_some_and(|st| st.size != r.size));
        }
    }
    n
}

/// Content hashes of workspace files by path, valid while size and mtime (ns) are unchanged;
/// git's index works the same way. Kept in the user's cache directory, one file per source,
/// in the manifest format.
#[derive(Debug, Default)]
pub struct HashCache {
    file: Option<PathBuf>,
    /// Sorted by path (see [`decode`]); handed over to [`local_manifest`].
    recs: Vec<Record>,
    /// The workspace's manifest differs from what the file holds.
    changed: bool,
}

impl HashCache {
    /// The cache for `source`; empty (and not saved) when there is no cache directory.
    pub fn open(source: &Path) -> HashCache {
        let canon = std::fs::canonicalize(source).unwrap_or_else(|_| source.to_path_buf());
        let file = cache_file("hashes", &canon.to_string_lossy());
        let recs = file.as_deref().and_then(|f| decode(&std::fs::read(f).ok()?)).unwrap_or_default();
        HashCache { file, recs, changed: true }
    }

    /// What to write back, if anything changed: the workspace's manifest (`encoded`) without
    /// the files modified in the last two seconds. Another edit within the same mtime tick
    /// would otherwise keep its old hash ("racily clean", as git calls it).
    pub fn pending(&self, local: &[Record], encoded: &Arc<Vec<u8>>) -> Option<(PathBuf, Arc<Vec<u8>>)> {
        let file = self.file.clone()?;
        if !self.changed {
            return None;
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let settled = |r: &&Record| now.saturating_sub(u128::from(r.changed_ns)) >= 2_000_000_000;
        if local.iter().all(|r| settled(&r)) {
            Some((file, encoded.clone()))
        } else {
            Some((file, Arc::new(encode_refs(&local.iter().filter(settled).collect::<Vec<_>>()))))
        }
    }

    /// [`pending`](Self::pending), written now: the tests' shortcut.
    #[cfg(all(test, unix))]
    pub fn save(&self, local: &[Record]) {
        if let Some((file, data)) = self.pending(local, &Arc::new(encode(local))) {
            super::cache::write_atomic(&file, &data);
        }
    }
}

/// The manifest this client last left on a target, by the generation it wrote there: when the
/// server still holds that generation, its manifest need not travel (50,000 files: megabytes).
#[derive(Debug, Clone)]
pub struct ManifestCache {
    file: Option<PathBuf>,
}

impl ManifestCache {
    pub fn for_target(identity: &str) -> ManifestCache {
        ManifestCache { file: cache_file("manifest", identity) }
    }

    /// The generation of the cached manifest, without reading the manifest itself.
    pub fn generation(&self) -> Option<String> {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(std::fs::File::open(self.file.as_ref()?).ok()?).read_line(&mut line).ok()?;
        line.strip_suffix('\n').map(str::to_string)
    }

    /// `(generation, records)` if there is a readable cache.
    pub fn load(&self) -> Option<(String, Vec<Record>)> {
        let data = std::fs::read(self.file.as_ref()?).ok()?;
        let nl = data.iter().position(|&b| b == b'\n')?;
        let generation = std::str::from_utf8(&data[..nl]).ok()?.to_string();
        Some((generation, decode(&data[nl + 1..])?))
    }

    /// Safe to write before the deploy has succeeded: a server that never got this generation
    /// never answers `MSAME` for it.
    pub fn save(&self, generation: &str, manifest: &[u8]) {
        let Some(file) = &self.file else { return };
        write_atomic_with(file, &mut |w| {
            w.write_all(generation.as_bytes())?;
            w.write_all(b"\n")?;
            w.write_all(manifest)
        });
    }
}

/// NUL-terminated records `kind\tsize\tmtime\thash\tpath` after a magic record: any path
/// survives.
pub fn encode(records: &[Record]) -> Vec<u8> {
    encode_refs(&records.iter().collect::<Vec<_>>())
}

fn encode_refs(records: &[&Record]) -> Vec<u8> {
    let mut out = Vec::with_capacity(records.len() * 100);
    out.extend_from_slice(MAGIC);
    out.push(0);
    for r in records {
        push_record(&mut out, r.kind, r.size, r.stamp, &r.hash, &r.path);
    }
    out
}

fn push_record(out: &mut Vec<u8>, kind: char, size: u64, stamp: u64, hash: &Hash, path: &str) {
    use std::io::Write;
    let _ = write!(out, "{kind}\t{size}\t{stamp}\t");
    push_hex(out, hash);
    out.push(b'\t');
    out.extend_from_slice(path.as_bytes());
    out.push(0);
}

/// The records a delta deploy appends to the server's manifest: the changed ones, and a `-`
/// record per removed path. The server only appends (O(change)); [`decode`] replays them.
pub fn encode_patch(changed: &[&Record], removed: &[String]) -> Vec<u8> {
    let mut out = Vec::with_capacity((changed.len() + removed.len()) * 100);
    for r in changed {
        push_record(&mut out, r.kind, r.size, r.stamp, &r.hash, &r.path);
    }
    for p in removed {
        push_record(&mut out, '-', 0, 0, &[0; 16], p);
    }
    out
}

fn parse_record(rec: &[u8]) -> Option<Record> {
    let mut f = rec.splitn(5, |b| *b == b'\t');
    let kind = match f.next()? {
        [k @ (b'f' | b'x' | b'l' | b'-')] => char::from(*k),
        _ => return None,
    };
    let num = |s: &[u8]| std::str::from_utf8(s).ok()?.parse::<u64>().ok();
    let size = num(f.next()?)?;
    let stamp = num(f.next()?)?;
    let hash = parse_hex(f.next()?)?;
    let path = std::str::from_utf8(f.next()?).ok()?;
    (!path.is_empty()).then(|| Record { kind, size, stamp, changed_ns: 0, hash, path: path.to_string() })
}

/// A manifest, sorted by path, with any appended patches replayed: a later record for a path
/// replaces the earlier one, a `-` record removes it.
pub fn decode(data: &[u8]) -> Option<Vec<Record>> {
    let mut recs = data.split(|b| *b == 0).filter(|r| !r.is_empty());
    if recs.next()? != MAGIC {
        return None;
    }
    let mut out: Vec<Record> = Vec::new();
    // What bst writes is sorted and has no removals; only patches need the replay.
    let mut replay = false;
    for rec in recs {
        let r = parse_record(rec)?;
        replay |= r.kind == '-' || out.last().is_some_and(|last| last.path >= r.path);
        out.push(r);
    }
    if replay {
        // Stable: records of one path stay in the order they were appended.
        out.sort_by(|a, b| a.path.cmp(&b.path));
        let mut kept: Vec<Record> = Vec::with_capacity(out.len());
        for r in out {
            if kept.last().is_some_and(|last| last.path == r.path) {
                kept.pop();
            }
            kept.push(r);
        }
        kept.retain(|r| r.kind != '-');
        out = kept;
    }
    Some(out)
}

#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Paths to send (new or changed).
    pub send: Vec<String>,
    /// Paths the server must delete from the pristine copy.
    pub remove: Vec<String>,
}

/// What to send and remove so that `remote` becomes `local`: a merge of two manifests sorted
/// by path (sorted here if they are not).
pub fn plan(local: &[Record], remote: &[Record]) -> Plan {
    fn sorted(recs: &[Record]) -> Vec<&Record> {
        let mut v: Vec<&Record> = recs.iter().collect();
        if !v.is_sorted_by(|a, b| a.path < b.path) {
            v.sort_by(|a, b| a.path.cmp(&b.path));
        }
        v
    }
    let (local, remote) = (sorted(local), sorted(remote));
    let mut plan = Plan::default();
    let (mut i, mut j) = (0, 0);
    while i < local.len() || j < remote.len() {
        match (local.get(i), remote.get(j)) {
            (Some(l), Some(r)) if l.path == r.path => {
                if l.kind != r.kind || l.size != r.size || l.hash != r.hash {
                    plan.send.push(l.path.clone());
                }
                i += 1;
                j += 1;
            }
            (Some(l), r) if r.is_none_or(|r| l.path < r.path) => {
                plan.send.push(l.path.clone());
                i += 1;
            }
            (_, Some(r)) => {
                plan.remove.push(r.path.clone());
                j += 1;
            }
            (_, None) => unreachable!("the loop runs while one side has records"),
        }
    }
    plan
}

/// NUL-separated paths for `xargs -0`.
pub fn encode_paths(paths: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in paths {
        out.extend_from_slice(p.as_bytes());
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(unix)]
    use crate::workspace::cache::hex16;

    /// `t` stands in for the content: same `t`, same hash.
    fn r(kind: char, size: u64, t: u64, p: &str) -> Record {
        Record { kind, size, stamp: t * 7, changed_ns: 0, hash: u128::from(t).to_be_bytes(), path: p.into() }
    }

    #[test]
    fn manifest_round_trips_any_path() {
        let m = vec![r('f', 1, 2, "a b/it's\ttab"), r('l', 5, 3, "link"), r('x', 0, 1_700_000_000_123_456_789, "run.sh")];
        assert_eq!(decode(&encode(&m)), Some(m.clone()));
        assert_eq!(decode(b"bst-manifest-2\0q\t1\t2\t00000000000000000000000000000000\tp\0"), None);
        assert_eq!(decode(b"bst-manifest-2\0f\t1\t2\t0000000000000000000000000000000g\tp\0"), None);
        assert_eq!(decode(b"bst-manifest-2\0"), Some(vec![]));
        // The mtime-only format of earlier versions: not trusted, a full upload follows.
        assert_eq!(decode(b"f\t1\t2\tp\0"), None);
        // Patches appended to a manifest replay in order, and the result is sorted.
        let mut grown = encode(&m);
        let edited = r('f', 9, 9, "run.sh");
        grown.extend(encode_patch(&[&edited, &r('f', 1, 1, "new")], &["link".to_string(), "never-there".to_string()]));
        grown.extend(encode_patch(&[&r('l', 5, 3, "link"), &r('f', 2, 2, "0-first")], &["new".to_string()]));
        assert_eq!(decode(&grown), Some(vec![r('f', 2, 2, "0-first"), m[0].clone(), m[1].clone(), edited]));
        // Records out of order (another writer) are sorted too.
        let unsorted = encode(&[m[2].clone(), m[0].clone()]);
        assert_eq!(decode(&unsorted), Some(vec![m[0].clone(), m[2].clone()]));
    }

    #[test]
    fn plan_sends_changes_and_lists_removals() {
        let remote =
            vec![r('f', 1, 10, "same"), r('f', 1, 10, "edited"), r('f', 1, 10, "chmod"), r('f', 1, 10, "gone"), r('f', 1, 10, "d/x")];
        let local = vec![r('f', 1, 10, "same"), r('f', 1, 11, "edited"), r('x', 1, 10, "chmod"), r('f', 2, 5, "new"), r('l', 1, 10, "d")];
        let p = plan(&local, &remote);
        assert_eq!(p.send, vec!["chmod", "d", "edited", "new"]);
        assert_eq!(p.remove, vec!["d/x", "gone"]);
        assert_eq!(plan(&[], &remote[..2]).remove, vec!["edited", "same"]);
        assert_eq!(plan(&local[..2], &[]).send, vec!["edited", "same"]);
        // A new mtime on the same content (a CI checkout, another laptop) sends nothing.
        let mut touched = remote[0].clone();
        touched.stamp += 1;
        assert!(plan(&[touched], &remote[..1]).send.is_empty());
    }

    /// The hash cache kept in `file`, as a new deploy would open it.
    #[cfg(unix)]
    fn cache_at(file: &Path) -> HashCache {
        HashCache {
            file: Some(file.to_path_buf()),
            recs: std::fs::read(file).ok().and_then(|d| decode(&d)).unwrap_or_default(),
            changed: true,
        }
    }

    #[cfg(unix)]
    #[test]
    fn hashes_are_cached_by_size_and_mtime_and_the_cache_follows_the_workspace() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("a"), "one").unwrap();
        std::fs::write(src.join("b"), "two").unwrap();
        // Old enough to be cached (see `pending`): neither mtime nor ctime within 2 s of the
        // cache write. Only the clock can age a ctime.
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        for f in ["a", "b"] {
            std::fs::File::options().write(true).open(src.join(f)).unwrap().set_modified(old).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(2100));
        std::os::unix::fs::symlink("a", src.join("l")).unwrap();
        let entries = vec![
            Entry { path: "a".into(), kind: Kind::File { exec: false }, stat: None, clean: None },
            Entry { path: "b".into(), kind: Kind::File { exec: false }, stat: None, clean: None },
            Entry { path: "l".into(), kind: Kind::Symlink, stat: None, clean: None },
        ];
        let file = d.path().join("cache");
        let open = || cache_at(&file);
        let mut c = open();
        let m1 = local_manifest(&src, &entries, &mut c);
        assert_eq!(m1[0].hash, digest16(sha2::Sha256::new_with_prefix(b"one")));
        assert_eq!(m1[2].hash, digest16(sha2::Sha256::new_with_prefix(b"a")));
        c.save(&m1);
        let text = String::from_utf8(std::fs::read(&file).unwrap()).unwrap();
        assert!(text.contains("\ta\0") && text.contains("\tb\0"), "{text:?}");
        // Nothing new: the file is not written again (the link is too new to be cached, and
        // is hashed again each time until it settles).
        let mut c = open();
        assert_eq!(local_manifest(&src, &entries, &mut c), m1);
        assert!(c.changed, "the unsettled link was not in the cache");
        let mut c = open();
        assert_eq!(local_manifest(&src, &entries[..2], &mut c), m1[..2]);
        assert!(!c.changed, "an unchanged workspace rewrites its hash cache");
        // A cached hash is trusted while size and mtime hold: prove it by lying in the cache.
        let lie = text.replace(&hex16(&m1[1].hash), "ffffffffffffffffffffffffffffffff");
        std::fs::write(&file, lie).unwrap();
        let mut c = open();
        assert_eq!(local_manifest(&src, &entries, &mut c)[1].hash, [0xff; 16]);
        // ... and not once the mtime moves.
        std::fs::write(src.join("b"), "two").unwrap();
        let mut c = open();
        assert_eq!(local_manifest(&src, &entries, &mut c)[1].hash, m1[1].hash);
    }

    /// `touch -d`, `cp -p`, `rsync -a` and `tar -x` put the old mtime back on new content of
    /// the same size: the ctime still moves, and a file renamed over it has another inode.
    #[cfg(unix)]
    #[test]
    fn new_content_under_a_restored_mtime_is_hashed_again() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        let set_old = |f: &str| std::fs::File::options().write(true).open(src.join(f)).unwrap().set_modified(old).unwrap();
        std::fs::write(src.join("a"), "one").unwrap();
        std::fs::write(src.join("b"), "bee").unwrap();
        set_old("a");
        set_old("b");
        std::thread::sleep(std::time::Duration::from_millis(2100));
        let entries = vec![
            Entry { path: "a".into(), kind: Kind::File { exec: false }, stat: None, clean: None },
            Entry { path: "b".into(), kind: Kind::File { exec: false }, stat: None, clean: None },
        ];
        let file = d.path().join("cache");
        let open = || cache_at(&file);
        let mut c = open();
        let m1 = local_manifest(&src, &entries, &mut c);
        c.save(&m1);
        assert_eq!(open().recs.len(), 2, "both files were settled and cached");
        // In place, same size, mtime restored.
        std::fs::write(src.join("a"), "two").unwrap();
        set_old("a");
        // Renamed over, same size, mtime restored (what `cp -p` + `mv` or rsync do).
        std::fs::write(src.join("b.new"), "BEE").unwrap();
        std::fs::rename(src.join("b.new"), src.join("b")).unwrap();
        set_old("b");
        let mut c = open();
        let m2 = local_manifest(&src, &entries, &mut c);
        assert_eq!(m2[0].hash, digest16(sha2::Sha256::new_with_prefix(b"two")));
        assert_eq!(m2[1].hash, digest16(sha2::Sha256::new_with_prefix(b"BEE")));
        // Changed just now: racily clean, so not cached until it settles.
        c.save(&m2);
        assert!(open().recs.is_empty(), "files changed within the clock's granularity were cached");
    }
}
