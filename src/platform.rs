//! Who and where we are: the local user, host name, home and cache directories, and hidden
//! terminal input. The only module that asks the operating system these questions, so tests
//! steer all of them through the environment (`HOME`, `USER`, `BST_CACHE_DIR`) and Windows
//! differences live in one file.

use std::path::{Path, PathBuf};

pub fn local_user() -> Option<String> {
    ["USER", "USERNAME", "LOGNAME"].iter().find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty())).or_else(passwd_user)
}

/// Containers and CI often run without `$USER`; the passwd entry still knows.
fn passwd_user() -> Option<String> {
    whoami::username().ok().filter(|u| !u.is_empty())
}

pub fn home_dir() -> Option<PathBuf> {
    let keys: &[&str] = if cfg!(windows) { &["USERPROFILE", "HOME"] } else { &["HOME"] };
    keys.iter().find_map(|k| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from))
}

/// `~/x` (and on Windows `%USERPROFILE%\x`) the way each platform's users write them.
pub fn expand_home(p: &str) -> PathBuf {
    expand_home_with(p, home_dir().as_deref())
}

/// [`expand_home`] with the home directory passed in, so the Windows spellings are testable
/// anywhere. Both separators split what follows the prefix: one `targets.toml` is shared by
/// Windows and Linux machines, and `~\.ssh\id` must name the same key on both.
pub fn expand_home_with(p: &str, home: Option<&Path>) -> PathBuf {
    let rest = if p == "~" { Some("") } else { ["~/", "~\\", "%USERPROFILE%"].iter().find_map(|pre| p.strip_prefix(pre)) };
    match (home, rest) {
        (Some(h), Some(rest)) => rest.split(['/', '\\']).filter(|c| !c.is_empty()).fold(h.to_path_buf(), |acc, c| acc.join(c)),
        _ => PathBuf::from(p),
    }
}

/// As `gethostname` says (Windows: the computer name), for locks, audit lines and ssh
/// config's `%l`/`%L`.
pub fn hostname() -> String {
    whoami::hostname()
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

/// `$BST_CACHE_DIR`, else the platform's cache directory, plus `bst`.
pub fn cache_dir() -> Option<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(d) = env("BST_CACHE_DIR") {
        return Some(d);
    }
    let base = if cfg!(windows) { env("LOCALAPPDATA") } else { env("XDG_CACHE_HOME").or_else(|| env("HOME").map(|h| h.join(".cache"))) };
    base.map(|b| b.join("bst"))
}

/// Whether this terminal shows ANSI colour: always on Unix; on Windows once the console's
/// virtual-terminal mode is on (Windows Terminal has it; conhost gets it switched on here, and
/// a console that refuses gets no colour rather than escape codes as text).
pub fn terminal_shows_ansi() -> bool {
    if cfg!(windows) {
        anstyle_query::windows::enable_ansi_colors().unwrap_or(false)
    } else {
        true
    }
}

/// Reads one line from the terminal without echoing it: `env set` values and key
/// passphrases. The caller prints the prompt and says why the input is hidden. rpassword
/// does the terminal work on every OS (termios on Unix, the console mode on Windows, where
/// echo-off was missing) and ends the line on the terminal itself. It drops control
/// characters such as a tab, as a line editor would; a value that needs them comes in
/// through a pipe, byte for byte.
pub fn read_hidden_line() -> std::io::Result<String> {
    rpassword::read_password()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_expands_with_either_separator_and_other_paths_are_untouched() {
        let home = Path::new("/home/me");
        let ssh_key = home.join(".ssh").join("id_ed25519");
        assert_eq!(expand_home_with("~", Some(home)), home);
        assert_eq!(expand_home_with("~/x", Some(home)), home.join("x"));
        assert_eq!(expand_home_with("~\\x", Some(home)), home.join("x"));
        assert_eq!(expand_home_with("~/.ssh/id_ed25519", Some(home)), ssh_key);
        assert_eq!(expand_home_with("~\\.ssh\\id_ed25519", Some(home)), ssh_key);
        assert_eq!(expand_home_with("%USERPROFILE%\\.ssh\\id_ed25519", Some(home)), ssh_key);
        assert_eq!(expand_home_with("%USERPROFILE%", Some(home)), home);
        for untouched in ["d:\\Balisnaptrip\\WEB", "/etc/ssh/key", "~user/x", "x~/y", "keys\\%USERPROFILE%"] {
            assert_eq!(expand_home_with(untouched, Some(home)), PathBuf::from(untouched), "{untouched}");
        }
        assert_eq!(expand_home_with("~/x", None), PathBuf::from("~/x"));
    }
}
