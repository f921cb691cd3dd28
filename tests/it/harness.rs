//! Test harness: a real OpenSSH `sshd` on a free 127.0.0.1 port with throwaway host and user
//! keys (killed on drop), git workspaces, configs written per test, and a runner for the
//! built binary that checks status, stdout and stderr together.

#![allow(dead_code)]

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub fn sh(dir: &Path, script: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(script).current_dir(dir).output().expect("sh runs");
    assert!(out.status.success(), "`{script}` failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sshd_path() -> PathBuf {
    for p in ["/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("OpenSSH sshd not found: run scripts/setup (installs openssh-server)");
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn whoami() -> String {
    String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap().trim().to_string()
}

pub fn keygen(path: &Path) {
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "bst-test", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen runs")
        .success();
    assert!(ok, "ssh-keygen failed");
}

pub struct Sshd {
    child: Child,
    pub port: u16,
    pub dir: TempDir,
    pub user_key: PathBuf,
    pub known_hosts: PathBuf,
    /// `ssh-ed25519 AAAA…` of the host key.
    pub host_key: String,
}

impl Sshd {
    pub fn start() -> Sshd {
        Self::start_with("")
    }

    /// With extra sshd_config lines (e.g. a second `HostKey`, `LogLevel DEBUG1`).
    pub fn start_with(extra: &str) -> Sshd {
        let dir = tempfile::Builder::new().prefix("bst-sshd").tempdir().unwrap();
        let d = dir.path();
        keygen(&d.join("host_ed25519"));
        keygen(&d.join("id_ed25519"));
        std::fs::copy(d.join("id_ed25519.pub"), d.join("authorized_keys")).unwrap();
        let host_pub = std::fs::read_to_string(d.join("host_ed25519.pub")).unwrap();
        let host_key = host_pub.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
        // Builds run in the login shell named by $SHELL. /bin/sh keeps the tester's own dotfiles
        // out of the tests: a bash login that runs e.g. `pyenv rehash` and is killed by a
        // Ctrl-C test leaves pyenv's lock behind, stalling every later shell for a minute.
        // sshd wants its privilege separation directory even when not separating.
        let _ = std::fs::create_dir_all("/run/sshd");
        for _attempt in 0..5 {
            let port = free_port();
            let cfg = d.join("sshd_config");
            std::fs::write(
                &cfg,
                format!(
                    "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_ed25519\nPidFile {d}/sshd.pid\n\
                     AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin yes\nAllowTcpForwarding yes\n\
                     MaxStartups 100\nSetEnv SHELL=/bin/sh\n{extra}\nLogLevel VERBOSE\n",
                    d = d.display()
                ),
            )
            .unwrap();
            let log = std::fs::File::create(d.join("sshd.log")).unwrap();
            let mut child = Command::new(sshd_path())
                .args(["-D", "-e", "-f"])
                .arg(&cfg)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("sshd starts");
            if wait_for_banner(port, &mut child) {
                let known_hosts = d.join("known_hosts");
                std::fs::write(&known_hosts, format!("[127.0.0.1]:{port} {host_key}\n")).unwrap();
                return Sshd { child, port, user_key: d.join("id_ed25519"), known_hosts, host_key, dir };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("sshd did not start: {}", std::fs::read_to_string(d.join("sshd.log")).unwrap_or_default());
    }

    /// Authorises another user key (sshd reads the file at each login).
    pub fn authorize(&self, pubkey_file: &Path) {
        let key = std::fs::read_to_string(pubkey_file).unwrap();
        let path = self.dir.path().join("authorized_keys");
        let mut all = std::fs::read_to_string(&path).unwrap();
        all.push_str(&key);
        std::fs::write(path, all).unwrap();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// How many TCP connections sshd accepted so far (the harness's own banner probe included).
    pub fn connections(&self) -> usize {
        self.log().matches("Connection from").count()
    }
}

fn wait_for_banner(port: u16, child: &mut Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 7];
            if s.read_exact(&mut buf).is_ok() && &buf == b"SSH-2.0" {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    false
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A git workspace shaped like the team's monorepo, in miniature.
pub struct Workspace {
    pub dir: TempDir,
}

impl Workspace {
    pub fn new() -> Workspace {
        let dir = tempfile::Builder::new().prefix("bst-ws").tempdir().unwrap();
        sh(
            dir.path(),
            r#"git init -q . && (git checkout -q -b main 2>/dev/null || true)
printf 'node_modules/\nignored.txt\n.env\ndist/\n' > .gitignore
printf '{"name":"ws"}\n' > package.json
mkdir -p apps/api/src scripts
printf 'export const x = 1;\n' > apps/api/src/index.ts
printf '#!/bin/sh\necho hi\n' > scripts/run.sh && chmod +x scripts/run.sh
ln -s apps/api/src/index.ts entry.ts
echo ignored > ignored.txt
mkdir -p node_modules/pkg && echo junk > node_modules/pkg/index.js
printf 'LOCAL_ONLY=1\n' > .env
git add -A && git -c user.name=t -c user.email=t@example.com commit -qm init
echo 'not yet committed' > untracked.txt
"#,
        );
        Workspace { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, rel: &str, content: &str) {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    /// Commits everything, as a user does before deploying.
    pub fn commit(&self, msg: &str) {
        sh(self.path(), &format!("git add -A && git -c user.name=t -c user.email=t@example.com commit -qm {}", sh_quote(msg)));
    }
}

/// A scratch area for a test: the config file and the deploy base live here.
pub struct Env {
    pub dir: TempDir,
    pub config: PathBuf,
    pub base: PathBuf,
}

impl Env {
    /// `[targets.t]` pointing at `sshd` (or `local` with `None`), deploying `ws`.
    pub fn new(sshd: Option<&Sshd>, ws: &Workspace, extra: &str) -> Env {
        Self::with_base_name(sshd, ws, "srv/app", extra)
    }

    pub fn with_base_name(sshd: Option<&Sshd>, ws: &Workspace, base_name: &str, extra: &str) -> Env {
        let dir = tempfile::Builder::new().prefix("bst-env").tempdir().unwrap();
        let base = dir.path().join(base_name);
        let host = match sshd {
            Some(s) => format!(
                "host = \"127.0.0.1\"\nport = {}\nuser = \"{}\"\nidentity_file = {}\nknown_hosts = {}\n",
                s.port,
                whoami(),
                toml_str(&s.user_key),
                toml_str(&s.known_hosts)
            ),
            None => "host = \"local\"\n".to_string(),
        };
        let config = dir.path().join("targets.toml");
        std::fs::write(&config, format!("[targets.t]\n{host}base = {}\nsource = {}\n{extra}\n", toml_str(&base), toml_str(ws.path())))
            .unwrap();
        Env { dir, config, base }
    }

    pub fn bst(&self, args: &[&str]) -> Run {
        bst_with(&self.config, args, &[])
    }

    pub fn current(&self) -> Option<String> {
        std::fs::read_link(self.base.join("current")).ok().map(|p| p.to_string_lossy().into_owned())
    }

    pub fn current_id(&self) -> String {
        self.current().expect("current exists").strip_prefix("releases/").expect("relative link").to_string()
    }

    pub fn release_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_dir(self.base.join("releases"))
            .map(|rd| rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        ids.sort();
        ids
    }

    /// Waits for what a deploy leaves running on the server after bst returns (the cache job,
    /// the deletion of pruned releases), so the temp dir can really be removed.
    fn wait_background(&self) {
        self.wait_cache_job();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self.base.join(".bst-trash").exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Makes this client remember that storing beat compression on the link to the sshd on
    /// `port` (`bare`), or forget it: uploads there then travel as bare tar or as gzip. The
    /// file is what `snapshot::LinkMemo` keeps (`tests/it/delta.rs` checks it black-box).
    pub fn remember_bare_tar(&self, port: u16, bare: bool) {
        self.remember_bare_tar_for(&format!("{}@127.0.0.1:{port}", whoami()), bare);
    }

    /// [`remember_bare_tar`](Self::remember_bare_tar) for a host label (`local`).
    pub fn remember_bare_tar_for(&self, label: &str, bare: bool) {
        use sha2::Digest;
        let hash: String = sha2::Sha256::digest(label.as_bytes()).iter().take(16).map(|b| format!("{b:02x}")).collect();
        let file = self.dir.path().join("bst-cache").join(format!("link-{hash}"));
        if bare {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, format!("bst-link-2 0 0 {now}\n")).unwrap();
        } else {
            let _ = std::fs::remove_file(&file);
        }
    }

    /// Waits until the server-side cache job of the last deploy has ended (it runs after bst
    /// returns), for tests that inspect or tamper with `.bst-cache`.
    pub fn wait_cache_job(&self) {
        wait_cache_job_at(&self.base);
    }

    pub fn meta(&self, id: &str) -> serde_json::Value {
        let text = std::fs::read_to_string(self.base.join("releases").join(id).join(".release-meta")).unwrap();
        serde_json::from_str(&text).unwrap()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.wait_background();
        }
    }
}

/// [`Env::wait_cache_job`] for the target whose base is `base` (a second target of a test).
pub fn wait_cache_job_at(base: &Path) {
    let pid_file = base.join(".bst-cache/job.pid");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let alive = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| std::fs::read(format!("/proc/{}/cmdline", p.trim())).ok())
            .is_some_and(|c| String::from_utf8_lossy(&c).contains("bst-cache-job"));
        if !alive {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "cache job still running after 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn toml_str(p: &Path) -> String {
    let s = p.to_string_lossy();
    // A TOML basic string: escape `\` and `"`, control characters as \uXXXX.
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "expected success\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }

    #[track_caller]
    pub fn code(self, code: i32) -> Run {
        assert_eq!(self.code, code, "expected exit {code}\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }

    #[track_caller]
    pub fn stderr_has(self, needle: &str) -> Run {
        assert!(self.stderr.contains(needle), "stderr lacks {needle:?}:\n{}", self.stderr);
        self
    }

    #[track_caller]
    pub fn stdout_has(self, needle: &str) -> Run {
        assert!(self.stdout.contains(needle), "stdout lacks {needle:?}:\n{}", self.stdout);
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{}", self.stdout))
    }
}

impl From<std::process::Output> for Run {
    fn from(out: std::process::Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// The bst under test. BST_TEST_BIN runs the suite against another build, e.g. the commit
/// before a fix, to show that a new test fails without it.
pub fn bst_bin() -> PathBuf {
    std::env::var_os("BST_TEST_BIN").map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_bst")), PathBuf::from)
}

/// The environment every bst a test starts gets: nothing from the user's agent, ssh config
/// or shell.
fn hermetic(c: &mut Command) -> &mut Command {
    c.env_remove("SSH_AUTH_SOCK").env_remove("BST_CONFIG").env_remove("BST_SSH_PASSPHRASE").env("BST_SSH_CONFIG", "none")
}

/// Where the local hash cache of a test's bst lives: next to its config, not in the home.
fn cache_dir(config: &Path) -> PathBuf {
    config.parent().unwrap_or(Path::new(".")).join("bst-cache")
}

pub fn bst_cmd(config: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bst_bin());
    hermetic(&mut c).arg("--config").arg(config).args(args).env("BST_CACHE_DIR", cache_dir(config)).stdin(Stdio::null());
    c
}

/// bst run in `dir` with no `--config`: what a user typing `bst …` in a folder gets.
pub fn bst_in(dir: &Path, args: &[&str], stdin: Option<&str>) -> Run {
    use std::io::Write;
    let mut c = Command::new(bst_bin());
    hermetic(&mut c)
        .args(args)
        .current_dir(dir)
        // Not inside `dir`, which may be the workspace: a cache there would ship.
        .env("BST_CACHE_DIR", std::env::temp_dir().join(format!("bst-cache-{}", std::process::id())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap().into()
}

pub fn bst_with(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut c = bst_cmd(config, args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("bst runs").into()
}

/// `sh -c` quoting.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// `bst --config <config> <args><redirect>` on a pseudo-terminal (util-linux `script`), as a
/// person at a terminal runs it, with colour allowed (`NO_COLOR` in `env` turns it off):
/// the exit code and what the terminal showed, `\r\n` made `\n`.
pub fn on_tty(config: &Path, args: &[&str], env: &[(&str, &str)], redirect: &str) -> (i32, String) {
    let mut line = vec![sh_quote(&bst_bin().to_string_lossy()), "--config".into(), sh_quote(&config.to_string_lossy())];
    line.extend(args.iter().map(|a| sh_quote(a)));
    let line = format!("{}{redirect}", line.join(" "));
    let mut c = Command::new("script");
    hermetic(&mut c)
        .args(["-qec", &line, "/dev/null"])
        .env_remove("NO_COLOR")
        .env_remove("CI")
        .env("TERM", "xterm")
        .env("BST_CACHE_DIR", cache_dir(config))
        .stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("script (util-linux) runs");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n"))
}

/// Every file and link under a release, `/`-separated, sorted; bst's own `.release-meta`
/// left out.
pub fn release_files(release: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![release.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(release).unwrap().to_string_lossy().into_owned();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else if rel != ".release-meta" {
                out.push(rel);
            }
        }
    }
    out.sort();
    out
}

/// A loopback TCP proxy in front of sshd: cuts the connection after `cut_after` bytes from
/// the client (exactly that many are forwarded), or throttles client→server traffic to
/// `bytes_per_sec`, or stops forwarding the server's replies once the client has sent
/// `freeze_after` bytes (the client then waits for an answer that never comes), or cuts
/// whatever is open when asked ([`cut_open`](Self::cut_open)).
pub struct Proxy {
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    refuse: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: OpenConns,
    sent: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
}

/// Each proxied connection's id and both of its sockets, while it is open.
type OpenConns = std::sync::Arc<std::sync::Mutex<Vec<(u64, TcpStream, TcpStream)>>>;

#[derive(Clone, Copy, Default)]
struct Faults {
    cut_after: Option<u64>,
    bytes_per_sec: Option<u64>,
    idle: Option<Duration>,
    freeze_after: Option<u64>,
}

impl Proxy {
    pub fn start(upstream: u16, cut_after: Option<u64>, bytes_per_sec: Option<u64>) -> Proxy {
        Self::start_full(upstream, Faults { cut_after, bytes_per_sec, ..Faults::default() })
    }

    /// Cuts a connection when the client sends nothing for `idle` (a NAT or firewall that
    /// forgets quiet flows): only keepalives keep a long silent build alive through it.
    pub fn start_idle(upstream: u16, idle: Duration) -> Proxy {
        Self::start_full(upstream, Faults { idle: Some(idle), ..Faults::default() })
    }

    /// Forwards everything the client sends, but none of the server's replies once the
    /// client has sent more than `after` bytes on that connection: the server finishes what
    /// it was sent while the client waits, until the test cuts the connection.
    pub fn start_freezing(upstream: u16, after: u64) -> Proxy {
        Self::start_full(upstream, Faults { freeze_after: Some(after), ..Faults::default() })
    }

    fn start_full(upstream: u16, f: Faults) -> Proxy {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::Arc;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        if f.bytes_per_sec.is_some() {
            // A slow link's buffer is small; the kernel's default receive buffer here would
            // acknowledge megabytes the link has not carried yet (accepted sockets inherit it).
            let size: libc::c_int = 64 * 1024;
            // SAFETY: a valid socket and an int option of the size given.
            let r = unsafe {
                libc::setsockopt(
                    std::os::unix::io::AsRawFd::as_raw_fd(&listener),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUF,
                    (&raw const size).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(r, 0);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let refuse = Arc::new(AtomicBool::new(false));
        let (stop2, refuse2) = (stop.clone(), refuse.clone());
        let open: OpenConns = Arc::default();
        let open2 = open.clone();
        let sent: Arc<std::sync::Mutex<Vec<u64>>> = Arc::default();
        let sent2 = sent.clone();
        std::thread::spawn(move || {
            let mut next_id = 0u64;
            while !stop2.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                if refuse2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                client.set_nonblocking(false).unwrap();
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { continue };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let id = next_id;
                next_id += 1;
                open2.lock().unwrap().push((id, client.try_clone().unwrap(), server.try_clone().unwrap()));
                let open3 = open2.clone();
                let slot = {
                    let mut v = sent2.lock().unwrap();
                    v.push(0);
                    v.len() - 1
                };
                let sent3 = sent2.clone();
                let total = Arc::new(AtomicU64::new(0));
                let total2 = total.clone();
                // server -> client: plain copy, or nothing once frozen.
                std::thread::spawn(move || {
                    let (mut s, mut c) = (s2, c2);
                    let mut buf = [0u8; 16 * 1024];
                    loop {
                        let n = match std::io::Read::read(&mut s, &mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if f.freeze_after.is_some_and(|after| total2.load(Ordering::SeqCst) > after) {
                            continue;
                        }
                        if std::io::Write::write_all(&mut c, &buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = c.shutdown(std::net::Shutdown::Both);
                });
                // client -> server: counted, cut or throttled.
                std::thread::spawn(move || {
                    let (mut c, mut s) = (client, server);
                    let _ = c.set_read_timeout(f.idle);
                    let mut buf = [0u8; 16 * 1024];
                    let started = Instant::now();
                    let mut link_clock = 0.0f64;
                    loop {
                        let n = match std::io::Read::read(&mut c, &mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let before = total.load(Ordering::SeqCst);
                        let n = match f.cut_after {
                            Some(cut) if before + n as u64 > cut => (cut - before) as usize,
                            _ => n,
                        };
                        if std::io::Write::write_all(&mut s, &buf[..n]).is_err() {
                            break;
                        }
                        let now = total.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
                        sent3.lock().unwrap()[slot] = now;
                        if f.cut_after.is_some_and(|cut| now >= cut) {
                            break;
                        }
                        if let Some(rate) = f.bytes_per_sec {
                            // A link does not bank the time it sat idle: at most 64 KiB
                            // (a router's buffer) goes through at once after a pause.
                            let elapsed = started.elapsed().as_secs_f64();
                            link_clock = link_clock.max(elapsed - 65536.0 / rate as f64) + n as f64 / rate as f64;
                            if link_clock > elapsed {
                                std::thread::sleep(Duration::from_secs_f64(link_clock - elapsed));
                            }
                        }
                    }
                    let _ = c.shutdown(std::net::Shutdown::Both);
                    let _ = s.shutdown(std::net::Shutdown::Both);
                    // The entry's clones would keep both fds open after the pumps end.
                    open3.lock().unwrap().retain(|(i, _, _)| *i != id);
                });
            }
        });
        Proxy { port, stop, refuse, open, sent }
    }

    /// Cuts every connection open now, both ends (a NAT or VPN that drops its flows), and goes
    /// on accepting: a client that reconnects gets through. How many it cut.
    pub fn cut_open(&self) -> usize {
        let open = std::mem::take(&mut *self.open.lock().unwrap());
        for (_, client, server) in &open {
            let _ = client.shutdown(std::net::Shutdown::Both);
            let _ = server.shutdown(std::net::Shutdown::Both);
        }
        open.len()
    }

    /// From now on, new connections are closed as soon as they are accepted (the server is
    /// unreachable); open ones are left alone.
    pub fn refuse_new(&self) {
        self.refuse.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Bytes the client sent on each connection so far, in the order they were accepted.
    pub fn client_bytes(&self) -> Vec<u64> {
        self.sent.lock().unwrap().clone()
    }

    /// A copy of `config` that reaches the sshd on `sshd` through this proxy (its host key
    /// recorded for the proxy's port too).
    pub fn config_for(&self, sshd: &Sshd, config: &Path, name: &str) -> PathBuf {
        std::fs::write(
            &sshd.known_hosts,
            format!("[127.0.0.1]:{} {}\n[127.0.0.1]:{} {}\n", sshd.port, sshd.host_key, self.port, sshd.host_key),
        )
        .unwrap();
        let via = std::fs::read_to_string(config).unwrap().replace(&format!("port = {}", sshd.port), &format!("port = {}", self.port));
        let path = config.with_file_name(name);
        std::fs::write(&path, via).unwrap();
        path
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The owner record of a lock left by a dead process on this machine, in this boot: what bst
/// breaks on its own. The machine id is recorded as bst records it (a keyed hash); pid
/// 4194304 is above Linux's pid_max, certainly not running.
pub fn dead_local_owner(user: &str) -> String {
    use sha2::Digest;
    let read = |p: &str| std::fs::read_to_string(p).unwrap().trim().to_string();
    let machine: String = sha2::Sha256::digest(format!("bst-lock-owner:{}", read("/etc/machine-id")).as_bytes())
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect();
    serde_json::json!({"user": user, "host": read("/proc/sys/kernel/hostname"), "pid": 4_194_304u32, "command": "deploy",
        "started": "2026-01-01T00:00:00Z", "token": format!("bst-dead-{user}"), "machine_id": machine,
        "boot_id": read("/proc/sys/kernel/random/boot_id"), "pid_start": "1"})
    .to_string()
}

/// Incompressible bytes, deterministic per seed.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
