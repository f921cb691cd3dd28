# Runs the build steps in the release dir, each in the user's login shell (so nvm, pnpm and
# friends are on PATH), stopping at the first failure, streaming output and saving it to
# logs/<id>.log. Run in a session of its own by build_start.sh.
# needs: B, bst_id, bst_target, bst_steps (a list)
# shellcheck disable=SC2154 # set by the prologue
# shellcheck disable=SC2317 # bst_run_steps and run are called through eval
R="$B/releases/$bst_id"
cd "$R" || exit 1
BST_RELEASE_ID=$bst_id BST_TARGET=$bst_target BST_BASE="$B" BST_RELEASE_DIR="$R"
export BST_RELEASE_ID BST_TARGET BST_BASE BST_RELEASE_DIR
# The step is the login shell's script: $BST_RELEASE_DIR is its to expand.
# shellcheck disable=SC2016
run() { printf '==> %s\n' "$1"; "${SHELL:-/bin/sh}" -lc "cd \"\$BST_RELEASE_DIR\" || exit 1
$1"; }
bst_run_steps() {
  rc=0
  for bst_step do [ "$rc" -ne 0 ] || run "$bst_step" || rc=$?; done
  echo "$rc" > "$B/logs/.$bst_id.rc"
}
{ eval "bst_run_steps $bst_steps"; } < /dev/null 2>&1 | tee "$B/logs/$bst_id.log"
rc=$(cat "$B/logs/.$bst_id.rc" 2>/dev/null || echo 1)
rm -f "$B/logs/.$bst_id.rc"
exit "$rc"
