//! Issue 21, items 4, 5, 6, 10 and 11: `bst check` passes only what a deploy can then do,
//! and the first-hour messages (wrong user, a live lock, a silent host) say what to do next.
//! Against the real sshd; every row and message is asserted whole.

use std::io::Read;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;

use crate::harness::*;

/// A row of the `check` table, as it prints it.
fn row(check: &str, result: &str, detail: &str) -> String {
    format!("{check:<16} {result:<4}  {detail}")
}

/// The printed row for `check`, which must be there.
#[track_caller]
fn row_of<'a>(stdout: &'a str, check: &str) -> &'a str {
    let prefix = format!("{check:<16} ");
    stdout.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no `{check}` row:\n{stdout}"))
}

fn check(env: &Env, extra_args: &[&str], vars: &[(&str, &str)]) -> Run {
    let reports = env.dir.path().join("reports");
    let mut args = vec!["check", "t", "--reports", reports.to_str().unwrap()];
    args.extend(extra_args);
    bst_with(&env.config, &args, vars)
}

fn set_config(env: &Env, from: &str, to: &str) {
    let text = std::fs::read_to_string(&env.config).unwrap();
    assert!(text.contains(from), "{from} not in {text}");
    std::fs::write(&env.config, text.replacen(from, to, 1)).unwrap();
}

/// Item 4: a base under a regular file cannot be created, so neither `base` nor `writable`
/// may pass (both did: the walk up to an existing directory stepped over the file).
#[test]
fn a_base_under_a_regular_file_fails_base_and_leaves_writable_unchecked() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let env = Env::with_base_name(Some(&sshd), &ws, "blocker/app", "");
    let blocker = env.dir.path().join("blocker");
    std::fs::write(&blocker, "a file where a folder should be\n").unwrap();
    let run = check(&env, &[], &[]).code(1);
    let (base, blocker) = (env.base.display().to_string(), blocker.display().to_string());
    assert_eq!(
        row_of(&run.stdout, "base"),
        row(
            "base",
            "FAIL",
            &format!("{base} cannot be created: {blocker} is a regular file, not a directory; choose a base under a directory, or move that file away")
        )
    );
    assert_eq!(row_of(&run.stdout, "writable"), row("writable", "SKIP", &format!("not checked: {blocker} is not a directory")));
    assert_eq!(run.stdout.lines().last(), Some("CHECK_RESULT=FAIL"));
    // What check refused, deploy cannot do either.
    bst_with(&env.config, &["deploy", "t"], &[]).code(1);
}

/// Unmounts on drop, also when an assertion fails first.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Item 4: writability is tested by creating an entry, and a read-only mount says so (it read
/// `writable FAIL … writable by root`).
#[test]
fn a_read_only_mount_is_named_as_such_and_a_writable_base_passes_for_real() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let env = Env::with_base_name(Some(&sshd), &ws, "ro/app", "");
    let ro = env.dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    let user = whoami();

    let run = check(&env, &[], &[]).ok();
    let (base, ro_s) = (env.base.display().to_string(), ro.display().to_string());
    assert_eq!(row_of(&run.stdout, "base"), row("base", "PASS", &format!("{base} does not exist yet; the first deploy creates it")));
    assert_eq!(
        row_of(&run.stdout, "writable"),
        row("writable", "PASS", &format!("{ro_s} writable by `{user}` (an entry was created and removed)"))
    );
    assert_eq!(row_of(&run.stdout, "build tools"), row("build tools", "SKIP", "no install or build command configured"));
    assert_eq!(std::fs::read_dir(&ro).unwrap().count(), 0, "the test entry was left behind");

    if user != "root" {
        println!("skipped the read-only half: mounting needs root, and this runs as {user}");
        return;
    }
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"]).arg(&ro).output().unwrap();
    if !mounted.status.success() {
        println!("skipped the read-only half: mount failed: {}", String::from_utf8_lossy(&mounted.stderr).trim());
        return;
    }
    let _unmount = Mounted(ro.clone());
    let run = check(&env, &[], &[]).code(1);
    assert_eq!(row_of(&run.stdout, "base"), row("base", "PASS", &format!("{base} does not exist yet")));
    assert_eq!(
        row_of(&run.stdout, "writable"),
        row(
            "writable",
            "FAIL",
            &format!(
                "{ro_s} is not writable by `{user}`: Read-only file system (a read-only mount: remount it read-write, or choose a base on a writable file system)"
            )
        )
    );
    assert_eq!(run.stdout.lines().last(), Some("CHECK_RESULT=FAIL"));
}

