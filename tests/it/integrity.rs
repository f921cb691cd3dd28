//! Issue 12: a deploy never ships a wrong tree and never damages the server's layout. One
//! regression test per case the review reproduced; `model.rs` hunts for the ones nobody wrote
//! down yet.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use crate::harness::*;

/// Every file and link under `dir` with its bytes (or link target), for "unchanged" checks.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let out = sh(dir, "find . -mindepth 1 | LC_ALL=C sort");
    out.lines()
        .map(|p| {
            let full = dir.join(p);
            let md = std::fs::symlink_metadata(&full).unwrap();
            let data = if md.file_type().is_symlink() {
                std::fs::read_link(&full).unwrap().as_os_str().as_bytes().to_vec()
            } else if md.is_file() {
                std::fs::read(&full).unwrap()
            } else {
                b"<dir>".to_vec()
            };
            (p.to_string(), data)
        })
        .collect()
}

fn with_shared_env(env: &Env) -> Vec<(String, Vec<u8>)> {
    std::fs::create_dir_all(env.base.join("shared/apps/web")).unwrap();
    std::fs::write(env.base.join("shared/.env"), "TOKEN=root-secret\n").unwrap();
    std::fs::write(env.base.join("shared/apps/web/.env"), "TOKEN=web-secret\n").unwrap();
    snapshot(&env.base.join("shared"))
}

/// Case 1: a committed `.release-meta -> ../../shared/.env` replaced the shared `.env` with
/// the meta JSON.
#[test]
fn a_workspace_entry_named_like_bsts_own_files_is_refused_and_shared_survives() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let env = Env::new(Some(&sshd), &ws, "shared_files = [\".env\"]");
    env.bst(&["deploy", "t", "-q"]).ok();
    let before = with_shared_env(&env);
    let releases = env.release_ids();
    for (name, setup) in [
        (".release-meta", "ln -s ../../shared/.env .release-meta"),
        (".release-meta.tmp", "ln -s ../../shared/.env .release-meta.tmp"),
        (".bst-upload/manifest", "mkdir -p .bst-upload && echo x > .bst-upload/manifest"),
    ] {
        sh(ws.path(), setup);
        ws.commit(name);
        let run = env.bst(&["deploy", "t"]).code(2);
        assert_eq!(
            run.stderr.lines().next().unwrap_or(""),
            format!("error: cannot ship `{name}`: bst writes that name into every release; rename it, or exclude it"),
            "{}",
            run.stderr
        );
        assert_eq!(snapshot(&env.base.join("shared")), before, "{name}: shared/ changed");
        assert_eq!(env.release_ids(), releases, "{name}: something was uploaded");
        assert!(!env.base.join(".bst-lock").exists());
        sh(ws.path(), &format!("git rm -rq --cached {name} && rm -rf {name} .bst-upload"));
        ws.commit("tidy");
    }
    env.bst(&["deploy", "t", "-q"]).ok();
    assert_eq!(snapshot(&env.base.join("shared")), before);
}

/// A build step that leaves a `.release-meta` link behind must not get the meta written
/// through it either.
#[test]
fn a_release_meta_link_made_by_the_build_is_replaced_not_written_through() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let env = Env::new(Some(&sshd), &ws, "shared_files = [\".env\"]\nbuild = \"ln -sfn ../../shared .release-meta\"");
    env.bst(&["deploy", "t", "-q"]).ok();
    let before = with_shared_env(&env);
    env.bst(&["deploy", "t", "-q", "--build"]).ok();
    assert_eq!(snapshot(&env.base.join("shared")), before, "the meta was written through the build's link");
    let id = env.current_id();
    assert!(!std::fs::symlink_metadata(env.base.join("releases").join(&id).join(".release-meta")).unwrap().file_type().is_symlink());
    assert_eq!(env.meta(&id)["status"], "ok");
}

