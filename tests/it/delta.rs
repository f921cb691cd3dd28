//! Issue 5: delta redeploys send only what changed, and the result is exactly the workspace:
//! edits, additions, removals, mode and symlink changes, file <-> directory swaps. A build
//! that edits a shipped file in place never leaks into the next release.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::harness::*;

/// path -> (kind, mode, content or link target), for everything bst ships.
pub(crate) fn tree(root: &Path, skip_git: bool) -> BTreeMap<String, (char, u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if (skip_git && (rel == ".git" || rel.starts_with(".git/"))) || rel == ".release-meta" {
                continue;
            }
            let md = std::fs::symlink_metadata(e.path()).unwrap();
            if md.file_type().is_symlink() {
                out.insert(rel, ('l', 0, std::fs::read_link(e.path()).unwrap().to_string_lossy().into_owned().into_bytes()));
            } else if md.is_dir() {
                stack.push(e.path());
            } else {
                out.insert(rel, ('f', md.permissions().mode() & 0o111, std::fs::read(e.path()).unwrap()));
            }
        }
    }
    out
}

pub(crate) fn shipped(ws: &Workspace) -> BTreeMap<String, (char, u32, Vec<u8>)> {
    let mut t = tree(ws.path(), true);
    // What .gitignore keeps out never ships.
    t.retain(|p, _| !p.starts_with("node_modules/") && p != "ignored.txt" && p != ".env");
    t
}

fn deploy_json(env: &Env) -> serde_json::Value {
    env.bst(&["deploy", "t", "--json"]).ok().json()
}

#[test]
fn redeploys_send_only_changes_and_the_release_equals_the_workspace() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    for i in 0..200 {
        ws.write(&format!("src/m{i:03}.ts"), &format!("export const v = {i};\n"));
    }
    ws.write("swap/inner.txt", "a directory that becomes a file");
    ws.write("became-dir", "a file that becomes a directory");
    std::fs::write(ws.path().join("asset.bin"), noise(300_000, 4)).unwrap();
    ws.commit("more");
    let env = Env::new(Some(&sshd), &ws, "");
    let first = deploy_json(&env);
    assert_eq!(first["delta"], false, "nothing to diff against on the first deploy");
    assert_eq!(tree(&env.base.join("current"), false), shipped(&ws));
    // No change at all: nothing but bst's own manifest travels.
    let same = deploy_json(&env);
    assert_eq!((same["delta"].as_bool(), same["files_sent"].as_u64()), (Some(true), Some(0)));
    assert_eq!(tree(&env.base.join("current"), false), shipped(&ws));
    // Every kind of change at once.
    ws.write("src/m007.ts", "export const v = 'edited, and longer than before';\n");
    ws.write("src/new.ts", "export const added = true;\n");
    std::fs::remove_file(ws.path().join("src/m008.ts")).unwrap();
    sh(ws.path(), "chmod +x src/m009.ts && git update-index --chmod=+x src/m009.ts");
    sh(ws.path(), "rm entry.ts && ln -s src/m010.ts entry.ts");
    sh(ws.path(), "rm -r swap && echo now-a-file > swap && rm became-dir && mkdir became-dir && echo inside > became-dir/f.txt");
    let j = deploy_json(&env);
    assert_eq!(j["delta"], true);
    let sent = j["files_sent"].as_u64().unwrap();
    assert!((5..=8).contains(&sent), "sent {sent} files for 7 changes");
    assert!(j["bytes_sent"].as_u64().unwrap() < first["bytes_sent"].as_u64().unwrap() / 3, "{j}");
    assert_eq!(tree(&env.base.join("current"), false), shipped(&ws), "the delta release differs from the workspace");
    // Older releases are untouched by the pristine copy's updates.
    let ids = env.release_ids();
    assert_eq!(std::fs::read_to_string(env.base.join("releases").join(&ids[0]).join("src/m007.ts")).unwrap(), "export const v = 7;\n");
}

#[test]
fn a_build_editing_shipped_files_in_place_never_reaches_the_next_release() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let env = Env::new(Some(&sshd), &ws, "build = \"echo built-in-place >> package.json; echo x >> scripts/run.sh\"");
    env.bst(&["deploy", "t", "--build", "-q"]).ok();
    assert!(std::fs::read_to_string(env.base.join("current/package.json")).unwrap().contains("built-in-place"));
    let j = deploy_json(&env);
    assert_eq!(j["delta"], true);
    assert_eq!(std::fs::read_to_string(env.base.join("current/package.json")).unwrap(), "{\"name\":\"ws\"}\n");
    assert_eq!(tree(&env.base.join("current"), false), shipped(&ws));
}

