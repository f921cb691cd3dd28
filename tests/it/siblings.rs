//! Issue 16, item 2: the first deploy of a target on a server where another target of the same
//! targets.toml (same login) keeps a proven pristine copy starts from that copy and sends only
//! the difference; the sibling is never changed, a damaged one is never trusted, and
//! `seed_from_siblings = false` keeps the full first upload.

use std::path::{Path, PathBuf};

use crate::delta::{shipped, tree};
use crate::harness::*;

/// A workspace of a few hundred files and 1 MB that does not compress: a full upload is
/// unmistakable next to a delta.
fn monorepo() -> Workspace {
    let ws = Workspace::new();
    for i in 0..300 {
        ws.write(&format!("apps/api/src/m{i:03}.ts"), &format!("export const v = {i};\n"));
    }
    std::fs::write(ws.path().join("asset.bin"), noise(1 << 20, 16)).unwrap();
    ws.commit("monorepo");
    ws
}

/// Another target (`name`) in `env`'s config: the same server and login as `t`, but reached
/// through an ssh config alias (so bst has to see through the strings), with a base of its
/// own under `srv/<name>`. The ssh config to run bst with, and that base.
struct Sibling {
    ssh_config: PathBuf,
    base: PathBuf,
}

impl Sibling {
    fn add(env: &Env, sshd: &Sshd, ws: &Workspace, name: &str, extra: &str) -> Sibling {
        let ssh_config = env.dir.path().join("ssh_config");
        std::fs::write(&ssh_config, "Host box\n  HostName 127.0.0.1\n").unwrap();
        let base = env.dir.path().join("srv").join(name);
        let mut config = std::fs::read_to_string(&env.config).unwrap();
        config.push_str(&format!(
            "\n[targets.{name}]\nhost = \"box\"\nport = {}\nuser = \"{}\"\nidentity_file = {}\nknown_hosts = {}\nbase = {}\nsource = {}\n{extra}\n",
            sshd.port,
            whoami(),
            toml_str(&sshd.user_key),
            toml_str(&sshd.known_hosts),
            toml_str(&base),
            toml_str(ws.path())
        ));
        std::fs::write(&env.config, config).unwrap();
        Sibling { ssh_config, base }
    }

    fn bst(&self, env: &Env, args: &[&str]) -> Run {
        bst_with(&env.config, args, &[("BST_SSH_CONFIG", self.ssh_config.to_str().unwrap())])
    }
}

impl Drop for Sibling {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            wait_cache_job_at(&self.base);
        }
    }
}

/// Everything under `dir` as a write, a hardlink or a replacement would show it: kind, mode,
/// size, mtime, ctime, inode and link count per entry, besides the bytes `tree` compares.
fn metadata(dir: &Path) -> String {
    sh(dir, "find . -printf '%y %m %s %T@ %C@ %i %n %p\\n' | LC_ALL=C sort")
}

