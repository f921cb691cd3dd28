//! Issue 14, item 5: the real Windows binary (`bst.exe`, cross-built for
//! `x86_64-pc-windows-gnu`) under Wine, against the loopback sshd. Operators deploy from
//! Windows, where bst runs no `git` process (none that works is installed here), the home is
//! `%USERPROFILE%`, paths are `Z:\…` and Git for Windows checks text files out with CRLF.
//! Every path bst is given is a `Z:\…` path (Wine maps `Z:` to `/`); what the server ends up
//! with is checked on disk here, with Linux's view of it.
//!
//! The machine is shaped like an operator's: Git for Windows installed where its installer
//! puts it (its system gitconfig says `core.autocrlf=true`, the installer's default; its
//! `git.exe` is a placeholder that cannot run), and each workspace is the checkout Git for
//! Windows makes ([`windows_checkout`]: no exec bits or symlinks on disk, the index's modes
//! count). A checkout made by Linux git and read through Wine is another case (a repository
//! shared with WSL): there `core.fileMode=true` and links Wine follows mean what git on
//! Windows would see too, exec bits and links lost.
//!
//! `scripts/wine-test` installs Wine, builds `bst.exe` and the `bcryptprimitives.dll` shim
//! (`tests/wine/`), makes a throwaway `WINEPREFIX` and runs these tests with `BST_WINE_EXE`
//! set; without it they are ignored.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

/// One `wine bst.exe …` that has not ended by then is stuck (a prompt waiting on a console
/// nobody types into, a hung connection); the test fails instead of hanging CI.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// The secret `env set` is given; it must never be printed.
const SECRET: &str = "sentinel-W1NE-s3cret";

/// `Z:\tmp\x` for `/tmp/x`: how a Windows program under Wine names a Linux path.
fn win(p: &Path) -> String {
    assert!(p.is_absolute(), "{} is not absolute", p.display());
    format!("Z:{}", p.to_str().expect("test paths are UTF-8").replace('/', "\\"))
}

/// A TOML string holding the `Z:\…` form of `p`.
fn toml_win(p: &Path) -> String {
    toml_str(Path::new(&win(p)))
}

/// Serialises the tests that write into the one Wine profile (its `.ssh`), should they be run
/// on several threads.
static PROFILE: std::sync::Mutex<()> = std::sync::Mutex::new(());

struct Wine {
    exe: PathBuf,
    /// `%USERPROFILE%` as Linux sees it: `$WINEPREFIX/drive_c/users/<user>`.
    profile: PathBuf,
}

fn wine() -> Wine {
    let exe = std::env::var_os("BST_WINE_EXE").filter(|v| !v.is_empty()).map(PathBuf::from).unwrap_or_else(|| {
        panic!("BST_WINE_EXE is unset: these tests run the Windows bst.exe under Wine; run scripts/wine-test, which builds it and sets BST_WINE_EXE and WINEPREFIX")
    });
    assert!(exe.is_file(), "BST_WINE_EXE={} is not a file", exe.display());
    let prefix = std::env::var_os("WINEPREFIX")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("WINEPREFIX is unset: scripts/wine-test makes a throwaway prefix (wineboot -i) and sets it"));
    // Wine names the Windows user after the Linux one: USERPROFILE=C:\users\<user>.
    let profile = prefix.join("drive_c/users").join(whoami());
    assert!(profile.is_dir(), "{} missing: is WINEPREFIX={} initialised (wineboot -i)?", profile.display(), prefix.display());
    static GIT: std::sync::Once = std::sync::Once::new();
    GIT.call_once(|| install_git_for_windows(&prefix));
    Wine { exe, profile }
}

/// Where a Windows program finds Git for Windows' launcher: the installer puts it on `PATH`.
const GIT_CMD_DIR: &str = "C:\\Program Files\\Git\\cmd";

