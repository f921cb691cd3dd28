//! One file per command. Each takes resolved settings and a printer; none looks at clap, and
//! none calls another: what two commands share lives in [`gate`] (the release gates' parts),
//! [`lock`] (the target lock) or below `commands`.

pub mod check;
pub mod config;
pub mod deploy;
pub mod drill;
pub mod env;
pub mod gate;
pub mod init;
pub mod list;
pub mod lock;
pub mod prune;
pub mod rollback;
pub mod service;
pub mod unlock;

use serde::Serialize;

use crate::release;
use crate::report::Printer;

/// One line of `<base>/logs/deploys.jsonl`. Never carries values from env files.
#[derive(Debug, Serialize)]
pub struct Audit<'a> {
    pub at: String,
    pub who: String,
    pub command: &'a str,
    pub target: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<&'a str>,
    pub result: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl<'a> Audit<'a> {
    pub fn new(command: &'a str, target: &'a str, result: &'a str) -> Self {
        Audit {
            at: release::rfc3339(release::now_unix()),
            who: lock::who(),
            command,
            target,
            release: None,
            previous: None,
            result,
            error: None,
        }
    }

    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Says what the server's watchdog did while no client was there to see it (a deploy whose
/// client died during its health gate).
pub fn tell_watchdog(p: &Printer, state: &release::State) {
    for line in &state.watchdog {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
        let s = |k: &str| v[k].as_str().unwrap_or("?").to_string();
        let what = if v["result"] == "rolled-back" {
            format!("the server's watchdog switched back from {} to {}", s("previous"), s("release"))
        } else {
            format!("the server's watchdog marked {} failed", s("previous"))
        };
        p.warn(format!("{what} at {}: {}", s("at"), s("error")));
    }
}
