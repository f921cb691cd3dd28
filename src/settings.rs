//! Resolution of CLI flags + `targets.toml` + environment into plain structs, done once.
//! Commands never look at clap, the environment or raw TOML again.
//!
//! Size: ~630 lines of code, because every setting is resolved here, once, with the error that
//! names its key and line; a second file would split one table of rules. The ssh part
//! (`resolve_ssh`, the ProxyJump chain) is the candidate to move out next.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{Config, RawTarget};
use crate::dotenv::Dialect;
use crate::error::Error;
use crate::platform::{self, expand_home, home_dir, local_user};
pub use crate::transport::{Hop, Host, Ssh, UserFrom};

pub use crate::report::Globals;

/// One SSH endpoint: explicit values (targets.toml, or a ProxyJump spec) win over
/// the ssh config files, which win over ssh's defaults.
pub fn resolve_ssh(
    alias: &str,
    user: Option<String>,
    port: Option<u16>,
    identity_file: Option<&str>,
    known_hosts: Option<&str>,
) -> Result<Ssh, String> {
    let (host, cfg) = crate::sshconfig::lookup(alias)?;
    if host.is_empty() || host.starts_with('-') || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("invalid host `{host}`"));
    }
    let mut origins = Vec::new();
    let mut note = |k: &str, v: String, at: &str| origins.push((k.to_string(), v, at.to_string()));
    note("hostname", host.clone(), &cfg.hostname.as_ref().map_or_else(|| "the target's host".to_string(), |h| h.at.clone()));
    let port = match (port, &cfg.port) {
        (Some(p), _) => {
            note("port", p.to_string(), "targets.toml");
            p
        }
        (None, Some(p)) => {
            note("port", p.value.to_string(), &p.at);
            p.value
        }
        (None, None) => {
            note("port", "22".into(), "default");
            22
        }
    };
    let (user, user_from) = match (user, &cfg.user) {
        (Some(u), _) => {
            note("user", u.clone(), "targets.toml");
            (u, UserFrom::Config("targets.toml".into()))
        }
        (None, Some(u)) => {
            note("user", u.value.clone(), &u.at);
            (u.value.clone(), UserFrom::SshConfig(u.at.clone()))
        }
        (None, None) => match local_user() {
            Some(u) => {
                note("user", u.clone(), "default (local user)");
                (u, UserFrom::Local)
            }
            None => return Err("no `user` and $USER is not set".into()),
        },
    };
    if user.is_empty() || user.starts_with('-') || user.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("invalid user `{user}`"));
    }
    let tokens = |f: &str| crate::sshconfig::expand_tokens(f, &host, port, &user, alias);
    let (identity_files, identities_only) = match identity_file {
        Some(f) => {
            note("identityfile", expand_home(f).display().to_string(), "targets.toml");
            (vec![expand_home(f)], true)
        }
        None => {
            for f in &cfg.identity_files {
                note("identityfile", tokens(&f.value).display().to_string(), &f.at);
            }
            if cfg.identity_files.is_empty() {
                note("identityfile", "~/.ssh/id_rsa ~/.ssh/id_ecdsa ~/.ssh/id_ed25519".into(), "default");
            }
            (cfg.identity_files.iter().map(|f| tokens(&f.value)).collect(), cfg.identities_only.as_ref().is_some_and(|s| s.value))
        }
    };
    let home_ssh = home_dir().unwrap_or_default().join(".ssh");
    let known_hosts: Vec<PathBuf> = match (known_hosts, &cfg.user_known_hosts_files) {
        (Some(k), _) => {
            note("userknownhostsfile", expand_home(k).display().to_string(), "targets.toml");
            vec![expand_home(k)]
        }
        (None, Some(s)) => {
            let v: Vec<PathBuf> = s.value.iter().filter(|f| !f.eq_ignore_ascii_case("none")).map(|f| tokens(f)).collect();
            note("userknownhostsfile", join_paths(&v), &s.at);
            v
        }
        (None, None) => {
            let v = vec![home_ssh.join("known_hosts"), home_ssh.join("known_hosts2")];
            note("userknownhostsfile", join_paths(&v), "default");
            v
        }
    };
    let global_known_hosts: Vec<PathBuf> = match &cfg.global_known_hosts_files {
        Some(s) => {
            // Unlike the user files, ssh expands no tokens here.
            let v: Vec<PathBuf> = s.value.iter().filter(|f| !f.eq_ignore_ascii_case("none")).map(|f| expand_home(f)).collect();
            note("globalknownhostsfile", join_paths(&v), &s.at);
            v
        }
        None => {
            let dir = crate::sshconfig::system_dir();
            let v = vec![dir.join("ssh_known_hosts"), dir.join("ssh_known_hosts2")];
            note("globalknownhostsfile", join_paths(&v), "default");
            v
        }
    };
    let strict = cfg.strict_host_key_checking.as_ref().map_or("ask", |s| s.value.as_str()).to_string();
    note("stricthostkeychecking", strict.clone(), &from(&cfg.strict_host_key_checking));
    let proxy_jump = cfg.proxy_jump.as_ref().filter(|j| !j.value.eq_ignore_ascii_case("none")).map(|j| {
        note("proxyjump", j.value.clone(), &j.at);
        j.value.clone()
    });
    let proxy_command = cfg.proxy_command.as_ref().filter(|c| !c.value.eq_ignore_ascii_case("none")).map(|c| {
        let cmd = crate::sshconfig::expand_tokens_str(&c.value, &host, port, &user, alias);
        note("proxycommand", cmd.clone(), &c.at);
        cmd
    });
    // Lowercased, as ssh does (known_hosts names are compared that way).
    let host_key_alias = cfg.host_key_alias.as_ref().map(|a| {
        note("hostkeyalias", a.value.to_lowercase(), &a.at);
        a.value.to_lowercase()
    });
    let hash_known_hosts = cfg.hash_known_hosts.as_ref().is_some_and(|h| h.value);
    note("hashknownhosts", if hash_known_hosts { "yes" } else { "no" }.into(), &from(&cfg.hash_known_hosts));
    let connect_timeout = cfg.connect_timeout.as_ref().map(|c| c.value);
    note("connecttimeout", connect_timeout.map_or_else(|| "10 (bst default)".to_string(), |c| c.to_string()), &from(&cfg.connect_timeout));
    let use_agent = !cfg.identity_agent.as_ref().is_some_and(|a| a.value.eq_ignore_ascii_case("none"));
    let mut ignored = cfg.ignored.clone();
    if let Some(a) = cfg.identity_agent.as_ref().filter(|a| !matches!(a.value.to_ascii_lowercase().as_str(), "none" | "ssh_auth_sock")) {
        ignored.push((format!("IdentityAgent {}", a.value), a.at.clone()));
    }
    Ok(Ssh {
        alias: alias.to_string(),
        host,
        port,
        user,
        identity_files,
        identities_only,
        use_agent,
        known_hosts,
        global_known_hosts,
        host_key_alias,
        accept_new: matches!(strict.as_str(), "accept-new" | "no" | "off" | "false"),
        hash_known_hosts,
        proxy_jump,
        proxy_command,
        connect_timeout,
        keepalive_secs: cfg.server_alive_interval.as_ref().map(|s| s.value).filter(|s| *s > 0).unwrap_or(15),
        address_family: cfg.address_family.as_ref().map(|a| a.value.clone()).filter(|a| a != "any"),
        origins,
        user_from,
        ignored,
        jump: Vec::new(),
    })
}

