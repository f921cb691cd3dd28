//! `bst env check|set|unset|keys|compare`: the `.env` gates and edits. Values are secrets:
//! they are read into memory, compared, written back through stdin, and never printed,
//! logged or put into reports, at any verbosity.

use std::io::{IsTerminal, Read};
use std::path::Path;

use serde::Serialize;
use serde_json::json;

use super::gate::{baseline, read_env, read_env_counted, shared_rel};
use super::lock::{self, Acquired};
use super::Audit;
use crate::config::Config;
use crate::dotenv::{hidden_reasons, EnvFile, Refused};
use crate::error::Error;
use crate::remote;
use crate::report::{md_cell, Gate, Printer};
use crate::settings::{self, Globals, Target};
use crate::transport;

pub fn check(target: &Target, globals: &Globals, p: &Printer, reports: &Path) -> anyhow::Result<()> {
    let mut t = transport::connect(&target.host, globals)?;
    let rel = shared_rel(target);
    let (file, backups) = read_env_counted(&mut *t, target, &rel)?;
    let (pass, keys, expects) = baseline(file.as_ref(), target);
    let path = format!("{}/{rel}", target.base);
    if file.is_none() {
        p.out(format!("{path}: missing"));
        p.status(format!("  create it with: bst env set {} KEY   (the value is read from stdin)", target.name));
    }
    p.out(format!("{path}: read as {}; {}", target.env_dialect.name(), backups_text(backups, target)));
    if target.required_env.is_empty() && target.expect_env.is_empty() {
        p.warn(format!("target `{}` declares no required_env or expect_env", target.name));
    }
    let mut md = format!(
        "# Env baseline: {}\n\n- file: `{path}`\n- dialect: {}\n- backups: {}\n- host: {}\n- checked: {}\n\n| key | status | notes |\n|---|---|---|\n",
        target.name,
        target.env_dialect.name(),
        backups_text(backups, target),
        target.host_label(),
        crate::release::rfc3339(crate::release::now_unix())
    );
    for k in &keys {
        p.out(format!(
            "{:<32} {}{}",
            k.key,
            k.status,
            if k.hidden.is_empty() { String::new() } else { format!(" ({})", k.hidden.join(", ")) }
        ));
        md.push_str(&format!("| {} | {} | {} |\n", md_cell(&k.key), k.status, k.hidden.join(", ")));
    }
    for e in &expects {
        p.out(format!("{:<32} expect `{}`: {}", e.key, e.expected, e.status));
        md.push_str(&format!("| {} | expect `{}`: {} | |\n", md_cell(&e.key), md_cell(&e.expected), e.status));
    }
    let doc = json!({"target": target.name, "host": target.host_label(), "file": path, "file_exists": file.is_some(), "dialect": target.env_dialect.name(),
        "backups": backups, "backups_keep": target.env_backups_keep, "keys": keys, "expect": expects});
    Gate { name: "env-baseline", key: "ENV_BASELINE_RESULT", reports }.finish(p, pass, doc, &md)
}

pub fn keys(target: &Target, globals: &Globals, p: &Printer) -> anyhow::Result<()> {
    let mut t = transport::connect(&target.host, globals)?;
    let rel = shared_rel(target);
    let (file, backups) = read_env_counted(&mut *t, target, &rel)?;
    let file = file.ok_or_else(|| {
        Error::Failed(format!(
            "{}/{rel} does not exist\n  create it with: bst env set {} KEY   (the value is read from stdin)",
            target.base, target.name
        ))
    })?;
    let keys = file.keys();
    for k in &keys {
        p.out(k);
    }
    p.status(format!("{}/{rel}: {}", target.base, backups_text(backups, target)));
    p.json(&json!({"schema_version": 1, "target": target.name, "file": format!("{}/{rel}", target.base), "keys": keys,
        "backups": backups, "backups_keep": target.env_backups_keep}));
    Ok(())
}

fn backups_text(n: usize, target: &Target) -> String {
    format!("{n} backup{} (env set keeps the newest {})", if n == 1 { "" } else { "s" }, target.env_backups_keep)
}

