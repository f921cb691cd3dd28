//! Reading and writing OpenSSH `known_hosts` lines ourselves, for what libssh2 does not do:
//! fingerprints of the key we *expected* (so a changed key shows both), the key types known
//! for a host (so the handshake negotiates one we can verify), and hashed entries
//! (`HashKnownHosts yes`) when recording a new key.

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Digest;

/// `host` for port 22, `[host]:port` otherwise: the name OpenSSH files keys under.
pub fn pattern(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

pub fn fingerprint(blob: &[u8]) -> String {
    format!("SHA256:{}", STANDARD_NO_PAD.encode(sha2::Sha256::digest(blob)))
}

fn hashed_matches(entry: &str, name: &str) -> bool {
    let mut parts = entry.trim_start_matches("|1|").splitn(2, '|');
    let (Some(salt), Some(hash)) = (parts.next(), parts.next()) else { return false };
    let (Ok(salt), Ok(hash)) = (STANDARD.decode(salt), STANDARD.decode(hash)) else { return false };
    let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(&salt) else { return false };
    mac.update(name.as_bytes());
    mac.verify_slice(&hash).is_ok()
}

fn host_field_matches(field: &str, name: &str) -> bool {
    if field.starts_with("|1|") {
        return hashed_matches(field, name);
    }
    let mut hit = false;
    for p in field.split(',') {
        if let Some(neg) = p.strip_prefix('!') {
            if crate::sshconfig::host_matches(&[neg.to_string()], name) {
                return false;
            }
        } else if crate::sshconfig::host_matches(&[p.to_string()], name) {
            hit = true;
        }
    }
    hit
}

/// Keys (type, blob) listed for `host:port`, skipping markers (`@revoked`, `@cert-authority`).
pub fn keys_for(text: &str, host: &str, port: u16) -> Vec<(String, Vec<u8>)> {
    let name = pattern(host, port);
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with('@') {
            continue;
        }
        let mut f = line.split_whitespace();
        let (Some(hosts), Some(kind), Some(b64)) = (f.next(), f.next(), f.next()) else { continue };
        if host_field_matches(hosts, &name) {
            if let Ok(blob) = STANDARD.decode(b64) {
                out.push((kind.to_string(), blob));
            }
        }
    }
    out
}

/// A line recording `blob` for `host:port`, hashed like OpenSSH when asked.
pub fn line(host: &str, port: u16, kind: &str, blob: &[u8], hashed: bool) -> String {
    let name = pattern(host, port);
    let field = if hashed {
        let salt: [u8; 20] = {
            let mut s = [0u8; 20];
            // Salt needs uniqueness, not secrecy: time, pid and the key itself.
            let seed = format!("{:?}{}{}", std::time::SystemTime::now(), std::process::id(), STANDARD.encode(blob));
            s.copy_from_slice(&sha2::Sha256::digest(seed.as_bytes())[..20]);
            s
        };
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(&salt).expect("any key length");
        mac.update(name.as_bytes());
        format!("|1|{}|{}", STANDARD.encode(salt), STANDARD.encode(mac.finalize().into_bytes()))
    } else {
        name
    };
    format!("{field} {kind} {}\n", STANDARD.encode(blob))
}

/// libssh2 host key method names to offer first, for the key types already known.
pub fn preferred_methods(known: &[(String, Vec<u8>)]) -> Option<String> {
    let mut prefs: Vec<&str> = Vec::new();
    for (kind, _) in known {
        let algs: &[&str] = match kind.as_str() {
            "ssh-rsa" => &["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"],
            "ssh-ed25519" => &["ssh-ed25519"],
            "ecdsa-sha2-nistp256" => &["ecdsa-sha2-nistp256"],
            "ecdsa-sha2-nistp384" => &["ecdsa-sha2-nistp384"],
            "ecdsa-sha2-nistp521" => &["ecdsa-sha2-nistp521"],
            _ => &[],
        };
        for a in algs {
            if !prefs.contains(a) {
                prefs.push(a);
            }
        }
    }
    (!prefs.is_empty()).then(|| prefs.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_plain_hashed_and_patterned_entries() {
        let blob = b"\x00\x00\x00\x0bssh-ed25519key".to_vec();
        let hashed = line("127.0.0.1", 2222, "ssh-ed25519", &blob, true);
        assert!(hashed.starts_with("|1|"));
        let text = format!(
            "# c\n@cert-authority *.x ssh-rsa AAAA\nother ssh-ed25519 {}\n{hashed}*.example.com,!bad.example.com ssh-rsa {}\n",
            STANDARD.encode(b"zz"),
            STANDARD.encode(b"rsa")
        );
        assert_eq!(keys_for(&text, "127.0.0.1", 2222), vec![("ssh-ed25519".to_string(), blob.clone())]);
        assert!(keys_for(&text, "127.0.0.1", 22).is_empty(), "[host]:port is not host");
        assert_eq!(keys_for(&text, "web.example.com", 22).len(), 1);
        assert!(keys_for(&text, "bad.example.com", 22).is_empty());
        assert_eq!(line("h", 22, "ssh-ed25519", &blob, false), format!("h ssh-ed25519 {}\n", STANDARD.encode(&blob)));
    }

    #[test]
    fn prefers_known_types() {
        let known = vec![("ssh-rsa".to_string(), vec![]), ("ssh-ed25519".to_string(), vec![])];
        assert_eq!(preferred_methods(&known).as_deref(), Some("rsa-sha2-512,rsa-sha2-256,ssh-rsa,ssh-ed25519"));
        assert_eq!(preferred_methods(&[]), None);
    }
}
