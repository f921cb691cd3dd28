//! Issue 6: nothing lost, whatever happens. After any failure `current` points at a complete
//! release whose status is ok, no partial release is listed as ok, and the next deploy works.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::harness::*;

/// The files under `dir` (empty when it is gone: a concurrent prune can take it away).
fn files_in(dir: &Path) -> BTreeSet<String> {
    let script = "find . \\( -type f -o -type l \\) ! -name .release-meta 2>/dev/null | sed 's|^./||'";
    let Ok(out) = std::process::Command::new("sh").arg("-c").arg(script).current_dir(dir).output() else {
        return BTreeSet::new();
    };
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

/// The invariant: current -> an ok release; every ok release holds every file its meta
/// counts (a build may add more, e.g. built.txt), with the workspace's content.
#[track_caller]
fn assert_invariant(env: &Env, ws: &Workspace, context: &str) {
    let releases = env.base.join("releases");
    let cur = env.current().unwrap_or_else(|| panic!("{context}: current vanished"));
    let cur_id = cur.strip_prefix("releases/").unwrap_or_else(|| panic!("{context}: current -> {cur}"));
    assert_eq!(env.meta(cur_id)["status"], "ok", "{context}: current {cur_id} is not ok");
    for id in env.release_ids() {
        let Ok(text) = std::fs::read_to_string(releases.join(&id).join(".release-meta")) else { continue };
        let meta: serde_json::Value = serde_json::from_str(&text).unwrap();
        if meta["status"] != "ok" {
            continue;
        }
        let mut files = files_in(&releases.join(&id));
        files.remove("built.txt");
        let contents: Vec<_> = ["package.json", "scripts/run.sh"]
            .iter()
            .map(|f| (f, std::fs::read(releases.join(&id).join(f)).ok(), std::fs::read(ws.path().join(f)).ok()))
            .collect();
        // The server half of a killed client finishes its deploy on its own and may prune this
        // release while we count: the prune renames it away first (atomic for `bst list`), but
        // `find` follows the renamed directory while it is being deleted. Gone now = pruned.
        if !releases.join(&id).join(".release-meta").exists() {
            continue;
        }
        let want = meta["files"].as_u64().unwrap() as usize;
        assert_eq!(
            files.len(),
            want,
            "{context}: ok release {id} has {} files, its meta says {want}: {:?}\nmeta: {text}\nlisting: {}",
            files.len(),
            files.iter().take(10).collect::<Vec<_>>(),
            sh(&env.base, "ls -la releases current; cat logs/deploys.jsonl")
        );
        for (f, got, want) in contents {
            assert_eq!(got, want, "{context}: {id}/{f} differs");
        }
    }
}

#[test]
fn kill_9_at_random_moments_never_breaks_current() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    for i in 0..400 {
        ws.write(&format!("src/gen/m{i:03}.ts"), &format!("export const v{i} = {};\n", "x".repeat(i * 37 % 4000)));
    }
    ws.write("assets/blob.bin", &String::from_utf8_lossy(&noise(600_000, 7)));
    ws.commit("bulk");
    let env = Env::new(Some(&sshd), &ws, "keep_releases = 3\nbuild = \"sleep 0.2; echo built > built.txt\"");
    env.bst(&["deploy", "t", "-q"]).ok();
    // Time a normal deploy so kills land across upload, extract, link, build, switch and prune.
    let t0 = Instant::now();
    env.bst(&["deploy", "t", "-q", "--build"]).ok();
    let span = t0.elapsed().as_millis() as u64 + 50;
    let mut seed: u64 = 0x5eed_0bad_cafe;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for trial in 0..20 {
        let build = trial % 2 == 0;
        // Both framings of the upload stream, with and without a build.
        let bare = (trial / 2) % 2 == 1;
        env.remember_bare_tar(sshd.port, bare);
        let delay = rnd() % span;
        let mut args = vec!["deploy", "t", "-q"];
        if build {
            args.push("--build");
        }
        let mut child = bst_cmd(&env.config, &args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        let _ = child.kill();
        let _ = child.wait();
        let context = format!("trial {trial} (kill -9 after {delay} ms of ~{span}, build={build}, bare tar={bare})");
        assert_invariant(&env, &ws, &context);
        // The next deploy works: a stale lock of the dead process is broken, leftovers cleaned.
        env.bst(&["deploy", "t", "-q"]).ok();
        assert_invariant(&env, &ws, &context);
        assert!(!env.base.join(".bst-incoming").exists() && !env.base.join(".bst-lock").exists(), "{context}: leftovers");
    }
    let j = env.bst(&["list", "t", "--json"]).ok().json();
    assert!(j["releases"].as_array().unwrap().len() <= 3 + 1, "prune keeps working after the trials");
}

/// What the upload script extracts with, as `-vv` shows it: the stream's framing.
fn assert_framing(stderr: &str, bare: bool) {
    // Both uploads extract with the flags their prologue sets.
    let extracts = |flags: &str| stderr.contains("tar \"$bst_x\" - -C") && stderr.contains(&format!("bst_x={flags}\n"));
    let (want, not) = if bare { ("-xf", "-xzf") } else { ("-xzf", "-xf") };
    assert!(extracts(want) && !extracts(not), "expected `tar {want} -` in the upload script: {stderr}");
}

#[test]
fn connection_cut_mid_upload_is_a_clear_error_and_cleaned_next_time() {
    connection_cut_mid_upload(false);
}

#[test]
fn connection_cut_mid_bare_tar_upload_is_a_clear_error_and_cleaned_next_time() {
    connection_cut_mid_upload(true);
}

fn connection_cut_mid_upload(bare: bool) {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let env = Env::new(Some(&sshd), &ws, "");
    env.bst(&["deploy", "t", "-q"]).ok();
    let good = env.current_id();
    std::fs::write(ws.path().join("big.bin"), noise(3 << 20, 1)).unwrap();
    let proxy = Proxy::start(sshd.port, Some(1 << 20), None);
    std::fs::write(
        &sshd.known_hosts,
        format!("[127.0.0.1]:{} {}\n[127.0.0.1]:{} {}\n", sshd.port, sshd.host_key, proxy.port, sshd.host_key),
    )
    .unwrap();
    let via_proxy =
        std::fs::read_to_string(&env.config).unwrap().replace(&format!("port = {}", sshd.port), &format!("port = {}", proxy.port));
    let cut_cfg = env.dir.path().join("cut.toml");
    std::fs::write(&cut_cfg, via_proxy).unwrap();
    env.remember_bare_tar(proxy.port, bare);
    env.remember_bare_tar(sshd.port, bare);
    let run = bst_with(&cut_cfg, &["deploy", "t", "-vv"], &[]);
    assert_ne!(run.code, 0);
    assert_framing(&run.stderr, bare);
    assert!(run.stderr.contains("connection") || run.stderr.contains("upload failed"), "unclear error: {}", run.stderr);
    assert!(run.stderr.contains(&format!("current still points at releases/{good}")), "{}", run.stderr);
    assert_eq!(env.current_id(), good);
    std::thread::sleep(Duration::from_millis(300));
    // The next deploy breaks the dead run's lock, removes the partial upload and works.
    let j = env.bst(&["deploy", "t", "--json"]).ok().json();
    assert_eq!(j["stream"], if bare { "tar" } else { "tar.gz" });
    assert!(!env.base.join(".bst-incoming").exists());
    assert_invariant(&env, &ws, "after the cut");
    assert_eq!(env.release_ids().len(), 2, "the cut upload never became a release");
}

#[test]
fn ctrl_c_mid_upload_removes_the_partial_release_and_the_lock() {
    ctrl_c_mid_upload(false);
}

#[test]
fn ctrl_c_mid_bare_tar_upload_removes_the_partial_release_and_the_lock() {
    ctrl_c_mid_upload(true);
}

fn ctrl_c_mid_upload(bare: bool) {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let env = Env::new(Some(&sshd), &ws, "");
    env.bst(&["deploy", "t", "-q"]).ok();
    let good = env.current_id();
    std::fs::write(ws.path().join("big.bin"), noise(4 << 20, 2)).unwrap();
    let proxy = Proxy::start(sshd.port, None, Some(1 << 20));
    std::fs::write(
        &sshd.known_hosts,
        format!("[127.0.0.1]:{} {}\n[127.0.0.1]:{} {}\n", sshd.port, sshd.host_key, proxy.port, sshd.host_key),
    )
    .unwrap();
    let slow_cfg = env.dir.path().join("slow.toml");
    std::fs::write(
        &slow_cfg,
        std::fs::read_to_string(&env.config).unwrap().replace(&format!("port = {}", sshd.port), &format!("port = {}", proxy.port)),
    )
    .unwrap();
    env.remember_bare_tar(proxy.port, bare);
    let mut child = bst_cmd(&slow_cfg, &["deploy", "t", "-vv"]).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !env.base.join(".bst-incoming").exists() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "upload never started: {}\nbase: {}",
                String::from_utf8_lossy(&out.stderr),
                sh(
                    &env.base,
                    "ls -la . .bst-lock 2>&1; cat .bst-lock/* 2>&1; ps aux | grep -v grep | grep -E 'tar|gzip|sh -c' | cut -c1-150 | head"
                )
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let t = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    assert_framing(&String::from_utf8_lossy(&out.stderr), bare);
    assert!(t.elapsed() < Duration::from_secs(8), "Ctrl-C took {:?}", t.elapsed());
    assert_eq!(env.current_id(), good);
    assert!(!env.base.join(".bst-lock").exists(), "lock not released");
    std::thread::sleep(Duration::from_millis(500));
    assert!(!env.base.join(".bst-incoming").exists(), "partial upload left behind");
    let ids = env.release_ids();
    let leftovers: Vec<String> = ids.iter().filter(|i| **i != good).map(|i| format!("{i}: {}", env.meta(i)["status"])).collect();
    assert!(leftovers.is_empty(), "interrupted upload left {leftovers:?}; bst said: {}", String::from_utf8_lossy(&out.stderr));
    env.bst(&["deploy", "t", "-q"]).ok();
}

#[test]
fn full_disk_is_a_clear_error_and_the_next_deploy_works() {
    full_disk(false);
}

#[test]
fn full_disk_during_a_bare_tar_upload_is_a_clear_error_and_the_next_deploy_works() {
    full_disk(true);
}

fn full_disk(bare: bool) {
    assert!(unsafe { libc::geteuid() } == 0, "mounting a small tmpfs needs root (CI runs as root)");
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let env = Env::new(Some(&sshd), &ws, "");
    std::fs::create_dir_all(&env.base).unwrap();
    sh(env.dir.path(), &format!("mount -t tmpfs -o size=3m bst-full-disk {}", env.base.display()));
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _guard = Unmount(env.base.clone());
    env.bst(&["deploy", "t", "-q"]).ok();
    let good = env.current_id();
    std::fs::write(ws.path().join("huge.bin"), noise(5 << 20, 3)).unwrap();
    env.remember_bare_tar(sshd.port, bare);
    let run = env
        .bst(&["deploy", "t", "-vv"])
        .code(1)
        .stderr_has("No space left on device")
        .stderr_has(&format!("current still points at releases/{good}"));
    assert_framing(&run.stderr, bare);
    assert_eq!(env.current_id(), good);
    assert!(!env.base.join(".bst-incoming").exists(), "the partial release must be removed");
    assert!(!env.base.join(".bst-lock").exists());
    assert_eq!(env.release_ids(), vec![good.clone()]);
    // Free the space: the next deploy works.
    std::fs::remove_file(ws.path().join("huge.bin")).unwrap();
    env.bst(&["deploy", "t", "-q"]).ok();
    assert_ne!(env.current_id(), good);
}

#[test]
fn keepalives_hold_a_long_silent_build_through_an_idle_timeout() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let proxy = Proxy::start_idle(sshd.port, Duration::from_secs(3));
    let env = Env::new(None, &ws, "");
    let kh = env.dir.path().join("kh");
    std::fs::write(&kh, format!("[127.0.0.1]:{} {}\n", proxy.port, sshd.host_key)).unwrap();
    std::fs::write(
        &env.config,
        format!("[targets.t]\nhost = \"quiet\"\nbase = {}\nsource = {}\nbuild = \"sleep 7\"\n", toml_str(&env.base), toml_str(ws.path())),
    )
    .unwrap();
    let cfg = |alive: &str| {
        let p = env.dir.path().join(format!("ssh_config{alive}"));
        std::fs::write(
            &p,
            format!(
                "Host quiet\n  HostName 127.0.0.1\n  Port {}\n  User {}\n  IdentityFile {}\n  UserKnownHostsFile {}\n{alive}",
                proxy.port,
                whoami(),
                sshd.user_key.display(),
                kh.display()
            ),
        )
        .unwrap();
        p.to_string_lossy().into_owned()
    };
    // Keepalives every second: the 7 s of silence never looks idle.
    bst_with(&env.config, &["deploy", "t", "--build", "-q"], &[("BST_SSH_CONFIG", &cfg("  ServerAliveInterval 1\n"))]).ok();
    // The proxy really does cut quiet connections: with the default 15 s interval it does.
    let run = bst_with(&env.config, &["deploy", "t", "--build"], &[("BST_SSH_CONFIG", &cfg(""))]);
    assert_ne!(run.code, 0, "the idle proxy did not cut a silent connection: {}", run.stderr);
    assert_eq!(env.meta(&env.current_id())["status"], "ok");
}

