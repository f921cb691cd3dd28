//! The POSIX `sh` scripts bst runs on a target, built from quoted parts. A plain deploy is
//! one remote command ([`deploy_session`]); a build or a health gate adds one each (Mina's
//! lesson: latency, not bandwidth, dominates small deploys, and every remote command also
//! starts the user's login shell).
//!
//! Layout under `<base>`: `releases/<id>`, `current -> releases/<id>` (relative, so the base
//! can move), `shared/`, `logs/`, and bst's own `.bst-lock/` and `.bst-incoming/<id>` (the
//! upload staging name that no command counts as a release).

use std::fmt::Write as _;

use crate::shell::quote;
use crate::workspace::Framing;

pub const LOCK_DIR: &str = ".bst-lock";
pub const INCOMING_DIR: &str = ".bst-incoming";
/// Releases being pruned: renamed here first, so a prune cut short never leaves a
/// half-deleted directory under `releases/` that still reads as an ok release.
pub const TRASH_DIR: &str = ".bst-trash";
/// The pristine copy of the last snapshot and its manifest, for delta redeploys.
pub const CACHE_DIR: &str = ".bst-cache";

/// For scripts that must finish once started (switch, prune, unlock): a client that dies
/// (kill -9, cut connection) must not take the script down half-way through.
/// The script also records its pid in the lock, so a lock whose client died is not broken
/// while its last script is still switching or pruning on the server.
pub(crate) const DETACHED: &str = "trap '' PIPE HUP\nif [ -d \"$B/.bst-lock\" ]; then echo $$ > \"$B/.bst-lock/active\" 2>/dev/null; fi\n";

/// Registration without the signal immunity: an upload whose client died must stop (its
/// stdin is gone anyway), but a new run must wait until it has.
const REGISTER: &str = "if [ -d \"$B/.bst-lock\" ]; then echo $$ > \"$B/.bst-lock/active\" 2>/dev/null; fi\n";

pub(crate) fn base_var(base: &str) -> String {
    format!("B={}\n", quote(base))
}

/// Prints the state listing parsed by [`crate::release::parse_state`].
fn state_body() -> &'static str {
    r#"if [ ! -d "$B" ]; then exit 0; fi
echo B
cd "$B" || exit 1
printf 'P %s\n' "$(pwd -P)"
for d in releases/*/; do
  [ -d "$d" ] || continue
  n=${d#releases/}; n=${n%/}
  printf 'R %s\n' "$n"
  if [ -f "$d.release-meta" ]; then printf 'M '; tr -d '\n' < "$d.release-meta"; echo; fi
done
if [ -L current ]; then printf 'C %s\n' "$(readlink current)"; printf 'CR %s\n' "$(cd current 2>/dev/null && pwd -P)"; elif [ -e current ]; then echo 'C !not-a-symlink'; fi
if [ -f .bst-cache/generation ] && [ -d .bst-cache/pristine ]; then printf 'G %s\n' "$(cat .bst-cache/generation)"; fi
if [ -f logs/.watchdog-unseen ] && mv -f logs/.watchdog-unseen logs/.watchdog-seen.$$ 2>/dev/null; then sed 's/^/WD /' logs/.watchdog-seen.$$; rm -f logs/.watchdog-seen.$$; fi
"#
}

pub fn read_state(base: &str) -> String {
    base_var(base) + state_body()
}

/// Takes the lock with an atomic `mkdir` and records who holds it. Prints `LOCKED` then the
/// state listing, or `HELD <owner json>`, or `NOBASE` when `create` is off and nothing was
/// ever deployed. Staging leftovers of dead runs are removed once we hold the lock.
pub fn lock(base: &str, owner_json: &str, create: bool, forbidden: &[String]) -> String {
    lock_script(base, owner_json, create, None, forbidden)
}

/// A deploy in one remote command. The script takes the lock, waits for the previous
/// deploy's cache job (so the state names a complete pristine copy or none), prints the state
/// and the pristine copy's manifest (`BST-MANIFEST-GZ <bytes>` then gzip data), then
/// `BST-READY`, and reads the rest of its own script from stdin up to a `BST-GO` line; the
/// upload stream follows it. If the client goes away before `BST-GO`, it unlocks and exits.
pub fn deploy_session(base: &str, owner_json: &str, token: &str, known_generation: &str, forbidden: &[String]) -> String {
    let mut s = lock_script(base, owner_json, true, Some(known_generation), forbidden);
    // `read` takes a pipe byte by byte, so nothing after BST-GO is consumed: that is the
    // upload's `tar` input.
    s.push_str(
        r#"echo BST-READY
go=; bst_next=
while IFS= read -r bst_line; do
  if [ "$bst_line" = BST-GO ]; then go=1; break; fi
  bst_next="$bst_next$bst_line
"
done
if [ -z "$go" ]; then
  if [ -n "$bst_check" ]; then wait "$bst_check" 2>/dev/null; fi
  rm -f "$bst_verdict"
"#,
    );
    s.push_str(&unlock_fragment(token));
    s.push_str("  exit 0\nfi\neval \"$bst_next\"\n");
    s
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
/// none): the manifest is sent only when the server's differs.
fn lock_script(base: &str, owner_json: &str, create: bool, deploy: Option<&str>, forbidden: &[String]) -> String {
    let mut s = base_var(base);
    // Before anything is created: `mkdir -p` through a symlinked parent would already write
    // inside a forbidden path.
    s.push_str(&forbidden_fragment(forbidden));
    if deploy.is_some() {
        s.push_str(&start_check());
    }
    if create {
        s.push_str("mkdir -p \"$B/releases\" \"$B/shared\" \"$B/logs\" || exit 1\n");
    } else {
        s.push_str("if [ ! -d \"$B/releases\" ]; then echo NOBASE; exit 0; fi\n");
    }
    let _ = write!(
        s,
        r#"if mkdir "$B/{LOCK_DIR}" 2>/dev/null; then
  printf '%s\n' {owner} > "$B/{LOCK_DIR}/owner" || exit 1
  echo LOCKED
  rm -rf "$B/{INCOMING_DIR}" "$B/{TRASH_DIR}"
else
  printf 'HELD '; tr -d '\n' < "$B/{LOCK_DIR}/owner" 2>/dev/null; echo
  a=$(cat "$B/{LOCK_DIR}/active" 2>/dev/null)
  if [ -n "$a" ] && kill -0 "$a" 2>/dev/null; then echo ACTIVE; fi
  exit 0
fi
"#,
        owner = quote(owner_json)
    );
    if deploy.is_some() {
        s.push_str(&wait_cache_job());
    }
    s.push_str(state_body());
    if let Some(known) = deploy {
        // From stdin with -n: no file name or timestamp, so no gzip warning (exit 2).
        let _ = write!(
            s,
            r#"if [ -f {CACHE_DIR}/generation ] && [ -d {CACHE_DIR}/pristine ] && [ -f {CACHE_DIR}/manifest ]; then
  if [ "$(cat {CACHE_DIR}/generation)" = {known} ] && [ "$(head -c 14 {CACHE_DIR}/manifest)" = bst-manifest-2 ]; then printf 'MSAME %s\n' "$(wc -c < {CACHE_DIR}/manifest | tr -d ' ')"; else
  M={LOCK_DIR}/manifest.gz
  if gzip -1 -c -n < {CACHE_DIR}/manifest > "$M"; then printf 'BST-MANIFEST-GZ %s\n' "$(wc -c < "$M" | tr -d ' ')"; cat "$M"; fi
  rm -f "$M"
  fi
fi
"#,
            known = quote(known)
        );
    }
    s
}

/// `bst_real PATH`: PATH with every existing ancestor resolved on the server (`pwd -P`) and
/// the part that does not exist yet appended as written.
const REAL_PATH: &str = r#"bst_real() { p=$1; rest=; while [ ! -d "$p" ]; do case $p in /|'') break;; esac; rest="/${p##*/}$rest"; p=${p%/*}; [ -n "$p" ] || p=/; done; r=$(cd "$p" 2>/dev/null && pwd -P) || r=$p; printf '%s%s' "${r%/}" "$rest"; }
"#;

