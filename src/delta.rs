//! Delta redeploys. The server keeps a pristine copy of the last uploaded snapshot (never
//! built in) and its manifest; the client compares that manifest with the workspace and sends
//! only what changed plus the list of removals. Change detection is by content (SHA-256, the
//! CPU's SHA extensions make it ~2 GB/s), not by mtime: a CI checkout or a second laptop has
//! fresh mtimes for every file, and must still send only what differs. Hashes are cached
//! locally by path, size and mtime, so a redeploy hashes only the files that were touched.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::Digest;

use crate::snapshot::{Entry, Kind};

/// Reserved root entry of an upload: bst's own files travel in the same tar stream.
pub const UPLOAD_DIR: &str = ".bst-upload";

/// The last entry of every upload. The stream is concatenated gzip members, and GNU tar
/// accepts an archive cut at an entry boundary, so only this proves the stream was complete.
pub const COMPLETE_MARKER: &str = ".bst-upload/complete";

/// First record of a manifest; an older format does not decode (one full upload follows).
const MAGIC: &[u8] = b"bst-manifest-2";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// `f` file, `x` executable, `l` symlink.
    pub kind: char,
    pub size: u64,
    pub mtime_ns: u128,
    /// Hex SHA-256 (first 128 bits) of the content, or of the link target.
    pub hash: String,
    pub path: String,
}

fn kind_char(k: &Kind) -> char {
    match k {
        Kind::File { exec: true } => 'x',
        Kind::File { exec: false } => 'f',
        Kind::Symlink => 'l',
    }
}

