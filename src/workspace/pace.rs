//! The gzip level of each upload block, chosen for the most snapshot bytes delivered per
//! second over this link, and chosen again as the blocks go out.
//!
//! Two inputs decide it:
//! - what the compressors do: each block's ratio and speed at its level, scaled onto a table of
//!   how zlib-rs's levels compare with each other;
//! - what the link drains, from the bytes TCP has acknowledged where the transport can read
//!   them. Bytes written tell nothing for the first megabytes, which vanish into socket and
//!   SSH buffers whatever the link. Without acknowledgements, the writes' own pace counts
//!   once they block.
//!
//! Level `l` delivers `min(workers × speed[l], link / ratio[l])` raw bytes per second, and
//! storing has no CPU limit. Levels the upload has used recently are judged by what they
//! actually delivered. That covers what the model leaves out, such as a server that unpacks
//! slower than the link carries. A switch needs a clear gain, so noise does not flip the
//! level back and forth.
//!
//! Size: about 300 lines of code, the rest its tests, which simulate links, buffers and
//! servers. The model, the link estimate and the per-level deliveries are one decision:
//! split, each would need the others' state.
//!
//! Level 1 is never chosen. zlib-rs's level 1 is a different, much weaker algorithm than
//! zlib's (a 5,000-file workspace: 34 MB against 29.8 MB at level 2), and level 2 costs
//! little more CPU.

/// Stored, then zlib-rs's levels 2 to 9.
pub const LEVELS: [u32; 9] = [0, 2, 3, 4, 5, 6, 7, 8, 9];

/// Where an upload starts when nothing is known about the link yet. Level 6 is gzip's
/// default. On a slow link it is within 1% of level 9's size, and it leaves the CPU free
/// enough that storing wins quickly on a fast one.
pub const START_LEVEL: u32 = 6;

/// zlib-rs per level, on the source text of a `make-workspace.py` tree cut into 1 MiB
/// members: compressed size over raw size, and raw MB/s on one core of the bench machine.
/// Only the shape matters: what the blocks measure scales it.
const PRIOR: [(f64, f64); 10] = [
    (1.0002, 2300.0),
    (0.300, 355.0),
    (0.211, 287.0),
    (0.198, 194.0),
    (0.182, 131.0),
    (0.176, 111.0),
    (0.158, 34.4),
    (0.157, 26.1),
    (0.156, 19.3),
    (0.1558, 18.0),
];

/// Seconds of history the link rate is computed over.
const WINDOW: f64 = 0.5;
/// The shortest span that gives a link rate at all.
const MIN_SPAN: f64 = 0.15;
/// A level's own deliveries count for this long, then the model judges it again: the link may
/// have changed.
const MEMORY: f64 = 4.0;
/// Raw bytes per second delivered above which bare tar is tried: faster than compression
/// at these levels keeps up with on two cores of a laptop.
const STORE_TRY: f64 = 40e6;
/// How much more than it carries now a link that keeps up is assumed to carry.
const HEADROOM: f64 = 2.0;
/// A switch needs this much predicted gain.
const HYSTERESIS: f64 = 1.08;
/// Where it is not known what the link carried when storing won: a drain this slow
/// (160 Mbit/s) is a link that compression beats on any two cores.
const UNKNOWN_FLOOR: f64 = 20e6;

#[derive(Debug, Clone, Copy)]
struct Sample {
    t: f64,
    /// Compressed bytes written to the transport before this block. The block itself is
    /// left out: right after a write it cannot have been acknowledged yet, whatever the link.
    wire: u64,
    /// Bytes the peer has acknowledged so far, when the transport can tell.
    acked: Option<u64>,
    /// Seconds the writer has spent blocked so far.
    blocked: f64,
}

/// What one level delivered over its latest run: raw bytes per second, and when.
#[derive(Debug, Clone, Copy)]
struct Seen {
    rate: f64,
    at: f64,
}

