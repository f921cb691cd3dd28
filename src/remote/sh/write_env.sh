# Writes stdin to the shared env file atomically, after a backup <file>.bak.<stamp> (never
# overwriting an earlier backup), keeping only the newest bst_keep backups (old ones hold old
# secrets). An existing file keeps its mode, owner and group: the temp file is a `cp -p`
# copy that is then overwritten; where the SSH user may not give it the original owner, the
# file is rewritten in place instead (still after the backup). A new file is 0600. Prints
# BACKUP <path> when there was a file to back up and PRUNED <n>, the backups removed.
# Follows register.sh; audit.sh and unlock.sh follow.
# needs: B, bst_rel, bst_stamp, bst_keep
# shellcheck disable=SC2154 # set by the prologue
set -eu
F="$B/shared/$bst_rel"
if [ -L "$F" ]; then F=$(readlink -f "$F"); fi
mkdir -p "$(dirname "$F")"
umask 077
T="$F.bst-tmp.$$"
if [ -f "$F" ]; then
  # Names must keep sorting by age, or pruning deletes a newer backup than it keeps: the
  # counter is zero-padded (`-10` after `-2`) and always one past the highest in use, never
  # a name pruning freed earlier in the same second.
  bk="$F.bak.$bst_stamp"; hi=0
  for e in "$F.bak.$bst_stamp"-*; do
    [ -e "$e" ] || continue
    # expr, not $((…)): a suffix that is not a number must be skipped, not fail the script.
    k=${e##*-}
    # shellcheck disable=SC2003
    k=$(expr "$k" + 0 2>/dev/null) || continue
    [ "$k" -gt "$hi" ] && hi=$k
  done
  if [ -e "$bk" ] || [ "$hi" -gt 0 ]; then bk="$F.bak.$bst_stamp-$(printf '%04d' $((hi + 1)))"; fi
  cp -p "$F" "$bk"; chmod 600 "$bk"
  printf 'BACKUP %s\n' "$bk"
  cp -p "$F" "$T" 2>/dev/null || { rm -f "$T"; cp "$F" "$T"; }
  cat > "$T"
  # ls -ln is the portable way to read mode, owner and group together.
  # shellcheck disable=SC2012
  if [ "$(ls -ln "$T" | awk '{print $1, $3, $4}')" = "$(ls -ln "$F" | awk '{print $1, $3, $4}')" ]; then
    mv -f "$T" "$F"
  else
    cat "$T" > "$F"; rm -f "$T"
  fi
else
  cat > "$T"
  chmod 600 "$T"
  mv -f "$T" "$F"
fi
# Names sort by time (.bak.<stamp>, then -0001, -0002…): all but the newest bst_keep go.
total=0; for b in "$F".bak.*; do [ -f "$b" ] && total=$((total+1)); done
pr=0
for b in "$F".bak.*; do
  [ -f "$b" ] || continue
  [ "$total" -gt "$bst_keep" ] || break
  rm -f "$b"; total=$((total-1)); pr=$((pr+1))
done
printf 'PRUNED %s\n' "$pr"
set +e
