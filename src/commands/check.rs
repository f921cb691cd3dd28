//! `bst check`: preflight before a deploy. Config, reachability, host key, login, the base (a
//! real directory, not a symlink, not at or under a forbidden path), writable, free disk,
//! tools, the build's own tools, lock, env baseline, service units. Each item PASS/FAIL/SKIP,
//! then `CHECK_RESULT`.
//!
//! The command word of `install`/`build` is found by a small hand-written scan
//! (`command_word`) rather than a shell-splitting crate: `shell-words` and `shlex` split one
//! simple command, but the scan must also step over `cd dir &&`, `;` and `|` and assignments,
//! and stop at compound commands, which neither does.

use std::path::Path;

use serde::Serialize;
use serde_json::json;

use super::gate::{baseline, read_env, shared_rel};
use crate::error::Error;
use crate::report::{human_bytes, md_cell, Gate, Printer};
use crate::settings::{under, Globals, Target};
use crate::transport;

/// Below this a deploy (a full snapshot plus node_modules) is likely to fail half-way.
const MIN_FREE_BYTES: u64 = 1 << 30;

#[derive(Serialize)]
struct Item {
    check: &'static str,
    /// PASS | FAIL | SKIP
    result: &'static str,
    detail: String,
}

pub fn run(target: &Target, globals: &Globals, p: &Printer, reports: &Path) -> anyhow::Result<()> {
    let mut items = vec![Item { check: "config", result: "PASS", detail: format!("target `{}` resolved", target.name) }];
    let pf = |ok: bool| if ok { "PASS" } else { "FAIL" };
    let mut push = |check: &'static str, result: &'static str, detail: String| items.push(Item { check, result, detail });
    match transport::connect(&target.host, globals) {
        Err(e) => {
            // Everything after the first failure is unknown, not failed: one reason, said once,
            // and the rows that could not be checked say which it was.
            let (reachable, key, auth, why) = match e.downcast_ref::<Error>() {
                Some(Error::HostKeyUnknown { fingerprint, .. }) => (
                    Some("TCP and SSH handshake ok".to_string()),
                    Some(Err(format!("host key unknown: rerun with --accept-new-host-key after checking {fingerprint}"))),
                    None,
                    "host key unknown",
                ),
                Some(Error::HostKeyChanged { .. } | Error::HostKeyRevoked { .. } | Error::HostKeyCertificate { .. }) => {
                    (Some("TCP and SSH handshake ok".to_string()), Some(Err(one_line(&e))), None, "host key not trusted")
                }
                Some(Error::Auth { .. }) => (
                    Some("TCP and SSH handshake ok".to_string()),
                    Some(Ok("known".to_string())),
                    Some(one_line(&e)),
                    "authentication failed",
                ),
                _ => (None, None, None, "not reachable"),
            };
            let not_checked = format!("not checked: {why}");
            match reachable {
                Some(d) => push("reachable", "PASS", d),
                None => push("reachable", "FAIL", one_line(&e)),
            }
            match key {
                Some(Ok(d)) => push("host key", "PASS", d),
                Some(Err(d)) => push("host key", "FAIL", d),
                None => push("host key", "SKIP", not_checked.clone()),
            }
            match auth {
                Some(d) => push("auth", "FAIL", d),
                None => push("auth", "SKIP", not_checked.clone()),
            }
            for c in ["base", "forbidden paths", "writable", "free disk", "tools", "build tools", "lock", "env baseline", "service units"] {
                push(c, "SKIP", not_checked.clone());
            }
        }
        Ok(mut t) => {
            push("reachable", pf(true), target.host_label());
            if let crate::settings::Host::Ssh(s) = &target.host {
                push("host key", "PASS", "known".into());
                push("auth", "PASS", format!("as `{}` ({})", s.user, s.user_from));
            } else {
                push("host key", "SKIP", "local transport".into());
                push("auth", "SKIP", "local transport".into());
            }
            let units: Vec<(String, String)> =
                target.services.iter().map(|s| (s.name.clone(), crate::remote::systemd::load_state_cmd(s))).collect();
            let (tools, notes) = build_tools(target);
            let out = t.run(&crate::remote::preflight(&target.base, &units, &target.forbidden_paths, &tools))?;
            let facts = out.stdout_str();
            let fact = |k: &str| facts.lines().find_map(|l| l.strip_prefix(k).map(|v| v.trim_start().to_string()));
            let base_kind = fact("BASE ").unwrap_or_default();
            let real = fact("REAL ").unwrap_or_default();
            // `<kind> <path>`: the nearest existing ancestor of a base not created yet is not a
            // directory, so `mkdir -p` cannot create the base under it.
            let blocked = fact("BLOCKED ").and_then(|b| b.split_once(' ').map(|(k, p)| (k.to_string(), p.to_string())));
            let base_ok = base_kind == "dir" || (base_kind == "absent" && blocked.is_none());
            push(
                "base",
                pf(base_ok),
                match base_kind.as_str() {
                    "dir" => format!("{} is a directory", target.base),
                    "absent" => match &blocked {
                        Some((kind, at)) => format!(
                            "{} cannot be created: {at} is {}; choose a base under a directory, or move that {} away",
                            target.base,
                            match kind.as_str() {
                                "file" => "a regular file, not a directory",
                                "symlink" => "a symlink that leads to no directory",
                                _ => "not a directory",
                            },
                            if kind == "symlink" { "symlink" } else { "file" }
                        ),
                        // Only a base it can create is promised; the writable row says why not.
                        None if fact("WRITABLE ").as_deref() == Some("yes") => {
                            format!("{} does not exist yet; the first deploy creates it", target.base)
                        }
                        None => format!("{} does not exist yet", target.base),
                    },
                    k if k.starts_with("symlink") => {
                        format!("{} is a symlink to {} (alias paths are not allowed)", target.base, k.trim_start_matches("symlink "))
                    }
                    _ => format!("{} exists but is not a directory", target.base),
                },
            );
            let resolved_base = match base_kind.strip_prefix("symlink ") {
                Some(to) => to.to_string(),
                None if base_kind == "dir" => real.clone(),
                None => target.base.clone(),
            };
            // Both sides resolved on the server: the base's existing ancestors (a base not
            // created yet may sit under a symlinked parent) and each forbidden path (itself
            // possibly a symlink).
            let resolved_base = fact("RESOLVED ").filter(|r| !r.is_empty()).unwrap_or(resolved_base);
            let hit = target.forbidden_paths.iter().enumerate().find_map(|(i, f)| {
                let rf = fact(&format!("FRESOLVED {i} ")).filter(|r| !r.is_empty()).unwrap_or_else(|| f.clone());
                (under(&target.base, f) || under(&resolved_base, f) || under(&resolved_base, &rf)).then(|| format!("{f} ({rf})"))
            });
            push(
                "forbidden paths",
                pf(hit.is_none()),
                match hit {
                    Some(f) => format!("{} resolves to {resolved_base}, at or under the forbidden {f}", target.base),
                    None if target.forbidden_paths.is_empty() => "none configured".into(),
                    None => format!("not under {}", target.forbidden_paths.join(", ")),
                },
            );
            let existing = fact("EXISTING ").unwrap_or_default();
            let who = match &target.host {
                crate::settings::Host::Ssh(s) => format!("`{}`", s.user),
                crate::settings::Host::Local => crate::platform::local_user().map_or_else(|| "this user".to_string(), |u| format!("`{u}`")),
            };
            // Tested by creating and removing an entry: `test -w` trusts the mode bits, which
            // root passes everywhere, and says nothing of root squash or a full inode table.
            match (&blocked, fact("WRITABLE ").as_deref()) {
                (Some((_, at)), _) => push("writable", "SKIP", format!("not checked: {at} is not a directory")),
                (None, Some("yes")) => push("writable", "PASS", format!("{existing} writable by {who} (an entry was created and removed)")),
                (None, w) => {
                    let why =
                        w.and_then(|w| w.strip_prefix("no")).map(str::trim).filter(|w| !w.is_empty()).unwrap_or("cannot create an entry");
                    let next = if why.eq_ignore_ascii_case("Read-only file system") {
                        "a read-only mount: remount it read-write, or choose a base on a writable file system"
                    } else if why.eq_ignore_ascii_case("Permission denied") {
                        "give that user write access to it, or choose a base it can write"
                    } else {
                        "choose a base where that user can create directories"
                    };
                    push("writable", "FAIL", format!("{existing} is not writable by {who}: {why} ({next})"));
                }
            }
            let free = fact("FREE_KB ").and_then(|v| v.parse::<u64>().ok()).map(|kb| kb * 1024);
            push(
                "free disk",
                pf(free.is_some_and(|f| f >= MIN_FREE_BYTES)),
                free.map_or("unknown (df failed)".into(), |f| format!("{} free (need {})", human_bytes(f), human_bytes(MIN_FREE_BYTES))),
            );
            let missing: Vec<&str> = facts
                .lines()
                .filter_map(|l| l.strip_prefix("TOOL "))
                .filter(|l| l.ends_with(" no"))
                .map(|l| l.trim_end_matches(" no"))
                .collect();
            push(
                "tools",
                pf(missing.is_empty()),
                if missing.is_empty() { "tar, gzip, sh present".into() } else { format!("missing: {}", missing.join(", ")) },
            );
            match build_tools_row(&tools, &notes, &facts) {
                Some((result, detail)) => push("build tools", result, detail),
                None => push("build tools", "SKIP", "no install or build command configured".into()),
            }
            let lock = fact("LOCK ").unwrap_or_default();
            let holder = || match serde_json::from_str::<super::lock::Owner>(&lock) {
                // Words, not the owner record (which carries the lock's token).
                Ok(o) => format!("held by {}", o.describe()),
                Err(_) => "held by an unknown holder (no readable owner record)".to_string(),
            };
            push("lock", pf(lock == "free"), if lock == "free" { "free".into() } else { holder() });
            if target.required_env.is_empty() && target.expect_env.is_empty() {
                items.push(Item { check: "env baseline", result: "SKIP", detail: "no required_env or expect_env configured".into() });
            } else {
                let file = read_env(&mut *t, target, &shared_rel(target))?;
                let (ok, keys, expects) = baseline(file.as_ref(), target);
                let bad: Vec<String> = keys
                    .iter()
                    .filter(|k| k.status != "ok")
                    .map(|k| format!("{} {}", k.key, k.status))
                    .chain(expects.iter().filter(|e| e.status != "match").map(|e| format!("{} {}", e.key, e.status)))
                    .collect();
                items.push(Item {
                    check: "env baseline",
                    result: if ok { "PASS" } else { "FAIL" },
                    detail: if file.is_none() {
                        "env file missing".into()
                    } else if bad.is_empty() {
                        "all keys ok".into()
                    } else {
                        bad.join(", ")
                    },
                });
            }
            if target.services.is_empty() {
                items.push(Item { check: "service units", result: "SKIP", detail: "no services configured".into() });
            } else {
                let bad: Vec<String> = target
                    .services
                    .iter()
                    .filter_map(|s| {
                        let st = facts
                            .lines()
                            .find_map(|l| l.strip_prefix(&format!("UNIT {} ", s.name)).map(str::to_string))
                            .unwrap_or_default();
                        (st != "loaded").then(|| format!("{} ({}): {}", s.name, s.unit, if st.is_empty() { "unknown" } else { &st }))
                    })
                    .collect();
                items.push(Item {
                    check: "service units",
                    result: if bad.is_empty() { "PASS" } else { "FAIL" },
                    detail: if bad.is_empty() { "all loaded".into() } else { bad.join(", ") },
                });
            }
        }
    }
    let pass = items.iter().all(|i| i.result != "FAIL");
    let mut md = format!(
        "# Preflight: {}\n\n- host: {}\n- base: `{}`\n\n| check | result | detail |\n|---|---|---|\n",
        target.name,
        target.host_label(),
        target.base
    );
    for i in &items {
        p.out(format!("{:<16} {}  {}", i.check, p.verdict(i.result, 4), i.detail));
        md.push_str(&format!("| {} | {} | {} |\n", i.check, i.result, md_cell(&i.detail)));
    }
    let doc = json!({"target": target.name, "host": target.host_label(), "base": target.base, "checks": items});
    Gate { name: "check", key: "CHECK_RESULT", reports }.finish(p, pass, doc, &md)
}

