# For scripts that must finish once started (switch, prune, unlock): a client that dies
# (kill -9, cut connection) must not take the script down half-way through. Followed by
# register.sh.
trap '' PIPE HUP
