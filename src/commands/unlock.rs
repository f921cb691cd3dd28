//! `bst unlock`: break a stale lock, saying whose it was.

use serde::Serialize;

use super::lock::Owner;
use crate::error::Error;
use crate::remote;
use crate::report::Printer;
use crate::settings::{Globals, Target};
use crate::transport;

#[derive(Serialize)]
struct Done<'a> {
    schema_version: u32,
    target: &'a str,
    was_locked: bool,
    holder: Option<Owner>,
}

pub fn run(target: &Target, globals: &Globals, p: &Printer) -> anyhow::Result<()> {
    let mut t = transport::connect(&target.host, globals)?;
    let out = t.run(&remote::force_unlock(&target.base, &super::lock::new_token()))?;
    if out.status != 0 {
        return Err(Error::Failed(format!("unlock failed: {}", out.stderr_str())).into());
    }
    let text = out.stdout_str();
    let line = text.lines().next().unwrap_or("");
    let was_locked = line.starts_with("HELD");
    let holder: Option<Owner> = line.strip_prefix("HELD ").and_then(|j| serde_json::from_str(j).ok());
    if was_locked {
        let who = holder.as_ref().map_or_else(|| "an unknown holder".to_string(), Owner::describe);
        p.out(format!("{}: broke the lock held by {who}", target.name));
    } else {
        p.out(format!("{}: not locked", target.name));
    }
    p.json(&Done { schema_version: 1, target: &target.name, was_locked, holder });
    Ok(())
}
