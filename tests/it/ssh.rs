//! Issue 6: SSH the way users already have it — ~/.ssh/config aliases, ProxyJump, ssh-agent,
//! encrypted keys, key types, hashed known_hosts, changed keys — against real sshd.

use std::path::Path;
use std::process::Command;

use crate::harness::*;

/// A config whose target is just an ssh config alias: nothing else about the connection.
fn alias_env(ws: &Workspace, alias: &str) -> Env {
    let env = Env::new(None, ws, "");
    std::fs::write(
        &env.config,
        format!("[targets.t]\nhost = \"{alias}\"\nbase = {}\nsource = {}\n", toml_str(&env.base), toml_str(ws.path())),
    )
    .unwrap();
    env
}

fn ssh_config(dir: &Path, text: &str) -> String {
    let p = dir.join("ssh_config");
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

#[test]
fn host_alias_from_ssh_config_just_works() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let env = alias_env(&ws, "home-server");
    let cfg = ssh_config(
        env.dir.path(),
        &format!(
            "Host home-*\n  HostName 127.0.0.1\n  Port {}\n  User {}\n  IdentityFile {}\n  IdentitiesOnly yes\n  UserKnownHostsFile {}\n",
            sshd.port,
            whoami(),
            sshd.user_key.display(),
            sshd.known_hosts.display()
        ),
    );
    bst_with(&env.config, &["deploy", "t"], &[("BST_SSH_CONFIG", &cfg)]).ok();
    assert!(env.current().is_some());
    let shown = bst_with(&env.config, &["config", "show", "t", "--json"], &[("BST_SSH_CONFIG", &cfg)]).ok().json();
    assert_eq!(shown["transport"], format!("ssh {}@127.0.0.1:{}", whoami(), sshd.port));
    // Without the ssh config the alias means nothing: a clear connection error.
    let run = bst_with(&env.config, &["list", "t"], &[("BST_SSH_CONFIG", "none"), ("HOME", env.dir.path().to_str().unwrap())]);
    assert_ne!(run.code, 0);
}

#[test]
fn proxy_jump_goes_through_the_hop() {
    let target = Sshd::start();
    let jump = Sshd::start_with("LogLevel DEBUG1");
    let ws = Workspace::new();
    let env = alias_env(&ws, "app");
    let kh = env.dir.path().join("known_hosts");
    std::fs::write(&kh, format!("[127.0.0.1]:{} {}\n[127.0.0.1]:{} {}\n", target.port, target.host_key, jump.port, jump.host_key)).unwrap();
    let cfg = ssh_config(
        env.dir.path(),
        &format!(
            "Host app\n  HostName 127.0.0.1\n  Port {}\n  IdentityFile {}\n  ProxyJump bastion\n\nHost bastion\n  HostName 127.0.0.1\n  Port {}\n  IdentityFile {}\n\nHost *\n  User {}\n  IdentitiesOnly yes\n  UserKnownHostsFile {}\n",
            target.port,
            target.user_key.display(),
            jump.port,
            jump.user_key.display(),
            whoami(),
            kh.display()
        ),
    );
    bst_with(&env.config, &["deploy", "t"], &[("BST_SSH_CONFIG", &cfg)]).ok();
    bst_with(&env.config, &["deploy", "t", "--build"], &[("BST_SSH_CONFIG", &cfg)]).ok();
    let j = bst_with(&env.config, &["list", "t", "--json"], &[("BST_SSH_CONFIG", &cfg)]).ok().json();
    assert_eq!(j["releases"].as_array().unwrap().len(), 2);
    let log = jump.log();
    assert!(
        log.contains(&format!("port {}", target.port)) && log.contains("direct-tcpip"),
        "the jump host never forwarded to the target:\n{log}"
    );
}

#[test]
fn ssh_agent_is_used_and_failures_name_what_was_tried() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let env = Env::new(Some(&sshd), &ws, "");
    let cfg = std::fs::read_to_string(&env.config).unwrap();
    let no_identity: String = cfg.lines().filter(|l| !l.starts_with("identity_file")).map(|l| format!("{l}\n")).collect();
    std::fs::write(&env.config, no_identity).unwrap();
    let home = env.dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let home_s = home.to_string_lossy().into_owned();
    // No agent, no keys in ~/.ssh: exit 5, and the message says what was tried.
    bst_with(&env.config, &["list", "t"], &[("HOME", &home_s)]).code(5).stderr_has("authentication as").stderr_has("tried: nothing");
    let sock = env.dir.path().join("agent.sock");
    let agent = Command::new("ssh-agent").arg("-D").arg("-a").arg(&sock).stdout(std::process::Stdio::null()).spawn().unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
        }
    }
    let _agent = Kill(agent);
    for _ in 0..100 {
        if sock.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let added = Command::new("ssh-add").arg(&sshd.user_key).env("SSH_AUTH_SOCK", &sock).output().unwrap();
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    let sock_s = sock.to_string_lossy().into_owned();
    bst_with(&env.config, &["deploy", "t"], &[("HOME", &home_s), ("SSH_AUTH_SOCK", &sock_s)]).ok();
}