/// Resolves the ProxyJump hops of `s` (opened at `depth`) as `ssh -J a,b` reads them: each
/// hop through its own ssh config, the first one with its own ProxyJump or ProxyCommand,
/// the later ones reached through the hop before. A hop that does not resolve keeps its
/// reason: it is the connection through it that fails, with exit 5, as before. Beyond
/// [`crate::transport::MAX_DEPTH`] nothing is resolved: the transport refuses that deep a
/// chain (a loop in the ssh config) before it looks.
fn resolve_jumps(s: &mut Ssh, depth: u32) {
    let Some(spec) = s.proxy_jump.clone() else { return };
    if depth >= crate::transport::MAX_DEPTH {
        return;
    }
    s.jump = crate::sshconfig::jump_hops(&spec)
        .into_iter()
        .enumerate()
        .map(|(i, hop)| {
            let (user, alias, port) = crate::sshconfig::parse_jump(&hop);
            let from_spec = user.is_some();
            let ssh = resolve_ssh(&alias, user, port, None, None).map(|mut h| {
                if from_spec {
                    h.user_from = UserFrom::Jump(hop.to_string());
                }
                if i > 0 {
                    // As `ssh -J a,b` does: b is reached through a, whatever b's own config says.
                    h.proxy_jump = None;
                    h.proxy_command = None;
                } else {
                    resolve_jumps(&mut h, depth + 1);
                }
                h
            });
            Hop { spec: hop, ssh }
        })
        .collect();
}

