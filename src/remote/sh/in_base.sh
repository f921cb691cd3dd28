# The steps that follow (prune, the watchdog's confirmation) name paths from the base.
# needs: B
# shellcheck disable=SC2154 # set by the prologue
cd "$B" || exit 1
