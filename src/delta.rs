//! Delta redeploys. The server keeps a pristine copy of the last uploaded snapshot (never
//! built in) and its manifest; the client compares that manifest with the workspace and sends
//! only what changed plus the list of removals. Change detection is rsync's quick check (kind,
//! size, mtime) but at nanosecond precision, so "same size, same second" edits are not missed.

use std::collections::HashMap;
use std::path::Path;

use crate::snapshot::{Entry, Kind};

/// Reserved root entry of an upload: bst's own files travel in the same tar stream.
pub const UPLOAD_DIR: &str = ".bst-upload";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// `f` file, `x` executable, `l` symlink.
    pub kind: char,
    pub size: u64,
    pub mtime_ns: u128,
    pub path: String,
}

fn kind_char(k: &Kind) -> char {
    match k {
        Kind::File { exec: true } => 'x',
        Kind::File { exec: false } => 'f',
        Kind::Symlink => 'l',
    }
}

/// The workspace's manifest, in entry order. Entries that vanished since listing are skipped
/// (the upload would fail on them anyway).
pub fn local_manifest(source: &Path, entries: &[Entry]) -> Vec<Record> {
    entries
        .iter()
        .filter_map(|e| {
            let md = std::fs::symlink_metadata(source.join(&e.path)).ok()?;
            let mtime_ns = md.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos();
            Some(Record { kind: kind_char(&e.kind), size: md.len(), mtime_ns, path: e.path.clone() })
        })
        .collect()
}

/// NUL-terminated records `kind\tsize\tmtime\tpath`: any path survives.
pub fn encode(records: &[Record]) -> Vec<u8> {
    let mut out = Vec::with_capacity(records.len() * 64);
    for r in records {
        out.extend_from_slice(format!("{}\t{}\t{}\t", r.kind, r.size, r.mtime_ns).as_bytes());
        out.extend_from_slice(r.path.as_bytes());
        out.push(0);
    }
    out
}

pub fn decode(data: &[u8]) -> Option<Vec<Record>> {
    let mut out = Vec::new();
    for rec in data.split(|b| *b == 0).filter(|r| !r.is_empty()) {
        let text = std::str::from_utf8(rec).ok()?;
        let mut f = text.splitn(4, '\t');
        let kind = f.next()?.chars().next()?;
        let size = f.next()?.parse().ok()?;
        let mtime_ns = f.next()?.parse().ok()?;
        let path = f.next()?.to_string();
        if !matches!(kind, 'f' | 'x' | 'l') || path.is_empty() {
            return None;
        }
        out.push(Record { kind, size, mtime_ns, path });
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

pub fn plan(local: &[Record], remote: &[Record]) -> Plan {
    let known: HashMap<&str, &Record> = remote.iter().map(|r| (r.path.as_str(), r)).collect();
    let here: std::collections::HashSet<&str> = local.iter().map(|r| r.path.as_str()).collect();
    let send = local
        .iter()
        .filter(|l| known.get(l.path.as_str()).is_none_or(|r| r.kind != l.kind || r.size != l.size || r.mtime_ns != l.mtime_ns))
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

    fn r(kind: char, size: u64, t: u128, p: &str) -> Record {
        Record { kind, size, mtime_ns: t, path: p.into() }
    }

    #[test]
    fn manifest_round_trips_any_path() {
        let m = vec![r('f', 1, 2, "a b/it's\ttab"), r('x', 0, 1_700_000_000_123_456_789, "run.sh"), r('l', 5, 3, "link")];
        assert_eq!(decode(&encode(&m)), Some(m));
        assert_eq!(decode(b"q\t1\t2\tp\0"), None);
        assert_eq!(decode(b""), Some(vec![]));
    }

    #[test]
    fn plan_sends_changes_and_lists_removals() {
        let remote =
            vec![r('f', 1, 10, "same"), r('f', 1, 10, "edited"), r('f', 1, 10, "chmod"), r('f', 1, 10, "gone"), r('f', 1, 10, "d/x")];
        let local = vec![r('f', 1, 10, "same"), r('f', 1, 11, "edited"), r('x', 1, 10, "chmod"), r('f', 2, 5, "new"), r('l', 1, 10, "d")];
        let p = plan(&local, &remote);
        assert_eq!(p.send, vec!["edited", "chmod", "new", "d"]);
        assert_eq!(p.remove, vec!["gone", "d/x"]);
    }
}
