//! The server's watchdog under fire: a seeded fault-injection suite on the real systemd
//! container. Each trial starts a switch that a health gate must confirm (a gated deploy, an
//! unhealthy deploy that rolls back, a rollback drill), waits for `current` to move, and at a
//! random moment before the gate ends signals bst (INT, TERM, HUP, KILL), cuts its SSH
//! connections, or makes the release being probed hang or answer garbage on /health. Whatever
//! happened, once the lock is gone the server must agree with itself: `current` on the
//! release live before unless the gate confirmed the new one, statuses, the audit log and
//! the drill's evidence saying the same, the services running that release, and bst's exit
//! code telling the truth.
//!
//! Knobs: `BST_FAULT_TRIALS` (30 per action), `BST_FAULT_SEED` (printed; decimal or 0x hex),
//! `BST_FAULT_ONLY=N` (only trial N: each trial's fault and moment depend on the seed, the
//! action and N alone; the server's own timing does not replay), `BST_FAULT_CONFIRM_MARGIN`
//! ("2s"; "none" leaves it and `settle` out, to run the trials against a build without a
//! watchdog, with `BST_TEST_BIN`), `BST_FAULT_VERBOSE` (every run's timeline, not only a
//! failing one's).

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;
use crate::systemd::{app_with, get, host, App};

/// Short, so that 30 trials per action fit in CI: a gate that cannot confirm ends in seconds.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a restarted unit must stay up before the gate passes; every gate waits it out,
/// so the default (3 s) would make each trial seconds longer.
const SETTLE: Duration = Duration::from_secs(1);
/// bst's own, for a config that leaves `settle` out.
const DEFAULT_SETTLE: Duration = Duration::from_secs(3);
/// Past the watchdog's deadline: restarting the services and answering again take time too.
const SLACK: Duration = Duration::from_secs(15);
/// A confirmation may already be on its way to the server when a signal lands (one round
/// trip, slow under load); one that comes later means the client carried on.
const GRACE: Duration = Duration::from_millis(500);
/// After INT, TERM or HUP the client has the server switch back at once, well before the
/// watchdog's own deadline.
const PROMPT: Duration = Duration::from_secs(4);

/// The systemd tests' node app, plus probe faults that a test switches on from outside while
/// a release runs: a file `HANG` or `GARBAGE` in the release, read at each request (not once
/// at start like `UNHEALTHY`).
const SERVER_JS: &str = r#"const fs = require('fs');
const http = require('http');
const sick = fs.existsSync('UNHEALTHY');
http.createServer((req, res) => {
  if (req.url === '/health') {
    if (fs.existsSync('HANG')) return;
    if (fs.existsSync('GARBAGE')) {
      const raw = fs.readFileSync('GARBAGE', 'utf8').startsWith('raw');
      req.socket.end(raw ? '\u0000\u00ffnot http at all\r\n\r\n'
        : 'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 64\r\n\r\n{"status":"o');
      return;
    }
    res.writeHead(sick ? 503 : 200, {'content-type': 'application/json'});
    res.end(JSON.stringify({status: sick ? 'down' : 'ok', release: process.cwd()}));
  } else { res.end('hello'); }
}).listen(Number(process.env.PORT), '127.0.0.1');
"#;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Action {
    Deploy,
    Unhealthy,
    Drill,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Deploy => "gated deploy",
            Action::Unhealthy => "unhealthy deploy",
            Action::Drill => "rollback drill",
        }
    }

    /// App, unit and base name: the suite's three tests run side by side.
    fn app(self) -> &'static str {
        match self {
            Action::Deploy => "wdf-deploy",
            Action::Unhealthy => "wdf-sick",
            Action::Drill => "wdf-drill",
        }
    }

    fn test_name(self) -> &'static str {
        match self {
            Action::Deploy => "gated_deploy_under_faults_ends_on_a_confirmed_or_the_previous_release",
            Action::Unhealthy => "deploy_of_an_unhealthy_release_under_faults_always_ends_on_the_previous_release",
            Action::Drill => "drill_rollback_under_faults_always_ends_where_it_began",
        }
    }

    /// Health waits the watchdog's deadline covers: the drill checks two releases.
    fn gates(self) -> u32 {
        if self == Action::Drill {
            2
        } else {
            1
        }
    }

    fn stream(self) -> u64 {
        (self as u64 + 1) << 56
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    /// The calibration run.
    None,
    Signal(i32),
    Cut,
    Hang,
    Garbage {
        raw: bool,
    },
}

const FAULTS: [Fault; 7] = [
    Fault::Signal(libc::SIGINT),
    Fault::Signal(libc::SIGTERM),
    Fault::Signal(libc::SIGHUP),
    Fault::Signal(libc::SIGKILL),
    Fault::Cut,
    Fault::Hang,
    Fault::Garbage { raw: false },
];