/// Refuses a base that is, once resolved on the server, at or under a forbidden path, itself
/// resolved there (a forbidden path may be a symlink, and a base that does not exist yet may
/// sit under a symlinked parent): prints `FORBIDDEN <index>`, `REAL_BASE`, `REAL_FORBIDDEN`
/// and stops before anything is created.
pub fn forbidden_fragment(forbidden: &[String]) -> String {
    if forbidden.is_empty() {
        return String::new();
    }
    let mut s = String::from(REAL_PATH);
    s.push_str("bst_rb=$(bst_real \"$B\")\n");
    for (i, f) in forbidden.iter().enumerate() {
        let _ = writeln!(
            s,
            r#"bst_rf=$(bst_real {f}); case "$bst_rb/" in "$bst_rf"/*) printf 'FORBIDDEN {i}\nREAL_BASE %s\nREAL_FORBIDDEN %s\n' "$bst_rb" "$bst_rf"; exit 0;; esac"#,
            f = quote(f)
        );
    }
    s
}

/// The name the cache job runs under, so a pid file left by a reboot never makes us wait
/// for (or signal) an unrelated process that reused the pid.
const CACHE_JOB: &str = "bst-cache-job";

/// Lets a running cache job finish (bounded: a minute), then stops it. Either way the
/// cache is left complete or without a generation marker, never half-written and marked.
fn wait_cache_job() -> String {
    format!(
        r#"J="$B/{CACHE_DIR}/job.pid"
if [ -f "$J" ]; then
  jp=$(cat "$J" 2>/dev/null)
  job_alive() {{ if [ -r "/proc/$jp/cmdline" ]; then tr '\0' ' ' < "/proc/$jp/cmdline" | grep -q {CACHE_JOB}; else ps -p "$jp" -o args= 2>/dev/null | grep -q {CACHE_JOB}; fi; }}
  n=0
  while [ -n "$jp" ] && job_alive && [ $n -lt 600 ]; do sleep 0.1 2>/dev/null || sleep 1; n=$((n+1)); done
  if [ -n "$jp" ] && job_alive; then
    kill -TERM -- "-$jp" 2>/dev/null || kill -TERM "$jp" 2>/dev/null
    n=0; while job_alive && [ $n -lt 50 ]; do sleep 0.1 2>/dev/null || sleep 1; n=$((n+1)); done
  fi
  rm -f "$J"
fi
"#
    )
}

/// A listing of everything under the named paths that changes when any file is written,
/// truncated, replaced, renamed or removed (size, mode, mtime, ctime, inode, device). The cache
/// job records it once the pristine copy is proven; a deploy that finds it changed does not
/// patch from that copy. GNU find: without `-printf` nothing is ever recorded, so nothing is
/// ever trusted and every deploy is a full upload.
const STAT_LISTING: &str = "find pristine manifest -printf '%y %m %s %T@ %C@ %i %D %p\\0'";
/// The same for the spare and the manifest, from the path list the cache job recorded
/// (`spare.paths`), stat'ed in parallel and sorted: with cold caches the inode reads dominate,
/// and eight at a time take half the time of one `find`. A file added or removed changes its
/// directory's mtime and ctime, and the directories are in the list. Lines, line-buffered: the
/// parallel writers then never split one another's records (a name with a newline is two
/// lines, the same two lines on both sides).
const SPARE_LISTING: &str =
    "xargs -0 -r -P 8 -n 256 stdbuf -oL stat --printf '%F %a %s %.9Y %.9Z %i %d %n\\n' < spare.paths | LC_ALL=C sort";

/// Whether the spare (and the manifest) are as the cache job left them. The stat walk reads
/// every inode of the spare (0.3 s per 5,000 files with cold caches on this VM), so it starts
/// in the background first thing, before the lock is even taken, and overlaps the lock, the
/// state listing, the round trip, the client's planning and the upload; the upload script waits
/// for it ([`use_check`]). It only reads, and it proves only the spare it saw: its verdict
/// names the spare's generation and the identity of the listing it compared against, and
/// counts only if both are unchanged when it is used (a cache job may replace the spare
/// meanwhile). The verdict file is this session's own.
fn start_check() -> String {
    format!(
        r#"bst_check=; bst_verdict="$B/{CACHE_DIR}/spare.checked.$$"
if [ -f "$B/{CACHE_DIR}/spare.generation" ]; then
  ( cd "$B/{CACHE_DIR}" || exit 0
    seen="$(cat spare.generation 2>/dev/null) $({SPARE_ID} 2>/dev/null)"
    {{ {SPARE_LISTING} 2>/dev/null | cmp -s - spare.stat; }} && printf '%s\n' "$seen" > "$bst_verdict"
  ) < /dev/null > /dev/null 2>&1 &
  bst_check=$!
fi
"#
    )
}

/// The identity of the recorded spare listing: a new one is a new file (inode, mtime).
const SPARE_ID: &str = "find spare.stat -printf '%i %T@'";

