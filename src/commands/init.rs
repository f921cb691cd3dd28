//! `bst init`: a commented targets.toml for the repository at hand, with install/build
//! commands suggested from its package manager and workspace layout. Never overwrites.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::Error;
use crate::report::Printer;

#[derive(Debug, PartialEq)]
pub struct Detected {
    pub manager: &'static str,
    pub workspace: bool,
    pub install: String,
    pub build: String,
    /// Workspace packages found under apps/ and packages/ (for the comments).
    pub packages: Vec<String>,
}

pub fn detect(root: &Path) -> Detected {
    let has = |f: &str| root.join(f).exists();
    let pkg = std::fs::read_to_string(root.join("package.json")).unwrap_or_default();
    let pkg_json: serde_json::Value = serde_json::from_str(&pkg).unwrap_or_default();
    let npm_workspaces = pkg_json.get("workspaces").is_some();
    let has_build_script = pkg_json.pointer("/scripts/build").is_some();
    let mut packages = Vec::new();
    for dir in ["apps", "packages", "services"] {
        if let Ok(rd) = std::fs::read_dir(root.join(dir)) {
            for e in rd.flatten() {
                if e.path().join("package.json").is_file() {
                    packages.push(format!("{dir}/{}", e.file_name().to_string_lossy()));
                }
            }
        }
    }
    packages.sort();
    let (manager, workspace, install, build) = if has("pnpm-lock.yaml") || has("pnpm-workspace.yaml") {
        let ws = has("pnpm-workspace.yaml");
        ("pnpm", ws, "pnpm install --frozen-lockfile", if ws { "pnpm -r build" } else { "pnpm build" })
    } else if has("yarn.lock") {
        ("yarn", npm_workspaces, "yarn install --frozen-lockfile", if npm_workspaces { "yarn workspaces run build" } else { "yarn build" })
    } else if has("package-lock.json") || has("package.json") {
        (
            "npm",
            npm_workspaces,
            if has("package-lock.json") { "npm ci" } else { "npm install" },
            if npm_workspaces { "npm run build --workspaces --if-present" } else { "npm run build" },
        )
    } else {
        ("none", false, "", "")
    };
    let build = if manager != "none" && !workspace && !has_build_script { String::new() } else { build.to_string() };
    Detected { manager, workspace, install: install.to_string(), build, packages }
}

fn repo_root() -> PathBuf {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    Command::new("git")
        .args(["rev-parse", "--show-toplevel"])
        .current_dir(&cwd)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .unwrap_or(cwd)
}

pub fn render(d: &Detected) -> String {
    let opt = |k: &str, v: &str| if v.is_empty() { format!("# {k} = \"…\"") } else { format!("{k} = \"{v}\"") };
    let packages = if d.packages.is_empty() { String::new() } else { format!("# Workspace packages found: {}\n", d.packages.join(", ")) };
    format!(
        r#"# bst deploy targets (see `bst --help` and the README).
# Detected package manager: {manager}{ws}
{packages}
[defaults]
keep_releases = 5            # releases kept after each deploy (never current or its rollback target)
# forbidden_paths = ["/srv/old-alias"]   # a base may never be at or under these, even via symlinks

# `bst deploy demo`: this repository into ./.bst-demo on this machine, no server needed.
[targets.demo]
host = "local"
base = ".bst-demo"

# A server. Copy, rename, and fill in.
[targets.staging]
host = "staging.example.internal"   # or a Host alias
port = 22
user = "deploy"
# identity_file = "~/.ssh/id_ed25519"  # else ssh-agent, then ~/.ssh/id_ed25519, id_ecdsa, id_rsa
base = "/srv/app/staging"            # absolute: releases/, current, shared/, logs/ live here
shared_files = [".env"]              # linked from <base>/shared into every release; never shipped from here
{install}
{build}
# restart = ["app"]                  # restarted and health-checked after each switch
# health_timeout = "30s"
# required_env = ["DATABASE_URL"]    # `bst env check staging` gate
#
# [targets.staging.services.app]
# unit = "app.service"
# health = {{ http = "http://127.0.0.1:3000/health", status = 200, body_contains = "ok" }}
"#,
        manager = d.manager,
        ws = if d.workspace { " (workspace)" } else { "" },
        install = opt("install", &d.install),
        build = opt("build", &d.build),
    )
}