/// Case 2: `shared_files = ["apps/web/.env"]` plus a committed `apps/web -> ../../../shared`
/// deleted `<base>/shared/.env`.
#[test]
fn shared_links_are_never_made_through_a_workspace_symlink() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let env = Env::new(Some(&sshd), &ws, "shared_files = [\"apps/web/.env\", \"apps/api/src/.env\"]\nshared_dirs = [\"storage\"]");
    env.bst(&["deploy", "t", "-q"]).ok();
    let before = with_shared_env(&env);
    let good = env.current_id();
    // From releases/<id>/apps/, ../../../shared is the server's own shared/.
    sh(ws.path(), "mkdir -p apps && ln -s ../../../shared apps/web");
    ws.commit("hostile link");
    let run = env.bst(&["deploy", "t"]).code(1);
    assert!(
        run.stderr.contains(
            "shared path apps/web/.env: apps/web in the release is a symlink or a file, not a directory; refusing to link through it"
        ),
        "{}",
        run.stderr
    );
    assert_eq!(snapshot(&env.base.join("shared")), before, "shared/ changed");
    assert_eq!(env.current_id(), good);
    // A file where a parent should be is refused too.
    sh(ws.path(), "rm apps/web && echo file > apps/web");
    ws.commit("a file");
    env.bst(&["deploy", "t"]).code(1).stderr_has("apps/web in the release is a symlink or a file");
    assert_eq!(snapshot(&env.base.join("shared")), before);
    assert_eq!(env.current_id(), good);
    sh(ws.path(), "rm apps/web");
    ws.commit("fixed");
    env.bst(&["deploy", "t", "-q"]).ok();
    assert_eq!(std::fs::read_to_string(env.base.join("current/apps/web/.env")).unwrap(), "TOKEN=web-secret\n");
    assert!(
        env.base.join("current/apps/web").is_dir()
            && !std::fs::symlink_metadata(env.base.join("current/apps/web")).unwrap().file_type().is_symlink()
    );
}

/// Case 3: keep 2, deploy 1 and 2, roll back to 1, deploy 3: release 1 was pruned, although
/// it is where an unhealthy 3 switches back to.
#[test]
fn a_deploy_after_a_rollback_keeps_the_release_that_was_live() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let env = Env::new(Some(&sshd), &ws, "keep_releases = 2");
    env.bst(&["deploy", "t", "-q"]).ok();
    let g1 = env.current_id();
    ws.write("package.json", "{\"v\":2}\n");
    env.bst(&["deploy", "t", "-q"]).ok();
    let g2 = env.current_id();
    env.bst(&["rollback", "t", "-q"]).ok();
    assert_eq!(env.current_id(), g1);
    ws.write("package.json", "{\"v\":3}\n");
    env.bst(&["deploy", "t", "-q"]).ok();
    let g3 = env.current_id();
    assert_eq!(env.release_ids(), vec![g1.clone(), g2, g3], "the release live before the deploy was pruned");
    // The next deploy may prune it: it is neither live nor the way back any more.
    env.bst(&["deploy", "t", "-q"]).ok();
    assert!(!env.release_ids().contains(&g1));
}