/// Git for Windows as its installer lays it out, as far as bst (gix) looks at it: the system
/// gitconfig beside a `mingw64` runtime, found from `git.exe` on `PATH` without running it.
/// The config is the installer's `[core]` section: "Checkout Windows-style, commit Unix-style"
/// is `autocrlf = true`. The two `git.exe` are not programs: bst must not run git.
fn install_git_for_windows(prefix: &Path) {
    let root = prefix.join("drive_c/Program Files/Git");
    for exe in ["cmd/git.exe", "mingw64/bin/git.exe"] {
        let exe = root.join(exe);
        std::fs::create_dir_all(exe.parent().unwrap()).unwrap();
        std::fs::write(exe, "a placeholder: bst reads repositories in-process and never runs git\n").unwrap();
    }
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/gitconfig"), "[core]\n\tautocrlf = true\n\tfscache = true\n\tsymlinks = false\n").unwrap();
}

/// Turns a checkout made by Linux git into the one Git for Windows makes: its clone writes
/// `core.filemode=false` (NTFS keeps no exec bits; the index's modes count),
/// `core.symlinks=false` (a link is checked out as a file holding its target) and
/// `core.ignorecase=true`.
fn windows_checkout(ws: &Path) {
    sh(
        ws,
        "git config core.filemode false && git config core.symlinks false && git config core.ignorecase true
git ls-files -s | sed -n 's/^120000 [0-9a-f]* [0-9]\t//p' | while IFS= read -r p; do rm -f -- \"$p\" && git checkout -q -- \"$p\"; done",
    );
}

/// [`Workspace::new`], checked out as Git for Windows does: `entry.ts` a file holding
/// `apps/api/src/index.ts`, `scripts/run.sh` without an exec bit on disk.
fn windows_workspace() -> Workspace {
    let ws = Workspace::new();
    windows_checkout(ws.path());
    let entry = std::fs::symlink_metadata(ws.path().join("entry.ts")).unwrap();
    assert!(entry.is_file(), "entry.ts is still a link");
    assert_eq!(std::fs::read_to_string(ws.path().join("entry.ts")).unwrap(), "apps/api/src/index.ts");
    assert_eq!(sh(ws.path(), "git status --porcelain --untracked-files=no"), "", "the Windows checkout is not clean to git");
    ws
}