/// Where an ssh config value came from, for `config show`.
fn from<T>(s: &Option<crate::sshconfig::Set<T>>) -> String {
    s.as_ref().map_or_else(|| "default".to_string(), |s| s.at.clone())
}

fn join_paths(v: &[PathBuf]) -> String {
    if v.is_empty() {
        return "none".into();
    }
    v.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" ")
}

#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub host: Host,
    /// Absolute, normalised POSIX path on the target host.
    pub base: String,
    /// Local workspace root.
    pub source: PathBuf,
    pub keep_releases: usize,
    pub shared_files: Vec<String>,
    pub shared_dirs: Vec<String>,
    pub exclude: Vec<String>,
    /// Patterns that ship although they look like secrets.
    pub include: Vec<String>,
    pub source_is_not_git: bool,
    /// Where gate evidence goes unless `--reports` says otherwise: next to targets.toml, not
    /// wherever the command happens to run.
    pub reports: PathBuf,
    /// bst's own byproducts on this machine (every local target's base, the reports folder):
    /// never shipped when they lie inside `source`.
    pub byproducts: Vec<PathBuf>,
    pub install: Option<String>,
    pub build: Option<String>,
    /// Declared services, sorted by name.
    pub services: Vec<Service>,
    /// Names of services restarted after each deploy.
    pub restart: Vec<String>,
    pub health_timeout: Duration,
    /// The watchdog's deadline is `health_timeout` plus this, from just before the switch.
    pub confirm_margin: Duration,
    /// A started unit must stay up this long (see [`crate::config`]'s `settle`).
    pub settle: Duration,
    pub forbidden_paths: Vec<String>,
    /// Relative to `<base>/shared`.
    pub env_file: String,
    pub required_env: Vec<String>,
    pub expect_env: Vec<(String, String)>,
    pub env_dialect: Dialect,
    /// At least 1: the backup `env set` just made is never pruned.
    pub env_backups_keep: usize,
    /// A first deploy may start from a sibling's pristine copy ([`siblings`]).
    pub seed_from_siblings: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    System,
    User,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: String,
    pub unit: String,
    pub scope: Scope,
    pub sudo: bool,
    pub health: Option<Health>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Health {
    Http { host: String, port: u16, path: String, status: u16, body_contains: Option<String> },
    Redis { host: String, port: u16 },
}

impl Target {
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    pub fn host_label(&self) -> String {
        match &self.host {
            Host::Local => "local".into(),
            Host::Ssh(s) => format!("{}@{}:{}", s.user, s.host, s.port),
        }
    }
}

/// Canonical where it exists (so it compares with the canonical `source`), else absolute;
/// never in Windows' verbatim `\\?\` form (see [`platform::canonical`]).
fn absolute_dir(p: &Path) -> PathBuf {
    let p = if p.as_os_str().is_empty() { Path::new(".") } else { p };
    platform::canonical(p).or_else(|_| platform::absolute(p)).unwrap_or_else(|_| p.to_path_buf())
}

