# Receives only what changed and applies it (and the removals) to the pristine copy. The
# release is the cache job's spare with the same changes applied, renamed into place;
# without a spare it is a copy of the pristine tree. Never hardlinks, so a build that edits a
# file in place cannot corrupt the next deploy. The generation marker is removed before the
# pristine copy changes, so an update cut short forces a full upload. staging.sh follows.
# needs: B, I, C (upload_start.sh), bst_generation, bst_stale (exit status), bst_x, bst_upload, bst_incoming
# shellcheck disable=SC2154 # set by the prologue
D="$I.delta"
if [ ! -d "$C/pristine" ] || [ "$(cat "$C/generation" 2>/dev/null)" != "$bst_generation" ]; then echo "pristine copy changed" >&2; exit "$bst_stale"; fi
mkdir -p "$D"
tar "$bst_x" - -C "$D" --no-same-owner || { rc=$?; rm -rf "$D"; rmdir "$B/$bst_incoming" 2>/dev/null; exit $rc; }
bst_require_complete "$D" "$D"
mv "$D/$bst_upload" "$I.meta"
rm -f "$C/generation"
apply() {
  cd "$1" || exit
  # The empty-directory sweep walks the whole tree: only when something was removed.
  if [ -s "$I.meta/removed" ]; then
    xargs -0 -r rm -rf -- < "$I.meta/removed"
    find . -mindepth 1 -depth -type d -empty -delete
  fi
  cd "$D" || exit
  tar -cf - . | tar -xf - -C "$1" --no-same-owner
}
spare=
if [ -d "$C/spare" ] && [ "$(cat "$C/spare.generation" 2>/dev/null)" = "$bst_generation" ]; then
  rm -f "$C/spare.generation"
  mv "$C/spare" "$I"
  apply "$I"
  spare=yes
fi
apply "$C/pristine"
# A whole manifest now and then; usually the changed records, appended (O(change)).
if [ -f "$I.meta/manifest" ]; then mv "$I.meta/manifest" "$C/manifest"; else cat "$I.meta/manifest-patch" >> "$C/manifest"; fi
cd "$B" || exit
rm -rf "$D" "$I.meta"
[ -n "$spare" ] || cp -a --reflink=auto "$C/pristine" "$I"
# No generation yet: the cache job writes it once it has proven the patched copy.
