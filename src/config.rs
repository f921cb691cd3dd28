//! `targets.toml`: strict serde structs (unknown keys are errors), `[defaults]` merged under
//! every target, and errors that name the file, line and column.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Every per-target key. All optional here so `[defaults]` and targets share one shape;
/// required-ness is checked when a target is resolved.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub identity_file: Option<String>,
    pub known_hosts: Option<String>,
    pub base: Option<String>,
    pub source: Option<String>,
    pub keep_releases: Option<usize>,
    pub shared_files: Option<Vec<String>>,
    pub shared_dirs: Option<Vec<String>>,
    pub exclude: Option<Vec<String>>,
    /// gitignore-style patterns of files that ship although they look like secrets
    /// (`.env*`, `*.pem`, `*.key`, private keys); see [`crate::workspace::withheld`].
    pub include: Option<Vec<String>>,
    /// Ship `source` by walking it although it is not inside a git work tree.
    pub source_is_not_git: Option<bool>,
    pub install: Option<String>,
    pub build: Option<String>,
    /// Services restarted (and health-checked) after each deploy's switch.
    pub restart: Option<Vec<String>>,
    /// `30s`, `2m`, `500ms`.
    pub health_timeout: Option<String>,
    /// How long past `health_timeout` the server's watchdog waits for the client to confirm a
    /// gated switch before it switches back on its own.
    pub confirm_margin: Option<String>,
    /// How long a started or restarted unit must stay up (same main pid, same `NRestarts`)
    /// before it counts as started: a unit that dies every second is not healthy.
    pub settle: Option<String>,
    pub services: Option<BTreeMap<String, RawService>>,
    /// Paths a base must never be at or under, even through a symlink (retired aliases).
    pub forbidden_paths: Option<Vec<String>>,
    /// The env file checked and edited by `bst env`, relative to `<base>/shared`.
    pub env_file: Option<String>,
    pub required_env: Option<Vec<String>>,
    pub expect_env: Option<BTreeMap<String, String>>,
    /// Whose `.env` rules the env file follows: `systemd` (`EnvironmentFile=`), `dotenv` (the
    /// npm package) or `node` (`--env-file`). Default: `systemd` when the target declares
    /// services, else `dotenv`.
    pub env_dialect: Option<String>,
    /// How many `.bak.*` copies of the env file `env set`/`unset` keep (default 10).
    pub env_backups_keep: Option<usize>,
    /// The first deploy may start from another target's pristine copy on the same server
    /// (default true); see `commands::deploy` and `settings::siblings`.
    pub seed_from_siblings: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub unit: String,
    /// `system` (default) or `user` (`systemctl --user`, with lingering).
    pub scope: Option<String>,
    /// Run systemctl through `sudo -n`.
    pub sudo: Option<bool>,
    pub health: Option<RawHealth>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    /// `http://127.0.0.1:4100/health`, fetched from the server side of the SSH connection.
    pub http: Option<String>,
    /// Expected HTTP status (default 200).
    pub status: Option<u16>,
    pub body_contains: Option<String>,
    /// `127.0.0.1:6379`: Redis `PING` must answer `PONG`.
    pub redis: Option<String>,
}

/// `[defaults]` first, then the target's own, each once: a target that adds a forbidden path
/// must not drop the team-wide ones.
fn union(defaults: Option<Vec<String>>, own: Option<Vec<String>>) -> Option<Vec<String>> {
    match (defaults, own) {
        (Some(mut all), Some(own)) => {
            for v in own {
                if !all.contains(&v) {
                    all.push(v);
                }
            }
            Some(all)
        }
        (d, o) => o.or(d),
    }
}

