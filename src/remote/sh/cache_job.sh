# The cache job, run detached as `sh -c JOB bst_job_name BASE` (cache_start.sh). It unpacks
# the pristine copy from the upload's tee'd archive (full uploads), proves the pristine copy
# equals its manifest (the upload's completion marker inside it, every path, kind, size and
# SHA-256) and only then writes its generation, the mark that lets the next deploy patch
# from it. Then it prepares the spare, a private copy of the pristine tree that the next
# delta deploy renames into place instead of copying the whole tree while the operator waits.
# needs: bst_cache, bst_generation, bst_verify (perl), bst_tgz, bst_tar, bst_upload,
#   bst_complete, bst_stat_listing and bst_spare_listing (listings.sh)
# shellcheck disable=SC2154 # set by the prologue
B=$1; C="$B/$bst_cache"
cd "$C" 2>/dev/null || exit 0
# Registered by the job itself: until this process runs this script, its command line is
# its parent's, without the name the waiting side checks for.
echo $$ > job.pid.tmp && mv -f job.pid.tmp job.pid
# Temp names of this run only: a killed job's children (cp, tar, find) may live on as orphans
# and keep writing into the names it used, which this run must never adopt.
P=pristine.tmp.$$; S=spare.tmp.$$
trap 'rm -rf "$C/$P" "$C/$S" "$C/pristine.verify-list.$$" "$C/pristine.stat.$$" "$C/spare.stat.$$"' EXIT
rm -rf "$C.old" pristine.tmp.* spare.tmp.* pristine.stat.* spare.stat.* pristine.verify-list.* spare.checked.* 2>/dev/null
rm -f generation pristine.stat
A=; if [ -f "$bst_tgz" ]; then A=$bst_tgz; z=z; elif [ -f "$bst_tar" ]; then A=$bst_tar; z=; fi
if [ -n "$A" ]; then
  # tee may have hit a full disk while tar did not: only the marker, the last entry of the
  # stream, proves the kept archive is whole.
  if mkdir "$P" && tar -x"${z}"f "$A" -C "$P" --no-same-owner && [ -f "$P/$bst_complete" ] && rm -rf "${P:?}/$bst_upload" && rm -rf pristine && mv "$P" pristine && mv upload/manifest manifest; then
    :
  else
    echo "$(date -u +%FT%TZ) could not unpack the pristine copy; the next deploy sends everything"
    rm -rf pristine manifest
  fi
  rm -rf "$A" upload
fi
[ -d pristine ] && [ -f manifest ] || exit 0
if ! command -v perl >/dev/null 2>&1; then echo "$(date -u +%FT%TZ) no perl on this server: the pristine copy cannot be verified, so every deploy sends everything"; exit 0; fi
if ! perl -e "$bst_verify" manifest pristine; then
  echo "$(date -u +%FT%TZ) the next deploy sends everything"
  rm -rf pristine manifest spare spare.generation
  exit 0
fi
bst_stat_listing > pristine.stat.$$ && mv pristine.stat.$$ pristine.stat && printf '%s\n' "$bst_generation" > generation || exit 0
g=$(cat generation)
rm -rf spare spare.generation spare.stat
rm -f spare.paths
if [ ! -e spare ] && cp -a --reflink=auto pristine "$S" && mv "$S" spare && { find spare -print0 && printf 'manifest\0'; } > spare.paths \
  && bst_spare_listing > spare.stat.$$ && mv spare.stat.$$ spare.stat; then
  printf '%s\n' "$g" > spare.generation
else
  rm -rf spare
  echo "$(date -u +%FT%TZ) could not prepare the spare copy; the next deploy copies the tree itself"
fi