pub fn run(p: &Printer, path: Option<&Path>) -> anyhow::Result<()> {
    let root = repo_root();
    let dest = path.map_or_else(|| root.join("targets.toml"), Path::to_path_buf);
    let d = detect(&root);
    let text = render(&d);
    // create_new: refuse to overwrite, atomically (no check-then-write race).
    let mut f = match std::fs::OpenOptions::new().write(true).create_new(true).open(&dest) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(Error::Usage(format!("{} already exists; not overwriting it", dest.display())).into());
        }
        Err(e) => return Err(Error::Usage(format!("cannot create {}: {e}", dest.display())).into()),
    };
    std::io::Write::write_all(&mut f, text.as_bytes())?;
    p.out(format!("wrote {} ({} detected); try: bst deploy demo", dest.display(), d.manager));
    let dir = dest.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let added = ignore_byproducts(dir)?;
    if !added.is_empty() {
        p.out(format!("added {} to {}", added.join(" and "), dir.join(".gitignore").display()));
    }
    Ok(())
}

/// bst's own byproducts next to targets.toml: the demo's local base and the gates' evidence.
/// Deploys never ship them either way; ignoring them keeps `git status` (and so a release's
/// `dirty`) about the project.
const BYPRODUCTS: [&str; 2] = ["/.bst-demo/", "/reports/"];

/// Appends the [`BYPRODUCTS`] lines `.gitignore` lacks; returns those added.
fn ignore_byproducts(dir: &Path) -> anyhow::Result<Vec<&'static str>> {
    let path = dir.join(".gitignore");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::Usage(format!("cannot read {}: {e}", path.display())).into()),
    };
    let has = |line: &str| {
        let bare = line.trim_matches('/');
        text.lines().map(str::trim).any(|l| l.trim_matches('/') == bare)
    };
    let missing: Vec<&'static str> = BYPRODUCTS.iter().copied().filter(|l| !has(l)).collect();
    if missing.is_empty() {
        return Ok(missing);
    }
    let mut add = String::new();
    if !text.is_empty() && !text.ends_with('\n') {
        add.push('\n');
    }
    add.push_str("# bst: the demo target's local base and gate evidence\n");
    for l in &missing {
        add.push_str(l);
        add.push('\n');
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        .map_err(|e| Error::Usage(format!("cannot update {}: {e}", path.display())))?;
    std::io::Write::write_all(&mut f, add.as_bytes())?;
    Ok(missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_pnpm_workspaces_and_renders_valid_config() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("pnpm-workspace.yaml"), "packages:\n  - 'apps/*'\n").unwrap();
        std::fs::write(d.path().join("package.json"), "{}").unwrap();
        std::fs::create_dir_all(d.path().join("apps/web")).unwrap();
        std::fs::write(d.path().join("apps/web/package.json"), "{}").unwrap();
        let det = detect(d.path());
        assert_eq!(
            (det.manager, det.workspace, det.install.as_str(), det.build.as_str()),
            ("pnpm", true, "pnpm install --frozen-lockfile", "pnpm -r build")
        );
        assert_eq!(det.packages, vec!["apps/web"]);
        let text = render(&det);
        let p = d.path().join("targets.toml");
        std::fs::write(&p, &text).unwrap();
        let c = crate::config::Config::load(&p).unwrap();
        for name in ["demo", "staging"] {
            crate::settings::resolve_target(&c, name).unwrap();
        }
    }

    #[test]
    fn gitignore_gains_the_byproducts_once_and_keeps_its_own_lines() {
        let d = tempfile::tempdir().unwrap();
        let g = d.path().join(".gitignore");
        std::fs::write(&g, "node_modules/\nreports").unwrap();
        assert_eq!(ignore_byproducts(d.path()).unwrap(), vec!["/.bst-demo/"]);
        assert_eq!(
            std::fs::read_to_string(&g).unwrap(),
            "node_modules/\nreports\n# bst: the demo target's local base and gate evidence\n/.bst-demo/\n"
        );
        assert!(ignore_byproducts(d.path()).unwrap().is_empty());
        let fresh = tempfile::tempdir().unwrap();
        assert_eq!(ignore_byproducts(fresh.path()).unwrap(), vec!["/.bst-demo/", "/reports/"]);
    }

    #[test]
    fn detects_npm_and_yarn() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("package.json"), r#"{"scripts":{"build":"tsc"}}"#).unwrap();
        std::fs::write(d.path().join("package-lock.json"), "{}").unwrap();
        let det = detect(d.path());
        assert_eq!((det.manager, det.install.as_str(), det.build.as_str()), ("npm", "npm ci", "npm run build"));
        std::fs::remove_file(d.path().join("package-lock.json")).unwrap();
        std::fs::write(d.path().join("yarn.lock"), "").unwrap();
        assert_eq!(detect(d.path()).manager, "yarn");
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(detect(empty.path()).manager, "none");
    }
}