fn hex16(d: &[u8]) -> String {
    d.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

fn hash_entry(path: &Path, symlink: bool) -> Option<String> {
    let mut h = sha2::Sha256::new();
    if symlink {
        h.update(std::fs::read_link(path).ok()?.to_string_lossy().replace('\\', "/").as_bytes());
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
    Some(hex16(&h.finalize()))
}

/// The workspace's manifest, in entry order. Entries that vanished since listing are skipped
/// (the upload would fail on them anyway). Files whose size and mtime match `cache` are not
/// read again; the others are hashed on all cores.
pub fn local_manifest(source: &Path, entries: &[Entry], cache: &mut HashCache) -> Vec<Record> {
    let mut recs: Vec<Option<Record>> = entries
        .iter()
        .map(|e| {
            let (size, mtime_ns) = match e.stat {
                Some(st) => st,
                None => {
                    let md = std::fs::symlink_metadata(source.join(&e.path)).ok()?;
                    (md.len(), md.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos())
                }
            };
            let hash = cache.get(&e.path, size, mtime_ns).unwrap_or_default();
            Some(Record { kind: kind_char(&e.kind), size, mtime_ns, hash, path: e.path.clone() })
        })
        .collect();
    let misses: Vec<usize> =
        recs.iter().enumerate().filter(|(_, r)| r.as_ref().is_some_and(|r| r.hash.is_empty())).map(|(i, _)| i).collect();
    if !misses.is_empty() {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 8);
        let per = misses.len().div_ceil(threads);
        let hashed: Vec<(usize, Option<String>)> = std::thread::scope(|scope| {
            let recs = &recs;
            let handles: Vec<_> = misses
                .chunks(per)
                .map(|chunk| {
                    scope.spawn(move || {
                        chunk
                            .iter()
                            .map(|&i| {
                                let r = recs[i].as_ref().expect("a miss has a record");
                                (i, hash_entry(&source.join(&r.path), r.kind == 'l'))
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
        });
        for (i, h) in hashed {
            match h {
                Some(h) => {
                    let r = recs[i].as_mut().expect("a miss has a record");
                    cache.put(&r.path, r.size, r.mtime_ns, &h);
                    r.hash = h;
                }
                None => recs[i] = None,
            }
        }
    }
    recs.into_iter().flatten().collect()
}

/// Content hashes of workspace files by path, valid while size and mtime (ns) are unchanged;
/// git's index works the same way. Kept in the user's cache directory, one file per source.
#[derive(Debug, Default)]
pub struct HashCache {
    file: Option<PathBuf>,
    map: HashMap<String, (u64, u128, String)>,
    used: HashMap<String, (u64, u128, String)>,
}

impl HashCache {
    /// The cache for `source`; empty (and not saved) when there is no cache directory.
    pub fn open(source: &Path) -> HashCache {
        let file = cache_dir().map(|d| {
            let canon = std::fs::canonicalize(source).unwrap_or_else(|_| source.to_path_buf());
            d.join(format!("hashes-{}", hex16(&sha2::Sha256::digest(canon.to_string_lossy().as_bytes()))))
        });
        let map = file.as_deref().map(Self::open_file).unwrap_or_default();
        HashCache { file, map, used: HashMap::new() }
    }

    /// Streamed record by record: at 50,000 files the file is 5 MB, and holding it besides
    /// the map it fills showed in peak memory.
    fn open_file(file: &Path) -> HashMap<String, (u64, u128, String)> {
        use std::io::BufRead;
        let mut map = HashMap::new();
        let Ok(f) = std::fs::File::open(file) else { return map };
        for rec in std::io::BufReader::new(f).split(0) {
            let Ok(rec) = rec else { break };
            let Ok(text) = std::str::from_utf8(&rec) else { continue };
            let mut f = text.splitn(4, '\t');
            if let (Some(size), Some(mtime), Some(hash), Some(path)) = (f.next(), f.next(), f.next(), f.next()) {
                if let (Ok(size), Ok(mtime)) = (size.parse(), mtime.parse()) {
                    map.insert(path.to_string(), (size, mtime, hash.to_string()));
                }
            }
        }
        map
    }

    /// Moves the entry over to this run's set (memory: one copy per path, not two).
    fn get(&mut self, path: &str, size: u64, mtime_ns: u128) -> Option<String> {
        let (path, (s, m, h)) = self.map.remove_entry(path)?;
        (s == size && m == mtime_ns).then(|| {
            self.used.insert(path, (size, mtime_ns, h.clone()));
            h
        })
    }

    fn put(&mut self, path: &str, size: u64, mtime_ns: u128, hash: &str) {
        self.used.insert(path.to_string(), (size, mtime_ns, hash.to_string()));
    }

    /// Writes the entries of this run (so deleted files drop out), atomically. A file modified
    /// in the last two seconds is left out: another edit within the same mtime tick would
    /// otherwise keep its old hash ("racily clean", as git calls it).
    pub fn save(&self) {
        let Some(file) = &self.file else { return };
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        write_atomic_with(file, &mut |w| {
            for (path, (size, mtime, hash)) in &self.used {
                if now.saturating_sub(*mtime) >= 2_000_000_000 {
                    std::io::Write::write_fmt(w, format_args!("{size}\t{mtime}\t{hash}\t{path}\0"))?;
                }
            }
            Ok(())
        });
    }
}

/// The manifest this client last left on a target, by the generation it wrote there: when the
/// server still holds that generation, its manifest need not travel (50,000 files: megabytes).
pub struct ManifestCache {
    file: Option<PathBuf>,
}

impl ManifestCache {
    pub fn for_target(identity: &str) -> ManifestCache {
        ManifestCache { file: cache_dir().map(|d| d.join(format!("manifest-{}", hex16(&sha2::Sha256::digest(identity.as_bytes()))))) }
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

    pub fn save(&self, generation: &str, manifest: &[u8]) {
        let Some(file) = &self.file else { return };
        let mut data = Vec::with_capacity(generation.len() + 1 + manifest.len());
        data.extend_from_slice(generation.as_bytes());
        data.push(b'\n');
        data.extend_from_slice(manifest);
        write_atomic(file, &data);
    }
}

fn write_atomic(file: &Path, data: &[u8]) {
    write_atomic_with(file, &mut |w| w.write_all(data));
}

/// Writes through a buffer to a temp file renamed into place; failures leave no cache rather
/// than a broken one (it is only a cache).
fn write_atomic_with(file: &Path, fill: &mut dyn FnMut(&mut dyn std::io::Write) -> std::io::Result<()>) {
    let Some(dir) = file.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
    let written = std::fs::File::create(&tmp).and_then(|f| {
        let mut w = std::io::BufWriter::new(f);
        fill(&mut w)?;
        std::io::Write::flush(&mut w)
    });
    if written.is_err() || std::fs::rename(&tmp, file).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// `$BST_CACHE_DIR`, else the platform's cache directory, plus `bst`.
fn cache_dir() -> Option<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(d) = env("BST_CACHE_DIR") {
        return Some(d);
    }
    let base = if cfg!(windows) { env("LOCALAPPDATA") } else { env("XDG_CACHE_HOME").or_else(|| env("HOME").map(|h| h.join(".cache"))) };
    base.map(|b| b.join("bst"))
}

/// NUL-terminated records `kind\tsize\tmtime\thash\tpath` after a magic record: any path
/// survives.
pub fn encode(records: &[Record]) -> Vec<u8> {
    let mut out = Vec::with_capacity(records.len() * 100);
    out.extend_from_slice(MAGIC);
    out.push(0);
    for r in records {
        out.extend_from_slice(format!("{}\t{}\t{}\t{}\t", r.kind, r.size, r.mtime_ns, r.hash).as_bytes());
        out.extend_from_slice(r.path.as_bytes());
        out.push(0);
    }
    out
}

/// The records a delta deploy appends to the server's manifest: the changed ones, and a `-`
/// record per removed path. The server only appends (O(change)); [`decode`] replays them.
pub fn encode_patch(changed: &[&Record], removed: &[String]) -> Vec<u8> {
    let mut out = Vec::with_capacity((changed.len() + removed.len()) * 100);
    for r in changed {
        out.extend_from_slice(format!("{}\t{}\t{}\t{}\t", r.kind, r.size, r.mtime_ns, r.hash).as_bytes());
        out.extend_from_slice(r.path.as_bytes());
        out.push(0);
    }
    for p in removed {
        out.extend_from_slice(format!("-\t0\t0\t{}\t", "0".repeat(32)).as_bytes());
        out.extend_from_slice(p.as_bytes());
        out.push(0);
    }
    out
}

/// A manifest, with any appended patches replayed: a later record for a path replaces the
/// earlier one, a `-` record removes it.
pub fn decode(data: &[u8]) -> Option<Vec<Record>> {
    let mut recs = data.split(|b| *b == 0).filter(|r| !r.is_empty());
    if recs.next()? != MAGIC {
        return None;
    }
    let mut out: Vec<Option<Record>> = Vec::new();
    let mut at: HashMap<String, usize> = HashMap::new();
    for rec in recs {
        let text = std::str::from_utf8(rec).ok()?;
        let mut f = text.splitn(5, '\t');
        let kind = f.next()?.chars().next()?;
        let size = f.next()?.parse().ok()?;
        let mtime_ns = f.next()?.parse().ok()?;
        let hash = f.next()?.to_string();
        let path = f.next()?.to_string();
        if !matches!(kind, 'f' | 'x' | 'l' | '-') || path.is_empty() || hash.len() != 32 {
            return None;
        }
        if kind == '-' {
            if let Some(i) = at.remove(&path) {
                out[i] = None;
            }
            continue;
        }
        let r = Record { kind, size, mtime_ns, hash, path };
        match at.get(&r.path) {
            Some(&i) => out[i] = Some(r),
            None => {
                at.insert(r.path.clone(), out.len());
                out.push(Some(r));
            }
        }
    }
    Some(out.into_iter().flatten().collect())
}

#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Paths to send (new or changed).
    pub send: Vec<String>,
    /// Paths the server must delete from the pristine copy.
    pub remove: Vec<String>,
}

pub fn plan(local: &[Record], remote: &[Record]) -> Plan {
    let known: HashMap<&str, &Record> = remote.iter().map(|r| (r.path.as_str(), r)).collect();
    let here: std::collections::HashSet<&str> = local.iter().map(|r| r.path.as_str()).collect();
    let send = local
        .iter()
        .filter(|l| known.get(l.path.as_str()).is_none_or(|r| r.kind != l.kind || r.size != l.size || r.hash != l.hash))
        .map(|l| l.path.clone())
        .collect();
    let remove = remote.iter().filter(|r| !here.contains(r.path.as_str())).map(|r| r.path.clone()).collect();
    Plan { send, remove }
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

    /// `t` stands in for the content: same `t`, same hash.
    fn r(kind: char, size: u64, t: u128, p: &str) -> Record {
        Record { kind, size, mtime_ns: t * 7, hash: format!("{t:032x}"), path: p.into() }
    }

    #[test]
    fn manifest_round_trips_any_path() {
        let m = vec![r('f', 1, 2, "a b/it's\ttab"), r('x', 0, 1_700_000_000_123_456_789, "run.sh"), r('l', 5, 3, "link")];
        assert_eq!(decode(&encode(&m)), Some(m.clone()));
        assert_eq!(decode(b"bst-manifest-2\0q\t1\t2\t00000000000000000000000000000000\tp\0"), None);
        assert_eq!(decode(b"bst-manifest-2\0"), Some(vec![]));
        // The mtime-only format of earlier versions: not trusted, a full upload follows.
        assert_eq!(decode(b"f\t1\t2\tp\0"), None);
        // Patches appended to a manifest replay in order.
        let mut grown = encode(&m);
        let edited = r('f', 9, 9, "run.sh");
        grown.extend(encode_patch(&[&edited, &r('f', 1, 1, "new")], &["link".to_string(), "never-there".to_string()]));
        grown.extend(encode_patch(&[&r('l', 5, 3, "link")], &["new".to_string()]));
        assert_eq!(decode(&grown), Some(vec![m[0].clone(), edited, m[2].clone()]));
    }

    #[test]
    fn plan_sends_changes_and_lists_removals() {
        let remote =
            vec![r('f', 1, 10, "same"), r('f', 1, 10, "edited"), r('f', 1, 10, "chmod"), r('f', 1, 10, "gone"), r('f', 1, 10, "d/x")];
        let local = vec![r('f', 1, 10, "same"), r('f', 1, 11, "edited"), r('x', 1, 10, "chmod"), r('f', 2, 5, "new"), r('l', 1, 10, "d")];
        let p = plan(&local, &remote);
        assert_eq!(p.send, vec!["edited", "chmod", "new", "d"]);
        assert_eq!(p.remove, vec!["gone", "d/x"]);
        // A new mtime on the same content (a CI checkout, another laptop) sends nothing.
        let mut touched = remote[0].clone();
        touched.mtime_ns += 1_000_000_000;
        assert!(plan(&[touched], &remote[..1]).send.is_empty());
    }

    #[cfg(unix)]
    #[test]
    fn hashes_are_cached_by_size_and_mtime_and_the_cache_follows_the_workspace() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("a"), "one").unwrap();
        std::fs::write(src.join("b"), "two").unwrap();
        std::os::unix::fs::symlink("a", src.join("l")).unwrap();
        // Old enough to be cached (see `save`).
        for f in ["a", "b"] {
            let t = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
            std::fs::File::options().write(true).open(src.join(f)).unwrap().set_modified(t).unwrap();
        }
        let entries = vec![
            Entry { path: "a".into(), kind: Kind::File { exec: false }, stat: None },
            Entry { path: "b".into(), kind: Kind::File { exec: false }, stat: None },
            Entry { path: "l".into(), kind: Kind::Symlink, stat: None },
        ];
        let file = d.path().join("cache");
        let mut c = HashCache { file: Some(file.clone()), ..HashCache::default() };
        let m1 = local_manifest(&src, &entries, &mut c);
        assert_eq!(m1[0].hash, hex16(&sha2::Sha256::digest(b"one")));
        assert_eq!(m1[2].hash, hex16(&sha2::Sha256::digest(b"a")));
        c.save();
        let text = String::from_utf8(std::fs::read(&file).unwrap()).unwrap();
        assert!(text.contains("\ta\0") && text.contains("\tb\0"), "{text:?}");
        // A cached hash is trusted while size and mtime hold: prove it by lying in the cache.
        let lie = text.replace(&m1[1].hash, "ffffffffffffffffffffffffffffffff");
        std::fs::write(&file, lie).unwrap();
        let mut c = HashCache { file: Some(file.clone()), ..HashCache::default() };
        c.map = HashCache::open_file(&file);
        assert_eq!(local_manifest(&src, &entries, &mut c)[1].hash, "ffffffffffffffffffffffffffffffff");
        // ... and not once the mtime moves.
        std::fs::write(src.join("b"), "two").unwrap();
        let mut c = HashCache { file: Some(file.clone()), ..HashCache::default() };
        c.map = HashCache::open_file(&file);
        assert_eq!(local_manifest(&src, &entries, &mut c)[1].hash, m1[1].hash);
    }
}