pub fn resolve_target(config: &Config, name: &str) -> anyhow::Result<Target> {
    let raw: &RawTarget = config.targets.get(name).ok_or_else(|| Error::UnknownTarget {
        name: name.to_string(),
        config: config.path.display().to_string(),
        known: config.targets.keys().cloned().collect(),
    })?;
    let bad = |key: &str, msg: String| config.error_at(name, key, msg);
    // Every problem of the target, not only the first: each is reported with its position,
    // and the checks after it run on a stand-in value.
    let mut errs: Vec<Error> = Vec::new();

    let host = match raw.host.clone() {
        None => {
            errs.push(bad("host", format!("target `{name}` has no `host`")));
            None
        }
        Some(h) if h == "local" => Some(Host::Local),
        Some(host_s) => {
            let key = if raw.user.is_none() && local_user().is_none() { "user" } else { "host" };
            // The target's own host, with its ProxyJump chain: the transport reads no config.
            let resolved = resolve_ssh(&host_s, raw.user.clone(), raw.port, raw.identity_file.as_deref(), raw.known_hosts.as_deref());
            match resolved.map(|mut s| {
                resolve_jumps(&mut s, 0);
                s
            }) {
                Err(why) => {
                    errs.push(bad(key, format!("target `{name}`: {why}")));
                    None
                }
                Ok(mut ssh) => {
                    if matches!(ssh.user_from, UserFrom::Config(_)) {
                        let path = config.path.display();
                        ssh.user_from = UserFrom::Config(
                            config.key_at(name, "user").map_or_else(|| path.to_string(), |(line, _)| format!("{path}:{line}")),
                        );
                    }
                    Some(Host::Ssh(Box::new(ssh)))
                }
            }
        }
    };

    let base = match raw.base.clone() {
        None => {
            errs.push(bad("base", format!("target `{name}` has no `base`")));
            None
        }
        Some(base_raw) => {
            let base = match &host {
                Some(Host::Local) if !base_raw.starts_with('/') && base_raw != "~" && !base_raw.is_empty() => {
                    posix(&config.dir().join(&base_raw))
                }
                _ => base_raw.clone(),
            };
            normalise_base(&base).map_err(|why| errs.push(bad("base", format!("invalid base `{base_raw}`: {why}")))).ok()
        }
    };

    let source = config.dir().join(raw.source.as_deref().unwrap_or("."));
    // Shown in `deploying …`, `config show` and `--json`: not `\\?\Z:\…` on Windows.
    let source = platform::canonical(&source).unwrap_or(source);
    let config_dir = absolute_dir(config.dir());
    let reports = config_dir.join("reports");
    let mut byproducts = vec![reports.clone()];
    for other in config.targets.values() {
        if let (Some("local"), Some(b)) = (other.host.as_deref(), other.base.as_deref()) {
            byproducts.push(config_dir.join(b));
        }
    }
    let keep_releases = raw.keep_releases.unwrap_or(5);
    if keep_releases == 0 {
        errs.push(bad("keep_releases", "keep_releases must be at least 1".into()));
    }
    let shared_files = raw.shared_files.clone().unwrap_or_default();
    let shared_dirs = raw.shared_dirs.clone().unwrap_or_default();
    for (key, list) in [("shared_files", &shared_files), ("shared_dirs", &shared_dirs)] {
        for p in list {
            if let Err(why) = check_relative(p) {
                errs.push(bad(key, format!("invalid {key} entry `{p}`: {why}")));
            }
        }
    }
    let mut services = Vec::new();
    for (sname, raw_svc) in raw.services.clone().unwrap_or_default() {
        match resolve_service(&sname, &raw_svc) {
            Ok(s) => services.push(s),
            Err(why) => errs.push(bad("unit", format!("service `{sname}`: {why}"))),
        }
    }
    let restart = raw.restart.clone().unwrap_or_default();
    for r in &restart {
        if !services.iter().any(|s| &s.name == r) && !raw.services.as_ref().is_some_and(|all| all.contains_key(r)) {
            errs.push(bad("restart", format!("`restart` names `{r}`, which is not a service of target `{name}`")));
        }
    }
    // One rule for every duration key: its own default, its own examples in the message.
    let mut duration = |key: &str, value: &Option<String>, default: Duration, examples: &str| match value {
        Some(t) => parse_duration(t).unwrap_or_else(|| {
            errs.push(bad(key, format!("invalid duration `{t}`: use e.g. {examples}, at most 24h")));
            default
        }),
        None => default,
    };
    let health_timeout = duration("health_timeout", &raw.health_timeout, Duration::from_secs(30), "30s, 2m, 500ms");
    let confirm_margin = duration("confirm_margin", &raw.confirm_margin, Duration::from_secs(30), "30s, 2m, 500ms");
    let settle = duration("settle", &raw.settle, Duration::from_secs(3), "3s, 500ms, 0s");
    let mut forbidden_paths = Vec::new();
    for f in raw.forbidden_paths.clone().unwrap_or_default() {
        match normalise_base(&f) {
            Err(why) => errs.push(bad("forbidden_paths", format!("invalid forbidden path `{f}`: {why}"))),
            Ok(norm) => {
                if let Some(base) = base.as_deref().filter(|b| under(b, &norm)) {
                    errs.push(bad("base", format!("base `{base}` is at or under the forbidden path `{norm}`")));
                }
                forbidden_paths.push(norm);
            }
        }
    }
    let env_file = raw.env_file.clone().unwrap_or_else(|| ".env".to_string());
    if let Err(why) = check_relative(&env_file) {
        errs.push(bad("env_file", format!("invalid env_file `{env_file}`: {why}")));
    }
    let required_env = raw.required_env.clone().unwrap_or_default();
    let expect_env: Vec<(String, String)> = raw.expect_env.clone().unwrap_or_default().into_iter().collect();
    for k in &required_env {
        if !valid_env_key(k) {
            errs.push(bad("required_env", invalid_env_key(k)));
        }
    }
    for (k, _) in &expect_env {
        if !valid_env_key(k) {
            errs.push(bad("expect_env", invalid_env_key(k)));
        }
    }
    // The units a target declares are what reads the env file on the server, through
    // `EnvironmentFile=`; without any, the app loads it itself, most often with npm `dotenv`.
    let env_dialect = match raw.env_dialect.as_deref() {
        None if raw.services.as_ref().is_none_or(|s| s.is_empty()) => Dialect::Dotenv,
        None => Dialect::Systemd,
        Some(d) => Dialect::parse(d).unwrap_or_else(|| {
            errs.push(bad("env_dialect", format!("invalid env_dialect `{d}`: use systemd, dotenv or node")));
            Dialect::Dotenv
        }),
    };
    let env_backups_keep = raw.env_backups_keep.unwrap_or(10);
    if env_backups_keep == 0 {
        errs.push(bad("env_backups_keep", "env_backups_keep must be at least 1".into()));
    }
    let (Some(host), Some(base), true) = (host, base, errs.is_empty()) else {
        return Err(crate::config::all_of(errs).into());
    };
    Ok(Target {
        env_dialect,
        env_backups_keep,
        forbidden_paths,
        env_file,
        required_env,
        expect_env,
        services,
        restart,
        health_timeout,
        confirm_margin,
        settle,
        name: name.to_string(),
        host,
        base,
        source,
        keep_releases,
        shared_files,
        shared_dirs,
        exclude: raw.exclude.clone().unwrap_or_default(),
        include: raw.include.clone().unwrap_or_default(),
        source_is_not_git: raw.source_is_not_git.unwrap_or(false),
        reports,
        byproducts,
        install: raw.install.clone().filter(|s| !s.trim().is_empty()),
        build: raw.build.clone().filter(|s| !s.trim().is_empty()),
        seed_from_siblings: raw.seed_from_siblings.unwrap_or(true),
    })
}

