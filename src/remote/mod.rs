//! The POSIX `sh` scripts bst runs on a target. A plain deploy is one remote command
//! ([`deploy_session`]); a build or a health gate adds one each (Mina's lesson: latency, not
//! bandwidth, dominates small deploys, and every remote command also starts the user's login
//! shell).
//!
//! The shell text lives in `sh/*.sh`, one file per concern, each shellchecked and run by the
//! tests below. A script is a [`Script`]: a prologue that sets every value as a quoted
//! variable, then those files as they are. Each file's header names the variables it needs.
//!
//! Layout under `<base>`: `releases/<id>`, `current -> releases/<id>` (relative, so the base
//! can move), `shared/`, `logs/`, and bst's own `.bst-lock/` and `.bst-incoming/<id>` (the
//! upload staging name that no command counts as a release).
//!
//! Size: about 540 lines of builders, each a few lines that set a script's values and name
//! its `.sh` parts; the other ~700 lines are the tests that run every one of those files in
//! `sh`. Split by concern, the builders would share the prologue type and the layout table.

use std::fmt::Write as _;

use crate::shell::quote;
use crate::workspace::Framing;

pub mod systemd;
pub mod watchdog;

use crate::layout::{CACHE_DIR, INCOMING_DIR, LOCK_DIR, TRASH_DIR};

/// The layout's names as the scripts see them: set from the constants, never spelled in a
/// script.
const LAYOUT: &[(&str, &str)] = &[
    ("bst_lock", LOCK_DIR),
    ("bst_incoming", INCOMING_DIR),
    ("bst_trash", TRASH_DIR),
    ("bst_cache", CACHE_DIR),
    ("bst_meta", crate::layout::META_FILE),
    ("bst_meta_tmp", crate::layout::META_TMP),
    ("bst_upload", crate::layout::UPLOAD_DIR),
    ("bst_complete", crate::layout::COMPLETE_MARKER),
];

const ABORT: &str = include_str!("sh/abort.sh");
const AFTER_DROP: &str = include_str!("sh/after_drop.sh");
const AUDIT: &str = include_str!("sh/audit.sh");
const BREAK_STALE: &str = include_str!("sh/break_stale.sh");
const BUILD: &str = include_str!("sh/build.sh");
const BUILD_START: &str = include_str!("sh/build_start.sh");
const CACHE_JOB_SH: &str = include_str!("sh/cache_job.sh");
const CACHE_START: &str = include_str!("sh/cache_start.sh");
const CACHE_WAIT: &str = include_str!("sh/cache_wait.sh");
const CHECK_START: &str = include_str!("sh/check_start.sh");
const CLOCK: &str = include_str!("sh/clock.sh");
const COMPLETE: &str = include_str!("sh/complete.sh");
const DETACHED_SH: &str = include_str!("sh/detached.sh");
const FINISH_META: &str = include_str!("sh/finish_meta.sh");
const FORBIDDEN: &str = include_str!("sh/forbidden.sh");
const FORCE_UNLOCK: &str = include_str!("sh/force_unlock.sh");
const GUARD: &str = include_str!("sh/guard.sh");
const HAS_LAYOUT: &str = include_str!("sh/has_layout.sh");
const IN_BASE: &str = include_str!("sh/in_base.sh");
const LISTINGS: &str = include_str!("sh/listings.sh");
const LOCK: &str = include_str!("sh/lock.sh");
const MARK: &str = include_str!("sh/mark.sh");
const META: &str = include_str!("sh/meta.sh");
const OWNED: &str = include_str!("sh/owned.sh");
const PREFLIGHT: &str = include_str!("sh/preflight.sh");
const PROBE: &str = include_str!("sh/probe.sh");
const PRUNE: &str = include_str!("sh/prune.sh");
const PRISTINE_CHECK: &str = include_str!("sh/pristine_check.sh");
const READ_ENV: &str = include_str!("sh/read_env.sh");
const REAL_PATH: &str = include_str!("sh/real_path.sh");
const REGISTER: &str = include_str!("sh/register.sh");
const SESSION: &str = include_str!("sh/session.sh");
const SEED: &str = include_str!("sh/seed.sh");
const SESSION_MANIFEST: &str = include_str!("sh/session_manifest.sh");
const SIBLINGS: &str = include_str!("sh/siblings.sh");
const STAGING: &str = include_str!("sh/staging.sh");
const STATE: &str = include_str!("sh/state.sh");
const STRICT: &str = include_str!("sh/strict.sh");
const SWITCH: &str = include_str!("sh/switch.sh");
const UNLOCK: &str = include_str!("sh/unlock.sh");
const UPLOAD: &str = include_str!("sh/upload.sh");
const UPLOAD_DELTA: &str = include_str!("sh/upload_delta.sh");
const UPLOAD_START: &str = include_str!("sh/upload_start.sh");
const USE_CHECK: &str = include_str!("sh/use_check.sh");
const WRITE_ENV: &str = include_str!("sh/write_env.sh");

/// One script: a prologue setting every value as a quoted variable, then parts, each a file
/// of `sh/` as it is. The only way a value reaches a script, so no value is ever shell text.
#[must_use]
pub(crate) struct Script {
    vars: String,
    parts: String,
}

impl Script {
    /// A script that runs after another set `B` (a fragment of a larger script).
    pub(crate) fn new() -> Self {
        Script { vars: String::new(), parts: String::new() }
    }

    /// A script of its own for the target whose base is `base` (`B`).
    pub(crate) fn at(base: &str) -> Self {
        Script::new().var("B", base)
    }

    pub(crate) fn var(mut self, name: &str, value: &str) -> Self {
        let _ = writeln!(self.vars, "{name}={}", quote(value));
        self
    }

    /// A list: the quoted words of its values, for a part to take apart with
    /// `eval "some_function $name"` (POSIX sh has no arrays). Each value stays one argument,
    /// whatever it holds.
    pub(crate) fn list<S: AsRef<str>>(self, name: &str, values: impl IntoIterator<Item = S>) -> Self {
        let words: Vec<String> = values.into_iter().map(|v| quote(v.as_ref()).into_owned()).collect();
        self.var(name, &words.join(" "))
    }

    /// A file of `sh/`, without its header: the header is for the reader of the file.
    pub(crate) fn part(mut self, sh: &str) -> Self {
        let mut body = sh;
        while body.starts_with('#') {
            body = body.split_once('\n').map_or("", |(_, rest)| rest);
        }
        self.parts.push_str(body);
        self
    }

    fn part_if(self, cond: bool, sh: &str) -> Self {
        if cond {
            self.part(sh)
        } else {
            self
        }
    }

    pub(crate) fn build(self) -> String {
        let mut s = self.vars;
        // Only the names the parts use: `-v` shows every script, and a short one reads better.
        for (name, value) in LAYOUT {
            if self.parts.contains(&format!("${name}")) || self.parts.contains(&format!("${{{name}")) {
                let _ = writeln!(s, "{name}={}", quote(value));
            }
        }
        s + &self.parts
    }
}

pub fn read_state(base: &str) -> String {
    Script::at(base).part(STATE).build()
}

/// Takes the lock with an atomic `mkdir` and records who holds it. Prints `LOCKED` then the
/// state listing, or `HELD <owner json>`, or `NOBASE` when `create` is off and nothing was
/// ever deployed. Staging leftovers of dead runs are removed once we hold the lock.
pub fn lock(base: &str, owner_json: &str, create: bool, forbidden: &[String]) -> String {
    lock_script(base, owner_json, create, None, forbidden).build()
}

/// A deploy in one remote command. The script takes the lock, waits for the previous
/// deploy's cache job (so the state names a complete pristine copy or none), prints the state
/// and the pristine copy's manifest (`BST-MANIFEST-GZ <bytes>` then gzip data), then
/// `BST-READY`, and reads the rest of its own script from stdin up to a `BST-GO` line; the
/// upload stream follows it. If the client goes away before `BST-GO`, it unlocks and exits.
///
/// `siblings`: the base of each sibling target and the generation of its manifest this client
/// has (`""`: none). Without a pristine copy of its own, the state names the first sibling
/// whose copy is proven and sends its manifest instead (see `siblings.sh`,
/// [`sibling_report`]): a first deploy can then be a delta seeded from it, in the same command.
pub fn deploy_session(
    base: &str,
    owner_json: &str,
    token: &str,
    known_generation: &str,
    forbidden: &[String],
    siblings: &[(String, String)],
) -> String {
    let s = lock_script(base, owner_json, true, Some(known_generation), forbidden);
    let s = if siblings.is_empty() { s } else { s.list("bst_siblings", siblings.iter().flat_map(|(b, g)| [b, g])).part(SIBLINGS) };
    s.var("bst_token", token).part(SESSION).part(UNLOCK).build()
}

/// What a session's state says of the siblings (`siblings.sh`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SiblingReport {
    /// The sibling (index into the list sent) whose manifest follows the state, and its
    /// generation.
    pub offered: Option<(usize, String)>,
    /// Siblings passed over, and why.
    pub passed: Vec<(usize, String)>,
}

pub fn sibling_report(listing: &str) -> SiblingReport {
    let mut r = SiblingReport::default();
    for line in listing.lines() {
        let parse = |rest: &str| rest.split_once(' ').and_then(|(i, t)| Some((i.parse::<usize>().ok()?, t.to_string())));
        if let Some((i, g)) = line.strip_prefix("SG ").and_then(parse) {
            if r.offered.is_none() && crate::release::is_generation(&g) {
                r.offered = Some((i, g));
            }
        } else if let Some(passed) = line.strip_prefix("SN ").and_then(parse) {
            r.passed.push(passed);
        }
    }
    r
}

