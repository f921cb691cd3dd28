//! How commands reach a target. Everything runs as a POSIX `sh` script, the same text on the
//! local transport and over SSH, so the demo target and tests exercise the real scripts.

use std::io::Write;
use std::time::Duration;

pub mod local;
pub mod ssh;

use crate::settings::{Globals, Host, Target};

#[derive(Debug, Default)]
pub struct Output {
    pub status: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Why feeding stdin stopped early, if it did. Reported together with the script's own
    /// stderr: a local read error and the remote `tar`'s "unexpected EOF" are one story.
    pub feed_error: Option<anyhow::Error>,
}

impl Output {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).trim_end().to_string()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Writes the stdin of a running script; returns what it wrote.
pub type Feed<'a> = &'a mut dyn FnMut(&mut dyn Write) -> anyhow::Result<()>;

/// Drives a conversation with a running script: read its first answer, then write.
pub type Talk<'a> = &'a mut dyn FnMut(&mut dyn Input) -> anyhow::Result<()>;

/// The stdin of a running script that can also wait for what the script printed so far:
/// one remote command can answer a question and then take the upload (one round trip).
pub trait Input: Write {
    /// Reads the script's stdout until `done` holds for everything read so far, or stdout
    /// ends; hands that over (it is not part of the final [`Output`]).
    fn read_until(&mut self, done: &dyn Fn(&[u8]) -> bool) -> anyhow::Result<Vec<u8>>;

    fn as_write(&mut self) -> &mut dyn Write;
}

pub trait Transport {
    /// Runs `script` with `sh -c`, stdin closed, output captured.
    fn run(&mut self, script: &str) -> anyhow::Result<Output> {
        self.run_with_input(script, &mut |_| Ok(()))
    }

    /// Runs `script` while `feed` streams its stdin. If the script exits early (e.g. `tar`
    /// hits a full disk) the feed's write error is swallowed and the script's status and
    /// stderr tell the story.
    fn run_with_input(&mut self, script: &str, feed: Feed<'_>) -> anyhow::Result<Output> {
        self.converse(script, &mut |i| feed(i.as_write()))
    }

    /// Runs `script` while `talk` reads its first output and then writes its stdin. Error
    /// handling as for [`Transport::run_with_input`].
    fn converse(&mut self, script: &str, talk: Talk<'_>) -> anyhow::Result<Output>;

    /// Runs `script`, handing output to `sink` as it arrives (builds). Returns the status.
    fn run_streaming(&mut self, script: &str, sink: &mut dyn FnMut(Stream, &[u8])) -> anyhow::Result<i32>;

    /// Connects to `host:port` as seen from the target (SSH: a direct-tcpip channel, so no
    /// port has to be exposed and nothing needs curl or redis-cli), writes `request`, and
    /// reads until EOF, until `done` says the reply is complete, or until `timeout`.
    fn tcp_exchange(
        &mut self,
        host: &str,
        port: u16,
        request: &[u8],
        done: &dyn Fn(&[u8]) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<Vec<u8>>;

    /// Bytes written to the target so far (for the summary and benchmarks).
    fn bytes_sent(&self) -> u64;
}

/// Keeps output bounded: a failing `tar` can print one line per file.
pub(crate) const CAPTURE_LIMIT: usize = 256 * 1024;

/// Replies larger than this are cut: a health endpoint is not a download.
pub(crate) const REPLY_LIMIT: usize = 64 * 1024;

pub(crate) fn capture(buf: &mut Vec<u8>, data: &[u8]) {
    capture_upto(buf, data, CAPTURE_LIMIT);
}

/// stdout carries data (state listings, the delta manifest), so it gets more room.
pub(crate) const STDOUT_LIMIT: usize = 64 * 1024 * 1024;

pub(crate) fn capture_out(buf: &mut Vec<u8>, data: &[u8]) {
    capture_upto(buf, data, STDOUT_LIMIT);
}

fn capture_upto(buf: &mut Vec<u8>, data: &[u8], limit: usize) {
    let room = limit.saturating_sub(buf.len());
    buf.extend_from_slice(&data[..data.len().min(room)]);
}

pub fn connect(target: &Target, globals: &Globals) -> anyhow::Result<Box<dyn Transport>> {
    match &target.host {
        Host::Local => Ok(Box::new(local::Local::new(globals.verbose))),
        Host::Ssh(s) => Ok(Box::new(ssh::SshTransport::connect(s, globals)?)),
    }
}

/// `-v`: each remote command on one line; `-vv`: each script in full.
pub(crate) fn show_command(verbose: u8, where_: &str, script: &str) {
    match verbose {
        0 => {}
        1 => eprintln!("[{where_}] $ {}", one_line(script, ONE_LINE_WIDTH)),
        _ => eprintln!("[{where_}] $ {}", script.trim_end().replace('\n', "\n    ")),
    }
}

/// Characters of a script `-v` shows: enough to tell the commands apart (they differ after
/// the `B='<base>'` they all begin with), short enough not to wrap twice.
const ONE_LINE_WIDTH: usize = 160;

/// A script's lines joined into one, for reading (`then`, `do`, `|`, … continue a line, other
/// lines end with `;`), cut after `width` characters with how many lines it has.
pub(crate) fn one_line(script: &str, width: usize) -> String {
    let lines: Vec<&str> = script.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let mut joined = String::new();
    for (i, l) in lines.iter().enumerate() {
        joined.push_str(l);
        if i + 1 < lines.len() {
            let open = ["then", "do", "else", "{", "(", "|", "&&", "||", ";", "\\"].iter().any(|e| l.ends_with(e));
            joined.push_str(if open { " " } else { "; " });
        }
    }
    if joined.chars().count() <= width {
        return joined;
    }
    let cut: String = joined.chars().take(width).collect();
    format!("{cut}… ({} lines; -vv shows them)", lines.len())
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_line_joins_and_cuts() {
        let s = "B='/srv/a'\nif [ -d \"$B\" ]; then\n  echo yes\nfi\n\ncat x |\n  wc -l\n";
        assert_eq!(super::one_line(s, 100), "B='/srv/a'; if [ -d \"$B\" ]; then echo yes; fi; cat x | wc -l");
        assert_eq!(super::one_line(s, 10), "B='/srv/a'… (6 lines; -vv shows them)");
    }
}