pub struct Pace {
    level: u32,
    workers: f64,
    /// Measured over prior, for ratio and speed, smoothed.
    ratio_scale: f64,
    speed_scale: f64,
    history: std::collections::VecDeque<Sample>,
    seen: [Option<Seen>; 10],
    /// The link's drain rate (wire bytes per second) when it was last the bottleneck, and
    /// when that was.
    link: Option<(f64, f64)>,
    /// Whether the latest window found the link behind the writer.
    link_bound: bool,
    /// How much the model overpromised, from the levels measured (at most 1).
    trust: f64,
    /// The wire rate over the latest window, bottleneck or not.
    observed: f64,
    /// Where the current level's run began: its deliveries are measured over all of it.
    stint: Option<Stint>,
    /// Raw bytes sent, and when the last block went.
    raw_total: u64,
    last_t: f64,
    /// The whole upload as one run, and the raw bytes it had delivered by the last block.
    origin: Option<Stint>,
    delivered_raw: f64,
    /// Raw bytes sent per level, for the report.
    pub raw_at: [u64; 10],
    switches: u32,
}

#[derive(Debug, Clone, Copy)]
struct Stint {
    t: f64,
    raw: u64,
    wire: u64,
    acked: Option<u64>,
}

impl Stint {
    /// Raw bytes delivered since this run began: those sent, less what still sits in
    /// buffers (written, not acknowledged), in raw bytes' worth. Without acknowledgements,
    /// all that was sent.
    fn delivered(&self, raw_total: u64, wire_total: u64, acked: Option<u64>) -> f64 {
        let raw_sent = (raw_total - self.raw) as f64;
        let wire_sent = (wire_total - self.wire) as f64;
        let queued = match (self.acked, acked) {
            (Some(a0), Some(a1)) => (wire_sent - a1.saturating_sub(a0) as f64).max(0.0),
            _ => 0.0,
        };
        raw_sent - queued * raw_sent / wire_sent.max(1.0)
    }
}

impl std::fmt::Debug for Pace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let seen: Vec<String> = (0..10).filter_map(|l| Some(format!("{l}: {:.1} MB/s", self.seen[l]?.rate / 1e6))).collect();
        let mb: Vec<String> = (0..10).filter(|&l| self.raw_at[l] > 0).map(|l| format!("{l}: {} MiB", self.raw_at[l] >> 20)).collect();
        write!(
            f,
            "level {} (mostly {}), link {:?} MB/s{}, trust {:.2}, {} switches; delivered [{}]; sent [{}]",
            self.level,
            self.main_level(),
            self.link_rate().map(|l| (l / 1e5).round() / 10.0),
            if self.link_bound { " (the bottleneck)" } else { "" },
            self.trust,
            self.switches,
            seen.join(", "),
            mb.join(", ")
        )
    }
}

impl Pace {
    /// Starts at `level`. `link` is a drain rate remembered from an earlier upload to this host.
    pub fn new(level: u32, workers: usize, link: Option<f64>) -> Pace {
        Pace {
            level: level.min(9),
            workers: workers.max(1) as f64,
            ratio_scale: 1.0,
            speed_scale: 1.0,
            history: std::collections::VecDeque::new(),
            seen: [None; 10],
            link: link.map(|l| (l, 0.0)),
            link_bound: link.is_some(),
            trust: 1.0,
            observed: 0.0,
            stint: None,
            raw_total: 0,
            last_t: 0.0,
            origin: None,
            delivered_raw: 0.0,
            raw_at: [0; 10],
            switches: 0,
        }
    }

    pub fn level(&self) -> u32 {
        self.level
    }

    /// The level that carried the most raw bytes.
    pub fn main_level(&self) -> u32 {
        (0..10u32).max_by_key(|&l| self.raw_at[l as usize]).unwrap_or(self.level)
    }

    /// The link's drain rate in wire bytes per second, when it was ever the bottleneck.
    pub fn link_rate(&self) -> Option<f64> {
        self.link.map(|(l, _)| l)
    }

    pub fn switches(&self) -> u32 {
        self.switches
    }