impl Wine {
    /// `wine bst.exe --config Z:\…\targets.toml <args>`, with `stdin` piped in, the local
    /// cache next to the config. Reads no ssh config unless `ssh_config` (then bst finds
    /// `%USERPROFILE%\.ssh\config` itself). Nothing from the caller's agent or shell, and no
    /// colour switch: output to pipes must come out plain on its own.
    fn run(&self, config: &Path, args: &[&str], stdin: Option<&str>, ssh_config: bool) -> Run {
        use std::io::{Read, Seek, Write};
        // Files, not pipes: the Wine services the first run starts (winedevice.exe …) inherit
        // bst's stdout and stderr and outlive it, so a pipe would never reach EOF.
        let (out, err) = (tempfile::tempfile().unwrap(), tempfile::tempfile().unwrap());
        let mut c = Command::new("wine");
        c.arg(&self.exe)
            .arg("--config")
            .arg(win(config))
            .args(args)
            .env("WINEDEBUG", "-all")
            // Wine adds it to the Windows PATH, where Git for Windows' installer puts its `cmd`.
            .env("WINEPATH", GIT_CMD_DIR)
            .env("BST_CACHE_DIR", win(&config.parent().unwrap().join("bst-cache")))
            .env_remove("BST_SSH_CONFIG")
            .env_remove("SSH_AUTH_SOCK")
            .env_remove("BST_CONFIG")
            .env_remove("BST_SSH_PASSPHRASE")
            .env_remove("USERPROFILE")
            .env_remove("NO_COLOR")
            .env_remove("CLICOLOR_FORCE")
            .env_remove("CI")
            .stdin(Stdio::piped())
            .stdout(out.try_clone().unwrap())
            .stderr(err.try_clone().unwrap());
        if !ssh_config {
            c.env("BST_SSH_CONFIG", "none");
        }
        let mut child = c.spawn().expect("wine runs (scripts/wine-test installs it)");
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            // A bst that exits without reading gets no input; what it did is asserted below.
            let _ = input.write_all(s.as_bytes());
        }
        drop(input);
        let deadline = Instant::now() + RUN_TIMEOUT;
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("wine bst.exe {args:?} still running after {RUN_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let text = |mut f: std::fs::File| {
            let mut buf = Vec::new();
            f.rewind().unwrap();
            f.read_to_end(&mut buf).unwrap();
            String::from_utf8_lossy(&buf).into_owned()
        };
        let run = Run { code: status.code().unwrap_or(-1), stdout: text(out), stderr: text(err) };
        for (name, text) in [("stdout", &run.stdout), ("stderr", &run.stderr)] {
            assert!(!text.contains("\\\\?\\"), "{name} shows a verbatim \\\\?\\ path ({args:?}):\n{text}");
            assert!(!text.contains('\u{1b}'), "{name} has escape codes although it is a pipe ({args:?}):\n{text:?}");
        }
        run
    }

    fn bst(&self, env: &WinEnv, args: &[&str]) -> Run {
        self.run(&env.config, args, None, false)
    }

    /// Removes `%USERPROFILE%\.ssh` now and when dropped, holding the profile for the test.
    fn fresh_ssh_dir(&self) -> ProfileSsh {
        let lock = PROFILE.lock().unwrap_or_else(|e| e.into_inner());
        let dir = self.profile.join(".ssh");
        let _ = std::fs::remove_dir_all(&dir);
        ProfileSsh { dir, _lock: lock }
    }
}

struct ProfileSsh {
    dir: PathBuf,
    _lock: std::sync::MutexGuard<'static, ()>,
}

impl Drop for ProfileSsh {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A test's config (all local paths in it `Z:\…`) and the server-side base it deploys to.
struct WinEnv {
    dir: tempfile::TempDir,
    config: PathBuf,
    base: PathBuf,
}

impl WinEnv {
    /// `[targets.t]` on `sshd`, shipping `source`. `host` is the target's connection lines,
    /// [`ssh_lines`] unless a test needs others.
    fn new(source: &Path, host: &str, extra: &str) -> WinEnv {
        let dir = tempfile::Builder::new().prefix("bst-wine").tempdir().unwrap();
        let base = dir.path().join("srv/app");
        let config = dir.path().join("targets.toml");
        let text = format!("[targets.t]\n{host}base = {}\nsource = {}\n{extra}\n", toml_str(&base), toml_win(source));
        std::fs::write(&config, text).unwrap();
        WinEnv { dir, config, base }
    }

    fn current(&self) -> String {
        let link = std::fs::read_link(self.base.join("current")).expect("current is a symlink");
        link.to_str().unwrap().to_string()
    }

    fn current_id(&self) -> String {
        self.current().strip_prefix("releases/").unwrap_or_else(|| panic!("current -> {}: not releases/<id>", self.current())).to_string()
    }

    fn release_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> =
            std::fs::read_dir(self.base.join("releases")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        ids.sort();
        ids
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.base.join(rel)).unwrap_or_else(|e| panic!("{rel} on the server: {e}"))
    }

    fn mode(&self, rel: &str) -> u32 {
        std::fs::metadata(self.base.join(rel)).unwrap().permissions().mode() & 0o777
    }

    /// Waits for the cache job a deploy leaves running on the server, so the base can go.
    fn wait_cache_job(&self) {
        let pid_file = self.base.join(".bst-cache/job.pid");
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| std::fs::read(format!("/proc/{}/cmdline", p.trim())).ok())
            .is_some_and(|c| String::from_utf8_lossy(&c).contains("bst-cache-job"))
        {
            assert!(Instant::now() < deadline, "cache job still running after 60 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for WinEnv {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.wait_cache_job();
        }
    }
}

