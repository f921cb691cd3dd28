# The start both uploads share: staging dir I, release dir R, cache C, and no overwriting a
# release that exists. Follows register.sh (not detached.sh: an upload whose client died
# must stop, its stdin is gone anyway, but a new run must wait until it has).
# needs: B, bst_id, bst_incoming, bst_cache
# shellcheck disable=SC2154 # set by the prologue
# shellcheck disable=SC2034 # I and C are for the parts that follow
set -eu
I="$B/$bst_incoming/$bst_id"
R="$B/releases/$bst_id"
C="$B/$bst_cache"
if [ -e "$R" ]; then echo "release $bst_id already exists" >&2; exit 1; fi
