//! Every name bst gives a file or directory on the server, once. Scripts, listings and the
//! release rules all take them from here, so a rename cannot leave one spelling behind.

/// Inside every release: bst's record of it.
pub const META_FILE: &str = ".release-meta";
/// Where a new meta is written before it is renamed over [`META_FILE`].
pub const META_TMP: &str = ".release-meta.tmp";

/// Reserved root entry of an upload: bst's own files travel in the same tar stream.
pub const UPLOAD_DIR: &str = ".bst-upload";

/// The last entry of every upload. The stream is concatenated gzip members, and GNU tar
/// accepts an archive cut at an entry boundary, so only this proves the stream was complete.
pub const COMPLETE_MARKER: &str = ".bst-upload/complete";

/// Held while a command changes the target: an atomic `mkdir`, the owner inside.
pub const LOCK_DIR: &str = ".bst-lock";
/// Uploads in progress: a staging name no command counts as a release.
pub const INCOMING_DIR: &str = ".bst-incoming";
/// Releases being pruned: renamed here first, so a prune cut short never leaves a
/// half-deleted directory under `releases/` that still reads as an ok release.
pub const TRASH_DIR: &str = ".bst-trash";
/// The pristine copy of the last snapshot and its manifest, for delta redeploys.
pub const CACHE_DIR: &str = ".bst-cache";
