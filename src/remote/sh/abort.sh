# After a failed deploy: stop the build, drop the staging dir, mark the release failed
# unless it is live. audit.sh and unlock.sh follow.
# needs: B, bst_id, bst_failed_meta, bst_incoming, bst_write_meta (meta.sh)
# shellcheck disable=SC2154 # set by the prologue
P="$B/logs/.$bst_id.pid"
if [ -f "$P" ]; then kill -TERM "-$(cat "$P")" 2>/dev/null || kill -TERM "$(cat "$P")" 2>/dev/null; rm -f "$P"; fi
rm -rf "${B:?}/$bst_incoming/$bst_id"
rmdir "$B/$bst_incoming" 2>/dev/null
if [ -d "$B/releases/$bst_id" ] && [ "$(readlink "$B/current" 2>/dev/null)" != "releases/$bst_id" ]; then
  bst_write_meta "$B/releases/$bst_id" printf '%s\n' "$bst_failed_meta"
fi
