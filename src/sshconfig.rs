//! `~/.ssh/config`, the way OpenSSH reads it: the first value obtained for a keyword wins,
//! `IdentityFile` accumulates, `Host` patterns take `*`, `?` and `!negation`, `Include`
//! pulls in more files. `Match` blocks are not evaluated (skipped, like a non-matching
//! `Host`). Only the keywords bst uses are kept; the rest are ignored, as ssh does for
//! keywords it does not know.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostConfig {
    pub hostname: Option<String>,
    pub user: Option<String>,
    pub port: Option<u16>,
    pub identity_files: Vec<String>,
    pub identities_only: Option<bool>,
    pub user_known_hosts_file: Option<String>,
    /// `yes` | `no` | `accept-new` | `ask` | `off`
    pub strict_host_key_checking: Option<String>,
    pub proxy_jump: Option<String>,
    pub hash_known_hosts: Option<bool>,
    pub connect_timeout: Option<u64>,
    pub server_alive_interval: Option<u32>,
}

/// Where the user's ssh config lives: `BST_SSH_CONFIG` (`none` disables), else `~/.ssh/config`.
pub fn default_path() -> Option<PathBuf> {
    match std::env::var_os("BST_SSH_CONFIG") {
        Some(v) if v == "none" => None,
        Some(v) => Some(PathBuf::from(v)),
        None => crate::settings::home_dir().map(|h| h.join(".ssh").join("config")),
    }
}

pub fn lookup(host: &str) -> HostConfig {
    let mut cfg = HostConfig::default();
    if let Some(path) = default_path() {
        apply_file(&path, host, &mut cfg, 0);
    }
    cfg
}

fn apply_file(path: &Path, host: &str, cfg: &mut HostConfig, depth: u32) {
    if depth > 8 {
        return;
    }
    let Ok(text) = std::fs::read_to_string(path) else { return };
    apply(&text, host, cfg, depth, path.parent());
}

/// A `*`/`?` glob, as ssh's match_pattern.
fn glob(pat: &str, s: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pat.chars().collect(), s.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi].eq_ignore_ascii_case(&t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(sp) = star {
            pi = sp + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// `Host a b !c`: matches when some positive pattern matches and no negated one does.
pub fn host_matches(patterns: &[String], host: &str) -> bool {
    let mut hit = false;
    for p in patterns {
        if let Some(neg) = p.strip_prefix('!') {
            if glob(neg, host) {
                return false;
            }
        } else if glob(p, host) {
            hit = true;
        }
    }
    hit
}

/// Splits a line into keyword and arguments: `Key value`, `Key=value`, quoted arguments.
fn split_line(line: &str) -> Option<(String, Vec<String>)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (key, rest) = match line.find(|c: char| c.is_whitespace() || c == '=') {
        Some(i) => (&line[..i], line[i..].trim_start().trim_start_matches('=').trim_start()),
        None => (line, ""),
    };
    let mut args = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in rest.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any || !cur.is_empty() {
                    args.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            '#' if !quoted && cur.is_empty() && !any => break,
            c => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        args.push(cur);
    }
    Some((key.to_ascii_lowercase(), args))
}

fn yes(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "yes" | "true" => Some(true),
        "no" | "false" => Some(false),
        _ => None,
    }
}

pub fn apply(text: &str, host: &str, cfg: &mut HostConfig, depth: u32, dir: Option<&Path>) {
    // Lines before the first Host/Match apply to every host.
    let mut active = true;
    for line in text.lines() {
        let Some((key, args)) = split_line(line) else { continue };
        match key.as_str() {
            "host" => {
                active = host_matches(&args, host);
                continue;
            }
            "match" => {
                // `Match all` is the one form that is certain; others are not evaluated.
                active = args.len() == 1 && args[0].eq_ignore_ascii_case("all");
                continue;
            }
            _ => {}
        }
        if !active || args.is_empty() {
            continue;
        }
        let first = args[0].clone();
        match key.as_str() {
            "include" => {
                for a in &args {
                    for f in expand_include(a, dir) {
                        apply_file(&f, host, cfg, depth + 1);
                    }
                }
            }
            "hostname" => set(&mut cfg.hostname, first),
            "user" => set(&mut cfg.user, first),
            "port" if cfg.port.is_none() => cfg.port = first.parse().ok(),
            "identityfile" if !first.eq_ignore_ascii_case("none") => cfg.identity_files.push(first),
            "identitiesonly" if cfg.identities_only.is_none() => cfg.identities_only = yes(&first),
            "userknownhostsfile" => set(&mut cfg.user_known_hosts_file, first),
            "stricthostkeychecking" => set(&mut cfg.strict_host_key_checking, first.to_ascii_lowercase()),
            "proxyjump" => set(&mut cfg.proxy_jump, first),
            "hashknownhosts" if cfg.hash_known_hosts.is_none() => cfg.hash_known_hosts = yes(&first),
            "connecttimeout" if cfg.connect_timeout.is_none() => cfg.connect_timeout = first.parse().ok(),
            "serveraliveinterval" if cfg.server_alive_interval.is_none() => cfg.server_alive_interval = first.parse().ok(),
            _ => {}
        }
    }
}

