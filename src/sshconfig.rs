//! `ssh_config` files, read the way OpenSSH 9 reads them: the user's file then the system's
//! (`BST_SSH_CONFIG=<file>` reads only that file, like `ssh -F`; `none` reads none), the first
//! value obtained for a keyword wins, `IdentityFile` accumulates, `Host` patterns are matched
//! case-sensitively against the name as given, `Match` is evaluated (`all`, `host`,
//! `originalhost`, `user`, `localuser`, `exec`, `canonical`, `final`, each negatable), a second
//! pass runs when a `Match final`/`canonical` asks for it, `%h` expands in `HostName`, the
//! host name is lowercased, and a keyword OpenSSH does not know is an error (unless
//! `IgnoreUnknown` lists it), as it is for `ssh`. Every value keeps the `file:line` it came
//! from, so `bst config show` can say why bst connects where it does.
//!
//! Hand-written rather than a crate: the ssh_config crates on crates.io neither evaluate
//! `Match` nor keep line origins, and the point of this module is to agree with `ssh -G`
//! quirk for quirk (the tests use it as the oracle).
//!
//! Size: ~700 lines of code for one grammar, kept whole so it can be read side by side with
//! OpenSSH's `readconf.c`.

use std::path::{Path, PathBuf};

/// A value and where it was set (`path:line`).
#[derive(Debug, Clone, PartialEq)]
pub struct Set<T> {
    pub value: T,
    pub at: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostConfig {
    pub hostname: Option<Set<String>>,
    pub user: Option<Set<String>>,
    pub port: Option<Set<u16>>,
    pub identity_files: Vec<Set<String>>,
    pub identities_only: Option<Set<bool>>,
    pub user_known_hosts_files: Option<Set<Vec<String>>>,
    pub global_known_hosts_files: Option<Set<Vec<String>>>,
    /// `yes` | `no` | `accept-new` | `ask` | `off`
    pub strict_host_key_checking: Option<Set<String>>,
    /// `ProxyJump` and `ProxyCommand` compete: whichever is set first wins (also `none`).
    pub proxy_jump: Option<Set<String>>,
    pub proxy_command: Option<Set<String>>,
    pub hash_known_hosts: Option<Set<bool>>,
    pub connect_timeout: Option<Set<u64>>,
    pub server_alive_interval: Option<Set<u32>>,
    pub host_key_alias: Option<Set<String>>,
    pub identity_agent: Option<Set<String>>,
    /// `any` | `inet` | `inet6`
    pub address_family: Option<Set<String>>,
    ignore_unknown: Option<Vec<String>>,
    /// Directives that applied but that bst does not act on: (keyword as written, `path:line`).
    pub ignored: Vec<(String, String)>,
}

/// The files read, in order: `BST_SSH_CONFIG` (`none`: none), else the user's and the
/// system's. OpenSSH reads its user file as `-F` would, so both share one list.
pub fn files() -> Vec<(PathBuf, Scope)> {
    match std::env::var_os("BST_SSH_CONFIG") {
        Some(v) if v == "none" => Vec::new(),
        Some(v) => vec![(PathBuf::from(v), Scope::User)],
        None => {
            let mut v = Vec::new();
            if let Some(h) = crate::platform::home_dir() {
                v.push((h.join(".ssh").join("config"), Scope::User));
            }
            v.push((system_dir().join("ssh_config"), Scope::System));
            v
        }
    }
}

/// Where relative `Include`s of each kind of file live (`~/.ssh`, `/etc/ssh`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scope {
    User,
    System,
}

pub fn system_dir() -> PathBuf {
    if cfg!(windows) {
        PathBuf::from(std::env::var("PROGRAMDATA").unwrap_or_else(|_| r"C:\ProgramData".into())).join("ssh")
    } else {
        PathBuf::from("/etc/ssh")
    }
}

/// The host name ssh connects to, and the configuration that applies to it. Errors are the
/// ones ssh itself stops on (an unknown keyword, a bad `Match`, a bad value), worded with
/// the file and line.
pub fn lookup(alias: &str) -> Result<(String, HostConfig), String> {
    lookup_in(&files(), alias)
}