/// Reads a secret value: from a pipe as [`piped_value`] decodes it, from a terminal with
/// echo off. Never from argv, where `ps` and shell history would see it.
fn read_secret(key: &str) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        crate::report::prompt(format_args!("value for {key} (input hidden, then Enter): "));
        return Ok(drop_line_end(&crate::platform::read_hidden_line()?).to_string());
    }
    let mut bytes = Vec::new();
    stdin.lock().read_to_end(&mut bytes)?;
    piped_value(&bytes).map_err(|why| {
        Error::Usage(format!("refusing the value for {key}: stdin is {why} (values are never shown); nothing was written")).into()
    })
}

/// The value a pipe carries: its bytes as is, but for what the sending shell adds. One line
/// end at the very end is dropped, `\n` or `\r\n` (what `echo` and PowerShell's `|` append).
/// A leading byte order mark is dropped too: PowerShell encodes what it pipes to a program
/// with `$OutputEncoding`, and an encoding with a preamble (`[Text.Encoding]::UTF8`) sends a
/// UTF-8 BOM first, `[Text.Encoding]::Unicode` UTF-16 with its BOM, which is decoded. A BOM
/// never belongs to a value (`env check` reports one as a hidden character). Anything else
/// must be UTF-8.
fn piped_value(bytes: &[u8]) -> Result<String, &'static str> {
    let utf16 = |b: &[u8], unit: fn([u8; 2]) -> u16| -> Result<String, &'static str> {
        if b.len() % 2 != 0 {
            return Err("UTF-16 with an odd number of bytes");
        }
        String::from_utf16(&b.chunks_exact(2).map(|c| unit([c[0], c[1]])).collect::<Vec<_>>()).map_err(|_| "invalid UTF-16")
    };
    let text = if let Some(rest) = bytes.strip_prefix(b"\xEF\xBB\xBF") {
        std::str::from_utf8(rest).map_err(|_| "not UTF-8")?.to_string()
    } else if let Some(rest) = bytes.strip_prefix(b"\xFF\xFE") {
        utf16(rest, u16::from_le_bytes)?
    } else if let Some(rest) = bytes.strip_prefix(b"\xFE\xFF") {
        utf16(rest, u16::from_be_bytes)?
    } else {
        std::str::from_utf8(bytes).map_err(|_| "not UTF-8")?.to_string()
    };
    Ok(drop_line_end(&text).to_string())
}

fn drop_line_end(v: &str) -> &str {
    v.strip_suffix('\n').map_or(v, |v| v.strip_suffix('\r').unwrap_or(v))
}

