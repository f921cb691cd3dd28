//! Issue 13, items 7–10: `.env` fidelity. What `bst env set` writes is read back by the real
//! consumers — systemd's `EnvironmentFile=` in the test container, Node's `util.parseEnv`, the
//! npm `dotenv` package (pinned, installed by `scripts/node-oracle`) — never by bst's own
//! parser. A seeded corpus of values (`BST_ENV_SEED`, `BST_ENV_CASES`) must read back byte
//! for byte, or be refused (exit 2) before anything is written.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::harness::*;
use crate::systemd::{app, host};

fn set(config: &Path, key: &str, value: &str) -> Run {
    let mut c = bst_cmd(config, &["env", "set", "t", key]);
    c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    // bst drops one trailing newline from piped input (what `echo` adds).
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), format!("{value}\n").as_bytes()).unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    // Short or all-letter values could be words of the message itself.
    if value.chars().count() >= 5 && !value.chars().all(|c| c.is_ascii_lowercase() || c == ' ') {
        assert!(!run.stdout.contains(value) && !run.stderr.contains(value), "env set printed the value:\n{run:?}");
    }
    run
}

/// The values every dialect is tried with, then `BST_ENV_CASES` random ones from `BST_ENV_SEED`.
fn corpus() -> Vec<String> {
    let mut v: Vec<String> = [
        "",
        "plain",
        "it's \"q\" \\path",
        "http://x/#frag",
        "a # b",
        "#start",
        "$HOME ${HOME} $(id) `id`",
        "back\\slash\\",
        "\\n is not a newline",
        "\\r\\t",
        "multi\nline\nvalue",
        "x\n# not a comment\nY=2",
        "tab\there",
        "unicode é € 😀",
        "'single'",
        "\"double\"",
        "`tick`",
        "a'b\"c`d",
        "a'b\"c`d #e",
        "'\"`#\n",
        "=x=",
        "semi;colon",
        "  leading",
        "trailing ",
        "x\\",
        "\\'",
        "\\\"",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let seed: u64 = std::env::var("BST_ENV_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(13);
    let cases: usize = std::env::var("BST_ENV_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let alphabet: Vec<char> = "ab09 '\"`#$\\\n\t={};é€😀nr".chars().collect();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..cases {
        let len = (next() % 12) as usize;
        v.push((0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize]).collect());
    }
    eprintln!("env corpus: BST_ENV_SEED={seed} BST_ENV_CASES={cases}");
    v
}

fn oracle_dir() -> PathBuf {
    let dir =
        std::env::var_os("BST_NODE_ORACLE").map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/node-oracle"), PathBuf::from);
    if !dir.join("node_modules/dotenv/package.json").exists() {
        let ok = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/node-oracle"))
            .env("BST_NODE_ORACLE", &dir)
            .status()
            .expect("scripts/node-oracle runs")
            .success();
        assert!(ok, "installing the npm dotenv oracle failed (scripts/node-oracle)");
    }
    dir
}

/// What Node (`util.parseEnv`) or npm `dotenv` (`parse`) reads from `file`.
fn js_read(dialect: &str, file: &Path) -> serde_json::Map<String, serde_json::Value> {
    let script = "const fs = require('fs'); const [d, f, dir] = process.argv.slice(1); const b = fs.readFileSync(f);\n\
                  const r = d === 'node' ? require('util').parseEnv(b.toString('utf8')) : require(dir + '/node_modules/dotenv').parse(b);\n\
                  process.stdout.write(JSON.stringify(r));";
    let out = Command::new("node").arg("-e").arg(script).arg(dialect).arg(file).arg(oracle_dir()).output().expect("node runs");
    assert!(out.status.success(), "node failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap().as_object().unwrap().clone()
}

/// What a systemd service started with `EnvironmentFile=<path>` gets, in the container.
fn systemd_read(path: &str) -> Vec<(String, Vec<u8>)> {
    let h = host();
    let out = format!("{path}.oracle-out");
    h.ssh(&format!("rm -f {out}; systemd-run --wait -q -p EnvironmentFile={path} -p StandardOutput=file:{out} /usr/bin/env -0 >/dev/null"));
    let bytes = std::fs::read(h.rootfs().join(out.trim_start_matches('/'))).unwrap();
    bytes
        .split(|&b| b == 0)
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let eq = kv.iter().position(|&b| b == b'=').unwrap();
            (String::from_utf8_lossy(&kv[..eq]).into_owned(), kv[eq + 1..].to_vec())
        })
        .collect()
}

