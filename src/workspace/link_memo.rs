//! The per-link memo of whether gzip pays: on a fast link storing beats compressing, and
//! the last measurement decides the next deploy's framing.

use std::path::PathBuf;

use super::tar::{Framing, Rates, Stats};

/// What the last measured upload to a host said about its link, kept in the user's cache
/// directory. Where storing beat compression, the next uploads send bare tar. The verdict is
/// measured again once it is a day old, or as soon as a bare upload moves fewer bytes per
/// second than compression did (say the laptop left the LAN for a slower link).
#[derive(Debug)]
pub struct LinkMemo {
    file: Option<PathBuf>,
    /// The framing of this deploy's uploads.
    pub framing: Framing,
    /// What compression reached when storing won (bytes per second).
    gzip_rate: f64,
}

const LINK_MAGIC: &str = "bst-link-1";
const LINK_MAX_AGE_S: u64 = 24 * 3600;

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl LinkMemo {
    /// The memo for `host` (a target's host label); without one, gzip at `level`, probed.
    pub fn for_host(host: &str, level: u32) -> LinkMemo {
        LinkMemo::at(super::cache::cache_file("link", host), level)
    }

    fn at(file: Option<PathBuf>, level: u32) -> LinkMemo {
        let saved = file.as_deref().and_then(|f| std::fs::read_to_string(f).ok());
        let now = unix_now();
        // `store <plain B/s> <gzip B/s> <unix time>`; a time ahead of the clock is stale.
        let fresh_store = saved.as_deref().and_then(|t| {
            let f: Vec<&str> = t.strip_prefix(LINK_MAGIC)?.split_whitespace().collect();
            let (gzip, at) = (f.get(2)?.parse::<f64>().ok()?, f.get(3)?.parse::<u64>().ok()?);
            (f.first() == Some(&"store") && at <= now + 60 && now.saturating_sub(at) < LINK_MAX_AGE_S).then_some(gzip)
        });
        match fresh_store {
            Some(gzip_rate) => LinkMemo { file, framing: Framing::Tar, gzip_rate },
            None => LinkMemo { file, framing: Framing::Gzip(level), gzip_rate: 0.0 },
        }
    }

    /// Whether verdicts are kept at all (there is a cache directory).
    pub fn kept(&self) -> bool {
        self.file.is_some()
    }

    /// Learns from a finished upload: the probe's verdict, or a bare upload slower than
    /// compression was (forget the verdict: the next upload probes again).
    pub fn record(&self, stats: &Stats) {
        let Some(file) = &self.file else { return };
        match (self.framing, stats.rates) {
            (Framing::Gzip(_), Rates { plain: Some(plain), gzip: Some(gzip) }) => {
                let verdict = if stats.level == Some(0) { "store" } else { "gzip" };
                let line = format!("{LINK_MAGIC} {verdict} {plain:.0} {gzip:.0} {}\n", unix_now());
                super::cache::write_atomic(file, line.as_bytes());
            }
            (Framing::Tar, Rates { plain: Some(plain), .. }) if plain < self.gzip_rate => {
                let _ = std::fs::remove_file(file);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_link_memo_sends_bare_tar_only_while_storing_won_recently() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("link");
        let memo = || LinkMemo::at(Some(file.clone()), 1);
        let measured = |level, plain, gzip| Stats { level: Some(level), rates: Rates { plain, gzip }, ..Stats::default() };
        assert_eq!(memo().framing, Framing::Gzip(1), "nothing measured yet: probe");
        // The probe stored: bare tar from now on.
        memo().record(&measured(0, Some(90e6), Some(40e6)));
        assert_eq!(memo().framing, Framing::Tar);
        // A bare upload about as fast as storing was keeps the verdict; an unmeasured one too.
        memo().record(&measured(0, Some(80e6), None));
        memo().record(&Stats::default());
        assert_eq!(memo().framing, Framing::Tar);
        // Slower than compression was: forget it, probe again.
        memo().record(&measured(0, Some(30e6), None));
        assert_eq!(memo().framing, Framing::Gzip(1));
        assert!(!file.exists());
        // The probe kept compressing: keep probing.
        memo().record(&measured(1, Some(10e6), Some(40e6)));
        assert_eq!(memo().framing, Framing::Gzip(1));
        // A verdict a day old, or from the future (the clock was set back), is measured again.
        let now = unix_now();
        for at in [now - LINK_MAX_AGE_S, now + 3600] {
            std::fs::write(&file, format!("{LINK_MAGIC} store 90000000 40000000 {at}\n")).unwrap();
            assert_eq!(memo().framing, Framing::Gzip(1), "at {at}, now {now}");
        }
        std::fs::write(&file, format!("{LINK_MAGIC} store 90000000 40000000 {}\n", now - 60)).unwrap();
        assert_eq!(memo().framing, Framing::Tar);
        std::fs::write(&file, "bst-link-0 store 1 1 1\n").unwrap();
        assert_eq!(memo().framing, Framing::Gzip(1), "an unknown format is ignored");
    }
}
