//! Panic-freedom for what servers send us (issue: "make the HTTP, Redis and server-listing
//! parsers panic-free: fuzz them in CI with a committed corpus").
//!
//! Why: every parser here reads bytes we do not control — whatever answers on a health-check
//! port, the `sh` listing of a release directory someone else may have touched, a
//! `.release-meta` written by an older tool — and a panic in one of them aborts `bst` in the
//! middle of a deploy, after the switch (a chunk boundary inside a UTF-8 character did exactly
//! that; so did `split_at(2)` on a release named with a non-ASCII character). Errors are fine;
//! panics are not.
//!
//! How: each file under `tests/corpus/{http,redis,state,meta,status}` is replayed with an exact
//! expected result (the odd ones too, so a change in how garbage is read is a visible,
//! deliberate diff), then truncated at every length, then mutated and extended by proptest.
//! Failures name the input as escaped bytes: save it as a new corpus file with its expected
//! result.
//!
//! Cases per property come from `BST_FUZZ_CASES` (default [`DEFAULT_CASES`]: about 3 s for the
//! whole module in a debug build on 2 cores). A longer run, about a minute:
//! `BST_FUZZ_CASES=200000 cargo test --lib corpus_tests`. `PROPTEST_RNG_SEED=<n>` makes a run
//! repeatable.
//!
//! Size: test code only, one section per parser; the corpus files are the data.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::Duration;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, TestCaseError, TestRunner};

use crate::release::{self, is_release_id, parse_state, Meta, Status};
use crate::service::{self, parse_http, parse_status, Probe};
use crate::settings::Health;
use crate::transport::{Output, Stream, Talk, Transport};

const DEFAULT_CASES: u32 = 8000;

fn cases() -> u32 {
    std::env::var("BST_FUZZ_CASES").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(DEFAULT_CASES)
}

fn runner() -> TestRunner {
    // No persistence file: the corpus is where reproducers live. Bounded shrinking keeps a
    // failing CI run from spending minutes minimising.
    TestRunner::new(PtConfig { cases: cases(), failure_persistence: None, max_shrink_iters: 2048, ..PtConfig::default() })
}

/// Sorted, so failures and expectations read in the order `ls` shows.
fn corpus(dir: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus").join(dir);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let p = e.unwrap().path();
            (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap())
        })
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{}: corpus too small", dir.display());
    files
}

/// Every corpus file has an expectation and every expectation a file: a renamed or deleted
/// file must not silently drop out of the replay.
fn check_table<T>(files: &[(String, Vec<u8>)], table: &[(&str, T)]) {
    for (name, _) in files {
        assert!(table.iter().any(|(n, _)| n == name), "corpus file {name} has no expected result in the table");
    }
    for (name, _) in table {
        assert!(files.iter().any(|(n, _)| n == name), "expected result for {name}, which is not in the corpus");
    }
}

/// Runs `f`, turning a panic into an error that carries the input, escaped, so it can be
/// pasted back into a corpus file.
fn guarded<R>(what: &str, input: &[u8], f: impl FnOnce() -> R) -> Result<R, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        let msg = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_default();
        format!("{what} panicked ({msg}) on input b\"{}\"", input.escape_ascii())
    })
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Every prefix of every corpus file: replies cut by a timeout or a dropped connection.
fn every_prefix(dir: &str, check: impl Fn(&[u8])) {
    for (name, bytes) in corpus(dir) {
        for len in 0..=bytes.len() {
            let cut = &bytes[..len];
            if let Err(e) = guarded(&format!("{dir}/{name} cut at {len}"), cut, || check(cut)) {
                panic!("{e}");
            }
        }
    }
}

// ---- mutations ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    FlipBit(usize, u8),
    Set(usize, u8),
    Cut(usize),
    Delete(usize, usize),
    Insert(usize, Vec<u8>),
    /// One of the parser's own tokens: random bytes rarely spell `\r\n\r\n` or `R `.
    Token(usize, usize),
    /// A slice of another corpus file.
    Splice(usize, usize, usize, usize),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(p, b)| Op::FlipBit(p, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Op::Set(p, b)),
        any::<usize>().prop_map(Op::Cut),
        (any::<usize>(), 1usize..24).prop_map(|(p, n)| Op::Delete(p, n)),
        (any::<usize>(), vec(any::<u8>(), 1..16)).prop_map(|(p, b)| Op::Insert(p, b)),
        (any::<usize>(), any::<usize>()).prop_map(|(p, t)| Op::Token(p, t)),
        (any::<usize>(), any::<usize>(), any::<usize>(), 1usize..64).prop_map(|(p, f, s, n)| Op::Splice(p, f, s, n)),
    ];
    vec(op, 1..6)
}

fn mutate(seed: &[u8], files: &[(String, Vec<u8>)], tokens: &[&[u8]], ops: &[Op]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for op in ops {
        let at = |p: usize, len: usize| p % (len + 1);
        match op {
            Op::FlipBit(p, bit) if !b.is_empty() => {
                let i = p % b.len();
                b[i] ^= 1 << bit;
            }
            Op::Set(p, v) if !b.is_empty() => {
                let i = p % b.len();
                b[i] = *v;
            }
            Op::Cut(p) => b.truncate(at(*p, b.len())),
            Op::Delete(p, n) => {
                let i = at(*p, b.len());
                let end = (i + n).min(b.len());
                b.drain(i..end);
            }
            Op::Insert(p, bytes) => {
                let i = at(*p, b.len());
                b.splice(i..i, bytes.iter().copied());
            }
            Op::Token(p, t) => {
                let i = at(*p, b.len());
                b.splice(i..i, tokens[t % tokens.len()].iter().copied());
            }
            Op::Splice(p, f, s, n) => {
                let src = &files[f % files.len()].1;
                let start = at(*s, src.len());
                let piece = &src[start..(start + n).min(src.len())];
                let i = at(*p, b.len());
                b.splice(i..i, piece.iter().copied());
            }
            _ => {}
        }
    }
    b
}

