# The client's confirmation, first in the script that ends a passed gate: prints
# `CONFIRMED`, or `NOT-CONFIRMED <who>` and exits when the watchdog decided first (its
# deadline passed while the gate still ran). It leaves this run's token in
# logs/.bst-confirmed: a client cut off while confirming learns from fire.sh whether the
# confirmation got there.
# needs: B, bst_lock, bst_token
# shellcheck disable=SC2154 # set by the prologue
if mkdir "$B/$bst_lock/decided" 2>/dev/null; then echo client > "$B/$bst_lock/decided/by"; printf '%s\n' "$bst_token" > "$B/logs/.bst-confirmed"; echo CONFIRMED
else echo "NOT-CONFIRMED $(cat "$B/$bst_lock/decided/by" 2>/dev/null)"; exit 0; fi
