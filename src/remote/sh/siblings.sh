# A first deploy (this target has no pristine copy of its own) on a server where other targets
# of the same targets.toml, reached with the same login, keep theirs. The first sibling whose
# copy is proven is named `SG <index> <generation>` and its manifest follows as this target's
# own would (session_manifest.sh: MSAME when the client already has that generation); each
# one passed over is named `SN <index> <why>` (shown with -v).
# Proven as this target's own copy is before a delta: the sibling's cache job checked every
# path, kind, size and SHA-256 against the manifest (verify-pristine.pl), then recorded the
# stat listing of the tree and the manifest (pristine.stat) and wrote the generation; the same
# listing now (ctime included, which no write can set back) means nothing changed since.
# The sibling is only read: not its lock, no write, no signal to its cache job. A cache job
# still at work there (its target was deployed moments ago) is waited for until it has
# written its generation, up to 30 s. seed.sh checks the copy again around copying it.
# needs: bst_siblings (a list: base, known generation, per sibling), bst_cache, bst_lock,
#   bst_job_name, bst_unchanged (listings.sh); run in the base, after state.sh
# shellcheck disable=SC2154 # set by the prologue
bst_sib_job() {
  [ -n "$1" ] || return 1
  if [ -r "/proc/$1/cmdline" ]; then tr '\0' ' ' < "/proc/$1/cmdline" 2>/dev/null | grep -q "$bst_job_name"
  else ps -p "$1" -o args= 2>/dev/null | grep -q "$bst_job_name"; fi
}
bst_sib_pick() {
  bst_i=0
  while [ $# -ge 2 ]; do
    bst_b=$1; bst_s=$1/$bst_cache; bst_sk=$2; shift 2
    bst_why=; bst_g=
    if [ "$(cd "$bst_b" 2>/dev/null && pwd -P)" = "$(pwd -P)" ]; then bst_why='it is this base, under another name'
    elif [ ! -d "$bst_s" ]; then bst_why='no pristine copy there'
    elif [ ! -O "$bst_s" ]; then bst_why='its cache is owned by another user'
    elif [ ! -r "$bst_s" ] || [ ! -x "$bst_s" ]; then bst_why='its cache is not readable'
    else
      bst_jp=$(cat "$bst_s/job.pid" 2>/dev/null)
      bst_n=0
      while [ ! -f "$bst_s/generation" ] && bst_sib_job "$bst_jp" && [ $bst_n -lt 300 ]; do sleep 0.1 2>/dev/null || sleep 1; bst_n=$((bst_n+1)); done
      bst_g=$(cat "$bst_s/generation" 2>/dev/null)
      if [ -z "$bst_g" ] || [ ! -d "$bst_s/pristine" ] || [ ! -f "$bst_s/manifest" ] || [ ! -f "$bst_s/pristine.stat" ]; then
        if bst_sib_job "$bst_jp"; then bst_why='its cache job is still proving its pristine copy'; else bst_why='no proven pristine copy there'; fi
      elif [ ! -O "$bst_s/pristine" ] || [ ! -O "$bst_s/manifest" ] || [ ! -O "$bst_s/pristine.stat" ] || [ ! -O "$bst_s/generation" ]; then
        bst_why='its pristine copy is owned by another user'
      elif [ ! -r "$bst_s/manifest" ] || [ "$(head -c 14 "$bst_s/manifest" 2>/dev/null)" != bst-manifest-2 ]; then
        bst_why='its manifest cannot be read'
      elif ! bst_unchanged "$bst_s"; then
        bst_why='its pristine copy changed since its cache job proved it'
      elif [ "$(cat "$bst_s/generation" 2>/dev/null)" != "$bst_g" ]; then
        bst_why='its pristine copy changed while it was checked'
      fi
    fi
    if [ -n "$bst_why" ]; then printf 'SN %s %s\n' "$bst_i" "$bst_why"; bst_i=$((bst_i+1)); continue; fi
    printf 'SG %s %s\n' "$bst_i" "$bst_g"
    if [ "$bst_g" = "$bst_sk" ]; then printf 'MSAME %s\n' "$(wc -c < "$bst_s/manifest" | tr -d ' ')"; else
      M=$bst_lock/manifest.gz
      if gzip -1 -c -n < "$bst_s/manifest" > "$M"; then printf 'BST-MANIFEST-GZ %s\n' "$(wc -c < "$M" | tr -d ' ')"; cat "$M"; fi
      rm -f "$M"
    fi
    return 0
  done
}
if [ -n "$bst_siblings" ] && ! { [ -f "$bst_cache/generation" ] && [ -d "$bst_cache/pristine" ]; }; then eval "bst_sib_pick $bst_siblings"; fi
