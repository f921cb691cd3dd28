//! One printer decides what goes where: results on stdout (a table, or one JSON document
//! with `--json`), progress and logs on stderr, nothing but errors with `-q`.

use std::io::{IsTerminal, Write};

use serde::Serialize;

use crate::settings::Globals;

#[derive(Debug, Clone)]
pub struct Printer {
    pub json: bool,
    pub quiet: bool,
    pub verbose: u8,
    /// Progress bars only for a human watching a terminal; CI gets plain lines.
    pub tty: bool,
}

impl Printer {
    pub fn new(g: &Globals) -> Self {
        let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false");
        Printer { json: g.json, quiet: g.quiet, verbose: g.verbose, tty: std::io::stderr().is_terminal() && !ci }
    }

    /// Progress and status, for humans.
    pub fn status(&self, msg: impl AsRef<str>) {
        if !self.quiet {
            eprintln!("{}", msg.as_ref());
        }
    }

    pub fn warn(&self, msg: impl AsRef<str>) {
        eprintln!("warning: {}", msg.as_ref());
    }

    /// The human result of a command; suppressed with `--json`, which prints [`Self::json`].
    pub fn out(&self, text: impl AsRef<str>) {
        if !self.json {
            let mut o = std::io::stdout().lock();
            let _ = writeln!(o, "{}", text.as_ref());
        }
    }

    pub fn json<T: Serialize>(&self, doc: &T) {
        if self.json {
            let mut o = std::io::stdout().lock();
            let _ = serde_json::to_writer_pretty(&mut o, doc);
            let _ = writeln!(o);
        }
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
