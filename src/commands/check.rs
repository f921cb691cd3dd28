//! `bst check`: preflight before a deploy. Config, reachability, host key, the base (a real
//! directory, not a symlink, not at or under a forbidden path), writable, free disk, tools,
//! lock, env baseline, service units. Each item PASS/FAIL/SKIP, then `CHECK_RESULT`.

use std::path::Path;

use serde::Serialize;
use serde_json::json;

use super::env::{baseline, read_env};
use crate::error::Error;
use crate::report::{human_bytes, md_cell, Gate, Printer};
use crate::service;
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
    match transport::connect(target, globals) {
        Err(e) => {
            let (host_ok, key_ok) = match e.downcast_ref::<Error>() {
                Some(Error::HostKeyUnknown { .. } | Error::HostKeyChanged { .. }) => (true, false),
                Some(Error::Auth { .. }) => (true, true),
                _ => (false, false),
            };
            push("reachable", pf(host_ok), if host_ok { "TCP and SSH handshake ok".into() } else { format!("{e:#}") });
            push("host key", pf(key_ok), if key_ok { "known".into() } else { format!("{e:#}") });
            if host_ok && key_ok {
                push("auth", pf(false), format!("{e:#}"));
            }
            for c in ["base", "forbidden paths", "writable", "free disk", "tools", "lock", "env baseline", "service units"] {
                items.push(Item { check: c, result: "SKIP", detail: "not reachable".into() });
            }
        }
        Ok(mut t) => {
            push("reachable", pf(true), target.host_label());
            if target.host == crate::settings::Host::Local {
                push("host key", "SKIP", "local transport".into());
            } else {
                push("host key", "PASS", "known".into());
            }
            let units: Vec<(String, String)> = target.services.iter().map(|s| (s.name.clone(), service::load_state_cmd(s))).collect();
            let out = t.run(&crate::remote::preflight(&target.base, &units, &target.forbidden_paths))?;
            let facts = out.stdout_str();
            let fact = |k: &str| facts.lines().find_map(|l| l.strip_prefix(k).map(|v| v.trim_start().to_string()));
            let base_kind = fact("BASE ").unwrap_or_default();
            let real = fact("REAL ").unwrap_or_default();
            let base_ok = base_kind == "dir" || base_kind == "absent";
            push(
                "base",
                pf(base_ok),
                match base_kind.as_str() {
                    "dir" => format!("{} is a directory", target.base),
                    "absent" => format!("{} does not exist yet; the first deploy creates it", target.base),
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
            push("writable", pf(fact("WRITABLE ").as_deref() == Some("yes")), format!("{existing} writable by {}", target.host_label()));
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
                let file = read_env(&mut *t, target, &super::env::shared_rel(target))?;
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
