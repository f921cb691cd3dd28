# The rest of a deploy session's script arrives on stdin, up to a BST-GO line; the upload
# stream follows it. `read` takes a pipe byte by byte, so nothing after BST-GO is consumed:
# that is the upload's tar input. A client that goes away before BST-GO leaves no lock
# (unlock.sh follows) and nothing of what it sent runs.
# needs: bst_check, bst_verdict (check_start.sh)
# shellcheck disable=SC2154 # set by check_start.sh
echo BST-READY
go=; bst_next=
while IFS= read -r bst_line; do
  if [ "$bst_line" = BST-GO ]; then go=1; break; fi
  bst_next="$bst_next$bst_line
"
done
if [ -n "$go" ]; then eval "$bst_next"; exit; fi
if [ -n "$bst_check" ]; then wait "$bst_check" 2>/dev/null; fi
rm -f "$bst_verdict"