/// Another target of the same targets.toml, on the same server under the same login: its
/// pristine copy may seed this target's first deploy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sibling {
    pub name: String,
    pub base: String,
}

/// The other targets of `config` that bst would reach exactly as it reaches `target` (the
/// resolved host, port and user, and the same way there), with a base of their own; in
/// config order. Nothing on the server is searched: a server hosts what this file deploys to
/// it, and the server still proves whatever copy it offers (see `remote::deploy_session`).
/// A target that does not resolve is no sibling; its error belongs to its own commands.
pub fn siblings(config: &Config, target: &Target) -> Vec<Sibling> {
    if !target.seed_from_siblings {
        return Vec::new();
    }
    config
        .targets
        .keys()
        .filter(|name| **name != target.name)
        .filter_map(|name| resolve_target(config, name).ok())
        .filter(|other| same_login(&other.host, &target.host) && other.base != target.base)
        .map(|other| Sibling { name: other.name, base: other.base })
        .collect()
}

/// The same account on the same machine, as connected to. The jump chain counts: one private
/// address behind two bastions can be two machines. Key and known_hosts choices do not: they
/// say how to log in, not where.
fn same_login(a: &Host, b: &Host) -> bool {
    match (a, b) {
        (Host::Local, Host::Local) => true,
        (Host::Ssh(a), Host::Ssh(b)) => {
            (&a.host, a.port, &a.user, &a.proxy_jump, &a.proxy_command) == (&b.host, b.port, &b.user, &b.proxy_jump, &b.proxy_command)
        }
        _ => false,
    }
}