/// Item 5: `install`/`build` tools are looked up in the login shell the build runs them in,
/// with their versions. Here the tools exist only on the PATH a login profile sets (as nvm
/// and corepack do): `HOME` for the SSH session points at a folder with such a profile.
#[test]
fn build_tools_are_probed_in_the_builds_login_shell_with_versions() {
    let sshd = Sshd::start_with("PermitUserEnvironment yes");
    let ws = Workspace::new();
    let home = tempfile::Builder::new().prefix("bst-home").tempdir().unwrap();
    let h = home.path();
    std::fs::create_dir(h.join("bin")).unwrap();
    std::fs::write(h.join(".profile"), "PATH=\"$HOME/bin:$PATH\"\n").unwrap();
    for (tool, version) in [("pnpm", "9.12.3"), ("node", "v20.11.1")] {
        std::fs::write(h.join("bin").join(tool), format!("#!/bin/sh\necho {version}\n")).unwrap();
        sh(h, &format!("chmod +x bin/{tool}"));
    }
    let keys = sshd.dir.path().join("authorized_keys");
    let key = std::fs::read_to_string(&keys).unwrap();
    std::fs::write(&keys, format!("environment=\"HOME={}\" {key}", h.display())).unwrap();
    let env = Env::new(Some(&sshd), &ws, "install = \"pnpm install --frozen-lockfile\"\nbuild = \"NODE_ENV=production node build.js\"");
    let bin = h.join("bin").display().to_string();

    let run = check(&env, &[], &[]).ok();
    assert_eq!(
        row_of(&run.stdout, "build tools"),
        row("build tools", "PASS", &format!("pnpm 9.12.3 ({bin}/pnpm), node v20.11.1 ({bin}/node) in the login shell `/bin/sh -l`"))
    );

    std::fs::remove_file(h.join("bin/pnpm")).unwrap();
    let run = check(&env, &[], &[]).code(1);
    assert_eq!(row_of(&run.stdout, "tools"), row("tools", "PASS", "tar, gzip, sh present"));
    assert_eq!(
        row_of(&run.stdout, "build tools"),
        row(
            "build tools",
            "FAIL",
            &format!(
                "pnpm not found in the login shell `/bin/sh -l` that --build runs install and build in: install it on the server, or add its folder to PATH in that shell's login profile (e.g. ~/.profile); found node v20.11.1 ({bin}/node)"
            )
        )
    );
    // The same shell, the same verdict: the build fails on that very tool.
    bst_with(&env.config, &["deploy", "t", "--build"], &[]).code(1).stderr_has("pnpm: not found");
}

/// Item 6: an unknown host key is said once, with the fingerprint and the flag, and every
/// later row is "not checked" for that reason (they read `SKIP not reachable`).
#[test]
fn an_unknown_host_key_is_said_once_and_the_rest_is_not_checked() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let env = Env::new(Some(&sshd), &ws, "");
    std::fs::write(&sshd.known_hosts, "").unwrap();
    let listed = sh(sshd.dir.path(), "ssh-keygen -E sha256 -lf host_ed25519.pub");
    let fp = listed.split_whitespace().nth(1).unwrap().to_string();
    assert!(fp.starts_with("SHA256:"), "{listed}");

    let run = check(&env, &[], &[]).code(1);
    let mut want = vec![
        row("config", "PASS", "target `t` resolved"),
        row("reachable", "PASS", "TCP and SSH handshake ok"),
        row("host key", "FAIL", &format!("host key unknown: rerun with --accept-new-host-key after checking {fp}")),
    ];
    for c in ["auth", "base", "forbidden paths", "writable", "free disk", "tools", "build tools", "lock", "env baseline", "service units"] {
        want.push(row(c, "SKIP", "not checked: host key unknown"));
    }
    want.push("CHECK_RESULT=FAIL".into());
    assert_eq!(run.stdout.lines().collect::<Vec<_>>(), want);

    // Doing what it says works.
    let run = check(&env, &["--accept-new-host-key"], &[]).ok();
    assert_eq!(row_of(&run.stdout, "host key"), row("host key", "PASS", "known"));
    assert_eq!(run.stdout.lines().last(), Some("CHECK_RESULT=PASS"));
}