#[test]
fn an_invalid_pristine_copy_falls_back_to_a_full_upload() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let env = Env::new(Some(&sshd), &ws, "");
    env.bst(&["deploy", "t", "-q"]).ok();
    env.wait_cache_job();
    // An update of the pristine copy that was cut short leaves no generation marker.
    std::fs::remove_file(env.base.join(".bst-cache/generation")).unwrap();
    std::fs::write(env.base.join(".bst-cache/pristine/package.json"), "corrupted").unwrap();
    let j = deploy_json(&env);
    assert_eq!(j["delta"], false);
    assert_eq!(tree(&env.base.join("current"), false), shipped(&ws));
    // ... and the full upload rebuilt the cache: the next one is a delta again, and correct.
    ws.write("package.json", "{\"name\":\"ws\",\"v\":2}\n");
    let j = deploy_json(&env);
    assert_eq!(j["delta"], true);
    assert_eq!(tree(&env.base.join("current"), false), shipped(&ws));
    // A manifest that does not parse is no reason to fail a deploy either.
    env.wait_cache_job();
    std::fs::write(env.base.join(".bst-cache/manifest"), "garbage").unwrap();
    let run = env.bst(&["deploy", "t", "--json"]).ok();
    assert_eq!(run.json()["delta"], false);
    assert_eq!(tree(&env.base.join("current"), false), shipped(&ws));
}

/// The operator waits for the upload and the switch, not for the cache: the cache job
/// prepares a spare copy after the deploy, the next delta deploy renames it into place, and
/// the result is the same tree a full copy would give.
#[test]
fn the_spare_copy_becomes_the_next_release_and_is_replaced() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    for i in 0..50 {
        ws.write(&format!("lib/f{i:02}.ts"), &format!("export const f = {i};\n"));
    }
    ws.commit("more");
    let env = Env::new(Some(&sshd), &ws, "");
    env.bst(&["deploy", "t", "-q"]).ok();
    env.wait_cache_job();
    let cache = env.base.join(".bst-cache");
    let first = env.current_id();
    let generation_of = |f: &str| std::fs::read_to_string(cache.join(f)).unwrap().split(' ').next().unwrap().to_string();
    assert_eq!(generation_of("spare.generation"), first);
    assert_eq!(tree(&cache.join("spare"), false), tree(&cache.join("pristine"), false));
    assert!(!cache.join("snapshot.tgz").exists() && !cache.join("snapshot.tar").exists(), "the tee'd archive outlived the cache job");
    // Mark the spare so we can see it become the release.
    let spare_ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(cache.join("spare")).unwrap());
    ws.write("lib/f03.ts", "export const f = 'changed';\n");
    std::fs::remove_file(ws.path().join("lib/f04.ts")).unwrap();
    let j = deploy_json(&env);
    assert_eq!(j["delta"], true);
    let id = env.current_id();
    let rel = env.base.join("releases").join(&id);
    assert_eq!(std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&rel).unwrap()), spare_ino, "the spare was not used");
    assert_eq!(tree(&rel, false), shipped(&ws));
    // The release's meta was written by the same script as the upload, with a real duration.
    let meta = env.meta(&id);
    assert_eq!(meta["status"], "ok");
    let d = meta["duration_ms"].as_u64().unwrap();
    assert!(d > 0 && d < 600_000, "duration_ms = {d}");
    env.wait_cache_job();
    assert_eq!(generation_of("spare.generation"), id);
    assert_eq!(tree(&cache.join("spare"), false), tree(&cache.join("pristine"), false));
    // A spare of another generation is never used: the release is copied from pristine.
    std::fs::write(cache.join("spare.generation"), "20200101T000000Z\n").unwrap();
    std::fs::write(cache.join("spare/lib/f05.ts"), "stale spare").unwrap();
    ws.write("lib/f06.ts", "export const f = 'again';\n");
    assert_eq!(deploy_json(&env)["delta"], true);
    assert_eq!(tree(&env.base.join("current"), false), shipped(&ws));
}

