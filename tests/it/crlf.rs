//! A Windows checkout ships what git would commit (issue "Windows operators for real"): git
//! itself is the oracle. Each test deploys, then runs `git add -A` in a copy of the workspace
//! and compares every shipped file with the blob git stored for it. And bst reads the
//! repository in-process: a `git` on PATH that records being run is never run.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{bst_with, release_files, sh, sh_quote, toml_str, Env, Workspace};

const GIT: &str = "git -c user.name=t -c user.email=t@example.com";

/// `(path, bytes git stores)` for every file git would commit from `ws` now, from a copy
/// (the workspace's own index stays as the user left it).
fn what_git_add_stores(ws: &Path) -> Vec<(String, Vec<u8>)> {
    let copy = tempfile::Builder::new().prefix("bst-oracle").tempdir().unwrap();
    sh(copy.path(), &format!("cp -a {}/. . && git add -A", sh_quote(&ws.to_string_lossy())));
    let list = sh(copy.path(), "git ls-files -s");
    let mut out = Vec::new();
    for line in list.lines() {
        let (meta, path) = line.split_once('\t').unwrap();
        if meta.starts_with("120000") {
            continue; // links are compared by target elsewhere
        }
        let blob = Command::new("git").args(["cat-file", "blob", &format!(":{path}")]).current_dir(copy.path()).output().unwrap();
        assert!(blob.status.success());
        out.push((path.to_string(), blob.stdout));
    }
    out
}

/// Every file git would commit arrived with exactly the bytes git stores, and nothing else
/// shipped (but the `.gitignore`d and withheld, which git's copy also lacks).
fn assert_release_is_what_git_stores(ws: &Path, release: &Path) -> usize {
    let stored = what_git_add_stores(ws);
    let mut converted = 0;
    for (path, bytes) in &stored {
        let shipped = std::fs::read(release.join(path)).unwrap_or_else(|e| panic!("{path} did not ship: {e}"));
        assert!(
            shipped == *bytes,
            "{path}: shipped {:?}, git stores {:?}",
            String::from_utf8_lossy(&shipped),
            String::from_utf8_lossy(bytes)
        );
        let working = std::fs::read(ws.join(path)).unwrap();
        converted += usize::from(working != *bytes);
    }
    let files: Vec<String> =
        release_files(release).into_iter().filter(|f| !std::fs::symlink_metadata(release.join(f)).unwrap().is_symlink()).collect();
    let mut expected: Vec<String> = stored.into_iter().map(|(p, _)| p).collect();
    expected.sort();
    assert_eq!(files, expected);
    converted
}

fn current(env: &Env) -> PathBuf {
    env.base.join("current")
}

fn crlf(s: &str) -> String {
    s.replace('\n', "\r\n")
}

#[test]
fn an_autocrlf_checkout_ships_lf_as_git_add_stores_it() {
    // The origin holds LF text, a file committed with CRLF (git keeps those), a binary with
    // CRLF bytes, and a batch file.
    let origin = Workspace::new();
    std::fs::write(origin.path().join("committed-crlf.txt"), "a\r\nb\r\n").unwrap();
    std::fs::write(origin.path().join("logo.bin"), b"\x89PNG\r\n\x1a\n\0\0\r\n").unwrap();
    std::fs::write(origin.path().join("tool.bat"), "@echo off\necho hi\n").unwrap();
    origin.commit("more");
    // Git for Windows' default, reproduced on Linux: the working tree has CRLF, status is clean.
    let clone = Workspace { dir: tempfile::Builder::new().prefix("bst-ws").tempdir().unwrap() };
    sh(clone.path(), &format!("git clone -q -c core.autocrlf=true {} .", sh_quote(&origin.path().to_string_lossy())));
    let ws = clone.path().to_path_buf();
    assert_eq!(std::fs::read(ws.join("scripts/run.sh")).unwrap(), b"#!/bin/sh\r\necho hi\r\n");
    assert_eq!(sh(&ws, "git status --porcelain"), "");
    // Edited after checkout (an editor keeps CRLF), and a new file not yet added.
    std::fs::write(ws.join("scripts/run.sh"), crlf("#!/bin/sh\necho hi\necho edited\n")).unwrap();
    std::fs::write(ws.join("notes.txt"), crlf("new\nfile\n")).unwrap();

    let env = Env::new(None, &clone, "");
    let run = env.bst(&["deploy", "t", "-v"]).ok();
    let converted = assert_release_is_what_git_stores(&ws, &current(&env));
    // .gitignore, package.json, index.ts, run.sh, untracked.txt (committed since), tool.bat
    // and notes.txt; not the committed CRLF file, not the binary.
    assert_eq!(converted, 7);
    assert!(run.stderr.contains("  7 files with CRLF line endings ship as LF, as `git add` would store them\n"), "{}", run.stderr);
    assert_eq!(std::fs::read(current(&env).join("committed-crlf.txt")).unwrap(), b"a\r\nb\r\n");
    assert_eq!(std::fs::read(current(&env).join("logo.bin")).unwrap(), b"\x89PNG\r\n\x1a\n\0\0\r\n");

    // The shipped script runs on the server (a CRLF one fails: `/bin/sh^M: not found`).
    let out = Command::new(current(&env).join("scripts/run.sh")).output().unwrap();
    assert_eq!((out.status.code(), String::from_utf8_lossy(&out.stdout).as_ref()), (Some(0), "hi\nedited\n"));

    // Nothing changed: the delta compares converted bytes with converted bytes.
    let again = env.bst(&["deploy", "t", "--json"]).ok();
    assert_eq!(again.json()["files_sent"], 0, "{}", again.stdout);
    assert_release_is_what_git_stores(&ws, &current(&env));
}