pub fn lookup_in(files: &[(PathBuf, Scope)], alias: &str) -> Result<(String, HostConfig), String> {
    let mut cfg = HostConfig::default();
    let mut want_final = false;
    for (path, scope) in files {
        let mut ctx = Ctx { host: alias, original: alias, final_pass: false, want_final: &mut want_final, scope: *scope };
        apply_file(path, &mut ctx, &mut cfg, 0)?;
    }
    let mut host = resolved_host(alias, &cfg)?;
    if want_final {
        // As ssh does for `Match final`: parse everything again with the final host name;
        // first-obtained values stay.
        let mut again = false;
        for (path, scope) in files {
            let mut ctx = Ctx { host: &host, original: alias, final_pass: true, want_final: &mut again, scope: *scope };
            apply_file(path, &mut ctx, &mut cfg, 0)?;
        }
        host = resolved_host(alias, &cfg)?;
    }
    Ok((host, cfg))
}

/// `HostName` with `%h` (the name as given) and `%%` expanded, lowercased as ssh does.
fn resolved_host(alias: &str, cfg: &HostConfig) -> Result<String, String> {
    let Some(h) = &cfg.hostname else { return Ok(alias.to_lowercase()) };
    let mut out = String::new();
    let mut it = h.value.chars();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('h') => out.push_str(alias),
            Some('%') => out.push('%'),
            other => {
                return Err(format!(
                    "{}: HostName `{}`: unknown token %{} (only %h and %% are expanded there)",
                    h.at,
                    h.value,
                    other.map(String::from).unwrap_or_default()
                ))
            }
        }
    }
    Ok(out.to_lowercase())
}

struct Ctx<'a> {
    /// What `Host` patterns match: the name as given, or in the final pass the host name.
    host: &'a str,
    original: &'a str,
    final_pass: bool,
    want_final: &'a mut bool,
    scope: Scope,
}

fn apply_file(path: &Path, ctx: &mut Ctx<'_>, cfg: &mut HostConfig, depth: u32) -> Result<(), String> {
    if depth > 16 {
        return Err(format!("{}: Include nested too deep", path.display()));
    }
    // A missing file is no configuration, as for ssh.
    let Ok(bytes) = std::fs::read(path) else { return Ok(()) };
    let text = String::from_utf8_lossy(&bytes);
    apply(&text, &path.display().to_string(), ctx, cfg, depth)
}

