//! The local side of a deploy: which files of the workspace ship ([`listing`], with the
//! secrets [`withheld`] by default), what each one is ([`entry`]), what changed since the
//! server's last copy ([`manifest`]), and the upload stream ([`tar`], framed as the
//! [`link_memo`] says pays on this link). [`cache`] keeps the local memos between runs.
//!
//! Imports point one way: `entry`, `cache` and `git` at the bottom, `withheld` on `entry`,
//! `listing`/`manifest`/`tar`/`link_memo` on those. Commands use the names re-exported here.

pub mod cache;
pub mod entry;
pub mod git;
pub mod link_memo;
pub mod listing;
pub mod manifest;
pub mod pace;
pub mod tar;
pub mod withheld;

pub use entry::{entry_size, Entry};
pub use git::GitInfo;
pub use link_memo::LinkMemo;
pub use listing::{check_in_git, check_source, collect, git_info, Listing, Rules};
pub use manifest::{decode, encode, encode_patch, encode_paths, local_manifest, normalized, plan, HashCache, ManifestCache, Plan, Record};
pub use tar::{stream_tar, Acked, Extra, Framing, Stats};

/// Runs `script` in `sh` in `dir` and insists it succeeds: the tests build workspaces so.
#[cfg(all(test, unix))]
fn sh(dir: &std::path::Path, script: &str) {
    let ok = std::process::Command::new("sh").arg("-c").arg(script).current_dir(dir).status().unwrap().success();
    assert!(ok, "{script}");
}