/// Splits a deploy session's first answer into the state listing and the manifest, once the
/// answer is complete (`None` until then).
pub fn split_session_head(buf: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    const MARK: &[u8] = b"\nBST-MANIFEST-GZ ";
    const READY: &[u8] = b"BST-READY\n";
    if let Some(i) = buf.windows(MARK.len()).position(|w| w == MARK) {
        let rest = &buf[i + MARK.len()..];
        let nl = rest.iter().position(|&b| b == b'\n')?;
        let len: usize = std::str::from_utf8(&rest[..nl]).ok()?.trim().parse().ok()?;
        let blob = rest.get(nl + 1..nl + 1 + len)?;
        (rest.get(nl + 1 + len..)? == READY).then_some((&buf[..=i], Some(blob)))
    } else {
        let listing = buf.strip_suffix(READY)?;
        (listing.is_empty() || listing.ends_with(b"\n")).then_some((listing, None))
    }
}

/// `deploy`: `Some` with the generation whose manifest the client already has (`""` for
/// none): the manifest is sent only when the server's differs. The spare's check starts
/// first thing (see `check_start.sh`).
fn lock_script(base: &str, owner_json: &str, create: bool, deploy: Option<&str>, forbidden: &[String]) -> Script {
    // Before anything is created: `mkdir -p` through a symlinked parent would already write
    // inside a forbidden path.
    let s = Script::at(base).var("bst_owner", owner_json).var("bst_create", if create { "1" } else { "" });
    let s = forbidden_parts(s, forbidden).part_if(deploy.is_some(), LISTINGS).part_if(deploy.is_some(), CHECK_START).part(LOCK);
    match deploy {
        Some(known) => s.var("bst_job_name", CACHE_JOB).part(CACHE_WAIT).part(STATE).var("bst_known", known).part(SESSION_MANIFEST),
        None => s.part(STATE),
    }
}

/// Refuses a base that is, once resolved on the server, at or under a forbidden path, itself
/// resolved there (a forbidden path may be a symlink, and a base that does not exist yet may
/// sit under a symlinked parent): prints `FORBIDDEN <index>`, `REAL_BASE`, `REAL_FORBIDDEN`
/// and stops before anything is created.
fn forbidden_parts(s: Script, forbidden: &[String]) -> Script {
    if forbidden.is_empty() {
        s
    } else {
        s.list("bst_forbidden", forbidden).part(REAL_PATH).part(FORBIDDEN)
    }
}

/// The name the cache job runs under, so a pid file left by a reboot never makes us wait
/// for (or signal) an unrelated process that reused the pid.
const CACHE_JOB: &str = "bst-cache-job";

/// Starts the cache job (`cache_job.sh`) detached, while the lock is still held; it proves
/// the pristine copy before it writes the `generation` a delta patches from.
pub fn start_cache_job(generation: &str) -> String {
    let job = Script::new()
        .var("bst_generation", generation)
        .var("bst_verify", VERIFY_PRISTINE)
        .var("bst_tgz", untar(Framing::Gzip(1)).1)
        .var("bst_tar", untar(Framing::Tar).1)
        .part(LISTINGS)
        .part(CACHE_JOB_SH)
        .build();
    Script::new().var("bst_job", &job).var("bst_job_name", CACHE_JOB).part(CACHE_START).build()
}

/// The pristine copy's proof, in perl: see the script's header.
const VERIFY_PRISTINE: &str = include_str!("../scripts/verify-pristine.pl");

/// Removes the lock only if it is still ours: a lock broken and retaken by someone else
/// must survive our cleanup.
pub fn unlock_fragment(token: &str) -> String {
    Script::new().var("bst_token", token).part(UNLOCK).build()
}

pub fn unlock(base: &str, token: &str) -> String {
    Script::at(base).var("bst_token", token).part(UNLOCK).build()
}

/// The owner record names `token`, as a whole JSON member (see `owned.sh`).
fn owned_by(s: Script, token: &str) -> Script {
    let member = serde_json::to_string(token).unwrap_or_default();
    s.var("bst_member", &format!("\"token\":{member}")).part(OWNED)
}

/// Breaks a lock the client judged stale, only if it is still that lock (its owner record
/// names `token`): prints `BROKEN`, `GONE` or `HELD <owner>` (see `break_stale.sh`). `nonce`
/// makes the aside name this client's own (with the script's pid).
pub fn break_stale(base: &str, token: &str, nonce: &str) -> String {
    owned_by(Script::at(base), token).var("bst_nonce", nonce).part(BREAK_STALE).build()
}

/// `bst unlock`: breaks the lock whatever holds it, printing whose it was (`HELD <owner>`)
/// or `FREE`.
pub fn force_unlock(base: &str, nonce: &str) -> String {
    Script::at(base).var("bst_nonce", nonce).part(FORCE_UNLOCK).build()
}

/// Run over a new connection after the deploy's own dropped: waits up to `wait_secs` while
/// this run's script is still at work, then prints `C <current>`, `M <release id's meta>`,
/// `HELD` while the lock is still this run's, and `RUNNING` if the script had not finished.
pub fn after_drop(base: &str, token: &str, id: &str, wait_secs: u64) -> String {
    owned_by(Script::at(base), token).var("bst_id", id).var("bst_ticks", &(wait_secs * 10).to_string()).part(AFTER_DROP).build()
}

/// `../` enough times to get from a path inside `releases/<id>/` back to `<base>`.
fn up_to_base(rel_path: &str) -> String {
    "../".repeat(rel_path.matches('/').count() + 2)
}

/// `tar`'s extract flags and the name the tee'd archive is kept under, for a stream framed
/// as `framing`.
fn untar(framing: Framing) -> (&'static str, &'static str) {
    match framing {
        Framing::Gzip(_) => ("-xzf", "snapshot.tgz"),
        Framing::Tar => ("-xf", "snapshot.tar"),
    }
}

/// Receives the snapshot on stdin into the staging dir, links shared paths, writes the
/// pending meta, and only then renames the staging dir to `releases/<id>`. When the stream
/// carries a manifest, the stream is also kept for the cache job (see `upload.sh`).
pub fn upload(base: &str, id: &str, shared_files: &[String], shared_dirs: &[String], meta_json: &str, framing: Framing) -> String {
    let (x, archive) = untar(framing);
    let s = upload_start(base, id, false).var("bst_x", x).var("bst_archive", archive).part(COMPLETE).part(UPLOAD);
    staging(s, shared_files, shared_dirs, meta_json).build()
}

/// The start both uploads share (see `upload_start.sh`) and what a delta may patch from
/// (`use_check.sh`, `pristine_check.sh`).
fn upload_start(base: &str, id: &str, delta: bool) -> Script {
    Script::at(base).var("bst_id", id).part(REGISTER).part(UPLOAD_START).part(LISTINGS).part(USE_CHECK).part_if(delta, PRISTINE_CHECK)
}

/// Exit status of a delta upload whose pristine copy is not the one the client diffed
/// against: the client then sends a full snapshot instead.
pub const DELTA_STALE: i32 = 75;

/// Receives only what changed and applies it to the pristine copy and the spare (see
/// `upload_delta.sh`). With `seed` (a sibling target's base), the pristine copy is first a
/// copy of the sibling's, proven unchanged around the copy (see `seed.sh`).
#[allow(clippy::too_many_arguments)]
pub fn upload_delta(
    base: &str,
    id: &str,
    generation: &str,
    shared_files: &[String],
    shared_dirs: &[String],
    meta_json: &str,
    framing: Framing,
    seed: Option<&str>,
) -> String {
    let s = upload_start(base, id, true).var("bst_generation", generation).var("bst_stale", &DELTA_STALE.to_string());
    let s = match seed {
        Some(sibling) => s.var("bst_seed_base", sibling).part(SEED),
        None => s,
    };
    let s = s.var("bst_x", untar(framing).0).part(COMPLETE).part(UPLOAD_DELTA);
    staging(s, shared_files, shared_dirs, meta_json).build()
}

/// The common tail of both uploads: shared links, pending meta, rename into `releases/`.
/// Each shared path is three words: its kind, the path, and the link's target.
fn staging(s: Script, shared_files: &[String], shared_dirs: &[String], meta_json: &str) -> Script {
    let shared = shared_files.iter().map(|p| ("file", p)).chain(shared_dirs.iter().map(|p| ("dir", p)));
    let words: Vec<String> = shared.flat_map(|(kind, p)| [kind.to_string(), p.clone(), format!("{}shared/{p}", up_to_base(p))]).collect();
    s.list("bst_shared", &words).var("bst_meta_json", meta_json).part(META).part(STAGING)
}

/// Runs install and build in the release dir in the user's login shell (so nvm, pnpm and
/// friends are on PATH), streaming output and saving it to `logs/<id>.log`, in its own
/// session with its pid recorded (see `build.sh`, `build_start.sh`).
pub fn build(base: &str, id: &str, target: &str, steps: &[&str]) -> String {
    let job = Script::at(base).var("bst_id", id).var("bst_target", target).list("bst_steps", steps).part(BUILD).build();
    Script::at(base).var("bst_id", id).var("bst_job", &job).part(REGISTER).part(BUILD_START).build()
}

/// Appends one audit line when the target has a layout (service actions on a target that was
/// never deployed to leave no trace rather than creating directories).
pub fn append_audit(base: &str, line_json: &str) -> String {
    Script::at(base).var("bst_audit", line_json).part(HAS_LAYOUT).part(AUDIT).build()
}

/// What the scripts that upload, switch and prune print back, read in one place: each line
/// is one of these, or not bst's (a build's output, say) and ignored.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reply {
    /// `SWITCHED`: `current` points at the release, verified (`switch.sh`).
    pub switched: bool,
    /// `P <id>`: a release pruned (`prune.sh`).
    pub pruned: Vec<String>,
    /// `W <text>`: for the operator (`staging.sh`, `prune.sh`).
    pub warnings: Vec<String>,
    /// `<TAG> <ms>`: the script's phase timings ([`clock_mark`]).
    pub marks: Vec<(String, u64)>,
}

