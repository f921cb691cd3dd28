//! Issue 5: delta redeploys send only what changed, and the result is exactly the workspace:
//! edits, additions, removals, mode and symlink changes, file <-> directory swaps. A build
//! that edits a shipped file in place never leaks into the next release.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::harness::*;

/// path -> (kind, mode, content or link target), for everything bst ships.
fn tree(root: &Path, skip_git: bool) -> BTreeMap<String, (char, u32, Vec<u8>)> {
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

fn shipped(ws: &Workspace) -> BTreeMap<String, (char, u32, Vec<u8>)> {
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
    sh(ws.path(), "git add -A && git -c user.name=t -c user.email=t@example.com commit -qm more");
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
    std::fs::write(env.base.join(".bst-cache/manifest"), "garbage").unwrap();
    let run = env.bst(&["deploy", "t", "--json"]).ok();
    assert_eq!(run.json()["delta"], false);
    assert_eq!(tree(&env.base.join("current"), false), shipped(&ws));
}
