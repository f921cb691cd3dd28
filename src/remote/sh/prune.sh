# Renames the releases into a trash dir of this run (so a cut-short prune never leaves a
# half-deleted directory under releases/ that still reads as a release), then deletes them,
# in the background when bst_background is set (the operator does not wait for rm -rf of
# whole trees), or at once (bst prune, whose point may be the disk space). A deletion cut
# short is finished by the next lock. Prints `P <id>` per release removed. Run in the base.
# needs: bst_prune (a list), bst_background, bst_trash
# shellcheck disable=SC2154 # set by the prologue
bst_prune_releases() {
  [ $# -gt 0 ] || return 0
  T=$bst_trash/$$
  mkdir -p "$T"
  for bst_r do
    if mv "releases/$bst_r" "$T/$bst_r"; then echo "P $bst_r"; else echo "W could not remove releases/$bst_r"; fi
  done
  if [ -n "$bst_background" ]; then
    ( rm -rf "$T"; rmdir "$bst_trash" 2>/dev/null ) < /dev/null > /dev/null 2>&1 &
  else
    rm -rf "$T"; rmdir "$bst_trash" 2>/dev/null
  fi
}
eval "bst_prune_releases $bst_prune"