/// The connection lines of a target on `sshd`: key and known_hosts as `Z:\…` paths.
fn ssh_lines(sshd: &Sshd) -> String {
    format!(
        "host = \"127.0.0.1\"\nport = {}\nuser = \"{}\"\nidentity_file = {}\nknown_hosts = {}\n",
        sshd.port,
        whoami(),
        toml_win(&sshd.user_key),
        toml_win(&sshd.known_hosts)
    )
}

/// The files [`windows_workspace`] ships (as `core.rs` checks them natively).
const SHIPPED: [&str; 6] = [".gitignore", "apps/api/src/index.ts", "entry.ts", "package.json", "scripts/run.sh", "untracked.txt"];

/// Full deploy of a git workspace, then a delta redeploy after one file changed.
#[test]
#[ignore = "needs Wine: run by scripts/wine-test"]
fn deploys_a_git_workspace_then_a_delta() {
    let wine = wine();
    let sshd = Sshd::start();
    let ws = windows_workspace();
    // Big enough that a delta visibly sends less than the whole tree.
    std::fs::write(ws.path().join("asset.bin"), noise(300_000, 14)).unwrap();
    let shipped: Vec<&str> = {
        let mut v = SHIPPED.to_vec();
        v.insert(2, "asset.bin");
        v
    };
    let env = WinEnv::new(ws.path(), &ssh_lines(&sshd), "");

    let first = wine.bst(&env, &["deploy", "t", "--json"]).ok().json();
    let id1 = env.current_id();
    assert_eq!(first["release_id"], id1.as_str(), "{first}");
    assert_eq!(first["status"], "ok");
    assert_eq!(first["delta"], false, "nothing to diff against on the first deploy: {first}");
    assert_eq!(env.release_ids(), vec![id1.clone()]);
    let rel = env.base.join("current");
    assert_eq!(release_files(&rel), shipped, "ignored files, .git and .env must not ship");
    for f in ["package.json", "apps/api/src/index.ts", "untracked.txt", "scripts/run.sh", "asset.bin"] {
        assert_eq!(std::fs::read(rel.join(f)).unwrap(), std::fs::read(ws.path().join(f)).unwrap(), "{f} differs");
    }
    assert_eq!(env.mode("current/scripts/run.sh"), 0o755, "the exec bit git records was lost");
    assert_eq!(env.mode("current/package.json") & 0o111, 0);
    assert_eq!(std::fs::read_link(rel.join("entry.ts")).unwrap(), Path::new("apps/api/src/index.ts"), "the symlink git records was lost");
    let meta: serde_json::Value = serde_json::from_str(&env.read(&format!("releases/{id1}/.release-meta"))).unwrap();
    assert_eq!(meta["commit"].as_str().map(str::len), Some(40), "the commit git is at: {meta}");
    assert_eq!(meta["branch"], "main");

    ws.write("apps/api/src/index.ts", "export const x = 2; // edited on Windows\n");
    let second = wine.bst(&env, &["deploy", "t", "--json"]).ok().json();
    let id2 = env.current_id();
    assert_ne!(id1, id2, "a redeploy is a new release");
    assert_eq!(second["release_id"], id2.as_str());
    assert_eq!(second["previous"], id1.as_str(), "{second}");
    assert_eq!(second["delta"], true, "the redeploy diffs against the first release: {second}");
    assert_eq!(second["files_sent"], 1, "one file changed: {second}");
    assert!(first["bytes_sent"].as_u64().unwrap() > 300_000, "{first}");
    assert!(second["bytes_sent"].as_u64().unwrap() < 100_000, "the delta sent the whole tree again: {second}");
    assert_eq!(env.release_ids(), vec![id1.clone(), id2.clone()]);
    assert_eq!(env.read("current/apps/api/src/index.ts"), "export const x = 2; // edited on Windows\n", "the change did not arrive");
    assert_eq!(env.read(&format!("releases/{id1}/apps/api/src/index.ts")), "export const x = 1;\n", "the old release changed");
    assert_eq!(release_files(&rel), shipped);
    assert_eq!(env.mode("current/scripts/run.sh"), 0o755, "the delta lost the exec bit");
}

