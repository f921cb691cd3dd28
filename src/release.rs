//! Pure release planning: ids, the server layout, `.release-meta`, and what rollback and
//! prune choose. Nothing here does I/O, so every rule is unit-tested.

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

/// Release ids are UTC `YYYYMMDDTHHMMSSZ`: they sort by name in creation order, so we never
/// trust mtimes (Capistrano #552, #1810).
pub fn is_release_id(s: &str) -> bool {
    parse_id(s).is_some()
}

/// Seconds since the epoch for a well-formed id with a real calendar date.
pub fn parse_id(s: &str) -> Option<i64> {
    // The shape first, byte by byte: chrono's `%Y` would also take a sign or a fifth digit,
    // and an id must be exactly the 16 characters that sort by name.
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' || !digits(0..8) || !digits(9..15) {
        return None;
    }
    let t = NaiveDateTime::parse_from_str(&s[..15], ID_FORMAT).ok()?;
    Some(t.and_utc().timestamp())
}

/// `YYYYMMDDTHHMMSS`, then a literal `Z`.
const ID_FORMAT: &str = "%Y%m%dT%H%M%S";

/// A time outside chrono's range (a quarter million years either way) cannot come from a
/// clock: it shows as the epoch rather than as a panic.
fn utc(unix: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(unix, 0).unwrap_or_default()
}

pub fn format_id(unix: i64) -> String {
    format!("{}Z", utc(unix).format(ID_FORMAT))
}

/// RFC 3339 UTC, second precision: what `.release-meta` and reports carry.
pub fn rfc3339(unix: i64) -> String {
    utc(unix).to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The id for a new release: now, or one second after the newest existing id when the clock
/// says otherwise (two deploys in one second, or a server clock ahead of ours), so ids stay
/// unique and keep sorting in creation order.
pub fn next_id(now_unix: i64, newest_existing: Option<&str>) -> String {
    let floor = newest_existing.and_then(parse_id).map_or(i64::MIN, |t| t + 1);
    format_id(now_unix.max(floor))
}

pub fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Uploaded, being built or not yet switched to; never a rollback target.
    Pending,
    Ok,
    Failed,
    /// A release directory with no readable bst meta (e.g. made by the old scripts).
    Unknown,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Ok => "ok",
            Status::Failed => "failed",
            Status::Unknown => "unknown",
        }
    }
}

/// `.release-meta`: JSON, one line, written by bst into every release.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Meta {
    pub id: String,
    pub target: String,
    pub status: Status,
    pub created_at: String,
    #[serde(default)]
    pub commit: Option<String>,
    #[serde(default)]
    pub branch: Option<String>,
    #[serde(default)]
    pub dirty: Option<bool>,
    #[serde(default)]
    pub deployed_by: String,
    #[serde(default)]
    pub tool_version: String,
    #[serde(default)]
    pub build: bool,
    #[serde(default)]
    pub files: u64,
    #[serde(default)]
    pub bytes: u64,
    #[serde(default)]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Release {
    pub id: String,
    pub meta: Option<Meta>,
}

impl Release {
    pub fn status(&self) -> Status {
        self.meta.as_ref().map_or(Status::Unknown, |m| m.status)
    }
}

/// What the server holds for one target, as read under the lock.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    /// Sorted by id, oldest first.
    pub releases: Vec<Release>,
    /// The release id `current` points at, when it points at `releases/<id>`.
    pub current: Option<String>,
    /// The raw link target when `current` exists but does not point at a release.
    pub current_raw: Option<String>,
    /// Whether `<base>` exists at all.
    pub base_exists: bool,
    /// `<base>` with symlinks resolved (`pwd -P`): an alias path shows here.
    pub real_base: Option<String>,
    /// The release whose snapshot the server keeps as its pristine copy, if any.
    pub cache_generation: Option<String>,
    /// Audit lines of switches the server's watchdog made with no client there to see them,
    /// not yet reported (the listing hands each out once).
    pub watchdog: Vec<String>,
}

impl State {
    pub fn newest_id(&self) -> Option<&str> {
        self.releases.last().map(|r| r.id.as_str())
    }

    pub fn get(&self, id: &str) -> Option<&Release> {
        self.releases.iter().find(|r| r.id == id)
    }

    /// Default rollback target: the newest `ok` release older than `current`.
    pub fn rollback_target(&self) -> Option<&Release> {
        let cur = self.current.as_deref()?;
        self.releases.iter().rev().find(|r| r.id.as_str() < cur && r.status() == Status::Ok)
    }

    /// Ids to delete so that at most `keep` releases remain. Failed and unfinished releases go
    /// first, then the oldest; `current`, its rollback target and `also_keep` are never
    /// chosen, even when that leaves more than `keep` (Capistrano #1907 pruned the live
    /// release). A deploy passes the release that was live before it: after a rollback that
    /// is not the new release's rollback target, and the health gate switches back to it.
    pub fn prune_plan(&self, keep: usize, also_keep: Option<&str>) -> Vec<String> {
        let excess = self.releases.len().saturating_sub(keep);
        if excess == 0 {
            return Vec::new();
        }
        let protected: Vec<&str> =
            self.current.iter().map(String::as_str).chain(self.rollback_target().map(|r| r.id.as_str())).chain(also_keep).collect();
        let mut candidates: Vec<&Release> = self.releases.iter().filter(|r| !protected.contains(&r.id.as_str())).collect();
        // Stable sort: broken ones first, each group oldest first.
        candidates.sort_by_key(|r| matches!(r.status(), Status::Ok | Status::Unknown));
        candidates.into_iter().take(excess).map(|r| r.id.clone()).collect()
    }
}