impl Fault {
    /// The signals bst must turn into "switch back now".
    fn handled(self) -> bool {
        matches!(self, Fault::Signal(s) if s != libc::SIGKILL)
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::None => write!(f, "no fault"),
            Fault::Signal(s) => write!(f, "{}", sig_name(*s)),
            Fault::Cut => write!(f, "SSH connections cut"),
            Fault::Hang => write!(f, "/health hangs"),
            Fault::Garbage { raw: true } => write!(f, "/health answers non-HTTP garbage"),
            Fault::Garbage { raw: false } => write!(f, "/health closes mid-body"),
        }
    }
}

fn sig_name(s: i32) -> String {
    match s {
        libc::SIGINT => "SIGINT".into(),
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGHUP => "SIGHUP".into(),
        libc::SIGKILL => "SIGKILL".into(),
        n => format!("signal {n}"),
    }
}

/// xorshift64, as `noise` in harness.rs, seeded per stream through splitmix64's finaliser so
/// that neighbouring streams (trial n, n+1) start far apart.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, stream: u64) -> Rng {
        let mut z = seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Trial `n`'s fault and its moment (per mille of the window). Every fault once per seven
/// trials, in a seeded order: 30 trials cover each at least four times.
fn plan(seed: u64, action: Action, n: u32) -> (Fault, u64) {
    let cycle = u64::from(n) / FAULTS.len() as u64;
    let mut order: Vec<usize> = (0..FAULTS.len()).collect();
    let mut r = Rng::new(seed, action.stream() | (1 << 40) | cycle);
    for i in (1..order.len()).rev() {
        order.swap(i, r.below(i as u64 + 1) as usize);
    }
    let mut r = Rng::new(seed, action.stream() | u64::from(n));
    let fault = match FAULTS[order[n as usize % FAULTS.len()]] {
        Fault::Garbage { .. } => Fault::Garbage { raw: r.below(2) == 1 },
        f => f,
    };
    (fault, r.below(1000))
}

struct Knobs {
    seed: u64,
    trials: u32,
    only: Option<u32>,
    /// `confirm_margin` as written in the config; `None`: left out, and `settle` too.
    margin: Option<String>,
    /// What the watchdog waits after the health wait(s): the margin, or its default.
    margin_dur: Duration,
    settle: Duration,
}

fn env_num(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let n = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(&hex.replace('_', ""), 16),
        None => v.replace('_', "").parse(),
    };
    Some(n.unwrap_or_else(|e| panic!("{name}={v}: not a number ({e})")))
}

fn parse_duration(s: &str) -> Duration {
    let num = |d: &str| d.parse::<u64>().unwrap_or_else(|e| panic!("duration {s:?}: {e}"));
    if let Some(ms) = s.strip_suffix("ms") {
        Duration::from_millis(num(ms))
    } else if let Some(secs) = s.strip_suffix('s') {
        Duration::from_secs(num(secs))
    } else if let Some(min) = s.strip_suffix('m') {
        Duration::from_secs(60 * num(min))
    } else {
        panic!("duration {s:?}: use e.g. 2s, 500ms, 1m")
    }
}

impl Knobs {
    fn from_env() -> Knobs {
        let margin = match std::env::var("BST_FAULT_CONFIRM_MARGIN") {
            Ok(m) if m == "none" => None,
            Ok(m) => Some(m),
            Err(_) => Some("2s".to_string()),
        };
        let margin_dur = margin.as_deref().map_or(Duration::from_secs(30), parse_duration);
        let settle = if margin.is_some() { SETTLE } else { DEFAULT_SETTLE };
        Knobs {
            seed: env_num("BST_FAULT_SEED").unwrap_or(0x0b57_3a7c_d065_eed5),
            trials: env_num("BST_FAULT_TRIALS").map_or(30, |n| u32::try_from(n).expect("BST_FAULT_TRIALS fits in u32")),
            only: env_num("BST_FAULT_ONLY").map(|n| u32::try_from(n).expect("BST_FAULT_ONLY fits in u32")),
            margin,
            margin_dur,
            settle,
        }
    }
}

#[derive(Clone, Debug)]
enum Ev {
    Current(Option<String>),
    Lock(bool),
    Audit(String),
    Stdout(String),
    Stderr(String),
    /// What the suite did or saw happen to the child.
    Did(String),
}

/// One trial in order: the server as read from the container's root file system, bst's
/// output, and the suite's own moves, each at its time since the child was spawned.
#[derive(Clone)]
struct Timeline {
    t0: Instant,
    evs: Arc<Mutex<Vec<(Duration, Ev)>>>,
}

impl Timeline {
    fn new() -> Timeline {
        Timeline { t0: Instant::now(), evs: Arc::default() }
    }

    fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    fn push(&self, ev: Ev) {
        let at = self.now();
        self.evs.lock().unwrap().push((at, ev));
    }

    fn find<T>(&self, f: impl Fn(&Ev) -> Option<T>) -> Option<(Duration, T)> {
        self.evs.lock().unwrap().iter().find_map(|(at, e)| f(e).map(|t| (*at, t)))
    }

    fn all(&self) -> Vec<(Duration, Ev)> {
        self.evs.lock().unwrap().clone()
    }

