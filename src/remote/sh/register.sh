# Records this script's pid in the lock, so a lock whose client died is not broken while
# its last script is still at work on the server.
# needs: B, bst_lock
# shellcheck disable=SC2154 # set by the prologue
if [ -d "$B/$bst_lock" ]; then echo $$ > "$B/$bst_lock/active" 2>/dev/null; fi