/// What a delta may patch from. A touched spare (or manifest) is dropped: the release is then
/// copied from the pristine tree, which must itself be as the cache job proved it, or the
/// pristine copy loses its generation (the delta exits [`DELTA_STALE`] and the client sends
/// everything). A damaged pristine copy behind a good spare does not matter to this deploy:
/// the release comes from the spare, and the cache job proves the patched pristine copy again
/// before the next one. Says what it did on stderr (`V `, shown with -v). An upload run as a
/// command of its own (the retry after a stale base) has no check to wait for.
fn use_check(delta: bool) -> String {
    let mut s = format!(
        r#"if [ -n "${{bst_check:-}}" ]; then wait "$bst_check" 2>/dev/null || true; bst_check=; fi
if [ -f "$B/{CACHE_DIR}/spare.generation" ]; then
  now="$(cat "$B/{CACHE_DIR}/spare.generation" 2>/dev/null) $(cd "$B/{CACHE_DIR}" && {SPARE_ID} 2>/dev/null)"
  if [ -z "${{bst_verdict:-}}" ] || [ "$(cat "$bst_verdict" 2>/dev/null)" != "$now" ]; then
    rm -rf "$B/{CACHE_DIR}/spare" "$B/{CACHE_DIR}/spare.generation"
    echo 'V the spare copy changed since it was made, or could not be checked; the release is copied from the pristine tree' >&2
  fi
fi
rm -f "${{bst_verdict:-/nonexistent}}"
"#
    );
    if delta {
        let _ = write!(
            s,
            r#"if [ ! -f "$B/{CACHE_DIR}/spare.generation" ] && [ -f "$B/{CACHE_DIR}/generation" ] && ! (cd "$B/{CACHE_DIR}" && {STAT_LISTING} 2>/dev/null | cmp -s - pristine.stat); then
  rm -f "$B/{CACHE_DIR}/generation"
  echo 'V the pristine copy changed since it was verified; this deploy sends everything' >&2
fi
"#
        );
    }
    s
}

/// Starts the cache job in its own session, detached from the SSH channel, while the lock is
/// still held (the next deploy's lock must find it registered, to wait for it). It unpacks
/// the pristine copy from the upload's tee'd archive (full uploads), proves the pristine copy
/// equals its manifest (the upload's completion marker inside it, every path, kind, size and
/// SHA-256) and only then writes its generation, the mark that lets the next deploy patch
/// from it. Then it prepares `spare`, a private copy of the pristine tree that the next delta
/// deploy renames into place instead of copying the whole tree while the operator waits.
pub fn start_cache_job(generation: &str) -> String {
    let job = format!(
        r#"B=$1; C="$B/{CACHE_DIR}"
cd "$C" 2>/dev/null || exit 0
# Registered by the job itself: until this process runs this script, its command line is
# its parent's, without the name the waiting side checks for.
echo $$ > job.pid.tmp && mv -f job.pid.tmp job.pid
# Temp names of this run only: a killed job's children (cp, tar, find) may live on as orphans
# and keep writing into the names it used, which this run must never adopt.
P=pristine.tmp.$$; S=spare.tmp.$$
trap 'rm -rf "$C/$P" "$C/$S" "$C/pristine.verify-list.$$" "$C/pristine.stat.$$" "$C/spare.stat.$$"' EXIT
rm -rf "$C.old" pristine.tmp.* spare.tmp.* pristine.stat.* spare.stat.* pristine.verify-list.* spare.checked.* 2>/dev/null
rm -f generation pristine.stat
A=; if [ -f {tgz} ]; then A={tgz}; z=z; elif [ -f {tar} ]; then A={tar}; z=; fi
if [ -n "$A" ]; then
  # tee may have hit a full disk while tar did not: only the marker, the last entry of the
  # stream, proves the kept archive is whole.
  if mkdir "$P" && tar -x${{z}}f "$A" -C "$P" --no-same-owner && [ -f "$P/{COMPLETE}" ] && rm -rf "$P/{UPLOAD}" && rm -rf pristine && mv "$P" pristine && mv upload/manifest manifest; then
    :
  else
    echo "$(date -u +%FT%TZ) could not unpack the pristine copy; the next deploy sends everything"
    rm -rf pristine manifest
  fi
  rm -rf "$A" upload
fi
[ -d pristine ] && [ -f manifest ] || exit 0
if ! command -v perl >/dev/null 2>&1; then echo "$(date -u +%FT%TZ) no perl on this server: the pristine copy cannot be verified, so every deploy sends everything"; exit 0; fi
if ! perl -e {verify} manifest pristine; then
  echo "$(date -u +%FT%TZ) the next deploy sends everything"
  rm -rf pristine manifest spare spare.generation
  exit 0
fi
{STAT_LISTING} > pristine.stat.$$ && mv pristine.stat.$$ pristine.stat && printf '%s\n' {generation} > generation || exit 0
g=$(cat generation)
rm -rf spare spare.generation spare.stat
rm -f spare.paths
if [ ! -e spare ] && cp -a --reflink=auto pristine "$S" && mv "$S" spare && {{ find spare -print0 && printf 'manifest\0'; }} > spare.paths \
  && {SPARE_LISTING} > spare.stat.$$ && mv spare.stat.$$ spare.stat; then
  printf '%s\n' "$g" > spare.generation
else
  rm -rf spare
  echo "$(date -u +%FT%TZ) could not prepare the spare copy; the next deploy copies the tree itself"
fi
"#,
        generation = quote(generation),
        verify = quote(VERIFY_PRISTINE),
        UPLOAD = crate::layout::UPLOAD_DIR,
        COMPLETE = crate::layout::COMPLETE_MARKER,
        tgz = untar(Framing::Gzip(1)).1,
        tar = untar(Framing::Tar).1,
    );
    let q = quote(&job);
    format!(
        r#"if [ -d "$B/{CACHE_DIR}" ]; then
  rm -f "$B/{CACHE_DIR}/job.pid"
  if command -v setsid >/dev/null 2>&1; then setsid sh -c {q} {CACHE_JOB} "$B" < /dev/null >> "$B/{CACHE_DIR}/job.log" 2>&1 &
  else sh -c {q} {CACHE_JOB} "$B" < /dev/null >> "$B/{CACHE_DIR}/job.log" 2>&1 & fi
  n=0; while [ ! -f "$B/{CACHE_DIR}/job.pid" ] && [ $n -lt 500 ]; do sleep 0.01 2>/dev/null || sleep 1; n=$((n+1)); done
fi
"#
    )
}

/// The pristine copy's proof, in perl: see the script's header.
const VERIFY_PRISTINE: &str = include_str!("scripts/verify-pristine.pl");

/// Removes the lock only if it is still ours: a lock broken and retaken by someone else
/// must survive our cleanup.
pub fn unlock_fragment(token: &str) -> String {
    format!(
        "if [ -f \"$B/{LOCK_DIR}/owner\" ] && grep -qF {t} \"$B/{LOCK_DIR}/owner\"; then rm -rf \"$B/{LOCK_DIR}\"; fi\n",
        t = quote(token)
    )
}

pub fn unlock(base: &str, token: &str) -> String {
    base_var(base) + &unlock_fragment(token)
}

/// The owner record names `token` (`$1` the lock directory), as a whole JSON member: a
/// token that merely contains another must not match it.
fn owned_by(token: &str) -> String {
    let member = serde_json::to_string(token).unwrap_or_default();
    format!("bst_owned_by() {{ grep -qF {} \"$1/owner\" 2>/dev/null; }}\n", quote(&format!("\"token\":{member}")))
}