#[test]
fn a_first_deploy_starts_from_a_sibling_copy_and_leaves_it_as_it_was() {
    let sshd = Sshd::start();
    let ws = monorepo();
    let env = Env::new(Some(&sshd), &ws, "");
    let b = Sibling::add(&env, &sshd, &ws, "b", "");
    let full = b.bst(&env, &["deploy", "t", "--json"]).ok().json();
    assert_eq!((full["delta"].as_bool(), full["seeded_from"].as_str()), (Some(false), None), "{full}");
    env.wait_cache_job();
    ws.write("apps/api/src/m007.ts", "export const v = 'changed after t was deployed';\n");
    let (t_bytes, t_meta) = (tree(&env.base, false), metadata(&env.base));

    let run = b.bst(&env, &["deploy", "b", "--json", "-v"]).ok();
    let j = run.json();
    let files = j["files"].as_u64().unwrap();
    assert_eq!((j["delta"].as_bool(), j["seeded_from"].as_str(), j["files_sent"].as_u64()), (Some(true), Some("t"), Some(1)), "{j}");
    let (sent, full_sent) = (j["bytes_sent"].as_u64().unwrap(), full["bytes_sent"].as_u64().unwrap());
    assert!(sent * 10 < full_sent, "sent {sent} bytes, a full deploy sent {full_sent}");
    let said = format!("seeding from sibling target t ({}): {} of {files} files reused", env.base.display(), files - 1);
    assert!(run.stderr.contains(&said), "-v does not say `{said}`:\n{}", run.stderr);
    assert_eq!(tree(&b.base.join("current"), false), shipped(&ws), "b's release differs from the workspace");
    // t: not a byte, a mode, a link count or a ctime changed (no hardlinks, no writes).
    assert_eq!(tree(&env.base, false), t_bytes, "t's base changed");
    assert_eq!(metadata(&env.base), t_meta, "t's base changed");

    // b's own copy, proven by its own cache job, is what its next deploy patches from.
    wait_cache_job_at(&b.base);
    ws.write("apps/api/src/m008.ts", "export const v = 'b again';\n");
    let j = b.bst(&env, &["deploy", "b", "--json"]).ok().json();
    assert_eq!((j["delta"].as_bool(), j["seeded_from"].as_str(), j["files_sent"].as_u64()), (Some(true), None, Some(1)), "{j}");
    assert_eq!(tree(&b.base.join("current"), false), shipped(&ws));
    // And t's next deploy is a delta from its own copy, as if b had never read it.
    let run = b.bst(&env, &["deploy", "t", "--json", "-v"]).ok();
    assert_eq!((run.json()["delta"].as_bool(), run.json()["files_sent"].as_u64()), (Some(true), Some(2)), "{}", run.stderr);
    assert!(!run.stderr.contains("changed since it was verified"), "{}", run.stderr);
    assert_eq!(tree(&env.base.join("current"), false), shipped(&ws));

    // Another laptop (none of this client's caches) first-deploys a third target: the first
    // proven sibling in config order is b, whose manifest now travels.
    let c = Sibling::add(&env, &sshd, &ws, "c", "");
    wait_cache_job_at(&b.base);
    let other = tempfile::tempdir().unwrap();
    let run = bst_with(
        &env.config,
        &["deploy", "c", "--json", "-v"],
        &[("BST_SSH_CONFIG", c.ssh_config.to_str().unwrap()), ("BST_CACHE_DIR", other.path().to_str().unwrap())],
    )
    .ok();
    assert!(run.stderr.contains("server manifest: none; sibling target b's manifest: received"), "{}", run.stderr);
    let j = run.json();
    assert_eq!((j["seeded_from"].as_str(), j["files_sent"].as_u64()), (Some("b"), Some(0)), "{j}");
    assert_eq!(tree(&c.base.join("current"), false), shipped(&ws));
}

/// A file of the sibling's pristine copy rewritten after its cache job proved it (same size,
/// old mtime put back: only the ctime tells) is never copied from: the first deploy ships
/// the workspace as it is, and `-v` says why the sibling was not used.
#[test]
fn a_damaged_sibling_copy_is_not_trusted() {
    let sshd = Sshd::start();
    let ws = monorepo();
    let env = Env::new(Some(&sshd), &ws, "");
    let b = Sibling::add(&env, &sshd, &ws, "b", "");
    b.bst(&env, &["deploy", "t", "-q"]).ok();
    env.wait_cache_job();
    let f = env.base.join(".bst-cache/pristine/apps/api/src/m005.ts");
    let mtime = std::fs::metadata(&f).unwrap().modified().unwrap();
    std::fs::write(&f, "export const v = 6;\n").unwrap();
    std::fs::File::options().write(true).open(&f).unwrap().set_modified(mtime).unwrap();
    let run = b.bst(&env, &["deploy", "b", "--json", "-v"]).ok();
    let j = run.json();
    assert_eq!((j["delta"].as_bool(), j["seeded_from"].as_str()), (Some(false), None), "{j}");
    let said = format!("sibling target t ({}) not used: its pristine copy changed since its cache job proved it", env.base.display());
    assert!(run.stderr.contains(&said), "-v does not say `{said}`:\n{}", run.stderr);
    assert!(j["warnings"].as_array().unwrap().is_empty() && !run.stderr.contains("warning:"), "a sibling is no warning:\n{}", run.stderr);
    assert_eq!(tree(&b.base.join("current"), false), shipped(&ws), "b's release differs from the workspace");
    assert_eq!(std::fs::read_to_string(b.base.join("current/apps/api/src/m005.ts")).unwrap(), "export const v = 5;\n");
}

