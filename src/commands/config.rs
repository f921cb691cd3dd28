//! `bst config show|validate`: what bst will actually use, after `[defaults]`, path
//! expansion and validation. targets.toml holds no secrets, and none are read here.

use std::path::Path;

use serde_json::json;

use crate::config::Config;
use crate::error::Error;
use crate::report::Printer;
use crate::settings::{self, Health, Host, Scope, Target};

fn health_text(h: &Health) -> String {
    match h {
        Health::Http { host, port, path, status, body_contains } => format!(
            "GET http://{}:{port}{path} -> {status}{}",
            crate::service::shown(host),
            body_contains.as_ref().map_or(String::new(), |b| format!(", body contains {b:?}"))
        ),
        Health::Redis { host, port } => format!("redis PING {}:{port}", crate::service::shown(host)),
    }
}

/// `origins`: where each key's value came from (target, `[defaults]`, both, built-in).
pub fn show(p: &Printer, t: &Target, origins: Option<&std::collections::BTreeMap<String, &'static str>>) -> anyhow::Result<()> {
    let from = |k: &str| origins.and_then(|o| o.get(k)).copied().unwrap_or("built-in default");
    let (transport, auth, known_hosts) = match &t.host {
        Host::Local => ("local".to_string(), "-".to_string(), "-".to_string()),
        Host::Ssh(s) => (
            format!(
                "ssh {}@{}:{}{}",
                s.user,
                s.host,
                s.port,
                s.proxy_jump
                    .as_ref()
                    .map(|j| format!(" via {j}"))
                    .or_else(|| s.proxy_command.as_ref().map(|c| format!(" via ProxyCommand `{c}`")))
                    .unwrap_or_default()
            ),
            if s.identity_files.is_empty() {
                format!("{}~/.ssh/id_rsa, id_ecdsa, id_ed25519", if s.identities_only || !s.use_agent { "" } else { "ssh-agent, then " })
            } else {
                format!(
                    "{}{}",
                    if s.identities_only || !s.use_agent { "" } else { "ssh-agent, then " },
                    s.identity_files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
                )
            },
            s.known_hosts.iter().chain(&s.global_known_hosts).map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
        ),
    };
    let ssh = match &t.host {
        Host::Local => serde_json::Value::Null,
        Host::Ssh(s) => json!({
            "host": s.host, "port": s.port, "user": s.user,
            "identity_files": s.identity_files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "known_hosts": s.known_hosts.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "global_known_hosts": s.global_known_hosts.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "proxy_jump": s.proxy_jump, "proxy_command": s.proxy_command, "host_key_alias": s.host_key_alias,
            "settings": s.origins.iter().map(|(k, v, at)| json!({"setting": k, "value": v, "from": at})).collect::<Vec<_>>(),
            "not_used": s.ignored.iter().map(|(k, at)| json!({"directive": k, "at": at})).collect::<Vec<_>>(),
        }),
    };
    let services: Vec<serde_json::Value> = t
        .services
        .iter()
        .map(|s| {
            json!({"name": s.name, "unit": s.unit, "scope": if s.scope == Scope::User { "user" } else { "system" }, "sudo": s.sudo,
                "health": s.health.as_ref().map(health_text)})
        })
        .collect();
    let doc = json!({
        "schema_version": 1, "target": t.name, "transport": transport, "identity": auth, "known_hosts": known_hosts,
        "base": t.base, "source": t.source.display().to_string(), "keep_releases": t.keep_releases,
        "shared_files": t.shared_files, "shared_dirs": t.shared_dirs, "exclude": t.exclude, "install": t.install, "build": t.build,
        "restart": t.restart, "health_timeout_ms": u64::try_from(t.health_timeout.as_millis()).unwrap_or(u64::MAX),
        "confirm_margin_ms": u64::try_from(t.confirm_margin.as_millis()).unwrap_or(u64::MAX),
        "settle_ms": u64::try_from(t.settle.as_millis()).unwrap_or(u64::MAX),
        "forbidden_paths": t.forbidden_paths, "env_file": format!("{}/shared/{}", t.base, t.env_file),
        "env_dialect": t.env_dialect.name(), "env_backups_keep": t.env_backups_keep, "seed_from_siblings": t.seed_from_siblings,
        "required_env": t.required_env, "expect_env": t.expect_env.iter().map(|(k, v)| json!({"key": k, "value": v})).collect::<Vec<_>>(),
        "services": services,
        "ssh": ssh,
        "origins": origins,
    });
    if p.json {
        p.json(&doc);
        return Ok(());
    }
    let list = |v: &[String]| if v.is_empty() { "-".to_string() } else { v.join(", ") };
    p.out(format!("target          {}", t.name));
    p.out(format!("transport       {transport}"));
    p.out(format!("identity        {auth}"));
    p.out(format!("known_hosts     {known_hosts}"));
    if let Host::Ssh(s) = &t.host {
        for (k, v, at) in &s.origins {
            p.out(format!("  ssh {k:<22} {v}  ({at})"));
        }
        for (k, at) in &s.ignored {
            p.out(format!("  ssh {k:<22} not used by bst  ({at})"));
        }
    }
    p.out(format!("base            {}  ({})", t.base, from("base")));
    p.out(format!("source          {}  ({})", t.source.display(), from("source")));
    p.out(format!("keep_releases   {}  ({})", t.keep_releases, from("keep_releases")));
    p.out(format!("shared_files    {}  ({})", list(&t.shared_files), from("shared_files")));
    p.out(format!("shared_dirs     {}  ({})", list(&t.shared_dirs), from("shared_dirs")));
    p.out(format!("exclude         {}  ({})", list(&t.exclude), from("exclude")));
    p.out(format!("install         {}  ({})", t.install.as_deref().unwrap_or("-"), from("install")));
    p.out(format!("build           {}  ({})", t.build.as_deref().unwrap_or("-"), from("build")));
    p.out(format!("restart         {}  ({})", list(&t.restart), from("restart")));
    p.out(format!("health_timeout  {}s  ({})", t.health_timeout.as_secs_f64(), from("health_timeout")));
    p.out(format!("settle          {}s  ({})", t.settle.as_secs_f64(), from("settle")));
    p.out(format!("confirm_margin  {}s  ({})", t.confirm_margin.as_secs_f64(), from("confirm_margin")));
    p.out(format!("forbidden_paths {}  ({})", list(&t.forbidden_paths), from("forbidden_paths")));
    p.out(format!("env_file        {}/shared/{}  ({})", t.base, t.env_file, from("env_file")));
    let dialect_from = match from("env_dialect") {
        "built-in default" if t.services.is_empty() => "built-in default: no services declared",
        "built-in default" => "built-in default: the target declares services",
        o => o,
    };
    p.out(format!("env_dialect     {}  ({dialect_from})", t.env_dialect.name()));
    p.out(format!("env_backups_keep {}  ({})", t.env_backups_keep, from("env_backups_keep")));
    p.out(format!("seed_from_siblings {}  ({})", t.seed_from_siblings, from("seed_from_siblings")));
    p.out(format!("required_env    {}  ({})", list(&t.required_env), from("required_env")));
    let expect: Vec<String> = t.expect_env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    p.out(format!("expect_env      {}  ({})", list(&expect), from("expect_env")));
    for s in &t.services {
        p.out(format!(
            "service {:<8} {} ({}{}){}",
            s.name,
            s.unit,
            if s.scope == Scope::User { "user" } else { "system" },
            if s.sudo { ", sudo" } else { "" },
            s.health.as_ref().map_or(String::new(), |h| format!("  health: {}", health_text(h)))
        ));
    }
    Ok(())
}

pub fn validate(p: &Printer, path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for name in config.targets.keys() {
        match settings::resolve_target(&config, name) {
            Ok(_) => ok.push(name.clone()),
            Err(e) => bad.push(format!("{e:#}")),
        }
    }
    for e in &bad {
        p.detail(format!("error: {e}"));
    }
    p.out(format!(
        "{}: {} target(s) valid{}",
        path.display(),
        ok.len(),
        if bad.is_empty() { String::new() } else { format!(", {} invalid", bad.len()) }
    ));
    p.json(&json!({"schema_version": 1, "config": path.display().to_string(), "valid": ok, "errors": bad}));
    if bad.is_empty() {
        Ok(())
    } else {
        Err(Error::Usage(format!("{} has {} invalid target(s)", path.display(), bad.len())).into())
    }
}
