//! A seeded, model-based run against a real sshd. Each step is a workspace mutation (edits,
//! same-size edits behind a restored mtime, adds, removals, renames, case-only renames, file /
//! directory / symlink swaps, exec bits, odd and non-UTF-8 names, large, ignored, untracked,
//! force-added and untracked-again files), a fault (damaged pristine or spare copy, damaged
//! manifest, lost generation marker, stale lock, lost client cache) or a bst operation (deploy,
//! deploy --build, deploy with its cache job killed, rollback, prune, drill rollback, deploys
//! with a hostile symlink at a shared path's parent or at `.release-meta`).
//!
//! After every operation an invariant is checked by code of its own (git, lstat and SHA-256,
//! nothing from the bst crate): `current` is a relative link to an ok release; every ok release
//! holds exactly the tree recorded when its deploy succeeded (the workspace as git sees it,
//! minus the shared paths) and links `apps/web/.env` and `storage` into `<base>/shared`;
//! `<base>/shared` is byte-for-byte what it was; no lock or staging dir is left. A failed
//! operation leaves `current` where it was.
//!
//! - `BST_MODEL_STEPS` (default 300): steps per seed.
//! - `BST_MODEL_SEEDS` (`1-20`, `7,9`, `3,10-12`): seeds for the first test to run one after
//!   the other instead of seed 1; the other two tests then do nothing.
//!
//! A failure names the seed and the step and lists every step so far, with the command that
//! replays it.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sha2::Digest;

use crate::harness::*;

const KEEP: usize = 3;
const SHARED_FILE: &str = "apps/web/.env";
const SHARED_DIR: &str = "storage";
const CONFIG: &str =
    "keep_releases = 3\nshared_files = [\"apps/web/.env\"]\nshared_dirs = [\"storage\"]\nbuild = \"echo built > built.txt\"";
/// Every name made non-UTF-8 on purpose carries this, so stderr can be searched for it.
const MARK: &[u8] = b"nonutf8-";

#[test]
fn seeded_model_1() {
    run_slot(1);
}

#[test]
fn seeded_model_2() {
    run_slot(2);
}

#[test]
fn seeded_model_3() {
    run_slot(3);
}

fn steps_per_seed() -> usize {
    std::env::var("BST_MODEL_STEPS").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(300)
}

fn seeds_from_env() -> Option<Vec<u64>> {
    let spec = std::env::var("BST_MODEL_SEEDS").ok().filter(|s| !s.trim().is_empty())?;
    let num = |s: &str| -> u64 { s.trim().parse().unwrap_or_else(|_| panic!("BST_MODEL_SEEDS={spec}: `{s}` is not a seed")) };
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => out.extend(num(a)..=num(b)),
            None => out.push(num(part)),
        }
    }
    Some(out)
}

fn run_slot(slot: u64) {
    let seeds = match seeds_from_env() {
        Some(list) if slot == 1 => list,
        Some(_) => return,
        None => vec![slot],
    };
    let steps = steps_per_seed();
    let mut failures = Vec::new();
    for seed in seeds {
        let started = Instant::now();
        match run_seed(seed, steps) {
            Ok(()) => eprintln!("model seed {seed}: {steps} steps ok in {:.1} s", started.elapsed().as_secs_f64()),
            Err(report) => {
                eprintln!("model seed {seed} FAILED after {:.1} s:\n{report}\n", started.elapsed().as_secs_f64());
                failures.push((seed, report));
            }
        }
    }
    if !failures.is_empty() {
        let seeds: Vec<String> = failures.iter().map(|(s, _)| s.to_string()).collect();
        let reports: Vec<&str> = failures.iter().map(|(_, r)| r.as_str()).collect();
        panic!("model failed for seed(s) {}\n\n{}", seeds.join(", "), reports.join("\n\n========\n\n"));
    }
}

fn run_seed(seed: u64, steps: usize) -> Result<(), String> {
    let mut m = Model::new(seed);
    for i in 0..=steps {
        m.step_no = i;
        // The last step is always a deploy, so every run ends on a check of the workspace.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| if i == steps { m.final_deploy() } else { m.step() }));
        if let Err(panic) = r {
            let msg =
                panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
            return Err(format!(
                "seed {seed} failed at step {i} of {steps}: {msg}\n\nreplay: BST_MODEL_SEEDS={seed} BST_MODEL_STEPS={} cargo test --test it model:: -- --nocapture\n\nsteps:\n{}",
                if i == steps { steps } else { i + 1 },
                m.log.join("\n")
            ));
        }
    }
    Ok(())
}

/// xorshift64, seeded through a multiply so that small seeds spread.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut r = Rng(seed.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        for _ in 0..4 {
            r.next();
        }
        r
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Clone>(&mut self, v: &[T]) -> Option<T> {
        if v.is_empty() {
            None
        } else {
            Some(v[self.below(v.len() as u64) as usize].clone())
        }
    }
}

/// What one path of a tree is. Files by content digest (a preview for the messages).
#[derive(Clone, PartialEq, Eq)]
enum Node {
    File { exec: bool, len: u64, sha: String, preview: String },
    Link(Vec<u8>),
    Other(String),
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::File { exec, len, sha, preview } => {
                write!(f, "file({}, {len} B, sha256 {}, {preview})", if *exec { "0755" } else { "0644" }, &sha[..12])
            }
            Node::Link(t) => write!(f, "symlink -> {}", show(t)),
            Node::Other(k) => write!(f, "{k}"),
        }
    }
}

type Tree = BTreeMap<Vec<u8>, Node>;

fn show(p: &[u8]) -> String {
    match std::str::from_utf8(p) {
        Ok(s) => format!("{s:?}"),
        Err(_) => format!("b\"{}\"", p.escape_ascii()),
    }
}

fn file_node(path: &Path, exec: bool) -> Option<Node> {
    let data = std::fs::read(path).ok()?;
    let sha: String = sha2::Sha256::digest(&data).iter().map(|b| format!("{b:02x}")).collect();
    let preview = format!("{:?}", String::from_utf8_lossy(&data[..data.len().min(24)]));
    Some(Node::File { exec, len: data.len() as u64, sha, preview })
}

/// `path` or something under it (the way a shared path covers what is below it).
fn under(path: &[u8], dir: &[u8]) -> bool {
    path == dir || (path.starts_with(dir) && path.get(dir.len()) == Some(&b'/'))
}

/// Whether a workspace path is one that ships (not a shared path, not bst's own).
fn ships(path: &[u8]) -> bool {
    !under(path, SHARED_FILE.as_bytes())
        && !under(path, SHARED_DIR.as_bytes())
        && !under(path, b".bst-upload")
        && path != b".release-meta"
        && !path.split(|b| *b == b'/').any(|c| c == b".git")
}

fn os(p: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(p))
}

/// An ancestor of `rel` is not a real directory (a symlink, a file, missing): git counts the
/// path as deleted in the work tree, and it must not be reached through the link.
fn hidden_by_ancestor(root: &Path, rel: &[u8]) -> bool {
    let mut at = 0;
    while let Some(i) = rel[at..].iter().position(|b| *b == b'/') {
        let prefix = &rel[..at + i];
        match std::fs::symlink_metadata(root.join(os(prefix))) {
            Ok(md) if md.is_dir() => {}
            _ => return true,
        }
        at += i + 1;
    }
    false
}

/// Kind by lstat of the disk now, exec bit from the disk (a checkout with `core.fileMode`,
/// as every one made here is).
fn node_on_disk(root: &Path, rel: &[u8]) -> Option<Node> {
    let full = root.join(os(rel));
    let md = std::fs::symlink_metadata(&full).ok()?;
    if md.file_type().is_symlink() {
        Some(Node::Link(std::fs::read_link(&full).ok()?.as_os_str().as_bytes().to_vec()))
    } else if md.is_file() {
        file_node(&full, md.permissions().mode() & 0o111 != 0)
    } else {
        None
    }
}

/// git in `dir`, paths taken literally (names like `*glob?-3` are not patterns).
fn git_cmd(dir: &Path) -> Command {
    let mut c = Command::new("git");
    c.arg("--literal-pathspecs").arg("-C").arg(dir);
    c
}

fn is_tracked(ws: &Path, rel: &Path) -> bool {
    let out = git_cmd(ws).args(["ls-files", "-z", "--"]).arg(rel).output().expect("git runs");
    !out.stdout.is_empty()
}

