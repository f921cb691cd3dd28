//! Issue 13: bst reads ssh config and known_hosts files exactly as OpenSSH does. The oracle is
//! OpenSSH itself on the same files: `ssh -G` for what a config resolves to, and a real `ssh`
//! connect against the loopback sshd for connect vs refuse.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::*;

/// `ssh -G` output: keyword -> values (IdentityFile repeats).
type Resolved = BTreeMap<String, Vec<String>>;

fn ssh_g(cfg: &Path, alias: &str) -> Result<Resolved, String> {
    let out = Command::new("ssh").arg("-G").arg("-F").arg(cfg).arg(alias).output().expect("ssh runs");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let mut m = Resolved::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some((k, v)) = line.split_once(' ') {
            m.entry(k.to_string()).or_default().push(v.to_string());
        }
    }
    Ok(m)
}

/// bst's view of the same alias: `config show --json` with only that ssh config, as `-F` does.
fn bst_show(dir: &Path, cfg: &Path, alias: &str) -> Result<serde_json::Value, String> {
    let toml = dir.join("targets.toml");
    std::fs::write(&toml, format!("[targets.t]\nhost = {}\nbase = \"/tmp/bst-oracle-base\"\nsource = {}\n", q(alias), toml_str(dir)))
        .unwrap();
    let run = bst_with(&toml, &["config", "show", "t", "--json"], &[("BST_SSH_CONFIG", cfg.to_str().unwrap())]);
    if run.code != 0 {
        return Err(format!("exit {}: {}", run.code, run.stderr));
    }
    Ok(run.json()["ssh"].clone())
}

fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn home() -> String {
    std::env::var("HOME").unwrap()
}

/// The tokens ssh leaves unexpanded in `-G` output (IdentityFile, ProxyCommand), expanded
/// here by the test itself, not by bst's code.
fn tokens(s: &str, host: &str, port: &str, user: &str, alias: &str) -> String {
    let s = s.strip_prefix("~/").map_or(s.to_string(), |r| format!("{}/{r}", home()));
    s.replace("%%", "\u{0}")
        .replace("%h", host)
        .replace("%p", port)
        .replace("%r", user)
        .replace("%n", alias)
        .replace("%d", &home())
        .replace("%u", &whoami())
        .replace('\u{0}', "%")
}

fn strs(v: &serde_json::Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().map(|x| x.as_str().unwrap_or_default().to_string()).collect()).unwrap_or_default()
}

