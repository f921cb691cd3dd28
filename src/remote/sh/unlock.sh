# Removes the lock only if it is still ours: a lock broken and retaken by someone else must
# survive our cleanup.
# needs: B, bst_token, bst_lock
# shellcheck disable=SC2154 # set by the prologue
if [ -f "$B/$bst_lock/owner" ] && grep -qF "$bst_token" "$B/$bst_lock/owner"; then rm -rf "${B:?}/$bst_lock"; fi