    fn stderr(&self) -> String {
        self.all().into_iter().filter_map(|(_, e)| if let Ev::Stderr(l) = e { Some(l + "\n") } else { None }).collect()
    }

    fn render(&self) -> String {
        let mut out = String::new();
        for (at, e) in self.all() {
            let what = match e {
                Ev::Current(c) => format!("current -> {}", c.as_deref().unwrap_or("(none)")),
                Ev::Lock(held) => format!("lock {}", if held { "held" } else { "free" }),
                Ev::Audit(l) => format!("audit {l}"),
                Ev::Stdout(l) => format!("stdout {l}"),
                Ev::Stderr(l) => format!("stderr {l}"),
                Ev::Did(d) => format!(">>> {d}"),
            };
            out.push_str(&format!("  +{:>6} ms  {what}\n", at.as_millis()));
        }
        out
    }
}

fn read_current(root: &Path) -> Option<String> {
    let link = std::fs::read_link(root.join("current")).ok()?;
    let link = link.to_string_lossy();
    Some(link.strip_prefix("releases/").unwrap_or(&link).trim_end_matches('/').to_string())
}

fn log_len(root: &Path) -> u64 {
    std::fs::metadata(root.join("logs/deploys.jsonl")).map_or(0, |m| m.len())
}

/// Polls `current`, the lock and the audit log every few ms into the timeline: a switch and
/// its way back can be a second apart, the gate's verdict a few ms before a signal.
struct Watcher {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    fn start(root: &Path, tl: &Timeline) -> Watcher {
        let root = root.to_path_buf();
        let tl = tl.clone();
        let mut offset = log_len(&root);
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut cur, mut lock) = (None, None);
            loop {
                // One more round after the stop: the last change is seen too.
                let last_round = stop2.load(Ordering::SeqCst);
                let c = Some(read_current(&root));
                if c != cur {
                    tl.push(Ev::Current(c.clone().flatten()));
                    cur = c;
                }
                let l = Some(root.join(".bst-lock").exists());
                if l != lock {
                    tl.push(Ev::Lock(l == Some(true)));
                    lock = l;
                }
                if let Ok(mut f) = std::fs::File::open(root.join("logs/deploys.jsonl")) {
                    let mut buf = Vec::new();
                    if f.seek(SeekFrom::Start(offset)).is_ok() && f.read_to_end(&mut buf).is_ok() {
                        if let Some(end) = buf.iter().rposition(|&b| b == b'\n') {
                            for line in buf[..end].split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                                tl.push(Ev::Audit(String::from_utf8_lossy(line).into_owned()));
                            }
                            offset += end as u64 + 1;
                        }
                    }
                }
                if last_round {
                    return;
                }
                std::thread::sleep(Duration::from_millis(4));
            }
        });
        Watcher { stop, thread: Some(thread) }
    }

    fn finish(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn pipe(r: impl Read + Send + 'static, tl: &Timeline, stderr: bool) -> JoinHandle<()> {
    let tl = tl.clone();
    std::thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut line = Vec::new();
        while r.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
            let text = String::from_utf8_lossy(&line).trim_end().to_string();
            tl.push(if stderr { Ev::Stderr(text) } else { Ev::Stdout(text) });
            line.clear();
        }
    })
}

/// The child under test, never left behind: a trial that panics half-way kills it.
struct Bst(Child);

impl Drop for Bst {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn describe(st: Option<ExitStatus>) -> String {
    match st {
        None => "still running".into(),
        Some(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exit {c}"),
            (None, Some(sig)) => format!("killed by {}", sig_name(sig)),
            _ => format!("{s}"),
        },
    }
}

/// The health gate's verdict that `id` is healthy: what confirms a gated deploy once nothing
/// follows it. Not the `deploy` line, which the switch writes before the gate has run.
fn gate_passed(l: &Value, id: &str) -> bool {
    l["command"] == "restart" && l["result"] == "ok" && l["release"] == id
}

fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(json_files(&p));
        } else if p.extension().is_some_and(|x| x == "json") {
            out.push(p);
        }
    }
    out
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("({}: {e})\n", path.display()));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].iter().map(|l| format!("  {l}\n")).collect()
}

/// What one run of the action did, and what is wrong with the server afterwards.
struct Outcome {
    label: String,
    fault: Fault,
    /// What applying it came to ("cut 2 open connection(s)", "SIGINT not sent: ...").
    did: String,
    delay: Option<Duration>,
    window: Duration,
    before: String,
    /// What `current` switched to: the new release, or the drill's rollback target.
    new: Option<String>,
    switch_at: Option<Duration>,
    /// When the fault was applied (None: not applied, e.g. bst had already exited).
    fault_at: Option<Duration>,
    status: Option<ExitStatus>,
    exit_at: Option<Duration>,
    current: Option<String>,
    violations: Vec<String>,
    tl: Timeline,
    took: Duration,
}