#[test]
fn gitattributes_decide_file_by_file_and_a_changed_rule_is_seen() {
    let ws = Workspace::new();
    ws.write(".gitattributes", "* text=auto\n*.sh text eol=lf\n*.bat eol=crlf\n*.png binary\n");
    ws.write("a.txt", "one\ntwo\n");
    ws.write("deploy.sh", "#!/bin/sh\necho ok\n");
    ws.write("w.bat", "@echo off\n");
    ws.commit("attributes");
    // Then a Windows editor saves each with CRLF, and a binary with CR LF bytes appears.
    ws.write("a.txt", &crlf("one\ntwo\n"));
    ws.write("deploy.sh", &crlf("#!/bin/sh\necho ok\n"));
    ws.write("w.bat", &crlf("@echo off\n"));
    std::fs::write(ws.path().join("img.png"), b"\x89PNG\r\n\x1a\n\r\n").unwrap();
    let env = Env::new(None, &ws, "");
    env.bst(&["deploy", "t"]).ok();
    assert_release_is_what_git_stores(ws.path(), &current(&env));
    // `eol=crlf` is how git checks a file out; it still stores LF.
    assert_eq!(std::fs::read(current(&env).join("w.bat")).unwrap(), b"@echo off\n");
    assert_eq!(std::fs::read(current(&env).join("deploy.sh")).unwrap(), b"#!/bin/sh\necho ok\n");
    assert_eq!(std::fs::read(current(&env).join("img.png")).unwrap(), b"\x89PNG\r\n\x1a\n\r\n");

    // A new rule for an untouched file: the hash cache must not answer with the old bytes.
    ws.write(".gitattributes", "* text=auto\n*.sh text eol=lf\n*.bat eol=crlf\n*.png binary\n*.txt -text\n");
    env.bst(&["deploy", "t"]).ok();
    assert_release_is_what_git_stores(ws.path(), &current(&env));
    assert_eq!(std::fs::read(current(&env).join("a.txt")).unwrap(), b"one\r\ntwo\r\n");
}

/// A `git` first on PATH that leaves a mark when run.
fn git_trap(dir: &Path) -> (String, PathBuf) {
    let bin = dir.join("trap-bin");
    let mark = dir.join("git-was-run");
    std::fs::create_dir_all(&bin).unwrap();
    let script = bin.join("git");
    std::fs::write(&script, format!("#!/bin/sh\necho \"$@\" >> {}\nexit 1\n", sh_quote(&mark.to_string_lossy()))).unwrap();
    sh(&bin, "chmod +x git");
    (format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()), mark)
}

