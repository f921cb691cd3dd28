# bst unlock: breaks the lock whatever holds it, printing whose it was. Renamed first, so
# the holder printed is exactly the lock deleted, even if another run takes a fresh lock
# meanwhile. Prints HELD <owner> or FREE.
# needs: B, bst_nonce, bst_lock
# shellcheck disable=SC2154 # set by the prologue
trap '' PIPE HUP
X="$B/$bst_lock.broken.$$.$bst_nonce"
if [ -d "$B/$bst_lock" ] && mv "$B/$bst_lock" "$X" 2>/dev/null; then printf 'HELD '; tr -d '\n' < "$X/owner" 2>/dev/null; echo; rm -rf "$X"; else echo FREE; fi