/// An error chain as one table cell: its lines joined, the indentation of hints dropped.
fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ")
}

/// What `install` or `build` starts, as far as can be told without running it.
#[derive(Debug, PartialEq, Eq)]
enum Word {
    /// Looked up on the server.
    Tool(String),
    /// A relative path: it lives in the release, which does not exist before the deploy.
    InRelease(String),
    /// `if`, `{`, `(` and the like: what runs depends on the script.
    Construct(String),
}

/// Package managers that are scripts run by node: present but useless without it.
const NEEDS_NODE: &[&str] = &["pnpm", "npm", "npx", "yarn", "pnpx", "corepack"];

/// The command word of a shell command: the first word after any `NAME=value` assignments,
/// skipping leading `cd dir &&` steps (a monorepo's `cd apps/web && pnpm build` needs pnpm,
/// not cd). Quotes are removed; `None` for an empty command.
fn command_word(cmd: &str) -> Option<Word> {
    let mut words: Vec<String> = Vec::new();
    let mut cur: Option<String> = None;
    let mut chars = cmd.chars().peekable();
    let (mut single, mut double) = (false, false);
    let end_segment = |words: &mut Vec<String>, cur: &mut Option<String>| -> Option<Word> {
        if let Some(w) = cur.take() {
            words.push(w);
        }
        let first = words.iter().find(|w| !is_assignment(w))?.clone();
        words.clear();
        if first == "cd" {
            return None;
        }
        Some(classify(first))
    };
    while let Some(c) = chars.next() {
        match c {
            '\'' if !double => {
                single = !single;
                cur.get_or_insert_with(String::new);
            }
            '"' if !single => {
                double = !double;
                cur.get_or_insert_with(String::new);
            }
            '\\' if !single => {
                if let Some(n) = chars.next() {
                    cur.get_or_insert_with(String::new).push(n);
                }
            }
            c if single || double => cur.get_or_insert_with(String::new).push(c),
            ';' | '&' | '|' | '\n' => {
                if let Some(w) = end_segment(&mut words, &mut cur) {
                    return Some(w);
                }
            }
            c if c.is_whitespace() => {
                if let Some(w) = cur.take() {
                    words.push(w);
                }
            }
            '(' | ')' | '{' | '}' if cur.is_none() && words.iter().all(|w| is_assignment(w)) => {
                return Some(Word::Construct(c.to_string()))
            }
            c => cur.get_or_insert_with(String::new).push(c),
        }
    }
    end_segment(&mut words, &mut cur)
}