/// Cases 4 and 5: a pristine copy, spare or manifest damaged on the server is never patched
/// from; the deploy ships the workspace, says with -v what it did instead, and still succeeds.
#[test]
fn a_damaged_pristine_copy_spare_or_manifest_is_never_patched_from() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    for i in 0..20 {
        ws.write(&format!("src/f{i:02}.ts"), &format!("export const v = {i};\n"));
    }
    ws.commit("files");
    let env = Env::new(Some(&sshd), &ws, "");
    env.bst(&["deploy", "t", "-q"]).ok();
    let cache = env.base.join(".bst-cache");
    type Damage = fn(&Path);
    // (what, damage, what -v says, whether this deploy may still be a delta)
    let damages: [(&str, Damage, &[&str], bool); 5] = [
        // The release comes from the intact spare; the cache job then finds the patched
        // pristine copy wrong, and the next deploy sends everything.
        ("truncate a pristine file", |c| std::fs::write(c.join("pristine/src/f03.ts"), "").unwrap(), &[], true),
        ("delete a pristine file", |c| std::fs::remove_file(c.join("pristine/src/f04.ts")).unwrap(), &[], true),
        (
            "drop a manifest record",
            |c| {
                let m = std::fs::read(c.join("manifest")).unwrap();
                let kept: Vec<&[u8]> = m.split(|b| *b == 0).filter(|r| !r.ends_with(b"src/f05.ts")).collect();
                std::fs::write(c.join("manifest"), kept.join(&0u8)).unwrap();
            },
            &["spare copy changed", "pristine copy changed since it was verified; this deploy sends everything"],
            false,
        ),
        (
            "same-size rewrite in the spare",
            |c| std::fs::write(c.join("spare/src/f06.ts"), "export const v = 9;\n").unwrap(),
            &["spare copy changed since it was made, or could not be checked; the release is copied from the pristine tree"],
            true,
        ),
        ("delete a spare file", |c| std::fs::remove_file(c.join("spare/src/f07.ts")).unwrap(), &["spare copy changed"], true),
    ];
    for (i, (what, damage, said, may_delta)) in damages.iter().enumerate() {
        env.wait_cache_job();
        damage(&cache);
        ws.write("package.json", &format!("{{\"round\":{i}}}\n"));
        let run = env.bst(&["deploy", "t", "-v", "--json"]).ok();
        for s in *said {
            assert!(run.stderr.contains(s), "{what}: -v does not say `{s}`:\n{}", run.stderr);
        }
        let j = run.json();
        if !may_delta {
            assert_eq!(j["delta"], false, "{what}: a delta from a damaged base");
        }
        let rel = env.base.join("current");
        for f in 0..20 {
            let p = format!("src/f{f:02}.ts");
            assert_eq!(std::fs::read(rel.join(&p)).unwrap(), std::fs::read(ws.path().join(&p)).unwrap(), "{what}: {p} differs");
        }
        assert_eq!(std::fs::read_to_string(rel.join("package.json")).unwrap(), format!("{{\"round\":{i}}}\n"));
        if *may_delta && said.is_empty() {
            env.wait_cache_job();
            let log = std::fs::read_to_string(cache.join("job.log")).unwrap_or_default();
            assert!(log.contains("pristine copy does not match its manifest"), "{what}: the cache job did not notice:\n{log}");
            ws.write("package.json", &format!("{{\"round\":\"{i}b\"}}\n"));
            let j = env.bst(&["deploy", "t", "--json"]).ok().json();
            assert_eq!(j["delta"], false, "{what}: the next deploy patched from the damaged pristine copy");
        }
    }
    // Once the job has proven a fresh copy, deltas resume.
    env.wait_cache_job();
    ws.write("package.json", "{\"round\":\"last\"}\n");
    let j = env.bst(&["deploy", "t", "--json"]).ok().json();
    assert_eq!((j["delta"].as_bool(), j["files_sent"].as_u64()), (Some(true), Some(1)));
}

/// Case 6: rewrite a file, restore its mtime (`touch -d`, `cp -p`, `rsync -a`, `tar -x`):
/// the change was never shipped.
#[test]
fn an_edit_under_a_restored_mtime_is_shipped() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    // Old enough for the hash cache to keep (changed more than 2 s before it is written).
    std::thread::sleep(Duration::from_millis(2100));
    let env = Env::new(Some(&sshd), &ws, "");
    env.bst(&["deploy", "t", "-q"]).ok();
    std::thread::sleep(Duration::from_millis(100));
    let f = ws.path().join("apps/api/src/index.ts");
    let old = std::fs::metadata(&f).unwrap().modified().unwrap();
    std::fs::write(&f, "export const x = 2;\n").unwrap();
    std::fs::File::options().write(true).open(&f).unwrap().set_modified(old).unwrap();
    env.bst(&["deploy", "t", "-q"]).ok();
    assert_eq!(std::fs::read_to_string(env.base.join("current/apps/api/src/index.ts")).unwrap(), "export const x = 2;\n");
}