fn resolve_service(name: &str, raw: &crate::config::RawService) -> Result<Service, String> {
    if !crate::config::valid_target_name(name) {
        return Err("invalid service name".into());
    }
    let unit_ok = !raw.unit.is_empty()
        && !raw.unit.starts_with('-')
        && raw.unit.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'@' | b'.' | b'_' | b':' | b'-' | b'\\'));
    if !unit_ok {
        return Err(format!("invalid unit name `{}`", raw.unit));
    }
    let scope = match raw.scope.as_deref() {
        None | Some("system") => Scope::System,
        Some("user") => Scope::User,
        Some(other) => return Err(format!("scope must be \"system\" or \"user\", not `{other}`")),
    };
    if scope == Scope::User && raw.sudo == Some(true) {
        return Err(
            "`scope = \"user\"` runs `systemctl --user` as the SSH user; `sudo = true` would run it as root's user manager. Drop one"
                .into(),
        );
    }
    let health = match &raw.health {
        None => None,
        Some(h) => match (&h.http, &h.redis) {
            (Some(url), None) => {
                if url.get(..8).is_some_and(|p| p.eq_ignore_ascii_case("https://")) {
                    return Err(format!(
                        "health URL `{url}`: TLS is not supported; probe the app's plain http:// port on the server (the probe never leaves the SSH connection)"
                    ));
                }
                let (host, port, path) =
                    parse_http_url(url).ok_or_else(|| format!("invalid health URL `{url}`: expected http://host:port/path"))?;
                Some(Health::Http { host, port, path, status: h.status.unwrap_or(200), body_contains: h.body_contains.clone() })
            }
            (None, Some(addr)) => {
                let (host, port) =
                    split_host_port(addr, 6379).ok_or_else(|| format!("invalid redis address `{addr}`: expected host:port"))?;
                Some(Health::Redis { host, port })
            }
            _ => return Err("health needs exactly one of `http` or `redis`".into()),
        },
    };
    Ok(Service { name: name.to_string(), unit: raw.unit.clone(), scope, sudo: raw.sudo.unwrap_or(false), health })
}

/// `http://host[:port]/path` (no TLS: probes run on the server, over the SSH connection).
pub fn parse_http_url(url: &str) -> Option<(String, u16, String)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = split_host_port(authority, 80)?;
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return None;
    }
    Some((host, port, path.to_string()))
}

fn split_host_port(s: &str, default_port: u16) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let end = rest.find(']')?;
        let port = rest[end + 1..].strip_prefix(':').map(str::parse).transpose().ok()?;
        (&rest[..end], port)
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p.parse().ok()?)),
            None => (s, None),
        }
    };
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control() || c == '/') {
        return None;
    }
    Some((host.to_string(), port.unwrap_or(default_port)))
}

/// The longest duration any setting takes: a day. Longer is a typo, and an unbounded one
/// overflowed (`18446744073709551615s` panicked, `307445734561825861m` wrapped to 44 s).
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// `30s`, `2m`, `500ms`, `1h`; `None` when malformed or longer than [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" | "min" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        _ => return None,
    };
    (d <= MAX_DURATION).then_some(d)
}

/// An absolute path with no `.`/`..`, no empty components and not `/` itself: `rm -rf` and
/// `mv` run under it, so "close enough" is not good enough.
pub fn normalise_base(base: &str) -> Result<String, &'static str> {
    if base.contains('\0') {
        return Err("contains a NUL byte");
    }
    if !base.starts_with('/') {
        return Err("must be an absolute path");
    }
    let parts: Vec<&str> = base.split('/').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() {
        return Err("refusing to use `/`");
    }
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return Err("must not contain `.` or `..`");
    }
    Ok(format!("/{}", parts.join("/")))
}

