# After the state listing (in the base): the pristine copy's manifest, gzip'd
# (BST-MANIFEST-GZ <bytes> then the data), or MSAME <bytes> when the client already has
# the generation bst_known. From stdin with -n: no file name or timestamp, so no gzip
# warning (exit 2).
# needs: bst_known, bst_cache, bst_lock
# shellcheck disable=SC2154 # set by the prologue
if [ -f "$bst_cache/generation" ] && [ -d "$bst_cache/pristine" ] && [ -f "$bst_cache/manifest" ]; then
  if [ "$(cat "$bst_cache/generation")" = "$bst_known" ] && [ "$(head -c 14 "$bst_cache/manifest")" = bst-manifest-2 ]; then printf 'MSAME %s\n' "$(wc -c < "$bst_cache/manifest" | tr -d ' ')"; else
  M=$bst_lock/manifest.gz
  if gzip -1 -c -n < "$bst_cache/manifest" > "$M"; then printf 'BST-MANIFEST-GZ %s\n' "$(wc -c < "$M" | tr -d ' ')"; cat "$M"; fi
  rm -f "$M"
  fi
fi
