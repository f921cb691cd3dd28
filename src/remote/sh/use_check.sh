# What a delta may patch from: a spare (or manifest) touched since the cache job made it,
# or one the background check (check_start.sh) could not prove, is dropped, and the release
# is then copied from the pristine tree. Says what it did on stderr (V, shown with -v). An
# upload run as a command of its own (the retry after a stale base) has no check to wait for.
# needs: B, C, bst_cache, bst_spare_id (listings.sh); bst_check, bst_verdict when in a session
# shellcheck disable=SC2154 # set by the prologue
if [ -n "${bst_check:-}" ]; then wait "$bst_check" 2>/dev/null || true; bst_check=; fi
if [ -f "$C/spare.generation" ]; then
  now="$(cat "$C/spare.generation" 2>/dev/null) $(cd "$C" && bst_spare_id 2>/dev/null)"
  if [ -z "${bst_verdict:-}" ] || [ "$(cat "$bst_verdict" 2>/dev/null)" != "$now" ]; then
    rm -rf "$C/spare" "$C/spare.generation"
    echo 'V the spare copy changed since it was made, or could not be checked; the release is copied from the pristine tree' >&2
  fi
fi
rm -f "${bst_verdict:-/nonexistent}"
