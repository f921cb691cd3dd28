//! Who and where we are: the local user, host name, home and cache directories, and hidden
//! terminal input. The only module that asks the operating system these questions, so tests
//! steer all of them through the environment (`HOME`, `USER`, `BST_CACHE_DIR`) and Windows
//! differences live in one file.

use std::path::{Path, PathBuf};

pub fn local_user() -> Option<String> {
    ["USER", "USERNAME", "LOGNAME"].iter().find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty())).or_else(passwd_user)
}

/// Containers and CI often run without `$USER`; the passwd entry still knows.
#[cfg(unix)]
fn passwd_user() -> Option<String> {
    // SAFETY: getpwuid returns a pointer into static storage or null; we copy out at once.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if pw.is_null() || (*pw).pw_name.is_null() {
            return None;
        }
        Some(std::ffi::CStr::from_ptr((*pw).pw_name).to_string_lossy().into_owned())
    }
}

#[cfg(not(unix))]
fn passwd_user() -> Option<String> {
    None
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

pub fn hostname() -> String {
    #[cfg(unix)]
    {
        let mut buf = [0u8; 256];
        // SAFETY: gethostname writes at most buf.len() bytes into our buffer.
        if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0 {
            let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
            return String::from_utf8_lossy(&buf[..end]).into_owned();
        }
    }
    std::env::var("COMPUTERNAME").or_else(|_| std::env::var("HOSTNAME")).unwrap_or_else(|_| "unknown".into())
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

/// Reads one line from a terminal stdin without echoing it: `env set` values and key
/// passphrases. The caller prints the prompt and says why the input is hidden.
pub fn read_hidden_line() -> std::io::Result<String> {
    let mut line = String::new();
    let _quiet = EchoOff::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(line)
}

struct EchoOff {
    #[cfg(unix)]
    saved: Option<libc::termios>,
}

impl EchoOff {
    fn new() -> Self {
        #[cfg(unix)]
        {
            // SAFETY: tcgetattr/tcsetattr on stdin with a zeroed termios we own.
            unsafe {
                let mut t: libc::termios = std::mem::zeroed();
                if libc::tcgetattr(0, &mut t) == 0 {
                    let saved = t;
                    t.c_lflag &= !libc::ECHO;
                    libc::tcsetattr(0, libc::TCSANOW, &t);
                    return EchoOff { saved: Some(saved) };
                }
            }
            EchoOff { saved: None }
        }
        #[cfg(not(unix))]
        EchoOff {}
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(t) = self.saved {
            // SAFETY: restoring the settings read in `new`.
            unsafe {
                libc::tcsetattr(0, libc::TCSANOW, &t);
            }
        }
    }
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
