# Takes the lock with an atomic mkdir and records who holds it: LOCKED, or HELD <owner>
# (and ACTIVE while a script of the holder still runs), or NOBASE when nothing may be
# created and nothing was ever deployed. Staging leftovers of dead runs go once we hold it.
# needs: B, bst_owner, bst_create (non-empty: create the layout), bst_lock, bst_incoming, bst_trash
# shellcheck disable=SC2154 # set by the prologue
if [ -n "$bst_create" ]; then
  mkdir -p "$B/releases" "$B/shared" "$B/logs" || exit 1
elif [ ! -d "$B/releases" ]; then
  echo NOBASE; exit 0
fi
if mkdir "$B/$bst_lock" 2>/dev/null; then
  printf '%s\n' "$bst_owner" > "$B/$bst_lock/owner" || exit 1
  echo LOCKED
  rm -rf "${B:?}/$bst_incoming" "${B:?}/$bst_trash"
else
  printf 'HELD '; tr -d '\n' < "$B/$bst_lock/owner" 2>/dev/null; echo
  a=$(cat "$B/$bst_lock/active" 2>/dev/null)
  if [ -n "$a" ] && kill -0 "$a" 2>/dev/null; then echo ACTIVE; fi
  exit 0
fi