/// Case 7: the kind came from the index, the content from the disk.
#[test]
fn a_tracked_file_turned_symlink_ships_the_link_and_the_reverse_ships_the_file() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("id_rsa"), "PRIVATE KEY\n").unwrap();
    let env = Env::new(Some(&sshd), &ws, "");
    env.bst(&["deploy", "t", "-q"]).ok();
    // Uncommitted on purpose: the work tree is the truth.
    std::fs::remove_file(ws.path().join("package.json")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("id_rsa"), ws.path().join("package.json")).unwrap();
    std::fs::remove_file(ws.path().join("entry.ts")).unwrap();
    std::fs::write(ws.path().join("entry.ts"), "a file now\n").unwrap();
    // A tracked file under a parent that became a link is deleted in git's eyes.
    std::fs::remove_dir_all(ws.path().join("apps/api/src")).unwrap();
    std::os::unix::fs::symlink(outside.path(), ws.path().join("apps/api/src")).unwrap();
    env.bst(&["deploy", "t", "-q"]).ok();
    let rel = env.base.join("current");
    let md = std::fs::symlink_metadata(rel.join("package.json")).unwrap();
    assert!(md.file_type().is_symlink(), "package.json shipped as a file (the bytes behind the link)");
    assert_eq!(std::fs::read_link(rel.join("package.json")).unwrap(), outside.path().join("id_rsa"));
    let md = std::fs::symlink_metadata(rel.join("entry.ts")).unwrap();
    assert!(md.is_file(), "entry.ts shipped as a link");
    assert_eq!(std::fs::read_to_string(rel.join("entry.ts")).unwrap(), "a file now\n");
    assert!(std::fs::symlink_metadata(rel.join("apps/api/src")).unwrap().file_type().is_symlink());
    let shipped = sh(&rel, "find . -type f | LC_ALL=C sort");
    assert!(!shipped.contains("id_rsa") && !shipped.contains("index.ts"), "{shipped}");
}

/// Case 8: names that are not UTF-8 were skipped without a word.
#[test]
fn a_name_that_is_not_utf8_is_refused_by_name() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let env = Env::new(Some(&sshd), &ws, "");
    env.bst(&["deploy", "t", "-q"]).ok();
    let releases = env.release_ids();
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9.txt");
    std::fs::write(ws.path().join(name), "latin-1 name\n").unwrap();
    let run = env.bst(&["deploy", "t"]).code(2);
    assert_eq!(
        run.stderr.lines().next().unwrap_or(""),
        "error: cannot ship `caf\u{fffd}.txt`: its name is not valid UTF-8; rename it, or ignore it in .gitignore",
        "{}",
        run.stderr
    );
    assert_eq!(env.release_ids(), releases);
    // Tracked, too.
    sh(ws.path(), "git add -A");
    env.bst(&["deploy", "t"]).code(2).stderr_has("is not valid UTF-8");
    assert_eq!(env.release_ids(), releases);
}

/// Case 9: the cache job registered after the lock was released, so a second deploy could
/// take the lock and neither wait for it nor stop it.
#[test]
fn the_cache_job_is_registered_before_the_lock_is_released() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let env = Env::new(Some(&sshd), &ws, "");
    let run = env.bst(&["deploy", "t", "-vv"]).ok();
    let script = run.stderr.split("same command, after BST-GO").nth(1).unwrap_or_else(|| panic!("no script in -v:\n{}", run.stderr));
    let job = script.find("bst-cache-job").expect("the cache job is started");
    let unlock = script.rfind("rm -rf \"${B:?}/$bst_lock\"").expect("the lock is released");
    assert!(job < unlock, "the cache job starts after the lock is released");
    let registered = script[job..].find("job.pid\" ] && [ $n -lt 500 ]").map(|i| i + job).expect("waits for job.pid");
    assert!(registered < unlock, "the lock is released before the job has registered");
}

/// `list` says so when nothing is live: `current` dangling, or not a symlink at all.
#[test]
fn list_warns_when_current_dangles_or_is_not_a_link() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let env = Env::new(Some(&sshd), &ws, "");
    env.bst(&["deploy", "t", "-q"]).ok();
    env.wait_cache_job();
    let id = env.current_id();
    std::fs::remove_dir_all(env.base.join("releases").join(&id)).unwrap();
    env.bst(&["list", "t"]).ok().stderr_has(&format!("current points at releases/{id}, which does not exist: nothing is live"));
    std::fs::remove_file(env.base.join("current")).unwrap();
    std::fs::create_dir(env.base.join("current")).unwrap();
    env.bst(&["list", "t"]).ok().stderr_has("current is not a symlink; bst will not replace it");
}

