//! The upload stream: a tar of the listed entries, as parallel 1 MiB gzip members (or bare
//! tar), each member at the level [`Pace`] picks for this link, or stored where the files are
//! already compressed.
//!
//! Size: about 400 lines of code, the rest its tests against GNU tar. The block pipeline,
//! its workers and the pacing share one state (the next block, the running ratio): split, they
//! would talk through a wider interface than the one stream they are.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use anyhow::{bail, Context};

use super::entry::{link_target, mtime, Entry, Kind};
use super::pace::Pace;
use crate::interrupt;

#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub files: u64,
    /// Uncompressed content bytes.
    pub bytes: u64,
    /// The gzip level that carried most of the snapshot (0: stored or bare tar).
    pub level: u32,
    /// The level the upload ended on: where the next upload to this host starts.
    pub last_level: u32,
    /// Level changes during the upload.
    pub switches: u32,
    /// The link's drain rate in bytes per second, when it was the bottleneck at some point.
    pub link_rate: Option<f64>,
    /// Bare tar only: compression would have delivered the snapshot clearly faster over the
    /// link as measured.
    pub gzip_would_win: bool,
    /// Raw snapshot bytes per second over the whole upload.
    pub delivered: Option<f64>,
    /// Gzip only: the upload ended at one of the fastest levels with the link keeping up.
    pub storing_may_win: bool,
    /// Bytes of the stream as written to the transport.
    pub wire: u64,
    /// How the pacing ended, for `-vv`: rates per level and the link's.
    pub pacing: Option<String>,
}

/// How the tar stream travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Gzip members, starting at this level; [`Pace`] picks each next block's level.
    Gzip(u32),
    /// Bare tar, for a link already measured to be faster than deflate: even stored gzip
    /// members cost the server a `gzip -d` (a CRC pass and one more pipe), 0.2 s per 60 MB.
    Tar,
}

/// Files bst adds to the stream after the snapshot (the manifest, removals). Shared: the
/// manifest of 50,000 files is 5 MB, already encoded once for the client's own cache.
pub type Extra = (String, std::sync::Arc<Vec<u8>>);

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
                let size = if let Some(clean) = &e.clean {
                    // Converted in memory, as git converts it: the size is known only then.
                    let data = super::entry::shipped_bytes(&full, clean).with_context(|| format!("cannot read {}", full.display()))?;
                    let size = data.len() as u64;
                    h.set_size(size);
                    tar.append_data(&mut h, &e.path, &data[..]).with_context(|| format!("cannot add {}", e.path))?;
                    progress(e, size);
                    size
                } else {
                    let f = File::open(&full).with_context(|| format!("cannot open {}", full.display()))?;
                    let size = md.len();
                    h.set_size(size);
                    // A file that changes while we read it must not corrupt the stream: send
                    // exactly `size` bytes, failing if it shrank.
                    let mut tick = |n: u64| progress(e, n);
                    let mut body = Exact { inner: f.take(size), left: size, tick: &mut tick };
                    tar.append_data(&mut h, &e.path, &mut body).with_context(|| format!("cannot add {}", e.path))?;
                    size
                };
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
    /// The level came from [`Pace`], not from the content being already compressed.
    adaptive: bool,
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

/// Bytes the peer has acknowledged on the connection so far, where the transport can tell.
pub type Acked<'a> = &'a dyn Fn() -> Option<u64>;

/// What the stream knows of the link before it starts.
pub struct Link<'a> {
    pub framing: Framing,
    /// What an earlier upload to this host measured, bytes per second: the drain rate, or
    /// for bare tar what the link carried when storing won.
    pub remembered: Option<f64>,
    pub acked: Acked<'a>,
}

