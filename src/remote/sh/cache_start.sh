# Starts the cache job (cache_job.sh) in its own session, detached from the SSH channel,
# while the lock is still held (the next deploy's lock must find it registered, to wait for
# it), and waits until it has registered.
# needs: B, bst_cache, bst_job (the job's script), bst_job_name
# shellcheck disable=SC2154 # set by the prologue
if [ -d "$B/$bst_cache" ]; then
  rm -f "$B/$bst_cache/job.pid"
  if command -v setsid >/dev/null 2>&1; then setsid sh -c "$bst_job" "$bst_job_name" "$B" < /dev/null >> "$B/$bst_cache/job.log" 2>&1 &
  else sh -c "$bst_job" "$bst_job_name" "$B" < /dev/null >> "$B/$bst_cache/job.log" 2>&1 & fi
  n=0; while [ ! -f "$B/$bst_cache/job.pid" ] && [ $n -lt 500 ]; do sleep 0.01 2>/dev/null || sleep 1; n=$((n+1)); done
fi
