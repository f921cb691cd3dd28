//! bst's local caches (hashes, manifests, link memos): one file per kind and identity under
//! the platform cache directory, replaced atomically so a crash never leaves half a cache.

use std::path::{Path, PathBuf};

use sha2::Digest;

/// Temp file and rename: a reader sees the old file or the new one.
pub fn write_atomic(file: &Path, data: &[u8]) {
    write_atomic_with(file, &mut |w| w.write_all(data));
}

/// Writes through a buffer to a temp file renamed into place; failures leave no cache rather
/// than a broken one (it is only a cache).
pub fn write_atomic_with(file: &Path, fill: &mut dyn FnMut(&mut dyn std::io::Write) -> std::io::Result<()>) {
    let Some(dir) = file.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
    let written = std::fs::File::create(&tmp).and_then(|f| {
        let mut w = std::io::BufWriter::new(f);
        fill(&mut w)?;
        std::io::Write::flush(&mut w)
    });
    if written.is_err() || std::fs::rename(&tmp, file).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// The cache file of one `kind` for `identity` (a path, a host), named by its hash.
pub fn cache_file(kind: &str, identity: &str) -> Option<PathBuf> {
    crate::platform::cache_dir().map(|d| d.join(format!("{kind}-{}", hex16(&sha2::Sha256::digest(identity.as_bytes())))))
}

/// A digest's first 128 bits in hex: the name of a cache file, the text of a manifest hash.
pub fn hex16(d: &[u8]) -> String {
    d.iter().take(16).map(|b| format!("{b:02x}")).collect()
}