/// `seed_from_siblings = false` (here in `[defaults]`): the first deploy sends everything,
/// although a proven sibling copy is there.
#[test]
fn seed_from_siblings_false_sends_the_full_snapshot() {
    let sshd = Sshd::start();
    let ws = monorepo();
    let env = Env::new(Some(&sshd), &ws, "");
    let b = Sibling::add(&env, &sshd, &ws, "b", "");
    let config = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(&env.config, format!("[defaults]\nseed_from_siblings = false\n\n{config}")).unwrap();
    let full = b.bst(&env, &["deploy", "t", "--json"]).ok().json();
    env.wait_cache_job();
    let run = b.bst(&env, &["deploy", "b", "--json", "-v"]).ok();
    let j = run.json();
    assert_eq!((j["delta"].as_bool(), j["seeded_from"].as_str()), (Some(false), None), "{j}");
    assert_eq!((&j["files_sent"], &j["files"]), (&full["files"], &full["files"]), "{j}");
    assert!(j["bytes_sent"].as_u64().unwrap() > full["bytes_sent"].as_u64().unwrap() / 2, "{j}");
    assert!(!run.stderr.contains("sibling"), "{}", run.stderr);
    assert_eq!(tree(&b.base.join("current"), false), shipped(&ws));
}

/// Where storing won on the link (loopback, a fast LAN: bare tar remembered), a full upload
/// costs about what copying a sibling's tree on the server does, twice over: no seeding.
#[test]
fn a_link_where_storing_wins_does_not_seed() {
    let sshd = Sshd::start();
    let ws = monorepo();
    let env = Env::new(Some(&sshd), &ws, "");
    let b = Sibling::add(&env, &sshd, &ws, "b", "");
    env.remember_bare_tar(sshd.port, true);
    b.bst(&env, &["deploy", "t", "--json"]).ok();
    env.wait_cache_job();
    let run = b.bst(&env, &["deploy", "b", "--json", "-v"]).ok();
    let j = run.json();
    assert_eq!((j["stream"].as_str(), j["delta"].as_bool(), j["seeded_from"].as_str()), (Some("tar"), Some(false), None), "{j}");
    assert!(run.stderr.contains("not seeding from a sibling target: this link carries a full upload"), "{}", run.stderr);
    assert_eq!(tree(&b.base.join("current"), false), shipped(&ws));
}

/// The sibling's copy changes after the server offered it and before this deploy copies it (its
/// own deploy or cache job started meanwhile): the copy is not used, and the deploy sends the
/// full snapshot instead, with no warning. The upload is throttled so that the change lands,
/// after the client has planned against the offer, well before the upload script runs.
#[test]
fn a_sibling_copy_changed_before_it_is_copied_is_not_used() {
    use std::io::BufRead;
    let sshd = Sshd::start();
    let ws = Workspace::new();
    for i in 0..20 {
        ws.write(&format!("apps/api/src/m{i:02}.ts"), &format!("export const v = {i};\n"));
    }
    ws.commit("small");
    let env = Env::new(Some(&sshd), &ws, "");
    let b = Sibling::add(&env, &sshd, &ws, "b", "");
    b.bst(&env, &["deploy", "t", "-q"]).ok();
    env.wait_cache_job();
    let proxy = Proxy::start(sshd.port, None, Some(16 << 10));
    let via = proxy.config_for(&sshd, &env.config, "via.toml");
    let mut child = bst_cmd(&via, &["deploy", "b", "--json", "-v"])
        .env("BST_SSH_CONFIG", &b.ssh_config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = String::new();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        stderr.push_str(&line);
        stderr.push('\n');
        if line.starts_with("seeding from sibling target t ") {
            std::fs::write(env.base.join(".bst-cache/pristine/apps/api/src/m03.ts"), "export const v = 'changed';\n").unwrap();
            break;
        }
    }
    for line in lines {
        stderr.push_str(&line.unwrap());
        stderr.push('\n');
    }
    let run: Run = child.wait_with_output().unwrap().into();
    let run = Run { stderr, ..run }.ok();
    for said in [
        "server cache: the sibling's pristine copy changed while it was copied, or could not be copied; this deploy sends everything",
        "sibling target t's pristine copy could not be used after all; sending the full snapshot",
    ] {
        assert!(run.stderr.contains(said), "-v does not say `{said}`:\n{}", run.stderr);
    }
    let j = run.json();
    assert_eq!((j["delta"].as_bool(), j["seeded_from"].as_str()), (Some(false), None), "{j}");
    assert!(j["warnings"].as_array().unwrap().is_empty() && !run.stderr.contains("warning:"), "{}", run.stderr);
    assert_eq!(tree(&b.base.join("current"), false), shipped(&ws));
}