    /// Bare tar only: whether compression would have delivered clearly more (the laptop left
    /// the LAN). `carried` is what compression delivered, raw bytes per second, when the
    /// upload that chose storing ended. Measured, not modelled: from here a slow link and a
    /// slow server look the same, and only the second makes compression useless.
    pub fn compression_would_win(&self, carried: Option<f64>) -> bool {
        match (self.delivered(), carried) {
            (Some(now), Some(c)) => now < 0.9 * c,
            // Nothing to compare with: only a link this slow is sure to lose to compression.
            (Some(_), None) => self.link_rate().is_some_and(|l| l < UNKNOWN_FLOOR),
            _ => false,
        }
    }

    /// A block compressed at `level`: `raw` bytes in, `out` bytes out, `secs` on one worker.
    pub fn compressed(&mut self, level: u32, raw: usize, out: usize, secs: f64) {
        if level == 0 || level > 9 || raw < 4096 {
            return;
        }
        let (p_ratio, p_speed) = PRIOR[level as usize];
        let ratio = out as f64 / raw as f64 / p_ratio;
        self.ratio_scale = 0.7 * self.ratio_scale + 0.3 * ratio;
        if secs > 0.0 {
            let speed = raw as f64 / secs / 1e6 / p_speed;
            self.speed_scale = 0.7 * self.speed_scale + 0.3 * speed;
        }
    }

    /// The transport took a block: `raw` snapshot bytes as `wire` bytes at `level`. Totals:
    /// `wire_total` written, `acked` acknowledged, `blocked` seconds the writer waited.
    /// Returns the level for the next blocks.
    pub fn sent(&mut self, t: f64, level: u32, raw: usize, wire: usize, totals: (u64, Option<u64>, f64)) -> u32 {
        let (wire_total, acked, blocked) = totals;
        self.raw_at[level.min(9) as usize] += raw as u64;
        self.raw_total += raw as u64;
        self.last_t = t;
        // The upload began before its first block: nothing sent, nothing of it acknowledged.
        let origin = *self.origin.get_or_insert(Stint { t: 0.0, raw: 0, wire: 0, acked: acked.map(|a| a.saturating_sub(wire as u64)) });
        self.delivered_raw = origin.delivered(self.raw_total, wire_total, acked);
        self.history.push_back(Sample { t, wire: wire_total.saturating_sub(wire as u64), acked, blocked });
        while self.history.len() > 2 && self.history.get(1).is_some_and(|s| t - s.t >= WINDOW) {
            self.history.pop_front();
        }
        let stint = *self.stint.get_or_insert(Stint { t, raw: self.raw_total, wire: wire_total, acked });
        self.watch_link(t);
        // What this level delivered over its whole run so far. Block by block, a write into
        // an empty buffer would look like a link of any speed.
        let span = t - stint.t;
        if span >= MIN_SPAN {
            let delivered = stint.delivered(self.raw_total, wire_total, acked);
            self.seen[self.level as usize] = Some(Seen { rate: delivered.max(0.0) / span, at: t });
        }
        self.decide(t);
        self.level
    }

    /// Raw snapshot bytes per second over the whole upload, less what still sat in buffers
    /// when the last block was written.
    pub fn delivered(&self) -> Option<f64> {
        (self.last_t > 0.0).then(|| self.delivered_raw.max(0.0) / self.last_t)
    }

    /// Whether bare tar is worth a try next time: the upload ended with the link keeping up
    /// at one of the fastest levels, or moved the snapshot so fast that the link is no slow
    /// one. Near a slow server on a shared CPU (loopback) the measurements cannot tell a
    /// busy link from a busy server; the next upload settles it by delivering more or less
    /// than this one did.
    pub fn storing_may_win(&self) -> bool {
        let fastest = !self.link_bound && self.level <= 2 && self.seen[self.level as usize].is_some();
        fastest || self.delivered().is_some_and(|d| d >= STORE_TRY)
    }