impl RawTarget {
    /// Safety lists (`forbidden_paths`, `required_env`, `shared_files`, `shared_dirs`,
    /// `exclude`) are unions of `[defaults]` and the target's own; `services` merge by name
    /// (the target's definition of a name wins); every other key of the target overrides.
    fn merged_over(self, defaults: &RawTarget) -> RawTarget {
        let d = defaults.clone();
        let services = match (d.services, self.services) {
            (Some(mut all), Some(own)) => {
                all.extend(own);
                Some(all)
            }
            (d, o) => o.or(d),
        };
        RawTarget {
            host: self.host.or(d.host),
            port: self.port.or(d.port),
            user: self.user.or(d.user),
            identity_file: self.identity_file.or(d.identity_file),
            known_hosts: self.known_hosts.or(d.known_hosts),
            base: self.base.or(d.base),
            source: self.source.or(d.source),
            keep_releases: self.keep_releases.or(d.keep_releases),
            shared_files: union(d.shared_files, self.shared_files),
            shared_dirs: union(d.shared_dirs, self.shared_dirs),
            exclude: union(d.exclude, self.exclude),
            include: union(d.include, self.include),
            source_is_not_git: self.source_is_not_git.or(d.source_is_not_git),
            install: self.install.or(d.install),
            build: self.build.or(d.build),
            restart: self.restart.or(d.restart),
            health_timeout: self.health_timeout.or(d.health_timeout),
            confirm_margin: self.confirm_margin.or(d.confirm_margin),
            settle: self.settle.or(d.settle),
            services,
            forbidden_paths: union(d.forbidden_paths, self.forbidden_paths),
            env_file: self.env_file.or(d.env_file),
            required_env: union(d.required_env, self.required_env),
            expect_env: self.expect_env.or(d.expect_env),
            env_dialect: self.env_dialect.or(d.env_dialect),
            env_backups_keep: self.env_backups_keep.or(d.env_backups_keep),
            seed_from_siblings: self.seed_from_siblings.or(d.seed_from_siblings),
        }
    }
}

/// Where each key of a target comes from: its own table, `[defaults]`, both (the unions and
/// `services`), or neither (bst's built-in default).
fn origins(own: &RawTarget, defaults: &RawTarget) -> BTreeMap<String, &'static str> {
    const MERGED: [&str; 7] = ["forbidden_paths", "required_env", "shared_files", "shared_dirs", "exclude", "include", "services"];
    let (o, d) = (serde_json::to_value(own).unwrap_or_default(), serde_json::to_value(defaults).unwrap_or_default());
    let Some(keys) = o.as_object() else { return BTreeMap::new() };
    keys.iter()
        .map(|(k, v)| {
            let origin = match (!v.is_null(), !d[k.as_str()].is_null()) {
                (true, true) if MERGED.contains(&k.as_str()) => "[defaults] + target",
                (true, _) => "target",
                (false, true) => "[defaults]",
                (false, false) => "built-in default",
            };
            (k.clone(), origin)
        })
        .collect()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    defaults: RawTarget,
    #[serde(default)]
    targets: BTreeMap<String, RawTarget>,
}

#[derive(Debug)]
pub struct Config {
    pub path: PathBuf,
    /// Targets with `[defaults]` already merged in.
    pub targets: BTreeMap<String, RawTarget>,
    /// Per target, where each key's value came from (`bst config show`).
    pub origins: BTreeMap<String, BTreeMap<String, &'static str>>,
    /// Where each key was written, taken from the parsed document: `(table, key)` →
    /// (line, col) for the tables `defaults` and `targets.NAME`; key `""` is the table itself.
    /// Messages found after parsing point at a key without searching the text again.
    positions: BTreeMap<(String, String), (usize, usize)>,
}

