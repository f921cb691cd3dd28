//! The transport for `host = "local"`: the same scripts, run by this machine's `sh`.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context;

use super::{capture, show_command, Input, Output, Stream, Talk, Transport};
use crate::error::Error;
use crate::interrupt;

pub struct Local {
    verbose: u8,
    sent: u64,
}

impl Local {
    pub fn new(verbose: u8) -> Self {
        Local { verbose, sent: 0 }
    }

    fn spawn(&self, script: &str, stdin: bool) -> anyhow::Result<std::process::Child> {
        show_command(self.verbose, "local", script);
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script).stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdin(if stdin { Stdio::piped() } else { Stdio::null() });
        // Own process group: a Ctrl-C is ours to handle (clean up, then stop the group),
        // not something that kills `tar` under our feet.
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd.spawn().map_err(|e| match e.kind() {
            // Windows has no `sh` of its own; say what is missing rather than "file not found".
            std::io::ErrorKind::NotFound => {
                Error::Usage("the local transport (host = \"local\") needs a POSIX `sh` on PATH, e.g. Git Bash's".into()).into()
            }
            _ => anyhow::Error::new(e).context("cannot start sh"),
        })
    }
}

enum Msg {
    Data(Stream, Vec<u8>),
    Done,
}

fn pump(mut r: impl Read + Send + 'static, which: Stream, tx: mpsc::Sender<Msg>) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(Msg::Data(which, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = tx.send(Msg::Done);
    });
}

fn kill_group(child: &mut std::process::Child) {
    #[cfg(unix)]
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) with a negative pid signals the process group we created.
        unsafe {
            libc::kill(-pid, libc::SIGTERM);
        }
    }
    let _ = child.kill();
}

struct LocalInput<'a, W: Write> {
    w: Counting<'a, W>,
    rx: &'a mpsc::Receiver<Msg>,
    out: &'a mut Output,
    done: &'a mut usize,
}

impl<W: Write> Write for LocalInput<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.w.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.w.flush()
    }
}

impl<W: Write> Input for LocalInput<'_, W> {
    fn read_until(&mut self, done: &dyn Fn(&[u8]) -> bool) -> anyhow::Result<Vec<u8>> {
        self.w.flush()?;
        while !done(&self.out.stdout) && *self.done < 2 {
            interrupt::check()?;
            match self.rx.recv_timeout(Duration::from_millis(200)) {
                Ok(Msg::Data(Stream::Stdout, d)) => super::capture_out(&mut self.out.stdout, &d),
                Ok(Msg::Data(Stream::Stderr, d)) => capture(&mut self.out.stderr, &d),
                Ok(Msg::Done) => *self.done += 1,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        Ok(std::mem::take(&mut self.out.stdout))
    }

    fn as_write(&mut self) -> &mut dyn Write {
        self
    }
}

struct Counting<'a, W: Write> {
    inner: W,
    sent: &'a mut u64,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        *self.sent += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl Transport for Local {
    fn converse(&mut self, script: &str, talk: Talk<'_>) -> anyhow::Result<Output> {
        let mut child = self.spawn(script, true)?;
        let (tx, rx) = mpsc::channel();
        pump(child.stdout.take().expect("piped"), Stream::Stdout, tx.clone());
        pump(child.stderr.take().expect("piped"), Stream::Stderr, tx);
        let stdin = child.stdin.take().expect("piped");
        let mut out = Output::default();
        let mut done = 0;
        let fed = {
            let mut w = LocalInput { w: Counting { inner: stdin, sent: &mut self.sent }, rx: &rx, out: &mut out, done: &mut done };
            let r = talk(&mut w);
            drop(w);
            r
        };
        let interrupted = fed.is_err() && interrupt::seen();
        if interrupted {
            kill_group(&mut child);
        }
        while done < 2 {
            match rx.recv() {
                Ok(Msg::Data(Stream::Stdout, d)) => super::capture_out(&mut out.stdout, &d),
                Ok(Msg::Data(Stream::Stderr, d)) => capture(&mut out.stderr, &d),
                Ok(Msg::Done) => done += 1,
                Err(_) => break,
            }
        }
        let status = child.wait()?;
        out.status = exit_status(status);
        match fed {
            Err(e) if interrupted => Err(e),
            Err(e) => {
                out.feed_error = Some(e);
                Ok(out)
            }
            Ok(()) => Ok(out),
        }
    }

    fn run_streaming(&mut self, script: &str, sink: &mut dyn FnMut(Stream, &[u8])) -> anyhow::Result<i32> {
        let mut child = self.spawn(script, false)?;
        let (tx, rx) = mpsc::channel();
        pump(child.stdout.take().expect("piped"), Stream::Stdout, tx.clone());
        pump(child.stderr.take().expect("piped"), Stream::Stderr, tx);
        let mut done = 0;
        while done < 2 {
            if let Err(e) = interrupt::check() {
                kill_group(&mut child);
                let _ = child.wait();
                return Err(e.into());
            }
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(Msg::Data(s, d)) => sink(s, &d),
                Ok(Msg::Done) => done += 1,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        Ok(exit_status(child.wait()?))
    }

    fn tcp_exchange(
        &mut self,
        host: &str,
        port: u16,
        request: &[u8],
        done: &dyn Fn(&[u8]) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<Vec<u8>> {
        use std::net::{TcpStream, ToSocketAddrs};
        let deadline = std::time::Instant::now() + timeout;
        let addr = (host, port).to_socket_addrs()?.next().with_context(|| format!("{host} resolved to no address"))?;
        let mut s = TcpStream::connect_timeout(&addr, timeout)?;
        s.write_all(request)?;
        let mut reply = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                anyhow::bail!("no complete reply within {}s", timeout.as_secs());
            }
            s.set_read_timeout(Some(left))?;
            match s.read(&mut buf) {
                Ok(0) => return Ok(reply),
                Ok(n) => {
                    reply.extend_from_slice(&buf[..n]);
                    if done(&reply) || reply.len() >= super::REPLY_LIMIT {
                        return Ok(reply);
                    }
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    anyhow::bail!("no complete reply within {}s", timeout.as_secs())
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn bytes_sent(&self) -> u64 {
        self.sent
    }
}

fn exit_status(s: std::process::ExitStatus) -> i32 {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = s.signal() {
            return 128 + sig;
        }
    }
    s.code().unwrap_or(1)
}
