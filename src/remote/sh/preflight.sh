# Facts for bst check, one `KEY value` line each.
# needs: B, bst_forbidden (a list), bst_units (a list of name, command printing its load
#   state), bst_lock, bst_real (real_path.sh)
# shellcheck disable=SC2154 # set by the prologue
printf 'RESOLVED %s\n' "$(bst_real "$B")"
bst_resolve_forbidden() { bst_i=0; for bst_f do printf 'FRESOLVED %s %s\n' "$bst_i" "$(bst_real "$bst_f")"; bst_i=$((bst_i + 1)); done; }
eval "bst_resolve_forbidden $bst_forbidden"
if [ -L "$B" ]; then echo "BASE symlink $(readlink -f "$B")"; elif [ -d "$B" ]; then echo "BASE dir"; elif [ -e "$B" ]; then echo "BASE other"; else echo "BASE absent"; fi
p="$B"; while [ ! -e "$p" ] && [ ! -L "$p" ]; do p=$(dirname "$p"); done
if [ "$p" != "$B" ] && [ ! -d "$p" ]; then
  if [ -L "$p" ]; then k=symlink; elif [ -f "$p" ]; then k="file"; else k=other; fi
  printf 'BLOCKED %s %s\n' "$k" "$p"
  p=$(dirname "$p")
fi
printf 'REAL %s\n' "$(cd "$p" && pwd -P)"
printf 'EXISTING %s\n' "$p"
t="$p/.bst-check.$$"
if e=$(mkdir "$t" 2>&1); then rmdir "$t"; echo "WRITABLE yes"; else printf 'WRITABLE no %s\n' "${e##*: }"; fi
df -Pk "$p" 2>/dev/null | awk 'NR > 1 { for (i = NF; i >= 5; i--) if ($i ~ /^[0-9]+%$/ && $(i-1) ~ /^[0-9]+$/) { print "FREE_KB " $(i-1); exit } }'
for c in tar gzip sh; do if command -v "$c" >/dev/null 2>&1; then echo "TOOL $c yes"; else echo "TOOL $c no"; fi; done
if [ -d "$B/$bst_lock" ]; then printf 'LOCK '; tr -d '\n' < "$B/$bst_lock/owner" 2>/dev/null; echo; else echo "LOCK free"; fi
bst_unit_states() { while [ $# -gt 0 ]; do printf 'UNIT %s %s\n' "$1" "$(eval "$2" 2>/dev/null)"; shift 2; done; }
eval "bst_unit_states $bst_units"