fn git_z(dir: &Path, args: &[&str]) -> Vec<Vec<u8>> {
    let out = git_cmd(dir).args(args).output().expect("git runs");
    assert!(out.status.success(), "git {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout.split(|b| *b == 0).filter(|r| !r.is_empty()).map(<[u8]>::to_vec).collect()
}

/// What a deploy of `ws` must ship, from git's own listing and what is on disk now: tracked
/// paths (unless deleted, now a directory, or behind an ancestor that is no longer a real
/// directory) and untracked paths that are not ignored, minus the shared paths.
///
/// Also returns the non-UTF-8 paths git lists that do not ship (under a shared path): bst
/// may refuse them as it refuses those that ship, or leave them out.
fn shipped_by_git(ws: &Path) -> (Tree, Vec<Vec<u8>>) {
    let mut t = Tree::new();
    let mut unshipped_bad = Vec::new();
    let tracked = git_z(ws, &["ls-files", "-z", "--stage"]).into_iter().filter_map(|rec| {
        let tab = rec.iter().position(|b| *b == b'\t')?;
        let gitlink = rec[..tab].starts_with(b"160000 ");
        (!gitlink).then(|| rec[tab + 1..].to_vec())
    });
    let others = git_z(ws, &["ls-files", "-z", "--others", "--exclude-standard"]).into_iter().filter(|p| !p.ends_with(b"/"));
    for path in tracked.chain(others) {
        if hidden_by_ancestor(ws, &path) {
            continue;
        }
        if !ships(&path) {
            if std::str::from_utf8(&path).is_err() && std::fs::symlink_metadata(ws.join(os(&path))).is_ok() {
                unshipped_bad.push(path);
            }
            continue;
        }
        if let Some(n) = node_on_disk(ws, &path) {
            t.insert(path, n);
        }
    }
    (t, unshipped_bad)
}

/// A release as deployed: files and symlinks, not directories; not `.release-meta`, and not
/// the shared links when they are links (checked on their own).
fn release_tree(root: &Path) -> Tree {
    let mut t = Tree::new();
    walk(root, |p, path, md| {
        let shared_link = md.file_type().is_symlink() && (p == SHARED_FILE.as_bytes() || p == SHARED_DIR.as_bytes());
        if p == b".release-meta" || shared_link {
            return;
        }
        if md.file_type().is_symlink() {
            let target = std::fs::read_link(path).map(|t| t.as_os_str().as_bytes().to_vec()).unwrap_or_default();
            t.insert(p.to_vec(), Node::Link(target));
        } else if md.is_file() {
            let n = file_node(path, md.permissions().mode() & 0o111 != 0).unwrap_or(Node::Other("unreadable file".into()));
            t.insert(p.to_vec(), n);
        } else if !md.is_dir() {
            t.insert(p.to_vec(), Node::Other(format!("{:?}", md.file_type())));
        }
    });
    t
}

/// Every entry under `root` (relative path as bytes, full path, lstat), directories before
/// what is in them; symlinks are not followed.
fn walk(root: &Path, mut visit: impl FnMut(&[u8], &Path, &std::fs::Metadata)) {
    let mut stack = vec![Vec::<u8>::new()];
    while let Some(rel) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(root.join(os(&rel))) else { continue };
        for e in rd.filter_map(Result::ok) {
            let mut p = rel.clone();
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(e.file_name().as_bytes());
            let Ok(md) = std::fs::symlink_metadata(e.path()) else { continue };
            visit(&p, &e.path(), &md);
            if md.is_dir() {
                stack.push(p);
            }
        }
    }
}

fn diff(want: &Tree, got: &Tree) -> Vec<String> {
    let mut out = Vec::new();
    for (p, w) in want {
        match got.get(p) {
            None => out.push(format!("  missing {}: want {w:?}", show(p))),
            Some(g) if g != w => out.push(format!("  differs {}: want {w:?}, got {g:?}", show(p))),
            _ => {}
        }
    }
    for (p, g) in got {
        if !want.contains_key(p) {
            out.push(format!("  extra   {}: {g:?}", show(p)));
        }
    }
    out
}

fn shown_diff(lines: &[String]) -> String {
    let mut s = lines.iter().take(40).cloned().collect::<Vec<_>>().join("\n");
    if lines.len() > 40 {
        s.push_str(&format!("\n  ... and {} more", lines.len() - 40));
    }
    s
}

/// `<base>/shared` as it must stay: kind, bytes, link target per path (directories too).
type Snap = BTreeMap<Vec<u8>, (char, Vec<u8>)>;

fn snapshot(root: &Path) -> Snap {
    let mut s = Snap::new();
    walk(root, |p, path, md| {
        let entry = if md.file_type().is_symlink() {
            ('l', std::fs::read_link(path).map(|t| t.as_os_str().as_bytes().to_vec()).unwrap_or_default())
        } else if md.is_dir() {
            ('d', Vec::new())
        } else {
            ('f', std::fs::read(path).unwrap_or_default())
        };
        s.insert(p.to_vec(), entry);
    });
    s
}

fn snap_diff(want: &Snap, got: &Snap) -> String {
    let fmt = |(k, b): &(char, Vec<u8>)| format!("{k} {}", show(&b[..b.len().min(60)]));
    let mut out = Vec::new();
    for (p, w) in want {
        match got.get(p) {
            None => out.push(format!("  gone    shared/{}: was {}", show(p), fmt(w))),
            Some(g) if g != w => out.push(format!("  changed shared/{}: was {}, now {}", show(p), fmt(w), fmt(g))),
            _ => {}
        }
    }
    for (p, g) in got {
        if !want.contains_key(p) {
            out.push(format!("  new     shared/{}: {}", show(p), fmt(g)));
        }
    }
    out.join("\n")
}

fn is_id(s: &str) -> bool {
    s.len() == 16
        && s.bytes().enumerate().all(|(i, b)| {
            if i == 8 {
                b == b'T'
            } else if i == 15 {
                b == b'Z'
            } else {
                b.is_ascii_digit()
            }
        })
}

fn clip(s: &str) -> String {
    const MAX: usize = 6000;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut cut = MAX;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}\n[... {} more bytes]", &s[..cut], s.len() - cut)
}

fn run_text(run: &Run) -> String {
    format!("exit {}\nstdout:\n{}\nstderr:\n{}", run.code, clip(&run.stdout), clip(&run.stderr))
}

/// The path of a workspace file made non-UTF-8 (or with a non-UTF-8 link target) on purpose,
/// up to the component that carries [`MARK`]: what to remove once it has been refused.
fn marked_root(p: &[u8]) -> Option<Vec<u8>> {
    let i = p.windows(MARK.len()).position(|w| w == MARK)?;
    let end = p[i..].iter().position(|b| *b == b'/').map_or(p.len(), |j| i + j);
    Some(p[..end].to_vec())
}

/// The number in the marked component, `nonutf8-<n>-`, which stderr must name.
fn marker_text(p: &[u8]) -> Option<String> {
    let i = p.windows(MARK.len()).position(|w| w == MARK)?;
    let digits: Vec<u8> = p[i + MARK.len()..].iter().take_while(|b| b.is_ascii_digit()).copied().collect();
    Some(format!("nonutf8-{}-", String::from_utf8_lossy(&digits)))
}

#[derive(Default)]
struct Listing {
    files: Vec<PathBuf>,
    links: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
}

/// The workspace without `.git`, sorted (read_dir order is the filesystem's, not the seed's).
fn list_ws(root: &Path) -> Listing {
    let mut l = Listing::default();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(root.join(&rel)) else { continue };
        for e in rd.filter_map(Result::ok) {
            let p = rel.join(e.file_name());
            if p == Path::new(".git") {
                continue;
            }
            let Ok(md) = std::fs::symlink_metadata(root.join(&p)) else { continue };
            if md.file_type().is_symlink() {
                l.links.push(p);
            } else if md.is_dir() {
                l.dirs.push(p.clone());
                stack.push(p);
            } else if md.is_file() {
                l.files.push(p);
            }
        }
    }
    l.files.sort();
    l.links.sort();
    l.dirs.sort();
    l
}

fn marked(p: &Path) -> bool {
    p.as_os_str().as_bytes().windows(MARK.len()).any(|w| w == MARK)
}

/// Paths the mutations leave alone: git's own, the ignore rules, and the directories the
/// shared links go into (a hostile symlink there is its own operation).
fn protected(p: &Path) -> bool {
    p.starts_with(".git")
        || p == Path::new(".gitignore")
        || p == Path::new("apps")
        || p == Path::new("apps/web")
        || p == Path::new("storage")
}

/// From the directory of `link` to `target` (both relative to the workspace root).
fn relative_target(link: &Path, target: &Path) -> PathBuf {
    let depth = link.components().count().saturating_sub(1);
    let mut t = PathBuf::new();
    for _ in 0..depth {
        t.push("..");
    }
    t.join(target)
}

