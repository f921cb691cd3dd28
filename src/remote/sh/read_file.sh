# Prints FOUND and the file, or MISSING. The content never reaches the terminal: the caller
# parses it in memory.
# needs: B, bst_rel
# shellcheck disable=SC2154 # set by the prologue
F="$B/$bst_rel"
if [ -f "$F" ]; then echo FOUND; cat "$F"; else echo MISSING; fi
