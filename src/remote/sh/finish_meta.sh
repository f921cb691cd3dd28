# The end of a good deploy, before the switch: the meta says ok first, so current only ever
# points at an ok release. When this script also uploaded, the duration is only known here:
# the meta is then written around it (bst_meta_pre, the milliseconds, bst_meta_post). A meta
# that cannot be written fails no command here: the switch refuses a release whose meta
# does not say ok.
# needs: bst_id, bst_meta_json or (bst_timed, bst_meta_pre, bst_meta_post, T0, T_BEFORE,
#   bst_ms from clock.sh), bst_write_meta (meta.sh); after strict.sh
# shellcheck disable=SC2154 # set by the prologue
if [ -n "$bst_timed" ]; then
  bst_write_meta "releases/$bst_id" printf '%s%s%s\n' "$bst_meta_pre" "$((T_BEFORE + $(bst_ms) - T0))" "$bst_meta_post" || :
else
  bst_write_meta "releases/$bst_id" printf '%s\n' "$bst_meta_json" || :
fi