/// Names with spaces, quotes, unicode, a newline, a tab, shell and glob characters; `{}` is
/// replaced by a unique number.
const NAMES: &[&str] = &[
    "plain-{}.txt",
    "with space {}.txt",
    "quote\"{}\".txt",
    "apos'{}'.md",
    "ünïcødé-{}.ts",
    "日本語-{}.md",
    "new\nline-{}.txt",
    "-dash-{}.txt",
    "back\\slash-{}.txt",
    "tab\t{}.txt",
    "$HOME-{}.sh",
    "*glob?-{}",
    "semi;colon-{}.js",
    "[br]-{}.json",
    ".hidden-{}",
    " lead-{}.txt",
    "trail-{}.txt ",
    "%s%n-{}.txt",
    "a&b|c-{}",
    "#hash-{}.css",
    "Mixed-Case-{}.TXT",
];

struct Recorded {
    tree: Tree,
    built: bool,
    step: usize,
}

/// What the server looked like before an operation.
struct Before {
    current: Option<String>,
    releases: Vec<(String, Option<String>)>,
}

enum Expect {
    /// An ordinary workspace: must deploy (or be refused for a non-UTF-8 name).
    Normal,
    /// A hostile workspace that must be refused (exit 1 or 2).
    Fail,
    /// Either refused (exit 1 or 2) or deployed correctly.
    Either,
}

struct Model {
    seed: u64,
    rng: Rng,
    log: Vec<String>,
    step_no: usize,
    counter: u64,
    /// Release id -> what it must hold.
    releases: BTreeMap<String, Recorded>,
    shared: Snap,
    ever_deployed: bool,
    reports: PathBuf,
    // Dropped last: the env waits for the server's background work, then the sshd goes.
    env: Env,
    ws: Workspace,
    _sshd: Sshd,
}

impl Model {
    fn new(seed: u64) -> Model {
        let sshd = Sshd::start();
        let ws = Workspace::new();
        let w = ws.path();
        ws.write("apps/web/index.html", "<h1>web</h1>\n");
        ws.write("apps/web/src/app.ts", "export const app = 1;\n");
        ws.write("storage/committed.txt", "a workspace file under a shared dir: never ships\n");
        ws.write("lib/a.txt", "alpha\n");
        ws.write("lib/b.txt", "bravo\n");
        ws.write("docs/readme.md", "# docs\n");
        sh(w, "git add -A && git -c user.name=t -c user.email=t@example.com commit -qm model-base");
        let env = Env::new(Some(&sshd), &ws, CONFIG);
        let shared = env.base.join("shared");
        std::fs::create_dir_all(shared.join("apps/web")).unwrap();
        std::fs::create_dir_all(shared.join("storage/uploads")).unwrap();
        std::fs::write(shared.join(SHARED_FILE), format!("SECRET=model-{seed}\n")).unwrap();
        std::fs::write(shared.join("storage/keep.txt"), "keep me\n").unwrap();
        std::fs::write(shared.join("storage/uploads/u1.bin"), noise(3000, seed)).unwrap();
        std::os::unix::fs::symlink("../keep.txt", shared.join("storage/uploads/link-to-keep")).unwrap();
        let snap = snapshot(&shared);
        let reports = env.dir.path().join("reports");
        Model {
            seed,
            rng: Rng::new(seed),
            log: Vec::new(),
            step_no: 0,
            counter: 0,
            releases: BTreeMap::new(),
            shared: snap,
            ever_deployed: false,
            reports,
            env,
            ws,
            _sshd: sshd,
        }
    }

    fn w(&self) -> PathBuf {
        self.ws.path().to_path_buf()
    }

    fn base(&self) -> PathBuf {
        self.env.base.clone()
    }

    fn next_n(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    fn begin(&mut self, what: impl Into<String>) {
        let what = what.into();
        self.log.push(format!("{:>4} {}", self.step_no, what.replace('\n', "\\n")));
    }

    fn end(&mut self, result: impl AsRef<str>) {
        if let Some(last) = self.log.last_mut() {
            last.push_str(" -> ");
            last.push_str(&result.as_ref().replace('\n', "\\n"));
        }
    }

    #[track_caller]
    fn fail(&self, msg: impl AsRef<str>) -> ! {
        panic!("{}", msg.as_ref());
    }

    fn step(&mut self) {
        match self.rng.below(100) {
            0..=33 => self.op(),
            34..=85 => self.mutate(),
            _ => self.fault(),
        }
    }

    fn final_deploy(&mut self) {
        self.begin("final deploy");
        let out = self.deploy_with(false, None, Expect::Normal);
        self.end(&out);
        if out.starts_with("refused") {
            self.begin("final deploy again");
            let out = self.deploy_with(false, None, Expect::Normal);
            self.end(&out);
        }
    }

    // ---- operations -------------------------------------------------------------------

    fn op(&mut self) {
        match self.rng.below(100) {
            0..=46 => {
                self.begin("deploy");
                let out = self.deploy_with(false, None, Expect::Normal);
                self.end(out);
            }
            47..=56 => {
                self.begin("deploy --build");
                let out = self.deploy_with(true, None, Expect::Normal);
                self.end(out);
            }
            57..=64 => {
                let group = self.rng.chance(50);
                self.begin(format!("deploy, then kill -9 the cache job ({})", if group { "its process group" } else { "its shell only" }));
                let out = self.deploy_with(false, Some(group), Expect::Normal);
                self.end(out);
            }
            65..=76 => self.rollback(),
            77..=83 => self.prune(),
            84..=89 => self.drill(),
            90..=95 => self.hostile_shared_parent(),
            _ => self.hostile_release_meta(),
        }
    }

    fn server_before(&self) -> Before {
        Before { current: self.current_or_fail(), releases: self.server_releases() }
    }

    /// Deploys and checks the outcome; returns what happened, for the log.
    fn deploy_with(&mut self, build: bool, kill_job: Option<bool>, expect: Expect) -> String {
        let (expected, unshipped_bad) = shipped_by_git(&self.w());
        // Must be refused: non-UTF-8 names that ship. May be refused: links with non-UTF-8
        // targets (or shipped exactly), non-UTF-8 names under shared paths (or left out).
        let bad_names: Vec<Vec<u8>> = expected.keys().filter(|p| std::str::from_utf8(p).is_err()).cloned().collect();
        let bad_targets: Vec<Vec<u8>> = expected
            .iter()
            .filter(|(_, n)| matches!(n, Node::Link(t) if std::str::from_utf8(t).is_err()))
            .map(|(p, _)| p.clone())
            .chain(unshipped_bad)
            .collect();
        let before = self.server_before();
        let mut args = vec!["deploy", "t", "--json"];
        if build {
            args.push("--build");
        }
        let started = Instant::now();
        let run = self.env.bst(&args);
        let took = started.elapsed();
        let killed = kill_job.map(|group| {
            std::thread::sleep(Duration::from_millis(self.rng.below(60)));
            self.kill_cache_job(group)
        });
        let mut out = match expect {
            Expect::Normal if !bad_names.is_empty() || (!bad_targets.is_empty() && run.code != 0) => {
                let all: Vec<Vec<u8>> = bad_names.iter().chain(&bad_targets).cloned().collect();
                if run.code != 2 {
                    self.fail(format!(
                        "deploy of a workspace with non-UTF-8 path(s) {} (or link targets, or names under shared paths: {}) must be refused with exit 2, leaving the server untouched\n{}",
                        bad_names.iter().map(|p| show(p)).collect::<Vec<_>>().join(", "),
                        bad_targets.iter().map(|p| show(p)).collect::<Vec<_>>().join(", "),
                        run_text(&run)
                    ));
                }
                let named: Vec<String> = all.iter().filter_map(|p| marker_text(p)).collect();
                if !named.iter().any(|m| run.stderr.contains(m.as_str())) {
                    self.fail(format!("the refusal does not name the offending path ({}):\n{}", named.join(" or "), run_text(&run)));
                }
                self.expect_untouched(&before, &run, "a refused deploy");
                self.remove_marked(&all);
                format!("refused (exit 2), removed {}", all.iter().map(|p| show(p)).collect::<Vec<_>>().join(", "))
            }
            Expect::Fail | Expect::Either if run.code == 1 || run.code == 2 => {
                self.expect_current_kept(&before, &run, "a refused deploy");
                format!("failed as it should (exit {})", run.code)
            }
            Expect::Fail => {
                let shared = snap_diff(&self.shared, &snapshot(&self.base().join("shared")));
                self.fail(format!(
                    "this deploy must fail (exit 1 or 2) and leave shared/ alone; shared/ now differs:\n{shared}\n{}",
                    run_text(&run)
                ))
            }
            _ => {
                if run.code != 0 {
                    self.fail(format!("deploy failed (an ordinary workspace must deploy)\n{}", run_text(&run)));
                }
                let summary = self.accept_deploy(&run, expected, build, &before);
                if !bad_targets.is_empty() {
                    self.remove_marked(&bad_targets);
                }
                summary
            }
        };
        out.push_str(&format!(" in {} ms", took.as_millis()));
        if let Some(k) = killed {
            out.push_str(&format!("; {k}"));
        }
        self.after_op();
        out
    }

    /// A deploy that returned 0: the new release is current, ok, and the workspace's tree.
    fn accept_deploy(&mut self, run: &Run, expected: Tree, build: bool, before: &Before) -> String {
        let json: serde_json::Value = serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| self.fail(format!("deploy --json printed no JSON document ({e})\n{}", run_text(run))));
        let Some(id) = json["release_id"].as_str().map(str::to_string) else {
            self.fail(format!("deploy --json has no release_id\n{}", run_text(run)))
        };
        if before.releases.iter().any(|(r, _)| *r == id) {
            self.fail(format!("deploy reused the existing release id {id}\n{}", run_text(run)));
        }
        let cur = self.current_or_fail();
        if cur.as_deref() != Some(id.as_str()) {
            self.fail(format!("deploy said {id} but current is {cur:?}\n{}", run_text(run)));
        }
        let rec = Recorded { tree: expected, built: build, step: self.step_no };
        if let Err(e) = self.check_release(&id, &rec) {
            self.fail(format!("release {id} just deployed is not the workspace:\n{e}\n{}", run_text(run)));
        }
        self.releases.insert(id.clone(), rec);
        self.ever_deployed = true;
        let now = self.server_releases();
        if now.len() > KEEP {
            self.fail(format!("{} releases after a deploy with keep_releases = {KEEP}: {now:?}\n{}", now.len(), run_text(run)));
        }
        // The release that was live before (after a rollback not the new one's rollback
        // target) is never pruned by the deploy.
        if let Some(prev) = &before.current {
            if !now.iter().any(|(i, _)| i == prev) {
                self.fail(format!("the deploy pruned {prev}, the release that was live before it: {now:?}\n{}", run_text(run)));
            }
        }
        // The new release's rollback target (the newest ok one before it) is never pruned.
        let newest_ok = before.releases.iter().rev().find(|(_, s)| s.as_deref() == Some("ok")).map(|(i, _)| i.clone());
        if let Some(rb) = newest_ok {
            if !now.iter().any(|(i, _)| *i == rb) {
                self.fail(format!("the deploy pruned {rb}, the new release's rollback target\n{}", run_text(run)));
            }
        }
        format!(
            "ok {id} ({} files, {}{})",
            json["files"],
            if json["delta"].as_bool() == Some(true) { format!("delta, {} sent", json["files_sent"]) } else { "full".to_string() },
            if build { ", built" } else { "" }
        )
    }

