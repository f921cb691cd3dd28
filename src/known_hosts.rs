//! Reading and writing OpenSSH `known_hosts` lines ourselves, for what libssh2 does not do:
//! fingerprints of the key we *expected* (so a changed key shows both), the key types known
//! for a host (so the handshake negotiates one we can verify), and hashed entries
//! (`HashKnownHosts yes`) when recording a new key.

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Digest;

/// `host` for port 22, `[host]:port` otherwise: the name OpenSSH files keys under. The bare
/// host counts for another port only when it lists the very key offered (ssh's "matching key
/// w/out port"); libssh2's own check also takes a different key there as "changed", so it is
/// not used.
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

/// The name to look up: `HostKeyAlias` as written (no port), else [`pattern`].
pub fn lookup_name(host: &str, port: u16, alias: Option<&str>) -> String {
    alias.map_or_else(|| pattern(host, port), str::to_string)
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

#[derive(Debug, Clone, PartialEq)]
pub enum Marker {
    Plain,
    /// `@revoked`: this key must never be accepted for these hosts.
    Revoked,
    /// `@cert-authority`: host certificates signed by this key are trusted.
    CertAuthority,
}

/// One known_hosts line that names the host.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub marker: Marker,
    pub kind: String,
    pub blob: Vec<u8>,
    /// `file:line`
    pub at: String,
}

/// The lines of `files` ((shown path, text), in the order ssh reads them) that list `name`.
/// Unknown markers make a line invalid, as in ssh.
pub fn entries_for(files: &[(String, String)], name: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    for (path, text) in files {
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut f = line.split_whitespace();
            let mut first = f.next();
            let marker = match first {
                Some("@revoked") => Marker::Revoked,
                Some("@cert-authority") => Marker::CertAuthority,
                Some(m) if m.starts_with('@') => continue,
                _ => Marker::Plain,
            };
            if marker != Marker::Plain {
                first = f.next();
            }
            let (Some(hosts), Some(kind), Some(b64)) = (first, f.next(), f.next()) else { continue };
            if host_field_matches(hosts, name) {
                if let Ok(blob) = STANDARD.decode(b64) {
                    out.push(Entry { marker, kind: kind.to_string(), blob, at: format!("{path}:{}", n + 1) });
                }
            }
        }
    }
    out
}

/// What known_hosts says about a plain host key, in OpenSSH's order: a revoked key is refused
/// even if also listed; then a listed key is known; another key of the same type means it
/// changed; a host vouched for only by a certificate authority cannot be checked by bst.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Known,
    Revoked(String),
    Changed { expected: Vec<String>, at: String },
    CertificateOnly(String),
    Unknown,
}

pub fn judge(entries: &[Entry], kind: &str, blob: &[u8]) -> Verdict {
    if let Some(e) = entries.iter().find(|e| e.marker == Marker::Revoked && e.blob == blob) {
        return Verdict::Revoked(e.at.clone());
    }
    let plain: Vec<&Entry> = entries.iter().filter(|e| e.marker == Marker::Plain).collect();
    if plain.iter().any(|e| e.blob == blob) {
        return Verdict::Known;
    }
    let same: Vec<&&Entry> = plain.iter().filter(|e| e.kind == kind).collect();
    if let Some(first) = same.first() {
        return Verdict::Changed { expected: same.iter().map(|e| fingerprint(&e.blob)).collect(), at: first.at.clone() };
    }
    if let Some(ca) = entries.iter().find(|e| e.marker == Marker::CertAuthority) {
        return Verdict::CertificateOnly(ca.at.clone());
    }
    Verdict::Unknown
}

/// A line recording `blob` for `host:port`, hashed like OpenSSH when asked.
pub fn line(name: &str, kind: &str, blob: &[u8], hashed: bool) -> String {
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
        name.to_string()
    };
    format!("{field} {kind} {}\n", STANDARD.encode(blob))
}

/// libssh2 host key method names to offer first, for the key types already known.
pub fn preferred_methods(known: &[Entry]) -> Option<String> {
    let mut prefs: Vec<&str> = Vec::new();
    for e in known.iter().filter(|e| e.marker == Marker::Plain) {
        let algs: &[&str] = match e.kind.as_str() {
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

    fn kinds(text: &str, name: &str) -> Vec<(Marker, String)> {
        entries_for(&[("kh".into(), text.into())], name).into_iter().map(|e| (e.marker, e.kind)).collect()
    }

    #[test]
    fn finds_plain_hashed_patterned_and_marked_entries() {
        let blob = b"\x00\x00\x00\x0bssh-ed25519key".to_vec();
        let hashed = line(&pattern("127.0.0.1", 2222), "ssh-ed25519", &blob, true);
        assert!(hashed.starts_with("|1|"));
        let text = format!(
            "# c\n@cert-authority *.x ssh-rsa AAAA\nother ssh-ed25519 {}\n{hashed}*.example.com,!bad.example.com ssh-rsa {}\n@revoked web.example.com ssh-ed25519 {}\n@bogus web.example.com ssh-rsa AAAA\n",
            STANDARD.encode(b"zz"),
            STANDARD.encode(b"rsa"),
            STANDARD.encode(&blob)
        );
        assert_eq!(kinds(&text, "[127.0.0.1]:2222"), vec![(Marker::Plain, "ssh-ed25519".to_string())]);
        assert!(kinds(&text, "127.0.0.1").is_empty(), "[host]:port is not host");
        assert_eq!(kinds(&text, "web.example.com"), vec![(Marker::Plain, "ssh-rsa".into()), (Marker::Revoked, "ssh-ed25519".into())]);
        assert!(kinds(&text, "bad.example.com").is_empty());
        assert_eq!(kinds(&text, "a.x"), vec![(Marker::CertAuthority, "ssh-rsa".into())]);
        assert_eq!(line("h", "ssh-ed25519", &blob, false), format!("h ssh-ed25519 {}\n", STANDARD.encode(&blob)));
    }

    #[test]
    fn revoked_wins_then_known_then_changed_then_certificate() {
        let e = |marker, kind: &str, blob: &[u8]| Entry { marker, kind: kind.into(), blob: blob.to_vec(), at: "f:1".into() };
        let k = b"key".as_slice();
        assert_eq!(judge(&[e(Marker::Plain, "t", k), e(Marker::Revoked, "t", k)], "t", k), Verdict::Revoked("f:1".into()));
        assert_eq!(judge(&[e(Marker::Plain, "t", k)], "t", k), Verdict::Known);
        assert!(matches!(judge(&[e(Marker::Plain, "t", b"old")], "t", k), Verdict::Changed { .. }));
        assert_eq!(judge(&[e(Marker::Plain, "u", b"old")], "t", k), Verdict::Unknown);
        assert_eq!(judge(&[e(Marker::CertAuthority, "u", b"ca")], "t", k), Verdict::CertificateOnly("f:1".into()));
        assert_eq!(judge(&[], "t", k), Verdict::Unknown);
    }

    #[test]
    fn prefers_known_types() {
        let e = |kind: &str| Entry { marker: Marker::Plain, kind: kind.into(), blob: vec![], at: String::new() };
        assert_eq!(preferred_methods(&[e("ssh-rsa"), e("ssh-ed25519")]).as_deref(), Some("rsa-sha2-512,rsa-sha2-256,ssh-rsa,ssh-ed25519"));
        assert_eq!(preferred_methods(&[]), None);
    }
}