#[test]
fn encrypted_keys_and_every_key_type() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let keys = tempfile::tempdir().unwrap();
    let enc = keys.path().join("enc");
    let ok = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "s3cret-pass", "-f"]).arg(&enc).status().unwrap().success();
    assert!(ok);
    sshd.authorize(&keys.path().join("enc.pub"));
    let env = Env::new(Some(&sshd), &ws, "");
    let cfg = std::fs::read_to_string(&env.config).unwrap().replace(&toml_str(&sshd.user_key), &toml_str(&enc));
    std::fs::write(&env.config, cfg).unwrap();
    let run = bst_with(&env.config, &["list", "t"], &[]).code(5);
    assert!(run.stderr.contains("BST_SSH_PASSPHRASE"), "{}", run.stderr);
    bst_with(&env.config, &["deploy", "t"], &[("BST_SSH_PASSPHRASE", "s3cret-pass")]).ok();
    bst_with(&env.config, &["list", "t"], &[("BST_SSH_PASSPHRASE", "wrong")]).code(5);
    for (kind, bits) in [("ecdsa", "256"), ("rsa", "3072")] {
        let k = keys.path().join(kind);
        let ok = Command::new("ssh-keygen").args(["-q", "-t", kind, "-b", bits, "-N", "", "-f"]).arg(&k).status().unwrap().success();
        assert!(ok);
        sshd.authorize(&keys.path().join(format!("{kind}.pub")));
        let text = std::fs::read_to_string(&env.config).unwrap();
        let start = text.find("identity_file = ").unwrap();
        let end = start + text[start..].find('\n').unwrap();
        std::fs::write(&env.config, format!("{}identity_file = {}{}", &text[..start], toml_str(&k), &text[end..])).unwrap();
        bst_with(&env.config, &["list", "t"], &[]).ok();
    }
}

#[test]
fn hashed_known_hosts_and_changed_keys_show_both_fingerprints() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let env = alias_env(&ws, "box");
    let kh = env.dir.path().join("kh");
    let cfg = ssh_config(
        env.dir.path(),
        &format!(
            "Host box\n  HostName 127.0.0.1\n  Port {}\n  User {}\n  IdentityFile {}\n  UserKnownHostsFile {}\n  StrictHostKeyChecking accept-new\n  HashKnownHosts yes\n",
            sshd.port,
            whoami(),
            sshd.user_key.display(),
            kh.display()
        ),
    );
    bst_with(&env.config, &["list", "t"], &[("BST_SSH_CONFIG", &cfg)]).ok().stderr_has("recorded host key");
    let text = std::fs::read_to_string(&kh).unwrap();
    assert!(text.starts_with("|1|") && !text.contains("127.0.0.1"), "not hashed: {text}");
    // OpenSSH finds its own kind of hashed entry.
    let found = Command::new("ssh-keygen").args(["-F", &format!("[127.0.0.1]:{}", sshd.port), "-f"]).arg(&kh).output().unwrap();
    assert!(found.status.success(), "ssh-keygen -F does not find the hashed entry");
    bst_with(&env.config, &["list", "t"], &[("BST_SSH_CONFIG", &cfg)]).ok();
    // Another key on file for that host: refused even with accept-new, both fingerprints shown.
    let other = tempfile::tempdir().unwrap();
    keygen(&other.path().join("k"));
    let fake = std::fs::read_to_string(other.path().join("k.pub")).unwrap();
    let fake: Vec<&str> = fake.split_whitespace().take(2).collect();
    std::fs::write(&kh, format!("[127.0.0.1]:{} {}\n", sshd.port, fake.join(" "))).unwrap();
    let expected_fp = sh(other.path(), "ssh-keygen -lf k.pub | awk '{print $2}'");
    let offered_fp = sh(sshd.dir.path(), "ssh-keygen -lf host_ed25519.pub | awk '{print $2}'");
    let run = bst_with(&env.config, &["list", "t"], &[("BST_SSH_CONFIG", &cfg)]).code(5).stderr_has("HAS CHANGED");
    assert!(run.stderr.contains(expected_fp.trim()) && run.stderr.contains(offered_fp.trim()), "{}", run.stderr);
}

