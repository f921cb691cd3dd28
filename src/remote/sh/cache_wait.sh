# Lets a running cache job finish (bounded: a minute), then stops it. Either way the cache
# is left complete or without a generation marker, never half-written and marked. The job
# is recognised by its name, so a pid file left by a reboot never makes us wait for (or
# signal) an unrelated process that reused the pid.
# needs: B, bst_cache, bst_job_name
# shellcheck disable=SC2154 # set by the prologue
J="$B/$bst_cache/job.pid"
if [ -f "$J" ]; then
  jp=$(cat "$J" 2>/dev/null)
  job_alive() { if [ -r "/proc/$jp/cmdline" ]; then tr '\0' ' ' < "/proc/$jp/cmdline" | grep -q "$bst_job_name"; else ps -p "$jp" -o args= 2>/dev/null | grep -q "$bst_job_name"; fi; }
  n=0
  while [ -n "$jp" ] && job_alive && [ $n -lt 600 ]; do sleep 0.1 2>/dev/null || sleep 1; n=$((n+1)); done
  if [ -n "$jp" ] && job_alive; then
    kill -TERM -- "-$jp" 2>/dev/null || kill -TERM "$jp" 2>/dev/null
    n=0; while job_alive && [ $n -lt 50 ]; do sleep 0.1 2>/dev/null || sleep 1; n=$((n+1)); done
  fi
  rm -f "$J"
fi