/// A pid file left by a crash or a reboot may name a process that reused the pid: the deploy
/// neither waits for it nor signals it.
#[test]
fn a_stale_cache_job_pid_is_neither_waited_for_nor_killed() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let env = Env::new(Some(&sshd), &ws, "");
    env.bst(&["deploy", "t", "-q"]).ok();
    env.wait_cache_job();
    let mut bystander = std::process::Command::new("sleep").arg("300").spawn().unwrap();
    std::fs::write(env.base.join(".bst-cache/job.pid"), format!("{}\n", bystander.id())).unwrap();
    ws.write("package.json", "{\"name\":\"ws\",\"v\":3}\n");
    let started = std::time::Instant::now();
    assert_eq!(deploy_json(&env)["delta"], true);
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "waited for an unrelated process");
    assert!(bystander.try_wait().unwrap().is_none(), "an unrelated process was signalled");
    bystander.kill().unwrap();
    let _ = bystander.wait();
    assert_eq!(tree(&env.base.join("current"), false), shipped(&ws));
}

/// Change detection is by content: fresh mtimes on every file (a CI checkout, a second
/// laptop's clone) send nothing that did not change.
#[test]
fn new_mtimes_and_another_clone_send_only_real_changes() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    for i in 0..40 {
        ws.write(&format!("src/m{i:02}.ts"), &format!("export const v = {i};\n"));
    }
    ws.commit("more");
    let env = Env::new(Some(&sshd), &ws, "");
    env.bst(&["deploy", "t", "-q"]).ok();
    sh(ws.path(), "find . -path ./.git -prune -o -type f -exec touch -d '2031-01-01 00:00:00' {} +");
    let j = deploy_json(&env);
    assert_eq!((j["delta"].as_bool(), j["files_sent"].as_u64()), (Some(true), Some(0)), "{j}");
    // Another machine: a clone has its own mtimes and no hash cache; one real edit there.
    let other = tempfile::tempdir().unwrap();
    let clone = other.path().join("clone");
    sh(other.path(), &format!("git clone -q {} clone", ws.path().display()));
    std::fs::write(clone.join("src/m05.ts"), "export const v = 'from the other laptop';\n").unwrap();
    // What the clone does not carry (ignored and untracked files of the first workspace)
    // is removed from the release, as a full upload of the clone would do.
    let config = other.path().join("targets.toml");
    let text = std::fs::read_to_string(&env.config).unwrap();
    let ws_line = text.lines().find(|l| l.starts_with("source = ")).unwrap();
    std::fs::write(&config, text.replace(ws_line, &format!("source = {}", toml_str(&clone)))).unwrap();
    let run = bst_with(&config, &["deploy", "t", "--json"], &[]).ok();
    let j = run.json();
    assert_eq!(j["delta"], true, "{j}");
    let sent = j["files_sent"].as_u64().unwrap();
    assert_eq!(sent, 1, "{j}");
    assert_eq!(std::fs::read_to_string(env.base.join("current/src/m05.ts")).unwrap(), "export const v = 'from the other laptop';\n");
    let mut want = tree(&clone, true);
    want.retain(|p, _| p != ".env");
    assert_eq!(tree(&env.base.join("current"), false), want);
}

