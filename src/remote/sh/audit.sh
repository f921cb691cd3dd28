# Appends one line to the audit log.
# needs: B, bst_audit
# shellcheck disable=SC2154 # set by the prologue
printf '%s\n' "$bst_audit" >> "$B/logs/deploys.jsonl" || true
