//! One printer decides what goes where: results on stdout (a table, or one JSON document
//! with `--json`), progress and logs on stderr, nothing but errors with `-q`.

#![allow(clippy::print_stdout, clippy::print_stderr)] // the one module that writes to the terminal

use std::io::{IsTerminal, Write};

use serde::Serialize;

/// Flags that apply to every command: how to talk to the user, plus the one consent the
/// transport needs (`--accept-new-host-key`). They live with the printer, below the
/// transport, so that printing a notice never makes the transport reach up into settings.
#[derive(Debug, Clone, Default)]
pub struct Globals {
    pub json: bool,
    pub verbose: u8,
    pub quiet: bool,
    pub accept_new_host_key: bool,
    pub color: clap::ColorChoice,
}

#[derive(Debug, Clone)]
pub struct Printer {
    pub json: bool,
    pub quiet: bool,
    pub verbose: u8,
    /// Progress bars only for a human watching a terminal; CI gets plain lines.
    pub tty: bool,
    /// Colour on stdout (verdicts) and on stderr (`error:`, `warning:`).
    color_out: bool,
    color_err: bool,
    /// Set once a JSON document went to stdout, shared by every clone: a command that
    /// printed its own document and then failed (a gate's FAIL, an unhealthy service) gets
    /// no second, error document.
    printed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// A diagnostic from code below the printer (the transport): the caller has checked the
/// verbosity, or the line is one the user must see (a recorded host key).
pub fn diag(line: impl std::fmt::Display) {
    eprintln!("{line}");
}

/// A prompt's text, left on the line for the answer.
pub fn prompt(text: impl std::fmt::Display) {
    eprint!("{text}");
    let _ = std::io::stderr().flush();
}

/// [`Printer::timing`] for threads that have no printer.
pub fn timing(on: bool, started: std::time::Instant, what: impl std::fmt::Display) {
    if on {
        eprintln!("[+{:>5} ms] {what}", started.elapsed().as_millis());
    }
}

/// Whether output to a stream gets colour. `--json` never: its readers are programs, and
/// its stderr ends up in the same CI logs that parse it. `NO_COLOR` (any non-empty value,
/// no-color.org) and `TERM=dumb` only change `auto`: an explicit `--color always` wins.
pub fn use_color(choice: clap::ColorChoice, json: bool, terminal: bool) -> bool {
    if json {
        return false;
    }
    match choice {
        clap::ColorChoice::Always => true,
        clap::ColorChoice::Never => false,
        clap::ColorChoice::Auto => {
            terminal
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                && std::env::var_os("TERM").is_none_or(|t| t != "dumb")
                && crate::platform::terminal_shows_ansi()
        }
    }
}

const RED: anstyle::Style = anstyle::AnsiColor::Red.on_default().bold();
const YELLOW: anstyle::Style = anstyle::AnsiColor::Yellow.on_default().bold();
const GREEN: anstyle::Style = anstyle::AnsiColor::Green.on_default().bold();

fn paint(on: bool, style: anstyle::Style, text: &str) -> String {
    if on {
        format!("{style}{text}{style:#}")
    } else {
        text.to_string()
    }
}

/// The document `--json` prints on stdout when a command fails (docs/json.md).
pub fn error_doc<'a>(kind: &'a str, message: &'a str, exit_code: i32) -> ErrorDoc<'a> {
    ErrorDoc { schema_version: 1, error: ErrorBody { kind, message, exit_code } }
}

#[derive(Serialize)]
pub struct ErrorDoc<'a> {
    schema_version: u32,
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    kind: &'a str,
    message: &'a str,
    exit_code: i32,
}

impl Printer {
    pub fn new(g: &Globals) -> Self {
        let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false");
        let stderr_tty = std::io::stderr().is_terminal();
        Printer {
            json: g.json,
            quiet: g.quiet,
            verbose: g.verbose,
            tty: stderr_tty && !ci,
            color_out: use_color(g.color, g.json, std::io::stdout().is_terminal()),
            color_err: use_color(g.color, g.json, stderr_tty),
            printed: Default::default(),
        }
    }

    /// A `-v` diagnostic: what bst decided and why (the manifest it used, the compression).
    pub fn verbose(&self, msg: impl AsRef<str>) {
        if self.verbose > 0 {
            eprintln!("{}", msg.as_ref());
        }
    }