fn setting(j: &serde_json::Value, name: &str) -> String {
    j["settings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["setting"] == name)
        .map(|s| s["value"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

/// Where bst and ssh disagree for one alias (empty: they agree).
fn compare(g: &Resolved, j: &serde_json::Value, alias: &str) -> Vec<String> {
    let one = |k: &str| g.get(k).and_then(|v| v.first()).cloned().unwrap_or_default();
    let (host, port, user) = (one("hostname"), one("port"), one("user"));
    let mut bad = Vec::new();
    let mut check = |what: &str, ssh: String, bst: String| {
        if ssh != bst {
            bad.push(format!("{what}: ssh {ssh:?}, bst {bst:?}"));
        }
    };
    check("hostname", host.clone(), j["host"].as_str().unwrap_or_default().into());
    check("port", port.clone(), j["port"].to_string());
    check("user", user.clone(), j["user"].as_str().unwrap_or_default().into());
    let ssh_ids: Vec<String> =
        g.get("identityfile").cloned().unwrap_or_default().iter().map(|f| tokens(f, &host, &port, &user, alias)).collect();
    let defaults: Vec<String> = ["id_rsa", "id_ecdsa", "id_ecdsa_sk", "id_ed25519", "id_ed25519_sk", "id_xmss", "id_dsa"]
        .iter()
        .map(|n| format!("{}/.ssh/{n}", home()))
        .collect();
    let bst_ids = strs(&j["identity_files"]);
    if bst_ids.is_empty() {
        check("identityfile (defaults)", ssh_ids.join(" "), defaults.join(" "));
    } else {
        check("identityfile", ssh_ids.join(" "), bst_ids.join(" "));
    }
    let none_if_empty = |v: Vec<String>| if v.is_empty() { "none".to_string() } else { v.join(" ") };
    check("userknownhostsfile", one("userknownhostsfile"), none_if_empty(strs(&j["known_hosts"])));
    check("globalknownhostsfile", one("globalknownhostsfile"), none_if_empty(strs(&j["global_known_hosts"])));
    check("proxyjump", one("proxyjump"), j["proxy_jump"].as_str().unwrap_or_default().into());
    check(
        "proxycommand",
        g.get("proxycommand").map(|v| tokens(&v[0], &host, &port, &user, alias)).unwrap_or_default(),
        j["proxy_command"].as_str().unwrap_or_default().into(),
    );
    check("hostkeyalias", one("hostkeyalias"), j["host_key_alias"].as_str().unwrap_or_default().into());
    let strict = |v: &str| {
        match v {
            "yes" | "true" => "yes",
            "no" | "false" | "off" => "no",
            other => other,
        }
        .to_string()
    };
    check("stricthostkeychecking", strict(&one("stricthostkeychecking")), strict(&setting(j, "stricthostkeychecking")));
    check("hashknownhosts", one("hashknownhosts"), setting(j, "hashknownhosts"));
    let ct = setting(j, "connecttimeout");
    check("connecttimeout", one("connecttimeout"), if ct.contains("bst default") { "none".into() } else { ct });
    bad
}

/// (what it shows, config, alias). `@D@` is replaced by a scratch directory.
const CORPUS: &[(&str, &str, &str)] = &[
    ("plain alias", "Host web\n  HostName 127.0.0.5\n  User deploy\n  Port 2222\n", "web"),
    ("%h in HostName, lowercased", "Host Web*\n  HostName %h.Example.COM\n", "WebApp"),
    ("Host is case-sensitive", "Host web\n  User a\nHost *\n  User b\n", "WEB"),
    ("patterns and negation", "Host *.internal !secret.internal\n  User ops\nHost *\n  User fallback\n", "secret.internal"),
    ("patterns and negation 2", "Host *.internal !secret.internal\n  User ops\nHost *\n  User fallback\n", "db.internal"),
    (
        "first value wins, files accumulate",
        "Host a\n  Port 1000\n  IdentityFile ~/k1\nHost *\n  Port 2000\n  IdentityFile ~/k2\n  IdentityFile ~/k1\n",
        "a",
    ),
    (
        "tokens in files",
        "Host t\n  User bob\n  IdentityFile ~/.ssh/k_%h_%r_%p\n  UserKnownHostsFile ~/kh_%h %d/kh2\n  GlobalKnownHostsFile /etc/kh_%n\n",
        "t",
    ),
    ("Match host sees HostName", "Host short\n  HostName real.example\nMatch host real.example\n  Port 2022\n", "short"),
    ("Match originalhost", "Host short\n  HostName real.example\nMatch originalhost short\n  User orig\n", "short"),
    ("Match !host", "Match !host nope\n  User negated\n", "x"),
    ("Match user", "Host u\n  User alice\nMatch user alice\n  Port 2200\n", "u"),
    ("Match localuser", "Match localuser nobody-here\n  Port 1\nMatch all\n  Port 2\n", "x"),
    ("Match exec", "Match exec \"test %h = yes.example\"\n  User viaexec\nMatch exec false\n  Port 9\n", "yes.example"),
    ("Match final", "Match final host real.example\n  User late\nHost short\n  HostName real.example\n", "short"),
    ("Match host list", "Match host a.example,b.example\n  User listed\n", "b.example"),
    ("ProxyJump chain", "Host t\n  ProxyJump j1,admin@j2:2200\n  ProxyCommand nc %h %p\n", "t"),
    ("ProxyCommand first wins", "Host t\n  ProxyCommand nc %h %p\n  ProxyJump j1\n", "t"),
    ("ProxyJump none", "Host t\n  ProxyJump none\nHost *\n  ProxyJump j9\n", "t"),
    ("equals and quotes", "Host=\"quoted alias\" q\n  HostName=127.1.1.1\n  User = \"u1\"\n", "q"),
    ("key=value", "Host kv\n  Port=2345\n", "kv"),
    ("HostKeyAlias, lowercased", "Host a\n  HostKeyAlias MyAlias\n", "a"),
    (
        "StrictHostKeyChecking accept-new, times",
        "Host a\n  StrictHostKeyChecking accept-new\n  ConnectTimeout 1m30s\n  HashKnownHosts yes\n",
        "a",
    ),
    ("StrictHostKeyChecking no", "Host a\n  StrictHostKeyChecking no\n", "a"),
    ("known hosts none", "Host a\n  UserKnownHostsFile none\n  GlobalKnownHostsFile none\n", "a"),
    ("Include, globbed", "Include @D@/inc/*.conf\nHost *\n  User last\n", "inc"),
    ("IgnoreUnknown", "IgnoreUnknown Frobnicate\nHost a\n  Frobnicate yes\n  User ignored\n", "a"),
    ("unused directives", "Host a\n  ForwardAgent yes\n  ControlMaster auto\n  User ctl\n", "a"),
];

/// Configs ssh refuses: bst refuses too (exit 2, naming the line).
const REFUSED: &[(&str, &str, &str)] = &[
    ("unknown keyword, even in a block that does not match", "Host other\n  Frobnicate yes\n", "a"),
    ("bad Match attribute", "Match colour blue\n  User x\n", "a"),
    ("Match all with more", "Match all host x\n  User x\n", "a"),
    ("bad port", "Host a\n  Port eighty\n", "a"),
];

#[test]
fn ssh_config_resolves_as_ssh_dash_g_says() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("inc")).unwrap();
    std::fs::write(d.join("inc/10-a.conf"), "Host inc\n  HostName from-include.example\n  Port 3001\n").unwrap();
    std::fs::write(d.join("inc/20-b.conf"), "Host inc\n  Port 3002\n  User included\n").unwrap();
    let mut failures = Vec::new();
    for (what, text, alias) in CORPUS {
        let cfg = d.join("ssh_config");
        std::fs::write(&cfg, text.replace("@D@", &d.display().to_string())).unwrap();
        let g = ssh_g(&cfg, alias).unwrap_or_else(|e| panic!("{what}: ssh -G refused a corpus config: {e}"));
        match bst_show(d, &cfg, alias) {
            Ok(j) => {
                let bad = compare(&g, &j, alias);
                if !bad.is_empty() {
                    failures.push(format!("{what} ({alias}):\n    {}", bad.join("\n    ")));
                }
            }
            Err(e) => failures.push(format!("{what}: ssh accepts it, bst refused: {e}")),
        }
    }
    for (what, text, alias) in REFUSED {
        let cfg = d.join("ssh_config");
        std::fs::write(&cfg, text).unwrap();
        assert!(ssh_g(&cfg, alias).is_err(), "{what}: the oracle accepts this config; fix the corpus");
        match bst_show(d, &cfg, alias) {
            Ok(_) => failures.push(format!("{what}: ssh refuses it, bst accepted it")),
            Err(e) => {
                if !(e.starts_with("exit 2") && e.contains("ssh_config:")) {
                    failures.push(format!("{what}: refused, but not with exit 2 naming the file and line: {e}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "bst and `ssh -G` disagree:\n  {}", failures.join("\n  "));
}

#[test]
fn config_show_says_where_each_ssh_setting_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ssh_config");
    std::fs::write(&cfg, "Host *\n  ServerAliveInterval 5\nHost a\n  HostName 127.0.0.9\n  Port 2201\n  ForwardAgent yes\n").unwrap();
    let toml = dir.path().join("targets.toml");
    std::fs::write(
        &toml,
        format!("[targets.t]\nhost = \"a\"\nuser = \"deployer\"\nbase = \"/srv/x\"\nsource = {}\n", toml_str(dir.path())),
    )
    .unwrap();
    let env = [("BST_SSH_CONFIG", cfg.to_str().unwrap())];
    let shown = bst_with(&toml, &["config", "show", "t"], &env).ok();
    let c = cfg.display().to_string();
    for line in [
        format!("ssh hostname               127.0.0.9  ({c}:4)"),
        format!("ssh port                   2201  ({c}:5)"),
        "ssh user                   deployer  (targets.toml)".to_string(),
        "ssh stricthostkeychecking  ask  (default)".to_string(),
        format!("ssh ForwardAgent           not used by bst  ({c}:6)"),
    ] {
        assert!(shown.stdout.contains(&line), "missing `{line}` in:\n{}", shown.stdout);
    }
    let j = bst_with(&toml, &["config", "show", "t", "--json"], &env).ok().json();
    assert_eq!(j["ssh"]["not_used"][0]["directive"], "ForwardAgent");
    assert_eq!(j["ssh"]["not_used"][0]["at"], format!("{c}:6"));
    // A config ssh itself rejects is rejected with the line, before anything connects.
    std::fs::write(&cfg, "Host a\n  CanonicalizeHostname yes\n").unwrap();
    bst_with(&toml, &["config", "show", "t"], &env).code(2).stderr_has(&format!("{c}:2: CanonicalizeHostname yes is not supported"));
}

/// One connect attempt by ssh and one by bst on the same files (fresh copies each, since
/// accept-new writes to them). Returns (ssh connected, bst's run).
struct Trial<'a> {
    sshd: &'a Sshd,
    dir: PathBuf,
}

impl Trial<'_> {
    fn files(&self, user_kh: &str, user_kh2: &str, global_kh: &str) -> (PathBuf, PathBuf, PathBuf) {
        let (a, b, g) = (self.dir.join("kh1"), self.dir.join("kh2"), self.dir.join("global_kh"));
        std::fs::write(&a, user_kh).unwrap();
        std::fs::write(&b, user_kh2).unwrap();
        std::fs::write(&g, global_kh).unwrap();
        (a, b, g)
    }

    fn config(&self, strict: &str, extra: &str) -> PathBuf {
        let cfg = self.dir.join("ssh_config");
        std::fs::write(
            &cfg,
            format!(
                "Host t j1 j2\n  HostName 127.0.0.1\n  Port {}\n  User {}\n  IdentityFile {}\n  IdentitiesOnly yes\n  UserKnownHostsFile {d}/kh1 {d}/kh2\n  GlobalKnownHostsFile {d}/global_kh\n  StrictHostKeyChecking {strict}\n  BatchMode yes\n{extra}",
                self.sshd.port,
                whoami(),
                self.sshd.user_key.display(),
                d = self.dir.display()
            ),
        )
        .unwrap();
        cfg
    }

    /// (ssh connected, bst run), each on fresh copies of the three files.
    fn both(&self, files: (&str, &str, &str), strict: &str, extra: &str) -> (bool, Run) {
        let cfg = self.config(strict, extra);
        self.files(files.0, files.1, files.2);
        let ssh = Command::new("ssh").arg("-F").arg(&cfg).args(["t", "true"]).output().expect("ssh runs");
        self.files(files.0, files.1, files.2);
        let toml = self.dir.join("targets.toml");
        std::fs::write(
            &toml,
            format!("[targets.t]\nhost = \"t\"\nbase = {}\nsource = {}\n", toml_str(&self.dir.join("base")), toml_str(&self.dir)),
        )
        .unwrap();
        let run = bst_with(&toml, &["list", "t"], &[("BST_SSH_CONFIG", cfg.to_str().unwrap())]);
        (ssh.status.success(), run)
    }
}

/// (what, user kh, user kh2, global kh, StrictHostKeyChecking, extra config, bst's exit, bst's stderr)
type KnownHostsCase<'a> = (&'a str, String, String, String, &'a str, &'a str, i32, &'a str);

fn other_key(dir: &Path) -> String {
    let p = dir.join("other_host_key");
    if !p.exists() {
        keygen(&p);
    }
    std::fs::read_to_string(p.with_extension("pub")).unwrap().split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

#[test]
fn known_hosts_connect_or_refuse_as_ssh_does() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let t = Trial { sshd: &sshd, dir: dir.path().to_path_buf() };
    let (p, key) = (sshd.port, sshd.host_key.clone());
    let other = other_key(dir.path());
    let hashed = {
        let f = dir.path().join("to_hash");
        std::fs::write(&f, format!("[127.0.0.1]:{p} {key}\n")).unwrap();
        assert!(Command::new("ssh-keygen").arg("-H").arg("-f").arg(&f).output().unwrap().status.success());
        std::fs::read_to_string(&f).unwrap()
    };
    let plain = format!("[127.0.0.1]:{p} {key}\n");
    let cases: Vec<KnownHostsCase> = vec![
        ("listed", plain.clone(), "".into(), "".into(), "yes", "", 0, ""),
        (
            "a port-22 entry does not speak for another port",
            format!("127.0.0.1 {other}\n"),
            "".into(),
            "".into(),
            "yes",
            "",
            5,
            "is not known",
        ),
        (
            "a port-22 entry, accept-new records the port's own",
            format!("127.0.0.1 {other}\n"),
            "".into(),
            "".into(),
            "accept-new",
            "",
            0,
            "recorded host key",
        ),
        ("revoked", format!("{plain}@revoked [127.0.0.1]:{p} {key}\n"), "".into(), "".into(), "yes", "", 5, "REVOKED HOST KEY"),
        ("revoked, even with accept-new", format!("@revoked * {key}\n"), "".into(), "".into(), "accept-new", "", 5, "REVOKED HOST KEY"),
        ("revoked in the global file", plain.clone(), "".into(), format!("@revoked * {key}\n"), "yes", "", 5, "REVOKED HOST KEY"),
        (
            "only a certificate authority",
            format!("@cert-authority [127.0.0.1]:{p} {other}\n"),
            "".into(),
            "".into(),
            "yes",
            "",
            5,
            "@cert-authority",
        ),
        ("hashed by ssh-keygen -H", hashed.clone(), "".into(), "".into(), "yes", "", 0, ""),
        ("wildcard", format!("[127.0.0.?]:{p} {key}\n"), "".into(), "".into(), "yes", "", 0, ""),
        ("negated", format!("*,![127.0.0.1]:{p},!127.0.0.1 {key}\n"), "".into(), "".into(), "yes", "", 5, "is not known"),
        (
            "the same key under the bare host name is found without the port",
            format!("127.0.0.1 {key}\n"),
            "".into(),
            "".into(),
            "yes",
            "",
            0,
            "",
        ),
        ("a port-22 pattern with this very key", format!("*,![127.0.0.1]:{p} {key}\n"), "".into(), "".into(), "yes", "", 0, ""),
        ("in the second user file", "".into(), plain.clone(), "".into(), "yes", "", 0, ""),
        ("in the global file", "".into(), "".into(), plain.clone(), "yes", "", 0, ""),
        ("changed", format!("[127.0.0.1]:{p} {other}\n"), "".into(), "".into(), "yes", "", 5, "HAS CHANGED"),
        ("HostKeyAlias", format!("myalias {key}\n"), "".into(), "".into(), "yes", "  HostKeyAlias MyAlias\n", 0, ""),
        (
            "HostKeyAlias hides the [host]:port entry",
            plain.clone(),
            "".into(),
            "".into(),
            "yes",
            "  HostKeyAlias myalias\n",
            5,
            "is not known",
        ),
        ("unknown", "".into(), "".into(), "".into(), "yes", "", 5, "is not known"),
    ];
    let mut failures = Vec::new();
    for (what, kh1, kh2, gkh, strict, extra, code, needle) in &cases {
        let (ssh_ok, run) = t.both((kh1, kh2, gkh), strict, extra);
        if ssh_ok != (*code == 0) {
            failures.push(format!("{what}: ssh {} but the case expects bst exit {code}", if ssh_ok { "connected" } else { "refused" }));
        }
        if run.code != *code || !run.stderr.contains(needle) {
            failures.push(format!("{what}: bst exit {} (want {code}, stderr with {needle:?}): {}", run.code, run.stderr.trim()));
        }
    }
    // What accept-new recorded is what ssh looks up: a `[127.0.0.1]:port` line in the first file.
    let (_, run) = t.both((&format!("127.0.0.1 {other}\n"), "", ""), "accept-new", "");
    run.ok();
    let recorded = std::fs::read_to_string(dir.path().join("kh1")).unwrap();
    assert!(recorded.contains(&format!("[127.0.0.1]:{p} ssh-ed25519 ")), "{recorded}");
    let cfg = t.config("yes", "");
    assert!(Command::new("ssh").arg("-F").arg(&cfg).args(["t", "true"]).status().unwrap().success(), "ssh accepts what bst recorded");
    assert!(failures.is_empty(), "bst and ssh disagree:\n  {}", failures.join("\n  "));
}

#[test]
fn every_proxy_jump_hop_is_chained_and_verified_and_proxy_command_runs() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let t = Trial { sshd: &sshd, dir: dir.path().to_path_buf() };
    let plain = format!("[127.0.0.1]:{} {}\n", sshd.port, sshd.host_key);
    let files = (plain.as_str(), "", "");
    let jump = "Host t\n  ProxyJump j1,j2\n";
    let g = ssh_g(&t.config("yes", jump), "t").unwrap();
    assert_eq!(g["proxyjump"], vec!["j1,j2"]);
    // sshd logs a fixed number of lines per connection: measure it on a direct one.
    let before = sshd.connections();
    let (ssh_ok, _) = t.both(files, "yes", "");
    assert!(ssh_ok);
    let per = (sshd.connections() - before) / 2;
    let before = sshd.connections();
    let (ssh_ok, run) = t.both(files, "yes", jump);
    assert!(ssh_ok, "ssh connects through both hops");
    run.ok();
    // ssh: j1, j2 through j1, t through j2; bst the same three.
    assert_eq!(sshd.connections() - before, 2 * 3 * per, "ssh and bst each connect three times:\n{}", sshd.log());
    // A hop whose key is not known: both refuse; bst names the hop.
    let (ssh_ok, run) = t.both(files, "yes", "Host t\n  ProxyJump j1,j2\nHost j2\n  HostKeyAlias unknown-hop\n");
    assert!(!ssh_ok);
    let run = run.code(5).stderr_has("ProxyJump hop 2/2 `j2` (127.0.0.1:");
    assert!(run.stderr.contains("is not known"), "{}", run.stderr);
    // ProxyCommand: stdio is the transport (here ssh -W through j1, the classic form).
    let cfg_path = dir.path().join("ssh_config");
    let pc = format!("Host t\n  ProxyCommand ssh -F {} -W %h:%p j1\n", cfg_path.display());
    let before = sshd.connections();
    let (ssh_ok, run) = t.both(files, "yes", &pc);
    assert!(ssh_ok);
    run.ok();
    // Each: the ProxyCommand's own connection to j1, then t through it.
    assert_eq!(sshd.connections() - before, 2 * 2 * per, "bst went through the ProxyCommand as ssh did");
    // A ProxyCommand that fails is a connection error, never a silent direct connect.
    let before = sshd.connections();
    let (ssh_ok, run) = t.both(files, "yes", "Host t\n  ProxyCommand exit 3\n");
    assert!(!ssh_ok);
    run.code(5);
    assert_eq!(sshd.connections(), before, "nobody connected directly");
}

#[test]
fn verbose_names_unused_directives_once_per_connection() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let t = Trial { sshd: &sshd, dir: dir.path().to_path_buf() };
    let plain = format!("[127.0.0.1]:{} {}\n", sshd.port, sshd.host_key);
    let cfg = t.config("yes", "  ForwardAgent yes\n  SendEnv LANG\n");
    t.files(&plain, "", "");
    let toml = dir.path().join("targets.toml");
    std::fs::write(
        &toml,
        format!("[targets.t]\nhost = \"t\"\nbase = {}\nsource = {}\n", toml_str(&dir.path().join("base")), toml_str(dir.path())),
    )
    .unwrap();
    let env = [("BST_SSH_CONFIG", cfg.to_str().unwrap())];
    let c = cfg.display();
    // BatchMode too: bst still asks for a key passphrase on a terminal.
    let line = format!("bst: ssh config for t: not used by bst: BatchMode ({c}:10), ForwardAgent ({c}:11), SendEnv ({c}:12)");
    let run = bst_with(&toml, &["-v", "list", "t"], &env).ok();
    assert_eq!(run.stderr.matches(&line).count(), 1, "want `{line}` once in:\n{}", run.stderr);
    let quiet = bst_with(&toml, &["list", "t"], &env).ok();
    assert!(!quiet.stderr.contains("not used by bst"), "{}", quiet.stderr);
}
