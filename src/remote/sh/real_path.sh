# `bst_real PATH`: PATH with every existing ancestor resolved on the server (`pwd -P`) and
# the part that does not exist yet appended as written.
bst_real() { p=$1; rest=; while [ ! -d "$p" ]; do case $p in /|'') break;; esac; rest="/${p##*/}$rest"; p=${p%/*}; [ -n "$p" ] || p=/; done; r=$(cd "$p" 2>/dev/null && pwd -P) || r=$p; printf '%s%s' "${r%/}" "$rest"; }
