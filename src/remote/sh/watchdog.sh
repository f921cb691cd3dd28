# The watchdog itself, deploy-rs's "magic rollback" done on the server. arm.sh starts it
# detached as `sh -c "$bst_watchdog" bst-watchdog <base>`. Unless the client confirms in
# time (confirm.sh) it switches current back to bst_restore, marks the trial release
# failed, restarts the services, writes the audit line and releases the lock; fire.sh asks
# it to do so now. Whoever makes `decided/` first (client or watchdog) is the one that acts.
# needs: bst_token, bst_secs, bst_restore, bst_switch_back, bst_trial, bst_trial_meta,
#   bst_restart, bst_members, bst_lock (and meta.sh's bst_write_meta before it)
# shellcheck disable=SC2154 # set by the prologue
B=$1; L="$B/$bst_lock"; TOKEN=$bst_token; SECS=$bst_secs
cd "$B" || exit 0
ours() { grep -qF "$TOKEN" "$L/owner" 2>/dev/null; }
ours || exit 0
{ echo $$ > "$L/watchdog.pid.tmp" && mv -f "$L/watchdog.pid.tmp" "$L/watchdog.pid"; } || exit 0
end=$(( $(date +%s) + SECS ))
why='"not confirmed healthy within '"$SECS"'s: the client went away"'
how=deadline
while :; do
  ours || exit 0
  [ -d "$L/decided" ] && exit 0
  if [ -f "$L/fire" ]; then why=$(cat "$L/fire" 2>/dev/null); how=asked; break; fi
  [ "$(date +%s)" -lt "$end" ] || break
  # While armed the lock is in use: a lock whose scripts all ended must not look stale.
  a=$(cat "$L/active" 2>/dev/null); if [ -z "$a" ] || ! kill -0 "$a" 2>/dev/null; then echo $$ > "$L/active" 2>/dev/null; fi
  sleep 0.2 2>/dev/null || sleep 1
done
mkdir "$L/decided" 2>/dev/null || exit 0
echo watchdog > "$L/decided/by"
n=0; while [ -d "$L/busy" ] && [ $n -lt 300 ]; do sleep 0.1 2>/dev/null || sleep 1; n=$((n+1)); done
trap '' PIPE HUP TERM INT
echo "$(date -u +%FT%TZ) $how: $why"
if [ -n "$bst_restore" ] && [ "$(readlink current)" != "releases/$bst_restore" ]; then
  # switch.sh in a shell of its own, where `set -e` holds (inside `|| …` it would not).
  B=$B sh -c "set -e
$bst_switch_back" >&2 || echo 'could not switch back'
fi
if [ -n "$bst_trial" ] && [ -d "releases/$bst_trial" ] && { [ "$(readlink current)" != "releases/$bst_trial" ] || [ -z "$bst_restore" ]; }; then
  bst_write_meta "releases/$bst_trial" printf '%s\n' "$bst_trial_meta"
fi
if [ -n "$bst_restart" ]; then sh -c "$bst_restart" > /dev/null 2>&1; fi
line=$(printf '{"at":"%s",%s,"error":%s}' "$(date -u +%FT%TZ)" "$bst_members" "$why")
printf '%s\n' "$line" >> logs/deploys.jsonl
# The next bst command tells whoever runs it: nobody was there to see this one.
if [ "$how" = deadline ]; then printf '%s\n' "$line" >> logs/.watchdog-unseen; fi
if ours; then rm -rf "$L"; fi