/// Mutated corpus files through `check`, which returns what it found wrong (if anything).
fn fuzz_corpus(dir: &str, tokens: &[&[u8]], check: impl Fn(&[u8]) -> Result<(), String>) {
    let files = corpus(dir);
    runner()
        .run(&(0..files.len(), ops()), |(i, ops)| {
            let input = mutate(&files[i].1, &files, tokens, &ops);
            let what = format!("{dir}/{} mutated", files[i].0);
            guarded(&what, &input, || check(&input))
                .and_then(|r| r.map_err(|e| format!("{what}: {e}: b\"{}\"", input.escape_ascii())))
                .map_err(TestCaseError::fail)
        })
        .unwrap();
}

/// Generated inputs through `check`.
fn fuzz<S: Strategy>(what: &str, strategy: S, check: impl Fn(&S::Value) -> Result<(), String>, bytes: impl Fn(&S::Value) -> Vec<u8>) {
    runner()
        .run(&strategy, |v| {
            let input = bytes(&v);
            guarded(what, &input, || check(&v))
                .and_then(|r| r.map_err(|e| format!("{what}: {e}: b\"{}\"", input.escape_ascii())))
                .map_err(TestCaseError::fail)
        })
        .unwrap();
}

fn ensure(ok: bool, why: impl FnOnce() -> String) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(why())
    }
}

// ---- HTTP and Redis probes ---------------------------------------------------------------

/// A transport whose only use is to hand a probe a canned reply, as a server would.
struct Canned(Vec<u8>);

impl Transport for Canned {
    fn converse(&mut self, _: &str, _: Talk<'_>) -> anyhow::Result<Output> {
        anyhow::bail!("a probe runs no script")
    }

    fn run_streaming(&mut self, _: &str, _: &mut dyn FnMut(Stream, &[u8])) -> anyhow::Result<i32> {
        anyhow::bail!("a probe runs no script")
    }

    fn tcp_exchange(&mut self, _: &str, _: u16, _: &[u8], _: &dyn Fn(&[u8]) -> bool, _: Duration) -> anyhow::Result<Vec<u8>> {
        Ok(self.0.clone())
    }

    fn bytes_sent(&self) -> u64 {
        0
    }
}

fn http_health() -> Health {
    Health::Http { host: "127.0.0.1".into(), port: 4100, path: "/health".into(), status: 200, body_contains: Some("ok".into()) }
}

fn redis_probe(reply: &[u8]) -> Probe {
    service::probe(&mut Canned(reply.to_vec()), &Health::Redis { host: "127.0.0.1".into(), port: 6379 })
}

/// The parse, and the probe built on it, agree: healthy exactly when the status is 200 and the
/// body holds the needle.
fn check_http(reply: &[u8]) -> Result<(), String> {
    let parsed = parse_http(reply);
    let probe = service::probe(&mut Canned(reply.to_vec()), &http_health());
    let want = matches!(&parsed, Some((200, body)) if body.contains("ok"));
    ensure(probe.healthy == want, || format!("probe says {probe:?}, parse says {parsed:?}"))
}

fn check_redis(reply: &[u8]) -> Result<(), String> {
    let p = redis_probe(reply);
    let want = reply.starts_with(b"+PONG") || reply.starts_with(b"-NOAUTH");
    ensure(p.healthy == want, || format!("probe says {p:?}"))
}

const HTTP_TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Content-Length: 3\r\n",
    b"Content-Length: 18446744073709551616\r\n",
    b"0\r\n\r\n",
    b"ffffffffffffffff\r\n",
    b"3;x=y\r\n",
    b":",
    b";",
    b"\xc3",
    b"\xf0\x9f\x98",
    b"\xa9",
    b"\n",
];