/// Breaks a lock the client judged stale, only if it is still that lock (its owner record
/// names `token`). The lock is first renamed to a name of this script's own, an atomic step
/// only one breaker can take; a plain `rm -rf` by two clients that both saw the stale lock
/// would let the second delete the fresh lock the first had just taken. What was renamed is
/// checked again: if someone broke and retook the lock in between, theirs is put back, never
/// deleted. Prints `BROKEN`, `GONE` (no lock any more), or `HELD <owner>` (not that lock).
/// `nonce` makes the aside name this client's own (with the script's pid).
pub fn break_stale(base: &str, token: &str, nonce: &str) -> String {
    let mut s = base_var(base);
    s.push_str(&owned_by(token));
    let _ = write!(
        s,
        r#"trap '' PIPE HUP
L="$B/{LOCK_DIR}"; X="$B/{LOCK_DIR}.broken.$$."{nonce}
held() {{ printf 'HELD '; tr -d '\n' < "$1/owner" 2>/dev/null; echo; }}
if [ ! -d "$L" ]; then echo GONE; exit 0; fi
if ! bst_owned_by "$L"; then held "$L"; exit 0; fi
if ! mv "$L" "$X" 2>/dev/null; then echo GONE; exit 0; fi
if bst_owned_by "$X"; then rm -rf "$X"; echo BROKEN; exit 0; fi
# -T: never into a lock directory that appeared meanwhile.
if [ ! -e "$L" ]; then mv -T "$X" "$L" 2>/dev/null; fi
if [ -d "$X" ]; then held "$X"; echo "a lock taken meanwhile was moved aside to $X and could not be put back: another was taken since" >&2; else held "$L"; fi
"#,
        nonce = quote(nonce)
    );
    s
}

/// `bst unlock`: breaks the lock whatever holds it, printing whose it was. Renamed first, so
/// the holder printed is exactly the lock deleted, even if another run takes a fresh lock
/// meanwhile.
pub fn force_unlock(base: &str, nonce: &str) -> String {
    base_var(base)
        + &format!(
            r#"trap '' PIPE HUP
X="$B/{LOCK_DIR}.broken.$$."{nonce}
if [ -d "$B/{LOCK_DIR}" ] && mv "$B/{LOCK_DIR}" "$X" 2>/dev/null; then printf 'HELD '; tr -d '\n' < "$X/owner" 2>/dev/null; echo; rm -rf "$X"; else echo FREE; fi
"#,
            nonce = quote(nonce)
        )
}

/// Run over a new connection after the deploy's own dropped: waits, bounded, while this
/// run's script is still at work on the server (the lock is this run's and the pid it
/// registered lives; an armed watchdog does not count, it waits for the client), then prints
/// `C <current>`, `M <release id's meta>`, `HELD` while the lock is still this run's, and
/// `RUNNING` if the script had not finished by then.
pub fn after_drop(base: &str, token: &str, id: &str, wait_secs: u64) -> String {
    let mut s = base_var(base);
    s.push_str(&owned_by(token));
    let _ = write!(
        s,
        r#"L="$B/{LOCK_DIR}"
busy() {{ bst_owned_by "$L" || return 1; a=$(cat "$L/active" 2>/dev/null); [ -n "$a" ] && [ "$a" != "$(cat "$L/watchdog.pid" 2>/dev/null)" ] && kill -0 "$a" 2>/dev/null; }}
n=0; while busy && [ $n -lt {ticks} ]; do sleep 0.1 2>/dev/null || sleep 1; n=$((n+1)); done
printf 'C %s\n' "$(readlink "$B/current" 2>/dev/null)"
M="$B/releases/"{id}/{META}
if [ -f "$M" ]; then printf 'M '; tr -d '\n' < "$M"; echo; fi
if bst_owned_by "$L"; then echo HELD; fi
if busy; then echo RUNNING; fi
"#,
        ticks = wait_secs * 10,
        id = quote(id),
        META = crate::release::META_FILE,
    );
    s
}

/// Writes a release's `.release-meta` without following a link at either name (a build could
/// leave one): the temp name is removed and created with noclobber (`O_EXCL`), then renamed
/// over the meta; `mv -T` replaces a link rather than writing through it or moving into the
/// directory behind it. `dir` and `printf` are shell text: the release directory and the
/// `printf` command that prints the JSON.
pub(crate) fn write_meta(dir: &str, printf: &str) -> String {
    use crate::release::{META_FILE, META_TMP};
    format!(
        "rm -f {dir}/{META_TMP} && (set -C; {printf} > {dir}/{META_TMP}) && {{ mv -fT {dir}/{META_TMP} {dir}/{META_FILE} 2>/dev/null || {{ [ ! -d {dir}/{META_FILE} ] && mv -f {dir}/{META_TMP} {dir}/{META_FILE}; }}; }}"
    )
}

pub(crate) fn printf_json(json: &str) -> String {
    format!("printf '%s\\n' {}", quote(json))
}

/// `../` enough times to get from a path inside `releases/<id>/` back to `<base>`.
fn up_to_base(rel_path: &str) -> String {
    "../".repeat(rel_path.matches('/').count() + 2)
}