fn backups(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".env.bak."))
        .collect();
    v.sort();
    v
}

/// Sets every corpus value under its own key; an accepted value must be in the file for the
/// consumer exactly, a refused one (exit 2) must leave the file and its backups alone.
/// Returns the accepted (key, value) pairs.
fn set_corpus(config: &Path, file: &Path) -> Vec<(String, String)> {
    let mut accepted = Vec::new();
    for (i, v) in corpus().into_iter().enumerate() {
        let key = format!("K{i}");
        let before = std::fs::read(file).ok();
        let baks = file.parent().filter(|d| d.exists()).map(backups);
        let run = set(config, &key, &v);
        match run.code {
            0 => accepted.push((key, v)),
            2 => {
                assert!(run.stderr.contains("refusing"), "{run:?}");
                assert_eq!(std::fs::read(file).ok(), before, "a refused set wrote {key}");
                assert_eq!(file.parent().filter(|d| d.exists()).map(backups), baks, "a refused set made a backup");
            }
            _ => panic!("env set {key}: {run:?}"),
        }
    }
    accepted
}

/// A `host = "local"` target without services: `dotenv` is its default dialect, so that one is
/// left to the default.
fn local_target(dialect: &str, extra: &str) -> (Workspace, Env) {
    let ws = Workspace::new();
    let key = if dialect == "dotenv" { String::new() } else { format!("env_dialect = \"{dialect}\"\n") };
    let env = Env::new(None, &ws, &format!("{key}{extra}"));
    (ws, env)
}

/// Item 8/9: Node (`util.parseEnv`) and npm `dotenv` read every value `env set` accepted as
/// it was given; the rest were refused before anything was written. Before the dialects,
/// `it's "q" \path` was written as `"it's \"q\" \\path"`, which Node reads as `it's \`.
#[test]
fn node_and_dotenv_read_back_every_value_env_set_accepts() {
    for dialect in ["dotenv", "node"] {
        let (_ws, env) = local_target(dialect, "");
        let file = env.base.join("shared/.env");
        let accepted = set_corpus(&env.config, &file);
        let read = js_read(dialect, &file);
        for (k, v) in &accepted {
            assert_eq!(read.get(k).and_then(|x| x.as_str()), Some(v.as_str()), "{dialect} reads {k} differently from what was set ({v:?})");
        }
        if dialect == "node" {
            // `--env-file` is the same parser as `util.parseEnv`; checked, not assumed.
            let out = Command::new("node")
                .arg(format!("--env-file={}", file.display()))
                .args(["-e", "process.stdout.write(JSON.stringify(process.env))"])
                .env_clear()
                .output()
                .expect("node runs");
            assert!(out.status.success(), "node --env-file failed: {}", String::from_utf8_lossy(&out.stderr));
            let env: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            for (k, v) in &accepted {
                assert_eq!(env[k.as_str()].as_str(), Some(v.as_str()), "node --env-file reads {k} differently ({v:?})");
            }
        }
        let ok = |v: &str| accepted.iter().any(|(_, a)| a == v);
        assert!(ok("it's \"q\" \\path") && ok("http://x/#frag") && ok("multi\nline\nvalue") && ok("$HOME ${HOME} $(id) `id`"), "{dialect}");
        assert!(!ok("a'b\"c`d #e") && !ok("  leading"), "{dialect} accepted a value it cannot hold");
        assert_eq!(std::fs::metadata(&file).unwrap().mode() & 0o777, 0o600, "a new env file is 0600");
    }
}