    /// A line on stderr that belongs to a result already shown (a failed unit's journal).
    pub fn detail(&self, msg: impl AsRef<str>) {
        eprintln!("{}", msg.as_ref());
    }

    /// Progress and status, for humans.
    pub fn status(&self, msg: impl AsRef<str>) {
        if !self.quiet {
            eprintln!("{}", msg.as_ref());
        }
    }

    /// Not with `-q`, which promises errors only: what a quiet run must not miss fails it
    /// (a release the watchdog switched back exits non-zero), and `--json` keeps every
    /// warning in its document.
    pub fn warn(&self, msg: impl AsRef<str>) {
        if !self.quiet {
            eprintln!("{} {}", paint(self.color_err, YELLOW, "warning:"), msg.as_ref());
        }
    }

    /// The human result of a command; suppressed with `--json`, which prints [`Self::json`],
    /// and with `-q`.
    pub fn out(&self, text: impl AsRef<str>) {
        if !self.json && !self.quiet {
            let mut o = std::io::stdout().lock();
            let _ = writeln!(o, "{}", text.as_ref());
        }
    }

    pub fn json<T: Serialize>(&self, doc: &T) {
        if self.json {
            self.printed.store(true, std::sync::atomic::Ordering::SeqCst);
            let mut o = std::io::stdout().lock();
            let _ = serde_json::to_writer_pretty(&mut o, doc);
            let _ = writeln!(o);
        }
    }

    /// `PASS`, `FAIL`, … for a table on stdout, padded to `width` before it is painted so
    /// the escape codes do not shift the columns.
    pub fn verdict(&self, verdict: &str, width: usize) -> String {
        let style = match verdict {
            "PASS" | "ok" => GREEN,
            "FAIL" | "FAILED" => RED,
            "SKIP" | "UNVERIFIED" => YELLOW,
            _ => return format!("{verdict:<width$}"),
        };
        let padded = format!("{verdict:<width$}");
        let pad = padded.len() - verdict.len();
        format!("{}{}", paint(self.color_out, style, verdict), " ".repeat(pad))
    }

    /// Reports a failed command on stderr (and, with `--json`, as a document on stdout unless
    /// the command printed its own); returns the exit code.
    pub fn fail(&self, e: &anyhow::Error) -> i32 {
        let interrupted = crate::interrupt::seen();
        let code = if interrupted { crate::error::code::INTERRUPTED } else { crate::error::exit_code_of(e) };
        // A closed pipe (`bst list | head`) is not a failure worth a message.
        if e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)) {
            return code;
        }
        let message = format!("{e:#}");
        eprintln!("{} {message}", paint(self.color_err, RED, "error:"));
        if self.json && !self.printed.load(std::sync::atomic::Ordering::SeqCst) {
            let kind = if interrupted { "interrupted" } else { crate::error::kind_of(e) };
            self.json(&error_doc(kind, &message, code));
        }
        code
    }

    /// With `-vv`: when each step of a deploy finished, to see where the time goes.
    pub fn timing(&self, started: std::time::Instant, what: impl std::fmt::Display) {
        timing(self.verbose > 1, started, what);
    }

    /// Raw build output, passed through as it arrives (to stderr: stdout may be JSON).
    pub fn passthrough(&self, data: &[u8]) {
        if !self.quiet {
            let mut e = std::io::stderr().lock();
            let _ = e.write_all(data);
        }
    }
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `4,998`: a count as people read it.
pub fn count(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `2026-02-20T05-49-54-811Z`: the team's evidence timestamp (sortable, filename-safe).
pub fn evidence_stamp() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = i64::try_from(now.as_secs()).unwrap_or(0);
    let iso = crate::release::rfc3339(secs);
    format!("{}-{:03}Z", iso.trim_end_matches('Z').replace(':', "-"), now.subsec_millis())
}

/// A release gate's verdict: evidence pair written, `KEY=PASS|FAIL` printed last on stdout
/// (or one JSON document with `--json`), and an error (exit 1) on FAIL.
pub struct Gate<'a> {
    /// Folder under `reports/gates/`, e.g. `env-baseline`.
    pub name: &'a str,
    /// e.g. `ENV_BASELINE_RESULT`.
    pub key: &'a str,
    pub reports: &'a std::path::Path,
}