fn set(slot: &mut Option<String>, v: String) {
    if slot.is_none() {
        *slot = Some(v);
    }
}

/// `Include` paths: `~` expands, relative ones are under `~/.ssh`, `*` in the file name globs.
fn expand_include(arg: &str, dir: Option<&Path>) -> Vec<PathBuf> {
    let p = crate::settings::expand_home(arg);
    let p = if p.is_absolute() { p } else { dir.map_or(p.clone(), |d| d.join(&p)) };
    let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if !name.contains('*') && !name.contains('?') {
        return vec![p];
    }
    let parent = p.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut out: Vec<PathBuf> = std::fs::read_dir(&parent)
        .map(|rd| rd.flatten().filter(|e| glob(&name, &e.file_name().to_string_lossy())).map(|e| e.path()).collect())
        .unwrap_or_default();
    out.sort();
    out
}

/// `%h`, `%p`, `%r`, `%u`, `%d`, `%%` and `~` in IdentityFile / UserKnownHostsFile.
pub fn expand_tokens(s: &str, hostname: &str, port: u16, remote_user: &str) -> PathBuf {
    let home = crate::settings::home_dir().unwrap_or_default();
    let mut out = String::new();
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('h') => out.push_str(hostname),
            Some('p') => out.push_str(&port.to_string()),
            Some('r') => out.push_str(remote_user),
            Some('u') => out.push_str(&crate::settings::local_user().unwrap_or_default()),
            Some('d') => out.push_str(&home.to_string_lossy()),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    crate::settings::expand_home(&out)
}

/// `[user@]host[:port]` of a ProxyJump hop.
pub fn parse_jump(s: &str) -> (Option<String>, String, Option<u16>) {
    let (user, rest) = match s.rsplit_once('@') {
        Some((u, r)) => (Some(u.to_string()), r),
        None => (None, s),
    };
    if let Some(inner) = rest.strip_prefix('[') {
        if let Some((h, tail)) = inner.split_once(']') {
            return (user, h.to_string(), tail.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    match rest.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (user, h.to_string(), p.parse().ok()),
        _ => (user, rest.to_string(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = r#"
# global
ServerAliveInterval 30

Host home-server
    HostName 127.0.0.1
    User bonk
    Port 2222
    IdentityFile ~/.ssh/home_ed25519
    IdentitiesOnly yes

Host *.internal !secret.internal
    User ops
    StrictHostKeyChecking accept-new

Host "quoted alias" jump
    HostName=10.9.8.7
    ProxyJump admin@bastion:2200

Host *
    User fallback
    IdentityFile ~/.ssh/id_%h
    Port 22
    HashKnownHosts yes
"#;

    fn at(host: &str) -> HostConfig {
        let mut c = HostConfig::default();
        apply(CFG, host, &mut c, 0, None);
        c
    }

    #[test]
    fn first_value_wins_and_identity_files_accumulate() {
        let c = at("home-server");
        assert_eq!(c.hostname.as_deref(), Some("127.0.0.1"));
        assert_eq!(c.user.as_deref(), Some("bonk"));
        assert_eq!(c.port, Some(2222));
        assert_eq!(c.identity_files, vec!["~/.ssh/home_ed25519", "~/.ssh/id_%h"]);
        assert_eq!(c.identities_only, Some(true));
        assert_eq!(c.hash_known_hosts, Some(true));
    }

    #[test]
    fn patterns_negation_quotes_and_equals() {
        assert_eq!(at("db.internal").user.as_deref(), Some("ops"));
        assert_eq!(at("db.internal").strict_host_key_checking.as_deref(), Some("accept-new"));
        assert_eq!(at("secret.internal").user.as_deref(), Some("fallback"));
        assert_eq!(at("quoted alias").hostname.as_deref(), Some("10.9.8.7"));
        assert_eq!(at("jump").proxy_jump.as_deref(), Some("admin@bastion:2200"));
        assert_eq!(at("other").hostname, None);
        assert!(glob("w?b-*", "web-01") && !glob("w?b-*", "wb-01"));
    }

    #[test]
    fn jump_specs() {
        assert_eq!(parse_jump("admin@bastion:2200"), (Some("admin".into()), "bastion".into(), Some(2200)));
        assert_eq!(parse_jump("bastion"), (None, "bastion".into(), None));
        assert_eq!(parse_jump("[::1]:22"), (None, "::1".into(), Some(22)));
    }

    #[test]
    fn tokens_expand() {
        assert_eq!(expand_tokens("/k/%h-%p-%r%%", "h", 22, "u"), PathBuf::from("/k/h-22-u%"));
    }
}
