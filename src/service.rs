//! What systemd says about a unit (`parse_status`; the scripts are `remote::systemd`'s) and
//! the health probes. Probes go through [`Transport::tcp_exchange`], so on
//! SSH they are direct-tcpip channels: nothing on the server needs curl or redis-cli, and no
//! port has to be exposed.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::release;
use crate::settings::Health;
use crate::transport::Transport;

const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct UnitState {
    /// Not serialised: reports put the service name beside the state already.
    #[serde(skip)]
    pub name: String,
    pub load_state: String,
    pub active_state: String,
    pub sub_state: String,
    pub main_pid: u32,
    /// systemd's count of automatic restarts (`Restart=`), where systemd reports it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n_restarts: Option<u32>,
    pub since: Option<String>,
    /// The release the main process runs in, from its working directory.
    pub release: Option<String>,
    pub cwd: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub journal: Vec<String>,
}

impl UnitState {
    pub fn active(&self) -> bool {
        self.active_state == "active"
    }
}

pub fn parse_status(text: &str) -> Vec<UnitState> {
    let mut out: Vec<UnitState> = Vec::new();
    // Journal lines follow the `E` line of the unit they belong to.
    let mut errors: Vec<(String, String, Vec<String>)> = Vec::new();
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("S ") {
            out.push(UnitState { name: name.to_string(), ..UnitState::default() });
        } else if let Some(rest) = line.strip_prefix("E ") {
            let (name, msg) = rest.split_once(' ').unwrap_or((rest, ""));
            errors.push((name.to_string(), msg.trim().to_string(), Vec::new()));
        } else if let Some(j) = line.strip_prefix("J ") {
            if let Some((_, _, journal)) = errors.last_mut() {
                journal.push(j.to_string());
            }
        } else if let Some(u) = out.last_mut() {
            if let Some(cwd) = line.strip_prefix("CWD ") {
                if !cwd.is_empty() {
                    u.cwd = Some(cwd.to_string());
                    u.release = release_of(cwd);
                }
            } else if let Some((k, v)) = line.split_once('=') {
                match k {
                    "LoadState" => u.load_state = v.to_string(),
                    "ActiveState" => u.active_state = v.to_string(),
                    "SubState" => u.sub_state = v.to_string(),
                    "MainPID" => u.main_pid = v.parse().unwrap_or(0),
                    "NRestarts" => u.n_restarts = v.parse().ok(),
                    "ActiveEnterTimestamp" if !v.is_empty() => u.since = Some(v.to_string()),
                    _ => {}
                }
            } else if !line.trim().is_empty() && u.error.is_none() {
                u.error = Some(line.trim().to_string());
            }
        }
    }
    for (name, msg, journal) in errors {
        if let Some(u) = out.iter_mut().find(|u| u.name == name) {
            u.error = Some(msg);
            u.journal = journal;
        }
    }
    out
}

/// `/srv/app/releases/20260220T051228Z/apps/api` -> `20260220T051228Z`.
pub fn release_of(cwd: &str) -> Option<String> {
    let idx = cwd.rfind("/releases/")?;
    let id = cwd[idx + "/releases/".len()..].split('/').next()?;
    release::is_release_id(id).then(|| id.to_string())
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Probe {
    pub healthy: bool,
    pub detail: String,
}

fn http_request(host: &str, port: u16, path: &str) -> Vec<u8> {
    let host_header = format!("{}:{port}", shown(host));
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: bst/{}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    )
    .into_bytes()
}