/// The level is picked by measurement: over a slow link compression moves the snapshot
/// faster than storing, so the upload compresses (and says so at -v, with the link's rate).
/// Where storing won, the client remembers it per host and sends bare tar (no `gzip -d` on
/// the server); a bare upload over a link where compression would have won makes the next
/// upload compress again.
#[test]
fn the_link_picks_compression_bare_tar_or_a_new_measurement() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    // 24 MiB of source-like text, words drawn at random (compresses ~5x, as real source
    // does; a repeated line would shrink 100x and never load the link).
    let words =
        ["const", "let", "return", "await", "queue", "booking", "payload", "status", "event", "handler", "request", "=>", "{", "};"];
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for i in 0..24 {
        let mut text = String::with_capacity(1 << 20);
        while text.len() < 1 << 20 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            text.push_str(words[(x % words.len() as u64) as usize]);
            text.push(if x % 11 == 0 { '\n' } else { ' ' });
        }
        ws.write(&format!("gen/chunk{i:02}.ts"), &text);
    }
    ws.commit("text");
    let proxy = Proxy::start(sshd.port, None, Some(4 << 20));
    std::fs::write(
        &sshd.known_hosts,
        format!("[127.0.0.1]:{} {}\n[127.0.0.1]:{} {}\n", sshd.port, sshd.host_key, proxy.port, sshd.host_key),
    )
    .unwrap();
    let env = Env::new(Some(&sshd), &ws, "");
    let slow = env.dir.path().join("slow.toml");
    std::fs::write(
        &slow,
        std::fs::read_to_string(&env.config).unwrap().replace(&format!("port = {}", sshd.port), &format!("port = {}", proxy.port)),
    )
    .unwrap();
    let memos = || -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(env.dir.path().join("bst-cache"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("link-"))
            .collect();
        v.sort();
        v
    };
    let full_upload_next = || {
        env.wait_cache_job();
        std::fs::remove_file(env.base.join(".bst-cache/generation")).unwrap();
    };
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();

    // The fast link: the first upload measures (whatever it finds), then a remembered "store"
    // verdict makes full and delta uploads bare tar, and a fast bare upload keeps it.
    let run = env.bst(&["deploy", "t", "--json", "-v"]).ok();
    assert_eq!(run.json()["stream"], "tar.gz");
    let fast = memos();
    assert_eq!(fast.len(), 1, "the measurement is kept per host");
    let verdict = std::fs::read_to_string(&fast[0]).unwrap();
    let level = verdict.strip_prefix("bst-link-2 ").and_then(|v| v.split(' ').next()).unwrap_or_else(|| panic!("{verdict}"));
    let said = if level == "0" {
        "later uploads to this host send bare tar".to_string()
    } else {
        format!("compression: gzip level {}", run.json()["compression"]["level"])
    };
    assert!(run.stderr.contains(&said), "-v should say `{said}` for {verdict}: {}", run.stderr);
    std::fs::write(&fast[0], format!("bst-link-2 0 0 {}\n", now())).unwrap();
    full_upload_next();
    let run = env.bst(&["deploy", "t", "--json", "-v"]).ok();
    assert!(run.stderr.contains("compression: none, bare tar"), "{}", run.stderr);
    let j = run.json();
    assert_eq!((j["stream"].as_str(), j["delta"].as_bool()), (Some("tar"), Some(false)));
    assert_eq!(j["compression"]["level"], 0, "{j}");
    assert!(j["bytes_sent"].as_u64().unwrap() > j["bytes"].as_u64().unwrap(), "bare tar is not compressed: {j}");
    assert_eq!(tree(&env.base.join("current"), false), shipped(&ws));
    assert!(std::fs::read_to_string(&fast[0]).unwrap().starts_with("bst-link-2 0 "), "a fast bare upload keeps the verdict");
    // The cache job unpacked the bare archive as the pristine copy: the next deploy is a delta.
    env.wait_cache_job();
    assert!(!env.base.join(".bst-cache/snapshot.tar").exists(), "the tee'd archive outlived the cache job");
    ws.write("gen/chunk03.ts", "export const changed = true;\n");
    let j = deploy_json(&env);
    assert_eq!((j["stream"].as_str(), j["delta"].as_bool(), j["files_sent"].as_u64()), (Some("tar"), Some(true), Some(1)));
    assert_eq!(tree(&env.base.join("current"), false), shipped(&ws));
    assert!(std::fs::read_to_string(&fast[0]).unwrap().starts_with("bst-link-2 0 "), "a one-file upload measures nothing");

    // The slow link (4 MB/s, another host as far as the client knows): compression wins, and
    // the link's rate is measured from what TCP acknowledged.
    full_upload_next();
    let run = bst_with(&slow, &["deploy", "t", "--json", "-v"], &[]).ok();
    assert!(run.stderr.contains("compression: gzip level "), "{}", run.stderr);
    let j = run.json();
    let (sent, raw) = (j["bytes_sent"].as_u64().unwrap(), j["bytes"].as_u64().unwrap());
    assert!(sent < raw / 2, "sent {sent} of {raw} bytes");
    let c = &j["compression"];
    assert!(c["level"].as_u64().is_some_and(|l| (2..=9).contains(&l)), "{j}");
    assert!(c["stream_bytes"].as_u64().is_some_and(|b| b > 0 && b < sent), "{j}");
    if cfg!(target_os = "linux") {
        let rate = c["link_bytes_per_sec"].as_f64().unwrap_or_else(|| panic!("the link was the bottleneck at some point: {j}"));
        assert!((1e6..8e6).contains(&rate), "the proxy passes 4 MB/s: {j}");
        assert!(j["wire_bytes"].as_u64().is_some_and(|w| w >= sent), "{j}");
    }
    assert_eq!(tree(&env.base.join("current"), false), shipped(&ws));
    let slow_memo: Vec<_> = memos().into_iter().filter(|m| !fast.contains(m)).collect();
    assert_eq!(slow_memo.len(), 1);
    let verdict = std::fs::read_to_string(&slow_memo[0]).unwrap();
    let f: Vec<&str> = verdict.split_whitespace().collect();
    assert_ne!(f[1], "0", "{verdict}");
    // Pretend storing had won here (the laptop was on the LAN then): the bare upload finds a
    // link where compression would have won, so the next upload compresses again.
    std::fs::write(&slow_memo[0], format!("bst-link-2 0 0 {}\n", now())).unwrap();
    full_upload_next();
    let run = bst_with(&slow, &["deploy", "t", "--json", "-v"], &[]).ok();
    assert_eq!(run.json()["stream"], "tar");
    assert!(run.stderr.contains("where gzip would have been faster: the next upload compresses"), "{}", run.stderr);
    assert_eq!(tree(&env.base.join("current"), false), shipped(&ws));
    assert!(!std::fs::read_to_string(&slow_memo[0]).unwrap().starts_with("bst-link-2 0 "), "the store verdict must be dropped");
    full_upload_next();
    let j = bst_with(&slow, &["deploy", "t", "--json"], &[]).ok().json();
    assert_eq!(j["stream"], "tar.gz");
}

