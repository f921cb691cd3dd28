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

pub(crate) fn show_command(verbose: u8, where_: &str, script: &str) {
    if verbose > 0 {
        let shown = if verbose > 1 || script.lines().count() <= 12 {
            script.trim_end().to_string()
        } else {
            let head: Vec<&str> = script.lines().take(12).collect();
            format!("{}\n… ({} more lines, -vv shows all)", head.join("\n"), script.lines().count() - 12)
        };
        eprintln!("[{where_}] $ {}", shown.replace('\n', "\n    "));
    }
}
