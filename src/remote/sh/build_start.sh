# Runs the build (build.sh) in its own session with its pid recorded, so an aborted deploy
# can stop the whole process group instead of leaving a build writing into a release nobody
# wants. Follows register.sh.
# needs: B, bst_id, bst_job (build.sh with its prologue)
# shellcheck disable=SC2154 # set by the prologue
P="$B/logs/.$bst_id.pid"
if command -v setsid >/dev/null 2>&1; then setsid sh -c "$bst_job" & else sh -c "$bst_job" & fi
echo $! > "$P"
wait $!
rc=$?
rm -f "$P"
exit $rc