/// Item 8/9: systemd's `EnvironmentFile=` (a real service in the container) reads every value
/// `env set` accepted exactly. The target declares services, so the dialect defaults to
/// systemd.
#[test]
fn systemd_reads_back_every_value_env_set_accepts() {
    let a = app("envfile", "");
    a.bst(&["config", "show", "t"]).ok().stdout_has("env_dialect     systemd  (built-in default: the target declares services)");
    let path = format!("{}/shared/.env", a.base);
    let file = host().rootfs().join(path.trim_start_matches('/'));
    let accepted = set_corpus(&a.env.config, &file);
    let read = systemd_read(&path);
    for (k, v) in &accepted {
        let got = read.iter().find(|(rk, _)| rk == k).map(|(_, v)| String::from_utf8_lossy(v).into_owned());
        assert_eq!(got.as_deref(), Some(v.as_str()), "systemd reads {k} differently from what was set ({v:?})");
    }
    let ok = |v: &str| accepted.iter().any(|(_, a)| a == v);
    assert!(ok("a'b\"c`d #e") && ok("it's \"q\" \\path") && ok("x\n# not a comment\nY=2"), "systemd can hold these");
    assert!(!ok("  leading") && !ok("trailing "), "hidden whitespace is refused in every dialect");
}

/// The tricky lines of item 8, as a file someone else wrote.
const TRICKY: &str = "# c\nexport E=1\nU=http://x/#frag\nQ=\"a\\\"b\" # n\nS='it''s'\nB=\"x\\ny\"\nT=a\\\nb\nH=x #y\nD=\"$HOME\"\n";
const TRICKY_KEYS: [&str; 9] = ["E", "U", "Q", "S", "B", "T", "H", "D", "NOPE"];

/// `expect_env` set to what the consumer reads; `env check` must say `match` for each key the
/// consumer has and `missing` for the others.
fn check_reads_like(env: &Env, read: &dyn Fn(&str) -> Option<String>) {
    let cfg = std::fs::read_to_string(&env.config).unwrap();
    let mut expect = String::from("expect_env = {");
    for (i, k) in TRICKY_KEYS.iter().enumerate() {
        let v = read(k).unwrap_or_else(|| "absent".into());
        expect.push_str(&format!("{}{k} = {}", if i > 0 { ", " } else { " " }, serde_json::to_string(&v).unwrap()));
    }
    expect.push_str(" }\n");
    let head = cfg.find("\n[targets.t.services").unwrap_or(cfg.len());
    std::fs::write(&env.config, format!("{}\n{expect}{}", &cfg[..head], &cfg[head..])).unwrap();
    let j = bst_with(&env.config, &["env", "check", "t", "--json", "--reports", &env.dir.path().join("r").to_string_lossy()], &[]).json();
    for e in j["expect"].as_array().unwrap() {
        let k = e["key"].as_str().unwrap();
        let want = if read(k).is_some() { "match" } else { "missing" };
        assert_eq!(e["status"], want, "{k}: bst reads it unlike the consumer ({})", j["dialect"]);
    }
}

/// Item 8: `env check` reads a file as Node and npm `dotenv` do. Before, bst read
/// `U=http://x/#frag` as `…#frag` where both read `http://x/`.
#[test]
fn env_check_reads_like_node_and_dotenv() {
    for dialect in ["dotenv", "node"] {
        let (_ws, env) = local_target(dialect, "");
        std::fs::create_dir_all(env.base.join("shared")).unwrap();
        let file = env.base.join("shared/.env");
        std::fs::write(&file, TRICKY).unwrap();
        let read = js_read(dialect, &file);
        check_reads_like(&env, &|k| read.get(k).and_then(|v| v.as_str()).map(str::to_string));
    }
}

/// Item 8: `env check` reads a file as systemd's `EnvironmentFile=` does.
#[test]
fn env_check_reads_like_systemd() {
    let a = app("envcheck", "");
    let path = format!("{}/shared/.env", a.base);
    let file = host().rootfs().join(path.trim_start_matches('/'));
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, TRICKY).unwrap();
    let read = systemd_read(&path);
    check_reads_like(&a.env, &|k| read.iter().find(|(rk, _)| rk == k).map(|(_, v)| String::from_utf8_lossy(v).into_owned()));
}

/// Item 8: `env compare` follows the dialect: `http://x/#frag` and `http://x/` are the same
/// value to npm `dotenv`, different ones to systemd.
#[test]
fn env_compare_follows_the_dialect() {
    for (dialect, want) in [("dotenv", "SAME"), ("systemd", "DIFFERENT")] {
        let (_ws, env) = local_target(dialect, "");
        std::fs::create_dir_all(env.base.join("shared")).unwrap();
        std::fs::write(env.base.join("shared/.env"), "U=http://x/#frag\n").unwrap();
        std::fs::write(env.base.join("shared/other.env"), "U=http://x/\n").unwrap();
        let r = env.dir.path().join("r").to_string_lossy().into_owned();
        let run = env.bst(&["env", "compare", "t", "t:shared/other.env", "--keys", "U", "--reports", &r]);
        assert!(run.stdout.lines().any(|l| l.starts_with('U') && l.contains(want)), "{dialect}: {run:?}");
    }
}

