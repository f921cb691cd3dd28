//! Every user-facing failure and its exit code, in one reviewed place. Commands return
//! `anyhow` chains; `main` finds the [`Error`] in the chain to pick the exit code.

use std::fmt;

/// Documented in the README; tests rely on them. Never renumber.
pub mod code {
    pub const OK: i32 = 0;
    /// The operation ran and failed (build failed, nothing to roll back, remote error).
    pub const FAILED: i32 = 1;
    /// Bad command line or configuration; nothing was contacted.
    pub const USAGE: i32 = 2;
    /// A service is inactive or unhealthy (`systemctl`'s LSB convention).
    pub const UNHEALTHY: i32 = 3;
    /// Another run holds the target's lock.
    pub const LOCKED: i32 = 4;
    /// Could not connect, authenticate, or trust the host key.
    pub const CONNECT: i32 = 5;
    /// The outcome is not known: the connection went after the upload, and the server could
    /// not be asked afterwards what it did.
    pub const UNKNOWN: i32 = 6;
    /// Interrupted by Ctrl-C (128 + SIGINT).
    pub const INTERRUPTED: i32 = 130;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),

    #[error("{path}:{line}:{col}: {msg}")]
    Config { path: String, line: usize, col: usize, msg: String },

    #[error("unknown target `{name}` in {config}{}", did_you_mean(name, known))]
    UnknownTarget { name: String, config: String, known: Vec<String> },

    #[error("invalid release id `{0}`: expected UTC YYYYMMDDTHHMMSSZ, e.g. 20260220T051228Z")]
    BadReleaseId(String),

    #[error("target `{target}` is locked by {holder}\n  if that run is gone, break the lock with: bst unlock {target}")]
    Locked { target: String, holder: String },

    /// The holder runs on this machine right now: breaking its lock would let two runs
    /// deploy at once, so `bst unlock` is not offered.
    #[error("target `{target}` is locked by {holder}\n  that run is still going on this machine: wait for it to finish, or stop it (kill {pid}) and run again")]
    LockedLive { target: String, holder: String, pid: u32 },

    #[error("cannot connect to {host}:{port}: {cause}")]
    Connect { host: String, port: u16, cause: String },

    #[error("host key for {host}:{port} is not known ({fingerprint})\n  refusing to continue; verify the fingerprint, then re-run with --accept-new-host-key to record it in {known_hosts}")]
    HostKeyUnknown { host: String, port: u16, fingerprint: String, known_hosts: String },

    #[error("HOST KEY FOR {host}:{port} HAS CHANGED: {known_hosts} does not list the key it offered ({fingerprint})\n  this may be an attack; if the server was really reinstalled, remove the old entry from {known_hosts}")]
    HostKeyChanged { host: String, port: u16, fingerprint: String, known_hosts: String },

    #[error("REVOKED HOST KEY for {host}:{port}: the key it offered ({fingerprint}) is marked @revoked in {at}\n  refusing to connect; the server's key was withdrawn, ask whoever runs it for the new one")]
    HostKeyRevoked { host: String, port: u16, fingerprint: String, at: String },

    #[error("host key for {host}:{port} ({fingerprint}) is not listed; only a @cert-authority line vouches for this host ({at})\n  bst cannot check host certificates (libssh2 has no support for them); add the host's own key to known_hosts")]
    HostKeyCertificate { host: String, port: u16, fingerprint: String, at: String },

    /// `from`: which line chose that user, and how to change it.
    #[error("authentication as `{user}` on {host}:{port} failed; tried: {tried}\n  {from}")]
    Auth { user: String, host: String, port: u16, tried: String, from: String },

    /// Something is inactive or unhealthy: exit 3, like `systemctl status`.
    #[error("{0}")]
    Unhealthy(String),

    #[error("interrupted")]
    Interrupted,

    #[error("{0}")]
    Failed(String),

    /// Whether the server switched is not known: exit 6.
    #[error("{0}")]
    Unknown(String),
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) | Error::Config { .. } | Error::UnknownTarget { .. } | Error::BadReleaseId(_) => code::USAGE,
            Error::Locked { .. } | Error::LockedLive { .. } => code::LOCKED,
            Error::Connect { .. }
            | Error::HostKeyUnknown { .. }
            | Error::HostKeyChanged { .. }
            | Error::HostKeyRevoked { .. }
            | Error::HostKeyCertificate { .. }
            | Error::Auth { .. } => code::CONNECT,
            Error::Interrupted => code::INTERRUPTED,
            Error::Unhealthy(_) => code::UNHEALTHY,
            Error::Failed(_) => code::FAILED,
            Error::Unknown(_) => code::UNKNOWN,
        }
    }
}

impl Error {
    /// The stable name of this failure in `--json` error documents (docs/json.md). Never
    /// rename one: scripts match on them.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Usage(_) => "usage",
            Error::Config { .. } => "config",
            Error::UnknownTarget { .. } => "unknown_target",
            Error::BadReleaseId(_) => "bad_release_id",
            Error::Locked { .. } | Error::LockedLive { .. } => "locked",
            Error::Connect { .. } => "connect",
            Error::HostKeyUnknown { .. } => "host_key_unknown",
            Error::HostKeyChanged { .. } => "host_key_changed",
            Error::HostKeyRevoked { .. } => "host_key_revoked",
            Error::HostKeyCertificate { .. } => "host_key_certificate",
            Error::Auth { .. } => "auth",
            Error::Unhealthy(_) => "unhealthy",
            Error::Interrupted => "interrupted",
            Error::Failed(_) => "failed",
            Error::Unknown(_) => "unknown",
        }
    }
}

/// The `kind` for any error chain: the first [`Error`] found decides, else `failed` (exit 1,
/// like [`exit_code_of`]).
pub fn kind_of(err: &anyhow::Error) -> &'static str {
    err.chain().find_map(|e| e.downcast_ref::<Error>()).map_or("failed", Error::kind)
}

/// The exit code for any error chain: the first [`Error`] found decides, else 1.
pub fn exit_code_of(err: &anyhow::Error) -> i32 {
    err.chain().find_map(|e| e.downcast_ref::<Error>()).map_or(code::FAILED, Error::exit_code)
}

/// The candidate a mistyped word most likely meant: at most one edit (or a third of the
/// word's length) away, counting a swap of neighbours as one, as `git` and `cargo` suggest.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), c))
        .filter(|(d, c)| *d <= limit && *c != word)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// `; did you mean `x`?` or, with no close candidate, the list to pick from.
pub fn did_you_mean(word: &str, known: &[String]) -> String {
    match closest(word, known.iter().map(String::as_str)) {
        Some(c) => format!("; did you mean `{c}`?"),
        None if known.is_empty() => " (it defines no targets; add a [targets.NAME] table)".to_string(),
        None => format!(" (targets: {})", known.join(", ")),
    }
}

/// `a, b, c` for messages.
pub struct Listed<'a>(pub &'a [String]);

impl fmt::Display for Listed<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        f.write_str(&self.0.join(", "))
    }
}
