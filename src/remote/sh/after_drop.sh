# Run over a new connection after the deploy's own dropped: waits, bounded (bst_ticks tenths
# of a second), while this run's script is still at work on the server (the lock is this
# run's and the pid it registered lives; an armed watchdog does not count, it waits for the
# client), then prints C <current>, M <the release's meta>, HELD while the lock is still
# this run's, and RUNNING if the script had not finished by then.
# needs: B, bst_id, bst_ticks, bst_lock, bst_meta, bst_owned_by (owned.sh)
# shellcheck disable=SC2154 # set by the prologue
L="$B/$bst_lock"
busy() { bst_owned_by "$L" || return 1; a=$(cat "$L/active" 2>/dev/null); [ -n "$a" ] && [ "$a" != "$(cat "$L/watchdog.pid" 2>/dev/null)" ] && kill -0 "$a" 2>/dev/null; }
n=0; while busy && [ $n -lt "$bst_ticks" ]; do sleep 0.1 2>/dev/null || sleep 1; n=$((n+1)); done
printf 'C %s\n' "$(readlink "$B/current" 2>/dev/null)"
M="$B/releases/$bst_id/$bst_meta"
if [ -f "$M" ]; then printf 'M '; tr -d '\n' < "$M"; echo; fi
if bst_owned_by "$L"; then echo HELD; fi
if busy; then echo RUNNING; fi