/// Item 7: `env set` changes the one entry and nothing else: a non-UTF-8 value elsewhere, each
/// line's own ending, `export`, the file's mode, owner and group all stay. Before, the file
/// came back with U+FFFD, every line CRLF, `export` dropped, 0600 and root:root.
#[test]
fn env_set_keeps_every_other_byte_mode_owner_and_group() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let env = Env::new(Some(&sshd), &ws, "");
    let dir = env.base.join("shared");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(".env");
    let original: &[u8] = b"# app \xe9t\xe9\nLATIN1=caf\xe9\nWIN=1\r\nexport TOKEN=old-secret-value\n\n  # end\nLAST=x";
    std::fs::write(&file, original).unwrap();
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        sh(&dir, "chown 1234:4321 .env");
    }
    sh(&dir, "chmod 0640 .env");
    set(&env.config, "TOKEN", "new-secret-value").ok();
    let want: &[u8] = b"# app \xe9t\xe9\nLATIN1=caf\xe9\nWIN=1\r\nexport TOKEN=new-secret-value\n\n  # end\nLAST=x";
    assert_eq!(String::from_utf8_lossy(&std::fs::read(&file).unwrap()), String::from_utf8_lossy(want));
    assert_eq!(std::fs::read(&file).unwrap(), want, "bytes outside the edited entry changed");
    let m = std::fs::metadata(&file).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o640, "mode changed");
    if root {
        assert_eq!((m.uid(), m.gid()), (1234, 4321), "owner or group changed");
    }
    // A new key goes at the end with the file's dominant line ending (LF here), after a newline
    // the last line lacked.
    set(&env.config, "ADDED", "v").ok();
    let mut want2 = want.to_vec();
    want2.extend_from_slice(b"\nADDED=v\n");
    assert_eq!(std::fs::read(&file).unwrap(), want2);
    let js = js_read("dotenv", &file);
    assert_eq!(js["TOKEN"], "new-secret-value");
    assert_eq!(js["WIN"], "1");
}

/// Item 10: `env set` keeps the newest `env_backups_keep` backups and `env keys`/`env check`
/// say how many exist. Before, every backup (each with old secrets) stayed forever.
#[test]
fn env_set_prunes_old_backups_and_keys_and_check_count_them() {
    let (_ws, env) = local_target("dotenv", "env_backups_keep = 3\nrequired_env = [\"A\"]");
    let dir = env.base.join("shared");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(".env"), "A=1\n").unwrap();
    for i in 0..5 {
        std::fs::write(dir.join(format!(".env.bak.2000010{i}T000000Z")), "A=old\n").unwrap();
    }
    let j = env.bst(&["env", "keys", "t", "--json"]).ok().json();
    assert_eq!(j["backups"], 5);
    let run = set(&env.config, "A", "2").ok();
    assert!(run.stderr.contains("removed 3 old backups"), "{run:?}");
    let left = backups(&dir);
    assert_eq!(left.len(), 3, "{left:?}");
    assert!(left.contains(&".env.bak.20000103T000000Z".to_string()) && left.contains(&".env.bak.20000104T000000Z".to_string()), "{left:?}");
    assert!(!left.iter().any(|b| b.starts_with(".env.bak.2000") && b < &".env.bak.20000103".to_string()), "{left:?}");
    assert_eq!(env.bst(&["env", "keys", "t", "--json"]).ok().json()["backups"], 3);
    let r = env.dir.path().join("r").to_string_lossy().into_owned();
    let j = env.bst(&["env", "check", "t", "--json", "--reports", &r]).ok().json();
    assert_eq!((j["backups"].clone(), j["backups_keep"].clone()), (serde_json::json!(3), serde_json::json!(3)));
    env.bst(&["env", "check", "t", "--reports", &r]).ok().stdout_has("3 backups (env set keeps the newest 3)");
}