/// Item 10: a user that cannot log in is traced to the line that chose it: a target's
/// `user =`, `[defaults]`, an ssh config `User`, or nothing (the local user name).
#[test]
fn a_wrong_user_names_the_line_that_chose_it() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let env = Env::new(Some(&sshd), &ws, "");
    let me = whoami();
    let cfg = env.config.display().to_string();
    let port = sshd.port;
    // [targets.t], host, port, user: line 4.
    assert_eq!(std::fs::read_to_string(&env.config).unwrap().lines().nth(3), Some(format!("user = \"{me}\"").as_str()));
    let run = check(&env, &[], &[]).ok();
    assert_eq!(row_of(&run.stdout, "auth"), row("auth", "PASS", &format!("as `{me}` (`user =` at {cfg}:4)")));

    let last_line = |run: &Run| run.stderr.lines().last().unwrap_or("").to_string();
    let first_line = |run: &Run| run.stderr.lines().next().unwrap_or("").to_string();
    let tail = |user: &str, from: &str, fix: &str| format!("  the user `{user}` comes from {from}; if it is the wrong account, {fix}");
    let change = "change it there";

    set_config(&env, &format!("user = \"{me}\""), "user = \"bst-nobody\"");
    let run = bst_with(&env.config, &["list", "t"], &[]).code(5);
    assert!(
        first_line(&run).starts_with(&format!("error: authentication as `bst-nobody` on 127.0.0.1:{port} failed; tried: key ")),
        "{}",
        run.stderr
    );
    assert_eq!(last_line(&run), tail("bst-nobody", &format!("`user =` at {cfg}:4"), change));
    assert_eq!(run.stderr.lines().count(), 2, "{}", run.stderr);
    let run = check(&env, &[], &[]).code(1);
    let auth = row_of(&run.stdout, "auth");
    assert!(auth.starts_with(&row("auth", "FAIL", "authentication as `bst-nobody` on ")), "{auth}");
    assert!(
        auth.ends_with(&format!("; the user `bst-nobody` comes from `user =` at {cfg}:4; if it is the wrong account, {change}")),
        "{auth}"
    );
    assert_eq!(row_of(&run.stdout, "base"), row("base", "SKIP", "not checked: authentication failed"));

    // From [defaults]: that line, not the target's table.
    let text = std::fs::read_to_string(&env.config).unwrap().replace("user = \"bst-nobody\"\n", "");
    std::fs::write(&env.config, format!("[defaults]\nuser = \"bst-nobody\"\n{text}")).unwrap();
    let run = bst_with(&env.config, &["list", "t"], &[]).code(5);
    assert_eq!(last_line(&run), tail("bst-nobody", &format!("`user =` at {cfg}:2"), change));

    // From an ssh config `User` line.
    std::fs::write(&env.config, &text).unwrap();
    let ssh_config = env.dir.path().join("ssh_config");
    std::fs::write(&ssh_config, "# team hosts\nHost 127.0.0.1\n  User bst-nobody\n").unwrap();
    let sc = ssh_config.display().to_string();
    let run = bst_with(&env.config, &["list", "t"], &[("BST_SSH_CONFIG", &sc)]).code(5);
    assert_eq!(last_line(&run), tail("bst-nobody", &format!("`User` at {sc}:3"), change));

    // From nowhere: the local user name.
    let run = bst_with(&env.config, &["list", "t"], &[("USER", "bst-nobody")]).code(5);
    assert_eq!(
        last_line(&run),
        tail(
            "bst-nobody",
            "the local user name: no `user =` in targets.toml, no `User` in the ssh config",
            "set `user = \"…\"` in the target"
        )
    );
}

