//! Files a deploy never ships unless the target's `include` names them: secrets that do not
//! belong in a release (private keys, `.env` files, `*.pem`/`*.key`). A release directory is
//! world-readable on most servers, and every release is kept five times over.
//!
//! Names decide for most files. Content is read only where a name cannot tell, that is for
//! small files whose name has no extension or a key-ish one (`deploy_key`, `server.txt`): a
//! 50,000-file workspace has a handful of those, so the check costs no full read of the tree.

use std::io::Read;
use std::path::Path;

use super::entry::{Entry, Kind};

/// Why a path is withheld, in words a user acts on.
pub fn reason(source: &Path, e: &Entry) -> Option<&'static str> {
    let name = e.path.rsplit('/').next().unwrap_or(&e.path);
    if name.starts_with(".env") {
        return Some("an env file (the server's own copy belongs in shared_files)");
    }
    let lower = name.to_ascii_lowercase();
    let ext = lower.rsplit_once('.').filter(|(stem, _)| !stem.is_empty()).map(|(_, x)| x);
    if matches!(ext, Some("pem" | "key")) {
        return Some("a key or certificate file (*.pem, *.key)");
    }
    // `id_rsa`, `id_ed25519`, `id_deploy`: ssh's private key names; the `.pub` halves, and
    // source files such as `id_map.ts`, have an extension.
    if lower.len() > 3 && lower.starts_with("id_") && ext.is_none() {
        return Some("an SSH private key name (id_*)");
    }
    let sniff = matches!(e.kind, Kind::File { .. })
        && e.stat.is_none_or(|s| s.size <= MAX_KEY_SIZE)
        && matches!(ext, None | Some("txt" | "priv" | "private" | "ppk" | "asc" | "der" | "p8" | "pk8" | "sec" | "bak" | "old"));
    (sniff && looks_like_private_key(&source.join(&e.path))).then_some("a private key (its first line says so)")
}

/// An RSA 16384-bit PEM key is ~13 KiB; nothing bigger is a key file.
const MAX_KEY_SIZE: u64 = 16 * 1024;

fn looks_like_private_key(path: &Path) -> bool {
    let mut head = [0u8; 256];
    let Ok(mut f) = std::fs::File::open(path) else { return false };
    let Ok(n) = f.read(&mut head) else { return false };
    let head = String::from_utf8_lossy(&head[..n]);
    let first = head.trim_start_matches('\u{feff}').trim_start().lines().next().unwrap_or("");
    // `-----BEGIN OPENSSH PRIVATE KEY-----`, `RSA`, `EC`, `DSA`, `ENCRYPTED`, PKCS#8; PuTTY.
    (first.starts_with("-----BEGIN ") && first.ends_with("PRIVATE KEY-----")) || first.starts_with("PuTTY-User-Key-File-")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str) -> Entry {
        Entry { path: path.into(), kind: Kind::File { exec: false }, stat: None, clean: None }
    }

    #[test]
    fn names_decide_and_content_only_where_names_cannot() {
        let d = tempfile::tempdir().unwrap();
        let w = |p: &str, body: &str| {
            let full = d.path().join(p);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(full, body).unwrap();
        };
        w("deploy_key", "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Bl\n-----END OPENSSH PRIVATE KEY-----\n");
        w("notes.txt", "  -----BEGIN RSA PRIVATE KEY-----\n");
        w("README", "-----BEGIN PUBLIC KEY-----\n");
        w("src/key.ts", "-----BEGIN OPENSSH PRIVATE KEY-----\n");
        w("Makefile", "all:\n");
        let r = |p: &str| reason(d.path(), &file(p));
        assert!(r("apps/web/.env.local").is_some());
        assert!(r(".env").is_some());
        assert!(r("certs/server.PEM").is_some());
        assert!(r("tls.key").is_some());
        assert!(r("home/.ssh/id_ed25519").is_some());
        assert!(r("home/.ssh/id_ed25519.pub").is_none());
        assert!(r("src/id_map.ts").is_none());
        assert!(r("deploy_key").is_some());
        assert!(r("notes.txt").is_some());
        assert!(r("README").is_none(), "a public key is no secret");
        assert!(r("src/key.ts").is_none(), "source files are not read");
        assert!(r("Makefile").is_none());
        assert!(r("apps/.envrc").is_some(), "direnv files hold secrets too");
        let link = Entry { path: "deploy_key".into(), kind: Kind::Symlink, stat: None, clean: None };
        assert!(reason(d.path(), &link).is_none(), "a link ships as a link, never its target's bytes");
    }
}
