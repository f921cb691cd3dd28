# Milliseconds since the epoch (GNU date +%N, or whole seconds without it), T0 when the
# script started; T_BEFORE (the prologue) is the client's time spent before it.
bst_ms() { n=$(date +%s%N 2>/dev/null); case $n in ''|*[!0-9]*) echo $(( $(date +%s) * 1000 ));; *) echo $(( n / 1000000 ));; esac; }
# Read by mark.sh and finish_meta.sh, later in the same script.
# shellcheck disable=SC2034
T0=$(bst_ms)