    fn expect_current_kept(&self, before: &Before, run: &Run, what: &str) {
        let cur = self.current_or_fail();
        if cur != before.current {
            self.fail(format!("{what} moved current from {:?} to {cur:?}\n{}", before.current, run_text(run)));
        }
    }

    fn expect_untouched(&self, before: &Before, run: &Run, what: &str) {
        self.expect_current_kept(before, run, what);
        let now = self.server_releases();
        if now != before.releases {
            self.fail(format!("{what} changed the releases: {:?} -> {now:?}\n{}", before.releases, run_text(run)));
        }
    }

    /// Removes the files made non-UTF-8 on purpose (from the index too).
    fn remove_marked(&mut self, paths: &[Vec<u8>]) {
        let roots: BTreeSet<Vec<u8>> = paths.iter().filter_map(|p| marked_root(p)).collect();
        for r in roots {
            let ok = git_cmd(self.ws.path())
                .args(["rm", "-r", "-q", "--cached", "--ignore-unmatch", "--"])
                .arg(os(&r))
                .status()
                .expect("git runs")
                .success();
            assert!(ok, "git rm --cached {} failed", show(&r));
            let full = self.ws.path().join(os(&r));
            let _ = std::fs::remove_dir_all(&full).or_else(|_| std::fs::remove_file(&full));
        }
    }

    fn kill_cache_job(&mut self, group: bool) -> String {
        let pid_file = self.base().join(".bst-cache/job.pid");
        let Some(pid) = std::fs::read_to_string(&pid_file).ok().and_then(|p| p.trim().parse::<i32>().ok()) else {
            return "no cache job pid".into();
        };
        let alive = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains("bst-cache-job"));
        if !alive {
            return "cache job already done".into();
        }
        // SAFETY: kill(2) on the cache job this test's deploy started (checked by its cmdline).
        let r = unsafe {
            if group {
                libc::kill(-pid, libc::SIGKILL)
            } else {
                libc::kill(pid, libc::SIGKILL)
            }
        };
        if r != 0 && group {
            // SAFETY: as above, the job itself.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        format!("killed cache job {pid}")
    }

    fn rollback(&mut self) {
        let cur = self.current_or_fail();
        let rels = self.server_releases();
        let explicit = if self.rng.chance(30) { self.rng.pick(&rels).filter(|(_, s)| s.is_some()) } else { None };
        let (args, want): (Vec<String>, Option<String>) = match &explicit {
            Some((id, status)) => {
                let want = (status.as_deref() == Some("ok")).then(|| id.clone());
                (vec!["rollback".into(), "t".into(), "--json".into(), "--release-id".into(), id.clone()], want)
            }
            None => (vec!["rollback".into(), "t".into(), "--json".into()], cur.as_ref().and_then(|c| self.rollback_candidate(c))),
        };
        self.begin(match &explicit {
            Some((id, s)) => format!("rollback --release-id {id} ({}; current {cur:?})", s.as_deref().unwrap_or("?")),
            None => format!("rollback (current {cur:?}, expect {want:?})"),
        });
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = self.env.bst(&args);
        let now = self.current_or_fail();
        match &want {
            Some(to) => {
                if run.code != 0 {
                    self.fail(format!("rollback to {to} (an ok release) failed\n{}", run_text(&run)));
                }
                if now.as_deref() != Some(to.as_str()) {
                    self.fail(format!("rollback should have moved current to {to}, it is {now:?}\n{}", run_text(&run)));
                }
                self.end(format!("ok, current {to}"));
            }
            None => {
                if run.code != 1 {
                    self.fail(format!("rollback with nothing to roll back to must exit 1\n{}", run_text(&run)));
                }
                if now != cur {
                    self.fail(format!("a refused rollback moved current from {cur:?} to {now:?}\n{}", run_text(&run)));
                }
                self.end("refused (exit 1), nothing to roll back to");
            }
        }
        self.after_op();
    }

    fn prune(&mut self) {
        let cur = self.current_or_fail();
        let rb = cur.as_ref().and_then(|c| self.rollback_candidate(c));
        let rels = self.server_releases();
        let deployed = self.base().join("releases").is_dir();
        self.begin(format!("prune ({} releases, current {cur:?}, its rollback target {rb:?})", rels.len()));
        let run = self.env.bst(&["prune", "t", "--json"]);
        let want_code = if deployed { 0 } else { 1 };
        if run.code != want_code {
            self.fail(format!("prune should exit {want_code}\n{}", run_text(&run)));
        }
        let now = self.current_or_fail();
        if now != cur {
            self.fail(format!("prune moved current from {cur:?} to {now:?}\n{}", run_text(&run)));
        }
        let after = self.server_releases();
        if let Some(rb) = &rb {
            if !after.iter().any(|(i, _)| i == rb) {
                self.fail(format!("prune removed {rb}, the rollback target of current\n{}", run_text(&run)));
            }
        }
        if deployed && after.len() != rels.len().min(KEEP) {
            self.fail(format!("prune left {} releases of {} (keep {KEEP}): {after:?}\n{}", after.len(), rels.len(), run_text(&run)));
        }
        self.end(format!("exit {}, {} releases left", run.code, after.len()));
        self.after_op();
    }

    fn drill(&mut self) {
        let cur = self.current_or_fail();
        let back = cur.as_ref().and_then(|c| self.rollback_candidate(c));
        self.begin(format!("drill rollback (current {cur:?}, back to {back:?})"));
        let reports = self.reports.to_string_lossy().into_owned();
        let run = self.env.bst(&["drill", "rollback", "t", "--reports", &reports]);
        // This target declares no services: a drill that can switch both ways verifies no
        // release, and says UNVERIFIED (exit 1), never a bare PASS; with nothing to roll back
        // to it is a FAIL.
        let want = if back.is_some() { "ROLLBACK_DRILL_RESULT=UNVERIFIED" } else { "ROLLBACK_DRILL_RESULT=FAIL" };
        if run.code != 1 || run.stdout.lines().last() != Some(want) {
            self.fail(format!("the drill should exit 1 with {want}\n{}", run_text(&run)));
        }
        let now = self.current_or_fail();
        if now != cur {
            self.fail(format!("the drill must end where it began ({cur:?}), current is {now:?}\n{}", run_text(&run)));
        }
        self.end(format!("exit {}", run.code));
        self.after_op();
    }

