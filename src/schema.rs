//! Every mistake in targets.toml in one run, each at its `file:line:col`, in words: the
//! closest valid key for a typo, what a value should look like for a wrong type.
//!
//! serde stops at the first error and words it for Rust (`invalid type: string "22",
//! expected u16`). This walk over the parsed document (toml_edit, already built for `toml`,
//! keeps positions) runs first; serde then only sees a file that passed it.

use toml_edit::{Item, TableLike, Value};

/// What a key's value must be.
#[derive(Clone, Copy)]
enum Shape {
    Str,
    Port,
    Count,
    Bool,
    StrList,
    StrMap,
    Services,
    Health,
    Status,
}

/// Every key of a target (and of `[defaults]`), with an example of a good value. Kept equal
/// to `config::RawTarget`'s fields by a test.
const TARGET: &[(&str, Shape, &str)] = &[
    ("host", Shape::Str, "host = \"192.168.0.60\""),
    ("port", Shape::Port, "port = 22"),
    ("user", Shape::Str, "user = \"deploy\""),
    ("identity_file", Shape::Str, "identity_file = \"~/.ssh/id_ed25519\""),
    ("known_hosts", Shape::Str, "known_hosts = \"~/.ssh/known_hosts\""),
    ("base", Shape::Str, "base = \"/srv/app/staging\""),
    ("source", Shape::Str, "source = \".\""),
    ("keep_releases", Shape::Count, "keep_releases = 5"),
    ("shared_files", Shape::StrList, "shared_files = [\".env\"]"),
    ("shared_dirs", Shape::StrList, "shared_dirs = [\"storage\"]"),
    ("exclude", Shape::StrList, "exclude = [\"*.log\"]"),
    ("include", Shape::StrList, "include = [\"certs/ca.pem\"]"),
    ("source_is_not_git", Shape::Bool, "source_is_not_git = true"),
    ("install", Shape::Str, "install = \"pnpm install --frozen-lockfile\""),
    ("build", Shape::Str, "build = \"pnpm -r build\""),
    ("restart", Shape::StrList, "restart = [\"app\"]"),
    ("health_timeout", Shape::Str, "health_timeout = \"30s\""),
    ("confirm_margin", Shape::Str, "confirm_margin = \"30s\""),
    ("settle", Shape::Str, "settle = \"3s\""),
    ("services", Shape::Services, "[targets.NAME.services.app]"),
    ("forbidden_paths", Shape::StrList, "forbidden_paths = [\"/srv/old\"]"),
    ("env_file", Shape::Str, "env_file = \".env\""),
    ("required_env", Shape::StrList, "required_env = [\"DATABASE_URL\"]"),
    ("expect_env", Shape::StrMap, "expect_env = { INGEST_QUEUE_ENABLED = \"true\" }"),
    ("env_dialect", Shape::Str, "env_dialect = \"systemd\""),
    ("env_backups_keep", Shape::Count, "env_backups_keep = 10"),
    ("seed_from_siblings", Shape::Bool, "seed_from_siblings = false"),
];

const SERVICE: &[(&str, Shape, &str)] = &[
    ("unit", Shape::Str, "unit = \"app.service\""),
    ("scope", Shape::Str, "scope = \"system\""),
    ("sudo", Shape::Bool, "sudo = true"),
    ("health", Shape::Health, "health = { http = \"http://127.0.0.1:3000/health\" }"),
];

const HEALTH: &[(&str, Shape, &str)] = &[
    ("http", Shape::Str, "http = \"http://127.0.0.1:3000/health\""),
    ("status", Shape::Status, "status = 200"),
    ("body_contains", Shape::Str, "body_contains = \"ok\""),
    ("redis", Shape::Str, "redis = \"127.0.0.1:6379\""),
];

/// One problem: byte offset into the text, and the message.
pub type Problem = (usize, String);

/// Every problem the document has, in file order.
pub fn check(doc: &toml_edit::ImDocument<&str>) -> Vec<Problem> {
    let mut out = Vec::new();
    let root = doc.as_table();
    for (key, item) in root.iter() {
        let at = key_at(root, key);
        match key {
            "defaults" => match item.as_table_like() {
                Some(t) => table(t, TARGET, "[defaults]", &mut out),
                None => out.push((at, "`defaults` must be a table: [defaults]".into())),
            },
            "targets" => match item.as_table_like() {
                Some(targets) => {
                    for (name, t) in targets.iter() {
                        match t.as_table_like() {
                            Some(t) => table(t, TARGET, &format!("[targets.{name}]"), &mut out),
                            None => out.push((key_at(targets, name), format!("`targets.{name}` must be a table: [targets.{name}]"))),
                        }
                    }
                }
                None => out.push((at, "`targets` must be a table of targets: [targets.NAME]".into())),
            },
            other => out.push((at, unknown(other, &["defaults", "targets"], "at the top level (only [defaults] and [targets.NAME])"))),
        }
    }
    out.sort_by_key(|(at, _)| *at);
    out
}

/// The offset where `key` is written in `t` (its value's, for a key with no position).
pub(crate) fn key_at(t: &dyn TableLike, key: &str) -> usize {
    t.get_key_value(key).and_then(|(k, v)| k.span().or_else(|| v.span())).map_or(0, |s| s.start)
}

