# `bst_write_meta DIR COMMAND...`: writes what COMMAND prints as DIR's release meta without
# following a link at either name (a build could leave one): the temp name is removed and
# created with noclobber (O_EXCL), then renamed over the meta; `mv -T` replaces a link
# rather than writing through it or moving into the directory behind it.
# needs: bst_meta, bst_meta_tmp
# shellcheck disable=SC2154 # set by the prologue
bst_write_meta() { bst_d=$1; shift; rm -f "$bst_d/$bst_meta_tmp" && (set -C; "$@" > "$bst_d/$bst_meta_tmp") && { mv -fT "$bst_d/$bst_meta_tmp" "$bst_d/$bst_meta" 2>/dev/null || { [ ! -d "$bst_d/$bst_meta" ] && mv -f "$bst_d/$bst_meta_tmp" "$bst_d/$bst_meta"; }; }; }
