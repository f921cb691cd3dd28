//! The per-host memo of what the last upload learnt about the link: where it ended (a level,
//! or storing) and how fast the link drained. The next upload starts from there and keeps
//! measuring.

use std::path::PathBuf;

use super::pace::START_LEVEL;
use super::tar::{Framing, Stats};

/// What the last measured upload to a host said about its link, kept in the user's cache
/// directory.
/// - Where storing won, the next uploads send bare tar: gzip framing would cost the server a
///   `gzip -d` for nothing. A bare upload still measures the link, and the verdict is dropped
///   as soon as one finds that compression would have won (the laptop left the LAN), or once
///   it is a day old.
/// - Otherwise the next upload starts at the level the last one ended on. It is only a
///   start: [`super::pace::Pace`] moves off it within the first fraction of a second if the
///   link is not what it was.
#[derive(Debug)]
pub struct LinkMemo {
    file: Option<PathBuf>,
    /// The framing of this deploy's uploads.
    pub framing: Framing,
    /// The drain rate remembered, bytes per second.
    pub link_rate: Option<f64>,
    /// When a bare upload last lost to compression here: storing is not tried again for a
    /// day, or every other deploy would try it and lose.
    no_store_since: Option<u64>,
}

const LINK_MAGIC: &str = "bst-link-2";
const LINK_MAX_AGE_S: u64 = 24 * 3600;

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl LinkMemo {
    /// The memo for `host` (a target's host label).
    pub fn for_host(host: &str) -> LinkMemo {
        LinkMemo::at(super::cache::cache_file("link", host))
    }

    fn at(file: Option<PathBuf>) -> LinkMemo {
        let saved = file.as_deref().and_then(|f| std::fs::read_to_string(f).ok());
        let now = unix_now();
        // `<level> <link B/s, 0 unknown> <unix time> [<unix time storing lost>]`; a time
        // ahead of the clock is stale.
        let fresh_at = |at: u64| at <= now + 60 && now.saturating_sub(at) < LINK_MAX_AGE_S;
        let fresh = saved.as_deref().and_then(|t| {
            let f: Vec<&str> = t.strip_prefix(LINK_MAGIC)?.split_whitespace().collect();
            let (level, link, at) = (f.first()?.parse::<u32>().ok()?, f.get(1)?.parse::<f64>().ok()?, f.get(2)?.parse::<u64>().ok()?);
            let lost = f.get(3).and_then(|l| l.parse::<u64>().ok()).filter(|&l| fresh_at(l));
            (super::pace::LEVELS.contains(&level) && fresh_at(at)).then_some((level, (link > 0.0).then_some(link), lost))
        });
        match fresh {
            Some((0, link_rate, _)) => LinkMemo { file, framing: Framing::Tar, link_rate, no_store_since: None },
            Some((level, link_rate, lost)) => LinkMemo { file, framing: Framing::Gzip(level), link_rate, no_store_since: lost },
            None => LinkMemo { file, framing: Framing::Gzip(START_LEVEL), link_rate: None, no_store_since: None },
        }
    }

    /// Whether verdicts are kept at all (there is a cache directory).
    pub fn kept(&self) -> bool {
        self.file.is_some()
    }

    /// Learns from a finished upload. Uploads too small to have measured anything (a
    /// one-file redeploy) leave the memo as it was.
    pub fn record(&self, stats: &Stats) {
        // By the snapshot's size, not the stream's: 24 MiB of text may gzip to 100 KB, over
        // enough blocks to have measured the link.
        let Some(file) = &self.file else { return };
        if stats.bytes < MEASURED_BYTES {
            return;
        }
        // Storing: what compression delivered when storing looked better, against which a
        // later bare upload is judged. Compressing: the drain rate, where the next upload's
        // model starts.
        let (level, rate, lost) = match self.framing {
            Framing::Tar if stats.gzip_would_win => (START_LEVEL, stats.link_rate, Some(unix_now())),
            Framing::Tar => (0, self.link_rate, None),
            Framing::Gzip(_) if (stats.storing_may_win || stats.last_level == 0) && self.no_store_since.is_none() => {
                (0, stats.delivered, None)
            }
            Framing::Gzip(_) => (stats.last_level.max(2), stats.link_rate, self.no_store_since),
        };
        let lost = lost.map_or(String::new(), |l| format!(" {l}"));
        let line = format!("{LINK_MAGIC} {level} {:.0} {}{lost}\n", rate.unwrap_or(0.0), unix_now());
        super::cache::write_atomic(file, line.as_bytes());
    }
}