    /// Reads the window: whether the writer is ahead of the link, and the link's rate (the
    /// drain rate when it is the bottleneck). Too short a window changes nothing.
    fn watch_link(&mut self, t: f64) {
        let (Some(first), Some(last)) = (self.history.front(), self.history.back()) else { return };
        let span = last.t - first.t;
        let written = (last.wire - first.wire) as f64;
        if span < MIN_SPAN {
            return;
        }
        let bound_and_rate = match (first.acked, last.acked) {
            (Some(a0), Some(a1)) => {
                let acked = a1.saturating_sub(a0) as f64;
                // Behind: the buffers fill faster than the peer acknowledges.
                (written > acked * 1.15 + 65536.0 || last.blocked - first.blocked > 0.3 * span, acked / span)
            }
            _ => (last.blocked - first.blocked > 0.3 * span, written / span),
        };
        let (bound, rate) = bound_and_rate;
        self.link_bound = bound;
        self.observed = rate;
        // Bound: the drain rate is measured. Not bound but faster than remembered: the link
        // carries at least that much now.
        if rate > 0.0 && (bound || self.link.is_some_and(|(l, _)| rate > l)) {
            self.link = Some((rate, t));
        }
    }

    fn span(&self) -> f64 {
        match (self.history.front(), self.history.back()) {
            (Some(a), Some(b)) => b.t - a.t,
            _ => 0.0,
        }
    }

    /// What the model says `level` delivers, raw bytes per second.
    fn model(&self, level: u32) -> f64 {
        let (p_ratio, p_speed) = PRIOR[level as usize];
        let cpu = if level == 0 { f64::INFINITY } else { self.workers * p_speed * 1e6 * self.speed_scale };
        let ratio = if level == 0 { 1.0 } else { (p_ratio * self.ratio_scale).clamp(0.01, 1.0) };
        let link = match (self.link_bound, self.link_rate()) {
            (true, Some(l)) => l,
            // The link keeps up: it carries at least what it does now, and more is a guess.
            // Guessing twice as much moves the level one step at a time, each step measured,
            // instead of jumping to storing on a link that only seemed fast because the
            // compressors were slow.
            _ if self.observed > 0.0 => HEADROOM * self.observed,
            _ => f64::INFINITY,
        };
        cpu.min(link / ratio)
    }

    /// What `level` delivered in its latest run, if that run is recent enough to speak for
    /// the link now.
    fn recent(&self, level: u32, t: f64) -> Option<f64> {
        self.seen[level as usize].filter(|s| t - s.at <= MEMORY).map(|s| s.rate)
    }

    fn predict(&self, level: u32, t: f64) -> f64 {
        self.recent(level, t).unwrap_or_else(|| self.model(level) * self.trust)
    }

