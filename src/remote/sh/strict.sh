# Before a switch: any failure stops the script before current changes.
# needs: B
# shellcheck disable=SC2154 # set by the prologue
set -eu
cd "$B"