fn unknown(key: &str, valid: &[&str], place: &str) -> String {
    match crate::error::closest(key, valid.iter().copied()) {
        Some(c) => format!("unknown key `{key}` {place}; did you mean `{c}`?"),
        None => format!("unknown key `{key}` {place}; the keys are listed under \"Configuration\" in the README and in `bst man`"),
    }
}

fn table(t: &dyn TableLike, keys: &[(&str, Shape, &str)], place: &str, out: &mut Vec<Problem>) {
    let names: Vec<&str> = keys.iter().map(|(k, _, _)| *k).collect();
    for (key, item) in t.iter() {
        let at = key_at(t, key);
        let Some((_, shape, example)) = keys.iter().find(|(k, _, _)| *k == key) else {
            out.push((at, unknown(key, &names, &format!("in {place}"))));
            continue;
        };
        let value_at = item.span().map_or(at, |s| s.start);
        if let Some(what) = mismatch(*shape, item, place, out) {
            out.push((value_at, format!("{key} must be {what}, e.g. `{example}`")));
        }
    }
}

/// What the value should have been, when it is not; nested tables report into `out`.
fn mismatch(shape: Shape, item: &Item, place: &str, out: &mut Vec<Problem>) -> Option<&'static str> {
    let v = item.as_value();
    let ok = match shape {
        Shape::Str => v.is_some_and(Value::is_str),
        Shape::Bool => v.is_some_and(Value::is_bool),
        Shape::Port => {
            return (!v.and_then(Value::as_integer).is_some_and(|n| (1..=65535).contains(&n))).then_some("a number from 1 to 65535")
        }
        Shape::Status => {
            return (!v.and_then(Value::as_integer).is_some_and(|n| (100..=599).contains(&n))).then_some("an HTTP status from 100 to 599")
        }
        Shape::Count => return v.and_then(Value::as_integer).is_none_or(|n| n < 0).then_some("a whole number"),
        Shape::StrList => v.and_then(Value::as_array).is_some_and(|a| a.iter().all(Value::is_str)),
        Shape::StrMap => item.as_table_like().is_some_and(|t| t.iter().all(|(_, v)| v.as_value().is_some_and(Value::is_str))),
        Shape::Health => match item.as_table_like() {
            Some(t) => {
                table(t, HEALTH, &format!("{place}'s health"), out);
                true
            }
            None => false,
        },
        Shape::Services => match item.as_table_like() {
            Some(services) => {
                for (name, s) in services.iter() {
                    let here = format!("{}.services.{name}]", place.trim_end_matches(']'));
                    match s.as_table_like() {
                        Some(st) => {
                            if st.get("unit").is_none() {
                                out.push((key_at(services, name), format!("{here} has no `unit`, e.g. `unit = \"app.service\"`")));
                            }
                            table(st, SERVICE, &here, out);
                        }
                        None => {
                            out.push((key_at(services, name), format!("{here} must be a table, e.g. `unit = \"app.service\"` under it")))
                        }
                    }
                }
                true
            }
            None => false,
        },
    };
    (!ok).then_some(match shape {
        Shape::Str => "a string in quotes",
        Shape::Bool => "true or false",
        Shape::StrList => "a list of strings",
        Shape::StrMap => "a table of strings",
        Shape::Health => "a table",
        Shape::Services => "a table of services",
        Shape::Port | Shape::Status | Shape::Count => unreachable!("returned above"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        let doc = toml_edit::ImDocument::parse(text).unwrap();
        check(&doc)
            .into_iter()
            .map(|(at, m)| {
                let (l, c) = crate::config::line_col(text, at);
                format!("{l}:{c}: {m}")
            })
            .collect()
    }

    #[test]
    fn the_key_list_is_the_config_structs_own() {
        let raw = serde_json::to_value(crate::config::RawTarget::default()).unwrap();
        let mut fields: Vec<&str> = raw.as_object().unwrap().keys().map(String::as_str).collect();
        let mut listed: Vec<&str> = TARGET.iter().map(|(k, _, _)| *k).collect();
        fields.sort();
        listed.sort();
        assert_eq!(fields, listed);
    }

    #[test]
    fn every_problem_once_in_file_order_in_words() {
        let text = "[targets.a]\nhost = \"h\"\nkeep_relases = 3\nport = \"22\"\n[targets.a.services.app]\nunti = \"x\"\nhealth = { http = 1 }\n[targets.b]\nfrobnicate = 1\nshared_files = \".env\"\n";
        assert_eq!(
            problems(text),
            [
                "3:1: unknown key `keep_relases` in [targets.a]; did you mean `keep_releases`?",
                "4:8: port must be a number from 1 to 65535, e.g. `port = 22`",
                "5:21: [targets.a.services.app] has no `unit`, e.g. `unit = \"app.service\"`",
                "6:1: unknown key `unti` in [targets.a.services.app]; did you mean `unit`?",
                "7:19: http must be a string in quotes, e.g. `http = \"http://127.0.0.1:3000/health\"`",
                "9:1: unknown key `frobnicate` in [targets.b]; the keys are listed under \"Configuration\" in the README and in `bst man`",
                "10:16: shared_files must be a list of strings, e.g. `shared_files = [\".env\"]`",
            ]
        );
        assert!(problems("[defaults]\nkeep_releases = 5\n[targets.a]\nhost = \"h\"\n").is_empty());
    }
}