    fn decide(&mut self, t: f64) {
        // Where a measured level fell short of its model, the model is optimistic here (a
        // slow server, a busy CPU): the levels not yet measured are discounted alike.
        let mut trust: f64 = 1.0;
        for &l in &LEVELS {
            if let Some(rate) = self.recent(l, t) {
                let m = self.model(l);
                if m.is_finite() && m > 0.0 {
                    trust = trust.min(rate / m);
                }
            }
        }
        self.trust = trust.clamp(0.05, 1.0);
        // Nothing is known of the link until the acknowledgements (or blocked writes) have
        // had time to tell; until then the starting level stands.
        if self.link.is_none() && self.span() < MIN_SPAN || self.seen[self.level as usize].is_none() && self.history.len() < 4 {
            return;
        }
        let here = self.predict(self.level, t);
        let mut best = (self.level, here);
        for &l in &LEVELS {
            let p = self.predict(l, t);
            // Among near-equals the smaller output wins: kinder to a shared link.
            if p > best.1 * HYSTERESIS || (p >= best.1 && l > best.0) {
                best = (l, p);
            }
        }
        if best.0 != self.level && best.1 > here * HYSTERESIS {
            self.level = best.0;
            self.switches += 1;
            // What the link did at the old level says little about the new one: a window
            // that straddles both would average them.
            while self.history.len() > 1 {
                self.history.pop_front();
            }
            self.stint = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A simulated upload: `workers` compressors at PRIOR speeds times `cpu`, a link that
    /// drains `link(t)` wire bytes per second behind a buffer of `buffer` bytes, and a
    /// server that takes at most `server` raw bytes per second. Returns the pace at the end,
    /// the seconds the upload took, and the wire bytes.
    fn simulate(
        mb: usize,
        workers: usize,
        cpu: f64,
        buffer: f64,
        link: &dyn Fn(f64) -> f64,
        server: f64,
        acked_known: bool,
    ) -> (Pace, f64, f64) {
        const RAW: usize = 1 << 20;
        let mut pace = Pace::new(START_LEVEL, workers, None);
        let mut t = 0.0f64;
        // Bytes written and bytes drained; the buffer holds the difference.
        let (mut written, mut drained) = (0.0f64, 0.0f64);
        let mut blocked = 0.0f64;
        // The server unpacks at most `server` raw bytes per second: through TCP's flow
        // control, that caps the wire rate at its share of the current ratio.
        let rate = |s: f64, ratio: f64| link(s).min(server * ratio);
        let drained_to = |t_now: f64, drained: &mut f64, written: f64, from: f64, ratio: f64| {
            // Drains at the link rate from `from` to `t_now`, never past what was written.
            let mut s = from;
            while s < t_now && *drained < written {
                let step = (t_now - s).min(0.001);
                *drained = (*drained + rate(s, ratio) * step).min(written);
                s += step;
            }
        };
        for _ in 0..mb {
            let level = pace.level();
            let (p_ratio, p_speed) = PRIOR[level as usize];
            let ratio = if level == 0 { 1.0 } else { p_ratio };
            let wire = RAW as f64 * ratio;
            // Compressors run ahead in parallel: one block costs 1/workers of its time.
            let compress = RAW as f64 / (p_speed * 1e6 * cpu);
            let before = t;
            let mut now = t + compress / workers as f64;
            drained_to(now, &mut drained, written, before, ratio);
            // Blocked until the buffer has room.
            let start_block = now;
            while written - drained + wire > buffer + 1.0 {
                let need = (written - drained + wire - buffer) / rate(now, ratio);
                let from = now;
                now += need.max(1e-6);
                drained_to(now, &mut drained, written, from, ratio);
            }
            blocked += now - start_block;
            written += wire;
            if level != 0 {
                pace.compressed(level, RAW, wire as usize, compress);
            }
            t = now;
            let acked = acked_known.then_some(drained as u64);
            pace.sent(t, level, RAW, wire as usize, (written as u64, acked, blocked));
        }
        // The upload ends when the buffer is empty.
        let last = if pace.level() == 0 { 1.0 } else { PRIOR[pace.level() as usize].0 };
        while drained + 1.0 < written {
            let from = t;
            t += ((written - drained) / rate(t, last)).max(1e-6);
            drained_to(t, &mut drained, written, from, last);
        }
        (pace, t, written)
    }

    const MB: f64 = 1e6;
    const BUF: f64 = 4.0 * MB;

    #[test]
    fn a_link_faster_than_any_compressor_ends_at_the_fastest_level_and_says_storing_may_win() {
        let (pace, ..) = simulate(200, 2, 1.0, BUF, &|_| 2000.0 * MB, f64::INFINITY, true);
        assert_eq!(pace.level(), 2, "{pace:?}");
        assert!(pace.storing_may_win(), "{pace:?}");
        // A slow link never suggests it.
        let (pace, ..) = simulate(60, 2, 1.0, BUF, &|_| 2.5 * MB, f64::INFINITY, true);
        assert!(!pace.storing_may_win(), "{pace:?}");
    }

    #[test]
    fn a_bare_upload_gives_storing_up_only_when_it_delivers_less_than_compression_did() {
        let bare = |link: f64| {
            let mut pace = Pace::new(0, 2, None);
            let (mut t, mut wire) = (0.0, 0u64);
            for _ in 0..60 {
                t += (1 << 20) as f64 / link;
                wire += 1 << 20;
                pace.sent(t, 0, 1 << 20, 1 << 20, (wire, Some(wire), t * 0.9));
            }
            pace
        };
        // Compression delivered 60 MB/s when storing was chosen: a 2.5 MB/s link loses to it,
        // a 100 MB/s one does not.
        assert!(bare(2.5 * MB).compression_would_win(Some(60.0 * MB)));
        assert!(!bare(100.0 * MB).compression_would_win(Some(60.0 * MB)));
        // Nothing to compare with: only a link far below any compressor counts.
        assert!(bare(2.5 * MB).compression_would_win(None));
        assert!(!bare(100.0 * MB).compression_would_win(None));
    }

    #[test]
    fn a_slow_link_gets_strong_compression_even_while_buffers_swallow_writes() {
        // 20 Mbit/s: 2.5 MB/s. The first 4 MB of writes vanish into buffers at once.
        let (pace, secs, wire) = simulate(60, 2, 1.0, BUF, &|_| 2.5 * MB, f64::INFINITY, true);
        assert!(pace.level() >= 6, "{pace:?}");
        assert!(pace.link_rate().is_some_and(|r| (r - 2.5 * MB).abs() < 0.3 * MB), "{:?}", pace.link_rate());
        // Every raw MB at level 6 or above costs 0.158 MB on the wire: 60 MB in ~4 s.
        assert!(wire < 60.0 * 1048576.0 * 0.2, "{wire}");
        assert!(secs < 5.0, "{secs}");
    }

    #[test]
    fn a_lan_gets_the_level_that_keeps_both_cpu_and_link_busy() {
        // 100 Mbit/s, two workers: level 2 would saturate the link with too many bytes, 9
        // starves it for CPU; the best delivers ~70 MB/s of snapshot.
        let (pace, secs, _) = simulate(200, 2, 1.0, BUF, &|_| 12.5 * MB, f64::INFINITY, true);
        let level = pace.level();
        assert!((4..=6).contains(&level), "{pace:?}");
        let best = (2..=9u32)
            .map(|l| {
                let (r, s) = PRIOR[l as usize];
                (2.0 * s * MB).min(12.5 * MB / r)
            })
            .fold(0.0f64, f64::max);
        let raw = 200.0 * 1048576.0;
        assert!(raw / secs > 0.85 * best, "{:.1} MB/s delivered, best {:.1}: {pace:?}", raw / secs / MB, best / MB);
    }

    #[test]
    fn the_level_follows_a_link_that_slows_down_mid_upload() {
        let (pace, ..) = simulate(400, 2, 1.0, BUF, &|t| if t < 0.6 { 2000.0 * MB } else { 2.5 * MB }, f64::INFINITY, true);
        assert!(pace.level() >= 6, "{pace:?}");
        assert!(pace.raw_at[2] + pace.raw_at[3] + pace.raw_at[4] > 0, "fast levels while the link was fast: {pace:?}");
        assert!(pace.switches() >= 2);
    }

    #[test]
    fn a_server_slower_than_the_link_does_not_drive_the_level_up() {
        // Fast link, but the server unpacks only 80 MB/s: each level up shrinks the wire rate,
        // which must not read as a slower link that the next level up would help.
        let (pace, secs, _) = simulate(300, 2, 1.0, BUF, &|_| 1000.0 * MB, 80.0 * MB, true);
        assert!(pace.main_level() <= 5, "{pace:?}");
        let raw = 300.0 * 1048576.0;
        assert!(raw / secs > 0.9 * 80.0 * MB, "{:.1} MB/s", raw / secs / MB);
    }

    #[test]
    fn without_acknowledgements_blocked_writes_still_find_a_slow_link() {
        let (pace, ..) = simulate(100, 2, 1.0, BUF, &|_| 2.5 * MB, f64::INFINITY, false);
        assert!(pace.level() >= 6, "{pace:?}");
    }

    #[test]
    fn a_remembered_link_rate_starts_the_decision_but_never_pins_it() {
        // Remembered as slow, now fast: storing wins within the upload.
        let mut pace = Pace::new(9, 2, Some(2.5 * MB));
        let mut t = 0.0;
        let mut wire = 0u64;
        for _ in 0..200 {
            let level = pace.level();
            let (r, s) = PRIOR[level as usize];
            let out = if level == 0 { 1 << 20 } else { ((1 << 20) as f64 * r) as u64 };
            let dt = if level == 0 { 0.0005 } else { (1 << 20) as f64 / (2.0 * s * MB) };
            t += dt;
            wire += out;
            if level != 0 {
                pace.compressed(level, 1 << 20, out as usize, dt * 2.0);
            }
            pace.sent(t, level, 1 << 20, out as usize, (wire, Some(wire), 0.0));
        }
        assert!(pace.level() <= 2 && pace.storing_may_win(), "{pace:?}");
    }
}