#[test]
fn http_corpus_replays_exactly() {
    let files = corpus("http");
    let table: &[(&str, Option<(u16, &str)>)] = &[
        ("bare-lf.bin", Some((200, ""))),
        ("binary-garbage.bin", None),
        ("chunk-missing-crlf.bin", Some((200, "abc"))),
        ("chunk-short.bin", Some((200, "abc"))),
        ("chunk-size-huge.bin", Some((200, "abc"))),
        ("chunk-size-non-ascii.bin", Some((200, ""))),
        ("chunk-size-not-hex.bin", Some((200, ""))),
        ("chunk-size-overflow.bin", Some((200, ""))),
        ("chunk-size-plus-sign.bin", Some((200, "abc"))),
        ("content-length-larger.bin", Some((200, "short"))),
        ("content-length-negative.bin", Some((200, "whole body"))),
        ("content-length-overflow.bin", Some((200, "whole body"))),
        ("content-length-smaller.bin", Some((200, "ok"))),
        ("cut-inside-utf8.bin", Some((200, "caf\u{fffd}"))),
        ("cut-mid-header.bin", Some((200, ""))),
        // A status line cut after one digit still parses; the probe then reports `status 2`.
        ("cut-status-line.bin", Some((2, ""))),
        ("empty.bin", None),
        ("invalid-utf8-body.bin", Some((200, "ok\u{fffd}\u{fffd}"))),
        ("not-http-ssh-banner.bin", None),
        ("ok-204-empty.bin", Some((204, ""))),
        ("ok-chunk-extensions.bin", Some((200, "hello, world!!!"))),
        ("ok-chunked-503.bin", Some((503, "{\"status\""))),
        ("ok-chunked-split-utf8.bin", Some((200, "caf\u{e9} \u{1f600} ok"))),
        ("ok-chunked-trailers.bin", Some((200, "ok"))),
        ("ok-content-length.bin", Some((200, "{\"status\":\"ok\"}"))),
        ("ok-no-length-http10.bin", Some((200, "healthy until EOF\n"))),
        ("ok-non-ascii-headers.bin", Some((200, "d\u{e9}j\u{e0}"))),
        ("ok-te-and-length.bin", Some((200, "chunks"))),
        ("status-non-ascii.bin", None),
        ("status-overflow.bin", None),
    ];
    check_table(&files, table);
    for (name, bytes) in &files {
        let want = table.iter().find(|(n, _)| n == name).unwrap().1.map(|(c, b)| (c, b.to_string()));
        let got = guarded(&format!("http/{name}"), bytes, || parse_http(bytes)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got, want, "http/{name}");
        guarded(&format!("http probe on {name}"), bytes, || check_http(bytes)).unwrap().unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn http_corpus_cut_at_every_length() {
    every_prefix("http", |b| check_http(b).unwrap());
}

#[test]
fn http_fuzz_arbitrary_bytes() {
    fuzz("parse_http", vec(any::<u8>(), 0..600), |b| check_http(b), Clone::clone);
}

#[test]
fn http_fuzz_mutated_corpus() {
    fuzz_corpus("http", HTTP_TOKENS, check_http);
}

/// Bytes that are mostly pieces of multi-byte characters, so chunk boundaries land inside them.
fn utf8ish(max: usize) -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        any::<u8>().prop_map(|b| vec![b]),
        prop::sample::select(vec!["\u{e9}", "\u{1f600}", "\u{20ac}", "a", "\r\n", "0\r\n\r\n"]).prop_map(|s| s.as_bytes().to_vec()),
    ];
    vec(piece, 0..max).prop_map(|p| p.concat())
}

/// A well-formed chunked reply, cut into chunks anywhere, reassembles to exactly its bytes.
#[test]
fn http_fuzz_chunk_boundaries_anywhere() {
    let strategy = (utf8ish(40), vec(any::<usize>(), 0..8), any::<bool>(), any::<bool>());
    let encode = |(body, cuts, upper, ext): &(Vec<u8>, Vec<usize>, bool, bool)| {
        let mut at: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).chain([0, body.len()]).collect();
        at.sort_unstable();
        at.dedup();
        let mut r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for w in at.windows(2) {
            let size = if *upper { format!("{:X}", w[1] - w[0]) } else { format!("{:x}", w[1] - w[0]) };
            r.extend_from_slice(size.as_bytes());
            if *ext {
                r.extend_from_slice(b";n=v");
            }
            r.extend_from_slice(b"\r\n");
            r.extend_from_slice(&body[w[0]..w[1]]);
            r.extend_from_slice(b"\r\n");
        }
        r.extend_from_slice(b"0\r\n\r\n");
        r
    };
    fuzz(
        "dechunk",
        strategy,
        |v| {
            let got = parse_http(&encode(v));
            ensure(got == Some((200, lossy(&v.0))), || format!("reassembled {got:?}"))
        },
        encode,
    );
}

/// Content-Length is a cap on what was received, never a promise about it.
#[test]
fn http_fuzz_content_length_against_body() {
    let reply = |(body, len): &(Vec<u8>, usize)| {
        let mut r = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n").into_bytes();
        r.extend_from_slice(body);
        r
    };
    fuzz(
        "content-length",
        (utf8ish(30), prop_oneof![0usize..80, Just(usize::MAX)]),
        |v| {
            let got = parse_http(&reply(v));
            ensure(got == Some((200, lossy(&v.0[..v.1.min(v.0.len())]))), || format!("got {got:?}"))
        },
        reply,
    );
}

/// Chunk framing gone wrong in every way a proxy could: no panic, whatever it yields.
#[test]
fn http_fuzz_broken_chunk_framing() {
    let size = prop_oneof![
        Just(None),
        any::<u64>().prop_map(|n| Some(format!("{n:x}"))),
        prop::sample::select(vec!["ffffffffffffffff", "10000000000000000", "-1", "+1", "", " ", "0x10", "\u{e9}", "1;"])
            .prop_map(|s| Some(s.to_string())),
    ];
    let sep = prop::sample::select(vec![&b"\r\n"[..], b"\n", b"\r", b""]);
    let chunk = (size, utf8ish(12), sep.clone(), sep);
    // The size line (`None`: the right size), the data, and what follows each.
    type Chunk = (Option<String>, Vec<u8>, &'static [u8], &'static [u8]);
    let reply = |chunks: &Vec<Chunk>| {
        let mut r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for (size, data, after_size, after_data) in chunks {
            // The right size keeps the framing in step for a while, so later chunks are reached.
            r.extend_from_slice(size.clone().unwrap_or_else(|| format!("{:x}", data.len())).as_bytes());
            r.extend_from_slice(after_size);
            r.extend_from_slice(data);
            r.extend_from_slice(after_data);
        }
        r
    };
    fuzz("chunk framing", vec(chunk, 0..6), |c| check_http(&reply(c)), reply);
}