/// Found by the model: a link target was rewritten on the way (a backslash became `/`, bytes
/// that are not UTF-8 became U+FFFD), with exit 0. On Unix both are ordinary target bytes.
#[test]
fn symlink_targets_ship_byte_for_byte() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let raw = std::ffi::OsStr::from_bytes(b"caf\xe9.txt");
    std::os::unix::fs::symlink("..\\lib\\a.txt", ws.path().join("back")).unwrap();
    std::os::unix::fs::symlink(raw, ws.path().join("latin1")).unwrap();
    let env = Env::new(Some(&sshd), &ws, "");
    env.bst(&["deploy", "t", "-q"]).ok();
    let rel = env.base.join("current");
    assert_eq!(std::fs::read_link(rel.join("back")).unwrap().as_os_str().as_bytes(), b"..\\lib\\a.txt");
    assert_eq!(std::fs::read_link(rel.join("latin1")).unwrap().as_os_str(), raw);
    // Re-pointed from `a\b` to `a/b`: a different link, so a delta sends it.
    env.wait_cache_job();
    std::fs::remove_file(ws.path().join("back")).unwrap();
    std::os::unix::fs::symlink("../lib/a.txt", ws.path().join("back")).unwrap();
    let j = env.bst(&["deploy", "t", "--json"]).ok().json();
    assert_eq!((j["delta"].as_bool(), j["files_sent"].as_u64()), (Some(true), Some(1)));
    assert_eq!(std::fs::read_link(env.base.join("current/back")).unwrap().as_os_str().as_bytes(), b"../lib/a.txt");
}

/// Case 4 for real: the kept archive hits its limit (`ulimit -f`, with SIGXFSZ ignored so
/// `tee` gets EFBIG and carries on, as it does on ENOSPC) while `tar -x` of the release does
/// not. The deploy succeeds; the cut archive never becomes the pristine copy, so the next
/// deploy sends everything and is right.
#[test]
fn a_kept_archive_cut_by_a_full_disk_is_never_patched_from() {
    let ws = Workspace::new();
    for i in 0..60 {
        std::fs::write(ws.path().join(format!("blob{i:02}.bin")), noise(60_000, i)).unwrap();
    }
    ws.commit("blobs");
    let env = Env::new(None, &ws, "");
    let limited = |args: &[&str]| {
        let plain = bst_cmd(&env.config, args);
        let mut c = std::process::Command::new("sh");
        c.arg("-c").arg("trap '' XFSZ; ulimit -f 2048; exec \"$0\" \"$@\"").arg(plain.get_program()).args(plain.get_args());
        for (k, v) in plain.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        let out = c.stdin(std::process::Stdio::null()).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    limited(&["deploy", "t", "-q"]);
    env.wait_cache_job();
    assert!(!env.base.join(".bst-cache/generation").exists(), "a cut archive became the pristine copy");
    let log = std::fs::read_to_string(env.base.join(".bst-cache/job.log")).unwrap_or_default();
    assert!(log.contains("could not unpack the pristine copy"), "{log}");
    ws.write("package.json", "{\"after\":\"full disk\"}\n");
    let j = env.bst(&["deploy", "t", "--json"]).ok().json();
    assert_eq!(j["delta"], false);
    assert_eq!(tree_of(&env.base.join("current")), tree_of(ws.path()));
}

/// Files and their bytes under `root`, without `.git`, `.release-meta` and what the test
/// workspace ignores.
fn tree_of(root: &Path) -> Vec<(String, Vec<u8>)> {
    snapshot(root)
        .into_iter()
        .filter(|(p, d)| {
            let p = p.trim_start_matches("./");
            d != b"<dir>"
                && !(p == ".git"
                    || p.starts_with(".git/")
                    || p == ".release-meta"
                    || p.starts_with("node_modules")
                    || p == "ignored.txt"
                    || p == ".env")
        })
        .map(|(p, d)| (p.trim_start_matches("./").to_string(), d))
        .collect()
}