/// A checkout made by Linux git and read from Windows (a repository shared with WSL): its
/// config says `core.fileMode=true`, but a Windows disk has no exec bits, so the index's
/// modes must count.
#[test]
#[ignore = "needs Wine: run by scripts/wine-test"]
fn a_linux_made_checkout_keeps_the_exec_bits_git_records() {
    let wine = wine();
    let sshd = Sshd::start();
    let ws = Workspace::new();
    assert_eq!(sh(ws.path(), "git config core.filemode").trim(), "true");
    let env = WinEnv::new(ws.path(), &ssh_lines(&sshd), "");
    wine.bst(&env, &["deploy", "t"]).ok();
    assert_eq!(env.mode("current/scripts/run.sh"), 0o755, "the exec bit git records was lost");
    assert_eq!(env.mode("current/package.json") & 0o111, 0);
}

/// `list --json` names both releases, `rollback --release-id` puts `current` back.
#[test]
#[ignore = "needs Wine: run by scripts/wine-test"]
fn lists_and_rolls_back_to_a_named_release() {
    let wine = wine();
    let sshd = Sshd::start();
    let ws = windows_workspace();
    let env = WinEnv::new(ws.path(), &ssh_lines(&sshd), "");
    ws.write("version.txt", "1\n");
    ws.commit("v1");
    wine.bst(&env, &["deploy", "t", "-q"]).ok();
    let id1 = env.current_id();
    ws.write("version.txt", "2\n");
    ws.commit("v2");
    wine.bst(&env, &["deploy", "t", "-q"]).ok();
    let id2 = env.current_id();
    assert_ne!(id1, id2);

    let list = wine.bst(&env, &["list", "t", "--json"]).ok().json();
    assert_eq!(list["target"], "t");
    assert_eq!(list["current"], id2.as_str(), "{list}");
    let releases = list["releases"].as_array().unwrap();
    let ids: Vec<&str> = releases.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![id2.as_str(), id1.as_str()], "newest first");
    assert_eq!(releases.iter().map(|r| r["status"].as_str().unwrap()).collect::<Vec<_>>(), vec!["ok", "ok"]);
    assert_eq!(releases.iter().map(|r| r["current"].as_bool().unwrap()).collect::<Vec<_>>(), vec![true, false]);
    for r in releases {
        assert_eq!(r["commit"].as_str().map(str::len), Some(40), "{r}");
        assert_eq!(r["dirty"], false, "everything was committed, and the checkout is clean to git: {r}");
    }
    assert_ne!(releases[0]["commit"], releases[1]["commit"]);

    let back = wine.bst(&env, &["rollback", "t", "--release-id", &id1, "--json"]).ok().json();
    assert_eq!(
        (back["previous"].as_str(), back["current"].as_str(), back["changed"].as_bool()),
        (Some(&*id2), Some(&*id1), Some(true)),
        "{back}"
    );
    assert_eq!(env.current(), format!("releases/{id1}"));
    assert_eq!(env.read("current/version.txt"), "1\n");
    // Rolling back to where current already is changes nothing and is not an error.
    let again = wine.bst(&env, &["rollback", "t", "--release-id", &id1, "--json"]).ok().json();
    assert_eq!(again["changed"], false, "{again}");
    // An id that is not on the server: exit 1, current unchanged.
    wine.bst(&env, &["rollback", "t", "--release-id", "20000101T000000Z"]).code(1);
    assert_eq!(env.current(), format!("releases/{id1}"));
}

