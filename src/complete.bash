
# Target and service names come from targets.toml: bst prints those that fit.
_bst_names() {
    local names
    names=$("${COMP_WORDS[0]}" __complete -- "${COMP_WORDS[@]:0:COMP_CWORD+1}" 2>/dev/null)
    if [[ -n "$names" ]]; then
        # Names are letters, digits, `-`, `_` and `.`: nothing to glob, and IFS splits them
        # at newlines (mapfile would need bash 4; macOS has 3.2).
        local IFS=$'\n'
        # shellcheck disable=SC2206
        COMPREPLY=( $names )
        return 0
    fi
    _bst "$@"
}
if [[ "${BASH_VERSINFO[0]}" -eq 4 && "${BASH_VERSINFO[1]}" -ge 4 || "${BASH_VERSINFO[0]}" -gt 4 ]]; then
    complete -F _bst_names -o nosort -o bashdefault -o default bst
else
    complete -F _bst_names -o bashdefault -o default bst
fi
