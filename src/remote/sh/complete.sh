# `bst_require_complete DIR REMOVE...`: tar accepts an archive cut at an entry boundary, and
# gzip one cut between members: only the marker the client sends last proves that
# everything before it arrived. REMOVE is what an incomplete upload leaves to delete.
# needs: B, bst_complete, bst_incoming
# shellcheck disable=SC2154 # set by the prologue
bst_require_complete() {
  bst_dir=$1; shift
  if [ ! -f "$bst_dir/$bst_complete" ]; then rm -rf "$@"; rmdir "$B/$bst_incoming" 2>/dev/null; echo "the upload stream ended early" >&2; exit 1; fi
}