struct Suite {
    action: Action,
    knobs: Knobs,
    app: App,
    proxy: Proxy,
    /// The target config through the proxy: every bst of the suite connects through it.
    config: PathBuf,
    /// `<rootfs>/srv/NAME`: the target's base as this side sees it.
    root: PathBuf,
    /// `current` and the audit log's length when the suite last looked, and until when a
    /// watchdog armed by the last trial could still act: nothing may change them between
    /// trials.
    last_seen: (Option<String>, u64, Instant),
}

impl Suite {
    fn new(action: Action, knobs: Knobs) -> Suite {
        let h = host();
        let extra =
            knobs.margin.as_ref().map_or(String::new(), |m| format!("confirm_margin = \"{m}\"\nsettle = \"{}s\"", SETTLE.as_secs()));
        let app = app_with(action.app(), &format!("{}s", HEALTH_TIMEOUT.as_secs()), &extra);
        // Trials restart the app every second or two; systemd's default limit (5 starts in
        // 10 s) would fail the unit and every trial after it.
        h.ssh(&format!(
            "mkdir -p /etc/systemd/system/{u}.d && printf '[Unit]\\nStartLimitIntervalSec=0\\n' > /etc/systemd/system/{u}.d/no-start-limit.conf && systemctl daemon-reload",
            u = app.unit
        ));
        app.ws.write("server.js", SERVER_JS);
        sh(app.ws.path(), "git add server.js && git -c user.name=t -c user.email=t@example.com commit -qm 'probe faults'");
        let proxy = Proxy::start(h.port, None, None);
        let config = proxy_config(&app, proxy.port);
        let root = h.rootfs().join(app.base.trim_start_matches('/'));
        let mut s = Suite { action, knobs, app, proxy, config, root, last_seen: (None, 0, Instant::now()) };
        // Two ok releases: the deploys roll back to one, the drill to the other.
        s.deploy_ok("setup");
        s.deploy_ok("setup");
        if action == Action::Unhealthy {
            s.app.ws.write("UNHEALTHY", "yes");
        }
        s
    }

    fn deploy_ok(&mut self, why: &str) {
        self.app.ws.write("v.txt", &format!("{why} {:?}\n", Instant::now()));
        let run = bst_with(&self.config, &["deploy", "t", "-q"], &[]);
        if run.code != 0 && run.stderr.contains("unknown field") && (run.stderr.contains("confirm_margin") || run.stderr.contains("settle"))
        {
            panic!(
                "the target config's `confirm_margin` or `settle` was refused: this bst has no watchdog yet \
                 (BST_FAULT_CONFIRM_MARGIN=none runs the trials without them)\n{}",
                run.stderr
            );
        }
        assert_eq!(run.code, 0, "{why}: a healthy deploy failed:\n{}", run.stderr);
        self.look(Instant::now());
    }

    fn look(&mut self, quiet_from: Instant) {
        self.last_seen = (read_current(&self.root), log_len(&self.root), quiet_from);
    }

    /// What changed since the last [`look`](Self::look): `current` or the audit log.
    fn changed_since_look(&self) -> Option<String> {
        let (cur, len, _) = &self.last_seen;
        let now = read_current(&self.root);
        let now_len = log_len(&self.root);
        if now == *cur && now_len == *len {
            return None;
        }
        let log = std::fs::read(self.root.join("logs/deploys.jsonl")).unwrap_or_default();
        let new_lines = String::from_utf8_lossy(log.get(*len as usize..).unwrap_or_default()).into_owned();
        Some(format!("current {cur:?} -> {now:?}; audit lines appended:\n{new_lines}"))
    }

    /// When an armed watchdog acts unless confirmed, counted from the switch.
    fn deadline(&self) -> Duration {
        (HEALTH_TIMEOUT + self.knobs.settle) * self.action.gates() + self.knobs.margin_dur
    }

    fn meta_status(&self, id: &str) -> String {
        let text = std::fs::read_to_string(self.root.join("releases").join(id).join(".release-meta"));
        match text.map(|t| serde_json::from_str::<Value>(&t)) {
            Ok(Ok(m)) => m["status"].as_str().unwrap_or("(no status)").to_string(),
            Ok(Err(e)) => format!("(unreadable meta: {e})"),
            Err(e) => format!("(no meta: {e})"),
        }
    }

