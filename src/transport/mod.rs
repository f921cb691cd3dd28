//! How commands reach a target. Everything runs as a POSIX `sh` script, the same text on the
//! local transport and over SSH, so the demo target and tests exercise the real scripts.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

pub mod local;
pub mod ssh;

use crate::report::Globals;

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

    /// Round trips since the handshake, where they are counted: requests that wait for a
    /// reply (a channel, a command), and waits for a command's answer to what it was sent.
    fn round_trips(&self) -> Option<(u32, u32)> {
        None
    }

    /// Reads how many bytes the peer has acknowledged on the connection so far: what the
    /// link has really carried, where the bytes written may still sit in buffers. `None` from
    /// the reader where the transport cannot tell.
    fn acked_meter(&self) -> Box<dyn Fn() -> Option<u64>> {
        Box::new(|| None)
    }
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

pub fn connect(host: &Host, globals: &Globals) -> anyhow::Result<Box<dyn Transport>> {
    match host {
        Host::Local => Ok(Box::new(local::Local::new(globals.verbose))),
        Host::Ssh(s) => Ok(Box::new(ssh::SshTransport::connect(s, globals)?)),
    }
}

/// `-v`: each remote command on one line; `-vv`: each script in full.
pub(crate) fn show_command(verbose: u8, where_: &str, script: &str) {
    match verbose {
        0 => {}
        1 => crate::report::diag(format_args!("[{where_}] $ {}", one_line(script, ONE_LINE_WIDTH))),
        _ => crate::report::diag(format_args!("[{where_}] $ {}", script.trim_end().replace('\n', "\n    "))),
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

#[derive(Debug, Clone, PartialEq)]
pub enum Host {
    /// The same layout on this machine, driven through `sh`: the demo target, and tests.
    Local,
    Ssh(Box<Ssh>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Ssh {
    /// The name as written (targets.toml `host`, or a ProxyJump hop): the ssh config key.
    pub alias: String,
    /// Where to connect: `HostName` from ssh config (`%h` expanded, lowercased), else the alias.
    pub host: String,
    pub port: u16,
    pub user: String,
    /// Tried in order. From targets.toml (then only these) or ssh config `IdentityFile`;
    /// empty: ssh's default key names.
    pub identity_files: Vec<PathBuf>,
    /// Skip ssh-agent (targets.toml `identity_file`, or `IdentitiesOnly yes`).
    pub identities_only: bool,
    /// `IdentityAgent none` turns the agent off.
    pub use_agent: bool,
    /// The user known_hosts files (`UserKnownHostsFile`, or targets.toml `known_hosts`): all
    /// are read, the first one records new keys.
    pub known_hosts: Vec<PathBuf>,
    /// `GlobalKnownHostsFile`: read, never written.
    pub global_known_hosts: Vec<PathBuf>,
    /// `HostKeyAlias`: the name keys are looked up and recorded under, instead of `[host]:port`.
    pub host_key_alias: Option<String>,
    /// `StrictHostKeyChecking accept-new` (or `no`): record unknown keys. Changed keys are
    /// refused whatever this says.
    pub accept_new: bool,
    pub hash_known_hosts: bool,
    pub proxy_jump: Option<String>,
    /// `ProxyCommand`, tokens expanded: its stdin/stdout carry the SSH stream.
    pub proxy_command: Option<String>,
    pub connect_timeout: Option<u64>,
    /// Seconds between keepalives (`ServerAliveInterval`; 0 or unset: 15).
    pub keepalive_secs: u32,
    /// `AddressFamily`: `inet` or `inet6` restricts the addresses tried.
    pub address_family: Option<String>,
    /// For `config show`: (setting, value, where it came from).
    pub origins: Vec<(String, String, String)>,
    /// Where `user` came from, for the message when that user cannot log in.
    pub user_from: UserFrom,
    /// Directives that applied but that bst does not act on (keyword, `file:line`), said under `-v`.
    pub ignored: Vec<(String, String)>,
    /// The ProxyJump hops, resolved when the settings were: the transport reads no config.
    pub jump: Vec<Hop>,
}

/// One ProxyJump hop as written, and what it resolved to (or why it did not).
#[derive(Debug, Clone, PartialEq)]
pub struct Hop {
    pub spec: String,
    pub ssh: Result<Ssh, String>,
}

/// How deep ProxyJump hops may nest: deeper is a loop in the ssh config.
pub const MAX_DEPTH: u32 = 8;

/// What set the SSH user: a wrong account is the commonest first-hour failure, and the fix
/// is in whichever file said it.
#[derive(Debug, Clone, PartialEq)]
pub enum UserFrom {
    /// targets.toml: `path:line` where known, else the file.
    Config(String),
    /// An ssh config `User` line (`path:line`).
    SshConfig(String),
    /// A ProxyJump spec's `user@`.
    Jump(String),
    /// Nothing: the local user name.
    Local,
}

impl std::fmt::Display for UserFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UserFrom::Config(at) => write!(f, "`user =` at {at}"),
            UserFrom::SshConfig(at) => write!(f, "`User` at {at}"),
            UserFrom::Jump(spec) => write!(f, "the ProxyJump hop `{spec}`"),
            UserFrom::Local => f.write_str("the local user name: no `user =` in targets.toml, no `User` in the ssh config"),
        }
    }
}

impl UserFrom {
    /// The next step when `user` is the wrong account.
    pub fn fix(&self) -> &'static str {
        match self {
            UserFrom::Local => "set `user = \"…\"` in the target",
            _ => "change it there",
        }
    }
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