fn parent(rel_path: &str) -> Option<&str> {
    rel_path.rfind('/').map(|i| &rel_path[..i])
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
/// carries a manifest, the stream is also kept (`tee`, a sequential write) for the cache job
/// to unpack as the next pristine copy once the operator is no longer waiting.
pub fn upload(base: &str, id: &str, shared_files: &[String], shared_dirs: &[String], meta_json: &str, framing: Framing) -> String {
    let mut s = upload_prologue(base, id, false);
    let (x, archive) = untar(framing);
    let _ = write!(
        s,
        r#"mkdir -p "$I"
# This upload replaces the cache; the old one is deleted by the cache job, not now.
if [ -e "$C" ]; then rm -rf "$C.old"; mv "$C" "$C.old"; fi
mkdir -p "$C"
# A stream cut short (Ctrl-C, dead client, full disk) leaves nothing behind.
tee "$C/{archive}" | tar {x} - -C "$I" --no-same-owner || {{ rc=$?; rm -rf "$I" "$C"; rmdir "$B/{INCOMING_DIR}" 2>/dev/null; exit $rc; }}
"#
    );
    s.push_str(&require_complete("$I", "\"$I\" \"$C\""));
    let _ = writeln!(s, "mv \"$I/{}\" \"$C/upload\"", crate::layout::UPLOAD_DIR);
    s.push_str(&finish_staging(id, shared_files, shared_dirs, meta_json));
    s
}

/// The start both uploads share: staging dir `$I`, release dir `$R`, cache `$C`, and no
/// overwriting a release that exists.
fn upload_prologue(base: &str, id: &str, delta: bool) -> String {
    base_var(base)
        + REGISTER
        + &format!(
            r#"set -eu
I="$B/{INCOMING_DIR}/{id}"
R="$B/releases/{id}"
C="$B/{CACHE_DIR}"
if [ -e "$R" ]; then echo "release {id} already exists" >&2; exit 1; fi
{check}"#,
            check = use_check(delta)
        )
}

/// tar accepts an archive cut at an entry boundary, and gzip one cut between members: only
/// the marker the client sends last proves that everything before it arrived. `remove` is
/// what an incomplete upload leaves to delete.
fn require_complete(dir: &str, remove: &str) -> String {
    format!(
        "if [ ! -f \"{dir}/{}\" ]; then rm -rf {remove}; rmdir \"$B/{INCOMING_DIR}\" 2>/dev/null; echo \"the upload stream ended early\" >&2; exit 1; fi\n",
        crate::layout::COMPLETE_MARKER
    )
}

/// Exit status of a delta upload whose pristine copy is not the one the client diffed
/// against: the client then sends a full snapshot instead.
pub const DELTA_STALE: i32 = 75;

/// Receives only what changed and applies it (and the removals) to the pristine copy. The
/// release is the cache job's `spare` (a private copy of the pristine tree, made after the
/// last deploy) with the same changes applied, renamed into place; without a spare it is a
/// `cp -a --reflink=auto` of the pristine tree. Never hardlinks, so a build that edits a file
/// in place cannot corrupt the next deploy. The generation marker is removed before the
/// pristine copy changes, so an update cut short forces a full upload.
pub fn upload_delta(
    base: &str,
    id: &str,
    generation: &str,
    shared_files: &[String],
    shared_dirs: &[String],
    meta_json: &str,
    framing: Framing,
) -> String {
    let mut s = upload_prologue(base, id, true);
    let (x, _) = untar(framing);
    let _ = write!(
        s,
        r#"D="$I.delta"
if [ ! -d "$C/pristine" ] || [ "$(cat "$C/generation" 2>/dev/null)" != {generation} ]; then echo "pristine copy changed" >&2; exit {DELTA_STALE}; fi
mkdir -p "$D"
tar {x} - -C "$D" --no-same-owner || {{ rc=$?; rm -rf "$D"; rmdir "$B/{INCOMING_DIR}" 2>/dev/null; exit $rc; }}
{complete}mv "$D/{UPLOAD}" "$I.meta"
rm -f "$C/generation"
apply() {{
  cd "$1"
  # The empty-directory sweep walks the whole tree: only when something was removed.
  if [ -s "$I.meta/removed" ]; then
    xargs -0 -r rm -rf -- < "$I.meta/removed"
    find . -mindepth 1 -depth -type d -empty -delete
  fi
  cd "$D"
  tar -cf - . | tar -xf - -C "$1" --no-same-owner
}}
spare=
if [ -d "$C/spare" ] && [ "$(cat "$C/spare.generation" 2>/dev/null)" = {generation} ]; then
  rm -f "$C/spare.generation"
  mv "$C/spare" "$I"
  apply "$I"
  spare=yes
fi
apply "$C/pristine"
# A whole manifest now and then; usually the changed records, appended (O(change)).
if [ -f "$I.meta/manifest" ]; then mv "$I.meta/manifest" "$C/manifest"; else cat "$I.meta/manifest-patch" >> "$C/manifest"; fi
cd "$B"
rm -rf "$D" "$I.meta"
[ -n "$spare" ] || cp -a --reflink=auto "$C/pristine" "$I"
# No generation yet: the cache job writes it once it has proven the patched copy.
"#,
        generation = quote(generation),
        complete = require_complete("$D", "\"$D\""),
        UPLOAD = crate::layout::UPLOAD_DIR
    );
    s.push_str(&finish_staging(id, shared_files, shared_dirs, meta_json));
    s
}

/// Makes every parent of a shared link a real directory inside the release, one level at a
/// time (`mkdir -p`, `rm -rf` and `ln` all follow a symlinked parent): a committed
/// `apps/web -> ../../../shared` would otherwise put the link, or delete the file, in the
/// server's own `shared/`. A parent that is a link or a file fails the deploy before the switch.
const REAL_PARENTS: &str = r#"bst_real_parents() {
  bst_rest=$1; bst_p=.
  while :; do
    case $bst_rest in */*) ;; *) return 0;; esac
    bst_p="$bst_p/${bst_rest%%/*}"; bst_rest=${bst_rest#*/}
    if [ -L "$bst_p" ] || { [ -e "$bst_p" ] && [ ! -d "$bst_p" ]; }; then
      printf 'shared path %s: %s in the release is a symlink or a file, not a directory; refusing to link through it (is it a symlink in the workspace?)\n' "$1" "${bst_p#./}" >&2
      exit 1
    fi
    [ -d "$bst_p" ] || mkdir "$bst_p"
  done
}
"#;

/// The common tail of both uploads: shared links, pending meta, rename into `releases/`.
fn finish_staging(id: &str, shared_files: &[String], shared_dirs: &[String], meta_json: &str) -> String {
    let mut s = String::from("cd \"$I\"\n");
    let shared = shared_files.iter().map(|p| (p, false)).chain(shared_dirs.iter().map(|p| (p, true)));
    if !shared_files.is_empty() || !shared_dirs.is_empty() {
        s.push_str(REAL_PARENTS);
    }
    for (p, is_dir) in shared {
        let q = quote(p);
        let _ = writeln!(s, "bst_real_parents {q}");
        if let Some(dir) = parent(p) {
            let _ = writeln!(s, "mkdir -p \"$B/shared/\"{}", quote(dir));
        }
        if is_dir {
            let _ = writeln!(s, "mkdir -p \"$B/shared/\"{q}");
        } else {
            let _ = writeln!(s, "[ -e \"$B/shared/\"{q} ] || printf 'W shared file shared/%s does not exist yet\\n' {q}");
        }
        let _ = writeln!(s, "rm -rf {q}\nln -s {} {q}", quote(&format!("{}shared/{p}", up_to_base(p))));
    }
    s.push_str(&write_meta(".", &printf_json(meta_json)));
    s.push_str(" || exit 1\n");
    let _ = write!(
        s,
        r#"cd "$B"
if [ -e "$R" ]; then echo "release {id} appeared during the upload" >&2; exit 1; fi
# -T: never move *into* an existing directory.
mv -T "$I" "$R" 2>/dev/null || mv "$I" "$R"
rmdir "$B/{INCOMING_DIR}" 2>/dev/null || true
"#
    );
    s
}

