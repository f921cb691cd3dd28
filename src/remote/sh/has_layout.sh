# Service actions on a target that was never deployed to leave no trace rather than
# creating directories: the rest of the script runs only where the layout exists.
# needs: B
# shellcheck disable=SC2154 # set by the prologue
[ -d "$B/logs" ] || exit 0