    /// The drill needs an ok release older than `current`; a trial may have marked its
    /// rollback target failed (a probe fault made it unhealthy).
    fn ensure_rollback_target(&mut self) {
        let Some(cur) = read_current(&self.root) else { return };
        let mut ids: Vec<String> =
            std::fs::read_dir(self.root.join("releases")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        ids.sort();
        if !ids.iter().any(|id| *id < cur && self.meta_status(id) == "ok") {
            eprintln!("watchdog {}: no ok release older than {cur} left; deploying two", self.action.name());
            self.deploy_ok("top-up");
            self.deploy_ok("top-up");
        }
    }

    fn run(&mut self, label: &str, fault: Fault, permille: u64, window: Duration) -> Outcome {
        let tl = Timeline::new();
        let mut violations = Vec::new();
        if let Some(change) = self.changed_since_look() {
            violations.push(format!("the server changed after the previous run had ended (a late watchdog?): {change}"));
        }
        let before = read_current(&self.root).expect("current exists before the trial");
        let reports = self.app.env.dir.path().join("reports").join(label.replace(' ', "-"));
        let reports_arg = reports.to_string_lossy().into_owned();
        let args: Vec<&str> = match self.action {
            Action::Drill => vec!["drill", "rollback", "t", "--reports", &reports_arg],
            _ => vec!["deploy", "t"],
        };
        if self.action == Action::Deploy {
            // Each release its own content, like real ones.
            self.app.ws.write("v.txt", &format!("{label}\n"));
        }
        let watcher = Watcher::start(&self.root, &tl);
        let mut bst = Bst(bst_cmd(&self.config, &args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("bst starts"));
        let child = &mut bst.0;
        let readers = [pipe(child.stdout.take().unwrap(), &tl, false), pipe(child.stderr.take().unwrap(), &tl, true)];
        let moved = |tl: &Timeline| tl.find(|e| if let Ev::Current(Some(c)) = e { (*c != before).then(|| c.clone()) } else { None });

        let mut status = None;
        let switched = loop {
            if let Some(s) = moved(&tl) {
                break Some(s);
            }
            if status.is_none() {
                status = child.try_wait().unwrap();
            } else {
                // bst is gone: give the watcher one more look before calling it a no-switch.
                std::thread::sleep(Duration::from_millis(30));
                break moved(&tl);
            }
            if tl.now() > Duration::from_secs(60) {
                break None;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let (switch_at, new) = match switched {
            Some((at, id)) => (Some(at), Some(id)),
            None => {
                violations.push(format!("current never moved from {before} ({})", describe(status)));
                (None, None)
            }
        };

        let delay = switch_at.map(|_| window * u32::try_from(permille).unwrap() / 1000);
        let mut fault_at = None;
        let mut did = String::new();
        let mut injected: Option<PathBuf> = None;
        if let (Some(at), Some(d)) = (switch_at, delay) {
            if fault != Fault::None {
                if let Some(wait) = (at + d).checked_sub(tl.now()) {
                    std::thread::sleep(wait);
                }
                if status.is_none() {
                    status = child.try_wait().unwrap();
                }
                match fault {
                    Fault::Signal(sig) if status.is_none() => {
                        // SAFETY: signalling our own child, not yet reaped (its pid is still ours).
                        unsafe { libc::kill(child.id() as i32, sig) };
                        fault_at = Some(tl.now());
                        did = format!("sent {}", sig_name(sig));
                    }
                    Fault::Signal(sig) => did = format!("{} not sent: bst had exited", sig_name(sig)),
                    Fault::Cut => {
                        let n = self.proxy.cut_open();
                        if n > 0 {
                            fault_at = Some(tl.now());
                        }
                        did = format!("cut {n} open connection(s)");
                    }
                    Fault::Hang | Fault::Garbage { .. } => {
                        // The release being probed now: the new one, or the one the drill is on.
                        let id = if self.action == Action::Drill { read_current(&self.root) } else { new.clone() };
                        if let Some(id) = id {
                            let (file, text) = match fault {
                                Fault::Hang => ("HANG", ""),
                                Fault::Garbage { raw: true } => ("GARBAGE", "raw"),
                                _ => ("GARBAGE", "midbody"),
                            };
                            let path = self.root.join("releases").join(&id).join(file);
                            std::fs::write(&path, text).unwrap();
                            injected = Some(path);
                            fault_at = Some(tl.now());
                            did = format!("{fault} from now on, in {id}");
                        }
                    }
                    Fault::None => unreachable!(),
                }
                tl.push(Ev::Did(did.clone()));
            }
        }

        let from = fault_at.or(switch_at).unwrap_or_else(|| tl.now());
        let bound = from + self.deadline() + SLACK;
        while status.is_none() {
            status = child.try_wait().unwrap();
            if status.is_none() && tl.now() > bound {
                violations.push(format!("bst still running {} s after the fault; killed", (bound - from).as_secs()));
                let _ = child.kill();
                status = Some(child.wait().unwrap());
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let exit_at = tl.now();
        tl.push(Ev::Did(describe(status)));
        while self.root.join(".bst-lock").exists() && tl.now() < bound {
            std::thread::sleep(Duration::from_millis(10));
        }
        watcher.finish();
        for r in readers {
            let _ = r.join();
        }
        // Off before looking at /health: whichever release is live must answer.
        if let Some(p) = injected {
            let _ = std::fs::remove_file(p);
        }
        let mut o = Outcome {
            label: label.to_string(),
            fault,
            did,
            delay: if fault == Fault::None { None } else { delay },
            window,
            before,
            new,
            switch_at,
            fault_at,
            status,
            exit_at: Some(exit_at),
            current: read_current(&self.root),
            violations,
            tl,
            took: Duration::ZERO,
        };
        self.check(&mut o, &reports);
        o.took = o.tl.now();
        let quiet_from = Instant::now() + self.deadline().saturating_sub(o.tl.now().saturating_sub(switch_at.unwrap_or_default()));
        self.look(quiet_from);
        o
    }

    fn check(&self, o: &mut Outcome, reports: &Path) {
        let mut v = std::mem::take(&mut o.violations);
        let code = o.status.and_then(|s| s.code());
        let exit0 = code == Some(0);
        if let Some(st) = o.status {
            if code == Some(101) {
                v.push("bst panicked (exit 101)".into());
            }
            if let Some(sig) = st.signal() {
                if !(sig == libc::SIGKILL && o.fault == Fault::Signal(libc::SIGKILL) && o.fault_at.is_some()) {
                    let why = if o.fault.handled() { ": it must handle the signal and have the server switch back" } else { "" };
                    v.push(format!("bst died of {}{why}", sig_name(sig)));
                }
            }
        }
        if self.root.join(".bst-lock").exists() {
            let owner = std::fs::read_to_string(self.root.join(".bst-lock/owner")).unwrap_or_default();
            v.push(format!("the lock {}/.bst-lock is left held (owner: {})", self.app.base, owner.trim()));
        }
        let (Some(cur), Some(new)) = (o.current.clone(), o.new.clone()) else {
            if o.current.is_none() {
                v.push("current is gone".into());
            }
            o.violations = v;
            return;
        };
        let before = o.before.clone();
        let mut lines = Vec::new();
        for (at, e) in o.tl.all() {
            if let Ev::Audit(l) = e {
                match serde_json::from_str::<Value>(&l) {
                    Ok(j) => lines.push((at, j)),
                    Err(e) => v.push(format!("unparsable audit line ({e}): {l}")),
                }
            }
        }
        let last = lines.last().map(|(_, l)| l.clone());
        let deploys = self.action != Action::Drill;

        // Where current must be.
        let confirmed = self.action == Action::Deploy && (exit0 || last.as_ref().is_some_and(|l| gate_passed(l, &new)));
        let want = if confirmed { &new } else { &before };
        if cur != *want {
            v.push(if confirmed {
                format!("the gate confirmed {new} ({}), but current is {cur}", if exit0 { "bst exited 0" } else { "last audit line" })
            } else {
                format!("current is {cur}; nothing confirmed {new}, so it must be the release live before, {before}")
            });
        }
        if exit0 && self.action == Action::Unhealthy {
            v.push(format!("a deploy of an unhealthy release exited 0 (current {cur})"));
        }
        let stdout: Vec<(Duration, String)> =
            o.tl.all().into_iter().filter_map(|(at, e)| if let Ev::Stdout(l) = e { Some((at, l)) } else { None }).collect();
        let result = stdout.iter().rev().find(|(_, l)| l.starts_with("ROLLBACK_DRILL_RESULT="));
        if self.action == Action::Drill && exit0 && result.is_none_or(|(_, l)| l != "ROLLBACK_DRILL_RESULT=PASS") {
            v.push(format!("the drill exited 0 without ROLLBACK_DRILL_RESULT=PASS (got {:?})", result.map(|r| &r.1)));
        }
        if o.fault == Fault::None {
            let expected = match self.action {
                Action::Deploy => exit0 && cur == new,
                Action::Unhealthy => code.is_some_and(|c| c != 0) && cur == before,
                Action::Drill => exit0 && cur == before,
            };
            if !expected {
                v.push(format!("without a fault: {} and current {cur}", describe(o.status)));
            }
        }

        // Statuses agree with current.
        let st = self.meta_status(&cur);
        if st != "ok" {
            v.push(format!("current {cur} has status {st:?}, not \"ok\""));
        }
        if deploys && cur != new {
            let st = self.meta_status(&new);
            if st != "failed" {
                v.push(format!("the new release {new} is not current but has status {st:?}, not \"failed\""));
            }
        }

        // The audit log agrees.
        match &last {
            None => v.push("nothing was written to logs/deploys.jsonl".into()),
            Some(l) => {
                let agrees = if deploys && cur == new { gate_passed(l, &new) } else { l["release"] == cur.as_str() };
                if !agrees {
                    v.push(format!("the last audit line does not agree with current {cur}: {l}"));
                }
            }
        }
        for (_, l) in &lines {
            for key in ["release", "previous"] {
                if let Some(id) = l[key].as_str().filter(|id| *id != before && *id != new) {
                    v.push(format!("an audit line names {id}, neither the release live before ({before}) nor {new}: {l}"));
                }
            }
        }

        // The drill's evidence agrees.
        let evidence = json_files(reports);
        for f in &evidence {
            let doc: Value = serde_json::from_str(&std::fs::read_to_string(f).unwrap_or_default()).unwrap_or_default();
            if doc["ended_on"] != cur.as_str() || doc["back_where_it_began"] != (cur == before) || doc["began_on"] != before.as_str() {
                v.push(format!(
                    "drill evidence {} disagrees with the server (current {cur}, began on {before}): began_on {}, ended_on {}, back_where_it_began {}",
                    f.display(),
                    doc["began_on"],
                    doc["ended_on"],
                    doc["back_where_it_began"]
                ));
            }
        }
        if self.action == Action::Drill && exit0 && evidence.is_empty() {
            v.push(format!("the drill exited 0 but wrote no evidence under {}", reports.display()));
        }

        // A heeded signal stops the gate: no confirmation after it, and the way back at once.
        if let (Some(t), true) = (o.fault_at, o.fault.handled()) {
            let sig = o.fault.to_string();
            let passed_before = lines.iter().any(|(at, l)| gate_passed(l, &new) && *at <= t);
            if let Some((at, _)) = lines.iter().find(|(at, l)| gate_passed(l, &new) && *at > t + GRACE) {
                if !passed_before {
                    v.push(format!("the gate passed {new} {} ms after {sig}: the signal was not heeded", (*at - t).as_millis()));
                }
            }
            if let Some((at, _)) = result.filter(|(at, _)| exit0 && *at > t + GRACE) {
                v.push(format!(
                    "the drill printed its result {} ms after {sig} and exited 0: the signal was not heeded",
                    (*at - t).as_millis()
                ));
            }
            let last_lock = o.tl.all().into_iter().rev().find_map(|(at, e)| if let Ev::Lock(held) = e { Some((at, held)) } else { None });
            let gone = last_lock.filter(|(_, held)| !held).map(|(at, _)| at);
            if !confirmed {
                if let Some(g) = gone.filter(|g| *g > t + PROMPT) {
                    v.push(format!(
                        "the lock went {} ms after {sig} (the watchdog's deadline is {} s after arming): the client did not have the server act at once",
                        (g - t).as_millis(),
                        self.deadline().as_secs()
                    ));
                }
            }
        }

        // The services run the release current names.
        let want_body = format!("/releases/{cur}\"");
        let until = Instant::now() + Duration::from_secs(8);
        let mut answer = None;
        loop {
            answer = get(self.app.port, "/health").or(answer);
            if answer.as_ref().is_some_and(|b| b.contains(&want_body) && b.contains("\"status\":\"ok\"")) {
                break;
            }
            if Instant::now() > until {
                v.push(format!("/health does not answer ok from {cur} (not restarted on it?); last answer: {answer:?}"));
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        o.violations = v;
    }

    /// Panics with everything needed to understand and replay the run.
    fn judge(&self, o: &Outcome) {
        let line = format!(
            "watchdog {} {}: {}{}{} -> {}, current {} ({}), {:.1} s",
            self.action.name(),
            o.label,
            o.fault,
            o.delay.map_or(String::new(), |d| format!(" {} ms after the switch (window {} ms)", d.as_millis(), o.window.as_millis())),
            if o.did.is_empty() { String::new() } else { format!(" [{}]", o.did) },
            describe(o.status),
            o.current.as_deref().unwrap_or("none"),
            match o.current.as_deref() {
                Some(c) if c == o.before => "the release live before",
                Some(c) if Some(c) == o.new.as_deref() => "the new release",
                _ => "?",
            },
            o.took.as_secs_f64()
        );
        eprintln!("{line}");
        if std::env::var_os("BST_FAULT_VERBOSE").is_some() {
            eprintln!("{}", o.tl.render());
        }
        if o.violations.is_empty() {
            return;
        }
        let replay = match o.label.strip_prefix("trial ") {
            Some(n) => format!("BST_FAULT_SEED={:#x} BST_FAULT_ONLY={n} ", self.knobs.seed),
            None => String::new(),
        };
        let mut msg = format!(
            "{line}\n\nFAILED: {} of {}, seed {:#x}\n  fault: {}{}\n  before: {}, switched to: {}, switch at +{} ms, fault at {}, bst {} at +{} ms\n  replay: {replay}cargo test --test it watchdog::{} -- --nocapture\n\nviolations:\n",
            o.label,
            self.action.name(),
            self.knobs.seed,
            o.fault,
            o.delay.map_or(String::new(), |d| format!(", {} ms after the switch (window {} ms)", d.as_millis(), o.window.as_millis())),
            o.before,
            o.new.as_deref().unwrap_or("(never)"),
            o.switch_at.map_or("-".into(), |d| d.as_millis().to_string()),
            o.fault_at.map_or("- (not applied)".into(), |d| format!("+{} ms", d.as_millis())),
            describe(o.status),
            o.exit_at.map_or("-".into(), |d| d.as_millis().to_string()),
            self.action.test_name(),
        );
        for v in &o.violations {
            msg.push_str(&format!("  - {v}\n"));
        }
        msg.push_str(&format!("\nbst stderr:\n{}\ntimeline (ms since bst started):\n{}", o.tl.stderr(), o.tl.render()));
        msg.push_str(&format!(
            "\n{}/logs/deploys.jsonl (last 12 lines):\n{}",
            self.app.base,
            tail(&self.root.join("logs/deploys.jsonl"), 12)
        ));
        // `|| true`: status exits 3 for a stopped unit, which is what a report may be about.
        let unit = host().ssh(&format!(
            "{{ systemctl status --no-pager -n 0 {u}; journalctl --no-pager -o short-precise -n 15 -u {u}; }} 2>&1 || true",
            u = self.app.unit
        ));
        msg.push_str(&format!("\n{} on the server:\n{unit}", self.app.unit));
        let wd_log = self.root.join("logs/watchdog.log");
        if wd_log.exists() {
            msg.push_str(&format!("\n{}/logs/watchdog.log (last 8 lines):\n{}", self.app.base, tail(&wd_log, 8)));
        }
        panic!("{msg}");
    }

    /// After the last trial, outwait any watchdog it armed: none may act once its gate ended.
    fn finish(&self) {
        if let Some(wait) = (self.last_seen.2 + Duration::from_secs(1)).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if let Some(change) = self.changed_since_look() {
            panic!("watchdog {}: after the last trial had ended, the server changed (a late watchdog?): {change}", self.action.name());
        }
    }
}

/// The app's target config, through `proxy` (a known_hosts entry for its port included).
fn proxy_config(a: &App, proxy: u16) -> PathBuf {
    let h = host();
    let known = std::fs::read_to_string(&h.known_hosts).unwrap();
    let key: Vec<&str> = known.split_whitespace().skip(1).take(2).collect();
    let kh = a.env.dir.path().join("known_hosts_proxy");
    std::fs::write(&kh, format!("[127.0.0.1]:{proxy} {}\n", key.join(" "))).unwrap();
    let cfg = std::fs::read_to_string(&a.env.config).unwrap();
    let (port, known_hosts) = (format!("port = {}\n", h.port), format!("known_hosts = {}\n", toml_str(&h.known_hosts)));
    assert!(cfg.contains(&port) && cfg.contains(&known_hosts), "unexpected app config: {cfg}");
    let cfg = cfg.replacen(&port, &format!("port = {proxy}\n"), 1).replacen(&known_hosts, &format!("known_hosts = {}\n", toml_str(&kh)), 1);
    let path = a.env.dir.path().join("via-proxy.toml");
    std::fs::write(&path, cfg).unwrap();
    path
}

fn run_action(action: Action) {
    let knobs = Knobs::from_env();
    eprintln!(
        "watchdog {}: seed {:#x} (BST_FAULT_SEED), {} trials (BST_FAULT_TRIALS){}, health_timeout {} s, confirm_margin {}",
        action.name(),
        knobs.seed,
        knobs.trials,
        knobs.only.map_or(String::new(), |n| format!(", only trial {n}")),
        HEALTH_TIMEOUT.as_secs(),
        knobs.margin.as_deref().unwrap_or("(left out)")
    );
    let mut s = Suite::new(action, knobs);
    // A run without a fault: the trials' window, from the switch until bst is done.
    let cal = s.run("calibration", Fault::None, 0, Duration::ZERO);
    s.judge(&cal);
    let window =
        cal.exit_at.zip(cal.switch_at).map_or(Duration::from_secs(1), |(e, w)| e.saturating_sub(w)).max(Duration::from_millis(200));
    let started = Instant::now();
    let mut ran = 0u32;
    let mut tally: Vec<(String, u32, u32)> = Vec::new();
    for n in 0..s.knobs.trials {
        if s.knobs.only.is_some_and(|o| o != n) {
            continue;
        }
        let (fault, permille) = plan(s.knobs.seed, action, n);
        if action == Action::Drill {
            s.ensure_rollback_target();
        }
        let o = s.run(&format!("trial {n}"), fault, permille, window);
        s.judge(&o);
        ran += 1;
        let kind = match fault {
            Fault::Garbage { .. } => "garbage".to_string(),
            f => f.to_string(),
        };
        let restored = o.current.as_deref() == Some(o.before.as_str());
        match tally.iter_mut().find(|(k, _, _)| *k == kind) {
            Some(t) => {
                t.1 += u32::from(restored);
                t.2 += u32::from(!restored);
            }
            None => tally.push((kind, u32::from(restored), u32::from(!restored))),
        }
    }
    s.finish();
    let secs = started.elapsed().as_secs_f64();
    let per = if ran > 0 { secs / f64::from(ran) } else { 0.0 };
    let counts: Vec<String> = tally.iter().map(|(k, r, c)| format!("{k} {r} restored/{c} kept")).collect();
    eprintln!("watchdog {}: {ran} trials in {secs:.0} s ({per:.1} s per trial); {}", action.name(), counts.join(", "));
}

// libtest starts tests in name order: on 2 threads the drill (the longest) must not be last.

#[test]
fn deploy_of_an_unhealthy_release_under_faults_always_ends_on_the_previous_release() {
    run_action(Action::Unhealthy);
}

#[test]
fn drill_rollback_under_faults_always_ends_where_it_began() {
    run_action(Action::Drill);
}

#[test]
fn gated_deploy_under_faults_ends_on_a_confirmed_or_the_previous_release() {
    run_action(Action::Deploy);
}
