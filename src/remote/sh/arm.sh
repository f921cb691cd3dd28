# Starts the watchdog (watchdog.sh, in bst_watchdog) while the lock is held, before the
# switch it guards, and waits until it is registered: prints `WATCHDOG <pid>`, or fails the
# script with nothing switched yet. Its process is named bst_name, so a pid file left by a
# reboot never makes anyone wait for an unrelated process.
# needs: B, bst_lock, bst_watchdog, bst_name
# shellcheck disable=SC2154 # set by the prologue
rm -rf "$B/$bst_lock/decided" "$B/$bst_lock/fire" "$B/$bst_lock/busy" "$B/$bst_lock/watchdog.pid"
if command -v setsid >/dev/null 2>&1; then setsid sh -c "$bst_watchdog" "$bst_name" "$B" < /dev/null >> "$B/logs/watchdog.log" 2>&1 &
else sh -c "$bst_watchdog" "$bst_name" "$B" < /dev/null >> "$B/logs/watchdog.log" 2>&1 & fi
n=0; while [ ! -f "$B/$bst_lock/watchdog.pid" ] && [ $n -lt 500 ]; do sleep 0.01 2>/dev/null || sleep 1; n=$((n+1)); done
if [ ! -f "$B/$bst_lock/watchdog.pid" ]; then echo "could not start the watchdog on the server; nothing was switched" >&2; exit 1; fi
echo "WATCHDOG $(cat "$B/$bst_lock/watchdog.pid")"
