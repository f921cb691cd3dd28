# A full upload: the snapshot on stdin into the staging dir; when the stream carries a
# manifest it is also kept (tee, a sequential write) for the cache job to unpack as the next
# pristine copy once the operator is no longer waiting. staging.sh follows.
# needs: B, I, C (upload_start.sh), bst_x (tar's extract flags), bst_archive, bst_upload, bst_incoming
# shellcheck disable=SC2154 # set by the prologue
mkdir -p "$I"
# This upload replaces the cache; the old one is deleted by the cache job, not now.
if [ -e "$C" ]; then rm -rf "$C.old"; mv "$C" "$C.old"; fi
mkdir -p "$C"
# A stream cut short (Ctrl-C, dead client, full disk) leaves nothing behind.
tee "$C/$bst_archive" | tar "$bst_x" - -C "$I" --no-same-owner || { rc=$?; rm -rf "$I" "$C"; rmdir "$B/$bst_incoming" 2>/dev/null; exit $rc; }
bst_require_complete "$I" "$I" "$C"
mv "$I/$bst_upload" "$C/upload"