/// Item 10: a lock whose holder is running on this machine right now is never offered to
/// `bst unlock` (that would let two runs deploy at once): wait for it, or stop it.
#[test]
fn a_live_local_lock_holder_is_waited_for_or_stopped_never_unlocked() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let env = Env::new(Some(&sshd), &ws, "");
    env.bst(&["deploy", "t", "-q"]).ok();
    let mut holder = Command::new("sleep").arg("120").spawn().unwrap();
    let pid = holder.id();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let start = stat.rsplit_once(')').unwrap().1.split_whitespace().nth(19).unwrap().to_string();
    let mut record: serde_json::Value = serde_json::from_str(&dead_local_owner("ann")).unwrap();
    record["pid"] = pid.into();
    record["pid_start"] = start.into();
    std::fs::create_dir(env.base.join(".bst-lock")).unwrap();
    std::fs::write(env.base.join(".bst-lock/owner"), format!("{record}\n")).unwrap();
    let host = record["host"].as_str().unwrap().to_string();

    let run = env.bst(&["deploy", "t"]);
    let _ = holder.kill();
    let _ = holder.wait();
    let run = run.code(4);
    assert_eq!(
        run.stderr,
        format!(
            "error: target `t` is locked by `deploy` run by ann@{host} (pid {pid}) since 2026-01-01T00:00:00Z\n  that run is still going on this machine: wait for it to finish, or stop it (kill {pid}) and run again\n"
        )
    );
    assert!(env.base.join(".bst-lock/owner").exists(), "a live holder's lock was touched");
}

/// A port that accepts connections and never says a word: the silent host.
struct Silent {
    port: u16,
}

impl Silent {
    fn start() -> Silent {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for s in l.incoming().flatten().take(16) {
                // Kept open, read and never answered, until the client gives up.
                let mut r = s.try_clone().unwrap();
                held.push(s);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 1024];
                    while matches!(r.read(&mut buf), Ok(n) if n > 0) {}
                });
            }
        });
        Silent { port }
    }
}

/// Item 11: on a terminal, a connection that has not finished its handshake after a second
/// says what it is waiting for; not in CI, not with -q, never on stdout, and not at all
/// when the answer comes sooner.
#[test]
fn a_silent_host_says_connecting_on_a_terminal_after_a_second() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let silent = Silent::start();
    let env = Env::new(Some(&sshd), &ws, "");
    set_config(&env, &format!("port = {}", sshd.port), &format!("port = {}", silent.port));
    let ssh_config = env.dir.path().join("ssh_config");
    std::fs::write(&ssh_config, "Host *\n  ConnectTimeout 3\n").unwrap();
    let sc = ssh_config.display().to_string();
    // Plain text: colour on a terminal is terminal.rs's subject.
    let vars = [("BST_SSH_CONFIG", sc.as_str()), ("NO_COLOR", "1")];
    let p = silent.port;
    let failed = format!("error: cannot connect to 127.0.0.1:{p}: SSH handshake failed: no SSH greeting within 3s\n");

    let (code, shown) = on_tty(&env.config, &["list", "t"], &vars, "");
    assert_eq!((code, shown.as_str()), (5, format!("connecting to 127.0.0.1:{p}…\n{failed}").as_str()));

    // --json: the line goes to stderr only, stdout stays one document (the error's).
    let out = env.dir.path().join("stdout.json");
    let (code, shown) = on_tty(&env.config, &["list", "t", "--json"], &vars, &format!(" > {}", sh_quote(&out.display().to_string())));
    assert_eq!((code, shown.as_str()), (5, format!("connecting to 127.0.0.1:{p}…\n{failed}").as_str()));
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(doc["error"]["kind"], "connect");
    assert!(!doc["error"]["message"].as_str().unwrap().contains("connecting"));

    let in_ci: Vec<(&str, &str)> = vars.iter().copied().chain([("CI", "true")]).collect();
    assert_eq!(on_tty(&env.config, &["list", "t"], &in_ci, ""), (5, failed.clone()), "CI");
    assert_eq!(on_tty(&env.config, &["list", "t", "-q"], &vars, ""), (5, failed.clone()), "-q");
    // No terminal: no line.
    assert_eq!(bst_with(&env.config, &["list", "t"], &vars).code(5).stderr, failed);

    // An answer within the second (the real sshd): nothing is said.
    set_config(&env, &format!("port = {p}"), &format!("port = {}", sshd.port));
    let (code, shown) = on_tty(&env.config, &["list", "t"], &vars, "");
    assert_eq!(code, 0, "{shown}");
    assert!(!shown.contains("connecting to"), "{shown}");
}
