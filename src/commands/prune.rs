//! `bst prune`: remove old releases by hand, with the same rules as after a deploy.

use serde::Serialize;

use super::lock::{self, Acquired};
use crate::error::Error;
use crate::remote;
use crate::report::Printer;
use crate::settings::{Globals, Target};
use crate::transport;

#[derive(Serialize)]
struct Done<'a> {
    schema_version: u32,
    target: &'a str,
    keep: usize,
    pruned: Vec<String>,
}

pub fn run(target: &Target, globals: &Globals, p: &Printer, keep: Option<usize>) -> anyhow::Result<()> {
    let keep = keep.unwrap_or(target.keep_releases);
    if keep == 0 {
        return Err(Error::Usage("--keep must be at least 1".into()).into());
    }
    let mut t = transport::connect(&target.host, globals)?;
    let (held, state) = match lock::acquire(&mut *t, target, "prune", false, p)? {
        Acquired::Held(h, s) => (h, s),
        Acquired::NoBase => return Err(Error::Failed(format!("nothing deployed to `{}` yet", target.name)).into()),
    };
    let plan = state.prune_plan(keep, None);
    let out = t.run(&remote::prune(&target.base, &plan, &held.token, false))?;
    let remote::Reply { warnings, pruned, .. } = remote::Reply::parse(&out.stdout_str());
    for w in &warnings {
        p.warn(w);
    }
    if out.status != 0 {
        lock::release(&mut *t, target, &held, p);
        return Err(Error::Failed(format!("prune failed: {}", out.stderr_str())).into());
    }
    if pruned.is_empty() {
        p.out(format!("{}: nothing to prune ({} releases, keeping {keep})", target.name, state.releases.len()));
    } else {
        p.out(format!("{}: pruned {}", target.name, pruned.join(", ")));
    }
    p.json(&Done { schema_version: 1, target: &target.name, keep, pruned });
    Ok(())
}