fn is_assignment(w: &str) -> bool {
    w.split_once('=').is_some_and(|(k, _)| crate::settings::valid_env_key(k) && !k.contains('.'))
}

fn classify(w: String) -> Word {
    const RESERVED: &[&str] = &["if", "then", "else", "elif", "fi", "for", "while", "until", "do", "done", "case", "esac", "!", "[["];
    if RESERVED.contains(&w.as_str()) {
        Word::Construct(w)
    } else if w.contains('/') && !w.starts_with('/') {
        Word::InRelease(w)
    } else {
        Word::Tool(w)
    }
}

/// The tools to look up for `install` then `build` (each once; node after a package manager
/// that needs it), and what could not be looked up, said as such.
fn build_tools(target: &Target) -> (Vec<String>, Vec<String>) {
    let (mut tools, mut notes) = (Vec::new(), Vec::new());
    let add = |t: &str, tools: &mut Vec<String>| {
        if !tools.iter().any(|x| x == t) {
            tools.push(t.to_string());
        }
    };
    for (key, cmd) in [("install", &target.install), ("build", &target.build)] {
        let Some(cmd) = cmd else { continue };
        match command_word(cmd) {
            Some(Word::Tool(w)) => {
                add(&w, &mut tools);
                if NEEDS_NODE.contains(&w.as_str()) {
                    add("node", &mut tools);
                }
            }
            Some(Word::InRelease(w)) => notes.push(format!("{key} runs `{w}` from the release (not checked before it exists)")),
            Some(Word::Construct(w)) => notes.push(format!("{key} starts with `{w}` (a shell construct, not checked)")),
            None => {}
        }
    }
    (tools, notes)
}