impl Config {
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Usage(format!("cannot read config {}: {e}", path.display())))?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> anyhow::Result<Config> {
        let shown = path.display().to_string();
        let doc = toml_edit::ImDocument::parse(text).map_err(|e| {
            let (line, col) = e.span().map_or((1, 1), |s| line_col(text, s.start));
            Error::Config { path: shown.clone(), line, col, msg: e.message().trim().to_string() }
        })?;
        let at = |offset: usize, msg: String| {
            let (line, col) = line_col(text, offset);
            Error::Config { path: shown.clone(), line, col, msg }
        };
        // Every mistake at once: fixing one to be told of the next is the slow way.
        let problems: Vec<Error> = crate::schema::check(&doc).into_iter().map(|(offset, msg)| at(offset, msg)).collect();
        if !problems.is_empty() {
            return Err(all_of(problems).into());
        }
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let (line, col) = e.span().map_or((1, 1), |s| line_col(text, s.start));
            Error::Config { path: path.display().to_string(), line, col, msg: e.message().trim().to_string() }
        })?;
        let declared = doc.as_table().get("targets").and_then(toml_edit::Item::as_table_like);
        for name in raw.targets.keys() {
            if !valid_target_name(name) || RESERVED_NAMES.contains(&name.to_ascii_lowercase().as_str()) {
                let msg = if RESERVED_NAMES.contains(&name.to_ascii_lowercase().as_str()) {
                    format!("invalid target name `{name}`: it is a bst command; rename the target")
                } else {
                    format!("invalid target name `{name}`: use letters, digits, `-`, `_` and `.`")
                };
                return Err(at(declared.map_or(0, |t| crate::schema::key_at(t, name)), msg).into());
            }
        }
        let positions = positions(&doc, text);
        let origins = raw.targets.iter().map(|(k, v)| (k.clone(), origins(v, &raw.defaults))).collect();
        let targets = raw.targets.into_iter().map(|(k, v)| (k, v.merged_over(&raw.defaults))).collect();
        Ok(Config { path: path.to_path_buf(), targets, origins, positions })
    }

    /// Where a key of a target was written: in its own table, else in `[defaults]`, which
    /// it inherits from. `None` for a key written in neither.
    pub fn key_at(&self, target: &str, key: &str) -> Option<(usize, usize)> {
        let get = |table: String| self.positions.get(&(table, key.to_string())).copied();
        get(format!("targets.{target}")).or_else(|| get("defaults".to_string()))
    }

    /// Where an error about a target's key points: the key ([`Self::key_at`]), else the
    /// target's own table.
    pub fn locate(&self, target: &str, key: &str) -> (usize, usize) {
        self.key_at(target, key).or_else(|| self.positions.get(&(format!("targets.{target}"), String::new())).copied()).unwrap_or((1, 1))
    }

    pub fn error_at(&self, target: &str, key: &str, msg: impl Into<String>) -> Error {
        let (line, col) = self.locate(target, key);
        Error::Config { path: self.path.display().to_string(), line, col, msg: msg.into() }
    }
}

/// Several problems as one error: the first at its position, each further one on a line of
/// its own with its own (the same shape as the schema check's).
pub fn all_of(mut errs: Vec<Error>) -> Error {
    let pos = |e: &Error| match e {
        Error::Config { line, col, .. } => (*line, *col),
        _ => (0, 0),
    };
    errs.sort_by_key(pos);
    errs.dedup_by(|a, b| a.to_string() == b.to_string());
    let n = errs.len();
    let mut it = errs.into_iter();
    let Some(first) = it.next() else { return Error::Usage("invalid target".into()) };
    let Error::Config { path, line, col, mut msg } = first else { return first };
    for e in it {
        msg.push_str(&format!("\n  {e}"));
    }
    if n > 1 {
        msg.push_str(&format!("\n  ({n} problems)"));
    }
    Error::Config { path, line, col, msg }
}

/// `bst <name> …` means a subcommand for these, so a target of that name could never be
/// reached for service actions (`bst list status`). Kept equal to the CLI's own list by a test
/// in `cli.rs`.
pub const RESERVED_NAMES: &[&str] =
    &["deploy", "list", "rollback", "prune", "unlock", "env", "drill", "check", "init", "config", "completions", "man", "help"];

