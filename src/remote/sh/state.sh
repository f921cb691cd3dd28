# The state listing parsed by release::parse_state.
# needs: B, bst_cache, bst_meta
# shellcheck disable=SC2154 # set by the prologue
if [ ! -d "$B" ]; then exit 0; fi
echo B
cd "$B" || exit 1
printf 'P %s\n' "$(pwd -P)"
for d in releases/*/; do
  [ -d "$d" ] || continue
  n=${d#releases/}; n=${n%/}
  printf 'R %s\n' "$n"
  if [ -f "$d$bst_meta" ]; then printf 'M '; tr -d '\n' < "$d$bst_meta"; echo; fi
done
if [ -L current ]; then printf 'C %s\n' "$(readlink current)"; printf 'CR %s\n' "$(cd current 2>/dev/null && pwd -P)"; elif [ -e current ]; then echo 'C !not-a-symlink'; fi
if [ -f "$bst_cache/generation" ] && [ -d "$bst_cache/pristine" ]; then printf 'G %s\n' "$(cat "$bst_cache/generation")"; fi
if [ -f logs/.watchdog-unseen ] && mv -f logs/.watchdog-unseen logs/.watchdog-seen.$$ 2>/dev/null; then sed 's/^/WD /' logs/.watchdog-seen.$$; rm -f logs/.watchdog-seen.$$; fi
