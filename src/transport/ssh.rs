//! The only module that talks ssh2: connect with a timeout, verify the host key against
//! known_hosts, authenticate, and run scripts over exec channels of ONE session.
//!
//! After authentication the session is non-blocking and every wait goes through
//! [`Pump::wait`]: it polls the socket, sends keepalives (ssh2 only configures them), and
//! turns Ctrl-C into an error, so long silent builds neither drop nor hang the run.
//!
//! Size: ~860 lines, because everything that touches ssh2 (its non-blocking quirks, the host
//! key, auth, jump tunnels) stays behind this one file; nothing else in bst imports ssh2.

use std::io::{self, BufWriter, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine;
#[cfg(unix)]
use libc::{poll, pollfd, POLLIN, POLLOUT};
use ssh2::{BlockDirections, Channel, ErrorCode, Session};
#[cfg(windows)]
use windows_sys::Win32::Networking::WinSock::{WSAPoll as poll, POLLIN, POLLOUT, SOCKET, WSAPOLLFD as pollfd};

use super::Ssh;
use super::{capture, show_command, Input, Output, Stream, Talk, Transport};
use crate::error::Error;
use crate::interrupt;
use crate::platform::home_dir;
use crate::report::Globals;
use crate::shell::quote;

const LIBSSH2_ERROR_EAGAIN: i32 = -37;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct SshTransport {
    pump: Pump,
    /// Channels given up on after Ctrl-C. Closing one waits for the remote process to end
    /// (sshd delays the close until its child exits), so they are parked here instead;
    /// the abort script stops what still runs.
    abandoned: Vec<Channel>,
    /// The socket the session runs over (ssh2 only borrows its fd on some platforms).
    _tcp: TcpStream,
    /// Set when connected through ProxyJump hops or a ProxyCommand: what carries the stream.
    _tunnel: Option<Tunnel>,
    label: String,
    verbose: u8,
    sent: u64,
}

/// The session plus its socket, for waiting, and the round trips counted so far.
struct Pump {
    sess: Session,
    socket: RawSock,
    /// Requests that wait for their reply (a channel, a command).
    requests: std::cell::Cell<u32>,
    /// Waits for the remote command's answer to what the client sent it.
    answers: std::cell::Cell<u32>,
    /// The client sent the command data since the last answer came.
    spoke: std::cell::Cell<bool>,
}

#[cfg(unix)]
type RawSock = std::os::unix::io::RawFd;
#[cfg(windows)]
type RawSock = SOCKET;

fn raw_socket(tcp: &TcpStream) -> RawSock {
    #[cfg(unix)]
    {
        std::os::unix::io::AsRawFd::as_raw_fd(tcp)
    }
    #[cfg(windows)]
    {
        std::os::windows::io::AsRawSocket::as_raw_socket(tcp) as SOCKET
    }
}

/// Waits until one of `socks` is ready for `events` (per socket), at most `ms`. poll(2) on
/// Unix, WSAPoll on Windows (std ran WSAStartup when it opened the sockets).
fn wait_ready(socks: &[(RawSock, i16)], ms: i32) {
    let mut fds: Vec<pollfd> = socks.iter().map(|&(fd, events)| pollfd { fd, events, revents: 0 }).collect();
    // SAFETY: valid pollfds for sockets the caller keeps open for the duration of the call.
    unsafe {
        poll(fds.as_mut_ptr(), fds.len() as _, ms);
    }
}

impl Pump {
    fn wait(&self) -> anyhow::Result<()> {
        interrupt::check()?;
        let _ = self.sess.keepalive_send();
        let events = match self.sess.block_directions() {
            BlockDirections::Outbound => POLLOUT,
            BlockDirections::Both => POLLIN | POLLOUT,
            _ => POLLIN,
        };
        wait_ready(&[(self.socket, events)], 1000);
        Ok(())
    }

    /// A request that waits for the server's reply: one round trip.
    fn request<T>(&self, f: impl FnMut() -> Result<T, ssh2::Error>) -> anyhow::Result<T> {
        self.requests.set(self.requests.get() + 1);
        self.retry(f)
    }

    /// Waits for the remote command's output. The first wait after the client sent it
    /// something is a round trip; waiting on through a long build is not another.
    fn await_output(&self) -> anyhow::Result<()> {
        if self.spoke.replace(false) {
            self.answers.set(self.answers.get() + 1);
        }
        self.wait()
    }

    fn retry<T>(&self, mut f: impl FnMut() -> Result<T, ssh2::Error>) -> anyhow::Result<T> {
        loop {
            match f() {
                Ok(v) => return Ok(v),
                Err(e) if e.code() == ErrorCode::Session(LIBSSH2_ERROR_EAGAIN) => self.wait()?,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

type Sink<'a> = &'a mut dyn FnMut(Stream, &[u8]);

/// Reads whatever stdout/stderr data is ready; `Ok(true)` if anything came.
fn drain(ch: &mut Channel, out: &mut Output, sink: &mut Option<Sink<'_>>) -> io::Result<bool> {
    let mut buf = [0u8; 32 * 1024];
    let mut progress = false;
    for which in [Stream::Stdout, Stream::Stderr] {
        loop {
            let r = match which {
                Stream::Stdout => ch.read(&mut buf),
                Stream::Stderr => ch.stderr().read(&mut buf),
            };
            match r {
                Ok(0) => break,
                Ok(n) => {
                    progress = true;
                    match sink {
                        Some(s) => s(which, &buf[..n]),
                        None if which == Stream::Stdout => super::capture_out(&mut out.stdout, &buf[..n]),
                        None => capture(&mut out.stderr, &buf[..n]),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(progress)
}

struct SshInput<'a, 'b> {
    w: BufWriter<ChanWriter<'a, 'b>>,
}

impl Write for SshInput<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.w.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}

impl Input for SshInput<'_, '_> {
    fn read_until(&mut self, done: &dyn Fn(&[u8]) -> bool) -> anyhow::Result<Vec<u8>> {
        self.w.flush()?;
        let cw = self.w.get_mut();
        while !done(&cw.out.stdout) {
            let progress = drain(cw.ch, cw.out, cw.sink).context("lost the connection while reading")?;
            if cw.ch.eof() {
                break;
            }
            if !progress {
                cw.pump.await_output()?;
            }
        }
        Ok(std::mem::take(&mut cw.out.stdout))
    }

    fn as_write(&mut self) -> &mut dyn Write {
        self
    }
}

/// stdin of a remote script. While the window is full it keeps reading the script's output,
/// so a remote `tar` that fills stderr cannot deadlock us.
struct ChanWriter<'a, 'b> {
    pump: &'a Pump,
    ch: &'a mut Channel,
    out: &'a mut Output,
    sink: &'a mut Option<Sink<'b>>,
    sent: &'a mut u64,
}

impl Write for ChanWriter<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            match self.ch.write(buf) {
                Ok(n) => {
                    *self.sent += n as u64;
                    self.pump.spoke.set(true);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    drain(self.ch, self.out, self.sink)?;
                    if self.ch.eof() {
                        return Err(io::Error::new(io::ErrorKind::BrokenPipe, "the remote command stopped reading"));
                    }
                    self.pump.wait().map_err(io::Error::other)?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        loop {
            match self.ch.flush() {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.pump.wait().map_err(io::Error::other)?,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Whether a feed error is really Ctrl-C: the writer can only hand it up wrapped in an
/// io::Error, so the sticky flag is the reliable witness.
fn interrupted(e: &anyhow::Error) -> bool {
    interrupt::seen() || e.chain().any(|c| matches!(c.downcast_ref::<Error>(), Some(Error::Interrupted)))
}

/// How long a connection may stay silent before a human at a terminal is told what it waits for.
const NOTICE_AFTER: Duration = Duration::from_secs(1);

/// The pending `connecting to host:port…` line: at most one connection is being opened at a
/// time, and the passphrase prompt deep inside authentication must be able to cancel it.
static NOTICE: std::sync::Mutex<Option<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)>> = std::sync::Mutex::new(None);

/// Arms the line for a human watching a terminal (not CI, not `-q`; stderr, so `--json` on
/// stdout is untouched): a host that never answers is otherwise ten seconds of nothing.
fn notice_start(s: &Ssh, g: &Globals) {
    let p = crate::report::Printer::new(g);
    if !p.tty || p.quiet {
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let line = format!("connecting to {}:{}…", s.host, s.port);
    let h = std::thread::spawn(move || {
        if rx.recv_timeout(NOTICE_AFTER) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
            crate::report::diag(line);
        }
    });
    *NOTICE.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some((tx, h));
}

/// Cancels the line if it is not out yet, and waits until it is out if it is being printed,
/// so it never lands after (or inside) what follows.
fn notice_stop() {
    let pending = NOTICE.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    if let Some((tx, h)) = pending {
        drop(tx);
        let _ = h.join();
    }
}

impl SshTransport {
    pub fn connect(s: &Ssh, g: &Globals) -> anyhow::Result<Self> {
        notice_start(s, g);
        let opened = open_session(s, g, 0);
        notice_stop();
        let (sess, tcp, tunnel) = opened?;
        let socket = raw_socket(&tcp);
        sess.set_keepalive(true, s.keepalive_secs);
        sess.set_timeout(0);
        sess.set_blocking(false);
        Ok(SshTransport {
            pump: Pump {
                sess,
                socket,
                requests: std::cell::Cell::new(0),
                answers: std::cell::Cell::new(0),
                spoke: std::cell::Cell::new(false),
            },
            abandoned: Vec::new(),
            _tcp: tcp,
            _tunnel: tunnel,
            label: format!("{}@{}", s.user, s.alias),
            verbose: g.verbose,
            sent: 0,
        })
    }

    fn exec(&mut self, script: &str, feed: Option<Talk<'_>>, mut sink: Option<Sink<'_>>) -> anyhow::Result<Output> {
        show_command(self.verbose, &self.label, script);
        // Always `sh`: the login shell may be fish or csh, our scripts are POSIX.
        let cmd = format!("sh -c {}", quote(script));
        let pump = &self.pump;
        let mut ch = pump.request(|| pump.sess.channel_session()).context("cannot open an SSH channel")?;
        // Its output follows the reply without another word from us: no round trip of its own.
        pump.request(|| ch.exec(&cmd)).context("cannot start the remote command")?;
        let mut out = Output::default();
        if let Some(feed) = feed {
            let mut w = SshInput {
                w: BufWriter::with_capacity(
                    256 * 1024,
                    ChanWriter { pump, ch: &mut ch, out: &mut out, sink: &mut sink, sent: &mut self.sent },
                ),
            };
            let r = feed(&mut w).and_then(|()| w.flush().map_err(anyhow::Error::from));
            drop(w);
            if let Err(e) = r {
                if interrupted(&e) {
                    // EOF ends a remote `tar`; give its script a moment to clean up and exit,
                    // so the abort that follows does not race it. No waiting for the close
                    // handshake itself (sshd delays it until the child is gone).
                    let _ = pump.retry(|| ch.send_eof());
                    let deadline = Instant::now() + Duration::from_secs(3);
                    while !ch.eof() && Instant::now() < deadline {
                        match drain(&mut ch, &mut out, &mut sink) {
                            Ok(true) => {}
                            Ok(false) => {
                                if pump.wait().is_err() {
                                    break;
                                }
                            }
                            Err(_) => break,
                        }
                    }
                    self.abandoned.push(ch);
                    return Err(Error::Interrupted.into());
                }
                out.feed_error = Some(e);
            }
        }
        let _ = pump.retry(|| ch.send_eof());
        loop {
            let progress = drain(&mut ch, &mut out, &mut sink).context("lost the connection while reading")?;
            if ch.eof() {
                break;
            }
            if !progress {
                if let Err(e) = pump.await_output() {
                    self.abandoned.push(ch);
                    return Err(e);
                }
            }
        }
        pump.retry(|| ch.wait_close())?;
        out.status = ch.exit_status()?;
        if let Ok(sig) = ch.exit_signal() {
            if let Some(name) = sig.exit_signal {
                out.status = 128 + signal_number(&name);
            }
        }
        Ok(out)
    }
}

fn signal_number(name: &str) -> i32 {
    match name {
        "HUP" => 1,
        "INT" => 2,
        "KILL" => 9,
        "PIPE" => 13,
        "TERM" => 15,
        _ => 127,
    }
}

impl Transport for SshTransport {
    fn converse(&mut self, script: &str, talk: Talk<'_>) -> anyhow::Result<Output> {
        self.exec(script, Some(talk), None)
    }

    fn run(&mut self, script: &str) -> anyhow::Result<Output> {
        self.exec(script, None, None)
    }

    fn run_streaming(&mut self, script: &str, sink: &mut dyn FnMut(Stream, &[u8])) -> anyhow::Result<i32> {
        Ok(self.exec(script, None, Some(sink))?.status)
    }

    fn tcp_exchange(
        &mut self,
        host: &str,
        port: u16,
        request: &[u8],
        done: &dyn Fn(&[u8]) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<Vec<u8>> {
        if self.verbose > 0 {
            crate::report::diag(format_args!("[{}] tcp {host}:{port} (direct-tcpip)", self.label));
        }
        let deadline = Instant::now() + timeout;
        let pump = &self.pump;
        let mut ch = pump
            .request(|| pump.sess.channel_direct_tcpip(host, port, None))
            .map_err(|e| anyhow::anyhow!("cannot connect to {host}:{port} on the server: {}", root_message(&e)))?;
        let mut written = 0;
        while written < request.len() {
            match ch.write(&request[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => pump.wait()?,
                Err(e) => return Err(e.into()),
            }
            if Instant::now() > deadline {
                anyhow::bail!("timed out sending to {host}:{port}");
            }
        }
        let mut reply = Vec::new();
        let mut buf = [0u8; 8192];
        let result = loop {
            match ch.read(&mut buf) {
                Ok(0) if ch.eof() => break Ok(()),
                Ok(0) => pump.wait()?,
                Ok(n) => {
                    reply.extend_from_slice(&buf[..n]);
                    if done(&reply) || reply.len() >= super::REPLY_LIMIT {
                        break Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => pump.wait()?,
                Err(e) => break Err(anyhow::Error::from(e)),
            }
            if Instant::now() > deadline {
                break Err(anyhow::anyhow!("no complete reply from {host}:{port} within {}s", timeout.as_secs()));
            }
        };
        // Parked, not closed: a close waits for the peer, and a probe must not hang on it.
        let _ = ch.send_eof();
        self.abandoned.push(ch);
        result.map(|()| reply)
    }

    fn bytes_sent(&self) -> u64 {
        self.sent
    }

    fn round_trips(&self) -> Option<(u32, u32)> {
        Some((self.pump.requests.get(), self.pump.answers.get()))
    }

    fn acked_meter(&self) -> Box<dyn Fn() -> Option<u64>> {
        // Through a jump host or ProxyCommand the socket is a local pair: acknowledged at
        // once, whatever the link beyond it does.
        if self._tunnel.is_some() {
            return Box::new(|| None);
        }
        let socket = self.pump.socket;
        Box::new(move || tcp_acked(socket))
    }
}

/// `tcpi_bytes_acked` of the connection (Linux 4.1 and later).
#[cfg(target_os = "linux")]
fn tcp_acked(socket: RawSock) -> Option<u64> {
    // SAFETY: tcp_info is plain data; getsockopt writes at most `len` bytes into it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let r = unsafe { libc::getsockopt(socket, libc::IPPROTO_TCP, libc::TCP_INFO, (&raw mut info).cast(), &mut len) };
    // An older kernel fills a shorter struct: without the field, the count is unknown.
    let needed = std::mem::offset_of!(libc::tcp_info, tcpi_bytes_acked) + std::mem::size_of::<u64>();
    (r == 0 && len as usize >= needed && info.tcpi_bytes_acked > 0).then_some(info.tcpi_bytes_acked)
}

/// Elsewhere the link is judged by the writes once they block (see `workspace::pace`).
#[cfg(not(target_os = "linux"))]
fn tcp_acked(_socket: RawSock) -> Option<u64> {
    None
}

fn root_message(e: &anyhow::Error) -> String {
    match e.downcast_ref::<ssh2::Error>() {
        Some(s) => s.message().to_string(),
        None => e.to_string(),
    }
}

/// The key type name at the start of an SSH public key blob.
fn key_type(blob: &[u8]) -> Option<&str> {
    let len = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
    std::str::from_utf8(blob.get(4..4 + len)?).ok()
}

fn tcp_connect(s: &Ssh) -> anyhow::Result<TcpStream> {
    let conn_err = |cause: String| Error::Connect { host: s.host.clone(), port: s.port, cause };
    let timeout = s.connect_timeout.map_or(CONNECT_TIMEOUT, Duration::from_secs);
    let addrs: Vec<_> = (s.host.as_str(), s.port)
        .to_socket_addrs()
        .map_err(|e| conn_err(format!("cannot resolve host name (DNS): {e}")))?
        .filter(|a| match s.address_family.as_deref() {
            Some("inet") => a.is_ipv4(),
            Some("inet6") => a.is_ipv6(),
            _ => true,
        })
        .collect();
    let mut last = None;
    for a in &addrs {
        match TcpStream::connect_timeout(a, timeout) {
            Ok(t) => {
                let _ = t.set_nodelay(true);
                return Ok(t);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(conn_err(match last {
        Some(e) if e.kind() == io::ErrorKind::TimedOut => format!("timed out after {}s", timeout.as_secs()),
        Some(e) if e.kind() == io::ErrorKind::ConnectionRefused => "connection refused (is sshd running on that port?)".into(),
        Some(e) => e.to_string(),
        None => "the name resolved to no address".into(),
    })
    .into())
}

/// What keeps a proxied stream alive: the thread pumping a hop's channel (which owns the
/// hop's session and, through `_outer`, the hops before it), or a ProxyCommand process.
pub(crate) struct Tunnel {
    _pump: Option<std::thread::JoinHandle<()>>,
    child: Option<std::process::Child>,
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

type Opened = (Session, TcpStream, Option<Tunnel>);

/// A connected, verified, authenticated session (blocking mode), over TCP, a ProxyCommand's
/// stdio, or a chain of ProxyJump hops (each a direct-tcpip channel of the one before, each
/// host key verified), in the order OpenSSH connects them.
fn open_session(s: &Ssh, g: &Globals, depth: u32) -> anyhow::Result<Opened> {
    let conn_err = |cause: String| Error::Connect { host: s.host.clone(), port: s.port, cause };
    if depth >= super::MAX_DEPTH {
        return Err(conn_err("ProxyJump/ProxyCommand chain too deep (a loop in the ssh config?)".into()).into());
    }
    note_ignored(s, g);
    let (tcp, tunnel) = if s.proxy_jump.is_some() {
        let hops = &s.jump;
        let n = hops.len();
        let hop_ssh = |i: usize| -> anyhow::Result<&Ssh> {
            let hop = hops.get(i).ok_or_else(|| conn_err("ProxyJump names no hop".into()))?;
            hop.ssh.as_ref().map_err(|why| conn_err(format!("ProxyJump hop {}/{n} `{}`: {why}", i + 1, hop.spec)).into())
        };
        let what = |i: usize, h: &Ssh| format!("ProxyJump hop {}/{n} `{}` ({}:{})", i + 1, hops[i].spec, h.host, h.port);
        let first = hop_ssh(0)?;
        let mut cur = open_session(first, g, depth + 1).with_context(|| what(0, first))?;
        let mut cur_ka = first.keepalive_secs;
        let mut cur_name = what(0, first);
        for i in 1..n {
            let h = hop_ssh(i)?;
            let (local, t) = through(cur, cur_ka, &h.host, h.port, &cur_name)?;
            cur = handshake(local, Some(t), h, g, false).with_context(|| what(i, h))?;
            cur_ka = h.keepalive_secs;
            cur_name = what(i, h);
        }
        let (local, t) = through(cur, cur_ka, &s.host, s.port, &cur_name)?;
        (local, Some(t))
    } else if let Some(cmd) = &s.proxy_command {
        let (local, t) = proxy_command(cmd).map_err(|e| conn_err(format!("ProxyCommand `{cmd}`: {e:#}")))?;
        (local, Some(t))
    } else {
        (tcp_connect(s)?, None)
    };
    handshake(tcp, tunnel, s, g, depth == 0)
}

/// Under `-v`, once per connection: the ssh config directives that applied but that bst does not act on.
fn note_ignored(s: &Ssh, g: &Globals) {
    if g.verbose > 0 && !s.ignored.is_empty() {
        let list: Vec<String> = s.ignored.iter().map(|(k, at)| format!("{k} ({at})")).collect();
        crate::report::diag(format_args!("bst: ssh config for {}: not used by bst: {}", s.alias, list.join(", ")));
    }
}

/// A stream to `host:port` opened by the session `via` (a direct-tcpip channel pumped by a
/// thread that then owns `via`).
fn through(via: Opened, keepalive: u32, host: &str, port: u16, via_name: &str) -> anyhow::Result<(TcpStream, Tunnel)> {
    let (jsess, jtcp, jtunnel) = via;
    let ch = jsess.channel_direct_tcpip(host, port, None).map_err(|e| Error::Connect {
        host: host.to_string(),
        port,
        cause: format!("{via_name} could not reach it: {}", e.message()),
    })?;
    let (local, far) = loopback_pair()?;
    let handle = std::thread::spawn(move || tunnel_pump(jsess, jtcp, ch, far, keepalive, jtunnel));
    Ok((local, Tunnel { _pump: Some(handle), child: None }))
}

/// Runs a ProxyCommand the way ssh does (`$SHELL -c "exec …"`, stderr to the terminal), its
/// stdin and stdout one end of a socket pair whose other end the session runs over (libssh2
/// wants a socket; a pair needs no pumping thread).
fn proxy_command(cmd: &str) -> anyhow::Result<(TcpStream, Tunnel)> {
    #[cfg(windows)]
    {
        let _ = cmd;
        anyhow::bail!("ProxyCommand is not supported by bst on Windows; use ProxyJump");
    }
    #[cfg(unix)]
    {
        use std::os::unix::io::{FromRawFd, IntoRawFd, OwnedFd};
        use std::process::{Command, Stdio};
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().context("cannot create a socket pair")?;
        let theirs = OwnedFd::from(theirs);
        let shell = std::env::var("SHELL").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| "/bin/sh".into());
        let child = Command::new(shell)
            .arg("-c")
            .arg(format!("exec {cmd}"))
            .stdin(Stdio::from(theirs.try_clone()?))
            .stdout(Stdio::from(theirs))
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start it")?;
        // SAFETY: the fd is a connected stream socket we own; TcpStream only reads, writes,
        // polls and shuts it down, all of which a Unix socket supports.
        let local = unsafe { TcpStream::from_raw_fd(ours.into_raw_fd()) };
        Ok((local, Tunnel { _pump: None, child: Some(child) }))
    }
}

/// The SSH handshake, host key check and login over an already connected stream. `last`:
/// this is the target itself (not a ProxyJump hop), whose finished handshake ends the wait
/// the `connecting to …` line is about.
fn handshake(tcp: TcpStream, tunnel: Option<Tunnel>, s: &Ssh, g: &Globals, last: bool) -> anyhow::Result<Opened> {
    let conn_err = |cause: String| Error::Connect { host: s.host.clone(), port: s.port, cause };
    let mut sess = Session::new().context("cannot create an SSH session")?;
    // Like OpenSSH, ConnectTimeout also bounds the banner exchange: a port that accepts but
    // never speaks SSH must not hang the run.
    let timeout = s.connect_timeout.map_or(CONNECT_TIMEOUT, Duration::from_secs);
    sess.set_timeout(u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX));
    sess.set_compress(false);
    let known = read_known_hosts(s);
    let name = crate::known_hosts::lookup_name(&s.host, s.port, s.host_key_alias.as_deref());
    let entries = crate::known_hosts::entries_for(&known, &name);
    if let Some(prefs) = crate::known_hosts::preferred_methods(&entries) {
        // Negotiate a host key type we can verify: libssh2 otherwise picks its own favourite
        // and a host known only by its RSA key would look unknown (or changed).
        let all = "ssh-ed25519,ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,ecdsa-sha2-nistp521,rsa-sha2-512,rsa-sha2-256,ssh-rsa";
        let rest: Vec<&str> = all.split(',').filter(|a| !prefs.split(',').any(|p| p == *a)).collect();
        let _ = sess.method_pref(ssh2::MethodType::HostKey, &format!("{prefs},{}", rest.join(",")));
    }
    sess.set_tcp_stream(tcp.try_clone().context("cannot share the socket")?);
    let greeted = sess.handshake();
    if last {
        notice_stop();
    }
    greeted.map_err(|e| {
        let why = if e.code() == ErrorCode::Session(-9) {
            format!("no SSH greeting within {}s", timeout.as_secs())
        } else {
            e.message().to_string()
        };
        conn_err(format!("SSH handshake failed: {why}"))
    })?;
    // Authentication and the first channel may take longer (agents, slow PAM): 60 s.
    sess.set_timeout(60_000);
    verify_host_key(&sess, s, g.accept_new_host_key || s.accept_new, &name, &entries, &known)?;
    authenticate(&sess, s)?;
    Ok((sess, tcp, tunnel))
}

fn loopback_pair() -> anyhow::Result<(TcpStream, TcpStream)> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0)).context("cannot open a loopback socket for the ProxyJump tunnel")?;
    let a = TcpStream::connect(l.local_addr()?)?;
    let (b, _) = l.accept()?;
    let _ = a.set_nodelay(true);
    let _ = b.set_nodelay(true);
    Ok((a, b))
}

/// Copies bytes between the local end of the tunnel and the hop's direct-tcpip channel until
/// either side closes. Owns the hop's session for as long as the tunnel lives.
fn tunnel_pump(jsess: Session, jtcp: TcpStream, mut ch: Channel, mut local: TcpStream, keepalive_secs: u32, _outer: Option<Tunnel>) {
    jsess.set_keepalive(true, keepalive_secs);
    jsess.set_blocking(false);
    let _ = local.set_nonblocking(true);
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    let mut local_eof = false;
    loop {
        let mut progress = false;
        // local -> channel
        if pending.is_empty() && !local_eof {
            match local.read(&mut buf) {
                Ok(0) => {
                    local_eof = true;
                    let _ = ch.send_eof();
                }
                Ok(n) => pending.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
        if !pending.is_empty() {
            match ch.write(&pending) {
                Ok(n) => {
                    pending.drain(..n);
                    progress = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
        // channel -> local
        match ch.read(&mut buf) {
            Ok(0) if ch.eof() => {
                let _ = local.shutdown(std::net::Shutdown::Write);
                return;
            }
            Ok(0) => {}
            Ok(n) => {
                progress = true;
                let mut off = 0;
                while off < n {
                    match local.write(&buf[off..n]) {
                        Ok(w) => off += w,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(1)),
                        Err(_) => return,
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
        if local_eof && pending.is_empty() && ch.eof() {
            return;
        }
        if !progress {
            let _ = jsess.keepalive_send();
            #[cfg(unix)]
            {
                use std::os::unix::io::AsRawFd;
                let mut fds = [
                    libc::pollfd { fd: jtcp.as_raw_fd(), events: libc::POLLIN, revents: 0 },
                    libc::pollfd {
                        fd: local.as_raw_fd(),
                        events: if pending.is_empty() && !local_eof { libc::POLLIN } else { 0 },
                        revents: 0,
                    },
                ];
                // SAFETY: two valid pollfds on sockets this thread owns.
                unsafe {
                    libc::poll(fds.as_mut_ptr(), 2, if pending.is_empty() { 1000 } else { 5 });
                }
            }
            #[cfg(not(unix))]
            {
                let _ = &jtcp;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// Every known_hosts file ssh would read, user files first: (shown path, text).
fn read_known_hosts(s: &Ssh) -> Vec<(String, String)> {
    s.known_hosts
        .iter()
        .chain(&s.global_known_hosts)
        .filter_map(|p| std::fs::read(p).ok().map(|b| (p.display().to_string(), String::from_utf8_lossy(&b).into_owned())))
        .collect()
}

/// `known`: the files' texts already read for `entries`, for the bare-name lookup.
fn verify_host_key(
    sess: &Session,
    s: &Ssh,
    accept_new: bool,
    name: &str,
    entries: &[crate::known_hosts::Entry],
    known: &[(String, String)],
) -> anyhow::Result<()> {
    use crate::known_hosts::Verdict;
    let (key, _) = sess.host_key().context("the server sent no host key")?;
    let fp = crate::known_hosts::fingerprint(key);
    let kind = key_type(key).context("cannot read the host key type")?.to_string();
    let record_in = s.known_hosts.first().cloned();
    let shown = record_in.as_ref().map_or_else(|| "known_hosts (UserKnownHostsFile none)".to_string(), |p| p.display().to_string());
    let mut verdict = crate::known_hosts::judge(entries, &kind, key);
    if s.host_key_alias.is_none() && s.port != 22 && matches!(verdict, Verdict::Unknown | Verdict::CertificateOnly(_)) {
        // As ssh does ("found matching key w/out port"): a key filed under the bare host
        // name is accepted for another port only if it is this very key; a different one
        // there says nothing about this port.
        let bare = crate::known_hosts::entries_for(known, &s.host);
        if crate::known_hosts::judge(&bare, &kind, key) == Verdict::Known {
            verdict = Verdict::Known;
        }
    }
    match verdict {
        Verdict::Known => Ok(()),
        Verdict::Revoked(at) => Err(Error::HostKeyRevoked { host: s.host.clone(), port: s.port, fingerprint: fp, at }.into()),
        Verdict::Changed { expected, at } => Err(Error::HostKeyChanged {
            host: s.host.clone(),
            port: s.port,
            fingerprint: format!("offered {fp}, expected {}", expected.join(", ")),
            known_hosts: at,
        }
        .into()),
        Verdict::CertificateOnly(at) => Err(Error::HostKeyCertificate { host: s.host.clone(), port: s.port, fingerprint: fp, at }.into()),
        Verdict::Unknown => {
            if !accept_new {
                return Err(Error::HostKeyUnknown { host: s.host.clone(), port: s.port, fingerprint: fp, known_hosts: shown }.into());
            }
            let Some(path) = record_in else {
                return Err(Error::HostKeyUnknown { host: s.host.clone(), port: s.port, fingerprint: fp, known_hosts: shown }.into());
            };
            append_known_host(&path, &crate::known_hosts::line(name, &kind, key, s.hash_known_hosts))?;
            crate::report::diag(format_args!("bst: recorded host key {fp} for {name} in {shown}"));
            Ok(())
        }
    }
}

fn append_known_host(path: &Path, line: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // Keep an existing last line intact if it lacks a newline.
    let needs_nl = std::fs::read(path).ok().is_some_and(|b| !b.is_empty() && !b.ends_with(b"\n"));
    let mut f =
        std::fs::OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("cannot write {}", path.display()))?;
    if needs_nl {
        f.write_all(b"\n")?;
    }
    f.write_all(line.as_bytes())?;
    Ok(())
}

/// The passphrase for an encrypted key: `BST_SSH_PASSPHRASE`, else a hidden prompt when a
/// human is at the terminal, else none (the error then says which key wanted one).
fn passphrase_for(path: &Path) -> Option<String> {
    if let Ok(p) = std::env::var("BST_SSH_PASSPHRASE") {
        return Some(p);
    }
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        return None;
    }
    // A hop's key may be asked for while the target's notice is still pending: not mid-prompt.
    notice_stop();
    crate::report::prompt(format_args!("passphrase for {}: ", path.display()));
    let line = crate::platform::read_hidden_line().ok()?;
    Some(line.trim_end_matches(['\n', '\r']).to_string())
}

fn key_is_encrypted(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| {
        t.contains("ENCRYPTED") || {
            // OpenSSH format: the cipher name follows the magic; "none" means plain.
            let b64: String = t.lines().filter(|l| !l.starts_with("-----")).collect();
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()
                .is_some_and(|raw| raw.starts_with(b"openssh-key-v1\0") && !raw[15..].starts_with(b"\0\0\0\x04none"))
        }
    })
}

fn authenticate(sess: &Session, s: &Ssh) -> anyhow::Result<()> {
    let mut tried = Vec::new();
    let try_key = |path: &Path, tried: &mut Vec<String>| -> bool {
        let pass = if key_is_encrypted(path) { passphrase_for(path) } else { None };
        match sess.userauth_pubkey_file(&s.user, None, path, pass.as_deref()) {
            Ok(()) if sess.authenticated() => true,
            Ok(()) => {
                tried.push(format!("key {} (rejected)", path.display()));
                false
            }
            Err(e) => {
                let hint = if key_is_encrypted(path) && pass.is_none() { "; encrypted: set BST_SSH_PASSPHRASE" } else { "" };
                tried.push(format!("key {} ({}{hint})", path.display(), e.message()));
                false
            }
        }
    };
    // On Windows libssh2 finds the OpenSSH agent's named pipe (or Pageant) by itself.
    if !s.identities_only && s.use_agent && (cfg!(windows) || std::env::var_os("SSH_AUTH_SOCK").is_some()) {
        match sess.userauth_agent(&s.user) {
            Ok(()) if sess.authenticated() => return Ok(()),
            Ok(()) => tried.push("ssh-agent (no key accepted)".into()),
            Err(e) => tried.push(format!("ssh-agent ({})", e.message())),
        }
    }
    for id in &s.identity_files {
        if !id.is_file() {
            tried.push(format!("key {} (does not exist)", id.display()));
            continue;
        }
        if try_key(id, &mut tried) {
            return Ok(());
        }
    }
    // ssh's default names, in ssh's order, when no IdentityFile is given (IdentitiesOnly
    // limits the agent, not these); the key types libssh2 cannot use are left out.
    if s.identity_files.is_empty() {
        let ssh_dir = home_dir().unwrap_or_default().join(".ssh");
        for name in ["id_rsa", "id_ecdsa", "id_ed25519"] {
            let p = ssh_dir.join(name);
            if p.is_file() && try_key(&p, &mut tried) {
                return Ok(());
            }
        }
    }
    if tried.is_empty() {
        tried.push("nothing: no identity file, no ssh-agent, no ~/.ssh/id_* key".into());
    }
    Err(Error::Auth {
        user: s.user.clone(),
        host: s.host.clone(),
        port: s.port,
        tried: tried.join("; "),
        from: format!("the user `{}` comes from {}; if it is the wrong account, {}", s.user, s.user_from, s.user_from.fix()),
    }
    .into())
}