impl Reply {
    pub fn parse(stdout: &str) -> Reply {
        let mut r = Reply::default();
        for line in stdout.lines() {
            if line == "SWITCHED" {
                r.switched = true;
            } else if let Some(id) = line.strip_prefix("P ") {
                r.pruned.push(id.to_string());
            } else if let Some(w) = line.strip_prefix("W ") {
                r.warnings.push(w.to_string());
            } else if let Some((tag, ms)) = line.split_once(' ') {
                let is_tag = !tag.is_empty() && tag.bytes().all(|b| b.is_ascii_uppercase());
                if let (true, Ok(ms)) = (is_tag, ms.parse::<u64>()) {
                    r.marks.push((tag.to_string(), ms));
                }
            }
        }
        r
    }

    /// The milliseconds the script had run when it printed `tag`.
    pub fn mark(&self, tag: &str) -> Option<u64> {
        self.marks.iter().find(|(t, _)| t == tag).map(|&(_, ms)| ms)
    }
}

/// The prune step (see `prune.sh`): nothing when there is nothing to prune.
fn prune_parts(s: Script, ids: &[String], background: bool) -> Script {
    if ids.is_empty() {
        return s;
    }
    s.list("bst_prune", ids).var("bst_background", if background { "1" } else { "" }).part(PRUNE)
}

/// The end of a good deploy: meta `ok` first (so `current` only ever points at an ok
/// release), then the switch; pruning and unlocking after it are best effort and can no
/// longer fail the deploy.
/// With `keep_lock` the lock stays held (the health gate runs under it).
pub fn finish_deploy(base: &str, id: &str, meta_json: &str, prune: &[String], audit_json: &str, token: &str, keep_lock: bool) -> String {
    let s = Script::at(base).var("bst_id", id);
    let placeholder = format!("\"duration_ms\":{DURATION_PLACEHOLDER}");
    // Run inside one script with the upload: the duration is only known there.
    let s = match meta_json.split_once(&placeholder) {
        Some((pre, post)) => s.var("bst_timed", "1").var("bst_meta_pre", &format!("{pre}\"duration_ms\":")).var("bst_meta_post", post),
        None => s.var("bst_timed", "").var("bst_meta_json", meta_json),
    };
    let s = s.part(DETACHED_SH).part(REGISTER).part(STRICT).part(META).part(FINISH_META).part(SWITCH);
    let s = prune_parts(s, prune, true).var("bst_audit", audit_json).part(AUDIT);
    unlock_unless(s, keep_lock, token).build()
}

fn unlock_unless(s: Script, keep_lock: bool, token: &str) -> Script {
    if keep_lock {
        s
    } else {
        s.var("bst_token", token).part(UNLOCK)
    }
}

/// Stands for `duration_ms` in a meta written by a script that also uploads: the script
/// fills in the real value when it gets there.
pub const DURATION_PLACEHOLDER: u64 = 987_654_321_987;

/// Milliseconds since the epoch in the script (`bst_ms`), `T0` when the script started and
/// `T_BEFORE` the client's time spent before it.
pub fn clock_prologue(before_ms: u64) -> String {
    Script::new().var("T_BEFORE", &before_ms.to_string()).part(CLOCK).build()
}

/// Prints `<tag> <ms since the script started>` for the client's phase timings.
pub fn clock_mark(tag: &str) -> String {
    Script::new().var("bst_tag", tag).part(MARK).build()
}

/// After a failed deploy: drop the staging dir, mark the release failed unless it is live,
/// release the lock.
pub fn abort_deploy(base: &str, id: &str, failed_meta_json: &str, audit_json: &str, token: &str) -> String {
    Script::at(base)
        .var("bst_id", id)
        .var("bst_failed_meta", failed_meta_json)
        .var("bst_audit", audit_json)
        .var("bst_token", token)
        .part(DETACHED_SH)
        .part(REGISTER)
        .part(META)
        .part(ABORT)
        .part(AUDIT)
        .part(UNLOCK)
        .build()
}

/// With `keep_lock` the lock stays held (the health gate runs under it).
pub fn rollback(base: &str, id: &str, audit_json: &str, token: &str, keep_lock: bool) -> String {
    let s = Script::at(base).var("bst_id", id).var("bst_audit", audit_json);
    let s = s.part(DETACHED_SH).part(REGISTER).part(STRICT).part(SWITCH).part(AUDIT);
    unlock_unless(s, keep_lock, token).build()
}

/// Switches `current` under a lock the caller keeps holding and a watchdog it armed (the
/// drill's steps): holds the watchdog's `busy` mark meanwhile, and does nothing (prints
/// `DECIDED`) once the watchdog has taken over.
pub fn guarded_switch(base: &str, id: &str, audit_json: &str) -> String {
    let s = Script::at(base).var("bst_id", id).var("bst_audit", audit_json);
    s.part(DETACHED_SH).part(REGISTER).part(GUARD).part(STRICT).part(SWITCH).part(AUDIT).build()
}

/// Facts for `bst check`, one `KEY value` line each. `units`: each unit's name and the
/// command printing its load state. `tools`: the commands `install` and `build` start,
/// looked up in the login shell the build runs them in ([`build`]), with their versions
/// (see [`probe_script`]).
pub fn preflight(base: &str, units: &[(String, String)], forbidden: &[String], tools: &[String]) -> String {
    let s = Script::at(base)
        .list("bst_forbidden", forbidden)
        .list("bst_units", units.iter().flat_map(|(name, cmd)| [name, cmd]))
        .part(&systemd::prelude())
        .part(REAL_PATH)
        .part(PREFLIGHT);
    if tools.is_empty() {
        s.build()
    } else {
        s.var("bst_probe", &probe_script(tools)).part(PROBE).build()
    }
}

/// Tools whose version is worth showing, and the flag that prints it. Only these are run:
/// any other command word is only looked up, never executed.
const VERSIONED: &[&str] = &["node", "pnpm", "npm", "yarn", "bun", "deno"];

/// The login shell's script for `probe.sh`: per tool `BSTTOOL <name>`, the path `command -v`
/// gives (none: not found), `BSTVER`, its version. Built here, not in a `.sh`: it runs in
/// the user's `$SHELL`, which need not be sh, so it is one line of commands that every
/// shell reads alike, with no variables or functions of sh's.
fn probe_script(tools: &[String]) -> String {
    let mut inner = String::new();
    for t in tools {
        let q = quote(t);
        let _ = write!(inner, "echo BSTTOOL {q}; command -v {q}; echo BSTVER; ");
        if VERSIONED.contains(&t.as_str()) {
            let _ = write!(inner, "{q} -v </dev/null 2>/dev/null; ");
        }
    }
    inner.push_str("echo BSTEND");
    inner
}

/// `background`: the deletion goes on after the command returns (a deploy's operator is
/// not kept waiting for `rm -rf`; `bst prune`'s may want the space back first).
pub fn prune(base: &str, ids: &[String], token: &str, background: bool) -> String {
    let s = Script::at(base).part(DETACHED_SH).part(REGISTER).part(IN_BASE);
    prune_parts(s, ids, background).var("bst_token", token).part(UNLOCK).build()
}

/// The end of a gate that passed: the confirmation the watchdog waits for, then the prune
/// and the unlock. Stops with `NOT-CONFIRMED` (lock left to the watchdog) when the watchdog
/// decided first.
pub fn confirm_and_prune(base: &str, ids: &[String], token: &str, audit_json: &str) -> String {
    let s = Script::at(base).part(DETACHED_SH).part(REGISTER).part(IN_BASE).part(&watchdog::confirm_fragment(token));
    let s = if audit_json.is_empty() { s } else { s.var("bst_audit", audit_json).part(AUDIT) };
    prune_parts(s, ids, true).var("bst_token", token).part(UNLOCK).build()
}

/// Reads `<base>/<rel>` and counts its `.bak.*` backups: `FOUND <backups>` then the bytes, or
/// `MISSING <backups>`.
pub fn read_env(base: &str, rel: &str) -> String {
    Script::at(base).var("bst_rel", rel).part(READ_ENV).build()
}

/// Writes stdin to `<base>/shared/<rel>` atomically after a backup, keeping the newest `keep`
/// backups, then releases the lock: prints `BACKUP <path>` and `PRUNED <n>` (see
/// `write_env.sh`).
pub fn write_env(base: &str, rel: &str, stamp: &str, keep: usize, audit_json: &str, token: &str) -> String {
    Script::at(base)
        .var("bst_rel", rel)
        .var("bst_stamp", stamp)
        .var("bst_keep", &keep.to_string())
        .var("bst_audit", audit_json)
        .var("bst_token", token)
        .part(REGISTER)
        .part(WRITE_ENV)
        .part(AUDIT)
        .part(UNLOCK)
        .build()
}

