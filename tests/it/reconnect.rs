//! Issue 13, item 12: a connection that drops at the very end of a deploy. The server may
//! still finish and switch; bst must say what the server did, read over a new connection, or
//! say that it does not know. Never that `current` is unchanged without having looked.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::harness::*;

/// A target with one ok release and an incompressible file, so the upload is most of what a
/// deploy sends; every upload is a full, bare-tar one of the same size.
struct Setup {
    sshd: Sshd,
    _ws: Workspace,
    env: Env,
    good: String,
}

fn setup() -> Setup {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    std::fs::write(ws.path().join("big.bin"), noise(1 << 20, 5)).unwrap();
    let env = Env::new(Some(&sshd), &ws, "");
    env.bst(&["deploy", "t", "-q"]).ok();
    let good = env.current_id();
    Setup { sshd, _ws: ws, env, good }
}

impl Setup {
    /// The next deploy through `proxy` is a full upload in bare tar.
    fn through(&self, proxy: &Proxy, name: &str) -> std::path::PathBuf {
        self.env.wait_cache_job();
        let _ = std::fs::remove_dir_all(self.env.base.join(".bst-cache"));
        self.env.remember_bare_tar(proxy.port, true);
        proxy.config_for(&self.sshd, &self.env.config, name)
    }

    fn assert_settled(&self, context: &str) {
        assert!(!self.env.base.join(".bst-lock").exists(), "{context}: lock left behind");
        assert!(!self.env.base.join(".bst-incoming").exists(), "{context}: staging left behind");
    }
}

/// What a deploy through a fault-free proxy sends from the client, in bytes: one connection.
fn measure(s: &Setup) -> u64 {
    let proxy = Proxy::start(s.sshd.port, None, None);
    let cfg = s.through(&proxy, "measure.toml");
    bst_with(&cfg, &["deploy", "t", "-q"], &[]).ok();
    let sent = proxy.client_bytes();
    assert_eq!(sent.len(), 1, "a plain deploy is one connection: {sent:?}");
    sent[0]
}

/// The last two KiB of the upload never arrive: the archive ends before its marker. The
/// server does not switch, and bst says so having read it over a new connection, and cleans
/// up (the lock, the failed release) there.
#[test]
fn a_cut_in_the_last_bytes_of_the_upload_is_reported_from_the_server_state() {
    let s = setup();
    let total = measure(&s);
    let before = s.env.current_id();
    let proxy = Proxy::start(s.sshd.port, Some(total - 2048), None);
    let cfg = s.through(&proxy, "cut.toml");
    let run = bst_with(&cfg, &["deploy", "t"], &[]).code(1);
    assert_eq!(s.env.current_id(), before, "{}", run.stderr);
    let id = run.stderr.split("deploy of ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or("?").to_string();
    let want = format!("deploy of {id} to t failed; current still points at releases/{before} (read from the server after reconnecting)");
    assert!(run.stderr.contains(&want), "expected {want:?} in:\n{}", run.stderr);
    assert!(proxy.client_bytes().len() >= 2, "no second connection: {:?}", proxy.client_bytes());
    s.assert_settled("after the cut");
    if s.env.release_ids().contains(&id) {
        assert_eq!(s.env.meta(&id)["status"], "failed");
    }
    s.env.bst(&["deploy", "t", "-q"]).ok();
    let _ = s.good;
}

/// Starts a deploy through a proxy that stops passing the server's replies halfway through
/// the upload: the whole stream still reaches the server, which finishes the deploy while the
/// client waits. Once it has (the lock is gone), the connection is cut.
fn deploy_until_the_server_is_done(s: &Setup, proxy: &Proxy, cfg: &std::path::Path) -> std::process::Child {
    let child = bst_cmd(cfg, &["deploy", "t"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let lock = s.env.base.join(".bst-lock");
    while !lock.exists() && s.env.current_id() == s.good {
        assert!(Instant::now() < deadline, "the deploy never took the lock");
        std::thread::sleep(Duration::from_millis(5));
    }
    while lock.exists() || s.env.current_id() == s.good {
        assert!(Instant::now() < deadline, "the server never finished the deploy");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The client is still waiting for the answer the proxy holds back.
    std::thread::sleep(Duration::from_millis(200));
    assert!(proxy.cut_open() >= 1, "the deploy's connection had already ended");
    child
}

#[test]
fn a_server_that_finished_after_the_connection_dropped_is_reported_switched() {
    let s = setup();
    let proxy = Proxy::start_freezing(s.sshd.port, 512 * 1024);
    let cfg = s.through(&proxy, "freeze.toml");
    let child = deploy_until_the_server_is_done(&s, &proxy, &cfg);
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let now = s.env.current_id();
    assert_ne!(now, s.good);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains(&format!("the server finished the deploy and switched current to {now}")), "{stderr}");
    assert_eq!(stdout, format!("t: current -> releases/{now}\n"));
    assert_eq!(s.env.meta(&now)["status"], "ok");
    s.assert_settled("after the drop");
}

/// The same, but the server cannot be reached again once the connection drops: bst says it
/// does not know, and how to find out.
#[test]
fn a_server_that_cannot_be_reached_again_is_reported_unknown() {
    let s = setup();
    let proxy = Proxy::start_freezing(s.sshd.port, 512 * 1024);
    let cfg = s.through(&proxy, "gone.toml");
    let mut child = bst_cmd(&cfg, &["deploy", "t"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while proxy.client_bytes().first().is_none_or(|&n| n < 512 * 1024) {
        assert!(Instant::now() < deadline, "the upload never got going");
        assert!(child.try_wait().unwrap().is_none(), "the deploy ended early");
        std::thread::sleep(Duration::from_millis(5));
    }
    proxy.refuse_new();
    let lock = s.env.base.join(".bst-lock");
    while lock.exists() {
        assert!(Instant::now() < deadline, "the server never finished the deploy");
        std::thread::sleep(Duration::from_millis(20));
    }
    proxy.cut_open();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let now = s.env.current_id();
    assert_ne!(now, s.good, "the server did switch");
    assert_eq!(out.status.code(), Some(6), "{stderr}");
    assert!(stderr.contains("could not reconnect"), "{stderr}");
    assert!(stderr.contains(&format!("the server may have switched current to {now}; run `bst list t`")), "{stderr}");
    assert!(!stderr.contains("current still points at"), "{stderr}");
}
