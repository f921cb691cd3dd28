//! Issue 3: service control, health probes and health-gated deploys on a REAL systemd host:
//! a Debian container booted with systemd-nspawn (systemd as PID 1, sshd on a loopback port,
//! redis-server under systemd). One container per test run; each test uses its own unit,
//! port and base so they can run in parallel.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::harness::*;

pub struct Host {
    state: PathBuf,
    pub port: u16,
    pub redis_port: u16,
    pub key: PathBuf,
    pub known_hosts: PathBuf,
    _keys: tempfile::TempDir,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/systemd-host")
}

fn cache_dir() -> PathBuf {
    std::env::var_os("BST_TEST_CACHE").map_or_else(|| PathBuf::from("/var/cache/bst-test"), PathBuf::from)
}

static HOST: OnceLock<Host> = OnceLock::new();

extern "C" fn stop_host() {
    if let Some(h) = HOST.get() {
        let _ = Command::new(script()).arg("stop").arg(&h.state).status();
        let _ = std::fs::remove_dir_all(&h.state);
    }
}

/// Boots the container once for the whole test binary; stopped at process exit.
pub fn host() -> &'static Host {
    HOST.get_or_init(|| {
        assert!(unsafe { libc::geteuid() } == 0, "the systemd tests boot a container with systemd-nspawn and need root (CI runs as root)");
        let st = Command::new(script()).arg("rootfs").arg(cache_dir()).status().expect("scripts/systemd-host runs");
        assert!(st.success(), "building the container rootfs failed");
        let keys = tempfile::tempdir().unwrap();
        keygen(&keys.path().join("id"));
        let state = std::env::temp_dir().join(format!("bst-systemd-{}", std::process::id()));
        let (port, redis_port) = (free_port(), free_port());
        let st = Command::new(script())
            .arg("boot")
            .arg(cache_dir())
            .arg(&state)
            .arg(port.to_string())
            .arg(keys.path().join("id.pub"))
            .arg(keys.path().join("id"))
            .env("REDIS_PORT", redis_port.to_string())
            .status()
            .unwrap();
        assert!(st.success(), "the systemd container did not boot");
        // SAFETY: registering a plain extern "C" fn.
        unsafe { libc::atexit(stop_host) };
        let h = Host { known_hosts: state.join("known_hosts"), state, port, redis_port, key: keys.path().join("id"), _keys: keys };
        // A watchdog inside: the container never outlives a killed test run by long.
        h.ssh("systemd-run --on-active=1800 systemctl poweroff >/dev/null 2>&1 || true");
        h
    })
}