/// `env set KEY` reads the value from stdin; `env check` then passes; the value is never
/// printed.
#[test]
#[ignore = "needs Wine: run by scripts/wine-test"]
fn env_set_from_stdin_then_env_check_passes() {
    let wine = wine();
    let sshd = Sshd::start();
    let ws = windows_workspace();
    let env = WinEnv::new(ws.path(), &ssh_lines(&sshd), "shared_files = [\".env\"]\nrequired_env = [\"OPS_DB_URL\"]");
    std::fs::create_dir_all(env.base.join("shared")).unwrap();
    std::fs::write(env.base.join("shared/.env"), "# core-api\nOTHER=1\n").unwrap();
    let reports = env.dir.path().join("reports");
    let check = |code: i32| {
        let run = wine.bst(&env, &["env", "check", "t", "--reports", &win(&reports)]).code(code);
        assert!(!run.stdout.contains(SECRET) && !run.stderr.contains(SECRET), "env check printed the value:\n{run:?}");
        run
    };
    assert_eq!(check(1).stdout.lines().last(), Some("ENV_BASELINE_RESULT=FAIL"), "OPS_DB_URL is missing");

    let value = format!("postgres://ops:{SECRET}@db/ops");
    // As a pipe delivers it from PowerShell or cmd: with a line ending (one is dropped).
    let set = wine.run(&env.config, &["env", "set", "t", "OPS_DB_URL"], Some(&format!("{value}\r\n")), false).ok();
    assert!(!set.stdout.contains(SECRET) && !set.stderr.contains(SECRET), "env set printed the value:\n{set:?}");
    let file = env.read("shared/.env");
    assert!(file.starts_with("# core-api\nOTHER=1\n"), "the rest of the file was not kept:\n{file}");
    let line = file.lines().find(|l| l.starts_with("OPS_DB_URL=")).unwrap_or_else(|| panic!("OPS_DB_URL not written:\n{file}"));
    let written = line["OPS_DB_URL=".len()..].trim_matches(|c| c == '"' || c == '\'');
    assert_eq!(written, value, "the value arrived changed (a CR kept?):\n{file:?}");
    assert!(!file.contains('\r'), "{file:?}");

    let run = check(0);
    assert_eq!(run.stdout.lines().last(), Some("ENV_BASELINE_RESULT=PASS"), "{}", run.stdout);
    let evidence = walk(&reports.join("gates/env-baseline"));
    assert!(evidence.iter().any(|f| f.extension().is_some_and(|e| e == "json")), "no evidence under {}", reports.display());
    for f in evidence {
        assert!(!std::fs::read_to_string(&f).unwrap().contains(SECRET), "the value is in {}", f.display());
    }
}