/// Runs install and build in the release dir in the user's login shell (so nvm, pnpm and
/// friends are on PATH), streaming output and saving it to `logs/<id>.log`. The build runs
/// in its own session with its pid recorded, so an aborted deploy can stop the whole
/// process group instead of leaving a build writing into a release nobody wants.
pub fn build(base: &str, id: &str, target: &str, steps: &[&str]) -> String {
    let mut inner = base_var(base);
    let _ = write!(
        inner,
        r#"R="$B/releases/{id}"
cd "$R" || exit 1
BST_RELEASE_ID={id} BST_TARGET={target} BST_BASE="$B" BST_RELEASE_DIR="$R"
export BST_RELEASE_ID BST_TARGET BST_BASE BST_RELEASE_DIR
run() {{ printf '==> %s\n' "$1"; "${{SHELL:-/bin/sh}}" -lc "cd \"\$BST_RELEASE_DIR\" || exit 1
$1"; }}
{{ rc=0"#,
        target = quote(target)
    );
    for step in steps {
        let _ = write!(inner, "; [ $rc -ne 0 ] || run {} || rc=$?", quote(step));
    }
    let _ = write!(
        inner,
        r#"; echo $rc > "$B/logs/.{id}.rc"; }} < /dev/null 2>&1 | tee "$B/logs/{id}.log"
rc=$(cat "$B/logs/.{id}.rc" 2>/dev/null || echo 1)
rm -f "$B/logs/.{id}.rc"
exit "$rc"
"#
    );
    let q = quote(&inner);
    base_var(base)
        + &format!(
            r#"{REGISTER}P="$B/logs/.{id}.pid"
if command -v setsid >/dev/null 2>&1; then setsid sh -c {q} & else sh -c {q} & fi
echo $! > "$P"
wait $!
rc=$?
rm -f "$P"
exit $rc
"#
        )
}

/// Points `current` at `releases/<id>` atomically: a new link under a temp name renamed
/// over the old one, so there is never a moment without `current`. Verified by readlink.
pub(crate) fn switch_fragment(id: &str) -> String {
    format!(
        r#"if [ -e current ] && [ ! -L current ]; then echo "$B/current exists and is not a symlink; refusing to replace it" >&2; exit 1; fi
if [ -L releases/{id} ] || [ ! -d releases/{id} ] || ! grep -q '"status":"ok"' releases/{id}/{META} 2>/dev/null; then
  echo "releases/{id} is missing or is not an ok release; current stays where it is" >&2; exit 1
fi
ln -sfn releases/{id} .bst-current.tmp
if ! mv -T .bst-current.tmp current 2>/dev/null; then
  rm -f .bst-current.tmp releases/current
  ln -s releases/{id} releases/current
  mv releases/current .
fi
if [ "$(readlink current)" != releases/{id} ]; then echo "current does not point at releases/{id} after the switch" >&2; exit 1; fi
echo SWITCHED || true
"#,
        META = crate::release::META_FILE
    )
}

/// Appends one audit line when the target has a layout (service actions on a target that was
/// never deployed to leave no trace rather than creating directories).
pub fn append_audit(base: &str, line_json: &str) -> String {
    format!("{}if [ -d \"$B/logs\" ]; then\n{}fi\n", base_var(base), audit_fragment(line_json))
}

fn audit_fragment(line_json: &str) -> String {
    format!("printf '%s\\n' {} >> \"$B/logs/deploys.jsonl\" || true\n", quote(line_json))
}

/// The releases a script's prune step removed: its `P <id>` lines.
pub fn pruned_ids(stdout: &str) -> Vec<String> {
    stdout.lines().filter_map(|l| l.strip_prefix("P ")).map(str::to_string).collect()
}

/// Renames the releases into a trash dir of this run (so a cut-short prune never leaves a
/// half-deleted directory under `releases/` that still reads as a release), then deletes them
/// in the background after a deploy (the operator does not wait for `rm -rf` of whole trees)
/// or at once for `bst prune` (whose point may be the disk space). A deletion cut short is
/// finished by the next lock.
fn prune_fragment(ids: &[String], background: bool) -> String {
    let mut s = String::new();
    if ids.is_empty() {
        return s;
    }
    let _ = writeln!(s, "T={TRASH_DIR}/$$\nmkdir -p \"$T\"");
    for id in ids {
        let _ = writeln!(s, "if mv releases/{id} \"$T\"/{id}; then echo P {id}; else echo 'W could not remove releases/{id}'; fi");
    }
    if background {
        let _ = writeln!(s, "( rm -rf \"$T\"; rmdir {TRASH_DIR} 2>/dev/null ) < /dev/null > /dev/null 2>&1 &");
    } else {
        let _ = writeln!(s, "rm -rf \"$T\"; rmdir {TRASH_DIR} 2>/dev/null");
    }
    s
}

/// The end of a good deploy: meta `ok` first (so `current` only ever points at an ok
/// release), then the switch; pruning and unlocking after it are best effort and can no
/// longer fail the deploy.
/// With `keep_lock` the lock stays held (the health gate runs under it).
pub fn finish_deploy(base: &str, id: &str, meta_json: &str, prune: &[String], audit_json: &str, token: &str, keep_lock: bool) -> String {
    let mut s = base_var(base) + DETACHED;
    s.push_str("set -eu\ncd \"$B\"\n");
    let placeholder = format!("\"duration_ms\":{DURATION_PLACEHOLDER}");
    match meta_json.split_once(&placeholder) {
        // Run inside one script with the upload: the duration is only known here.
        Some((pre, post)) => {
            let printf = format!(
                "printf '%s%s%s\\n' {} \"$((T_BEFORE + $(bst_ms) - T0))\" {}",
                quote(&format!("{pre}\"duration_ms\":")),
                quote(post)
            );
            s.push_str(&write_meta(&format!("releases/{id}"), &printf));
        }
        None => s.push_str(&write_meta(&format!("releases/{id}"), &printf_json(meta_json))),
    }
    // No exit here: the switch below refuses a release whose meta does not say ok.
    s.push('\n');
    s.push_str(&switch_fragment(id));
    s.push_str("set +e\n");
    s.push_str(&prune_fragment(prune, true));
    s.push_str(&audit_fragment(audit_json));
    if !keep_lock {
        s.push_str(&unlock_fragment(token));
    }
    s
}

/// Stands for `duration_ms` in a meta written by a script that also uploads: the script
/// fills in the real value when it gets there.
pub const DURATION_PLACEHOLDER: u64 = 987_654_321_987;

/// Milliseconds since the epoch in the script (GNU `date +%N`, or whole seconds without it),
/// `T0` when the script started and `T_BEFORE` the client's time spent before it.
pub fn clock_prologue(before_ms: u64) -> String {
    format!(
        "bst_ms() {{ n=$(date +%s%N 2>/dev/null); case $n in ''|*[!0-9]*) echo $(( $(date +%s) * 1000 ));; *) echo $(( n / 1000000 ));; esac; }}\nT0=$(bst_ms)\nT_BEFORE={before_ms}\n"
    )
}

/// Prints `<tag> <ms since the script started>` for the client's phase timings.
pub fn clock_mark(tag: &str) -> String {
    format!("echo \"{tag} $(( $(bst_ms) - T0 ))\" || true\n")
}

/// After a failed deploy: drop the staging dir, mark the release failed unless it is live,
/// release the lock.
pub fn abort_deploy(base: &str, id: &str, failed_meta_json: &str, audit_json: &str, token: &str) -> String {
    let mut s = base_var(base) + DETACHED;
    let _ = write!(
        s,
        r#"P="$B/logs/.{id}.pid"
if [ -f "$P" ]; then kill -TERM "-$(cat "$P")" 2>/dev/null || kill -TERM "$(cat "$P")" 2>/dev/null; rm -f "$P"; fi
rm -rf "$B/{INCOMING_DIR}/{id}"
rmdir "$B/{INCOMING_DIR}" 2>/dev/null
if [ -d "$B/releases/{id}" ] && [ "$(readlink "$B/current" 2>/dev/null)" != releases/{id} ]; then
  {meta}
fi
"#,
        meta = write_meta(&format!("\"$B/releases/{id}\""), &printf_json(failed_meta_json))
    );
    s.push_str(&audit_fragment(audit_json));
    s.push_str(&unlock_fragment(token));
    s
}

/// With `keep_lock` the lock stays held (the health gate runs under it).
pub fn rollback(base: &str, id: &str, audit_json: &str, token: &str, keep_lock: bool) -> String {
    let mut s = base_var(base) + DETACHED;
    s.push_str("set -eu\ncd \"$B\"\n");
    s.push_str(&switch_fragment(id));
    s.push_str("set +e\n");
    s.push_str(&audit_fragment(audit_json));
    if !keep_lock {
        s.push_str(&unlock_fragment(token));
    }
    s
}

/// Switches `current` under a lock the caller keeps holding and a watchdog it armed (the
/// drill's steps): holds the watchdog's `busy` mark meanwhile, and does nothing (prints
/// `DECIDED`) once the watchdog has taken over.
pub fn guarded_switch(base: &str, id: &str, audit_json: &str) -> String {
    let mut s = base_var(base) + DETACHED;
    s.push_str(
        r#"if ! mkdir "$B/.bst-lock/busy" 2>/dev/null; then echo "the lock is not held, or another step is switching" >&2; exit 1; fi
if [ -d "$B/.bst-lock/decided" ]; then rmdir "$B/.bst-lock/busy"; echo DECIDED; exit 0; fi
(
set -eu
cd "$B"
"#,
    );
    s.push_str(&switch_fragment(id));
    s.push_str("set +e\n");
    s.push_str(&audit_fragment(audit_json));
    s.push_str(")\nrc=$?\nrmdir \"$B/.bst-lock/busy\"\nexit $rc\n");
    s
}

/// Facts for `bst check`, one `KEY value` line each. `tools`: the commands `install` and
/// `build` start, looked up in the login shell the build runs them in ([`build`]), with
/// their versions (see [`probe_fragment`]).
pub fn preflight(base: &str, units: &[(String, String)], forbidden: &[String], tools: &[String]) -> String {
    let mut s = base_var(base);
    s.push_str(crate::service::USER_ENV);
    s.push_str(REAL_PATH);
    s.push_str("printf 'RESOLVED %s\\n' \"$(bst_real \"$B\")\"\n");
    for (i, f) in forbidden.iter().enumerate() {
        let _ = writeln!(s, "printf 'FRESOLVED {i} %s\\n' \"$(bst_real {})\"", quote(f));
    }
    s.push_str(
        r#"if [ -L "$B" ]; then echo "BASE symlink $(readlink -f "$B")"; elif [ -d "$B" ]; then echo "BASE dir"; elif [ -e "$B" ]; then echo "BASE other"; else echo "BASE absent"; fi
p="$B"; while [ ! -e "$p" ] && [ ! -L "$p" ]; do p=$(dirname "$p"); done
if [ "$p" != "$B" ] && [ ! -d "$p" ]; then
  if [ -L "$p" ]; then k=symlink; elif [ -f "$p" ]; then k=file; else k=other; fi
  printf 'BLOCKED %s %s\n' "$k" "$p"
  p=$(dirname "$p")
fi
printf 'REAL %s
' "$(cd "$p" && pwd -P)"
printf 'EXISTING %s
' "$p"
t="$p/.bst-check.$$"
if e=$(mkdir "$t" 2>&1); then rmdir "$t"; echo "WRITABLE yes"; else printf 'WRITABLE no %s\n' "${e##*: }"; fi
df -Pk "$p" 2>/dev/null | awk 'NR > 1 { for (i = NF; i >= 5; i--) if ($i ~ /^[0-9]+%$/ && $(i-1) ~ /^[0-9]+$/) { print "FREE_KB " $(i-1); exit } }'
for c in tar gzip sh; do if command -v "$c" >/dev/null 2>&1; then echo "TOOL $c yes"; else echo "TOOL $c no"; fi; done
if [ -d "$B/.bst-lock" ]; then printf 'LOCK '; tr -d '
' < "$B/.bst-lock/owner" 2>/dev/null; echo; else echo "LOCK free"; fi
"#,
    );
    for (name, ctl_unit) in units {
        let _ = writeln!(s, "printf 'UNIT %s %s\\n' {} \"$({ctl_unit} 2>/dev/null)\"", quote(name));
    }
    s.push_str(&probe_fragment(tools));
    s
}

/// Tools whose version is worth showing, and the flag that prints it. Only these are run:
/// any other command word is only looked up, never executed.
const VERSIONED: &[&str] = &["node", "pnpm", "npm", "yarn", "bun", "deno"];

/// `LOGIN_SHELL <path>`, then per tool `PROBE BSTTOOL <name>`, the path `command -v` gives
/// (none: not found), `PROBE BSTVER`, its version. Runs in `"${SHELL:-/bin/sh}" -lc` as the
/// build does, so a tool put on PATH by a login profile (nvm, corepack, ~/.local/bin) is
/// found exactly when the build will find it. Every line is prefixed `PROBE ` so what a
/// profile prints cannot pass for another fact.
fn probe_fragment(tools: &[String]) -> String {
    if tools.is_empty() {
        return String::new();
    }
    let mut inner = String::new();
    for t in tools {
        let q = quote(t);
        let _ = write!(inner, "echo BSTTOOL {q}; command -v {q}; echo BSTVER; ");
        if VERSIONED.contains(&t.as_str()) {
            let _ = write!(inner, "{q} -v </dev/null 2>/dev/null; ");
        }
    }
    inner.push_str("echo BSTEND");
    format!(
        r#"printf 'LOGIN_SHELL %s
' "${{SHELL:-/bin/sh}}"
if command -v timeout >/dev/null 2>&1; then bst_t="timeout 30"; else bst_t=; fi
$bst_t "${{SHELL:-/bin/sh}}" -lc {} </dev/null 2>/dev/null | sed 's/^/PROBE /'
"#,
        quote(&inner)
    )
}

/// `background`: the deletion goes on after the command returns (a deploy's operator is
/// not kept waiting for `rm -rf`; `bst prune`'s may want the space back first).
pub fn prune(base: &str, ids: &[String], token: &str, background: bool) -> String {
    let mut s = base_var(base) + DETACHED;
    s.push_str("cd \"$B\" || exit 1\n");
    s.push_str(&prune_fragment(ids, background));
    s.push_str(&unlock_fragment(token));
    s
}

/// The end of a gate that passed: the confirmation the watchdog waits for, then the prune
/// and the unlock. Stops with `NOT-CONFIRMED` (lock left to the watchdog) when the watchdog
/// decided first.
pub fn confirm_and_prune(base: &str, ids: &[String], token: &str, audit_json: &str) -> String {
    let mut s = base_var(base) + DETACHED;
    s.push_str("cd \"$B\" || exit 1\n");
    s.push_str(&crate::watchdog::confirm_fragment(token));
    if !audit_json.is_empty() {
        s.push_str(&audit_fragment(audit_json));
    }
    s.push_str(&prune_fragment(ids, true));
    s.push_str(&unlock_fragment(token));
    s
}

/// Reads `<base>/<rel>` and counts its `.bak.*` backups: `FOUND <backups>` then the bytes, or
/// `MISSING <backups>`.
pub fn read_env(base: &str, rel: &str) -> String {
    base_var(base)
        + &format!(
            "F=\"$B/\"{}\nif [ -L \"$F\" ]; then F=$(readlink -f \"$F\"); fi\nn=0; for b in \"$F\".bak.*; do [ -f \"$b\" ] && n=$((n+1)); done\n\
             if [ -f \"$F\" ]; then echo \"FOUND $n\"; cat \"$F\"; else echo \"MISSING $n\"; fi\n",
            quote(rel)
        )
}

/// Writes stdin to `<base>/shared/<rel>` atomically, after a backup `<file>.bak.<stamp>`
/// (never overwriting an earlier backup), keeping only the newest `keep` backups (old ones
/// hold old secrets), then releases the lock. An existing file keeps its mode, owner and
/// group: the temp file is a `cp -p` copy that is then overwritten; where the SSH user may
/// not give it the original owner, the file is rewritten in place instead (still after the
/// backup). A new file is 0600. Prints `BACKUP <path>` when there was a file to back up and
/// `PRUNED <n>`, the backups removed.
pub fn write_env(base: &str, rel: &str, stamp: &str, keep: usize, audit_json: &str, token: &str) -> String {
    let mut s = base_var(base);
    let _ = write!(
        s,
        r#"{REGISTER}set -eu
F="$B/shared/"{rel}
if [ -L "$F" ]; then F=$(readlink -f "$F"); fi
mkdir -p "$(dirname "$F")"
umask 077
T="$F.bst-tmp.$$"
if [ -f "$F" ]; then
  # Names must keep sorting by age, or pruning deletes a newer backup than it keeps: the
  # counter is zero-padded (`-10` after `-2`) and always one past the highest in use, never
  # a name pruning freed earlier in the same second.
  bk="$F.bak.{stamp}"; hi=0
  for e in "$F.bak.{stamp}"-*; do
    [ -e "$e" ] || continue
    k=${{e##*-}}; k=$(expr "$k" + 0 2>/dev/null) || continue
    [ "$k" -gt "$hi" ] && hi=$k
  done
  if [ -e "$bk" ] || [ "$hi" -gt 0 ]; then bk="$F.bak.{stamp}-$(printf '%04d' $((hi + 1)))"; fi
  cp -p "$F" "$bk"; chmod 600 "$bk"
  printf 'BACKUP %s\n' "$bk"
  cp -p "$F" "$T" 2>/dev/null || {{ rm -f "$T"; cp "$F" "$T"; }}
  cat > "$T"
  if [ "$(ls -ln "$T" | awk '{{print $1, $3, $4}}')" = "$(ls -ln "$F" | awk '{{print $1, $3, $4}}')" ]; then
    mv -f "$T" "$F"
  else
    cat "$T" > "$F"; rm -f "$T"
  fi
else
  cat > "$T"
  chmod 600 "$T"
  mv -f "$T" "$F"
fi
# Names sort by time (`.bak.<stamp>`, then `-0001`, `-0002`…): all but the newest {keep} go.
total=0; for b in "$F".bak.*; do [ -f "$b" ] && total=$((total+1)); done
pr=0
for b in "$F".bak.*; do
  [ -f "$b" ] || continue
  [ "$total" -gt {keep} ] || break
  rm -f "$b"; total=$((total-1)); pr=$((pr+1))
done
printf 'PRUNED %s\n' "$pr"
set +e
"#,
        rel = quote(rel)
    );
    s.push_str(&audit_fragment(audit_json));
    s.push_str(&unlock_fragment(token));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_links_are_relative_to_the_base() {
        assert_eq!(up_to_base(".env"), "../../");
        assert_eq!(up_to_base("apps/api/.env"), "../../../../");
        let s = upload("/b", "20260220T051228Z", &["apps/api/.env".into()], &["storage".into()], "{}", Framing::Gzip(1));
        assert!(s.contains("ln -s ../../../../shared/apps/api/.env apps/api/.env"), "{s}");
        assert!(s.contains("mkdir -p \"$B/shared/\"storage"), "{s}");
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
        let script = deploy_session(base.to_str().unwrap(), "{\"token\":\"tok-1\"}", "tok-1", "", &[]);
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
        let entries =
            vec![crate::workspace::Entry { path: "a.txt".into(), kind: crate::workspace::entry::Kind::File { exec: false }, stat: None }];
        for (framing, archive) in [(Framing::Gzip(1), "snapshot.tgz"), (Framing::Tar, "snapshot.tar")] {
            let base = d.path().join(archive);
            std::fs::create_dir_all(base.join("releases")).unwrap();
            let run = |extra: &[crate::workspace::Extra]| {
                let mut stream = Vec::new();
                crate::workspace::stream_tar(&src, &entries, extra, &mut stream, framing, &|_, _| {}).unwrap();
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
            Entry { path: "a.txt".into(), kind: Kind::File { exec: false }, stat: None },
            Entry { path: "dir/b.sh".into(), kind: Kind::File { exec: true }, stat: None },
            Entry { path: "l".into(), kind: Kind::Symlink, stat: None },
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
            crate::workspace::stream_tar(&src, &entries, &extra, &mut tar, Framing::Tar, &|_, _| {}).unwrap();
            tar.truncate(tar.len() - cut);
            std::fs::write(c.join(untar(Framing::Tar).1), &tar).unwrap();
            std::fs::write(c.join("upload/manifest"), manifest).unwrap();
            let script = format!("{}{}", base_var(base.to_str().unwrap()), start_cache_job("20260220T051228Z abc"));
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
        for (id, status) in [(good, "ok"), (bad, "failed")] {
            std::fs::create_dir_all(base.join("releases").join(id)).unwrap();
            std::fs::write(base.join("releases").join(id).join(".release-meta"), format!("{{\"id\":\"{id}\",\"status\":\"{status}\"}}\n"))
                .unwrap();
        }
        std::os::unix::fs::symlink(format!("releases/{good}"), base.join("current")).unwrap();
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
        for id in [a, b] {
            std::fs::create_dir_all(base.join("releases").join(id)).unwrap();
            std::fs::write(base.join("releases").join(id).join(".release-meta"), format!("{{\"id\":\"{id}\",\"status\":\"ok\"}}\n"))
                .unwrap();
        }
        std::os::unix::fs::symlink(format!("releases/{a}"), base.join("current")).unwrap();
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

    #[test]
    fn deploy_finish_marks_ok_before_switching() {
        let s = finish_deploy("/b", "20260220T051228Z", "{}", &["20260101T000000Z".into()], "{}", "tok", false);
        let meta = s.find(".release-meta.tmp").unwrap();
        let switch = s.find("mv -T").unwrap();
        let prune = s.find("mv releases/20260101T000000Z \"$T\"/20260101T000000Z").unwrap();
        assert!(meta < switch && switch < prune);
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