/// Status code and (de-chunked) body of an HTTP/1.x response. Parsed on bytes: chunk sizes
/// and `Content-Length` count bytes, and a chunk boundary may fall inside a UTF-8 character
/// (slicing the decoded text there panicked, mid-deploy, after the switch). Never panics on
/// what a server sends; the body is decoded only at the end.
pub fn parse_http(reply: &[u8]) -> Option<(u16, String)> {
    let split = reply.windows(4).position(|w| w == b"\r\n\r\n");
    let (head, body) = match split {
        Some(i) => (&reply[..i], &reply[i + 4..]),
        None => (reply, &[][..]),
    };
    let head = String::from_utf8_lossy(head);
    let status = head.lines().next()?.split_whitespace().nth(1)?.parse().ok()?;
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_ascii_lowercase())
        })
    };
    let body = if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        dechunk(body)
    } else if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body[..len.min(body.len())].to_vec()
    } else {
        body.to_vec()
    };
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(nl) = body.windows(2).position(|w| w == b"\r\n") {
        let size = String::from_utf8_lossy(&body[..nl]);
        let Ok(n) = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16) else { break };
        let rest = &body[nl + 2..];
        if n == 0 || rest.len() < n {
            out.extend_from_slice(&rest[..n.min(rest.len())]);
            break;
        }
        out.extend_from_slice(&rest[..n]);
        body = rest[n..].strip_prefix(b"\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// `host` as it goes in a URL or `host:port`: an IPv6 address in brackets.
pub fn shown(host: &str) -> std::borrow::Cow<'_, str> {
    if host.contains(':') {
        format!("[{host}]").into()
    } else {
        host.into()
    }
}

/// One probe, no retries.
pub fn probe(t: &mut dyn Transport, health: &Health) -> Probe {
    probe_within(t, health, PROBE_TIMEOUT)
}

/// One probe that gives up after `limit`: a gate's last probe must not outlast the gate (a
/// hanging /health once kept the client waiting past the server's watchdog deadline).
pub fn probe_within(t: &mut dyn Transport, health: &Health, limit: Duration) -> Probe {
    match health {
        Health::Http { host: raw_host, port, path, status, body_contains } => {
            let host = &shown(raw_host);
            let req = http_request(raw_host, *port, path);
            match t.tcp_exchange(raw_host, *port, &req, &|_| false, limit) {
                Err(e) => Probe { healthy: false, detail: format!("GET http://{host}:{port}{path}: {e:#}") },
                Ok(reply) => match parse_http(&reply) {
                    None => Probe { healthy: false, detail: format!("GET http://{host}:{port}{path}: not an HTTP response") },
                    Some((code, _)) if code != *status => {
                        Probe { healthy: false, detail: format!("GET http://{host}:{port}{path}: status {code}, expected {status}") }
                    }
                    Some((_, body)) => match body_contains {
                        Some(needle) if !body.contains(needle.as_str()) => {
                            Probe { healthy: false, detail: format!("GET http://{host}:{port}{path}: body lacks {needle:?}") }
                        }
                        _ => Probe { healthy: true, detail: format!("GET http://{host}:{port}{path}: {status}") },
                    },
                },
            }
        }
        Health::Redis { host: raw_host, port } => {
            let host = &shown(raw_host);
            let done = |r: &[u8]| r.ends_with(b"\r\n");
            match t.tcp_exchange(raw_host, *port, b"*1\r\n$4\r\nPING\r\n", &done, limit) {
                Err(e) => Probe { healthy: false, detail: format!("redis {host}:{port}: {e:#}") },
                Ok(r) if r.starts_with(b"+PONG") => Probe { healthy: true, detail: format!("redis {host}:{port}: PONG") },
                // A password-protected Redis that answers is alive; bst holds no Redis secrets.
                Ok(r) if r.starts_with(b"-NOAUTH") => {
                    Probe { healthy: true, detail: format!("redis {host}:{port}: alive (auth required)") }
                }
                Ok(r) => Probe {
                    healthy: false,
                    detail: format!("redis {host}:{port}: unexpected reply {:?}", String::from_utf8_lossy(&r).trim_end()),
                },
            }
        }
    }
}

