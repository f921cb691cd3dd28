//! systemd control, as the server runs it: the functions of `sh/systemd.sh` and one quoted
//! call per service. What the output means is `service.rs`'s to read.

use std::fmt::Write as _;
use std::time::Duration;

use super::Script;
use crate::settings::{Scope, Service};
use crate::shell::quote;

const SYSTEMD: &str = include_str!("sh/systemd.sh");

/// The systemd functions (`sh/systemd.sh`) every service script starts with; the preflight
/// uses them for its unit probe.
pub fn prelude() -> String {
    Script::new().part(SYSTEMD).build()
}

/// The arguments every function of `systemd.sh` takes after the unit: SUDO and USER as 1/0.
fn how(svc: &Service) -> String {
    format!("{} {}", u8::from(svc.sudo), u8::from(svc.scope == Scope::User))
}

/// The command printing a unit's LoadState (`loaded`, `not-found`, …); runs after the prelude.
pub fn load_state_cmd(svc: &Service) -> String {
    format!("bst_ctl {} systemctl show -p LoadState --value {}", how(svc), quote(&svc.unit))
}

/// Prints, per service: `S <name>`, systemctl's `Key=Value` lines, and `CWD <dir>` for the
/// main process (which release is live).
pub fn status_script(services: &[&Service]) -> String {
    let mut s = prelude();
    for svc in services {
        let _ = writeln!(s, "bst_status {} {} {}", quote(&svc.name), quote(&svc.unit), how(svc));
    }
    s
}

/// Runs `action` (start/stop/restart) on each service, then prints their status. A failed
/// unit gets its last journal lines (`J ` prefixed).
/// A start that never finishes (a `Type=notify` unit that never says ready) is bounded by
/// `limit`: `timeout` stops waiting (the unit stays `activating`, and is reported so).
pub fn action_script(services: &[&Service], action: &str, limit: Duration) -> String {
    let secs = if action == "stop" { 0 } else { limit.as_millis().div_ceil(1000).max(1) };
    let mut s = prelude();
    for svc in services {
        let _ = writeln!(s, "bst_act {} {} {} {} {secs}", quote(action), quote(&svc.name), quote(&svc.unit), how(svc));
    }
    for svc in services {
        let _ = writeln!(s, "bst_status {} {} {}", quote(&svc.name), quote(&svc.unit), how(svc));
    }
    s
}

/// Journal lines for services that are not active, `J ` prefixed.
pub fn journal_script(services: &[&Service]) -> String {
    let mut s = prelude();
    for svc in services {
        let _ = writeln!(s, "bst_journal {} {}", quote(&svc.unit), how(svc));
    }
    s
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use crate::service::parse_status;

    /// The scripts run in `sh` against stand-ins for systemctl, journalctl, sudo and timeout
    /// that log their argv: the exact commands a server would run, and what bst reads back.
    #[cfg(unix)]
    #[test]
    fn systemd_scripts_run_the_configured_commands_and_print_what_bst_parses() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let log = d.path().join("log");
        let tool = |name: &str, body: &str| {
            let f = bin.join(name);
            std::fs::write(
                &f,
                format!("#!/bin/sh\nprintf '%s|' {name} \"$@\" >> '{}'; echo >> '{}'\n{body}\n", log.display(), log.display()),
            )
            .unwrap();
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        tool("sudo", r#"[ "$1" = -n ] && shift; exec "$@""#);
        tool("timeout", r#"shift; exec "$@""#);
        tool(
            "systemctl",
            r#"for a; do case $a in restart) echo boom; echo 'second line'; exit 1;; --value) echo 0; exit 0;; esac; done
echo LoadState=loaded; echo ActiveState=failed"#,
        );
        tool("journalctl", "echo 'last words'");
        let run = |script: &str| {
            let _ = std::fs::remove_file(&log);
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("{script}printf 'XDG=%s\\n' \"$XDG_RUNTIME_DIR\""))
                .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
                .env_remove("XDG_RUNTIME_DIR")
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            (String::from_utf8(out.stdout).unwrap(), std::fs::read_to_string(&log).unwrap_or_default())
        };
        let user = Service { name: "api".into(), unit: "bst core'api.service".into(), scope: Scope::User, sudo: true, health: None };
        let (out, calls) = run(&action_script(&[&user], "restart", Duration::from_millis(29_001)));
        assert!(
            calls.starts_with("timeout|30|sudo|-n|systemctl|--user|restart|bst core'api.service|\nsudo|-n|systemctl|--user|restart|bst core'api.service|\nsystemctl|--user|restart|bst core'api.service|\n"),
            "{calls}"
        );
        assert!(calls.contains("journalctl|--user|-u|bst core'api.service|-n|20|--no-pager|"), "{calls}");
        let uid = String::from_utf8(std::process::Command::new("id").arg("-u").output().unwrap().stdout).unwrap();
        assert_eq!(
            out,
            format!("E api boom second line\nJ last words\nS api\nLoadState=loaded\nActiveState=failed\nXDG=/run/user/{}\n", uid.trim())
        );
        let states = parse_status(&out);
        assert_eq!(states[0].error.as_deref(), Some("boom second line"));
        assert_eq!(states[0].journal, vec!["last words"]);

        let system = Service { name: "app".into(), unit: "app.service".into(), scope: Scope::System, sudo: false, health: None };
        let (out, calls) = run(&(status_script(&[&system]) + &journal_script(&[&system])));
        assert_eq!(
            calls,
            "systemctl|show|app.service|-p|LoadState|-p|ActiveState|-p|SubState|-p|MainPID|-p|NRestarts|-p|ActiveEnterTimestamp|-p|Result|\nsystemctl|show|app.service|-p|MainPID|--value|\njournalctl|-u|app.service|-n|20|--no-pager|\n"
        );
        assert!(out.starts_with("S app\nLoadState=loaded\nActiveState=failed\nJ last words\n"), "{out}");
        let (_, calls) = run(&action_script(&[&system], "stop", Duration::from_secs(30)));
        assert!(calls.starts_with("systemctl|stop|app.service|\n"), "stop is never bounded: {calls}");
        let check = format!("{}{}\n", status_script(&[]), load_state_cmd(&user));
        let (_, calls) = run(&check);
        assert_eq!(calls, "sudo|-n|systemctl|--user|show|-p|LoadState|--value|bst core'api.service|\nsystemctl|--user|show|-p|LoadState|--value|bst core'api.service|\n");
    }
}