/// A `*`/`?` glob, as ssh's match_pattern: case-sensitive.
fn glob_exact(pat: &[char], s: &[char]) -> bool {
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < s.len() {
        if pi < pat.len() && (pat[pi] == '?' || pat[pi] == s[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < pat.len() && pat[pi] == '*' {
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
    pat[pi..].iter().all(|c| *c == '*')
}

fn glob_cs(pat: &str, s: &str) -> bool {
    glob_exact(&pat.chars().collect::<Vec<_>>(), &s.chars().collect::<Vec<_>>())
}

/// Case-insensitive, as ssh's match_hostname (known_hosts, `Match host`).
fn glob(pat: &str, s: &str) -> bool {
    glob_cs(&pat.to_lowercase(), &s.to_lowercase())
}

/// A comma-separated pattern list with `!negation` (`Match host a,!b`, known_hosts fields):
/// some positive pattern matches and no negated one does.
pub fn host_matches(patterns: &[String], host: &str) -> bool {
    list_matches(patterns.iter().flat_map(|p| p.split(',')), host, glob)
}

fn list_matches<'a>(patterns: impl Iterator<Item = &'a str>, s: &str, m: fn(&str, &str) -> bool) -> bool {
    let mut hit = false;
    for p in patterns {
        if let Some(neg) = p.strip_prefix('!') {
            if m(neg, s) {
                return false;
            }
        } else if m(p, s) {
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
    Some((key.to_string(), args))
}

fn yes(v: &str, at: &str, key: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "yes" | "true" => Ok(true),
        "no" | "false" => Ok(false),
        _ => Err(format!("{at}: {key}: bad yes/no argument `{v}`")),
    }
}

/// ssh's convtime: `90`, `1m30s`, `2h`; `none` is no value.
fn seconds(v: &str, at: &str, key: &str) -> Result<Option<u64>, String> {
    if v.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let bad = || format!("{at}: {key}: invalid time value `{v}`");
    let (mut total, mut num) = (0u64, String::new());
    for c in v.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let mult = match c.to_ascii_lowercase() {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            'w' => 604_800,
            _ => return Err(bad()),
        };
        total += num.parse::<u64>().map_err(|_| bad())? * mult;
        num.clear();
    }
    if !num.is_empty() {
        total += num.parse::<u64>().map_err(|_| bad())?;
    }
    Ok(Some(total))
}

/// Keywords OpenSSH 9 accepts that bst does not act on (read off `ssh` itself): used, they are
/// listed under `-v`; any other unknown keyword is an error, as in ssh.
const KNOWN_UNUSED: &[&str] = &[
    "addkeystoagent",
    "afstokenpassing",
    "batchmode",
    "bindaddress",
    "bindinterface",
    "canonicaldomains",
    "canonicalizefallbacklocal",
    "canonicalizemaxdots",
    "canonicalizepermittedcnames",
    "casignaturealgorithms",
    "certificatefile",
    "challengeresponseauthentication",
    "checkhostip",
    "cipher",
    "ciphers",
    "clearallforwardings",
    "compression",
    "compressionlevel",
    "connectionattempts",
    "controlmaster",
    "controlpath",
    "controlpersist",
    "dsaauthentication",
    "dynamicforward",
    "enableescapecommandline",
    "enablesshkeysign",
    "escapechar",
    "exitonforwardfailure",
    "fallbacktorsh",
    "fingerprinthash",
    "forkafterauthentication",
    "forwardagent",
    "forwardx11",
    "forwardx11timeout",
    "forwardx11trusted",
    "gatewayports",
    "gssapiauthentication",
    "gssapiclientidentity",
    "gssapidelegatecredentials",
    "gssapikexalgorithms",
    "gssapikeyexchange",
    "gssapirenewalforcesrekey",
    "gssapiserveridentity",
    "gssapitrustdns",
    "hostbasedacceptedalgorithms",
    "hostbasedauthentication",
    "hostbasedkeytypes",
    "hostkeyalgorithms",
    "identityfile2",
    "ipqos",
    "kbdinteractiveauthentication",
    "kbdinteractivedevices",
    "keepalive",
    "kerberosauthentication",
    "kerberostgtpassing",
    "knownhostscommand",
    "localcommand",
    "localforward",
    "loglevel",
    "logverbose",
    "macs",
    "nohostauthenticationforlocalhost",
    "numberofpasswordprompts",
    "passwordauthentication",
    "permitlocalcommand",
    "permitremoteopen",
    "pkcs11provider",
    "preferredauthentications",
    "protocol",
    "protocolkeepalives",
    "proxyusefdpass",
    "pubkeyacceptedalgorithms",
    "pubkeyacceptedkeytypes",
    "pubkeyauthentication",
    "rekeylimit",
    "remotecommand",
    "remoteforward",
    "requesttty",
    "requiredrsasize",
    "rhostsauthentication",
    "rhostsrsaauthentication",
    "rsaauthentication",
    "securitykeyprovider",
    "sendenv",
    "serveralivecountmax",
    "sessiontype",
    "setenv",
    "setuptimeout",
    "skeyauthentication",
    "smartcarddevice",
    "stdinnull",
    "streamlocalbindmask",
    "streamlocalbindunlink",
    "syslogfacility",
    "tcpkeepalive",
    "tisauthentication",
    "tunnel",
    "tunneldevice",
    "updatehostkeys",
    "useblacklistedkeys",
    "useprivilegedport",
    "userknownhostsfile2",
    "globalknownhostsfile2",
    "useroaming",
    "usersh",
    "verifyhostkeydns",
    "visualhostkey",
    "xauthlocation",
];

fn apply(text: &str, file: &str, ctx: &mut Ctx<'_>, cfg: &mut HostConfig, depth: u32) -> Result<(), String> {
    // Lines before the first Host/Match apply to every host.
    let mut active = true;
    for (n, line) in text.lines().enumerate() {
        let Some((keyword, args)) = split_line(line) else { continue };
        let at = format!("{file}:{}", n + 1);
        let key = keyword.to_ascii_lowercase();
        match key.as_str() {
            "host" => {
                active = list_matches(args.iter().map(String::as_str), ctx.host, glob_cs);
                continue;
            }
            "match" => {
                active = match_line(&args, &at, ctx, cfg)?;
                continue;
            }
            _ => {}
        }
        if args.is_empty() {
            return Err(format!("{at}: {keyword}: missing argument"));
        }
        let first = args[0].clone();
        let set = |v: String| Some(Set { value: v, at: at.clone() });
        match key.as_str() {
            "include" => {
                if active {
                    for a in &args {
                        for f in expand_include(a, ctx.scope) {
                            apply_file(&f, ctx, cfg, depth + 1)?;
                        }
                    }
                }
            }
            "ignoreunknown" if active && cfg.ignore_unknown.is_none() => {
                cfg.ignore_unknown = Some(first.split(',').map(str::to_string).collect());
            }
            "hostname" if active && cfg.hostname.is_none() => cfg.hostname = set(first),
            "user" if active && cfg.user.is_none() => cfg.user = set(first),
            "port" => {
                let p = first.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| format!("{at}: Port: bad port number `{first}`"))?;
                if active && cfg.port.is_none() {
                    cfg.port = Some(Set { value: p, at });
                }
            }
            "identityfile" => {
                if active && !cfg.identity_files.iter().any(|f| f.value == first) {
                    cfg.identity_files.push(Set { value: first, at });
                }
            }
            "identitiesonly" => {
                let v = yes(&first, &at, &keyword)?;
                if active && cfg.identities_only.is_none() {
                    cfg.identities_only = Some(Set { value: v, at });
                }
            }
            "userknownhostsfile" if active && cfg.user_known_hosts_files.is_none() => {
                cfg.user_known_hosts_files = Some(Set { value: args.clone(), at });
            }
            "globalknownhostsfile" if active && cfg.global_known_hosts_files.is_none() => {
                cfg.global_known_hosts_files = Some(Set { value: args.clone(), at });
            }
            "stricthostkeychecking" => {
                let v = first.to_ascii_lowercase();
                if !matches!(v.as_str(), "yes" | "no" | "true" | "false" | "ask" | "off" | "accept-new") {
                    return Err(format!("{at}: StrictHostKeyChecking: bad argument `{first}`"));
                }
                if active && cfg.strict_host_key_checking.is_none() {
                    cfg.strict_host_key_checking = set(v);
                }
            }
            "proxyjump" if active && cfg.proxy_jump.is_none() && cfg.proxy_command.is_none() => cfg.proxy_jump = set(first),
            "proxycommand" if active && cfg.proxy_jump.is_none() && cfg.proxy_command.is_none() => {
                // The rest of the line, as written: it is a shell command.
                let raw = line.trim_start();
                let rest = raw[keyword.len()..].trim_start().trim_start_matches('=').trim_start();
                cfg.proxy_command = set(rest.to_string());
            }
            "hashknownhosts" => {
                let v = yes(&first, &at, &keyword)?;
                if active && cfg.hash_known_hosts.is_none() {
                    cfg.hash_known_hosts = Some(Set { value: v, at });
                }
            }
            "connecttimeout" => {
                let v = seconds(&first, &at, &keyword)?;
                if active && cfg.connect_timeout.is_none() {
                    if let Some(v) = v {
                        cfg.connect_timeout = Some(Set { value: v, at });
                    }
                }
            }
            "serveraliveinterval" => {
                let v = seconds(&first, &at, &keyword)?.unwrap_or(0);
                if active && cfg.server_alive_interval.is_none() {
                    cfg.server_alive_interval = Some(Set { value: u32::try_from(v).unwrap_or(u32::MAX), at });
                }
            }
            "hostkeyalias" if active && cfg.host_key_alias.is_none() => cfg.host_key_alias = set(first),
            "identityagent" if active && cfg.identity_agent.is_none() => cfg.identity_agent = set(first),
            "addressfamily" => {
                let v = first.to_ascii_lowercase();
                if !matches!(v.as_str(), "any" | "inet" | "inet6") {
                    return Err(format!("{at}: AddressFamily: bad argument `{first}`"));
                }
                if active && cfg.address_family.is_none() {
                    cfg.address_family = set(v);
                }
            }
            "canonicalizehostname" => {
                let v = first.to_ascii_lowercase();
                if active && matches!(v.as_str(), "yes" | "always") {
                    return Err(format!(
                        "{at}: CanonicalizeHostname {first} is not supported by bst; set HostName to the full name instead"
                    ));
                }
            }
            "revokedhostkeys" => {
                if active && !first.eq_ignore_ascii_case("none") {
                    return Err(format!(
                        "{at}: RevokedHostKeys is not supported by bst, and skipping a revocation list is not safe; list revoked keys as `@revoked` lines in known_hosts instead"
                    ));
                }
            }
            "hostname"
            | "user"
            | "userknownhostsfile"
            | "globalknownhostsfile"
            | "proxyjump"
            | "proxycommand"
            | "hostkeyalias"
            | "identityagent"
            | "ignoreunknown" => {}
            k if KNOWN_UNUSED.contains(&k) => {
                if active {
                    cfg.ignored.push((keyword.clone(), at));
                }
            }
            _ => {
                let ignored = cfg.ignore_unknown.as_ref().is_some_and(|l| list_matches(l.iter().map(String::as_str), &keyword, glob_cs));
                if !ignored {
                    return Err(format!("{at}: Bad configuration option: {key} (ssh would refuse this file too)"));
                }
            }
        }
    }
    Ok(())
}

/// One `Match` line, as ssh's match_cfg_line: every criterion must hold. `Host` and `User`
/// criteria see the values set so far (configuration is incomplete while it is read).
fn match_line(args: &[String], at: &str, ctx: &mut Ctx<'_>, cfg: &HostConfig) -> Result<bool, String> {
    if args.is_empty() {
        return Err(format!("{at}: Match: missing criteria"));
    }
    let mut result = true;
    let mut i = 0;
    while i < args.len() {
        let word = args[i].to_ascii_lowercase();
        let (negate, crit) = match word.strip_prefix('!') {
            Some(c) => (true, c.to_string()),
            None => (false, word.clone()),
        };
        i += 1;
        let hit = match crit.as_str() {
            "all" => {
                let others = args.iter().filter(|a| !matches!(a.to_ascii_lowercase().as_str(), "all" | "canonical" | "final")).count();
                if others > 0 || negate {
                    return Err(format!("{at}: Match: `all` cannot be combined with other criteria"));
                }
                true
            }
            "canonical" | "final" => {
                *ctx.want_final = true;
                ctx.final_pass
            }
            "host" | "originalhost" | "user" | "localuser" | "exec" => {
                let Some(arg) = args.get(i) else { return Err(format!("{at}: Match {crit}: missing argument")) };
                i += 1;
                match crit.as_str() {
                    "host" => {
                        let h = if ctx.final_pass { ctx.host.to_string() } else { hostname_so_far(ctx, cfg) };
                        host_matches(std::slice::from_ref(arg), &h)
                    }
                    "originalhost" => host_matches(std::slice::from_ref(arg), ctx.original),
                    "user" => {
                        let u = cfg.user.as_ref().map(|u| u.value.clone()).or_else(crate::platform::local_user).unwrap_or_default();
                        list_matches(arg.split(','), &u, glob_cs)
                    }
                    "localuser" => list_matches(arg.split(','), &crate::platform::local_user().unwrap_or_default(), glob_cs),
                    _ => {
                        // ssh skips the command once the line already failed.
                        if !result {
                            false
                        } else {
                            run_exec(arg, ctx, cfg, at)?
                        }
                    }
                }
            }
            other => return Err(format!("{at}: Match: unsupported attribute `{other}`")),
        };
        if hit == negate {
            result = false;
        }
    }
    Ok(result)
}

/// The host name as far as the files read so far set it: `Match` sees an incomplete config.
fn hostname_so_far(ctx: &Ctx<'_>, cfg: &HostConfig) -> String {
    cfg.hostname.as_ref().map_or(ctx.host.to_string(), |h| h.value.replace("%h", ctx.original))
}

#[cfg(unix)]
fn run_exec(cmd: &str, ctx: &Ctx<'_>, cfg: &HostConfig, _at: &str) -> Result<bool, String> {
    let host = hostname_so_far(ctx, cfg);
    let port = cfg.port.as_ref().map_or(22, |p| p.value);
    let user = cfg.user.as_ref().map(|u| u.value.clone()).or_else(crate::platform::local_user).unwrap_or_default();
    let expanded = expand_tokens_str(cmd, &host, port, &user, ctx.original);
    let shell = std::env::var("SHELL").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| "/bin/sh".into());
    let st = std::process::Command::new(shell)
        .arg("-c")
        .arg(&expanded)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status();
    Ok(st.is_ok_and(|s| s.success()))
}

#[cfg(windows)]
fn run_exec(_cmd: &str, _ctx: &Ctx<'_>, _cfg: &HostConfig, at: &str) -> Result<bool, String> {
    Err(format!("{at}: Match exec is not supported by bst on Windows"))
}

/// `Include` paths: `~` expands, relative ones are under `~/.ssh` (user files) or `/etc/ssh`
/// (system files), `*` and `?` in the file name glob, in sorted order.
fn expand_include(arg: &str, scope: Scope) -> Vec<PathBuf> {
    let p = crate::platform::expand_home(arg);
    let p = if p.is_absolute() {
        p
    } else {
        match scope {
            Scope::User => crate::platform::home_dir().unwrap_or_default().join(".ssh").join(&p),
            Scope::System => system_dir().join(&p),
        }
    };
    let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if !name.contains('*') && !name.contains('?') {
        return vec![p];
    }
    let parent = p.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut out: Vec<PathBuf> = std::fs::read_dir(&parent)
        .map(|rd| rd.flatten().filter(|e| glob_cs(&name, &e.file_name().to_string_lossy())).map(|e| e.path()).collect())
        .unwrap_or_default();
    out.sort();
    out
}

/// `%h %p %r %u %d %n %l %L %i %%` and a leading `~`, as ssh expands them in `IdentityFile`,
/// `UserKnownHostsFile`, `ProxyCommand` and `Match exec`. Unknown tokens stay as written.
pub fn expand_tokens_str(s: &str, hostname: &str, port: u16, remote_user: &str, original: &str) -> String {
    let home = crate::platform::home_dir().unwrap_or_default();
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
            Some('n') => out.push_str(original),
            Some('u') => out.push_str(&crate::platform::local_user().unwrap_or_default()),
            Some('d') => out.push_str(&home.to_string_lossy()),
            Some('L') => out.push_str(crate::platform::hostname().split('.').next().unwrap_or_default()),
            Some('l') => out.push_str(&crate::platform::hostname()),
            #[cfg(unix)]
            // SAFETY: getuid cannot fail.
            Some('i') => out.push_str(&unsafe { libc::getuid() }.to_string()),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

pub fn expand_tokens(s: &str, hostname: &str, port: u16, remote_user: &str, original: &str) -> PathBuf {
    crate::platform::expand_home(&expand_tokens_str(s, hostname, port, remote_user, original))
}

/// The hops of a `ProxyJump` list, in the order they are connected.
pub fn jump_hops(spec: &str) -> Vec<String> {
    spec.split(',').map(str::trim).filter(|h| !h.is_empty()).map(str::to_string).collect()
}

/// `[user@]host[:port]` (or `ssh://[user@]host[:port]`) of a ProxyJump hop.
pub fn parse_jump(s: &str) -> (Option<String>, String, Option<u16>) {
    let s = s.strip_prefix("ssh://").unwrap_or(s);
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
    HostName=127.9.8.7
    ProxyJump admin@bastion:2200
    ProxyCommand nc %h %p

Host *
    User fallback
    IdentityFile ~/.ssh/id_%h
    Port 22
    HashKnownHosts yes
"#;

    fn at(host: &str) -> (String, HostConfig) {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("config");
        std::fs::write(&f, CFG).unwrap();
        lookup_in(&[(f, Scope::User)], host).unwrap()
    }

    #[test]
    fn first_value_wins_and_identity_files_accumulate() {
        let (host, c) = at("home-server");
        assert_eq!(host, "127.0.0.1");
        assert_eq!(c.user.unwrap().value, "bonk");
        assert_eq!(c.port.as_ref().unwrap().value, 2222);
        assert!(c.port.unwrap().at.ends_with("config:8"));
        let ids: Vec<_> = c.identity_files.iter().map(|f| f.value.as_str()).collect();
        assert_eq!(ids, vec!["~/.ssh/home_ed25519", "~/.ssh/id_%h"]);
        assert!(c.identities_only.unwrap().value);
        assert!(c.hash_known_hosts.unwrap().value);
        assert_eq!(c.server_alive_interval.unwrap().value, 30);
    }

    #[test]
    fn patterns_negation_quotes_equals_and_case() {
        assert_eq!(at("db.internal").1.user.unwrap().value, "ops");
        assert_eq!(at("db.internal").1.strict_host_key_checking.unwrap().value, "accept-new");
        assert_eq!(at("secret.internal").1.user.unwrap().value, "fallback");
        assert_eq!(at("quoted alias").0, "127.9.8.7");
        let (_, j) = at("jump");
        assert_eq!(j.proxy_jump.unwrap().value, "admin@bastion:2200");
        assert_eq!(j.proxy_command, None, "ProxyJump came first, so ProxyCommand is ignored");
        assert_eq!(at("other").0, "other");
        // `Host` patterns are case-sensitive in ssh; the host name is lowercased.
        assert_eq!(at("HOME-SERVER").0, "home-server");
        assert!(glob("w?b-*", "web-01") && !glob("w?b-*", "wb-01"));
    }

    #[test]
    fn unknown_keywords_and_bad_match_are_errors_like_ssh() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c");
        std::fs::write(&f, "Host nomatch\n  Bogus 1\n").unwrap();
        let e = lookup_in(&[(f.clone(), Scope::User)], "x").unwrap_err();
        assert!(e.contains("c:2: Bad configuration option: bogus"), "{e}");
        std::fs::write(&f, "IgnoreUnknown Bog*\nHost nomatch\n  Bogus 1\n").unwrap();
        assert!(lookup_in(&[(f.clone(), Scope::User)], "x").is_ok());
        std::fs::write(&f, "Match tagged x\n").unwrap();
        assert!(lookup_in(&[(f.clone(), Scope::User)], "x").unwrap_err().contains("unsupported attribute"));
        std::fs::write(&f, "Host x\n  HostName %r.example\n").unwrap();
        assert!(lookup_in(&[(f, Scope::User)], "x").unwrap_err().contains("unknown token %r"));
    }

    #[test]
    fn match_final_sees_the_resolved_host() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c");
        std::fs::write(&f, "Match final host real.example\n  User late\nHost short\n  HostName real.example\n").unwrap();
        let (host, c) = lookup_in(&[(f, Scope::User)], "short").unwrap();
        assert_eq!(host, "real.example");
        assert_eq!(c.user.unwrap().value, "late");
    }

    #[test]
    fn jump_specs() {
        assert_eq!(parse_jump("admin@bastion:2200"), (Some("admin".into()), "bastion".into(), Some(2200)));
        assert_eq!(parse_jump("bastion"), (None, "bastion".into(), None));
        assert_eq!(parse_jump("[::1]:22"), (None, "::1".into(), Some(22)));
        assert_eq!(parse_jump("ssh://u@h:2"), (Some("u".into()), "h".into(), Some(2)));
        assert_eq!(jump_hops("a, b,c"), vec!["a", "b", "c"]);
    }

    #[test]
    fn tokens_expand() {
        assert_eq!(expand_tokens("/k/%h-%p-%r-%n%%", "h", 22, "u", "alias"), PathBuf::from("/k/h-22-u-alias%"));
    }
}
