# Prints `<tag> <ms since the script started>` for the client's phase timings.
# needs: bst_tag, bst_ms and T0 (clock.sh)
# shellcheck disable=SC2154 # set by the prologue
echo "$bst_tag $(( $(bst_ms) - T0 ))" || true
