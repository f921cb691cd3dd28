# Reads the env file and counts its .bak.* backups: FOUND <backups> then the bytes, or
# MISSING <backups>.
# needs: B, bst_rel
# shellcheck disable=SC2154 # set by the prologue
F="$B/$bst_rel"
if [ -L "$F" ]; then F=$(readlink -f "$F"); fi
n=0; for b in "$F".bak.*; do [ -f "$b" ] && n=$((n+1)); done
if [ -f "$F" ]; then echo "FOUND $n"; cat "$F"; else echo "MISSING $n"; fi
