//! Issue 7: completions, man page, `bst init`, `bst config show|validate`.

use crate::harness::*;

#[test]
fn completions_and_man_page() {
    let d = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let run = bst_in(d.path(), &["completions", shell], None).ok();
        assert!(run.stdout.contains("deploy") && run.stdout.contains("rollback"), "{shell} completion lacks commands");
    }
    bst_in(d.path(), &["completions", "tcsh"], None).code(2);
    let man = bst_in(d.path(), &["man"], None).ok();
    assert!(man.stdout.contains(".TH bst 1") && man.stdout.contains("deploy"), "{}", man.stdout);
}

#[test]
fn init_writes_a_working_config_and_never_overwrites() {
    let ws = Workspace::new();
    ws.write("pnpm-workspace.yaml", "packages:\n  - 'apps/*'\n");
    ws.write("pnpm-lock.yaml", "lockfileVersion: '9.0'\n");
    ws.write("apps/web/package.json", "{}");
    let run = bst_in(ws.path(), &["init"], None).ok().stdout_has("pnpm detected");
    let text = std::fs::read_to_string(ws.path().join("targets.toml")).unwrap();
    assert!(text.contains("install = \"pnpm install --frozen-lockfile\"") && text.contains("build = \"pnpm -r build\""), "{text}");
    assert!(text.contains("apps/web"));
    drop(run);
    bst_in(ws.path(), &["config", "validate"], None).ok().stdout_has("2 target(s) valid");
    std::fs::write(ws.path().join("targets.toml"), format!("{text}\n# edited\n")).unwrap();
    bst_in(ws.path(), &["init"], None).code(2).stderr_has("already exists");
    assert!(std::fs::read_to_string(ws.path().join("targets.toml")).unwrap().ends_with("# edited\n"), "init overwrote the file");
    // The demo target works from a fresh init, and its base (inside the workspace, not
    // ignored) never ships into the next release.
    bst_in(ws.path(), &["deploy", "demo", "-q"], None).ok();
    bst_in(ws.path(), &["deploy", "demo", "-q"], None).ok();
    let current = ws.path().join(".bst-demo/current");
    assert!(current.join("targets.toml").is_file());
    assert!(!current.join(".bst-demo").exists(), "the demo base shipped itself");
}

#[test]
fn config_show_and_validate() {
    let ws = Workspace::new();
    let env = Env::new(None, &ws, "keep_releases = 3\nrequired_env = [\"A\"]");
    let cfg = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(&env.config, format!("[defaults]\nshared_files = [\".env\"]\nrequired_env = [\"B\"]\nsettle = \"1s\"\n\n{cfg}"))
        .unwrap();
    let j = env.bst(&["config", "show", "t", "--json"]).ok().json();
    // Where each value came from (issue 20, item 8).
    assert_eq!(j["origins"]["keep_releases"], "target");
    assert_eq!(j["origins"]["shared_files"], "[defaults]");
    assert_eq!(j["origins"]["required_env"], "[defaults] + target");
    assert_eq!(j["origins"]["settle"], "[defaults]");
    assert_eq!(j["origins"]["health_timeout"], "built-in default");
    assert_eq!(j["settle_ms"], 1000);
    assert_eq!(j["required_env"], serde_json::json!(["B", "A"]));
    let human = env.bst(&["config", "show", "t"]).ok();
    assert!(human.stdout.lines().any(|l| l == "keep_releases   3  (target)"), "{}", human.stdout);
    assert!(human.stdout.lines().any(|l| l == "required_env    B, A  ([defaults] + target)"), "{}", human.stdout);
    assert_eq!(j["schema_version"], 1);
    assert_eq!(j["keep_releases"], 3);
    assert_eq!(j["shared_files"][0], ".env", "defaults are merged");
    assert_eq!(j["transport"], "local");
    assert_eq!(j["base"], env.base.to_string_lossy().as_ref());
    env.bst(&["config", "show", "t"]).ok().stdout_has("keep_releases   3");
    env.bst(&["config", "validate"]).ok();
    std::fs::write(
        &env.config,
        format!("{}\n[targets.broken]\nhost = \"h\"\nbase = \"relative\"\n", std::fs::read_to_string(&env.config).unwrap()),
    )
    .unwrap();
    env.bst(&["config", "validate"]).code(2).stderr_has("invalid base `relative`").stdout_has("1 target(s) valid, 1 invalid");
    env.bst(&["config", "show", "nope"]).code(2).stderr_has("unknown target");
}
