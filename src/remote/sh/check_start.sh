# Starts proving the spare unchanged in the background, before the lock is even taken, so
# the stat walk overlaps the lock, the round trip, the planning and the upload
# (use_check.sh waits for it). It only reads; its verdict names the generation and the
# listing it compared against, and counts only if both are unchanged when it is used.
# needs: B, bst_cache, bst_spare_listing and bst_spare_id (listings.sh)
# shellcheck disable=SC2154 # set by the prologue
# shellcheck disable=SC2034 # bst_check is waited for by use_check.sh
bst_check=; bst_verdict="$B/$bst_cache/spare.checked.$$"
if [ -f "$B/$bst_cache/spare.generation" ]; then
  ( cd "$B/$bst_cache" || exit 0
    seen="$(cat spare.generation 2>/dev/null) $(bst_spare_id 2>/dev/null)"
    { bst_spare_listing 2>/dev/null | cmp -s - spare.stat; } && printf '%s\n' "$seen" > "$bst_verdict"
  ) < /dev/null > /dev/null 2>&1 &
  bst_check=$!
fi
