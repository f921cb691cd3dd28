# Breaks a lock the client judged stale, only if it is still that lock. The lock is first
# renamed to a name of this script's own (its pid and the client's nonce), an atomic step
# only one breaker can take; a plain rm -rf by two clients that both saw the stale lock
# would let the second delete the fresh lock the first had just taken. What was renamed is
# checked again: if someone broke and retook the lock in between, theirs is put back, never
# deleted. Prints BROKEN, GONE (no lock any more), or HELD <owner> (not that lock).
# needs: B, bst_nonce, bst_lock, bst_owned_by (owned.sh)
# shellcheck disable=SC2154 # set by the prologue
trap '' PIPE HUP
L="$B/$bst_lock"; X="$B/$bst_lock.broken.$$.$bst_nonce"
held() { printf 'HELD '; tr -d '\n' < "$1/owner" 2>/dev/null; echo; }
if [ ! -d "$L" ]; then echo GONE; exit 0; fi
if ! bst_owned_by "$L"; then held "$L"; exit 0; fi
if ! mv "$L" "$X" 2>/dev/null; then echo GONE; exit 0; fi
if bst_owned_by "$X"; then rm -rf "$X"; echo BROKEN; exit 0; fi
# -T: never into a lock directory that appeared meanwhile.
if [ ! -e "$L" ]; then mv -T "$X" "$L" 2>/dev/null; fi
if [ -d "$X" ]; then held "$X"; echo "a lock taken meanwhile was moved aside to $X and could not be put back: another was taken since" >&2; else held "$L"; fi