pub fn valid_target_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// See [`Config::positions`]. A table's own position is its `[header]` where it has one, else
/// where its name is written (a dotted key, an inline table).
fn positions(doc: &toml_edit::ImDocument<&str>, text: &str) -> BTreeMap<(String, String), (usize, usize)> {
    use crate::schema::key_at;
    let mut out = BTreeMap::new();
    let root = doc.as_table();
    let mut tables: Vec<(String, usize, &dyn toml_edit::TableLike)> = Vec::new();
    if let Some(d) = root.get("defaults").and_then(toml_edit::Item::as_table_like) {
        tables.push(("defaults".into(), key_at(root, "defaults"), d));
    }
    if let Some(targets) = root.get("targets").and_then(toml_edit::Item::as_table_like) {
        for (name, item) in targets.iter() {
            if let Some(t) = item.as_table_like() {
                let header = item.as_table().and_then(toml_edit::Table::span).map_or_else(|| key_at(targets, name), |s| s.start);
                tables.push((format!("targets.{name}"), header, t));
            }
        }
    }
    for (name, header, t) in tables {
        out.insert((name.clone(), String::new()), line_col(text, header));
        for (key, _) in t.iter() {
            out.insert((name.clone(), key.to_string()), line_col(text, key_at(t, key)));
        }
    }
    out
}

