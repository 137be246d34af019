#!/usr/bin/env bash
# Install the peer runtimes the benchmark compares Corral with, from Debian.
#
#   crun, runc, bubblewrap (required peers; util-linux's unshare/nsenter are always there)
#   podman                  (optional: skipped, with a note, when it does not install)
#   skopeo, umoci           (optional: the images phase's peer; docker-registry comes from
#                            scripts/install.sh, which keeps its service off)
#
# Each package is installed on its own with --no-install-recommends so one failure
# does not block the others; `apt-get update` runs only if an install fails, then
# that install is retried once. Idempotent: installed packages are left alone.
# Exit status: 0 when every required peer is present, 1 otherwise.
set -u
export DEBIAN_FRONTEND=noninteractive

REQUIRED=(crun runc bubblewrap)
OPTIONAL=(podman skopeo umoci)
updated=0
failed=()
LOGDIR=$(mktemp -d /tmp/install-peers.XXXXXX)
trap 'rm -rf "$LOGDIR"' EXIT

have() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed"; }

install() {
    local pkg=$1
    if have "$pkg"; then
        echo "install-peers: $pkg already installed"
        return 0
    fi
    echo "install-peers: installing $pkg"
    if apt-get install -y --no-install-recommends "$pkg" >"$LOGDIR/$pkg.log" 2>&1; then
        return 0
    fi
    if [ "$updated" = 0 ]; then
        echo "install-peers: apt-get install $pkg failed; running apt-get update once"
        apt-get update >"$LOGDIR/update.log" 2>&1 || true
        updated=1
        if apt-get install -y --no-install-recommends "$pkg" >"$LOGDIR/$pkg.log" 2>&1; then
            return 0
        fi
    fi
    echo "install-peers: $pkg did not install; the end of apt-get's output:" >&2
    tail -n 3 "$LOGDIR/$pkg.log" >&2
    return 1
}

status=0
for pkg in "${REQUIRED[@]}"; do
    install "$pkg" || { failed+=("$pkg"); status=1; }
done
for pkg in "${OPTIONAL[@]}"; do
    install "$pkg" || failed+=("$pkg (optional)")
done
if [ "${#failed[@]}" -gt 0 ]; then
    echo "install-peers: not installed: ${failed[*]}" >&2
fi
exit "$status"