/// The tar of `entries` (then `extra`), framed as `framing` says. Gzip members are
/// compressed on all cores while the caller's thread writes finished members, in order, to
/// `w` (the SSH channel): reading, compressing and the network overlap instead of taking
/// turns. Blocks of already-compressed files are stored, not deflated again, and the others
/// get the level [`Pace`] picks from what the compressors and `acked` show. Bare tar goes
/// through the same pipeline, so reading files still overlaps the writes, and is measured
/// the same way.
pub fn stream_tar(
    source: &Path,
    entries: &[Entry],
    extra: &[Extra],
    w: &mut dyn Write,
    link: Link<'_>,
    progress: &(dyn Fn(&Entry, u64) + Sync),
) -> anyhow::Result<Stats> {
    let Link { framing, remembered, acked } = link;
    use std::sync::mpsc::{sync_channel, Receiver};
    use std::sync::{Arc, Mutex};
    // Every core: at level 9 one core deflates ~20 MB/s, less than a LAN carries. More
    // than 8 would only cost memory (each worker holds two blocks).
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 8);
    let in_flight = workers + 2;
    let level = match framing {
        Framing::Gzip(level) => level,
        Framing::Tar => 0,
    };
    let shared_level = Arc::new(std::sync::atomic::AtomicU32::new(level));
    let mut pace = Pace::new(level, workers, remembered.filter(|_| framing != Framing::Tar));
    let (block_tx, block_rx) = sync_channel::<Block>(workers);
    /// A finished block: sequence, output, level, adaptive, raw size, seconds compressing.
    type Done = (u64, io::Result<Vec<u8>>, u32, bool, usize, f64);
    let (done_tx, done_rx) = sync_channel::<Done>(in_flight);
    let (token_tx, token_rx) = sync_channel::<()>(in_flight);
    for _ in 0..in_flight {
        let _ = token_tx.send(());
    }
    let block_rx: Arc<Mutex<Receiver<Block>>> = Arc::new(Mutex::new(block_rx));
    let producer_level = Arc::clone(&shared_level);
    std::thread::scope(|scope| {
        let producer = scope.spawn(move || {
            let mut bw = BlockWriter {
                tx: block_tx,
                tokens: token_rx,
                buf: Vec::with_capacity(BLOCK),
                seq: 0,
                level: producer_level,
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
                let started = std::time::Instant::now();
                let out = if framing == Framing::Tar {
                    Ok(block.data)
                } else {
                    // Stored output is the input plus 5 bytes per 64 KiB: sized so it never doubles.
                    let cap = if block.level == 0 { raw + raw / 8192 + 64 } else { raw / 2 + 64 };
                    let mut gz = flate2::write::GzEncoder::new(Vec::with_capacity(cap), flate2::Compression::new(block.level));
                    gz.write_all(&block.data).and_then(|()| gz.finish())
                };
                let secs = started.elapsed().as_secs_f64();
                if tx.send((block.seq, out, block.level, block.adaptive, raw, secs)).is_err() {
                    break;
                }
            });
        }
        drop(done_tx);
        let mut write_err: Option<anyhow::Error> = None;
        let mut next = 0u64;
        let mut waiting = std::collections::BTreeMap::new();
        let start = std::time::Instant::now();
        let (mut wire, mut blocked) = (0u64, 0.0f64);
        for (seq, out, lvl, adaptive, raw, secs) in done_rx.iter() {
            waiting.insert(seq, (out, lvl, adaptive, raw, secs));
            while let Some((out, lvl, adaptive, raw, secs)) = waiting.remove(&next) {
                let before = start.elapsed().as_secs_f64();
                let r = out.map_err(anyhow::Error::from).and_then(|bytes| {
                    w.write_all(&bytes)?;
                    Ok(bytes.len())
                });
                let n = match r {
                    Ok(n) => n,
                    Err(e) => {
                        write_err = Some(e);
                        break;
                    }
                };
                let now = start.elapsed().as_secs_f64();
                blocked += now - before;
                wire += n as u64;
                if adaptive && lvl != 0 {
                    pace.compressed(lvl, raw, n, secs);
                }
                let chosen = pace.sent(now, lvl, raw, n, (wire, acked(), blocked));
                if framing != Framing::Tar {
                    shared_level.store(chosen, std::sync::atomic::Ordering::Relaxed);
                }
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
                let gzip_would_win = framing == Framing::Tar && pace.compression_would_win(remembered);
                Ok(Stats {
                    level: pace.main_level(),
                    last_level: pace.level(),
                    switches: pace.switches(),
                    link_rate: pace.link_rate(),
                    delivered: pace.delivered(),
                    storing_may_win: framing != Framing::Tar && pace.storing_may_win(),
                    gzip_would_win,
                    wire,
                    pacing: Some(format!("{pace:?}")),
                    ..stats
                })
            }
        }
    })
}

#[cfg(test)]
mod tests {
    #[cfg(unix)]
    use std::path::PathBuf;
    #[cfg(unix)]
    use std::process::Command;

    use super::*;
    #[cfg(unix)]
    use crate::workspace::listing::{collect, Rules};

    #[cfg(unix)]
    use crate::workspace::sh;

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
        let stats =
            stream_tar(&src, &entries, &[], &mut tgz, Link { framing: Framing::Gzip(6), remembered: None, acked: &|| None }, &|_, _| {})
                .unwrap();
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
        let stats =
            stream_tar(&src, &entries, &[], &mut raw, Link { framing: Framing::Tar, remembered: None, acked: &|| None }, &|_, _| {})
                .unwrap();
        assert!(raw.len() > text.len() && raw.len() < text.len() + 4096, "bare tar is the content plus headers: {} bytes", raw.len());
        assert_eq!((stats.level, stats.wire), (0, raw.len() as u64), "{stats:?}");
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
            Entry { path: "a".into(), kind: Kind::File { exec: false }, stat: None, clean: None },
            Entry { path: "missing".into(), kind: Kind::File { exec: false }, stat: None, clean: None },
        ];
        // The server trusts only a stream that ends with the completion marker: a snapshot
        // that fails half-way must never send it, whatever members went out before.
        let extra = [(crate::layout::COMPLETE_MARKER.to_string(), std::sync::Arc::new(Vec::new()))];
        for framing in [Framing::Gzip(6), Framing::Tar] {
            let mut buf = Vec::new();
            assert!(
                stream_tar(d.path(), &entries, &extra, &mut buf, Link { framing, remembered: None, acked: &|| None }, &|_, _| {}).is_err()
            );
            let mut raw = Vec::new();
            let _ = flate2::read::MultiGzDecoder::new(&buf[..]).read_to_end(&mut raw);
            let tar_bytes = if framing == Framing::Tar { &buf } else { &raw };
            let names: Vec<String> = tar::Archive::new(&tar_bytes[..])
                .entries()
                .map(|es| es.filter_map(|e| Some(e.ok()?.path().ok()?.to_string_lossy().into_owned())).collect())
                .unwrap_or_default();
            assert!(!names.iter().any(|n| n == crate::layout::COMPLETE_MARKER), "{framing:?}: {names:?}");
        }
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
        let stats =
            stream_tar(&src, &entries, &[], &mut buf, Link { framing: Framing::Gzip(6), remembered: None, acked: &|| None }, &|_, _| {})
                .unwrap();
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
}