#[test]
fn redis_corpus_replays_exactly() {
    let files = corpus("redis");
    let table: &[(&str, (bool, &str))] = &[
        ("array-pong.bin", (false, r#"unexpected reply "*1\r\n$4\r\nPONG""#)),
        ("bulk-pong.bin", (false, r#"unexpected reply "$4\r\nPONG""#)),
        ("crlf-only.bin", (false, r#"unexpected reply """#)),
        ("cut-inside-utf8.bin", (false, "unexpected reply \"-ERR caf\u{fffd}\"")),
        ("empty.bin", (false, r#"unexpected reply """#)),
        ("err-unknown-command.bin", (false, r#"unexpected reply "-ERR unknown command 'PING', with args beginning with:""#)),
        ("http-server.bin", (false, r#"unexpected reply "HTTP/1.1 400 Bad Request\r\nContent-Length: 0""#)),
        ("invalid-utf8-then-pong.bin", (false, "unexpected reply \"\u{fffd}\u{fffd}+PONG\"")),
        ("loading.bin", (false, r#"unexpected reply "-LOADING Redis is loading the dataset in memory""#)),
        ("noauth.bin", (true, "alive (auth required)")),
        ("nul-bytes.bin", (false, r#"unexpected reply "\0\0+PONG\0""#)),
        ("pong-lowercase.bin", (false, r#"unexpected reply "+pong""#)),
        ("pong-no-crlf.bin", (true, "PONG")),
        // The probe checks the prefix only: `+PONGED` is a live server that said something odd.
        ("pong-suffix.bin", (true, "PONG")),
        ("pong.bin", (true, "PONG")),
        ("trailing-whitespace.bin", (false, r#"unexpected reply "-ERR  spaced out""#)),
        ("wrongpass.bin", (false, r#"unexpected reply "-WRONGPASS invalid username-password pair or user is disabled.""#)),
    ];
    check_table(&files, table);
    for (name, bytes) in &files {
        let (healthy, detail) = table.iter().find(|(n, _)| n == name).unwrap().1;
        let got = guarded(&format!("redis/{name}"), bytes, || redis_probe(bytes)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got, Probe { healthy, detail: format!("redis 127.0.0.1:6379: {detail}") }, "redis/{name}");
    }
}

#[test]
fn redis_corpus_cut_at_every_length() {
    every_prefix("redis", |b| check_redis(b).unwrap());
}

#[test]
fn redis_fuzz_arbitrary_and_mutated_replies() {
    fuzz("redis probe", vec(any::<u8>(), 0..200), |b| check_redis(b), Clone::clone);
    fuzz_corpus("redis", &[b"\r\n", b"+PONG", b"-NOAUTH", b"-ERR ", b"$4\r\n", b"\xc3", b"\xf0\x9f"], check_redis);
}

// ---- the server's state listing ----------------------------------------------------------

const ID1: &str = "20260218T090000Z";
const ID2: &str = "20260219T120000Z";
const ID3: &str = "20260220T051228Z";

/// What any listing must come out as, however broken: ids that are release ids, sorted and
/// unique, metas that belong to their release, a `current` that is an id.
fn check_state(listing: &[u8]) -> Result<(), String> {
    let s = parse_state(&lossy(listing));
    for w in s.releases.windows(2) {
        ensure(w[0].id < w[1].id, || format!("releases not sorted and unique: {} then {}", w[0].id, w[1].id))?;
    }
    for r in &s.releases {
        ensure(is_release_id(&r.id), || format!("release id {:?}", r.id))?;
        ensure(r.meta.as_ref().is_none_or(|m| m.id == r.id), || format!("meta of another release on {}", r.id))?;
        ensure(r.status() == r.meta.as_ref().map_or(Status::Unknown, |m| m.status), || format!("status of {}", r.id))?;
    }
    ensure(s.current.as_deref().is_none_or(is_release_id), || format!("current {:?}", s.current))?;
    let gen_ok = |g: &String| g.split(' ').next().is_some_and(is_release_id);
    ensure(s.cache_generation.as_ref().is_none_or(gen_ok), || format!("generation {:?}", s.cache_generation))?;
    // What the commands do next with it.
    let _ = (s.rollback_target(), s.prune_plan(1, s.current.as_deref()), s.newest_id());
    Ok(())
}

struct StateWant {
    base: bool,
    real_base: Option<&'static str>,
    releases: &'static [(&'static str, Status)],
    current: Option<&'static str>,
    current_raw: Option<&'static str>,
    generation: Option<&'static str>,
}

const NOTHING: StateWant = StateWant { base: false, real_base: None, releases: &[], current: None, current_raw: None, generation: None };
const BASE: StateWant = StateWant { base: true, ..NOTHING };

#[test]
fn state_corpus_replays_exactly() {
    use Status::{Failed, Ok, Unknown};
    let files = corpus("state");
    let table: &[(&str, StateWant)] = &[
        ("crlf.txt", StateWant { real_base: Some("/srv/app"), releases: &[(ID1, Ok)], current: Some(ID1), ..BASE }),
        ("current-dangling.txt", StateWant { releases: &[(ID1, Unknown)], current: Some(ID2), ..BASE }),
        // Not bst's own form, but the server resolved it into this base's releases/.
        ("current-dotdot.txt", StateWant { real_base: Some("/srv/app"), releases: &[(ID1, Unknown)], current: Some(ID1), ..BASE }),
        // A release id in another base's releases/ is not ours, however it is spelled.
        (
            "current-other-base.txt",
            StateWant {
                real_base: Some("/srv/app"),
                releases: &[(ID1, Unknown)],
                current_raw: Some("/srv/old-app/releases/20260218T090000Z"),
                ..BASE
            },
        ),
        ("current-elsewhere.txt", StateWant { releases: &[(ID1, Unknown)], current_raw: Some("/opt/other/app"), ..BASE }),
        ("current-not-symlink.txt", StateWant { releases: &[(ID1, Unknown)], current_raw: Some("!not-a-symlink"), ..BASE }),
        // The last `C` line wins; an empty one is no line at all.
        ("current-twice.txt", StateWant { releases: &[(ID1, Unknown), (ID2, Unknown)], current: Some(ID2), ..BASE }),
        ("cut-mid-line.txt", StateWant { real_base: Some("/srv/app"), releases: &[(ID1, Unknown)], ..BASE }),
        ("empty.txt", NOTHING),
        ("foreign-names.txt", StateWant { releases: &[(ID1, Unknown)], current: Some(ID1), ..BASE }),
        ("generation-variants.txt", StateWant { releases: &[(ID1, Unknown)], generation: Some("20260218T090000Z  two  spaces"), ..BASE }),
        // A later `M` for the same release replaces the earlier one; one for another id is dropped.
        ("meta-orphan-and-mismatch.txt", StateWant { releases: &[(ID1, Unknown), (ID2, Failed)], ..BASE }),
        // A directory named `<id>\nx` lists as `<id>` plus a foreign line.
        ("newline-in-name.txt", StateWant { releases: &[(ID1, Unknown), (ID2, Ok)], ..BASE }),
        (
            "non-ascii.txt",
            StateWant { real_base: Some("/srv/\u{fc}n\u{ef}c\u{f6}d\u{e9}"), releases: &[(ID1, Ok)], current_raw: Some("\u{e9}"), ..BASE },
        ),
        (
            "nul-and-controls.txt",
            StateWant {
                real_base: Some("/srv/\u{1b}[31mred\u{7}"),
                releases: &[(ID2, Unknown)],
                current_raw: Some("releases/20260219T120000Z\0"),
                ..NOTHING
            },
        ),
        (
            "ok-absolute-current.txt",
            StateWant { real_base: Some("/home/deploy/app"), releases: &[(ID1, Unknown), (ID2, Unknown)], current: Some(ID1), ..BASE },
        ),
        ("ok-fresh-base.txt", StateWant { real_base: Some("/srv/app"), ..BASE }),
        (
            "ok-typical.txt",
            StateWant {
                real_base: Some("/srv/app"),
                releases: &[(ID1, Ok), (ID2, Failed), (ID3, Ok)],
                current: Some(ID3),
                generation: Some("20260220T051228Z 9f8e7d6c5b4a"),
                ..BASE
            },
        ),
        ("tags-without-payload.txt", StateWant { real_base: Some(""), ..NOTHING }),
        ("truncated-lines.txt", StateWant { releases: &[(ID1, Unknown)], current_raw: Some("releases/2026"), ..BASE }),
        // Duplicate names keep the first listed, so the meta on the second copy is lost.
        ("unsorted-duplicates.txt", StateWant { releases: &[(ID1, Unknown), (ID2, Unknown), (ID3, Unknown)], current: Some(ID2), ..BASE }),
    ];
    check_table(&files, table);
    for (name, bytes) in &files {
        let want = &table.iter().find(|(n, _)| n == name).unwrap().1;
        let s = guarded(&format!("state/{name}"), bytes, || parse_state(&lossy(bytes))).unwrap_or_else(|e| panic!("{e}"));
        let releases: Vec<(&str, Status)> = s.releases.iter().map(|r| (r.id.as_str(), r.status())).collect();
        assert_eq!(releases, want.releases, "state/{name}: releases");
        assert_eq!(s.base_exists, want.base, "state/{name}: base");
        assert_eq!(s.real_base.as_deref(), want.real_base, "state/{name}: real base");
        assert_eq!(s.current.as_deref(), want.current, "state/{name}: current");
        assert_eq!(s.current_raw.as_deref(), want.current_raw, "state/{name}: current_raw");
        assert_eq!(s.cache_generation.as_deref(), want.generation, "state/{name}: generation");
        check_state(bytes).unwrap_or_else(|e| panic!("state/{name}: {e}"));
    }
}

#[test]
fn state_corpus_cut_at_every_length() {
    every_prefix("state", |b| check_state(b).unwrap());
}

#[test]
fn state_fuzz_mutated_corpus() {
    let tokens: &[&[u8]] = &[
        b"\n",
        b"\r\n",
        b"B\n",
        b"R ",
        b"WD ",
        b"M ",
        b"C ",
        b"G ",
        b"P ",
        b"releases/",
        b"/releases/",
        ID3.as_bytes(),
        b"\xc3\xa9",
        b"\xe2\x82",
        b"{\"id\":\"",
        b"\"status\":\"ok\"",
    ];
    fuzz_corpus("state", tokens, check_state);
}

/// Listings line by line, the lines mostly close to real ones.
#[test]
fn state_fuzz_generated_listings() {
    let tag = prop::sample::select(vec!["B", "P ", "R ", "M ", "C ", "G ", "WD ", "", "\u{e9}", "R\u{e9}"]);
    let rest = prop_oneof![
        prop::sample::select(vec![ID1, ID2, ID3]).prop_map(str::to_string),
        (0i64..4_102_444_800).prop_map(release::format_id),
        prop::sample::select(vec![ID1, ID3]).prop_map(|id| format!("releases/{id}/")),
        prop::sample::select(vec![ID1, ID3]).prop_map(|id| format!("/x/releases/{id}")),
        prop::sample::select(vec![ID1, ID3])
            .prop_map(|id| format!("{{\"id\":\"{id}\",\"target\":\"t\",\"status\":\"ok\",\"created_at\":\"\"}}")),
        "\\PC{0,30}",
        ".{0,20}",
    ];
    let listing = vec((tag, rest, prop::sample::select(vec!["\n", "\r\n", "\n\n"])), 0..16);
    let join = |lines: &Vec<(&str, String, &str)>| lines.iter().flat_map(|(t, r, e)| [*t, r.as_str(), *e]).collect::<String>().into_bytes();
    fuzz("parse_state", listing, |l| check_state(&join(l)), join);
}

#[test]
fn state_fuzz_arbitrary_text() {
    fuzz("parse_state", vec(any::<u8>(), 0..400), |b| check_state(b), Clone::clone);
}

/// The real listing script against a real directory, so the corpus's idea of what `sh` prints
/// for odd names is what it does print.
#[cfg(unix)]
#[test]
fn odd_release_directories_through_the_real_listing_script() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("app");
    for name in [ID1.to_string(), format!("{ID2}\nx"), "\u{e9}t\u{e9}".into(), format!("{ID3}\u{e9}")] {
        std::fs::create_dir_all(base.join("releases").join(name)).unwrap();
    }
    let meta = std::fs::read_to_string(meta_path("ok-non-ascii-commit.json")).unwrap().replace(ID3, ID1);
    std::fs::write(base.join("releases").join(ID1).join(crate::layout::META_FILE), meta).unwrap();
    std::os::unix::fs::symlink(format!("releases/{ID1}"), base.join("current")).unwrap();
    let out = std::process::Command::new("sh").arg("-c").arg(crate::remote::read_state(&base.to_string_lossy())).output().unwrap();
    assert!(out.status.success(), "{}", lossy(&out.stderr));
    check_state(&out.stdout).unwrap();
    let s = parse_state(&lossy(&out.stdout));
    let ids: Vec<&str> = s.releases.iter().map(|r| r.id.as_str()).collect();
    // `<ID2>\nx` shows up as ID2, a release that does not exist: the switch and prune scripts
    // re-check the directory, so it is only a phantom row in `bst list`.
    assert_eq!(ids, [ID1, ID2]);
    assert_eq!(s.current.as_deref(), Some(ID1));
    let commit = s.releases[0].meta.as_ref().and_then(|m| m.commit.clone()).unwrap();
    assert_eq!(commit.chars().take(8).collect::<String>(), "\u{e9}t\u{e9}-\u{30b3}\u{30df}\u{30c3}\u{30c8}");
}

// ---- `.release-meta` ---------------------------------------------------------------------

fn meta_path(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/meta").join(name)
}

/// `.release-meta` as it reaches bst: the listing script prints `M ` and the file with its
/// newlines removed (`tr -d '\n'`), after the `R` line of the release it sits in.
fn listed_meta(file: &[u8]) -> release::Release {
    let mut listing = format!("B\nR {ID3}\nM ").into_bytes();
    listing.extend(file.iter().filter(|&&b| b != b'\n'));
    listing.push(b'\n');
    let mut s = parse_state(&lossy(&listing));
    assert_eq!(s.releases.len(), 1, "a meta must not add or remove releases");
    s.releases.remove(0)
}

/// Read both ways: on its own (newlines removed, as the listing does) and through the listing.
/// They agree unless the bytes are not UTF-8 (the listing is read lossily) or the id is another
/// release's.
fn check_meta(file: &[u8]) -> Result<(), String> {
    let direct = serde_json::from_slice::<Meta>(&file.iter().copied().filter(|&b| b != b'\n').collect::<Vec<u8>>());
    let r = listed_meta(file);
    if std::str::from_utf8(file).is_ok() {
        let want = direct.as_ref().ok().filter(|m| m.id == ID3);
        ensure(r.meta.as_ref() == want, || format!("listing read {:?}, direct read {direct:?}", r.meta))?;
    }
    ensure(r.status() == r.meta.as_ref().map_or(Status::Unknown, |m| m.status), || "status".into())?;
    if let Some(m) = &r.meta {
        let _ = serde_json::to_string(m).map_err(|e| format!("re-serialising: {e}"))?;
    }
    Ok(())
}

fn full_meta() -> Meta {
    Meta {
        id: ID3.into(),
        target: "prod".into(),
        status: Status::Ok,
        created_at: "2026-02-20T05:12:28Z".into(),
        commit: Some("3f2a9c1d0e4b5a6978c1d2e3f4a5b6c7d8e9f0a1".into()),
        branch: Some("main".into()),
        dirty: Some(false),
        deployed_by: "ci@runner".into(),
        tool_version: "0.1.0".into(),
        build: true,
        files: 412,
        bytes: 1_834_221,
        duration_ms: Some(8123),
        error: None,
    }
}

#[test]
fn meta_corpus_replays_exactly() {
    use Status::{Failed, Ok, Pending, Unknown};
    const SHA: Option<&str> = Some("3f2a9c1d0e4b5a6978c1d2e3f4a5b6c7d8e9f0a1");
    let files = corpus("meta");
    // Whether the file parses on its own, then the status and commit `bst list` shows for it.
    type Want = (bool, Status, Option<&'static str>);
    let table: &[(&str, Want)] = &[
        ("bad-status-type.json", (false, Unknown, None)),
        ("bad-status.json", (false, Unknown, None)),
        ("bom.json", (false, Unknown, None)),
        ("duplicate-key.json", (false, Unknown, None)),
        ("empty.json", (false, Unknown, None)),
        ("float-number.json", (false, Unknown, None)),
        ("huge-number.json", (false, Unknown, None)),
        // A meta copied from another release is not this release's record.
        ("id-mismatch.json", (true, Unknown, None)),
        // Read lossily in the listing: the release keeps its status, the commit shows U+FFFD.
        ("invalid-utf8-commit.json", (false, Ok, Some("ab\u{fffd}\u{fffd}"))),
        ("lone-surrogate.json", (false, Unknown, None)),
        ("negative-number.json", (false, Unknown, None)),
        // serde reads a struct from an array too; harmless, and pinned so a change is seen.
        ("not-an-object.json", (true, Ok, None)),
        ("number-id.json", (false, Unknown, None)),
        ("ok-crlf.json", (true, Ok, SHA)),
        ("ok-escaped-commit.json", (true, Ok, Some("\u{e9}\u{1f600}\n\t\"x\0y"))),
        ("ok-failed.json", (true, Failed, SHA)),
        ("ok-full.json", (true, Ok, SHA)),
        ("ok-max-u64.json", (true, Ok, SHA)),
        ("ok-minimal.json", (true, Ok, None)),
        ("ok-non-ascii-commit.json", (true, Ok, Some("\u{e9}t\u{e9}-\u{30b3}\u{30df}\u{30c3}\u{30c8}-\u{1f600}-abcdef"))),
        ("ok-nulls.json", (true, Ok, None)),
        ("ok-pending.json", (true, Pending, None)),
        ("ok-pretty.json", (true, Ok, SHA)),
        ("ok-unknown-fields.json", (true, Ok, SHA)),
        ("truncated.json", (false, Unknown, None)),
        ("wrong-types.json", (false, Unknown, None)),
    ];
    check_table(&files, table);
    for (name, bytes) in &files {
        let (parses, status, commit) = table.iter().find(|(n, _)| n == name).unwrap().1;
        let direct = guarded(&format!("meta/{name}"), bytes, || serde_json::from_slice::<Meta>(bytes)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(direct.is_ok(), parses, "meta/{name}: {direct:?}");
        let r = guarded(&format!("meta/{name} listed"), bytes, || listed_meta(bytes)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status(), status, "meta/{name}: status");
        assert_eq!(r.meta.as_ref().and_then(|m| m.commit.as_deref()), commit, "meta/{name}: commit");
        check_meta(bytes).unwrap_or_else(|e| panic!("meta/{name}: {e}"));
    }
    let full = full_meta();
    let read = |name: &str| listed_meta(&std::fs::read(meta_path(name)).unwrap()).meta.unwrap();
    for name in ["ok-full.json", "ok-pretty.json", "ok-crlf.json", "ok-unknown-fields.json"] {
        assert_eq!(read(name), full, "meta/{name}");
    }
    assert_eq!(
        read("ok-minimal.json"),
        Meta {
            commit: None,
            branch: None,
            dirty: None,
            deployed_by: String::new(),
            tool_version: String::new(),
            build: false,
            files: 0,
            bytes: 0,
            duration_ms: None,
            ..full.clone()
        }
    );
    let max = read("ok-max-u64.json");
    assert_eq!((max.files, max.bytes, max.duration_ms), (u64::MAX, u64::MAX, Some(u64::MAX)));
    assert_eq!(read("ok-failed.json").error.as_deref(), Some("health gate: status 503, expected 200 \u{2014} rolled back"));
}

/// Each meta in its own release directory, through the real listing script.
#[cfg(unix)]
#[test]
fn meta_corpus_through_the_real_listing_script() {
    let dir = tempfile::tempdir().unwrap();
    for (i, (name, bytes)) in corpus("meta").iter().enumerate() {
        let base = dir.path().join(i.to_string());
        std::fs::create_dir_all(base.join("releases").join(ID3)).unwrap();
        std::fs::write(base.join("releases").join(ID3).join(crate::layout::META_FILE), bytes).unwrap();
        let out = std::process::Command::new("sh").arg("-c").arg(crate::remote::read_state(&base.to_string_lossy())).output().unwrap();
        assert!(out.status.success(), "meta/{name}: {}", lossy(&out.stderr));
        let s = parse_state(&lossy(&out.stdout));
        assert_eq!(s.releases, [listed_meta(bytes)], "meta/{name}");
    }
}

#[test]
fn meta_corpus_cut_at_every_length() {
    every_prefix("meta", |b| check_meta(b).unwrap());
}

#[test]
fn meta_fuzz_mutated_corpus() {
    let tokens: &[&[u8]] = &[
        b"\"",
        b"\\",
        b"\\u",
        b"\\ud800",
        b",",
        b":",
        b"{",
        b"}",
        b"[",
        b"null",
        b"18446744073709551616",
        b"-1",
        b"1e400",
        b"\xc3",
        b"\n",
        b"\"status\":\"failed\"",
        b"\"commit\":",
    ];
    fuzz_corpus("meta", tokens, check_meta);
}

/// A valid meta with some fields replaced by values of any JSON type, or the wrong size.
#[test]
fn meta_fuzz_wrong_types_and_huge_numbers() {
    let value = prop_oneof![
        prop::sample::select(vec![
            "null",
            "true",
            "false",
            "0",
            "-0",
            "-1",
            "1.5",
            "1e400",
            "-1e400",
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999999999999999",
            "[]",
            "{}",
            "[1,\"a\",null]",
            "{\"a\":{\"b\":[]}}",
            "\"ok\"",
            "\"failed\"",
            "\"pending\"",
            "\"unknown\"",
            "\"20260220T051228Z\"",
            "\"\\ud800\"",
            "\"\\ud83d\\ude00\"",
        ])
        .prop_map(str::to_string),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|n| n.to_string()),
        "\\PC{0,12}".prop_map(|s| serde_json::to_string(&s).unwrap()),
    ];
    let keys = prop::sample::select(vec![
        "id",
        "target",
        "status",
        "created_at",
        "commit",
        "branch",
        "dirty",
        "deployed_by",
        "tool_version",
        "build",
        "files",
        "bytes",
        "duration_ms",
        "error",
        "unknown",
    ]);
    let text = |overrides: &Vec<(&str, String)>| {
        let serde_json::Value::Object(mut m) = serde_json::to_value(full_meta()).unwrap() else { unreachable!() };
        let mut fields: Vec<(String, String)> = m.iter_mut().map(|(k, v)| (k.clone(), v.to_string())).collect();
        for (k, v) in overrides {
            match fields.iter_mut().find(|(f, _)| f == k) {
                Some(f) => f.1.clone_from(v),
                None => fields.push((k.to_string(), v.clone())),
            }
        }
        let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        format!("{{{}}}", body.join(",")).into_bytes()
    };
    fuzz("meta fields", vec((keys, value), 0..5), |o| check_meta(&text(o)), text);
}

/// serde_json stops at its recursion limit instead of overflowing the stack, wherever the
/// nesting sits.
#[test]
fn meta_deep_nesting_is_an_error_not_a_stack_overflow() {
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let head = format!("{{\"id\":\"{ID3}\",\"target\":\"t\",\"status\":\"ok\",\"created_at\":\"\"");
    for text in [deep(100_000), format!("{head},\"commit\":{}}}", deep(100_000)), format!("{head},\"x\":{}}}", deep(100_000))] {
        check_meta(text.as_bytes()).unwrap();
    }
    // Unknown fields are skipped without recursion, so this one is accepted.
    assert_eq!(listed_meta(format!("{head},\"x\":{}}}", deep(100_000)).as_bytes()).status(), Status::Ok);
}

// ---- systemctl show output ---------------------------------------------------------------

/// Units come only from `S` lines, and a release only from a working directory that names one.
fn check_status(text: &[u8]) -> Result<(), String> {
    let text = lossy(text);
    let units = parse_status(&text);
    let named = text.lines().filter(|l| l.starts_with("S ")).count();
    ensure(units.len() == named, || format!("{} units from {named} S lines", units.len()))?;
    for u in &units {
        ensure(u.release.as_deref().is_none_or(is_release_id), || format!("release {:?}", u.release))?;
        ensure(u.release.is_none() || u.cwd.is_some(), || "release without a cwd".into())?;
        let _ = (u.active(), serde_json::to_string(u).map_err(|e| e.to_string())?);
    }
    Ok(())
}

#[test]
fn status_corpus_replays_exactly() {
    let files = corpus("status");
    // name, LoadState, ActiveState, MainPID, release, error, journal lines
    type Unit = (&'static str, &'static str, &'static str, u32, Option<&'static str>, Option<&'static str>, usize);
    let table: &[(&str, &[Unit])] = &[
        ("crlf-and-no-unit.txt", &[("app", "", "active", 0, Some(ID3), None, 0)]),
        ("empty.txt", &[]),
        (
            "not-found-and-sudo-error.txt",
            &[("app", "not-found", "inactive", 0, None, None, 0), ("worker", "", "", 0, None, Some("sudo: a password is required"), 0)],
        ),
        (
            "odd-values.txt",
            // The `E \u{e9}` line names the unit, so its (empty) message replaces `LoadState`.
            &[("\u{e9}", "", "\u{e4}ctive", 0, None, Some(""), 0)],
        ),
        (
            "ok-failed-with-journal.txt",
            &[(
                "app",
                "loaded",
                "failed",
                0,
                None,
                Some("Job for bst-app.service failed because the control process exited with error code."),
                2,
            )],
        ),
        ("ok-two-units.txt", &[("app", "loaded", "active", 4242, Some(ID3), None, 0), ("redis", "loaded", "inactive", 0, None, None, 0)]),
    ];
    check_table(&files, table);
    for (name, bytes) in &files {
        let want = table.iter().find(|(n, _)| n == name).unwrap().1;
        let units = guarded(&format!("status/{name}"), bytes, || parse_status(&lossy(bytes))).unwrap_or_else(|e| panic!("{e}"));
        let owned = |s: &str| s.to_string();
        let got: Vec<_> = units
            .iter()
            .map(|u| {
                (
                    u.name.clone(),
                    u.load_state.clone(),
                    u.active_state.clone(),
                    u.main_pid,
                    u.release.clone(),
                    u.error.clone(),
                    u.journal.len(),
                )
            })
            .collect();
        let want: Vec<_> =
            want.iter().map(|&(n, l, a, pid, r, e, j)| (owned(n), owned(l), owned(a), pid, r.map(owned), e.map(owned), j)).collect();
        assert_eq!(got, want, "status/{name}");
        check_status(bytes).unwrap_or_else(|e| panic!("status/{name}: {e}"));
    }
}

#[test]
fn status_corpus_cut_mutated_and_generated() {
    every_prefix("status", |b| check_status(b).unwrap());
    fuzz_corpus("status", &[b"\n", b"S ", b"E ", b"J ", b"CWD ", b"/releases/", ID3.as_bytes(), b"MainPID=", b"=", b"\xc3"], check_status);
    let tag = prop::sample::select(vec!["S ", "E ", "J ", "CWD ", "LoadState=", "ActiveState=", "MainPID=", "ActiveEnterTimestamp=", ""]);
    let rest = prop_oneof![
        "\\PC{0,24}",
        prop::sample::select(vec![ID1, ID3]).prop_map(|id| format!("/srv/app/releases/{id}/api")),
        any::<i64>().prop_map(|n| n.to_string()),
    ];
    let join = |lines: &Vec<(&str, String)>| lines.iter().map(|(t, r)| format!("{t}{r}\n")).collect::<String>().into_bytes();
    fuzz("parse_status", vec((tag, rest), 0..14), |l| check_status(&join(l)), join);
}