/// `--config`, else `BST_CONFIG` (clap folds both into one value), else the nearest
/// `targets.toml` from the current directory upwards.
pub fn discover(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let cwd = std::env::current_dir()?;
    for dir in cwd.ancestors() {
        let candidate = dir.join("targets.toml");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(Error::Usage(format!(
        "no targets.toml in {} or any parent\n  run `bst init` here to write one, or pass --config <path> (or set BST_CONFIG)",
        cwd.display()
    ))
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(Path::new("targets.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn safety_lists_are_unions_and_services_merge_by_name() {
        let text = "[defaults]\nforbidden_paths = [\"/home/bonk/masterbst\"]\nrequired_env = [\"A\"]\nexclude = [\"*.log\"]\nshared_files = [\".env\"]\nshared_dirs = [\"s\"]\n\
            [defaults.services.redis]\nunit = \"redis-server.service\"\n[defaults.services.api]\nunit = \"old.service\"\n\
            [targets.a]\nhost = \"h\"\nforbidden_paths = [\"/srv/old\", \"/home/bonk/masterbst\"]\nrequired_env = [\"B\"]\nexclude = [\"tmp/\"]\n\
            shared_files = [\"apps/web/.env\"]\nshared_dirs = [\"t\"]\nkeep_releases = 2\n[targets.a.services.api]\nunit = \"api.service\"\n";
        let f = parse(text).unwrap();
        let a = &f.targets["a"];
        assert_eq!(a.forbidden_paths.as_deref().unwrap(), ["/home/bonk/masterbst", "/srv/old"]);
        assert_eq!(a.required_env.as_deref().unwrap(), ["A", "B"]);
        assert_eq!(a.exclude.as_deref().unwrap(), ["*.log", "tmp/"]);
        assert_eq!(a.shared_files.as_deref().unwrap(), [".env", "apps/web/.env"]);
        assert_eq!(a.shared_dirs.as_deref().unwrap(), ["s", "t"]);
        let services = a.services.as_ref().unwrap();
        assert_eq!(services["api"].unit, "api.service");
        assert_eq!(services["redis"].unit, "redis-server.service");
        assert_eq!(a.keep_releases, Some(2));
    }

    #[test]
    fn target_names_that_are_commands_are_refused_with_their_position() {
        let e = parse("[targets.a]\nhost = \"h\"\n[targets.list]\nhost = \"h\"\n").unwrap_err();
        assert_eq!(e, "targets.toml:3:10: invalid target name `list`: it is a bst command; rename the target");
        assert!(parse("[targets.Deploy]\nhost = \"h\"\n").unwrap_err().contains("it is a bst command"));
        assert!(parse("[targets.listing]\nhost = \"h\"\n").is_ok());
    }

    #[test]
    fn defaults_merge_under_targets() {
        let c = parse(
            "[defaults]\nkeep_releases = 3\nuser = \"bonk\"\n[targets.a]\nhost = \"h\"\nkeep_releases = 7\n[targets.b]\nhost = \"h\"\n",
        )
        .unwrap();
        assert_eq!(c.targets["a"].keep_releases, Some(7));
        assert_eq!(c.targets["b"].keep_releases, Some(3));
        assert_eq!(c.targets["b"].user.as_deref(), Some("bonk"));
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let e = parse("[targets.a]\nhost = \"h\"\nkeep_relases = 3\n").unwrap_err();
        assert!(e.starts_with("targets.toml:3:1:"), "{e}");
        assert!(e.contains("keep_relases"), "{e}");
        let e = parse("[targets.a]\nport = \"22\"\n").unwrap_err();
        assert!(e.starts_with("targets.toml:2:8:"), "{e}");
        let e = parse("[targets.a\nhost = 1\n").unwrap_err();
        assert!(e.starts_with("targets.toml:1:"), "{e}");
        let e = parse("[targets.\"a b\"]\nhost = \"h\"\n").unwrap_err();
        assert!(e.contains("invalid target name"), "{e}");
    }

    /// Seeded fuzzing from the committed corpus (tests/corpus/config): byte flips, cuts and
    /// splices must give an error with file:line:col or a config, never a panic.
    #[test]
    fn fuzzed_configs_never_panic_and_errors_carry_a_position() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config as PtConfig, TestRunner};
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/config");
        let corpus: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap()).collect();
        assert!(corpus.len() >= 3);
        let mut runner = TestRunner::new(PtConfig { cases: 600, ..PtConfig::default() });
        let strat = (0..corpus.len(), any::<usize>(), any::<u8>(), 0u8..4, "\\PC{0,12}");
        runner
            .run(&strat, |(i, pos, byte, op, splice)| {
                let mut b = corpus[i].clone().into_bytes();
                let at = pos % (b.len() + 1);
                match op {
                    0 if at < b.len() => b[at] = byte,
                    1 => b.truncate(at),
                    2 => b.splice(at..at, splice.bytes()).for_each(drop),
                    _ => b.insert(at, byte),
                }
                let text = String::from_utf8_lossy(&b);
                match Config::parse(Path::new("fuzz.toml"), &text) {
                    Ok(c) => {
                        for name in c.targets.keys() {
                            let _ = crate::settings::resolve_target(&c, name);
                        }
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        prop_assert!(msg.starts_with("fuzz.toml:"), "no position: {msg}");
                        let mut parts = msg.splitn(4, ':');
                        parts.next();
                        prop_assert!(parts.next().is_some_and(|l| l.parse::<usize>().is_ok()), "{msg}");
                        prop_assert!(parts.next().is_some_and(|c| c.parse::<usize>().is_ok()), "{msg}");
                    }
                }
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn keys_are_found_in_their_own_table_else_in_defaults() {
        let c = Config::parse(
            Path::new("targets.toml"),
            "[defaults]\nuser = \"d\"\n[targets.a]\nhost = \"h\"\n[targets.\"b\"] # x\nhost = \"h\" # user = \"no\"\n  user= \"b\"\n",
        )
        .unwrap();
        assert_eq!(c.key_at("a", "user"), Some((2, 1)), "inherited from [defaults]");
        assert_eq!(c.key_at("b", "user"), Some((7, 3)), "its own, not the comment");
        assert_eq!(c.key_at("a", "base"), None);
        assert_eq!(c.locate("a", "base"), (3, 1), "a missing key points at the target's table");
    }

    #[test]
    fn locate_finds_keys_inside_the_target_table() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("targets.toml");
        std::fs::write(&p, "[targets.a]\nbase = \"/x\"\n\n[targets.b]\nhost = \"h\"\nbase = \"/\"\n").unwrap();
        let c = Config::load(&p).unwrap();
        assert_eq!(c.locate("b", "base"), (6, 1));
        assert_eq!(c.locate("a", "base"), (2, 1));
    }
}
