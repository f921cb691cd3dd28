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

/// `std::fs::canonicalize`, in the form a Windows user writes. There std returns the verbatim
/// form (`\\?\Z:\tmp\ws`), which bst then showed in `deploying …`, `--json`, errors,
/// `.release-meta` and reports, where Windows users know only `Z:\tmp\ws`. dunce drops the
/// `\\?\` only where the plain path names the same file: a drive path whose names are all
/// ordinary (no `CON`, no trailing dot or space, no `..`) and under 260 characters.
/// `\\?\UNC\server\share\…` and the rest stay verbatim, where stripping would change what
/// the path means. On other systems this is `std::fs::canonicalize` itself.
pub fn canonical(p: &Path) -> std::io::Result<PathBuf> {
    dunce::canonicalize(p)
}

/// `std::path::absolute` (no I/O, for a path that may not exist yet), shown as
/// [`canonical`] shows paths: a `\\?\C:\…` that came in (`--config`, a source written so in
/// `targets.toml`) goes out as `C:\…` where that is the same file.
pub fn absolute(p: &Path) -> std::io::Result<PathBuf> {
    std::path::absolute(p).map(|a| shown(&a).to_path_buf())
}

/// A path as users see it: [`canonical`]'s rule without the file system (`dunce::simplified`).
/// Only Windows has verbatim paths; elsewhere `\\?\C:\x` is an ordinary file name and is
/// returned as it is.
pub fn shown(p: &Path) -> &Path {
    dunce::simplified(p)
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

    /// The verbatim prefix goes where the plain path names the same file and stays where
    /// it does not, as dunce decides; off Windows nothing is a verbatim path.
    #[test]
    fn shown_paths_drop_the_verbatim_prefix_only_where_windows_means_the_same_file() {
        let same = |p: &str| shown(Path::new(p)).to_str().unwrap().to_string();
        let kept = [r"\\?\UNC\server\share\ws", r"\\?\C:\tmp\CON", r"\\?\C:\tmp\x.", r"\\.\pipe\openssh-ssh-agent", r"C:\tmp\ws"];
        for p in kept {
            assert_eq!(same(p), p);
        }
        if cfg!(windows) {
            assert_eq!(same(r"\\?\C:\x"), r"C:\x");
            assert_eq!(same(r"\\?\Z:\tmp\ws"), r"Z:\tmp\ws");
        } else {
            assert_eq!(same(r"\\?\C:\x"), r"\\?\C:\x");
            assert_eq!(same("/tmp/ws"), "/tmp/ws");
        }
    }

    #[test]
    fn canonical_and_absolute_paths_are_never_verbatim_for_an_ordinary_directory() {
        let d = tempfile::tempdir().unwrap();
        let canon = canonical(d.path()).unwrap();
        assert!(canon.is_absolute() && canon.is_dir(), "{}", canon.display());
        assert!(!canon.to_string_lossy().starts_with(r"\\?\"), "{}", canon.display());
        assert_eq!(canonical(&canon.join(".")).unwrap(), canon);
        let missing = absolute(&canon.join("not-yet")).unwrap();
        assert_eq!(missing, canon.join("not-yet"));
    }
}