impl Host {
    pub fn ssh(&self, cmd: &str) -> String {
        let out = Command::new(script()).arg("ssh").arg(&self.state).arg(cmd).output().unwrap();
        assert!(out.status.success(), "`{cmd}` failed in the container: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A tiny zero-dependency Node app: `/health` answers `{"status":"ok"}` unless the release
/// ships a file named `UNHEALTHY`.
pub const SERVER_JS: &str = r#"const fs = require('fs');
const http = require('http');
const sick = fs.existsSync('UNHEALTHY');
http.createServer((req, res) => {
  if (req.url === '/health') {
    res.writeHead(sick ? 503 : 200, {'content-type': 'application/json'});
    res.end(JSON.stringify({status: sick ? 'down' : 'ok', release: process.cwd()}));
  } else { res.end('hello'); }
}).listen(Number(process.env.PORT), '127.0.0.1');
"#;

pub struct App {
    pub env: Env,
    pub ws: Workspace,
    pub port: u16,
    pub unit: String,
    pub base: String,
}

/// Installs a unit whose WorkingDirectory is `<base>/current` and writes a target config
/// with `app` and `redis` services.
pub fn app(name: &str, extra: &str) -> App {
    let h = host();
    let port = free_port();
    let unit = format!("bst-{name}.service");
    let base = format!("/srv/{name}");
    h.ssh(&format!(
        "printf '%s\\n' '[Unit]' 'Description=bst test app {name}' '[Service]' 'WorkingDirectory={base}/current' \
         'Environment=PORT={port}' 'ExecStart=/usr/bin/node server.js' > /etc/systemd/system/{unit} && systemctl daemon-reload"
    ));
    let ws = Workspace::new();
    ws.write("server.js", SERVER_JS);
    sh(ws.path(), "git add server.js && git -c user.name=t -c user.email=t@example.com commit -qm app");
    let env = Env::new(None, &ws, "");
    std::fs::write(
        &env.config,
        format!(
            "[targets.t]\nhost = \"127.0.0.1\"\nport = {}\nuser = \"root\"\nidentity_file = {}\nknown_hosts = {}\nbase = \"{base}\"\nsource = {}\n\
             restart = [\"app\"]\nhealth_timeout = \"8s\"\n{extra}\n\
             [targets.t.services.app]\nunit = \"{unit}\"\nhealth = {{ http = \"http://127.0.0.1:{port}/health\", status = 200, body_contains = \"\\\"status\\\":\\\"ok\\\"\" }}\n\
             [targets.t.services.redis]\nunit = \"redis-server.service\"\nhealth = {{ redis = \"127.0.0.1:{}\" }}\n",
            h.port,
            toml_str(&h.key),
            toml_str(&h.known_hosts),
            toml_str(ws.path()),
            h.redis_port
        ),
    )
    .unwrap();
    App { env, ws, port, unit, base }
}

impl App {
    pub fn bst(&self, args: &[&str]) -> Run {
        self.env.bst(args)
    }

    pub fn current_id(&self) -> String {
        host().ssh(&format!("readlink {}/current", self.base)).trim().trim_start_matches("releases/").to_string()
    }

    pub fn main_pid(&self) -> u32 {
        host().ssh(&format!("systemctl show -p MainPID --value {}", self.unit)).trim().parse().unwrap()
    }

    /// The app's /health as seen from this (host) side: the container shares our network.
    pub fn http_health(&self) -> Option<String> {
        get(self.port, "/health")
    }
}

pub fn get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn redis_ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
    let _ = s.write_all(b"PING\r\n");
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

#[test]
fn deploy_restarts_the_app_and_status_names_the_live_release() {
    let a = app("live", "");
    a.bst(&["deploy", "t"]).ok().stderr_has("healthy");
    let id = a.current_id();
    let body = a.http_health().expect("app answers");
    assert!(body.contains("\"status\":\"ok\"") && body.contains(&format!("/releases/{id}")), "{body}");
    // `app` only: the redis test may have redis stopped right now.
    let j = a.bst(&["t", "app", "status", "--json"]).ok().json();
    assert_eq!(j["ok"], true);
    let app = j["services"].as_array().unwrap().iter().find(|s| s["name"] == "app").unwrap().clone();
    assert_eq!(app["active_state"], "active");
    assert_eq!(app["release"], id.as_str(), "status must say which release is live");
    assert_eq!(app["main_pid"], a.main_pid());
    assert_eq!(app["health"]["healthy"], true);
    // A second deploy restarts onto the new release.
    a.ws.write("v2.txt", "2");
    a.bst(&["deploy", "t"]).ok();
    let id2 = a.current_id();
    assert_ne!(id, id2);
    assert!(a.http_health().unwrap().contains(&format!("/releases/{id2}")));
    // --no-restart leaves the process where it was.
    let pid = a.main_pid();
    a.bst(&["deploy", "t", "--no-restart"]).ok();
    assert_eq!(a.main_pid(), pid);
    let audit = host().ssh(&format!("cat {}/logs/deploys.jsonl", a.base));
    assert!(audit.contains("\"command\":\"restart\""), "{audit}");
}

#[test]
fn stop_start_restart_really_change_the_process_and_status_exit_codes() {
    let a = app("ctl", "");
    a.bst(&["deploy", "t"]).ok();
    let pid = a.main_pid();
    assert!(pid > 0);
    a.bst(&["t", "restart"]).ok();
    let pid2 = a.main_pid();
    assert!(pid2 > 0 && pid2 != pid, "restart did not replace the process");
    a.bst(&["t", "stop"]).ok();
    assert_eq!(a.main_pid(), 0);
    assert!(a.http_health().is_none(), "stopped app still answers");
    a.bst(&["t", "status"]).code(3).stderr_has("app inactive");
    a.bst(&["t", "app", "status", "--json"]).code(3);
    a.bst(&["t", "start"]).ok();
    assert!(a.main_pid() > 0);
    assert!(a.http_health().unwrap().contains("\"status\":\"ok\""));
    a.bst(&["t", "app", "status"]).ok();
    a.bst(&["t", "nosuch", "status"]).code(2).stderr_has("unknown service `nosuch`");
    a.bst(&["t", "app", "explode"]).code(2);
}

#[test]
fn redis_stop_status_start_with_ping() {
    let a = app("redis", "");
    let h = host();
    assert!(redis_ping(h.redis_port), "redis is up after boot");
    a.bst(&["t", "redis", "status"]).ok();
    a.bst(&["t", "redis", "stop"]).ok();
    assert!(!redis_ping(h.redis_port), "redis still answers after stop");
    let j = a.bst(&["t", "redis", "status", "--json"]).code(3).json();
    assert_eq!(j["services"][0]["active_state"], "inactive");
    a.bst(&["t", "redis", "start"]).ok();
    assert!(redis_ping(h.redis_port));
    let j = a.bst(&["t", "redis", "status", "--json"]).ok().json();
    assert_eq!(j["services"][0]["health"]["detail"].as_str().map(|d| d.ends_with("PONG")), Some(true));
}

#[test]
fn unhealthy_release_is_rolled_back_automatically() {
    let a = app("gate", "");
    a.bst(&["deploy", "t"]).ok();
    let good = a.current_id();
    a.ws.write("UNHEALTHY", "yes");
    let run = a.bst(&["deploy", "t"]).code(1).stderr_has("rolled back to").stderr_has("healthy again");
    assert_eq!(a.current_id(), good, "current must be back on the good release");
    let releases = host().ssh(&format!("ls {}/releases", a.base));
    let bad = releases.lines().find(|l| *l != good).expect("the bad release is kept for inspection").to_string();
    let meta = host().ssh(&format!("cat {}/releases/{bad}/.release-meta", a.base));
    assert!(meta.contains("\"status\":\"failed\""), "{meta}");
    let body = a.http_health().expect("app answers again");
    assert!(body.contains("\"status\":\"ok\"") && body.contains(&good), "{body}");
    assert!(run.stderr.contains(&bad));
    // A broken release never becomes a rollback target; the lock is free.
    a.bst(&["rollback", "t"]).code(1).stderr_has("nothing to roll back to");
    std::fs::remove_file(a.ws.path().join("UNHEALTHY")).unwrap();
    a.bst(&["deploy", "t"]).ok();
}

/// Issue 12, case 3: keep 2, deploy g1 and g2, roll back to g1, deploy an unhealthy g3. g1
/// was pruned by g3's deploy, and the gate then switched `current` to a directory that was
/// gone. Now nothing is pruned before the gate has passed, and g1 is never a candidate.
#[test]
fn an_unhealthy_deploy_after_a_rollback_switches_back_to_a_release_that_exists() {
    let a = app("prune-gate", "keep_releases = 2");
    a.bst(&["deploy", "t", "-q"]).ok();
    let g1 = a.current_id();
    a.ws.write("v.txt", "2");
    a.bst(&["deploy", "t", "-q"]).ok();
    a.bst(&["rollback", "t", "-q"]).ok();
    assert_eq!(a.current_id(), g1);
    a.ws.write("UNHEALTHY", "yes");
    a.bst(&["deploy", "t"]).code(1).stderr_has(&format!("rolled back to {g1}, which is healthy again"));
    assert_eq!(a.current_id(), g1);
    let meta = host().ssh(&format!("cat {}/releases/{g1}/.release-meta", a.base));
    assert!(meta.contains("\"status\":\"ok\""), "current names a release that is gone or not ok: {meta}");
    assert_eq!(host().ssh(&format!("ls {}/releases | wc -l", a.base)).trim(), "3", "pruned before the gate decided");
    let body = a.http_health().expect("app answers again");
    assert!(body.contains(&g1), "{body}");
    // A healthy deploy prunes once its gate has passed: the failed g3 goes; g1 (live before
    // this deploy) and g2 (the new release's rollback target) stay.
    let g3 = host().ssh(&format!("ls {}/releases | tail -n 1", a.base)).trim().to_string();
    std::fs::remove_file(a.ws.path().join("UNHEALTHY")).unwrap();
    let j = a.bst(&["deploy", "t", "--json"]).ok().json();
    assert_eq!(j["pruned"], serde_json::json!([g3]), "{j}");
    let left = host().ssh(&format!("ls {}/releases", a.base));
    assert!(left.contains(&g1) && !left.contains(&g3) && left.lines().count() == 3, "{left}");
}

#[test]
fn a_unit_that_fails_to_start_shows_its_journal() {
    let a = app("broken", "");
    a.bst(&["deploy", "t", "--no-restart"]).ok();
    host().ssh(&format!(
        "mkdir -p /etc/systemd/system/{u}.d && printf '%s\\n' '[Service]' 'ExecStart=' 'ExecStart=/bin/sh -c \"echo broken-unit-says-bye; exit 3\"' > /etc/systemd/system/{u}.d/override.conf && systemctl daemon-reload",
        u = a.unit
    ));
    let run = a.bst(&["t", "start"]);
    assert_ne!(run.code, 0, "a unit that exits at once is not started: {run:?}");
    assert!(run.stderr.contains("broken-unit-says-bye"), "journal lines missing:\n{}", run.stderr);
    let audit = host().ssh(&format!("tail -n 1 {}/logs/deploys.jsonl", a.base));
    assert!(audit.contains("\"command\":\"start\"") && audit.contains("\"result\":\"failed\""), "{audit}");
}

#[test]
fn rollback_drill_health_checks_both_releases() {
    let a = app("drill", "");
    a.bst(&["deploy", "t"]).ok();
    a.ws.write("v2.txt", "2");
    a.bst(&["deploy", "t"]).ok();
    let began = a.current_id();
    let reports = a.env.dir.path().join("reports");
    let run = a.bst(&["drill", "rollback", "t", "--reports", &reports.to_string_lossy()]).ok();
    assert_eq!(run.stdout.lines().last(), Some("ROLLBACK_DRILL_RESULT=PASS"));
    assert_eq!(a.current_id(), began);
    assert!(a.http_health().unwrap().contains(&began), "the app runs the release the drill began on");
    let health_steps = run.stderr.lines().filter(|l| l.contains("health on") && l.contains("healthy")).count();
    assert_eq!(health_steps, 2, "{}", run.stderr);
}

impl Host {
    /// The container's root file system as seen from this side. Reading `srv/NAME/...` there
    /// takes microseconds where `ssh` takes ~100 ms: fast enough to see the moment `current`
    /// moves, and the same files the container sees (it runs on this tmpfs).
    pub fn rootfs(&self) -> PathBuf {
        self.state.join("root")
    }
}

/// [`app`] with its own `health_timeout`: `extra` lands after the default one, and TOML
/// rejects a key given twice.
pub fn app_with(name: &str, health_timeout: &str, extra: &str) -> App {
    let a = app(name, extra);
    let cfg = std::fs::read_to_string(&a.env.config).unwrap();
    let default = "health_timeout = \"8s\"\n";
    assert!(cfg.contains(default), "app() no longer writes {default:?}: {cfg}");
    std::fs::write(&a.env.config, cfg.replacen(default, &format!("health_timeout = \"{health_timeout}\"\n"), 1)).unwrap();
    a
}