/// A base with `logs/`, `shared/` and the given releases, each with a meta of that status,
/// and `current` on the first one: the layout the tests of every script here start from.
#[cfg(all(test, unix))]
fn layout_with(base: &std::path::Path, releases: &[(&str, &str)]) {
    std::fs::create_dir_all(base.join("logs")).unwrap();
    std::fs::create_dir_all(base.join("shared")).unwrap();
    for (id, status) in releases {
        std::fs::create_dir_all(base.join("releases").join(id)).unwrap();
        std::fs::write(base.join("releases").join(id).join(".release-meta"), format!("{{\"id\":\"{id}\",\"status\":\"{status}\"}}\n"))
            .unwrap();
    }
    std::os::unix::fs::symlink(format!("releases/{}", releases[0].0), base.join("current")).unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `script` in `sh` with `stdin`: its exit code, stdout and stderr.
    #[cfg(unix)]
    fn run_sh(script: &str, stdin: &[u8]) -> (i32, String, String) {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let mut c = Command::new("sh")
            .arg("-c")
            .arg(script)
            .env("SHELL", "/bin/sh")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // A script may exit before it reads all of its input.
        let _ = c.stdin.take().unwrap().write_all(stdin);
        let out = c.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// A release upload of `files` (path, bytes) with the marker and `upload` entries under
    /// `.bst-upload/`, as a plain tar stream.
    #[cfg(unix)]
    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let d = tempfile::tempdir().unwrap();
        for (p, bytes) in files {
            let path = d.path().join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        }
        let out = std::process::Command::new("tar").arg("-cf").arg("-").arg("-C").arg(d.path()).arg(".").output().unwrap();
        assert!(out.status.success());
        out.stdout
    }

    #[cfg(unix)]
    #[test]
    fn shared_links_are_relative_to_the_base() {
        assert_eq!(up_to_base(".env"), "../../");
        assert_eq!(up_to_base("apps/api/.env"), "../../../../");
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("it's base");
        std::fs::create_dir_all(base.join("releases")).unwrap();
        let id = "20260220T051228Z";
        let stream = tar_of(&[("apps/api/.env", b"committed"), (crate::layout::COMPLETE_MARKER, b""), (".bst-upload/manifest", b"m")]);
        let script =
            upload(base.to_str().unwrap(), id, &["apps/api/.env".into()], &["storage".into()], "{\"status\":\"pending\"}", Framing::Tar);
        let (rc, out, err) = run_sh(&script, &stream);
        assert_eq!(rc, 0, "{err}");
        assert_eq!(out, "W shared file shared/apps/api/.env does not exist yet\n");
        assert_eq!(Reply::parse(&out).warnings, ["shared file shared/apps/api/.env does not exist yet"]);
        let rel = base.join("releases").join(id);
        assert_eq!(std::fs::read_link(rel.join("apps/api/.env")).unwrap(), std::path::Path::new("../../../../shared/apps/api/.env"));
        assert_eq!(std::fs::read_link(rel.join("storage")).unwrap(), std::path::Path::new("../../shared/storage"));
        assert!(base.join("shared/storage").is_dir() && base.join("shared/apps/api").is_dir());
        assert_eq!(std::fs::read_to_string(rel.join(crate::layout::META_FILE)).unwrap(), "{\"status\":\"pending\"}\n");
        // A shared path under a parent the release has as a symlink is refused before the switch.
        let src = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("../../shared", src.path().join("apps")).unwrap();
        std::fs::create_dir_all(src.path().join(".bst-upload")).unwrap();
        std::fs::write(src.path().join(crate::layout::COMPLETE_MARKER), "").unwrap();
        std::fs::write(src.path().join(".bst-upload/manifest"), "m").unwrap();
        let with_link = std::process::Command::new("tar").args(["-cf", "-", "-C"]).arg(src.path()).arg(".").output().unwrap().stdout;
        let script = upload(base.to_str().unwrap(), "20260221T051228Z", &["apps/api/.env".into()], &[], "{}", Framing::Tar);
        let (rc, _, err) = run_sh(&script, &with_link);
        assert_eq!(rc, 1);
        assert!(err.contains("shared path apps/api/.env: apps in the release is a symlink"), "{err}");
        assert!(!base.join("releases/20260221T051228Z").exists());
    }

    #[test]
    fn every_value_is_quoted() {
        let evil = "/srv/it's $(reboot)";
        for script in [
            read_state(evil),
            lock(evil, "{\"u\":\"$(x)\"}", true, &["/x'$(y)".into()]),
            unlock(evil, "t'ok"),
            break_stale(evil, "t'ok", "n'$(x)"),
            force_unlock(evil, "n'$(x)"),
            prune(evil, &[], "t", false),
        ] {
            assert!(script.starts_with("B='/srv/it'\\''s $(reboot)'\n"), "{script}");
            assert!(!script.contains("{\"u\":\"$(x)\"}'") || script.contains("'{\"u\":\"$(x)\"}'"));
        }
    }

    /// Only the lock judged stale is broken; a lock of another token, or none, is left.
    #[cfg(unix)]
    #[test]
    fn breaking_a_stale_lock_takes_only_that_lock() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("it's");
        let lock = base.join(LOCK_DIR);
        let run = |script: String| {
            let out = std::process::Command::new("sh").arg("-c").arg(script).output().unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let b = base.to_str().unwrap();
        std::fs::create_dir_all(&lock).unwrap();
        std::fs::write(lock.join("owner"), "{\"token\":\"tok-12\"}\n").unwrap();
        // A token that only contains the judged one is another lock.
        assert_eq!(run(break_stale(b, "tok-1", "n")), "HELD {\"token\":\"tok-12\"}\n");
        assert!(lock.join("owner").exists());
        assert_eq!(run(break_stale(b, "tok-12", "n")), "BROKEN\n");
        assert!(!lock.exists());
        assert_eq!(run(break_stale(b, "tok-12", "n")), "GONE\n");
        assert_eq!(std::fs::read_dir(&base).unwrap().count(), 0, "nothing left aside");
        std::fs::create_dir_all(&lock).unwrap();
        std::fs::write(lock.join("owner"), "{\"token\":\"x\"}\n").unwrap();
        assert_eq!(run(force_unlock(b, "n")), "HELD {\"token\":\"x\"}\n");
        assert_eq!(run(force_unlock(b, "n")), "FREE\n");
        assert_eq!(std::fs::read_dir(&base).unwrap().count(), 0);
    }

    #[cfg(unix)]
    #[test]
    fn build_steps_run_verbatim_in_order_and_stop_at_the_first_failure() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("it's base");
        let id = "20260220T051228Z";
        std::fs::create_dir_all(base.join("releases").join(id)).unwrap();
        std::fs::create_dir_all(base.join("logs")).unwrap();
        let base = base.to_str().unwrap();
        let script = build(base, id, "t", &["echo '$HOME' \"$BST_RELEASE_ID\" > out.txt", "false", "touch never"]);
        let st = std::process::Command::new("sh").arg("-c").arg(&script).env("SHELL", "/bin/sh").status().unwrap();
        assert_eq!(st.code(), Some(1));
        let rel = std::path::Path::new(base).join("releases").join(id);
        assert_eq!(std::fs::read_to_string(rel.join("out.txt")).unwrap(), format!("$HOME {id}\n"));
        assert!(!rel.join("never").exists());
        let log = std::fs::read_to_string(std::path::Path::new(base).join("logs").join(format!("{id}.log"))).unwrap();
        assert!(log.contains("==> false"), "{log}");
        assert!(!std::path::Path::new(base).join("logs").join(format!(".{id}.pid")).exists());
    }

    #[test]
    fn session_head_is_complete_only_with_its_whole_manifest() {
        let head = b"LOCKED\nB\nG 20260220T051228Z\nBST-MANIFEST-GZ 5\nab\ncdBST-READY\n";
        let (listing, m) = split_session_head(head).unwrap();
        assert_eq!(listing, b"LOCKED\nB\nG 20260220T051228Z\n");
        assert_eq!(m, Some(&b"ab\ncd"[..]));
        for cut in 0..head.len() {
            assert!(split_session_head(&head[..cut]).is_none(), "complete at {cut} bytes");
        }
        assert_eq!(split_session_head(b"LOCKED\nB\nBST-READY\n"), Some((&b"LOCKED\nB\n"[..], None)));
        assert!(split_session_head(b"HELD {}\n").is_none());
    }

    /// A client that goes away before `BST-GO` (Ctrl-C while planning, a refusal) leaves no
    /// lock behind, and nothing of what it sent runs.
    #[cfg(unix)]
    #[test]
    fn deploy_session_unlocks_without_go_and_runs_only_after_it() {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("base");
        let script = deploy_session(base.to_str().unwrap(), "{\"token\":\"tok-1\"}", "tok-1", "", &[], &[]);
        let run = |input: &[u8]| {
            let mut c = Command::new("sh").arg("-c").arg(&script).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
            c.stdin.take().unwrap().write_all(input).unwrap();
            let out = c.wait_with_output().unwrap();
            String::from_utf8(out.stdout).unwrap()
        };
        let out = run(b"touch \"$B/ran\"\n");
        assert!(out.starts_with("LOCKED\n") && out.ends_with("BST-READY\n"), "{out}");
        assert!(!base.join(".bst-lock").exists(), "lock left behind");
        assert!(!base.join("ran").exists(), "ran without BST-GO");
        run(b"touch \"$B/ran\"\ncat > \"$B/rest\"\nBST-GO\npayload\nBST-GO\n");
        assert!(base.join("ran").exists());
        assert_eq!(std::fs::read_to_string(base.join("rest")).unwrap(), "payload\nBST-GO\n", "stdin after BST-GO is the payload");
        // A previous deploy's cache job (gone: its pid is of a process that ended) and a
        // pristine copy: the manifest is sent, unless the client has its generation.
        std::fs::remove_dir_all(base.join(".bst-lock")).unwrap();
        let c = base.join(CACHE_DIR);
        std::fs::create_dir_all(c.join("pristine")).unwrap();
        std::fs::write(c.join("generation"), "g1\n").unwrap();
        std::fs::write(c.join("manifest"), "bst-manifest-2\nrecords\n").unwrap();
        std::fs::write(c.join("spare.generation"), "g1\n").unwrap();
        let mut ended = Command::new("true").spawn().unwrap();
        ended.wait().unwrap();
        std::fs::write(c.join("job.pid"), ended.id().to_string()).unwrap();
        let out = Command::new("sh").arg("-c").arg(&script).stdin(Stdio::null()).output().unwrap().stdout;
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("\nG g1\nBST-MANIFEST-GZ ") && text.ends_with("BST-READY\n"), "{text}");
        assert!(!c.join("job.pid").exists(), "the job's pid file outlived the wait");
        let (_, manifest) = split_session_head(&out).unwrap();
        let mut gunzip = Command::new("gzip").arg("-dc").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        gunzip.stdin.take().unwrap().write_all(manifest.unwrap()).unwrap();
        assert_eq!(gunzip.wait_with_output().unwrap().stdout, b"bst-manifest-2\nrecords\n");
        assert!(!base.join(LOCK_DIR).exists());
        let script = deploy_session(base.to_str().unwrap(), "{\"token\":\"tok-1\"}", "tok-1", "g1", &[], &[]);
        let c2 = Command::new("sh").arg("-c").arg(&script).stdin(Stdio::null()).stdout(Stdio::piped()).spawn().unwrap();
        let out = String::from_utf8(c2.wait_with_output().unwrap().stdout).unwrap();
        assert!(out.ends_with("G g1\nMSAME 23\nBST-READY\n"), "{out}");
        let left: Vec<_> = std::fs::read_dir(&c)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("spare.checked"))
            .collect();
        assert!(left.is_empty(), "the spare's verdict outlived the session: {left:?}");
    }

    /// GNU tar exits 0 on an archive cut at an entry boundary (and gzip between members):
    /// an upload without its final marker must never become a release, in either framing.
    #[cfg(unix)]
    #[test]
    fn an_upload_without_its_final_marker_is_refused() {
        use crate::workspace::Framing;
        use std::io::Write;
        use std::process::{Command, Stdio};
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("a.txt"), "a").unwrap();
        let entries = vec![crate::workspace::Entry {
            path: "a.txt".into(),
            kind: crate::workspace::entry::Kind::File { exec: false },
            stat: None,
            clean: None,
        }];
        for (framing, archive) in [(Framing::Gzip(6), "snapshot.tgz"), (Framing::Tar, "snapshot.tar")] {
            let base = d.path().join(archive);
            std::fs::create_dir_all(base.join("releases")).unwrap();
            let run = |extra: &[crate::workspace::Extra]| {
                let mut stream = Vec::new();
                crate::workspace::stream_tar(
                    &src,
                    &entries,
                    extra,
                    &mut stream,
                    crate::workspace::tar::Link { framing, remembered: None, acked: &|| None },
                    &|_, _| {},
                )
                .unwrap();
                let script = upload(base.to_str().unwrap(), "20260220T051228Z", &[], &[], "{}", framing);
                let mut c = Command::new("sh").arg("-c").arg(&script).stdin(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
                c.stdin.take().unwrap().write_all(&stream).unwrap();
                let out = c.wait_with_output().unwrap();
                (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
            };
            let manifest = (format!("{}/manifest", crate::layout::UPLOAD_DIR), std::sync::Arc::new(b"m".to_vec()));
            let (ok, err) = run(std::slice::from_ref(&manifest));
            assert!(!ok && err.contains("ended early"), "{framing:?}: {err}");
            assert!(!base.join("releases/20260220T051228Z").exists());
            assert!(!base.join(INCOMING_DIR).exists());
            let (ok, err) = run(&[manifest, (crate::layout::COMPLETE_MARKER.into(), Default::default())]);
            assert!(ok, "{framing:?}: {err}");
            assert_eq!(std::fs::read_to_string(base.join("releases/20260220T051228Z/a.txt")).unwrap(), "a");
            assert!(!base.join("releases/20260220T051228Z/.bst-upload").exists());
            assert!(base.join(CACHE_DIR).join(archive).is_file(), "{framing:?}: the stream is kept for the cache job as {archive}");
        }
    }

    /// `tee` can fail (a full disk) while `tar -x` does not: the kept archive then ends early.
    /// The cache job must prove the archive whole (its marker) and the tree equal to the
    /// manifest before it writes the generation a delta patches from.
    #[cfg(unix)]
    #[test]
    fn the_cache_job_trusts_only_a_whole_archive_that_matches_its_manifest() {
        use crate::workspace::entry::Kind;
        use crate::workspace::{Entry, Framing};
        use std::sync::Arc;
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir_all(src.join("dir")).unwrap();
        std::fs::write(src.join("a.txt"), "alpha").unwrap();
        std::fs::write(src.join("dir/b.sh"), "#!/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("a.txt", src.join("l")).unwrap();
        let entries = vec![
            Entry { path: "a.txt".into(), kind: Kind::File { exec: false }, stat: None, clean: None },
            Entry { path: "dir/b.sh".into(), kind: Kind::File { exec: true }, stat: None, clean: None },
            Entry { path: "l".into(), kind: Kind::Symlink, stat: None, clean: None },
        ];
        let manifest = crate::workspace::encode(&crate::workspace::local_manifest(&src, &entries, &mut Default::default()));
        let run = |case: &str, manifest: &[u8], marker: bool, cut: usize| -> bool {
            let base = d.path().join(case);
            let c = base.join(CACHE_DIR);
            std::fs::create_dir_all(c.join("upload")).unwrap();
            let mut extra = vec![(format!("{}/manifest", crate::layout::UPLOAD_DIR), Arc::new(manifest.to_vec()))];
            if marker {
                extra.push((crate::layout::COMPLETE_MARKER.into(), Arc::default()));
            }
            let mut tar = Vec::new();
            crate::workspace::stream_tar(
                &src,
                &entries,
                &extra,
                &mut tar,
                crate::workspace::tar::Link { framing: Framing::Tar, remembered: None, acked: &|| None },
                &|_, _| {},
            )
            .unwrap();
            tar.truncate(tar.len() - cut);
            std::fs::write(c.join(untar(Framing::Tar).1), &tar).unwrap();
            std::fs::write(c.join("upload/manifest"), manifest).unwrap();
            let script = format!("{}{}", Script::at(base.to_str().unwrap()).build(), start_cache_job("20260220T051228Z abc"));
            assert!(std::process::Command::new("sh").arg("-c").arg(&script).status().unwrap().success());
            let pid = std::fs::read_to_string(c.join("job.pid")).unwrap();
            while std::path::Path::new(&format!("/proc/{}", pid.trim())).exists() {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            let log = std::fs::read_to_string(c.join("job.log")).unwrap_or_default();
            let usable = c.join("generation").exists();
            assert_eq!(usable, c.join("pristine.stat").exists(), "{case}: {log}");
            usable
        };
        assert!(run("whole", &manifest, true, 0), "a whole upload becomes the pristine copy");
        // Cut at an entry boundary before the marker: a well-formed archive, tar -x is happy.
        assert!(!run("cut", &manifest, false, 0), "an archive without its marker was trusted");
        // Cut inside an entry.
        assert!(!run("mid-entry", &manifest, true, 2048), "a cut archive was trusted");
        // A manifest that does not describe the tree (one record's size changed).
        let lying = String::from_utf8(manifest.clone()).unwrap().replacen("\t5\t", "\t6\t", 1).into_bytes();
        assert_ne!(lying, manifest);
        assert!(!run("lying", &lying, true, 0), "a tree that differs from its manifest was trusted");
    }

    /// Every switch checks its target: a pruned, missing or not-ok release is never made live.
    #[cfg(unix)]
    #[test]
    fn a_switch_refuses_a_missing_or_not_ok_release() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path();
        let (good, bad, gone) = ("20260220T051228Z", "20260221T051228Z", "20260222T051228Z");
        layout_with(base, &[(good, "ok"), (bad, "failed")]);
        std::fs::create_dir_all(base.join(".bst-lock")).unwrap();
        let b = base.to_str().unwrap();
        for id in [bad, gone] {
            let out = std::process::Command::new("sh").arg("-c").arg(guarded_switch(b, id, "{}")).output().unwrap();
            assert!(!out.status.success(), "switched to {id}");
            assert!(String::from_utf8_lossy(&out.stderr).contains("is missing or is not an ok release"));
            assert_eq!(std::fs::read_link(base.join("current")).unwrap(), std::path::Path::new(&format!("releases/{good}")));
        }
        std::fs::create_dir_all(base.join("logs")).unwrap();
        let out = std::process::Command::new("sh").arg("-c").arg(guarded_switch(b, good, "{}")).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(!base.join(".bst-lock/busy").exists(), "the busy mark outlived the switch");
    }

    /// Once the watchdog has decided, a drill step switches nothing: two writers of `current`
    /// at once could leave it on either release.
    #[cfg(unix)]
    #[test]
    fn a_guarded_switch_stands_down_once_the_watchdog_decided() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path();
        let (a, b) = ("20260220T051228Z", "20260221T051228Z");
        layout_with(base, &[(a, "ok"), (b, "ok")]);
        std::fs::create_dir_all(base.join(".bst-lock/decided")).unwrap();
        let out = std::process::Command::new("sh").arg("-c").arg(guarded_switch(base.to_str().unwrap(), b, "{}")).output().unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout), "DECIDED\n");
        assert_eq!(std::fs::read_link(base.join("current")).unwrap(), std::path::Path::new(&format!("releases/{a}")));
        // No lock at all: refused.
        std::fs::remove_dir_all(base.join(".bst-lock")).unwrap();
        let out = std::process::Command::new("sh").arg("-c").arg(guarded_switch(base.to_str().unwrap(), b, "{}")).output().unwrap();
        assert!(!out.status.success());
        assert_eq!(std::fs::read_link(base.join("current")).unwrap(), std::path::Path::new(&format!("releases/{a}")));
    }

    /// A device name with a space (`map auto`, some FUSE mounts) shifted `df`'s columns and
    /// gave a false free-space PASS: the available column is found from the end.
    #[cfg(unix)]
    #[test]
    fn free_space_is_read_from_the_capacity_column() {
        let line = preflight("/b", &[], &[], &[]).lines().find(|l| l.starts_with("df -Pk")).unwrap().to_string();
        let awk = line.split_once("| ").unwrap().1;
        for (df, want) in [
            ("Filesystem 1024-blocks Used Available Capacity Mounted on\n/dev/sda1 100 60 40 60% /\n", "FREE_KB 40"),
            ("Filesystem 1024-blocks Used Available Capacity Mounted on\nmap auto.home 999 0 999999 0% /home/x y\n", "FREE_KB 999999"),
        ] {
            let out = std::process::Command::new("sh").arg("-c").arg(format!("printf '%s' '{df}' | {awk}")).output().unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), want, "{df}");
        }
    }

    /// Two releases, `releases/<id>` with a meta of `status`, and `current` on the first.
    /// The meta says ok before the switch (a switch refuses any other), the duration is filled
    /// in by the script that knows it, and pruning and the audit come after.
    #[cfg(unix)]
    #[test]
    fn deploy_finish_marks_ok_then_switches_then_prunes() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("it's");
        let (old, live, new) = ("20260101T000000Z", "20260219T000000Z", "20260220T051228Z");
        layout_with(&base, &[(live, "ok"), (old, "ok"), (new, "pending")]);
        std::fs::create_dir_all(base.join(LOCK_DIR)).unwrap();
        std::fs::write(base.join(LOCK_DIR).join("owner"), "{\"token\":\"tok\"}\n").unwrap();
        let b = base.to_str().unwrap();
        let meta = format!("{{\"id\":\"{new}\",\"status\":\"ok\",\"duration_ms\":{DURATION_PLACEHOLDER}}}");
        let script = format!(
            "{}{}{}",
            clock_prologue(1000),
            finish_deploy(b, new, &meta, &[old.into()], "{\"a\":1}", "tok", false),
            clock_mark("TS")
        );
        let (rc, out, err) = run_sh(&script, b"");
        assert_eq!(rc, 0, "{err}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[..2], ["SWITCHED", &format!("P {old}")]);
        assert!(lines[2].starts_with("TS ") && lines[2][3..].parse::<u64>().is_ok(), "{out}");
        let reply = Reply::parse(&out);
        assert!(reply.switched && reply.warnings.is_empty() && reply.marks.len() == 1, "{reply:?}");
        assert_eq!(reply.pruned, [old]);
        assert!(reply.mark("TS").is_some() && reply.mark("TU").is_none());
        assert_eq!(std::fs::read_link(base.join("current")).unwrap(), std::path::Path::new(&format!("releases/{new}")));
        let written = std::fs::read_to_string(base.join("releases").join(new).join(".release-meta")).unwrap();
        let ms: u64 = written
            .trim()
            .strip_prefix(&format!("{{\"id\":\"{new}\",\"status\":\"ok\",\"duration_ms\":"))
            .unwrap()
            .strip_suffix('}')
            .unwrap()
            .parse()
            .unwrap();
        assert!((1000..60_000).contains(&ms), "{written}");
        assert!(!base.join("releases").join(old).exists(), "not pruned");
        assert_eq!(std::fs::read_to_string(base.join("logs/deploys.jsonl")).unwrap(), "{\"a\":1}\n");
        assert!(!base.join(LOCK_DIR).exists(), "the lock outlived the deploy");
        // Rolled back with the lock kept: the lock stays, current moves, the audit grows.
        std::fs::create_dir_all(base.join(LOCK_DIR)).unwrap();
        let (rc, out, err) = run_sh(&rollback(b, live, "{\"b\":2}", "tok", true), b"");
        assert_eq!((rc, out.as_str()), (0, "SWITCHED\n"), "{err}");
        assert_eq!(std::fs::read_link(base.join("current")).unwrap(), std::path::Path::new(&format!("releases/{live}")));
        assert!(base.join(LOCK_DIR).exists());
        assert_eq!(std::fs::read_to_string(base.join("logs/deploys.jsonl")).unwrap(), "{\"a\":1}\n{\"b\":2}\n");
    }

    /// A failed deploy: its staging dir goes, its release is marked failed unless it is live,
    /// the build it started is stopped, and the lock is released.
    #[cfg(unix)]
    #[test]
    fn an_aborted_deploy_marks_its_release_failed_and_unlocks() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path();
        let (live, new) = ("20260219T000000Z", "20260220T051228Z");
        layout_with(base, &[(live, "ok"), (new, "pending")]);
        std::fs::create_dir_all(base.join(INCOMING_DIR).join(new)).unwrap();
        std::fs::create_dir_all(base.join(LOCK_DIR)).unwrap();
        std::fs::write(base.join(LOCK_DIR).join("owner"), "{\"token\":\"tok\"}\n").unwrap();
        let mut build = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        std::fs::write(base.join("logs").join(format!(".{new}.pid")), build.id().to_string()).unwrap();
        let b = base.to_str().unwrap();
        let (rc, _, err) = run_sh(&abort_deploy(b, new, "{\"status\":\"failed\"}", "{\"c\":3}", "tok"), b"");
        assert_eq!(rc, 0, "{err}");
        assert!(!build.wait().unwrap().success(), "the build was not stopped");
        assert!(!base.join(INCOMING_DIR).exists());
        assert_eq!(std::fs::read_to_string(base.join("releases").join(new).join(".release-meta")).unwrap(), "{\"status\":\"failed\"}\n");
        assert!(!base.join(LOCK_DIR).exists());
        assert_eq!(std::fs::read_to_string(base.join("logs/deploys.jsonl")).unwrap(), "{\"c\":3}\n");
        // The live release keeps its meta.
        run_sh(&abort_deploy(b, live, "{\"status\":\"failed\"}", "{}", "tok"), b"");
        assert!(std::fs::read_to_string(base.join("releases").join(live).join(".release-meta")).unwrap().contains("\"ok\""));
    }

    /// `bst prune` deletes at once; the confirmation after a gate prunes too, once confirmed.
    #[cfg(unix)]
    #[test]
    fn prune_removes_the_named_releases_and_reports_each() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path();
        let (live, a, b) = ("20260219T000000Z", "20260101T000000Z", "20260102T000000Z");
        layout_with(base, &[(live, "ok"), (a, "ok"), (b, "ok")]);
        std::fs::create_dir_all(base.join(LOCK_DIR)).unwrap();
        std::fs::write(base.join(LOCK_DIR).join("owner"), "{\"token\":\"tok\"}\n").unwrap();
        let root = base.to_str().unwrap();
        let (rc, out, _) = run_sh(&prune(root, &[a.into(), "gone".into()], "tok", false), b"");
        assert_eq!(rc, 0);
        assert_eq!(Reply::parse(&out).pruned, [a]);
        assert!(out.contains("W could not remove releases/gone"), "{out}");
        assert!(!base.join("releases").join(a).exists() && !base.join(TRASH_DIR).exists());
        assert!(!base.join(LOCK_DIR).exists());
        std::fs::create_dir_all(base.join(LOCK_DIR)).unwrap();
        std::fs::write(base.join(LOCK_DIR).join("owner"), "{\"token\":\"tok\"}\n").unwrap();
        let (rc, out, _) = run_sh(&confirm_and_prune(root, &[b.into()], "tok", "{\"d\":4}"), b"");
        assert_eq!(rc, 0);
        assert_eq!(out, format!("CONFIRMED\nP {b}\n"));
        assert!(!base.join("releases").join(b).exists());
        assert!(!base.join(LOCK_DIR).exists());
        assert_eq!(std::fs::read_to_string(base.join("logs/deploys.jsonl")).unwrap(), "{\"d\":4}\n");
    }

    /// The audit line of a service action lands only where there is a layout.
    #[cfg(unix)]
    #[test]
    fn an_audit_line_needs_a_layout() {
        let d = tempfile::tempdir().unwrap();
        let b = d.path().join("b");
        assert_eq!(run_sh(&append_audit(b.to_str().unwrap(), "{\"e\":5}"), b"").0, 0);
        assert!(!b.exists());
        std::fs::create_dir_all(b.join("logs")).unwrap();
        assert_eq!(run_sh(&append_audit(b.to_str().unwrap(), "{\"e\":5}"), b"").0, 0);
        assert_eq!(std::fs::read_to_string(b.join("logs/deploys.jsonl")).unwrap(), "{\"e\":5}\n");
    }

    #[cfg(unix)]
    #[test]
    fn read_env_prints_found_or_missing_and_counts_backups() {
        let d = tempfile::tempdir().unwrap();
        let b = d.path().to_str().unwrap();
        std::fs::create_dir_all(d.path().join("shared")).unwrap();
        assert_eq!(run_sh(&read_env(b, "shared/.env"), b"").1, "MISSING 0\n");
        std::fs::write(d.path().join("shared/.env.real"), "A=1\n").unwrap();
        std::fs::write(d.path().join("shared/.env.real.bak.1"), "A=0\n").unwrap();
        std::os::unix::fs::symlink(".env.real", d.path().join("shared/.env")).unwrap();
        assert_eq!(run_sh(&read_env(b, "shared/.env"), b"").1, "FOUND 1\nA=1\n", "backups are counted beside the link's target");
    }

    /// After a dropped connection: what the server has, and whether this run's script (its
    /// registered pid) still holds the lock.
    #[cfg(unix)]
    #[test]
    fn after_a_drop_the_state_and_the_lock_are_reported() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path();
        let id = "20260220T051228Z";
        layout_with(base, &[(id, "ok")]);
        let b = base.to_str().unwrap();
        let (_, out, _) = run_sh(&after_drop(b, "tok", id, 0), b"");
        assert_eq!(out, format!("C releases/{id}\nM {{\"id\":\"{id}\",\"status\":\"ok\"}}\n"));
        std::fs::create_dir_all(base.join(LOCK_DIR)).unwrap();
        std::fs::write(base.join(LOCK_DIR).join("owner"), "{\"token\":\"tok\"}\n").unwrap();
        let mut script = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        std::fs::write(base.join(LOCK_DIR).join("active"), script.id().to_string()).unwrap();
        let (_, out, _) = run_sh(&after_drop(b, "tok", id, 0), b"");
        assert!(out.ends_with("HELD\nRUNNING\n"), "{out}");
        let (_, out, _) = run_sh(&after_drop(b, "tok-other", id, 0), b"");
        assert!(!out.contains("HELD") && !out.contains("RUNNING"), "another run's lock: {out}");
        script.kill().unwrap();
        script.wait().unwrap();
        let (_, out, _) = run_sh(&after_drop(b, "tok", id, 1), b"");
        assert!(out.ends_with("HELD\n"), "{out}");
    }

    /// A base under a forbidden path (itself resolved: here through a symlink) is refused
    /// before anything is created.
    #[cfg(unix)]
    #[test]
    fn a_lock_under_a_forbidden_path_creates_nothing() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::os::unix::fs::symlink("etc", d.path().join("alias")).unwrap();
        let base = d.path().join("alias/app");
        let forbidden = vec!["/nowhere".to_string(), d.path().join("etc").to_str().unwrap().to_string()];
        let (rc, out, _) = run_sh(&lock(base.to_str().unwrap(), "{}", true, &forbidden), b"");
        assert_eq!(rc, 0);
        let real = d.path().canonicalize().unwrap();
        assert_eq!(out, format!("FORBIDDEN 1\nREAL_BASE {0}/etc/app\nREAL_FORBIDDEN {0}/etc\n", real.display()));
        assert!(!d.path().join("etc/app").exists());
        // Without create, a base never deployed to says so.
        let (_, out, _) = run_sh(&lock(d.path().join("other").to_str().unwrap(), "{}", false, &[]), b"");
        assert_eq!(out, "NOBASE\n");
        // A held lock names its holder.
        let b = d.path().join("b");
        assert!(run_sh(&lock(b.to_str().unwrap(), "{\"token\":\"t1\"}", true, &[]), b"").1.starts_with("LOCKED\nB\n"));
        assert_eq!(run_sh(&lock(b.to_str().unwrap(), "{\"token\":\"t2\"}", true, &[]), b"").1, "HELD {\"token\":\"t1\"}\n");
    }

    /// Every fact `bst check` reads, from a real run.
    #[cfg(unix)]
    #[test]
    fn preflight_prints_every_fact() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("new base");
        let units = vec![("web".to_string(), "echo loaded".to_string())];
        let script = preflight(base.to_str().unwrap(), &units, &["/it's".into()], &["sh".into(), "no-such-tool-bst".into()]);
        let (rc, out, err) = run_sh(&script, b"");
        assert_eq!(rc, 0, "{err}");
        let real = d.path().canonicalize().unwrap();
        for want in [
            format!("RESOLVED {}/new base", real.display()),
            "FRESOLVED 0 /it's".to_string(),
            "BASE absent".into(),
            format!("REAL {}", real.display()),
            "WRITABLE yes".into(),
            "TOOL sh yes".into(),
            "LOCK free".into(),
            "UNIT web loaded".into(),
            "LOGIN_SHELL /bin/sh".into(),
            "PROBE BSTTOOL sh".into(),
            "PROBE BSTTOOL no-such-tool-bst".into(),
            "PROBE BSTEND".into(),
        ] {
            assert!(out.lines().any(|l| l == want), "no {want:?} in {out}");
        }
        assert!(out.lines().any(|l| l.starts_with("FREE_KB ")), "{out}");
        assert!(!base.exists());
    }

    /// A delta applies the changes and the removals to the spare and to the pristine copy,
    /// and refuses (stale) a pristine copy that is not the one the client diffed against.
    #[cfg(unix)]
    #[test]
    fn a_delta_patches_the_spare_and_the_pristine_copy() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("it's");
        let c = base.join(CACHE_DIR);
        let id = "20260220T051228Z";
        for tree in ["pristine", "spare"] {
            std::fs::create_dir_all(c.join(tree).join("dir")).unwrap();
            std::fs::write(c.join(tree).join("keep.txt"), "keep").unwrap();
            std::fs::write(c.join(tree).join("dir/old.txt"), "old").unwrap();
        }
        std::fs::create_dir_all(base.join("releases")).unwrap();
        std::fs::write(c.join("generation"), "g1\n").unwrap();
        std::fs::write(c.join("spare.generation"), "g1\n").unwrap();
        std::fs::write(c.join("spare.stat"), "as the cache job listed it").unwrap();
        std::fs::write(c.join("manifest"), "bst-manifest-2\n").unwrap();
        let stream = tar_of(&[
            ("new.txt", b"new"),
            (".bst-upload/removed", b"dir/old.txt\0"),
            (".bst-upload/manifest-patch", b"patch\n"),
            (crate::layout::COMPLETE_MARKER, b""),
        ]);
        let b = base.to_str().unwrap();
        // The spare's check never ran (no session): the spare is dropped, the pristine copy
        // is checked against its recorded listing, which does not exist: stale.
        let (rc, _, err) = run_sh(&upload_delta(b, id, "g1", &[], &[], "{}", Framing::Tar, None), &stream);
        assert_eq!(rc, DELTA_STALE, "{err}");
        assert!(err.contains("the pristine copy changed since it was verified"), "{err}");
        assert!(!c.join("spare").exists() && !c.join("generation").exists());
        // A pristine copy as the cache job recorded it.
        std::fs::write(c.join("generation"), "g1\n").unwrap();
        let (rc, _, err) =
            run_sh(&format!("{}cd \"$B/{CACHE_DIR}\" && bst_stat_listing > pristine.stat", Script::at(b).part(LISTINGS).build()), b"");
        assert_eq!(rc, 0, "{err}");
        let (rc, _, err) = run_sh(&upload_delta(b, id, "g2", &[], &[], "{}", Framing::Tar, None), &stream);
        assert_eq!(rc, DELTA_STALE, "another generation: {err}");
        let (rc, _, err) = run_sh(&upload_delta(b, id, "g1", &[], &[], "{\"s\":1}", Framing::Tar, None), &stream);
        assert_eq!(rc, 0, "{err}");
        let rel = base.join("releases").join(id);
        for tree in [rel.clone(), c.join("pristine")] {
            assert_eq!(std::fs::read_to_string(tree.join("new.txt")).unwrap(), "new");
            assert_eq!(std::fs::read_to_string(tree.join("keep.txt")).unwrap(), "keep");
            assert!(!tree.join("dir").exists(), "removed, and the emptied directory swept");
        }
        assert!(!rel.join(".bst-upload").exists());
        assert_eq!(std::fs::read_to_string(rel.join(".release-meta")).unwrap(), "{\"s\":1}\n");
        assert_eq!(std::fs::read_to_string(c.join("manifest")).unwrap(), "bst-manifest-2\npatch\n");
        assert!(!c.join("generation").exists(), "the cache job writes it, once proven");
        assert!(!base.join(INCOMING_DIR).exists());
    }

    /// A sibling's cache as its cache job leaves it once proven: `files` as the pristine copy,
    /// a manifest, the generation and the recorded stat listing.
    #[cfg(unix)]
    fn proven_cache(base: &std::path::Path, generation: &str, files: &[(&str, &str)]) {
        let c = base.join(CACHE_DIR);
        for (p, data) in files {
            let f = c.join("pristine").join(p);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, data).unwrap();
        }
        std::fs::write(c.join("manifest"), format!("bst-manifest-2\0{generation}\0")).unwrap();
        let b = base.to_str().unwrap();
        let (rc, _, err) =
            run_sh(&format!("{}cd \"$B/{CACHE_DIR}\" && bst_stat_listing > pristine.stat", Script::at(b).part(LISTINGS).build()), b"");
        assert_eq!(rc, 0, "{err}");
        std::fs::write(c.join("generation"), format!("{generation}\n")).unwrap();
    }

    /// Every file under `dir` with its bytes, and the stat listing bst proves a copy by.
    #[cfg(unix)]
    fn untouched(base: &std::path::Path) -> (Vec<(String, Vec<u8>)>, String) {
        let mut files = Vec::new();
        let mut stack = vec![base.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                } else {
                    files.push((e.path().display().to_string(), std::fs::read(e.path()).unwrap()));
                }
            }
        }
        files.sort();
        let b = base.to_str().unwrap();
        let (_, listing, _) =
            run_sh(&format!("{}cd \"$B/{CACHE_DIR}\" && bst_stat_listing | tr '\\0' '\\n'", Script::at(b).part(LISTINGS).build()), b"");
        (files, listing)
    }

    /// Without a pristine copy of its own, the session offers the first sibling whose copy is
    /// proven (its manifest follows, or MSAME when the client has it), says why each one before
    /// it was passed over, waits for a sibling's cache job still at work, and changes nothing
    /// there. With a copy of its own, siblings are not even looked at.
    #[cfg(unix)]
    #[test]
    fn a_session_offers_the_first_proven_sibling_copy() {
        use std::process::{Command, Stdio};
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("new");
        let (missing, damaged, good) = (d.path().join("missing"), d.path().join("damaged"), d.path().join("it's $(touch pwned) good"));
        let (g1, g2) = ("20260220T051228Z 1a2b", "20260221T051228Z 3c4d");
        proven_cache(&damaged, g1, &[("a.txt", "a")]);
        std::fs::write(damaged.join(CACHE_DIR).join("pristine/a.txt"), "b").unwrap();
        proven_cache(&good, g2, &[("a.txt", "a"), ("dir/b.txt", "b")]);
        let before = untouched(&good);
        let list = |known: &str| {
            [missing.clone(), damaged.clone(), good.clone()].map(|p| (p.to_str().unwrap().to_string(), known.to_string())).to_vec()
        };
        let session = |sibs: &[(String, String)]| {
            let script = deploy_session(base.to_str().unwrap(), "{\"token\":\"t\"}", "t", "", &[], sibs);
            let out = Command::new("sh").arg("-c").arg(&script).current_dir(d.path()).stdin(Stdio::null()).output().unwrap();
            out.stdout
        };
        let out = session(&list(""));
        let (listing, manifest) = split_session_head(&out).unwrap();
        let r = sibling_report(&String::from_utf8_lossy(listing));
        assert_eq!(r.offered, Some((2, g2.to_string())));
        assert_eq!(
            r.passed,
            [(0, "no pristine copy there".to_string()), (1, "its pristine copy changed since its cache job proved it".to_string())]
        );
        let gunzip = Command::new("sh").arg("-c").arg("gzip -dc").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        std::io::Write::write_all(&mut gunzip.stdin.as_ref().unwrap(), manifest.unwrap()).unwrap();
        assert_eq!(gunzip.wait_with_output().unwrap().stdout, format!("bst-manifest-2\0{g2}\0").into_bytes());
        let out = String::from_utf8(session(&list(g2))).unwrap();
        assert!(out.ends_with(&format!("SG 2 {g2}\nMSAME {}\nBST-READY\n", "bst-manifest-2\0\0".len() + g2.len())), "{out}");
        assert!(!d.path().join("pwned").exists());
        assert_eq!(untouched(&good), before, "the sibling changed");
        // A sibling's cache job at work (its generation not yet written) is waited for.
        proven_cache(&missing, g1, &[("c.txt", "c")]);
        std::fs::remove_file(missing.join(CACHE_DIR).join("generation")).unwrap();
        let mut job = Command::new("sh")
            .arg("-c")
            .arg("sleep 1; printf '%s\\n' \"$1\" > \"$2\"")
            .arg(CACHE_JOB)
            .arg(g1)
            .arg(missing.join(CACHE_DIR).join("generation"))
            .spawn()
            .unwrap();
        std::fs::write(missing.join(CACHE_DIR).join("job.pid"), job.id().to_string()).unwrap();
        let out = String::from_utf8(session(&list(g1))).unwrap();
        job.wait().unwrap();
        assert!(out.contains(&format!("SG 0 {g1}\nMSAME ")), "{out}");
        // This base under another name (a symlink) is no sibling of itself.
        std::os::unix::fs::symlink(&base, d.path().join("alias")).unwrap();
        let alias = vec![(d.path().join("alias").to_str().unwrap().to_string(), String::new())];
        let out = String::from_utf8(session(&alias)).unwrap();
        assert!(out.contains("\nSN 0 it is this base, under another name\n"), "{out}");
        // A copy of its own: no sibling is looked at.
        proven_cache(&base, g1, &[("own.txt", "own")]);
        let out = String::from_utf8_lossy(&session(&list(""))).into_owned();
        assert!(!out.contains("\nSG ") && !out.contains("\nSN "), "{out}");
    }

    /// A seeded delta: the sibling's proven copy becomes this target's pristine copy and, with
    /// the changes, the release; the sibling is not changed (not a byte, not its listing: no
    /// hardlinks). A sibling that no longer matches what was proven is not copied from: stale.
    #[cfg(unix)]
    #[test]
    fn a_seeded_delta_copies_the_sibling_and_never_changes_it() {
        let d = tempfile::tempdir().unwrap();
        let (base, sib) = (d.path().join("new"), d.path().join("sib"));
        let g = "20260220T051228Z 1a2b";
        proven_cache(&sib, g, &[("keep.txt", "keep"), ("old.txt", "old"), ("x.sh", "#!/bin/sh\n")]);
        sh_ok(&format!("chmod +x '{}/{CACHE_DIR}/pristine/x.sh'", sib.display()));
        proven_cache(&sib, g, &[]);
        let before = untouched(&sib);
        std::fs::create_dir_all(base.join("releases")).unwrap();
        // A leftover of this target's own (no generation: never proven) is set aside.
        std::fs::create_dir_all(base.join(CACHE_DIR).join("pristine")).unwrap();
        std::fs::write(base.join(CACHE_DIR).join("pristine/stale.txt"), "stale").unwrap();
        let stream = tar_of(&[
            ("new.txt", b"new"),
            (".bst-upload/removed", b"old.txt\0"),
            (".bst-upload/manifest-patch", b"patch\0"),
            (crate::layout::COMPLETE_MARKER, b""),
        ]);
        let (b, s) = (base.to_str().unwrap(), sib.to_str().unwrap());
        let id = "20260222T000000Z";
        let (rc, _, err) = run_sh(&upload_delta(b, id, g, &[], &[], "{}", Framing::Tar, Some(s)), &stream);
        assert_eq!(rc, 0, "{err}");
        let rel = base.join("releases").join(id);
        let c = base.join(CACHE_DIR);
        for tree in [rel.clone(), c.join("pristine")] {
            assert_eq!(std::fs::read_to_string(tree.join("keep.txt")).unwrap(), "keep");
            assert_eq!(std::fs::read_to_string(tree.join("new.txt")).unwrap(), "new");
            assert!(!tree.join("old.txt").exists() && !tree.join("stale.txt").exists());
            assert!(std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(tree.join("x.sh")).unwrap().permissions()) & 0o111 != 0);
        }
        assert_eq!(std::fs::read(c.join("manifest")).unwrap(), format!("bst-manifest-2\0{g}\0patch\0").into_bytes());
        assert!(!c.join("generation").exists(), "the cache job writes this target's own, once proven");
        assert!(!base.join(INCOMING_DIR).exists());
        assert_eq!(untouched(&sib), before, "the sibling changed");
        // Changed after the session proved it: not copied from, and nothing is left half made.
        std::fs::write(sib.join(CACHE_DIR).join("pristine/keep.txt"), "KEEP").unwrap();
        let id = "20260223T000000Z";
        std::fs::remove_dir_all(&c).unwrap();
        let (rc, _, err) = run_sh(&upload_delta(b, id, g, &[], &[], "{}", Framing::Tar, Some(s)), &stream);
        assert_eq!(rc, DELTA_STALE, "{err}");
        assert!(err.contains("V the sibling's pristine copy changed while it was copied"), "{err}");
        assert!(!base.join("releases").join(id).exists() && !base.join(INCOMING_DIR).exists());
        assert!(!c.join("generation").exists());
        // Another generation there (its cache job ran meanwhile): stale too.
        proven_cache(&sib, "20260224T000000Z 5e6f", &[]);
        let (rc, _, _) = run_sh(&upload_delta(b, id, g, &[], &[], "{}", Framing::Tar, Some(s)), &stream);
        assert_eq!(rc, DELTA_STALE);
    }

    #[cfg(unix)]
    fn sh_ok(script: &str) {
        let (rc, _, err) = run_sh(script, b"");
        assert_eq!(rc, 0, "{err}");
    }

    /// Only bst's own lines count: a build's output around them is not a reply.
    #[test]
    fn a_reply_is_read_from_bst_lines_only() {
        let r = Reply::parse(
            "npm WARN deprecated\nTU 12\nP 20260101T000000Z\nSWITCHED \nSWITCHED\nW could not remove releases/x\nTs 3\nTS x\n",
        );
        assert_eq!(
            r,
            Reply {
                switched: true,
                pruned: vec!["20260101T000000Z".into()],
                warnings: vec!["could not remove releases/x".into()],
                marks: vec![("TU".into(), 12)],
            }
        );
        assert_eq!(Reply::parse(""), Reply::default());
    }

    /// Every file under `sh/` is part of some script: a file no code includes would be
    /// shellchecked and tested but never run on a server.
    #[test]
    fn every_sh_file_is_included() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/remote/sh");
        let code = [include_str!("mod.rs"), include_str!("systemd.rs"), include_str!("watchdog.rs")].concat();
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let name = e.unwrap().file_name().into_string().unwrap();
            assert!(name.ends_with(".sh"), "{name}: only .sh files belong in sh/");
            assert!(code.contains(&format!("include_str!(\"sh/{name}\")")), "sh/{name} is not included by any script");
            n += 1;
        }
        assert!(n > 30);
    }

    #[test]
    fn env_backups_made_in_one_second_are_pruned_oldest_first() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let b = dir.path().to_str().unwrap();
        std::fs::create_dir_all(dir.path().join("shared")).unwrap();
        std::fs::create_dir_all(dir.path().join("logs")).unwrap();
        std::fs::write(dir.path().join("shared/.env"), "V=0\n").unwrap();
        // Twelve writes with the same stamp (one second), each backing up the previous value.
        for i in 1..=12 {
            let mut c = std::process::Command::new("sh")
                .arg("-c")
                .arg(write_env(b, ".env", "20261202T070000Z", 3, "{}", "tok"))
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap();
            c.stdin.take().unwrap().write_all(format!("V={i}\n").as_bytes()).unwrap();
            assert!(c.wait().unwrap().success());
        }
        let mut kept: Vec<String> = std::fs::read_dir(dir.path().join("shared"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.contains(".bak."))
            .map(|n| std::fs::read_to_string(dir.path().join("shared").join(&n)).unwrap())
            .collect();
        kept.sort();
        assert_eq!(kept, vec!["V=10\n", "V=11\n", "V=9\n"], "the three newest backups stay");
    }
}