/// Whether `path` is `dir` or inside it (both normalised).
pub fn under(path: &str, dir: &str) -> bool {
    path == dir || path.starts_with(&format!("{}/", dir.trim_end_matches('/')))
}

/// What a user reads for a key [`valid_env_key`] refuses.
pub fn invalid_env_key(k: &str) -> String {
    format!("invalid env key `{k}`: a key is letters, digits, `_` and `.`, not starting with a digit, e.g. DATABASE_URL")
}

pub fn valid_env_key(k: &str) -> bool {
    let mut b = k.bytes();
    b.next().is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.')
        && k.len() <= 128
}

/// Paths inside a release (shared files and dirs): relative, no `..`, no NUL.
pub fn check_relative(p: &str) -> Result<(), &'static str> {
    if p.is_empty() || p.contains('\0') {
        return Err("must be a non-empty path");
    }
    if p.starts_with('/') || p.starts_with('\\') || p.contains(':') && cfg!(windows) {
        return Err("must be relative to the release");
    }
    if p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err("must not contain empty, `.` or `..` components");
    }
    Ok(())
}

fn posix(p: &Path) -> String {
    p.to_string_lossy().replace('\\', "/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_urls_and_addresses() {
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(parse_duration("24h"), Some(MAX_DURATION));
        for huge in ["18446744073709551615s", "307445734561825861m", "25h", "86401s", "99999999999999999999ms"] {
            assert_eq!(parse_duration(huge), None, "{huge}");
        }
        assert_eq!(parse_http_url("http://127.0.0.1:4100/health"), Some(("127.0.0.1".into(), 4100, "/health".into())));
        assert_eq!(parse_http_url("http://localhost"), Some(("localhost".into(), 80, "/".into())));
        assert_eq!(parse_http_url("http://[::1]:8080/h?x=1"), Some(("::1".into(), 8080, "/h?x=1".into())));
        assert_eq!(parse_http_url("https://x/"), None);
        assert_eq!(split_host_port("127.0.0.1:6379", 1), Some(("127.0.0.1".into(), 6379)));
        assert_eq!(split_host_port("redis", 6379), Some(("redis".into(), 6379)));
    }

    #[test]
    fn bases_are_normalised_and_dangerous_ones_refused() {
        assert_eq!(normalise_base("/home/bonk/stagging-bst/").unwrap(), "/home/bonk/stagging-bst");
        assert_eq!(normalise_base("/a//b").unwrap(), "/a/b");
        for bad in ["/", "//", "~", "relative/x", "/a/../b", "/a/./b", ""] {
            assert!(normalise_base(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn shared_paths_stay_inside_the_release() {
        assert!(check_relative(".env").is_ok());
        assert!(check_relative("apps/api/.env").is_ok());
        for bad in ["/etc/passwd", "../x", "a/../../x", "", "a//b"] {
            assert!(check_relative(bad).is_err(), "{bad} accepted");
        }
    }

    /// Refused at validate, with the reason: user scope through sudo, and TLS probes.
    #[test]
    fn services_that_cannot_work_are_refused_when_the_config_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("targets.toml");
        let cases = [
            ("unit = \"a.service\"\nscope = \"user\"\nsudo = true", "`sudo = true` would run it as root's user manager"),
            ("unit = \"a.service\"\nhealth = { http = \"https://127.0.0.1:4100/health\" }", "TLS is not supported"),
            ("unit = \"a.service\"\nhealth = { http = \"HTTPS://x/\" }", "TLS is not supported"),
        ];
        for (svc, want) in cases {
            std::fs::write(&p, format!("[targets.t]\nhost = \"local\"\nbase = \"/srv/t\"\n[targets.t.services.app]\n{svc}\n")).unwrap();
            let c = Config::load(&p).unwrap();
            let e = resolve_target(&c, "t").unwrap_err().to_string();
            assert!(e.contains(want), "{svc}: {e}");
        }
    }

    #[test]
    fn resolves_a_target_with_defaults_and_errors_point_at_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("targets.toml");
        std::fs::write(
            &p,
            "[defaults]\nkeep_releases = 4\n[targets.demo]\nhost = \"local\"\nbase = \".bst-demo\"\n[targets.bad]\nhost = \"h\"\nuser = \"u\"\nbase = \"/\"\n",
        )
        .unwrap();
        let c = Config::load(&p).unwrap();
        let t = resolve_target(&c, "demo").unwrap();
        assert_eq!(t.host, Host::Local);
        assert_eq!(t.keep_releases, 4);
        assert!(t.base.ends_with("/.bst-demo") && t.base.starts_with('/'), "{}", t.base);
        let e = resolve_target(&c, "bad").unwrap_err().to_string();
        assert!(e.contains("targets.toml:9:1:") && e.contains("refusing to use `/`"), "{e}");
        let e = resolve_target(&c, "nope").unwrap_err().to_string();
        assert!(e.contains("unknown target `nope`") && e.contains("bad, demo"), "{e}");
    }

    /// Siblings share the login bst resolves (host, port, user): another port or user is
    /// another account, the same base is the same target, and a target that opted out has
    /// none. (An ssh config alias and its HostName being one server: `tests/it/siblings.rs`.)
    #[test]
    fn siblings_share_the_resolved_login() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("targets.toml");
        let login = "host = \"10.1.2.3\"\nuser = \"deploy\"\n";
        std::fs::write(
            &p,
            format!(
                "[defaults]\nidentity_file = \"/k\"\n\
                 [targets.a]\n{login}base = \"/srv/a\"\n\
                 [targets.b]\n{login}port = 22\nbase = \"/srv/b\"\nknown_hosts = \"/elsewhere\"\n\
                 [targets.c]\n{login}port = 2222\nbase = \"/srv/c\"\n\
                 [targets.d]\nhost = \"10.1.2.3\"\nuser = \"other\"\nbase = \"/srv/d\"\n\
                 [targets.e]\n{login}base = \"/srv//a/\"\n\
                 [targets.f]\n{login}base = \"/srv/f\"\nseed_from_siblings = false\n\
                 [targets.g]\nhost = \"local\"\nbase = \"/srv/g\"\n\
                 [targets.h]\n{login}base = \"/\"\n"
            ),
        )
        .unwrap();
        let c = Config::load(&p).unwrap();
        let names = |t: &str| -> Vec<String> {
            siblings(&c, &resolve_target(&c, t).unwrap()).into_iter().map(|s| format!("{}:{}", s.name, s.base)).collect()
        };
        // e is a's base, written differently: the same directory, no sibling of a; h does
        // not resolve (its base is `/`), so it is no one's sibling.
        assert_eq!(names("a"), ["b:/srv/b", "f:/srv/f"]);
        assert_eq!(names("b"), ["a:/srv/a", "e:/srv/a", "f:/srv/f"]);
        assert!(names("c").is_empty() && names("d").is_empty() && names("g").is_empty());
        assert!(names("f").is_empty(), "opted out");
        assert!(!resolve_target(&c, "f").unwrap().seed_from_siblings && resolve_target(&c, "a").unwrap().seed_from_siblings);
    }

    #[test]
    fn every_problem_of_a_target_is_reported_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("targets.toml");
        std::fs::write(
            &p,
            "[targets.t]\nbase = \"/srv/app/\"\nkeep_releases = 0\nsettle = \"soon\"\nrestart = [\"web\"]\nenv_dialect = \"bash\"\n",
        )
        .unwrap();
        let c = Config::load(&p).unwrap();
        let e = resolve_target(&c, "t").unwrap_err().to_string();
        let at = p.display();
        assert_eq!(
            e,
            format!(
                "{at}:1:1: target `t` has no `host`\n  \
                 {at}:3:1: keep_releases must be at least 1\n  \
                 {at}:4:1: invalid duration `soon`: use e.g. 3s, 500ms, 0s, at most 24h\n  \
                 {at}:5:1: `restart` names `web`, which is not a service of target `t`\n  \
                 {at}:6:1: invalid env_dialect `bash`: use systemd, dotenv or node\n  \
                 (5 problems)"
            )
        );
    }
}
