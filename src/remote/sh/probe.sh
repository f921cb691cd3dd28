# The build's tools, looked up in the login shell the build runs them in (build.sh), so a
# tool put on PATH by a login profile (nvm, corepack, ~/.local/bin) is found exactly when the
# build will find it. bst_probe is that shell's script; every line it prints is prefixed
# PROBE, so what a profile prints cannot pass for another fact.
# needs: bst_probe
# shellcheck disable=SC2154 # set by the prologue
printf 'LOGIN_SHELL %s\n' "${SHELL:-/bin/sh}"
if command -v timeout >/dev/null 2>&1; then bst_t="timeout 30"; else bst_t=; fi
# Two words, or none.
# shellcheck disable=SC2086
$bst_t "${SHELL:-/bin/sh}" -lc "$bst_probe" </dev/null 2>/dev/null | sed 's/^/PROBE /'
