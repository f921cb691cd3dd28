# A first deploy seeded from a sibling target's pristine copy (siblings.sh proved it, the client
# diffed against its manifest): a copy of it becomes this target's pristine copy, marked with
# the generation the client planned against, and upload_delta.sh then patches it as it
# patches any. This target's own cache dir is set aside first, as a full upload does (the
# cache job deletes it); the cache job proves the patched copy by its hashes after the deploy.
# Copied, never hardlinked. A hardlink changes the ctime of every inode it shares (the link
# count), so the sibling's recorded listing would stop matching: its next delta without a
# spare would send everything, and the check after the copy here could never pass. And the
# manifest is written in place: a delta appends its patch to it. (bst writes no pristine file
# in place: `tar -x` unlinks an existing file before it writes, removals are `rm`.) `cp -a
# --reflink=auto` is how the cache job makes its spare from a proven copy: the source's
# listing stays as it was.
# The sibling's cache job or deploy may start while this runs: neither takes this target's
# lock. Each removes the generation marker (or moves the whole cache dir aside) before it
# changes the copy, and a new generation is unique. So the same generation and the recorded
# listing on both sides of the copy prove that what was copied is what was proven and what the
# client diffed against. Anything else exits bst_stale: the client then sends everything.
# needs: B, I, C (upload_start.sh), bst_seed_base (the sibling's base), bst_generation,
#   bst_stale, bst_cache, bst_incoming, bst_unchanged (listings.sh)
# shellcheck disable=SC2154 # set by the prologue
S="$bst_seed_base/$bst_cache"
T="$I.seed"
bst_seed_stable() { [ "$(cat "$S/generation" 2>/dev/null)" = "$bst_generation" ] && bst_unchanged "$S"; }
# Run as an `if` condition: `set -e` is off inside, every failure is a return.
bst_seed() {
  if [ -e "$C" ] || [ -L "$C" ]; then rm -rf "$C.old" && mv "$C" "$C.old" || return 1; fi
  rm -rf "$T" && mkdir -p "$T" && bst_seed_stable || return 1
  cp -a --reflink=auto "$S/pristine" "$T/pristine" && cp "$S/manifest" "$T/manifest" || return 1
  bst_seed_stable && printf '%s\n' "$bst_generation" > "$T/generation" && mv "$T" "$C"
}
if ! bst_seed; then
  rm -rf "$T"; rmdir "$B/$bst_incoming" 2>/dev/null || true
  echo "V the sibling's pristine copy changed while it was copied, or could not be copied; this deploy sends everything" >&2
  exit "$bst_stale"
fi
