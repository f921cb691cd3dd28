# `bst_owned_by DIR`: the lock's owner record names this run's token, as a whole JSON member
# (bst_member): a token that merely contains another must not match it.
# needs: bst_member
# shellcheck disable=SC2154 # set by the prologue
bst_owned_by() { grep -qF "$bst_member" "$1/owner" 2>/dev/null; }