#[test]
fn the_repository_is_read_without_running_git() {
    let ws = Workspace::new();
    let env = Env::new(None, &ws, "");
    let (path, mark) = git_trap(env.dir.path());
    let head = sh(ws.path(), "git rev-parse HEAD").trim().to_string();
    let git_lists = || {
        let listed = sh(ws.path(), "git ls-files; git ls-files --others --exclude-standard");
        let mut listed: Vec<String> = listed.lines().map(str::to_string).collect();
        listed.sort();
        listed
    };

    // The same files git lists (tracked, and untracked but not ignored); a shipped untracked
    // file makes the release dirty.
    env.bst(&["deploy", "t"]).ok();
    let meta = env.meta(&env.current_id());
    assert_eq!(
        (meta["commit"].as_str(), meta["branch"].as_str(), meta["dirty"].as_bool()),
        (Some(head.as_str()), Some("main"), Some(true))
    );
    assert_eq!(release_files(&current(&env)), git_lists());

    // With the trap: the same listing and meta, and git never ran.
    std::fs::remove_file(ws.path().join("untracked.txt")).unwrap();
    bst_with(&env.config, &["deploy", "t"], &[("PATH", &path)]).ok();
    let meta = env.meta(&env.current_id());
    assert_eq!(
        (meta["commit"].as_str(), meta["branch"].as_str(), meta["dirty"].as_bool()),
        (Some(head.as_str()), Some("main"), Some(false))
    );
    let expected = git_lists();
    assert_eq!(release_files(&current(&env)), expected);
    ws.write("apps/api/src/index.ts", "export const x = 2;\n");
    let run = bst_with(&env.config, &["deploy", "t", "--json"], &[("PATH", &path)]).ok();
    assert!(!mark.exists(), "bst ran git: {}", std::fs::read_to_string(&mark).unwrap_or_default());
    assert_eq!(run.json()["files_sent"], 1);
    let meta = env.meta(&env.current_id());
    assert_eq!((meta["commit"].as_str(), meta["dirty"].as_bool()), (Some(head.as_str()), Some(true)));
    assert_eq!(release_files(&current(&env)), expected);
    assert!(std::fs::metadata(current(&env).join("scripts/run.sh"))
        .map(|m| {
            use std::os::unix::fs::PermissionsExt;
            m.permissions().mode() & 0o111 != 0
        })
        .unwrap());

    // A detached HEAD reads as git's `rev-parse --abbrev-ref` says: `HEAD`.
    sh(ws.path(), &format!("{GIT} commit -qam two && git checkout -q --detach"));
    bst_with(&env.config, &["deploy", "t"], &[("PATH", &path)]).ok();
    let meta = env.meta(&env.current_id());
    assert_eq!((meta["branch"].as_str(), meta["dirty"].as_bool()), (Some("HEAD"), Some(false)));
    assert!(!mark.exists());
}

#[test]
fn a_source_below_the_top_of_the_repository_ships_only_its_folder() {
    let ws = Workspace::new();
    ws.write("apps/api/new.txt", "untracked\n");
    ws.write("apps/api/.gitignore", "*.log\n");
    ws.write("apps/api/x.log", "ignored by the folder's own rule\n");
    ws.write("apps/web/other.txt", "not in the source\n");
    let env = Env::new(None, &ws, "");
    std::fs::write(
        &env.config,
        format!("[targets.t]\nhost = \"local\"\nbase = {}\nsource = {}\n", toml_str(&env.base), toml_str(&ws.path().join("apps/api"))),
    )
    .unwrap();
    let (path, mark) = git_trap(env.dir.path());
    bst_with(&env.config, &["deploy", "t"], &[("PATH", &path)]).ok();
    assert!(!mark.exists());
    assert_eq!(release_files(&current(&env)), vec![".gitignore", "new.txt", "src/index.ts"]);
    let expected = sh(&ws.path().join("apps/api"), "git ls-files; git ls-files --others --exclude-standard");
    let mut expected: Vec<&str> = expected.lines().collect();
    expected.sort();
    assert_eq!(release_files(&current(&env)), expected);
}

#[test]
fn a_plain_folder_says_what_it_cannot_know() {
    let dir = tempfile::Builder::new().prefix("bst-plain").tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), "a\r\n").unwrap();
    let base = dir.path().join("srv");
    let config = dir.path().join("targets.toml");
    std::fs::write(
        &config,
        format!("[targets.t]\nhost = \"local\"\nbase = {}\nsource_is_not_git = true\nexclude = [\"srv\"]\n", toml_str(&base)),
    )
    .unwrap();
    let run = bst_with(&config, &["deploy", "t", "-v"], &[]).ok();
    assert!(run.stderr.contains("\n  without a git index, exec bits and line endings ship as they are on disk\n"), "{}", run.stderr);
    assert_eq!(std::fs::read(base.join("current/a.txt")).unwrap(), b"a\r\n");
}
