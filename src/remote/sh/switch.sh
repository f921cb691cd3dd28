# Points current at releases/<id> atomically: a new link under a temp name renamed over the
# old one, so there is never a moment without current. Verified by readlink. Run in the
# base, under `set -e` (strict.sh, or the watchdog's subshell). Every switch checks its
# target: a pruned, missing or not-ok release is never made live.
# needs: B, bst_id, bst_meta
# shellcheck disable=SC2154 # set by the prologue
if [ -e current ] && [ ! -L current ]; then echo "$B/current exists and is not a symlink; refusing to replace it" >&2; exit 1; fi
if [ -L "releases/$bst_id" ] || [ ! -d "releases/$bst_id" ] || ! grep -q '"status":"ok"' "releases/$bst_id/$bst_meta" 2>/dev/null; then
  echo "releases/$bst_id is missing or is not an ok release; current stays where it is" >&2; exit 1
fi
ln -sfn "releases/$bst_id" .bst-current.tmp
if ! mv -T .bst-current.tmp current 2>/dev/null; then
  rm -f .bst-current.tmp releases/current
  ln -s "releases/$bst_id" releases/current
  mv releases/current .
fi
if [ "$(readlink current)" != "releases/$bst_id" ]; then echo "current does not point at releases/$bst_id after the switch" >&2; exit 1; fi
echo SWITCHED || true
# What follows a switch (prune, audit, unlock) is best effort: it can no longer fail it.
set +e
