# The common tail of both uploads: shared links, pending meta, rename into releases/.
# needs: B, I, R (upload_start.sh), bst_id, bst_shared (a list of kind, path, link target),
#   bst_meta_json, bst_incoming, bst_write_meta (meta.sh)
# shellcheck disable=SC2154 # set by the prologue
cd "$I" || exit
# Makes every parent of a shared link a real directory inside the release, one level at a
# time (mkdir -p, rm -rf and ln all follow a symlinked parent): a committed
# `apps/web -> ../../../shared` would otherwise put the link, or delete the file, in the
# server's own shared/. A parent that is a link or a file fails the deploy before the switch.
bst_real_parents() {
  bst_rest=$1; bst_p=.
  while :; do
    case $bst_rest in */*) ;; *) return 0;; esac
    bst_p="$bst_p/${bst_rest%%/*}"; bst_rest=${bst_rest#*/}
    if [ -L "$bst_p" ] || { [ -e "$bst_p" ] && [ ! -d "$bst_p" ]; }; then
      printf 'shared path %s: %s in the release is a symlink or a file, not a directory; refusing to link through it (is it a symlink in the workspace?)\n' "$1" "${bst_p#./}" >&2
      exit 1
    fi
    [ -d "$bst_p" ] || mkdir "$bst_p"
  done
}
bst_link_shared() {
  while [ $# -gt 0 ]; do
    bst_kind=$1; bst_sp=$2; bst_to=$3; shift 3
    bst_real_parents "$bst_sp"
    case $bst_sp in */*) mkdir -p "$B/shared/${bst_sp%/*}";; esac
    if [ "$bst_kind" = dir ]; then
      mkdir -p "$B/shared/$bst_sp"
    else
      [ -e "$B/shared/$bst_sp" ] || printf 'W shared file shared/%s does not exist yet\n' "$bst_sp"
    fi
    rm -rf "$bst_sp"
    ln -s "$bst_to" "$bst_sp"
  done
}
eval "bst_link_shared $bst_shared"
bst_write_meta . printf '%s\n' "$bst_meta_json" || exit 1
cd "$B" || exit
if [ -e "$R" ]; then echo "release $bst_id appeared during the upload" >&2; exit 1; fi
# -T: never move *into* an existing directory.
mv -T "$I" "$R" 2>/dev/null || mv "$I" "$R"
rmdir "$B/$bst_incoming" 2>/dev/null || true