/// Below this, an upload is a handful of blocks: too few to say anything of the link.
pub const MEASURED_BYTES: u64 = 8 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_link_memo_starts_where_the_last_upload_ended_and_stores_only_while_storing_won() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("link");
        let memo = || LinkMemo::at(Some(file.clone()));
        let measured = |last_level, link: Option<f64>, gzip_would_win| Stats {
            last_level,
            link_rate: link,
            delivered: link,
            gzip_would_win,
            bytes: 64 << 20,
            ..Stats::default()
        };
        assert_eq!(memo().framing, Framing::Gzip(START_LEVEL), "nothing measured yet");
        // The upload ended storing: bare tar from now on, judged against what compression
        // delivered then.
        memo().record(&measured(0, Some(90e6), false));
        assert_eq!(memo().framing, Framing::Tar);
        // A bare upload where storing still wins keeps it; a small one says nothing.
        memo().record(&measured(0, Some(300e6), false));
        memo().record(&Stats { gzip_would_win: true, ..Stats::default() });
        assert_eq!(memo().framing, Framing::Tar);
        assert_eq!(memo().link_rate, Some(90e6));
        // A bare upload over a link where compression would have won: compress again, and do
        // not try storing again for a day, even where the compressed upload suggests it.
        memo().record(&measured(0, Some(2.5e6), true));
        assert_eq!(memo().framing, Framing::Gzip(START_LEVEL));
        memo().record(&Stats { storing_may_win: true, ..measured(2, Some(80e6), false) });
        assert_eq!(memo().framing, Framing::Gzip(2));
        let lost = std::fs::read_to_string(&file).unwrap().split_whitespace().nth(4).unwrap().parse::<u64>().unwrap();
        std::fs::write(&file, format!("{LINK_MAGIC} 2 80000000 {} {}\n", unix_now(), lost - LINK_MAX_AGE_S)).unwrap();
        memo().record(&Stats { storing_may_win: true, ..measured(2, Some(80e6), false) });
        assert_eq!(memo().framing, Framing::Tar, "a day later storing is tried again");
        // A slow link: the next upload starts at the level this one ended on.
        std::fs::remove_file(&file).unwrap();
        memo().record(&measured(9, Some(2.5e6), false));
        assert_eq!(memo().framing, Framing::Gzip(9));
        assert_eq!(memo().link_rate, Some(2.5e6));
        // A verdict a day old, or from the future (the clock was set back), is measured again.
        let now = unix_now();
        for at in [now - LINK_MAX_AGE_S, now + 3600] {
            std::fs::write(&file, format!("{LINK_MAGIC} 0 90000000 {at}\n")).unwrap();
            assert_eq!(memo().framing, Framing::Gzip(START_LEVEL), "at {at}, now {now}");
        }
        std::fs::write(&file, format!("{LINK_MAGIC} 0 90000000 {}\n", now - 60)).unwrap();
        assert_eq!(memo().framing, Framing::Tar);
        for bad in ["bst-link-1 store 1 1 1\n".to_string(), format!("{LINK_MAGIC} 1 0 {now}\n"), format!("{LINK_MAGIC} 12 0 {now}\n")] {
            std::fs::write(&file, bad).unwrap();
            assert_eq!(memo().framing, Framing::Gzip(START_LEVEL), "an unknown format or level is ignored");
        }
    }
}