/// `<release id> <nonce>`: which upload a pristine copy holds (`.bst-cache/generation`).
pub fn is_generation(s: &str) -> bool {
    s.split(' ').next().is_some_and(is_release_id) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b' ')
}

/// Parses the listing printed by [`crate::remote::read_state`]: `B` when the base exists,
/// `R <id>` per release dir, `M <json>` for its meta, `C <link target>` for `current`.
/// Directory names that are not release ids are ignored: they are not ours.
pub fn parse_state(listing: &str) -> State {
    let mut state = State::default();
    let mut resolved: Option<String> = None;
    for line in listing.lines() {
        // By bytes: a release directory named with a non-ASCII character at byte 1 made
        // `split_at(2)` panic, and list, deploy, rollback and prune with it.
        let (tag, rest) = match (line.get(..2), line.get(2..)) {
            (Some(tag), Some(rest)) => (tag, rest),
            _ => (line, ""),
        };
        match tag {
            "B" => state.base_exists = true,
            "P " => state.real_base = Some(rest.to_string()),
            // `<release id> <nonce>`: which upload the pristine copy holds.
            "G " if is_generation(rest) => state.cache_generation = Some(rest.to_string()),
            "WD" => state.watchdog.push(rest.trim_start().to_string()),
            "CR" => resolved = Some(rest.trim_start().to_string()),
            "R " if is_release_id(rest) => state.releases.push(Release { id: rest.to_string(), meta: None }),
            "M " => {
                if let Some(last) = state.releases.last_mut() {
                    last.meta = serde_json::from_str::<Meta>(rest).ok().filter(|m| m.id == last.id);
                }
            }
            "C " if !rest.is_empty() => {
                let id = rest.trim_end_matches('/').strip_prefix("releases/").unwrap_or("");
                if is_release_id(id) {
                    state.current = Some(id.to_string());
                } else {
                    state.current_raw = Some(rest.to_string());
                }
            }
            _ => {}
        }
    }
    state.releases.sort_by(|a, b| a.id.cmp(&b.id));
    state.releases.dedup_by(|a, b| a.id == b.id);
    // An absolute link into our own releases dir (older tools) still names a release; one
    // into another base's releases/ (an old copy, a neighbour) must not: the server resolved
    // the link (`CR`), and it must land in this base's own releases/.
    if state.current.is_none() {
        if let Some(raw) = &state.current_raw {
            if let Some(pos) = raw.rfind("/releases/") {
                let id = raw[pos + "/releases/".len()..].trim_end_matches('/');
                let ours = match (&state.real_base, &resolved) {
                    (Some(b), Some(r)) => *r == format!("{}/releases/{id}", b.trim_end_matches('/')),
                    _ => false,
                };
                if is_release_id(id) && ours {
                    state.current = Some(id.to_string());
                    state.current_raw = None;
                }
            }
        }
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(id: &str, status: Status) -> Release {
        Release {
            id: id.into(),
            meta: Some(Meta {
                id: id.into(),
                target: "t".into(),
                status,
                created_at: String::new(),
                commit: None,
                branch: None,
                dirty: None,
                deployed_by: String::new(),
                tool_version: String::new(),
                build: false,
                files: 0,
                bytes: 0,
                duration_ms: None,
                error: None,
            }),
        }
    }

    fn id(n: i64) -> String {
        format_id(1_771_564_348 + n)
    }

    #[test]
    fn ids_round_trip_and_validate() {
        assert_eq!(format_id(1_771_564_348), "20260220T051228Z");
        assert_eq!(parse_id("20260220T051228Z"), Some(1_771_564_348));
        assert_eq!(rfc3339(1_771_564_348), "2026-02-20T05:12:28Z");
        assert_eq!(format_id(951_782_400), "20000229T000000Z");
        for bad in [
            "../../etc",
            "x;rm -rf /",
            "20260230T000000Z",
            "20260220T051228",
            "2026022OT051228Z",
            "",
            "20260220T246000Z",
            "+0260220T051228Z",
        ] {
            assert!(!is_release_id(bad), "{bad} accepted");
        }
        for t in [0_i64, 951_782_400, 1_771_564_348, 4_102_444_799] {
            assert_eq!(parse_id(&format_id(t)), Some(t));
        }
    }

    #[test]
    fn next_id_is_unique_and_monotonic() {
        assert_eq!(next_id(1_771_564_348, None), "20260220T051228Z");
        assert_eq!(next_id(1_771_564_348, Some("20260220T051228Z")), "20260220T051229Z");
        assert_eq!(next_id(1_771_564_348, Some("20260221T000000Z")), "20260221T000001Z");
        assert_eq!(next_id(1_771_564_348, Some("20250101T000000Z")), "20260220T051228Z");
    }

    #[test]
    fn rollback_picks_newest_ok_older_than_current() {
        let state = State {
            releases: vec![rel(&id(1), Status::Ok), rel(&id(2), Status::Failed), rel(&id(3), Status::Ok), rel(&id(4), Status::Ok)],
            current: Some(id(3)),
            ..State::default()
        };
        assert_eq!(state.rollback_target().map(|r| r.id.clone()), Some(id(1)));
        let none = State { current: Some(id(1)), ..state.clone() };
        assert!(none.rollback_target().is_none());
    }

    #[test]
    fn prune_removes_broken_first_and_never_current_or_rollback_target() {
        let state = State {
            releases: (1..=8)
                .map(|n| {
                    rel(
                        &id(n),
                        if n == 6 {
                            Status::Failed
                        } else if n == 8 {
                            Status::Pending
                        } else {
                            Status::Ok
                        },
                    )
                })
                .collect(),
            current: Some(id(2)),
            ..State::default()
        };
        // 8 releases, keep 3 => remove 5: failed 6 and pending 8 first, then oldest ok,
        // skipping current (2) and its rollback target (1).
        assert_eq!(state.prune_plan(3, None), vec![id(6), id(8), id(3), id(4), id(5)]);
        assert!(state.prune_plan(8, None).is_empty());
        // keep=0 still protects current and rollback target.
        let all = state.prune_plan(0, None);
        assert!(!all.contains(&id(2)) && !all.contains(&id(1)));
        assert_eq!(all.len(), 6);
    }

    /// keep 2, deploy 1 and 2, roll back to 1, deploy 3: 3's rollback target is 2, but the
    /// release live before the deploy (1) is where an unhealthy 3 switches back to.
    #[test]
    fn a_deploy_after_a_rollback_keeps_the_release_that_was_live() {
        let mut state =
            State { releases: vec![rel(&id(1), Status::Ok), rel(&id(2), Status::Ok)], current: Some(id(1)), ..State::default() };
        let before = state.current.clone();
        state.releases.push(rel(&id(3), Status::Ok));
        state.current = Some(id(3));
        assert_eq!(state.prune_plan(2, None), vec![id(1)], "the old rule");
        assert!(state.prune_plan(2, before.as_deref()).is_empty());
    }

    #[test]
    fn seven_deploys_keep_five() {
        let mut state = State::default();
        for n in 1..=7 {
            state.releases.push(rel(&id(n), Status::Ok));
            state.current = Some(id(n));
            for gone in state.prune_plan(5, None) {
                state.releases.retain(|r| r.id != gone);
            }
        }
        let ids: Vec<_> = state.releases.iter().map(|r| r.id.clone()).collect();
        assert_eq!(ids, (3..=7).map(id).collect::<Vec<_>>());
    }

    proptest::proptest! {
        /// The server's listing is data: never a panic, whatever its names and bytes.
        #[test]
        fn parsing_any_listing_never_panics(lines in proptest::collection::vec("(B|P |R |M |C |G |V )?[^\n]{0,40}", 0..12)) {
            let _ = parse_state(&lines.join("\n"));
        }
    }

    #[test]
    fn odd_release_names_and_metas_from_the_server_are_ignored() {
        let s = parse_state("B\nRé\nR 2026é\nR a\nb\nM {\"id\":\"é\"}\nC é\n");
        assert!(s.releases.is_empty());
        assert_eq!(s.current_raw.as_deref(), Some("é"));
    }

    #[test]
    fn parses_listing_and_ignores_foreign_names() {
        let m = serde_json::to_string(&rel(&id(2), Status::Ok).meta).unwrap();
        let listing = format!("B\nR {}\nR {}\nM {m}\nR .tmp-x\nR junk\nC releases/{}\n", id(1), id(2), id(2));
        let s = parse_state(&listing);
        assert!(s.base_exists);
        assert_eq!(s.releases.len(), 2);
        assert_eq!(s.releases[0].status(), Status::Unknown);
        assert_eq!(s.releases[1].status(), Status::Ok);
        assert_eq!(s.current, Some(id(2)));
        let abs = parse_state(&format!("B\nP /home/bonk/x\nC /home/bonk/x/releases/{0}\nCR /home/bonk/x/releases/{0}\n", id(1)));
        assert_eq!(abs.current, Some(id(1)));
        // The same link without the server's resolution, or resolving elsewhere: not trusted.
        let unresolved = parse_state(&format!("B\nP /home/bonk/x\nC /home/bonk/x/releases/{}\n", id(1)));
        assert_eq!(unresolved.current, None);
        let elsewhere = parse_state(&format!("B\nP /srv/new\nC /srv/old/releases/{0}\nCR /srv/old/releases/{0}\n", id(1)));
        assert_eq!(elsewhere.current, None);
        let odd = parse_state("B\nC /somewhere/else\n");
        assert_eq!((odd.current, odd.current_raw.as_deref()), (None, Some("/somewhere/else")));
    }
}
