# A drill step's switch, under a lock the caller keeps holding and a watchdog it armed:
# holds the watchdog's busy mark until the script ends, and does nothing (prints DECIDED)
# once the watchdog has taken over: two writers of current at once could leave it on either
# release. strict.sh, switch.sh and audit.sh follow.
# needs: B, bst_lock
# shellcheck disable=SC2154 # set by the prologue
if ! mkdir "$B/$bst_lock/busy" 2>/dev/null; then echo "the lock is not held, or another step is switching" >&2; exit 1; fi
if [ -d "$B/$bst_lock/decided" ]; then rmdir "$B/$bst_lock/busy"; echo DECIDED; exit 0; fi
# The exit status is the switch's: the trap does not change it.
trap 'rmdir "$B/$bst_lock/busy"' EXIT
