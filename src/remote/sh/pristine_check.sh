# Before a delta without a spare: the release is copied from the pristine tree, which must
# be as the cache job proved it, or it loses its generation (the delta then exits stale
# and the client sends everything). A damaged pristine copy behind a good spare does not
# matter to this deploy: the cache job proves the patched copy again before the next one.
# needs: C, bst_unchanged (listings.sh)
# shellcheck disable=SC2154 # set by the prologue
if [ ! -f "$C/spare.generation" ] && [ -f "$C/generation" ] && ! bst_unchanged "$C"; then
  rm -f "$C/generation"
  echo 'V the pristine copy changed since it was verified; this deploy sends everything' >&2
fi
