# Asks the armed watchdog to switch back now (unless someone decided already) and waits,
# bounded, until it has finished. Prints `C <current>`, `CONFIRMED` when this run's
# confirmation had arrived, `HELD` if the lock is still ours, `RUNNING` if the watchdog
# still is. Safe to run over any connection, again and again.
# needs: B, bst_lock, bst_token, bst_reason (a JSON string), bst_ticks, bst_name
# shellcheck disable=SC2154 # set by the prologue
L="$B/$bst_lock"; TOKEN=$bst_token
ours() { grep -qF "$TOKEN" "$L/owner" 2>/dev/null; }
if ours && [ ! -d "$L/decided" ]; then printf '%s' "$bst_reason" > "$L/fire.tmp" && mv -f "$L/fire.tmp" "$L/fire"; fi
p=$(cat "$L/watchdog.pid" 2>/dev/null)
alive() { [ -n "$p" ] && kill -0 "$p" 2>/dev/null && { if [ -r "/proc/$p/cmdline" ]; then tr '\0' ' ' < "/proc/$p/cmdline" | grep -q "$bst_name"; else ps -p "$p" -o args= 2>/dev/null | grep -q "$bst_name"; fi; }; }
n=0; while alive && [ $n -lt "$bst_ticks" ]; do sleep 0.1 2>/dev/null || sleep 1; n=$((n+1)); done
printf 'C %s\n' "$(readlink "$B/current" 2>/dev/null)"
if grep -qxF "$TOKEN" "$B/logs/.bst-confirmed" 2>/dev/null; then echo CONFIRMED; fi
if ours; then echo HELD; fi
if alive; then echo RUNNING; fi