    /// `apps/web` committed as a symlink out of the release: linking `apps/web/.env` would go
    /// through it. The deploy must fail and `shared/` stay as it was.
    fn hostile_shared_parent(&mut self) {
        let w = self.w();
        let web = w.join("apps/web");
        if !std::fs::symlink_metadata(&web).is_ok_and(|m| m.is_dir()) {
            return self.mutate();
        }
        let base_shared = self.base().join("shared");
        let targets = [
            "../../../shared".to_string(),
            "../../../shared/apps/web".to_string(),
            "../../../shared/storage".to_string(),
            base_shared.join("apps/web").to_string_lossy().into_owned(),
            base_shared.to_string_lossy().into_owned(),
        ];
        let target = self.rng.pick(&targets).unwrap();
        let n = self.next_n();
        let aside = self.env.dir.path().join(format!("web-aside-{n}"));
        self.begin(format!("commit apps/web -> {target}, deploy"));
        std::fs::rename(&web, &aside).unwrap();
        std::os::unix::fs::symlink(&target, &web).unwrap();
        commit(&w, "hostile apps/web");
        let out = self.deploy_with(false, None, Expect::Fail);
        std::fs::remove_file(&web).unwrap();
        std::fs::rename(&aside, &web).unwrap();
        commit(&w, "apps/web is a directory again");
        self.end(format!("{out}; apps/web restored and committed"));
    }

    /// A `.release-meta` symlink in the workspace: the meta must not be written through it.
    /// Refused or deployed, the release's meta is bst's own file and nothing else changed.
    fn hostile_release_meta(&mut self) {
        let w = self.w();
        let link = w.join(".release-meta");
        let _ = std::fs::remove_file(&link);
        let target = self.rng.pick(&["../../shared/storage/keep.txt", "../../shared/apps/web/.env", "../../current/package.json"]).unwrap();
        let committed = self.rng.chance(50);
        self.begin(format!("{} .release-meta -> {target}, deploy", if committed { "commit" } else { "leave untracked" }));
        std::os::unix::fs::symlink(target, &link).unwrap();
        if committed {
            commit(&w, "hostile .release-meta");
        }
        let out = self.deploy_with(false, None, Expect::Either);
        std::fs::remove_file(&link).unwrap();
        if committed {
            commit(&w, "no .release-meta");
        }
        self.end(format!("{out}; link removed"));
    }

    // ---- the invariant --------------------------------------------------------------------

    fn current_or_fail(&self) -> Option<String> {
        self.current().unwrap_or_else(|e| self.fail(e))
    }

    /// `current`'s release id: it must be a relative link to an existing release directory.
    fn current(&self) -> Result<Option<String>, String> {
        let link = self.base().join("current");
        match std::fs::read_link(&link) {
            Ok(t) => {
                let t = t.to_string_lossy().into_owned();
                let id = t.strip_prefix("releases/").map(|i| i.trim_end_matches('/')).filter(|i| is_id(i));
                let Some(id) = id else { return Err(format!("current -> {t:?}: not a relative link to releases/<id>")) };
                if !std::fs::symlink_metadata(self.base().join("releases").join(id)).is_ok_and(|m| m.is_dir()) {
                    return Err(format!("current -> {t} is dangling (releases: {:?})", self.server_releases()));
                }
                Ok(Some(id.to_string()))
            }
            Err(_) if std::fs::symlink_metadata(&link).is_ok() => Err("current exists and is not a symlink".into()),
            Err(_) => Ok(None),
        }
    }