pub fn edit(target: &Target, globals: &Globals, p: &Printer, key: &str, value: Option<String>) -> anyhow::Result<()> {
    if !settings::valid_env_key(key) {
        return Err(Error::Usage(settings::invalid_env_key(key)).into());
    }
    if let Some(v) = &value {
        if v.is_empty() {
            if target.required_env.iter().any(|k| k == key) {
                return Err(Error::Usage(format!(
                    "refusing an empty value for {key}: target `{}` lists it in required_env, which must be non-empty; nothing was written",
                    target.name
                ))
                .into());
            }
            p.warn(format!("{key} is set to an empty value (stdin was empty)"));
        }
        let why = hidden_reasons(v);
        if !why.is_empty() {
            return Err(Error::Usage(format!("refusing the value for {key}: it has {} (values are never shown)", why.join(", "))).into());
        }
        if v.contains('\0') {
            return Err(Error::Usage(format!("refusing the value for {key}: it contains a NUL byte")).into());
        }
    }
    let command = if value.is_some() { "env set" } else { "env unset" };
    let mut t = transport::connect(&target.host, globals)?;
    let (held, _) = match lock::acquire(&mut *t, target, command, true, p)? {
        Acquired::Held(h, s) => (h, s),
        Acquired::NoBase => unreachable!("create = true"),
    };
    let result = (|| -> anyhow::Result<(Option<String>, usize)> {
        let rel = shared_rel(target);
        let mut file = read_env(&mut *t, target, &rel)?.unwrap_or_else(|| EnvFile::empty(target.env_dialect));
        let refused = |r: Refused| {
            Error::Usage(format!(
                "refusing to {command} {key} in {}/{rel}: {} (values are never shown); nothing was written",
                target.base, r.0
            ))
        };
        match &value {
            Some(v) => file.set(key, v).map_err(refused)?,
            None => {
                if !file.unset(key).map_err(refused)? {
                    return Err(Error::Failed(format!("{key} is not set in {}/{rel}", target.base)).into());
                }
            }
        }
        let content = file.bytes().to_vec();
        let stamp = crate::release::format_id(crate::release::now_unix());
        let mut audit = Audit::new(command, &target.name, "ok");
        audit.error = None;
        let line = json!({"at": audit.at, "who": audit.who, "command": command, "target": target.name, "file": format!("{}/{rel}", target.base), "key": key, "result": "ok"}).to_string();
        let out = t.run_with_input(
            &remote::write_env(&target.base, &target.env_file, &stamp, target.env_backups_keep, &line, &held.token),
            &mut |w| {
                w.write_all(&content)?;
                Ok(())
            },
        )?;
        if out.status != 0 {
            return Err(Error::Failed(format!("writing {}/{rel} failed: {}", target.base, out.stderr_str())).into());
        }
        let reply = out.stdout_str();
        let pruned = reply.lines().find_map(|l| l.strip_prefix("PRUNED ")).and_then(|n| n.trim().parse::<usize>().ok()).unwrap_or(0);
        Ok((reply.lines().find_map(|l| l.strip_prefix("BACKUP ")).map(str::to_string), pruned))
    })();
    match result {
        Ok((backup, pruned)) => {
            let verb = if value.is_some() { "set" } else { "removed" };
            p.out(format!("{}: {verb} {key} in {}/shared/{}", target.name, target.base, target.env_file));
            if let Some(b) = &backup {
                p.status(format!("backup: {b}"));
            }
            if pruned > 0 {
                p.status(format!(
                    "removed {pruned} old backup{} (env_backups_keep = {})",
                    if pruned == 1 { "" } else { "s" },
                    target.env_backups_keep
                ));
            }
            p.json(&json!({"schema_version": 1, "target": target.name, "key": key, "action": verb, "backup": backup, "backups_pruned": pruned}));
            Ok(())
        }
        Err(e) => {
            lock::release(&mut *t, target, &held, p);
            Err(e)
        }
    }
}

pub fn read_value_for_set(key: &str) -> anyhow::Result<String> {
    read_secret(key)
}

/// `target` or `target:path/relative/to/base`.
pub struct Side {
    pub target: String,
    pub path: Option<String>,
}

pub fn parse_side(s: &str) -> anyhow::Result<Side> {
    let (t, path) = match s.split_once(':') {
        Some((t, p)) => (t, Some(p.to_string())),
        None => (s, None),
    };
    if !crate::config::valid_target_name(t) {
        return Err(Error::Usage(format!("invalid target name `{t}` in `{s}`")).into());
    }
    if let Some(p) = &path {
        settings::check_relative(p).map_err(|why| Error::Usage(format!("invalid path `{p}` in `{s}`: {why}")))?;
    }
    Ok(Side { target: t.to_string(), path })
}

#[derive(Serialize)]
struct Parity {
    key: String,
    /// SAME | DIFFERENT | MISSING
    status: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    hidden: Vec<String>,
}