/// The `build tools` row from the probe's `PROBE` lines; `None` when there is nothing to say.
fn build_tools_row(tools: &[String], notes: &[String], facts: &str) -> Option<(&'static str, String)> {
    if tools.is_empty() {
        return (!notes.is_empty()).then(|| ("SKIP", notes.join("; ")));
    }
    let shell = facts.lines().find_map(|l| l.strip_prefix("LOGIN_SHELL ")).unwrap_or("/bin/sh").to_string();
    // (name, path, version) as the login shell answered, in probe order.
    let mut found: Vec<(String, Option<String>, Option<String>)> = Vec::new();
    let mut in_version = false;
    let mut ended = false;
    for l in facts.lines().filter_map(|l| l.strip_prefix("PROBE ")) {
        if let Some(name) = l.strip_prefix("BSTTOOL ") {
            found.push((name.to_string(), None, None));
            in_version = false;
        } else if l == "BSTVER" {
            in_version = true;
        } else if l == "BSTEND" {
            ended = true;
        } else if let Some(last) = found.last_mut() {
            let slot = if in_version { &mut last.2 } else { &mut last.1 };
            if slot.is_none() && !l.trim().is_empty() {
                *slot = Some(l.trim().to_string());
            }
        }
    }
    if !ended {
        return Some((
            "FAIL",
            format!("the login shell `{shell} -l` that --build runs install and build in did not answer (it failed or took over 30 s)"),
        ));
    }
    let missing: Vec<&str> = tools.iter().filter(|t| !found.iter().any(|(n, p, _)| n == *t && p.is_some())).map(String::as_str).collect();
    let present: Vec<String> = found
        .iter()
        .filter(|(n, _, _)| tools.contains(n))
        .filter_map(|(name, path, version)| {
            let path = path.as_deref()?;
            let at = if path == name { "a shell builtin or function" } else { path };
            Some(match version {
                Some(v) => format!("{name} {v} ({at})"),
                None => format!("{name} ({at})"),
            })
        })
        .collect();
    let mut detail = if missing.is_empty() {
        format!("{} in the login shell `{shell} -l`", present.join(", "))
    } else {
        let (it, its) = if missing.len() == 1 { ("it", "its") } else { ("them", "their") };
        let mut d = format!(
            "{} not found in the login shell `{shell} -l` that --build runs install and build in: install {it} on the server, or add {its} folder to PATH in that shell's login profile (e.g. ~/.profile)",
            missing.join(", ")
        );
        if !present.is_empty() {
            d.push_str(&format!("; found {}", present.join(", ")));
        }
        d
    };
    for n in notes {
        detail.push_str("; ");
        detail.push_str(n);
    }
    Some((if missing.is_empty() { "PASS" } else { "FAIL" }, detail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_word_skips_assignments_and_cd_steps() {
        let w = |s: &str| command_word(s);
        let tool = |s: &str| Some(Word::Tool(s.into()));
        assert_eq!(w("pnpm install --frozen-lockfile"), tool("pnpm"));
        assert_eq!(w("  NODE_ENV=production CI=1 node build.js"), tool("node"));
        assert_eq!(w("cd apps/web && pnpm build"), tool("pnpm"));
        assert_eq!(w("cd 'my app'; cd sub && \"yarn\" build"), tool("yarn"));
        assert_eq!(w("make -j2 | tee log"), tool("make"));
        assert_eq!(w("/usr/local/bin/just build"), tool("/usr/local/bin/just"));
        assert_eq!(w("./scripts/build.sh"), Some(Word::InRelease("./scripts/build.sh".into())));
        assert_eq!(w("if [ -f pnpm-lock.yaml ]; then pnpm i; fi"), Some(Word::Construct("if".into())));
        assert_eq!(w("(cd x && npm ci)"), Some(Word::Construct("(".into())));
        assert_eq!(w("a.b=1 x"), tool("a.b=1"), "not an assignment sh accepts");
        assert_eq!(w(""), None);
        assert_eq!(w("cd x"), None);
    }

    #[test]
    fn the_probe_output_becomes_one_row() {
        let tools: Vec<String> = vec!["pnpm".into(), "node".into()];
        let facts = "LOGIN_SHELL /bin/bash\nPROBE motd noise\nPROBE BSTTOOL pnpm\nPROBE BSTVER\nPROBE BSTTOOL node\nPROBE /usr/bin/node\nPROBE BSTVER\nPROBE v20.1.0\nPROBE BSTEND\n";
        let (r, d) = build_tools_row(&tools, &[], facts).unwrap();
        assert_eq!(r, "FAIL");
        assert_eq!(d, "pnpm not found in the login shell `/bin/bash -l` that --build runs install and build in: install it on the server, or add its folder to PATH in that shell's login profile (e.g. ~/.profile); found node v20.1.0 (/usr/bin/node)");
        let (r, _) = build_tools_row(&tools, &[], "LOGIN_SHELL /bin/sh\n").unwrap();
        assert_eq!(r, "FAIL", "no answer is no pass");
        assert_eq!(build_tools_row(&[], &[], ""), None);
    }
}
