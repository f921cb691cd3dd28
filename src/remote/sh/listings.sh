# Listings that change when any file under them is written, truncated, replaced, renamed or
# removed (size, mode, mtime, ctime, inode, device). Run in the cache directory.
#
# The pristine copy and its manifest. GNU find: without -printf nothing is ever recorded,
# so nothing is ever trusted and every deploy is a full upload.
bst_stat_listing() { find pristine manifest -printf '%y %m %s %T@ %C@ %i %D %p\0'; }
# Whether the cache in "$1" is as its cache job proved it (the stat listing it recorded).
bst_unchanged() { (cd "$1" && bst_stat_listing 2>/dev/null | cmp -s - pristine.stat); }
# The spare and the manifest, from the path list the cache job recorded (spare.paths),
# stat'ed in parallel and sorted: with cold caches the inode reads dominate, and eight at a
# time take half the time of one find. A file added or removed changes its directory's
# mtime and ctime, and the directories are in the list. Lines, line-buffered: the parallel
# writers then never split one another's records.
bst_spare_listing() { xargs -0 -r -P 8 -n 256 stdbuf -oL stat --printf '%F %a %s %.9Y %.9Z %i %d %n\n' < spare.paths | LC_ALL=C sort; }
# The identity of the recorded spare listing: a new one is a new file (inode, mtime).
bst_spare_id() { find spare.stat -printf '%i %T@'; }
