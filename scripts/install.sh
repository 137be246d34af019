#!/bin/bash
# Install Corral on a Debian machine, as root, and (re)start the daemon.
# Idempotent: run it again after pulling to upgrade.
#   system packages, /opt/corral/venv, `corral` (the C front) and `corral-py` (the Python
#   CLI), /usr/local/lib/corral/corral-init, the CI
#   drivers (corral-gitlab, corral-gitlab-fast, corral-github-hooks, github-hooks.sh),
#   the base rootfs in /var/lib/corral/rootfs/base, /etc/corral/corral.toml, the containers'
#   host ids in /etc/subuid and /etc/subgid;
#   where systemd is PID 1, the service /etc/systemd/system/corrald.service.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV=/opt/corral/venv
INIT=/usr/local/lib/corral/corral-init
ROOTFS=/var/lib/corral/rootfs/base
CONFIG=/etc/corral/corral.toml
UNIT=/etc/systemd/system/corrald.service

[ "$(id -u)" = 0 ] || { echo "install.sh: run as root" >&2; exit 1; }

# System packages: a C compiler and static libc for the container init, corral-gitlab-fast
# and the `corral` front,
# busybox-static for the base rootfs, python3 with venv, mke2fs and losetup
# for disk quotas, nftables and iproute2 for container networking, jq to read the
# daemon's JSON log (README.md; tests/test_service.py runs its commands),
# golang-github-containers-common for the jobs' default seccomp profile
# (/usr/share/containers/seccomp.json) and libseccomp2, which compiles it.
packages=(gcc libc6-dev busybox-static python3 python3-venv e2fsprogs util-linux nftables iproute2 jq
          golang-github-containers-common libseccomp2)
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "${missing[@]}" \
        || { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; }
fi

# For the image tests (tests/images): a registry they run on loopback with a config of
# their own, skopeo to push into it, openssl to sign the token-auth case's tokens. The
# package's own registry service must neither run nor stay enabled: it is held back
# from starting while the package installs (policy-rc.d, which both invoke-rc.d and
# deb-systemd-invoke obey), then disabled.
if ! dpkg -s docker-registry skopeo openssl >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    policy=/usr/sbin/policy-rc.d
    own_policy=
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 0755 "$policy" && own_policy=1
    fi
    apt-get install -y -q --no-install-recommends docker-registry skopeo openssl \
        || { apt-get update -q && apt-get install -y -q --no-install-recommends docker-registry skopeo openssl; }
    [ -n "$own_policy" ] && rm -f "$policy"
    if [ -d /run/systemd/system ]; then
        systemctl disable --now -q docker-registry.service || true
    else
        update-rc.d -f docker-registry remove >/dev/null 2>&1 || true
    fi
fi

# The virtual environment with Corral and its test tools. Installed, not linked
# to the checkout: the daemon runs on when the checkout moves or goes (the tests
# and the benchmark run the checkout's code, from its directory).
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check "$REPO[test]"
rm -rf "$REPO/build"  # pip's in-tree build
# `corral` is a static C front (supervisor/cli/front.c: `run` and `contain` on their
# common path, ~1 ms to start) that runs the Python CLI, `corral-py` beside it, for
# everything else. `corral-py` without pip's console-script wrapper, which imports `re`
# (7 ms of a 15 ms command); -I: nothing from the caller's environment or directory is
# imported.
rm -f /usr/local/bin/corral-py
printf '#!%s -I\nfrom supervisor.cli import finish, main\nfinish(main())\n' \
    "$VENV/bin/python3" >/usr/local/bin/corral-py
chmod 0755 /usr/local/bin/corral-py
"$VENV/bin/python" -m executors.build --front /usr/local/bin/corral
ln -sf "$VENV/bin/corrald" /usr/local/bin/corrald
# The CI drivers (docs/ci-executors.md): GitLab's custom executor, GitHub's container hooks.
ln -sf "$VENV/bin/corral-gitlab" /usr/local/bin/corral-gitlab
ln -sf "$VENV/bin/corral-github-hooks" /usr/local/bin/corral-github-hooks
install -D -m 0755 "$REPO/executors/github-hooks.sh" /usr/local/lib/corral/github-hooks.sh
# The GitLab driver in C (static, as the init), every stage's *_exec; it runs corral-gitlab
# from its own directory for rare cases. corral-gitlab-run was its run stage alone, before.
"$VENV/bin/python" -m executors.build /usr/local/bin/corral-gitlab-fast
rm -f /usr/local/bin/corral-gitlab-run /usr/local/bin/corral-gitlab-run.sha256

"$VENV/bin/python" -m plugins.isolation.build "$INIT"
bash "$REPO/scripts/build-rootfs.sh" "$ROOTFS"

if [ ! -f "$CONFIG" ]; then
    install -D -m 0644 "$REPO/etc/corral.toml" "$CONFIG"
fi

# The containers' blocks of host ids ([isolation] userns_first_id, 8192 blocks of 65,536),
# registered to a `corral` entry so that useradd never gives a host user subordinate ids
# in them (it skips ranges /etc/subuid and /etc/subgid hold).
for f in /etc/subuid /etc/subgid; do
    grep -qx 'corral:268435456:536870912' "$f" 2>/dev/null || echo 'corral:268435456:536870912' >>"$f"
done

if [ -d /run/systemd/system ]; then
    # systemd is PID 1: it runs the daemon. One corraldctl started before would hold the
    # socket and the depot: stop it (its containers live on; the service re-adopts them).
    bash "$REPO/scripts/corraldctl" stop
    install -m 0644 "$REPO/etc/corrald.service" "$UNIT"
    systemctl daemon-reload
    systemctl enable -q corrald.service
    # Type=notify: returns once the daemon serves, or fails if it does not.
    systemctl restart corrald.service || {
        journalctl -u corrald.service -n 20 --no-pager >&2
        exit 1
    }
    echo "corrald running: systemctl status corrald; log: journalctl -u corrald -o cat"
else
    bash "$REPO/scripts/corraldctl" restart
fi