    fn status(&self, id: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.base().join("releases").join(id).join(".release-meta")).ok()?;
        let v: serde_json::Value = serde_json::from_str(text.trim()).ok()?;
        v["status"].as_str().map(str::to_string)
    }

    fn server_releases(&self) -> Vec<(String, Option<String>)> {
        let Ok(rd) = std::fs::read_dir(self.base().join("releases")) else { return Vec::new() };
        let mut ids: Vec<String> =
            rd.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| is_id(n)).collect();
        ids.sort();
        ids.into_iter().map(|id| (id.clone(), self.status(&id))).collect()
    }

    /// Independent of bst: the newest release older than `cur` whose meta says ok.
    fn rollback_candidate(&self, cur: &str) -> Option<String> {
        self.server_releases().into_iter().rev().find(|(id, s)| id.as_str() < cur && s.as_deref() == Some("ok")).map(|(id, _)| id)
    }

    fn check_release(&self, id: &str, rec: &Recorded) -> Result<(), String> {
        let root = self.base().join("releases").join(id);
        let mut problems = Vec::new();
        match std::fs::symlink_metadata(root.join(".release-meta")) {
            Ok(md) if md.is_file() => {
                let text = std::fs::read_to_string(root.join(".release-meta")).unwrap_or_default();
                match serde_json::from_str::<serde_json::Value>(text.trim()) {
                    Ok(v) if v["status"] == "ok" && v["id"] == id => {}
                    Ok(v) => problems.push(format!("  .release-meta says status {} id {}", v["status"], v["id"])),
                    Err(e) => problems.push(format!("  .release-meta is not JSON ({e}): {text:?}")),
                }
            }
            Ok(md) => problems.push(format!("  .release-meta is not a regular file: {:?}", md.file_type())),
            Err(e) => problems.push(format!("  no .release-meta: {e}")),
        }
        let mut got = release_tree(&root);
        if rec.built {
            match got.remove(b"built.txt".as_slice()) {
                Some(Node::File { preview, .. }) if preview == "\"built\\n\"" => {}
                other => problems.push(format!("  built.txt of the build: {other:?}")),
            }
        }
        let d = diff(&rec.tree, &got);
        if !d.is_empty() {
            problems.push(format!(
                "  tree differs from the one deployed at step {} (want = workspace then):\n{}",
                rec.step,
                shown_diff(&d)
            ));
        }
        problems.extend(self.shared_links(&root).err());
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!("release {id}:\n{}", problems.join("\n")))
        }
    }

    fn shared_links(&self, root: &Path) -> Result<(), String> {
        let shared = self.base().join("shared");
        let mut problems = Vec::new();
        if !std::fs::symlink_metadata(root.join("apps/web")).is_ok_and(|m| m.is_dir()) {
            problems.push("  apps/web is not a real directory".to_string());
        }
        for (rel, dir) in [(SHARED_FILE, false), (SHARED_DIR, true)] {
            let p = root.join(rel);
            let is_link = std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink());
            let want = std::fs::canonicalize(shared.join(rel)).ok();
            let got = std::fs::canonicalize(&p).ok();
            if !is_link || got.is_none() || got != want {
                problems.push(format!(
                    "  {rel} should be a symlink to shared/{rel}{}: symlink {is_link}, -> {:?}, resolves to {got:?}, want {want:?}",
                    if dir { "/" } else { "" },
                    std::fs::read_link(&p).ok()
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }

    fn after_op(&mut self) {
        if let Err(e) = self.check_after_op() {
            self.fail(format!("invariant broken after the operation:\n{e}"));
        }
    }

    fn check_after_op(&mut self) -> Result<(), String> {
        let base = self.base();
        for leftover in [".bst-lock", ".bst-incoming"] {
            let p = base.join(leftover);
            let deadline = Instant::now() + Duration::from_secs(3);
            while p.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if p.exists() {
                let owner = std::fs::read_to_string(p.join("owner")).unwrap_or_default();
                return Err(format!("{leftover} left behind after the command returned (owner: {owner})"));
            }
        }
        let now = snapshot(&base.join("shared"));
        if now != self.shared {
            return Err(format!("shared/ changed:\n{}", snap_diff(&self.shared, &now)));
        }
        let cur = self.current()?;
        if cur.is_none() && self.ever_deployed {
            return Err("current vanished".into());
        }
        let rels = self.server_releases();
        if let Some(c) = &cur {
            let st = rels.iter().find(|(i, _)| i == c).and_then(|(_, s)| s.clone());
            if st.as_deref() != Some("ok") {
                return Err(format!("current -> releases/{c}, whose status is {st:?}"));
            }
        }
        let mut problems = Vec::new();
        for (id, st) in &rels {
            if st.as_deref() != Some("ok") {
                continue;
            }
            match self.releases.get(id) {
                None => problems.push(format!("release {id} says ok, but no deploy of it succeeded (releases: {rels:?})")),
                Some(rec) => problems.extend(self.check_release(id, rec).err()),
            }
        }
        self.releases.retain(|id, _| rels.iter().any(|(i, _)| i == id));
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!("current is {cur:?}\n{}", problems.join("\n")))
        }
    }

    // ---- workspace mutations ----------------------------------------------------------------

    fn mutate(&mut self) {
        let w = self.w();
        let l = list_ws(&w);
        let r = self.rng.below(100);
        let what = match r {
            0..=11 => self.edit(&l),
            12..=22 => self.edit_same_size_old_mtime(&l),
            23..=24 => self.touch(&l),
            25..=37 => self.add_file(&l),
            38..=43 => self.delete(&l),
            44..=45 => self.delete_dir(&l),
            46..=50 => self.rename(&l),
            51..=54 => self.case_rename(&l),
            55..=59 => self.file_to_symlink(&l),
            60..=62 => self.symlink_to_file(&l),
            63..=65 => self.file_to_dir(&l),
            66..=67 => self.dir_to_file(&l),
            68..=69 => self.dir_to_symlink(&l),
            70..=73 => self.add_symlink(&l),
            74..=79 => self.exec_bit(&l),
            80..=81 => self.empty_dir(&l),
            82 => self.large_file(&l),
            83..=86 => self.ignored_file(),
            87..=88 => self.force_add(),
            89..=90 => self.untrack(),
            91..=95 => self.non_utf8(&l),
            _ => self.shared_paths_in_workspace(),
        };
        let what = match what {
            Some(w) => w,
            None => self.add_file(&l).unwrap_or_else(|| "nothing".into()),
        };
        let how = match self.rng.below(100) {
            0..=39 => {
                commit(&w, &format!("step {}", self.step_no));
                "committed"
            }
            40..=49 => {
                sh(&w, "git add -A");
                "staged"
            }
            _ => "not committed",
        };
        self.begin(format!("{what} ({how})"));
    }

    fn content(&mut self) -> Vec<u8> {
        match self.rng.below(10) {
            0 => Vec::new(),
            1 | 2 => {
                let n = 1 + self.rng.below(700);
                (0..n).map(|_| self.rng.next() as u8).collect()
            }
            _ => {
                let lines = 1 + self.rng.below(30);
                let mut s = String::new();
                for i in 0..lines {
                    s.push_str(&format!("line {i}: {:x}\n", self.rng.next()));
                }
                s.into_bytes()
            }
        }
    }

    fn new_name(&mut self) -> String {
        let n = self.next_n();
        self.rng.pick(NAMES).unwrap().replace("{}", &n.to_string())
    }

    /// A real directory to create something in (the root included), never under `.git`.
    fn some_dir(&mut self, l: &Listing) -> PathBuf {
        let dirs: Vec<PathBuf> = std::iter::once(PathBuf::new()).chain(l.dirs.iter().filter(|d| !marked(d)).cloned()).collect();
        let mut d = self.rng.pick(&dirs).unwrap();
        if self.rng.chance(15) {
            d = d.join(format!("sub-{}", self.next_n()));
            if self.rng.chance(40) {
                d = d.join("deeper");
            }
        }
        d
    }

    fn files(&self, l: &Listing) -> Vec<PathBuf> {
        l.files.iter().filter(|p| !protected(p) && !marked(p)).cloned().collect()
    }

    fn links(&self, l: &Listing) -> Vec<PathBuf> {
        l.links.iter().filter(|p| !protected(p) && !marked(p)).cloned().collect()
    }

    /// Directories that may be removed or replaced: not protected, not holding a protected
    /// path or a marked one.
    fn dirs(&self, l: &Listing) -> Vec<PathBuf> {
        let all: Vec<&PathBuf> = l.files.iter().chain(&l.links).chain(&l.dirs).collect();
        l.dirs
            .iter()
            .filter(|d| !protected(d) && !Path::new("apps/web").starts_with(d) && !Path::new("storage").starts_with(d))
            .filter(|d| !all.iter().any(|p| p.starts_with(d) && marked(p)))
            .cloned()
            .collect()
    }

    /// Writes a new file, creating its directories; false when an ancestor is not a real
    /// directory (never write through a symlink).
    fn write_new(&self, rel: &Path, data: &[u8]) -> bool {
        let w = self.w();
        let mut at = w.clone();
        if let Some(parent) = rel.parent() {
            for c in parent.components() {
                at.push(c);
                match std::fs::symlink_metadata(&at) {
                    Ok(md) if md.is_dir() => {}
                    Ok(_) => return false,
                    Err(_) => {
                        if std::fs::create_dir(&at).is_err() {
                            return false;
                        }
                    }
                }
            }
        }
        std::fs::write(w.join(rel), data).is_ok()
    }

    fn edit(&mut self, l: &Listing) -> Option<String> {
        let p = self.rng.pick(&self.files(l))?;
        let data = self.content();
        std::fs::write(self.w().join(&p), &data).unwrap();
        Some(format!("edit {} ({} B)", show(p.as_os_str().as_bytes()), data.len()))
    }

    /// Same size, other bytes, old mtime back: only the content tells.
    fn edit_same_size_old_mtime(&mut self, l: &Listing) -> Option<String> {
        let w = self.w();
        let files: Vec<PathBuf> = self.files(l).into_iter().filter(|p| std::fs::metadata(w.join(p)).is_ok_and(|m| m.len() > 0)).collect();
        let p = self.rng.pick(&files)?;
        let full = w.join(&p);
        let md = std::fs::metadata(&full).unwrap();
        let (mtime, atime) = (md.modified().unwrap(), md.accessed().unwrap());
        let mut data = std::fs::read(&full).unwrap();
        let flips = 1 + self.rng.below(3);
        for _ in 0..flips {
            let i = self.rng.below(data.len() as u64) as usize;
            data[i] = data[i].wrapping_add(1 + self.rng.below(255) as u8);
        }
        let via_rename = self.rng.chance(30);
        if via_rename {
            // `cp -p` / `rsync -a` style: a new inode renamed over the old one.
            let tmp = w.join(format!(".model-tmp-{}", self.next_n()));
            std::fs::write(&tmp, &data).unwrap();
            std::fs::set_permissions(&tmp, md.permissions()).unwrap();
            set_times(&tmp, atime, mtime);
            std::fs::rename(&tmp, &full).unwrap();
        } else {
            std::fs::write(&full, &data).unwrap();
            set_times(&full, atime, mtime);
        }
        Some(format!(
            "edit {} keeping its size ({} B) and mtime{}",
            show(p.as_os_str().as_bytes()),
            data.len(),
            if via_rename { ", renamed over" } else { "" }
        ))
    }

    fn touch(&mut self, l: &Listing) -> Option<String> {
        let p = self.rng.pick(&self.files(l))?;
        let full = self.w().join(&p);
        let data = std::fs::read(&full).unwrap();
        std::fs::write(&full, data).unwrap();
        Some(format!("rewrite {} with the same bytes", show(p.as_os_str().as_bytes())))
    }

    fn add_file(&mut self, l: &Listing) -> Option<String> {
        let rel = self.some_dir(l).join(self.new_name());
        let data = self.content();
        if !self.write_new(&rel, &data) {
            return None;
        }
        let exec = self.rng.chance(20);
        if exec {
            std::fs::set_permissions(self.w().join(&rel), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Some(format!("add {} ({} B{})", show(rel.as_os_str().as_bytes()), data.len(), if exec { ", +x" } else { "" }))
    }

    fn delete(&mut self, l: &Listing) -> Option<String> {
        let all: Vec<PathBuf> = self.files(l).into_iter().chain(self.links(l)).collect();
        let p = self.rng.pick(&all)?;
        std::fs::remove_file(self.w().join(&p)).unwrap();
        Some(format!("delete {}", show(p.as_os_str().as_bytes())))
    }

    fn delete_dir(&mut self, l: &Listing) -> Option<String> {
        let d = self.rng.pick(&self.dirs(l))?;
        std::fs::remove_dir_all(self.w().join(&d)).unwrap();
        Some(format!("delete dir {}", show(d.as_os_str().as_bytes())))
    }

    fn rename(&mut self, l: &Listing) -> Option<String> {
        let all: Vec<PathBuf> = self.files(l).into_iter().chain(self.links(l)).collect();
        let p = self.rng.pick(&all)?;
        let to = self.some_dir(l).join(self.new_name());
        if !self.write_new(&to, b"") {
            return None;
        }
        let w = self.w();
        std::fs::rename(w.join(&p), w.join(&to)).unwrap();
        Some(format!("rename {} -> {}", show(p.as_os_str().as_bytes()), show(to.as_os_str().as_bytes())))
    }

    fn case_rename(&mut self, l: &Listing) -> Option<String> {
        let w = self.w();
        let all: Vec<PathBuf> = self.files(l).into_iter().chain(self.links(l)).collect();
        let candidates: Vec<(PathBuf, PathBuf)> = all
            .iter()
            .filter_map(|p| {
                let name = p.file_name()?.to_str()?;
                let i = name.find(|c: char| c.is_ascii_alphabetic())?;
                let mut swapped = name.to_string();
                let c = name.as_bytes()[i] as char;
                let other = if c.is_ascii_lowercase() { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() };
                swapped.replace_range(i..=i, &other.to_string());
                let to = p.with_file_name(swapped);
                (std::fs::symlink_metadata(w.join(&to)).is_err()).then(|| (p.clone(), to))
            })
            .collect();
        let (from, to) = self.rng.pick(&candidates)?;
        std::fs::rename(w.join(&from), w.join(&to)).unwrap();
        Some(format!("case-only rename {} -> {}", show(from.as_os_str().as_bytes()), show(to.as_os_str().as_bytes())))
    }

    /// Somewhere inside the workspace for a link at `link` to point at.
    fn link_target(&mut self, l: &Listing, link: &Path) -> PathBuf {
        let all: Vec<PathBuf> =
            l.files.iter().chain(&l.dirs).chain(&l.links).filter(|p| !marked(p) && !p.starts_with(".git")).cloned().collect();
        let t = self.rng.pick(&all).unwrap_or_else(|| PathBuf::from("package.json"));
        if self.rng.chance(10) {
            return relative_target(link, Path::new("no-such-file"));
        }
        relative_target(link, &t)
    }

    fn file_to_symlink(&mut self, l: &Listing) -> Option<String> {
        let p = self.rng.pick(&self.files(l))?;
        let t = self.link_target(l, &p);
        let full = self.w().join(&p);
        std::fs::remove_file(&full).unwrap();
        std::os::unix::fs::symlink(&t, &full).unwrap();
        Some(format!("file {} becomes a symlink -> {}", show(p.as_os_str().as_bytes()), t.display()))
    }

    fn symlink_to_file(&mut self, l: &Listing) -> Option<String> {
        let p = self.rng.pick(&self.links(l))?;
        let data = self.content();
        let full = self.w().join(&p);
        std::fs::remove_file(&full).unwrap();
        std::fs::write(&full, &data).unwrap();
        Some(format!("symlink {} becomes a file ({} B)", show(p.as_os_str().as_bytes()), data.len()))
    }

    fn file_to_dir(&mut self, l: &Listing) -> Option<String> {
        let p = self.rng.pick(&self.files(l))?;
        let full = self.w().join(&p);
        std::fs::remove_file(&full).unwrap();
        std::fs::create_dir(&full).unwrap();
        let inner = format!("inner-{}.txt", self.next_n());
        let data = self.content();
        std::fs::write(full.join(&inner), &data).unwrap();
        Some(format!("file {} becomes a directory with {inner}", show(p.as_os_str().as_bytes())))
    }

    fn dir_to_file(&mut self, l: &Listing) -> Option<String> {
        let d = self.rng.pick(&self.dirs(l))?;
        let full = self.w().join(&d);
        std::fs::remove_dir_all(&full).unwrap();
        let data = self.content();
        std::fs::write(&full, &data).unwrap();
        Some(format!("directory {} becomes a file ({} B)", show(d.as_os_str().as_bytes()), data.len()))
    }

    fn dir_to_symlink(&mut self, l: &Listing) -> Option<String> {
        let d = self.rng.pick(&self.dirs(l))?;
        let full = self.w().join(&d);
        std::fs::remove_dir_all(&full).unwrap();
        let l = list_ws(&self.w());
        let t = self.link_target(&l, &d);
        std::os::unix::fs::symlink(&t, &full).unwrap();
        Some(format!("directory {} becomes a symlink -> {}", show(d.as_os_str().as_bytes()), t.display()))
    }

    fn add_symlink(&mut self, l: &Listing) -> Option<String> {
        // A new link, a link re-pointed, or a link where a directory was made.
        let want_retarget = self.rng.chance(35);
        let mut retarget = false;
        let at = match (want_retarget, self.rng.pick(&self.links(l))) {
            (true, Some(p)) => {
                std::fs::remove_file(self.w().join(&p)).unwrap();
                retarget = true;
                p
            }
            _ => {
                let rel = self.some_dir(l).join(format!("link-{}", self.new_name()));
                if !self.write_new(&rel, b"") {
                    return None;
                }
                std::fs::remove_file(self.w().join(&rel)).unwrap();
                rel
            }
        };
        // Now and then a Windows-style target: on Unix a backslash is part of a name, and the
        // target must arrive as written.
        let t = if self.rng.chance(15) { PathBuf::from("..\\lib\\a.txt") } else { self.link_target(l, &at) };
        std::os::unix::fs::symlink(&t, self.w().join(&at)).unwrap();
        Some(format!("{} symlink {} -> {}", if retarget { "re-point" } else { "add" }, show(at.as_os_str().as_bytes()), t.display()))
    }

    fn exec_bit(&mut self, l: &Listing) -> Option<String> {
        let p = self.rng.pick(&self.files(l))?;
        let w = self.w();
        let full = w.join(&p);
        let mode = std::fs::metadata(&full).unwrap().permissions().mode();
        let on = mode & 0o111 == 0;
        std::fs::set_permissions(&full, std::fs::Permissions::from_mode(if on { 0o755 } else { 0o644 })).unwrap();
        let staged = is_tracked(&w, &p) && self.rng.chance(50);
        if staged {
            let flag = if on { "--chmod=+x" } else { "--chmod=-x" };
            let ok = git_cmd(&w).args(["update-index", flag, "--"]).arg(&p).status().unwrap().success();
            assert!(ok, "git update-index {flag} failed");
        }
        Some(format!(
            "chmod {} {}{}",
            if on { "+x" } else { "-x" },
            show(p.as_os_str().as_bytes()),
            if staged { " (and in the index)" } else { "" }
        ))
    }

    fn empty_dir(&mut self, l: &Listing) -> Option<String> {
        let d = self.some_dir(l).join(format!("empty-{}", self.next_n()));
        if !self.write_new(&d.join("x"), b"") {
            return None;
        }
        std::fs::remove_file(self.w().join(&d).join("x")).unwrap();
        Some(format!("empty dir {}", show(d.as_os_str().as_bytes())))
    }

    fn large_file(&mut self, l: &Listing) -> Option<String> {
        let n = self.next_n();
        let rel = self.some_dir(l).join(format!("big-{n}.bin"));
        let size = (1 << 20) + self.rng.below(2 << 20) as usize;
        let data = noise(size, self.seed * 1000 + n);
        if !self.write_new(&rel, &data) {
            return None;
        }
        Some(format!("add large {} ({size} B)", show(rel.as_os_str().as_bytes())))
    }

    fn ignored_file(&mut self) -> Option<String> {
        let n = self.next_n();
        let rels = [
            "ignored.txt".to_string(),
            ".env".to_string(),
            "apps/api/.env".to_string(),
            format!("node_modules/pkg/gen-{n}.js"),
            format!("dist/out-{n}.js"),
            format!("lib/node_modules/dep-{n}/index.js"),
        ];
        let rel = PathBuf::from(self.rng.pick(&rels).unwrap());
        let data = self.content();
        if !self.write_new(&rel, &data) {
            return None;
        }
        Some(format!("write ignored {}", rel.display()))
    }

    /// An ignored file made tracked with `git add -f`: tracked, so it ships.
    fn force_add(&mut self) -> Option<String> {
        let n = self.next_n();
        let rels = [format!("dist/bundle-{n}.js"), "ignored.txt".to_string(), format!("node_modules/pkg/forced-{n}.js")];
        let rel = PathBuf::from(self.rng.pick(&rels).unwrap());
        let data = self.content();
        if !self.write_new(&rel, &data) {
            return None;
        }
        sh(&self.w(), &format!("git add -f -- '{}'", rel.display()));
        Some(format!("force-add ignored {}", rel.display()))
    }

    /// `git rm --cached`: the file stays, untracked (and if it matches .gitignore, ignored).
    fn untrack(&mut self) -> Option<String> {
        let w = self.w();
        let tracked: Vec<Vec<u8>> = git_z(&w, &["ls-files", "-z"])
            .into_iter()
            .filter(|p| {
                std::str::from_utf8(p).is_ok() && !marked(os(p)) && !protected(os(p)) && std::fs::symlink_metadata(w.join(os(p))).is_ok()
            })
            .collect();
        let p = self.rng.pick(&tracked)?;
        let ok = git_cmd(&w).args(["rm", "-q", "--cached", "--"]).arg(os(&p)).status().unwrap().success();
        assert!(ok, "git rm --cached {} failed", show(&p));
        Some(format!("untrack {}", show(&p)))
    }

    fn non_utf8(&mut self, l: &Listing) -> Option<String> {
        let n = self.next_n();
        let dir = self.some_dir(l);
        let mut bytes = dir.as_os_str().as_bytes().to_vec();
        if !bytes.is_empty() {
            bytes.push(b'/');
        }
        let (rel, what): (Vec<u8>, &str) = match self.rng.below(4) {
            0 => ([bytes, format!("nonutf8-{n}-caf").into_bytes(), b"\xe9.txt".to_vec()].concat(), "file"),
            1 => ([bytes, format!("nonutf8-{n}-").into_bytes(), b"\xff/inside.txt".to_vec()].concat(), "directory"),
            2 => ([format!("dist/nonutf8-{n}-caf").into_bytes(), b"\xe9.js".to_vec()].concat(), "ignored file"),
            _ => {
                let rel = [bytes, format!("nonutf8-{n}-link").into_bytes()].concat();
                if !self.write_new(os(&rel), b"") {
                    return None;
                }
                let full = self.w().join(os(&rel));
                std::fs::remove_file(&full).unwrap();
                std::os::unix::fs::symlink(OsStr::from_bytes(b"caf\xe9.txt"), &full).unwrap();
                return Some(format!("add symlink {} with a non-UTF-8 target", show(&rel)));
            }
        };
        let data = self.content();
        if !self.write_new(os(&rel), &data) {
            return None;
        }
        Some(format!("add non-UTF-8 {what} {}", show(&rel)))
    }

    /// Workspace files at the shared paths: they never ship, the shared links replace them.
    fn shared_paths_in_workspace(&mut self) -> Option<String> {
        let n = self.next_n();
        if self.rng.chance(50) {
            let data = format!("LOCAL_SECRET=leaked-{n}\n");
            if !self.write_new(Path::new(SHARED_FILE), data.as_bytes()) {
                return None;
            }
            sh(&self.w(), "git add -f -- apps/web/.env");
            Some("force-add a local apps/web/.env".into())
        } else {
            let rel = PathBuf::from(format!("storage/local-{n}.txt"));
            let data = self.content();
            if !self.write_new(&rel, &data) {
                return None;
            }
            Some(format!("add {} under the shared dir", rel.display()))
        }
    }

    // ---- faults ---------------------------------------------------------------------------

    fn fault(&mut self) {
        // Let the cache job finish first: damage must hit what the next deploy finds.
        self.env.wait_cache_job();
        let what = match self.rng.below(100) {
            0..=17 => self.damage_cache_file(Damage::Truncate),
            18..=31 => self.damage_cache_file(Damage::Delete),
            32..=43 => self.damage_cache_file(Damage::SameSize),
            44..=53 => self.manifest_drop(),
            54..=63 => self.manifest_corrupt(),
            64..=68 => self.drop_generation(),
            69..=84 => self.stale_lock(),
            _ => self.lose_client_cache(),
        };
        let what = what.unwrap_or_else(|| "fault: nothing to damage yet".into());
        self.begin(what);
    }

    fn damage_cache_file(&mut self, how: Damage) -> Option<String> {
        let which = if self.rng.chance(50) { "pristine" } else { "spare" };
        let root = self.base().join(".bst-cache").join(which);
        let l = list_ws(&root);
        let p = self.rng.pick(&l.files)?;
        let full = root.join(&p);
        let md = std::fs::metadata(&full).ok()?;
        let shown = show(p.as_os_str().as_bytes());
        Some(match how {
            Damage::Delete => {
                std::fs::remove_file(&full).ok()?;
                format!("fault: delete {which}/{shown}")
            }
            Damage::Truncate => {
                let len = md.len();
                let new = if len == 0 { 1 } else { self.rng.below(len) };
                std::fs::OpenOptions::new().write(true).open(&full).ok()?.set_len(new).ok()?;
                format!("fault: truncate {which}/{shown} from {len} to {new} B")
            }
            Damage::SameSize => {
                let mut data = std::fs::read(&full).ok()?;
                if data.is_empty() {
                    data.push(b'!');
                } else {
                    let i = self.rng.below(data.len() as u64) as usize;
                    data[i] = data[i].wrapping_add(1 + self.rng.below(255) as u8);
                }
                std::fs::write(&full, &data).ok()?;
                set_times(&full, md.accessed().ok()?, md.modified().ok()?);
                format!("fault: change a byte of {which}/{shown} (size and mtime kept)")
            }
        })
    }

    fn manifest(&self) -> Option<(PathBuf, Vec<u8>)> {
        let p = self.base().join(".bst-cache/manifest");
        let data = std::fs::read(&p).ok()?;
        Some((p, data))
    }

    fn manifest_drop(&mut self) -> Option<String> {
        let (p, data) = self.manifest()?;
        let mut recs: Vec<&[u8]> = data.split(|b| *b == 0).collect();
        // The magic first, an empty piece after the last NUL.
        if recs.len() < 3 {
            return None;
        }
        let i = 1 + self.rng.below(recs.len() as u64 - 2) as usize;
        let gone = recs.remove(i).to_vec();
        std::fs::write(&p, recs.join(&0u8)).ok()?;
        Some(format!("fault: drop manifest record {}", show(&gone)))
    }

    fn manifest_corrupt(&mut self) -> Option<String> {
        let (p, mut data) = self.manifest()?;
        let start = b"bst-manifest-2\0".len();
        if data.len() <= start {
            return None;
        }
        if self.rng.chance(50) {
            // A hash digit changed: still parses, claims other content.
            let recs: Vec<usize> =
                std::iter::once(start).chain(data.iter().enumerate().filter(|(_, b)| **b == 0).map(|(i, _)| i + 1)).collect();
            let at = self.rng.pick(&recs).filter(|&r| r < data.len())?;
            let tabs: Vec<usize> =
                data[at..].iter().take_while(|b| **b != 0).enumerate().filter(|(_, b)| **b == b'\t').map(|(i, _)| at + i).collect();
            let h = *tabs.get(2)? + 1 + self.rng.below(32) as usize;
            let old = *data.get(h)?;
            data[h] = if old == b'0' { b'1' } else { b'0' };
            std::fs::write(&p, &data).ok()?;
            Some(format!("fault: change a hash digit of manifest record at byte {at}"))
        } else {
            let i = start + self.rng.below((data.len() - start) as u64) as usize;
            data[i] ^= 1 + self.rng.below(255) as u8;
            std::fs::write(&p, &data).ok()?;
            Some(format!("fault: flip bits of manifest byte {i}"))
        }
    }

    fn drop_generation(&mut self) -> Option<String> {
        let which = self.rng.pick(&["generation", "spare.generation"]).unwrap();
        std::fs::remove_file(self.base().join(".bst-cache").join(which)).ok()?;
        Some(format!("fault: remove .bst-cache/{which}"))
    }

    /// The lock of a dead process on this machine: the next command breaks it by itself.
    fn stale_lock(&mut self) -> Option<String> {
        let lock = self.base().join(".bst-lock");
        // Before the first deploy rollback and prune stop at "nothing deployed", lock untouched.
        if !self.base().join("releases").is_dir() || lock.exists() {
            return None;
        }
        std::fs::create_dir(&lock).unwrap();
        std::fs::write(lock.join("owner"), dead_local_owner("ghost")).unwrap();
        Some("fault: stale lock of a dead local pid".into())
    }

    fn lose_client_cache(&mut self) -> Option<String> {
        let dir = self.env.dir.path().join("bst-cache");
        let names: Vec<String> =
            std::fs::read_dir(&dir).ok()?.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        let mut names: Vec<String> = names.into_iter().filter(|n| !n.starts_with("link-")).collect();
        names.sort();
        let all = self.rng.chance(40);
        let gone: Vec<String> = if all { names } else { self.rng.pick(&names).into_iter().collect() };
        if gone.is_empty() {
            return None;
        }
        for n in &gone {
            let _ = std::fs::remove_file(dir.join(n));
        }
        Some(format!("fault: client cache loses {}", gone.join(", ")))
    }
}

enum Damage {
    Truncate,
    Delete,
    SameSize,
}

fn set_times(p: &Path, atime: std::time::SystemTime, mtime: std::time::SystemTime) {
    let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
    f.set_times(std::fs::FileTimes::new().set_accessed(atime).set_modified(mtime)).unwrap();
}

fn commit(ws: &Path, msg: &str) {
    sh(ws, &format!("git add -A && git -c user.name=t -c user.email=t@example.com commit -q --allow-empty --no-verify -m '{msg}'"));
}