#[test]
fn a_host_known_only_by_its_rsa_key_is_verified_with_it() {
    let probe = tempfile::tempdir().unwrap();
    let rsa = probe.path().join("host_rsa");
    let ok = Command::new("ssh-keygen").args(["-q", "-t", "rsa", "-b", "3072", "-N", "", "-f"]).arg(&rsa).status().unwrap().success();
    assert!(ok);
    let sshd = Sshd::start_with(&format!("HostKey {}", rsa.display()));
    let ws = Workspace::new();
    let env = Env::new(Some(&sshd), &ws, "");
    let rsa_pub = std::fs::read_to_string(probe.path().join("host_rsa.pub")).unwrap();
    let rsa_pub: Vec<&str> = rsa_pub.split_whitespace().take(2).collect();
    std::fs::write(&sshd.known_hosts, format!("[127.0.0.1]:{} {}\n", sshd.port, rsa_pub.join(" "))).unwrap();
    bst_with(&env.config, &["deploy", "t"], &[]).ok();
}

#[test]
fn a_port_that_never_speaks_ssh_times_out_clearly() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hold = std::thread::spawn(move || {
        let conns: Vec<_> = listener.incoming().take(1).collect();
        std::thread::sleep(std::time::Duration::from_secs(6));
        drop(conns);
    });
    let ws = Workspace::new();
    let env = alias_env(&ws, "silent");
    let cfg = ssh_config(env.dir.path(), &format!("Host silent\n  HostName 127.0.0.1\n  Port {port}\n  User x\n  ConnectTimeout 2\n"));
    let t = std::time::Instant::now();
    bst_with(&env.config, &["list", "t"], &[("BST_SSH_CONFIG", &cfg)])
        .code(5)
        .stderr_has(&format!("cannot connect to 127.0.0.1:{port}"))
        .stderr_has("no SSH greeting within 2s");
    assert!(t.elapsed() < std::time::Duration::from_secs(5), "took {:?}", t.elapsed());
    hold.join().unwrap();
}

#[test]
fn encrypted_key_passphrase_is_prompted_on_a_terminal_without_echo() {
    let sshd = Sshd::start();
    let ws = Workspace::new();
    let keys = tempfile::tempdir().unwrap();
    let enc = keys.path().join("enc");
    assert!(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "tty-pass-77", "-f"]).arg(&enc).status().unwrap().success());
    sshd.authorize(&keys.path().join("enc.pub"));
    let env = Env::new(Some(&sshd), &ws, "");
    let cfg = std::fs::read_to_string(&env.config).unwrap().replace(&toml_str(&sshd.user_key), &toml_str(&enc));
    std::fs::write(&env.config, cfg).unwrap();
    let session = format!("bst-tty-{}", std::process::id());
    let out = env.dir.path().join("out.txt");
    // stdout goes to a file, but stdin/stderr stay on tmux's terminal: the prompt must show
    // there, and the typed passphrase must not echo.
    let cmd = format!(
        "BST_SSH_CONFIG=none {} --config '{}' list t 2>/dev/tty > '{}'; echo EXIT=$? >> '{}'; sleep 30",
        env!("CARGO_BIN_EXE_bst"),
        env.config.display(),
        out.display(),
        out.display()
    );
    let ok = Command::new("tmux").args(["new-session", "-d", "-s", &session, "-x", "160", "-y", "20", &cmd]).status().unwrap().success();
    assert!(ok, "tmux failed to start");
    struct Kill(String);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = Command::new("tmux").args(["kill-session", "-t", &self.0]).status();
        }
    }
    let _kill = Kill(session.clone());
    let screen = || {
        String::from_utf8_lossy(&Command::new("tmux").args(["capture-pane", "-p", "-t", &session]).output().unwrap().stdout).into_owned()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !screen().contains("passphrase for") {
        assert!(std::time::Instant::now() < deadline, "no passphrase prompt:\n{}", screen());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(Command::new("tmux").args(["send-keys", "-t", &session, "tty-pass-77", "Enter"]).status().unwrap().success());
    while !std::fs::read_to_string(&out).unwrap_or_default().contains("EXIT=") {
        assert!(std::time::Instant::now() < deadline, "bst did not finish:\n{}", screen());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let result = std::fs::read_to_string(&out).unwrap();
    assert!(result.contains("EXIT=0") && result.contains("no releases"), "{result}\n{}", screen());
    assert!(!screen().contains("tty-pass-77"), "the passphrase was echoed:\n{}", screen());
}