#[test]
fn ctrl_c_sigterm_and_sighup_at_random_moments_release_the_lock_and_keep_current_good() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    for i in 0..300 {
        ws.write(&format!("src/gen/m{i:03}.ts"), &format!("export const v{i} = {};\n", "y".repeat(i * 53 % 3000)));
    }
    ws.write("assets/blob.bin", &String::from_utf8_lossy(&noise(400_000, 9)));
    ws.commit("bulk");
    let env = Env::new(Some(&sshd), &ws, "keep_releases = 3\nbuild = \"sleep 0.3; echo built > built.txt\"");
    env.bst(&["deploy", "t", "-q"]).ok();
    let t0 = Instant::now();
    env.bst(&["deploy", "t", "-q", "--build"]).ok();
    let span = t0.elapsed().as_millis() as u64 + 50;
    let mut seed: u64 = 0x0c7a_1c00_5eed;
    for trial in 0..12 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // From 30 ms: the handler is installed first thing in main, not before exec.
        let delay = 30 + seed % span;
        let build = trial % 2 == 0;
        let mut args = vec!["deploy", "t", "-q"];
        if build {
            args.push("--build");
        }
        let child = bst_cmd(&env.config, &args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        // A cancelled CI job sends SIGTERM, a closed terminal SIGHUP: each must clean up as
        // Ctrl-C does (issue 20, item 6).
        let (sig, name) = [(libc::SIGINT, "SIGINT"), (libc::SIGTERM, "SIGTERM"), (libc::SIGHUP, "SIGHUP")][trial % 3];
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let out = child.wait_with_output().unwrap();
        let context = format!("trial {trial} ({name} after {delay} ms of ~{span}, build={build})");
        let code = out.status.code();
        assert!(matches!(code, Some(0) | Some(130)), "{context}: exit {code:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(!env.base.join(".bst-lock").exists(), "{context}: lock not released: {}", String::from_utf8_lossy(&out.stderr));
        // The server's abort script may still be removing it as bst exits; on a loaded
        // machine that took more than the 100 ms this once allowed.
        let deadline = Instant::now() + Duration::from_secs(3);
        while env.base.join(".bst-incoming").exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!env.base.join(".bst-incoming").exists(), "{context}: partial upload left behind");
        assert_invariant(&env, &ws, &context);
        if code == Some(130) {
            assert!(String::from_utf8_lossy(&out.stderr).contains("interrupted"), "{context}");
        }
    }
    env.bst(&["deploy", "t", "-q"]).ok();
}