/// Probes until healthy or `timeout` passes; returns the last result.
pub fn wait_healthy(t: &mut dyn Transport, health: &Health, timeout: Duration) -> anyhow::Result<Probe> {
    let deadline = Instant::now() + timeout;
    loop {
        crate::interrupt::check()?;
        let left = deadline.saturating_duration_since(Instant::now());
        let p = probe_within(t, health, left.clamp(Duration::from_millis(500), PROBE_TIMEOUT));
        // A Ctrl-C during the probe itself (the transport consumed it) must not come out as
        // "unhealthy".
        if !p.healthy && crate::interrupt::seen() {
            return Err(crate::error::Error::Interrupted.into());
        }
        if p.healthy || Instant::now() >= deadline {
            return Ok(p);
        }
        std::thread::sleep(Duration::from_millis(500).min(deadline.saturating_duration_since(Instant::now())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_systemctl_show_and_cwd() {
        let text = "S app\nLoadState=loaded\nActiveState=active\nSubState=running\nMainPID=4242\nActiveEnterTimestamp=Sun 2026-11-22 10:00:00 UTC\nResult=success\nCWD /srv/app/releases/20260220T051228Z/apps/api\nS redis\nLoadState=loaded\nActiveState=inactive\nSubState=dead\nMainPID=0\nActiveEnterTimestamp=\n";
        let s = parse_status(text);
        assert_eq!(s.len(), 2);
        assert!(s[0].active() && s[0].main_pid == 4242);
        assert_eq!(s[0].release.as_deref(), Some("20260220T051228Z"));
        assert!(!s[1].active());
        assert_eq!(s[1].since, None);
    }

    #[test]
    fn ipv6_hosts_are_shown_in_brackets() {
        assert_eq!(shown("::1"), "[::1]");
        assert_eq!(shown("127.0.0.1"), "127.0.0.1");
        let req = String::from_utf8(http_request("::1", 8080, "/health")).unwrap();
        assert!(req.contains("\r\nHost: [::1]:8080\r\n"), "{req}");
    }

    /// Two failing units: each shows its own journal lines, not both units' lines.
    #[test]
    fn journal_lines_belong_to_the_unit_before_them() {
        let text = "E app boom\nJ app-line\nE worker bang\nJ worker-line-1\nJ worker-line-2\nS app\nActiveState=failed\nS worker\nActiveState=failed\n";
        let s = parse_status(text);
        assert_eq!(s[0].journal, vec!["app-line"]);
        assert_eq!(s[1].journal, vec!["worker-line-1", "worker-line-2"]);
        assert_eq!(s[1].error.as_deref(), Some("bang"));
    }

    #[test]
    fn parses_http_replies() {
        assert_eq!(
            parse_http(b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n{\"status\":\"ok\"}"),
            Some((200, "{\"status\":\"ok\"}".into()))
        );
        let chunked = b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"st\r\n5\r\natus\"\r\n0\r\n\r\n";
        assert_eq!(parse_http(chunked), Some((503, "{\"status\"".into())));
        assert_eq!(parse_http(b"garbage"), None);
        // A chunk boundary inside "é" (0xc3 0xa9): reassembled from bytes.
        let split = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nca\xc3\r\n3\r\n\xa9 !\r\n0\r\n\r\n";
        assert_eq!(parse_http(split), Some((200, "ca\u{e9} !".into())));
        // Content-Length is honoured: what follows is not body.
        assert_eq!(parse_http(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokTRAILING"), Some((200, "ok".into())));
    }

    proptest::proptest! {
        /// Whatever a server (or a broken proxy) sends, the probe answers and never panics.
        #[test]
        fn http_parsing_never_panics(head in proptest::collection::vec(proptest::num::u8::ANY, 0..64), body in proptest::collection::vec(proptest::num::u8::ANY, 0..256), chunked: bool) {
            let mut reply = b"HTTP/1.1 200 OK\r\n".to_vec();
            if chunked {
                reply.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
            }
            reply.extend_from_slice(&head);
            reply.extend_from_slice(b"\r\n\r\n");
            reply.extend_from_slice(&body);
            let _ = parse_http(&reply);
            let _ = parse_http(&body);
        }
    }

    #[test]
    fn release_of_working_directory() {
        assert_eq!(release_of("/home/bonk/x/releases/20260220T051228Z"), Some("20260220T051228Z".into()));
        assert_eq!(release_of("/home/bonk/x"), None);
        assert_eq!(release_of("/x/releases/junk/y"), None);
    }
}