/// The local transport (`host = "local"`, the demo) takes bare tar the same way, and its
/// cache job unpacks the bare archive for the next delta.
#[test]
fn the_local_transport_sends_bare_tar_too() {
    let ws = Workspace::new();
    let env = Env::new(None, &ws, "");
    env.remember_bare_tar_for("local", true);
    let j = deploy_json(&env);
    assert_eq!((j["stream"].as_str(), j["delta"].as_bool()), (Some("tar"), Some(false)));
    assert_eq!(tree(&env.base.join("current"), false), shipped(&ws));
    env.wait_cache_job();
    ws.write("package.json", "{\"name\":\"ws\",\"v\":3}\n");
    let j = deploy_json(&env);
    assert_eq!((j["stream"].as_str(), j["delta"].as_bool(), j["files_sent"].as_u64()), (Some("tar"), Some(true), Some(1)));
    assert_eq!(tree(&env.base.join("current"), false), shipped(&ws));
}

/// The server's manifest travels only when this client does not already know it, and a delta
/// deploy appends its changes to it instead of rewriting it; another client still reads it.
#[test]
fn the_manifest_travels_only_when_needed_and_grows_by_patches() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    for i in 0..300 {
        ws.write(&format!("src/m{i:03}.ts"), &format!("export const v = {i};\n"));
    }
    ws.commit("more");
    let env = Env::new(Some(&sshd), &ws, "");
    let first = env.bst(&["deploy", "t", "-v"]).ok();
    assert!(first.stderr.contains("server manifest: none"), "{}", first.stderr);
    env.wait_cache_job();
    let manifest = env.base.join(".bst-cache/manifest");
    let before = std::fs::metadata(&manifest).unwrap().len();
    ws.write("src/m007.ts", "export const v = 'seven';\n");
    std::fs::remove_file(ws.path().join("src/m008.ts")).unwrap();
    let again = env.bst(&["deploy", "t", "-v"]).ok();
    assert!(again.stderr.contains("server manifest: as this client left it, not sent"), "{}", again.stderr);
    let after = std::fs::metadata(&manifest).unwrap().len();
    assert!(after > before && after - before < 400, "manifest {before} -> {after} bytes: rewritten, not patched");
    // Another machine (no local caches): the patched manifest is sent and replayed.
    let other_cache = tempfile::tempdir().unwrap();
    ws.write("src/m009.ts", "export const v = 'nine';\n");
    let third = bst_with(&env.config, &["deploy", "t", "-v", "--json"], &[("BST_CACHE_DIR", other_cache.path().to_str().unwrap())]).ok();
    assert!(third.stderr.contains("server manifest: received"), "{}", third.stderr);
    assert_eq!(third.json()["files_sent"], 1, "{}", third.stdout);
    assert_eq!(tree(&env.base.join("current"), false), shipped(&ws));
}