impl Gate<'_> {
    pub fn finish(&self, p: &Printer, pass: bool, doc: serde_json::Value, markdown: &str) -> anyhow::Result<()> {
        self.finish_with(p, if pass { "PASS" } else { "FAIL" }, pass, doc, markdown)
    }

    /// A verdict other than PASS/FAIL (the drill's `UNVERIFIED`); only `pass` exits 0.
    pub fn finish_with(&self, p: &Printer, verdict: &str, pass: bool, mut doc: serde_json::Value, markdown: &str) -> anyhow::Result<()> {
        use anyhow::Context;
        let dir = self.reports.join("gates").join(self.name);
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let (json_file, json_path, md_file, md_path) = claim_pair(&dir, &evidence_stamp())?;
        doc["schema_version"] = 1.into();
        doc["gate"] = self.name.into();
        doc["result"] = verdict.into();
        doc["result_line"] = format!("{}={verdict}", self.key).into();
        doc["evidence"] = serde_json::json!({"json": json_path.display().to_string(), "markdown": md_path.display().to_string()});
        use std::io::Write as _;
        (&json_file)
            .write_all((serde_json::to_string_pretty(&doc)? + "\n").as_bytes())
            .with_context(|| format!("cannot write {}", json_path.display()))?;
        let md = format!("{markdown}\n**{}={verdict}**\n", self.key);
        (&md_file).write_all(md.as_bytes()).with_context(|| format!("cannot write {}", md_path.display()))?;
        p.status(format!("evidence: {} {}", json_path.display(), md_path.display()));
        if p.json {
            p.json(&doc);
        } else {
            println!("{}={verdict}", self.key);
        }
        if pass {
            Ok(())
        } else {
            Err(crate::error::Error::Failed(format!("{} gate failed", self.name)).into())
        }
    }
}

/// Creates `<stamp>.json` and `<stamp>.md` in `dir`, both new (`O_EXCL`): runs in the same
/// millisecond (parallel CI jobs into one reports dir) take `<stamp>-2`, `-3`, …, so no
/// run overwrites another's evidence and each pair shares its name.
#[allow(clippy::type_complexity)]
fn claim_pair(
    dir: &std::path::Path,
    stamp: &str,
) -> anyhow::Result<(std::fs::File, std::path::PathBuf, std::fs::File, std::path::PathBuf)> {
    use anyhow::Context;
    let new = |p: &std::path::Path| std::fs::OpenOptions::new().write(true).create_new(true).open(p);
    for n in 1..10_000 {
        let stem = if n == 1 { stamp.to_string() } else { format!("{stamp}-{n}") };
        let (jp, mp) = (dir.join(format!("{stem}.json")), dir.join(format!("{stem}.md")));
        let j = match new(&jp) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", jp.display())),
        };
        match new(&mp) {
            Ok(m) => return Ok((j, jp, m, mp)),
            // Someone's md without its json: leave both names to them.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let _ = std::fs::remove_file(&jp);
            }
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", mp.display())),
        }
    }
    anyhow::bail!("no free evidence name for {stamp} in {}", dir.display())
}

/// A Markdown table cell: no pipes or newlines breaking the table.
pub fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

#[cfg(test)]
mod evidence_tests {
    /// 24 parallel `check` runs into one reports dir overwrote three evidence pairs (issue
    /// 20, item 11): the same stamp, claimed 24 times at once, gives 24 distinct pairs.
    #[test]
    fn parallel_claims_of_one_stamp_never_share_a_name() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().to_path_buf();
        let names: Vec<String> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..24)
                .map(|_| {
                    let dir = dir.clone();
                    s.spawn(move || {
                        let (_, j, _, m) = super::claim_pair(&dir, "2026-12-02T01-00-00-000Z").unwrap();
                        assert_eq!(j.with_extension(""), m.with_extension(""), "a pair shares its name");
                        j.file_name().unwrap().to_string_lossy().into_owned()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 24, "{names:?}");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 48);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_are_grouped_by_thousands() {
        let shown: Vec<String> = [0, 7, 999, 1000, 4998, 50_000, 1_234_567].into_iter().map(super::count).collect();
        assert_eq!(shown, ["0", "7", "999", "1,000", "4,998", "50,000", "1,234,567"]);
    }
}
