#!/usr/bin/env bash
# Build the base root filesystem of Corral containers from Debian's busybox-static.
#
# usage: build-rootfs.sh DEST
#
# The tree is built in a temporary directory next to DEST and renamed into
# place at the end, so a half-built rootfs is never used. If DEST already holds
# bin/busybox, only the mount points a newer script adds are made: the script is
# idempotent.
set -euo pipefail

CORRAL_UID=10000
CORRAL_GID=10000

usage() {
    echo "usage: $0 DEST" >&2
    exit 2
}

# Install busybox-static unless it is installed; refresh the package lists only
# if the first attempt fails.
ensure_busybox_static() {
    local status
    status=$(dpkg-query -W -f='${Status}' busybox-static 2>/dev/null || true)
    if [[ $status == "install ok installed" && -x /bin/busybox ]]; then
        return
    fi
    echo "installing busybox-static" >&2
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends busybox-static >&2; then
        apt-get update >&2
        apt-get install -y --no-install-recommends busybox-static >&2
    fi
}

# Create the directory skeleton with the modes the containers expect.
make_layout() {
    local root=$1
    chmod 0755 "$root"
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,dev,proc,sys,tmp,root,home/corral,var/tmp,run}
    chmod 1777 "$root/tmp" "$root/var/tmp"
    chmod 0700 "$root/root"
    chown "$CORRAL_UID:$CORRAL_GID" "$root/home/corral"
}

# Copy busybox and link every applet to it with a relative symlink.
install_busybox() {
    local root=$1 applet
    install -m 0755 /bin/busybox "$root/bin/busybox"
    while IFS= read -r applet; do
        applet=${applet#/}
        [[ -z $applet || $applet == bin/busybox ]] && continue
        [[ -e $root/$applet || -L $root/$applet ]] && continue
        mkdir -p "$root/$(dirname "$applet")"
        ln -s -r "$root/bin/busybox" "$root/$applet"
    done < <(/bin/busybox --list-full)
}

# Write the accounts and the hosts file.
write_etc() {
    local etc=$1/etc
    cat >"$etc/passwd" <<EOF
root:x:0:0:root:/root:/bin/sh
corral:x:$CORRAL_UID:$CORRAL_GID:corral:/home/corral:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
    cat >"$etc/group" <<EOF
root:x:0:
corral:x:$CORRAL_GID:
nogroup:x:65534:
EOF
    cat >"$etc/hosts" <<EOF
127.0.0.1	localhost
::1	localhost ip6-localhost ip6-loopback
EOF
    chmod 0644 "$etc/passwd" "$etc/group" "$etc/hosts"
    add_mount_points "$1"
}

# The files the daemon binds over (the container's resolv.conf), so that setting a
# container up writes nothing to its writable layer: an idle container's stays empty,
# which is what disk accounting (and a metrics scrape) can read with one getdents.
add_mount_points() {
    local etc=$1/etc
    [[ -e $etc/resolv.conf || -L $etc/resolv.conf ]] || install -m 0644 /dev/null "$etc/resolv.conf"
}

main() {
    [[ $# -eq 1 && -n $1 ]] || usage
    local dest=${1%/}
    [[ -n $dest ]] || usage
    if [[ -e $dest/bin/busybox ]]; then
        add_mount_points "$dest"  # a rootfs built before they were part of it
        echo "rootfs $dest exists"
        return
    fi
    ensure_busybox_static

    local parent tmp
    parent=$(dirname "$dest")
    mkdir -p "$parent"
    tmp=$(mktemp -d "$parent/.$(basename "$dest").build.XXXXXX")
    # shellcheck disable=SC2064  # expand $tmp now
    trap "rm -rf -- '$tmp'" EXIT

    make_layout "$tmp"
    install_busybox "$tmp"
    write_etc "$tmp"

    # rename(2) replaces an empty DEST directory, and fails on a non-empty one.
    if ! mv -T -- "$tmp" "$dest"; then
        if [[ -e $dest/bin/busybox ]]; then
            echo "rootfs $dest exists (built concurrently)"
            return
        fi
        echo "$0: cannot move the rootfs into $dest" >&2
        return 1
    fi
    trap - EXIT
    echo "rootfs built in $dest"
}

main "$@"
