# Refuses a base that is, once resolved, at or under a forbidden path (itself resolved):
# prints FORBIDDEN <index>, REAL_BASE, REAL_FORBIDDEN and stops before anything is created.
# needs: B, bst_forbidden (a list), bst_real (real_path.sh)
# shellcheck disable=SC2154 # set by the prologue
bst_refuse_forbidden() {
  bst_rb=$(bst_real "$B")
  bst_i=0
  for bst_f do
    bst_rf=$(bst_real "$bst_f"); case "$bst_rb/" in "$bst_rf"/*) printf 'FORBIDDEN %s\nREAL_BASE %s\nREAL_FORBIDDEN %s\n' "$bst_i" "$bst_rb" "$bst_rf"; exit 0;; esac
    bst_i=$((bst_i + 1))
  done
}
eval "bst_refuse_forbidden $bst_forbidden"