pub fn compare(
    config: &Config,
    globals: &Globals,
    p: &Printer,
    left: &Side,
    right: &Side,
    keys: &[String],
    reports: &Path,
) -> anyhow::Result<()> {
    let mut files = Vec::new();
    for side in [left, right] {
        let target = settings::resolve_target(config, &side.target)?;
        let rel = side.path.clone().unwrap_or_else(|| shared_rel(&target));
        let mut t = transport::connect(&target.host, globals)?;
        let file = read_env(&mut *t, &target, &rel)?;
        files.push((format!("{}:{}/{rel}", target.name, target.base), file));
    }
    let mut rows = Vec::new();
    for k in keys {
        let a = files[0].1.as_ref().and_then(|f| f.get(k));
        let b = files[1].1.as_ref().and_then(|f| f.get(k));
        let mut hidden = Vec::new();
        for (side, e) in [("left", a), ("right", b)] {
            if let Some(e) = e {
                if !e.hidden.is_empty() {
                    hidden.push(format!("{side}: {}", e.hidden.join(", ")));
                }
            }
        }
        let status = match (a, b) {
            (Some(a), Some(b)) if !a.value.is_empty() && a.value == b.value => "SAME",
            (Some(_), Some(_)) => "DIFFERENT",
            _ => "MISSING",
        };
        rows.push(Parity { key: k.clone(), status, hidden });
    }
    let pass = rows.iter().all(|r| r.status == "SAME" && r.hidden.is_empty());
    let mut md = format!(
        "# Env parity\n\n- left: `{}`\n- right: `{}`\n\n| key | result | hidden characters |\n|---|---|---|\n",
        files[0].0, files[1].0
    );
    for r in &rows {
        p.out(format!(
            "{:<32} {}{}",
            r.key,
            r.status,
            if r.hidden.is_empty() { String::new() } else { format!(" (hidden characters: {})", r.hidden.join("; ")) }
        ));
        md.push_str(&format!("| {} | {} | {} |\n", md_cell(&r.key), r.status, md_cell(&r.hidden.join("; "))));
    }
    let doc = json!({"left": files[0].0, "right": files[1].0, "left_exists": files[0].1.is_some(), "right_exists": files[1].1.is_some(), "keys": rows});
    Gate { name: "env-parity", key: "ENV_PARITY_RESULT", reports }.finish(p, pass, doc, &md)
}

#[cfg(test)]
mod tests {
    use super::piped_value;

    /// What `echo`, `printf` and PowerShell 5.1/7 (`"v" | bst env set …`,
    /// `Get-Content .\token.txt | …`) send for the value `tok-é`.
    #[test]
    fn a_piped_value_loses_what_the_shell_adds_and_nothing_else() {
        let utf16le: Vec<u8> = [0xFF, 0xFE].into_iter().chain("tok-é\r\n".encode_utf16().flat_map(u16::to_le_bytes)).collect();
        let utf16be: Vec<u8> = [0xFE, 0xFF].into_iter().chain("tok-é\r\n".encode_utf16().flat_map(u16::to_be_bytes)).collect();
        let sent: [&[u8]; 7] = [
            b"tok-\xC3\xA9",
            b"tok-\xC3\xA9\n",
            b"tok-\xC3\xA9\r\n",
            b"\xEF\xBB\xBFtok-\xC3\xA9\r\n",
            b"\xEF\xBB\xBFtok-\xC3\xA9",
            &utf16le,
            &utf16be,
        ];
        for bytes in sent {
            assert_eq!(piped_value(bytes).as_deref(), Ok("tok-é"), "{bytes:?}");
        }
        // Only one line end is the shell's: a second one, inner line ends, a BOM inside and
        // whitespace stay in the value, for `env set` to refuse or keep as its rules say.
        for (bytes, value) in [
            (&b"tok\r\n\r\n"[..], "tok\r\n"),
            (b"tok\n\n", "tok\n"),
            (b"a\nb\n", "a\nb"),
            (b"tok \r\n", "tok "),
            (b"\r", "\r"),
            (b"t\xEF\xBB\xBFok", "t\u{FEFF}ok"),
            (b"\xEF\xBB\xBF\xEF\xBB\xBFtok", "\u{FEFF}tok"),
            (b"", ""),
            (b"\xEF\xBB\xBF\r\n", ""),
        ] {
            assert_eq!(piped_value(bytes).as_deref(), Ok(value), "{bytes:?}");
        }
        assert_eq!(piped_value(b"caf\xE9\n"), Err("not UTF-8"));
        assert_eq!(piped_value(b"\xEF\xBB\xBFcaf\xE9"), Err("not UTF-8"));
        assert_eq!(piped_value(b"\xFF\xFEt\x00o"), Err("UTF-16 with an odd number of bytes"));
        assert_eq!(piped_value(b"\xFF\xFE\x00\xD8"), Err("invalid UTF-16"));
    }
}