fn walk(d: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// With no `known_hosts` in the target, bst reads `%USERPROFILE%\.ssh\known_hosts`: an unknown
/// key is refused (exit 5), `--accept-new-host-key` records it there, and then it is known.
#[test]
#[ignore = "needs Wine: run by scripts/wine-test"]
fn unknown_host_key_is_refused_then_recorded_in_the_profile() {
    let wine = wine();
    let ssh = wine.fresh_ssh_dir();
    let sshd = Sshd::start();
    let ws = windows_workspace();
    let host =
        format!("host = \"127.0.0.1\"\nport = {}\nuser = \"{}\"\nidentity_file = {}\n", sshd.port, whoami(), toml_win(&sshd.user_key));
    let env = WinEnv::new(ws.path(), &host, "");

    let run = wine.bst(&env, &["list", "t"]).code(5).stderr_has("is not known").stderr_has("--accept-new-host-key");
    assert!(run.stderr.contains("C:\\users\\") && run.stderr.contains("\\.ssh\\known_hosts"), "names the profile's file:\n{}", run.stderr);
    assert!(!ssh.dir.join("known_hosts").exists(), "a refused key was recorded");
    assert!(!env.base.exists(), "the server was touched before its key was trusted");

    wine.bst(&env, &["list", "t", "--accept-new-host-key"]).ok();
    let known = std::fs::read_to_string(ssh.dir.join("known_hosts")).expect("recorded in %USERPROFILE%\\.ssh\\known_hosts");
    let line = format!("[127.0.0.1]:{} {}", sshd.port, sshd.host_key);
    assert!(known.lines().any(|l| l.trim_end() == line), "known_hosts lacks `{line}`:\n{known}");

    // Known now: no flag needed, and nothing more is written.
    wine.bst(&env, &["list", "t"]).ok();
    assert_eq!(std::fs::read_to_string(ssh.dir.join("known_hosts")).unwrap(), known);
}

/// `host = "myalias"` resolves through `%USERPROFILE%\.ssh\config` (HostName, Port, User,
/// IdentityFile with `~`), written with CRLF as Notepad writes it.
#[test]
#[ignore = "needs Wine: run by scripts/wine-test"]
fn ssh_config_alias_from_the_profile() {
    let wine = wine();
    let ssh = wine.fresh_ssh_dir();
    let sshd = Sshd::start();
    let ws = windows_workspace();
    std::fs::create_dir_all(&ssh.dir).unwrap();
    std::fs::copy(&sshd.user_key, ssh.dir.join("wine_ed25519")).unwrap();
    std::fs::write(
        ssh.dir.join("config"),
        format!(
            "Host myalias\r\n    HostName 127.0.0.1\r\n    Port {}\r\n    User {}\r\n    IdentityFile ~/.ssh/wine_ed25519\r\n",
            sshd.port,
            whoami()
        ),
    )
    .unwrap();
    let host = format!("host = \"myalias\"\nknown_hosts = {}\n", toml_win(&sshd.known_hosts));
    let env = WinEnv::new(ws.path(), &host, "");

    let show = wine.run(&env.config, &["config", "show", "t", "--json"], None, true).ok().json();
    let s = &show["ssh"];
    assert_eq!(
        (s["host"].as_str(), s["port"].as_u64(), s["user"].as_str()),
        (Some("127.0.0.1"), Some(sshd.port.into()), Some(&*whoami())),
        "{show}"
    );
    let hostname = s["settings"].as_array().unwrap().iter().find(|x| x["setting"] == "hostname").unwrap_or_else(|| panic!("{show}"));
    let from = format!("C:\\users\\{}\\.ssh\\config:2", whoami());
    assert_eq!(hostname["from"], from.as_str(), "HostName comes from the profile's ssh config: {show}");
    let key = format!("C:\\users\\{}\\.ssh\\wine_ed25519", whoami());
    assert_eq!(s["identity_files"], serde_json::json!([key]), "~ is %USERPROFILE%: {show}");
    wine.run(&env.config, &["deploy", "t"], None, true).ok();
    let id = env.current_id();
    assert_eq!(release_files(&env.base.join("releases").join(&id)), SHIPPED);
}

/// A Git for Windows checkout (`core.autocrlf=true`): CRLF in the working files, `git status`
/// clean. What ships is what git holds: LF, the exec bit, a script that runs on the server.
#[test]
#[ignore = "needs Wine: run by scripts/wine-test"]
fn crlf_checkout_ships_lf_and_the_script_runs() {
    let wine = wine();
    let sshd = Sshd::start();
    let origin = tempfile::Builder::new().prefix("bst-origin").tempdir().unwrap();
    sh(
        origin.path(),
        "git init -q . && (git checkout -q -b main 2>/dev/null || true)
printf '#!/bin/sh\\necho \"run.sh ran: $(cat \"$(dirname \"$0\")/notes.txt\")\"\\n' > run.sh && chmod +x run.sh
printf 'first line\\nsecond line\\n' > notes.txt
git add -A && git -c user.name=t -c user.email=t@example.com commit -qm init",
    );
    let clones = tempfile::Builder::new().prefix("bst-crlf").tempdir().unwrap();
    let ws = clones.path().join("ws");
    let out = Command::new("git").args(["-c", "core.autocrlf=true", "clone", "-q"]).arg(origin.path()).arg(&ws).output().unwrap();
    assert!(out.status.success(), "git clone: {}", String::from_utf8_lossy(&out.stderr));
    windows_checkout(&ws);
    // What Git for Windows leaves: CRLF files that git itself calls unmodified.
    for f in ["run.sh", "notes.txt"] {
        assert!(std::fs::read_to_string(ws.join(f)).unwrap().contains("\r\n"), "{f} was checked out without CRLF");
    }
    assert_eq!(sh(&ws, "git -c core.autocrlf=true status --porcelain"), "", "the CRLF clone is not clean to git");

    let env = WinEnv::new(&ws, &ssh_lines(&sshd), "");
    wine.bst(&env, &["deploy", "t"]).ok();
    assert_eq!(release_files(&env.base.join("current")), vec!["notes.txt", "run.sh"]);
    for f in ["run.sh", "notes.txt"] {
        let shipped = std::fs::read(env.base.join("current").join(f)).unwrap();
        assert!(!shipped.contains(&b'\r'), "{f} shipped with CR: {:?}", String::from_utf8_lossy(&shipped));
        assert_eq!(shipped, std::fs::read(origin.path().join(f)).unwrap(), "{f} is not what git holds");
    }
    assert_eq!(env.mode("current/run.sh"), 0o755, "run.sh lost its exec bit");
    let ran = Command::new(env.base.join("current/run.sh")).output().expect("the shipped run.sh executes");
    assert!(ran.status.success(), "run.sh failed: {}", String::from_utf8_lossy(&ran.stderr));
    assert_eq!(String::from_utf8_lossy(&ran.stdout), "run.sh ran: first line\nsecond line\n");
}

/// Every local path bst prints is the `Z:\…` path it was given, never the `\\?\Z:\…` form
/// `canonicalize` returns on Windows (the runner checks that for every run; here the paths
/// are printed on purpose).
#[test]
#[ignore = "needs Wine: run by scripts/wine-test"]
fn paths_are_shown_as_given_never_verbatim() {
    let wine = wine();
    let sshd = Sshd::start();
    let ws = windows_workspace();
    let env = WinEnv::new(ws.path(), &ssh_lines(&sshd), "");
    let show = wine.bst(&env, &["config", "show", "t"]).ok();
    assert!(show.stdout.contains(&win(ws.path())), "config show does not show the source as {}:\n{}", win(ws.path()), show.stdout);
    let j = wine.bst(&env, &["config", "show", "t", "--json"]).ok().json();
    assert_eq!(j["source"], win(ws.path()).as_str(), "{j}");
    let run = wine.bst(&env, &["deploy", "t", "-v"]).ok();
    let deploying = format!("deploying {} (", win(ws.path()));
    assert!(run.stderr.contains(&deploying), "-v does not say `{deploying}…`:\n{}", run.stderr);
    assert_eq!(release_files(&env.base.join("current")), SHIPPED);

    // A source that is not a git work tree is refused, naming it as written (exit 2).
    let plain = tempfile::Builder::new().prefix("bst-plain").tempdir().unwrap();
    std::fs::write(plain.path().join("a.txt"), "a\n").unwrap();
    let bad = WinEnv::new(plain.path(), &ssh_lines(&sshd), "");
    let run = wine.bst(&bad, &["deploy", "t"]).code(2).stderr_has("is not inside a git work tree");
    assert!(run.stderr.contains(&win(plain.path())), "the refusal names {}:\n{}", win(plain.path()), run.stderr);
    assert!(!bad.base.exists(), "a refused deploy touched the server");
}
