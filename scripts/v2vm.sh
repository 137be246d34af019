#!/bin/bash
# v2vm.sh: run a command in a throwaway cgroup-v2-ONLY Linux guest on this (hybrid v1/v2) machine.
# (The workplace's shared recipe, carried here so that CI needs nothing from outside the
# repository; scripts/test-v2.sh runs Corral's tests with it.)
#
#   v2vm.sh                      # default: Corral's tests/cgroups under pure cgroup v2
#   v2vm.sh '/opt/corral/venv/bin/python -m pytest tests/net -q'   # run from the repository root
#   v2vm.sh --purge              # remove the cached kernel (~400 MB); V2VM_PURGE=1 does it after a run
#
# Leaves nothing behind but that cache: the per-run dir (/tmp/v2vm.XXXXXX) is removed and QEMU is
# killed on any exit (end, timeout, Ctrl-C/TERM). The host's own mounts and cgroups are not touched.
#
# How: Debian's own kernel (the linux-image-amd64 package, fetched with `apt-get download` and
# unpacked with `dpkg -x` into a cache dir; never installed on the host) boots under QEMU with
# the HOST's root filesystem shared read-only over 9p, with a tmpfs overlay on top (the guest may
# write anywhere, the repository included; nothing reaches the host). The guest mounts only cgroup2 at
# /sys/fs/cgroup (cgroup_no_v1=all), enables +cpu +memory +pids +cpuset +io at the root, loads
# veth/bridge/nf_tables/loop, and runs the command as root in the directory v2vm.sh was started from
# (shared on its own when it is under /tmp, /run or /var/tmp, which are fresh tmpfs in the guest).
# Its output and exit code come back through another 9p share (per-run temp dir). The guest has no
# NIC: all traffic stays in it.
#
# Accelerator: TCG (software emulation). /dev/kvm here is kvm-pvm (Pagetable-based VM, nested_pvm=1):
# it runs only PVM-enlightened guest kernels; Debian's kernel is stuck in PVM's bootstrap emulator
# (still decompressing after 200 s), so kvm is chosen only on hosts with real VT-x/AMD-V.
#
# Env: V2VM_MEM (MiB, default 2048), V2VM_SMP (default: nproc), V2VM_TIMEOUT (s, default 2400),
#      V2VM_ACCEL (auto|tcg|kvm; auto = kvm only with kvm_intel/kvm_amd loaded), V2VM_CPU (TCG cpu model,
#      default max), V2VM_CACHE (default /var/tmp/v2vm-cache),
#      V2VM_KPKG (kernel package, default: what linux-image-amd64 depends on).
# Exit code: the guest command's, or 124 on timeout, 125 when the guest died without reporting one,
# 126 when its kernel stalled (V2VM_STALL_GRACE, below).
set -euo pipefail

CACHE=${V2VM_CACHE:-/var/tmp/v2vm-cache}
MEM=${V2VM_MEM:-2048}
SMP=${V2VM_SMP:-$(nproc)}
TIMEOUT=${V2VM_TIMEOUT:-2400}
ACCEL=${V2VM_ACCEL:-auto}
if [[ $ACCEL == auto ]]; then   # real KVM needs VT-x/AMD-V (kvm_intel/kvm_amd); kvm_pvm cannot run this kernel
    if [[ -w /dev/kvm && ( -d /sys/module/kvm_intel || -d /sys/module/kvm_amd ) ]]; then ACCEL=kvm; else ACCEL=tcg; fi
fi
DEFAULT_CMD='/opt/corral/venv/bin/python -m pytest tests/cgroups -q -p no:cacheprovider -rfEs'
WORKDIR=$(pwd)

if [[ ${1:-} == --purge ]]; then rm -rf "$CACHE"; echo "removed $CACHE"; exit 0; fi
CMD=${1:-$DEFAULT_CMD}
[[ $(id -u) == 0 ]] || { echo "v2vm: run as root" >&2; exit 2; }

log() { printf '[v2vm %(%T)T] %s\n' -1 "$*" >&2; }

# -- host tools (idempotent) ------------------------------------------------------------------
if ! command -v qemu-system-x86_64 >/dev/null || ! command -v busybox >/dev/null; then
    log "installing qemu-system-x86 busybox-static"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        qemu-system-x86 busybox-static >/dev/null
fi
BUSYBOX=$(command -v busybox)
file -L "$BUSYBOX" 2>/dev/null | grep -q 'statically linked' || [[ ! -x /usr/bin/file ]] ||
    { echo "v2vm: $BUSYBOX is not static (install busybox-static)" >&2; exit 2; }

# -- kernel: Debian's package, unpacked into the cache (never installed) -----------------------
kernel_package() {
    apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'
}
GIVEN_KPKG=${V2VM_KPKG:-}
V2VM_KPKG=${GIVEN_KPKG:-$(kernel_package)}
if [[ -z $V2VM_KPKG || ! -e $CACHE/$V2VM_KPKG/.ready ]]; then
    # Not cached: fetch it with fresh package lists (old ones may name a version the mirror dropped).
    apt-get update -qq
    V2VM_KPKG=${GIVEN_KPKG:-$(kernel_package)}
fi
KDIR=$CACHE/$V2VM_KPKG
if [[ ! -e $KDIR/.ready ]]; then
    log "fetching $V2VM_KPKG into $KDIR"
    rm -rf "$KDIR"; mkdir -p "$KDIR/deb"
    (cd "$KDIR/deb" && apt-get download -q "$V2VM_KPKG" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2 || true)
    dpkg -x "$KDIR"/deb/*.deb "$KDIR/root"
    rm -rf "$KDIR/deb"
    KVER=$(ls "$KDIR/root/lib/modules")
    "$BUSYBOX" depmod -b "$KDIR/root" "$KVER"      # modules.dep / modules.alias (no kmod needed)
    touch "$KDIR/.ready"
fi
KVER=$(ls "$KDIR/root/lib/modules")
KIMG=$KDIR/root/boot/vmlinuz-$KVER
MODS=$KDIR/root/lib/modules/$KVER

# -- per-run directory, cleaned on any exit ---------------------------------------------------
RUN=$(mktemp -d /tmp/v2vm.XXXXXX)
QPID=
cleanup() {
    if [[ -n $QPID ]] && kill -0 "$QPID" 2>/dev/null; then kill "$QPID" 2>/dev/null || true; sleep 1
        kill -9 "$QPID" 2>/dev/null || true; fi
    rm -rf "$RUN"
    if [[ ${V2VM_PURGE:-0} == 1 ]]; then rm -rf "$CACHE"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$RUN/initrd/bin" "$RUN/out"
printf 'cd %q || exit 125\n%s\n' "$WORKDIR" "$CMD" >"$RUN/out/cmd.sh"
printf '%s' "$WORKDIR" >"$RUN/out/workdir"

# initramfs: static busybox + the modules needed to reach the 9p root (with their deps, in order)
cp "$BUSYBOX" "$RUN/initrd/bin/busybox"
early="virtio_pci 9pnet_virtio 9p overlay"
closure() {  # module names -> their .ko paths (relative to $MODS), dependencies first
    local m path deps d
    for m in "$@"; do
        path=$(awk -v m="/$m.ko:" 'index($0, m) {sub(/:.*/, ""); print; exit}' "$MODS/modules.dep")
        [[ -n $path ]] || continue
        deps=$(awk -v p="$path:" 'index($0, p) == 1 {sub(/^[^:]*: ?/, ""); print; exit}' "$MODS/modules.dep")
        for d in $deps; do closure "$(basename "$d" .ko)"; done
        echo "$path"
    done
}
closure $early | awk '!seen[$0]++' >"$RUN/early.list"
while read -r ko; do mkdir -p "$RUN/initrd/mods/$(dirname "$ko")"; cp "$MODS/$ko" "$RUN/initrd/mods/$ko"; done <"$RUN/early.list"
sed 's|^|/mods/|' "$RUN/early.list" >"$RUN/initrd/early.list"

cat >"$RUN/initrd/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
while read -r ko; do insmod "$ko" || echo "v2vm-init: insmod $ko failed"; done </early.list
mkdir -p /lower /rw /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot /lower || {
    echo "v2vm-init: cannot mount the host root over 9p"; poweroff -f; }
mount -t tmpfs -o mode=755 tmpfs /rw && mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot || {
    echo "v2vm-init: overlay failed"; poweroff -f; }
mkdir -p /newroot/.v2vm && cp /stage2 /bin/busybox /newroot/.v2vm/
umount /proc /sys; mount --move /dev /newroot/dev 2>/dev/null || umount /dev
exec switch_root /newroot /.v2vm/busybox sh /.v2vm/stage2
EOF
cat >"$RUN/initrd/stage2" <<EOF
KVER=$KVER
EOF
cat >>"$RUN/initrd/stage2" <<'EOF'
# Stage 2, PID 1 in the overlay of the host's root.
BB=/.v2vm/busybox
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb LANG=C.UTF-8
$BB mount -t proc proc /proc
$BB mount -t sysfs sysfs /sys
$BB mountpoint -q /dev || $BB mount -t devtmpfs devtmpfs /dev
$BB mkdir -p /dev/pts /dev/shm && $BB mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
# what udev/initramfs-tools would add to a bare devtmpfs (bash's <(...) needs /dev/fd)
$BB ln -sfn /proc/self/fd /dev/fd; $BB ln -sf /proc/self/fd/0 /dev/stdin
$BB ln -sf /proc/self/fd/1 /dev/stdout; $BB ln -sf /proc/self/fd/2 /dev/stderr
$BB mount -t tmpfs -o mode=1777 tmpfs /dev/shm
$BB mount -t tmpfs -o mode=1777 tmpfs /tmp
$BB mount -t tmpfs -o mode=755 tmpfs /run
$BB mount -t tmpfs -o mode=755 tmpfs /var/tmp
$BB mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup
$BB mkdir -p /v2vm-out "/lib/modules/$KVER"
$BB mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 v2out /v2vm-out
# The working directory, when a tmpfs above hides it (a checkout under /tmp): the host's
# copy, read-only, under a writable layer of its own.
W=$($BB cat /v2vm-out/workdir)
if [ ! -d "$W" ]; then
    $BB mkdir -p /.v2vm/work-lower /.v2vm/work-rw "$W"
    $BB mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose work /.v2vm/work-lower
    $BB mount -t tmpfs -o mode=755 tmpfs /.v2vm/work-rw && $BB mkdir -p /.v2vm/work-rw/upper /.v2vm/work-rw/work
    $BB mount -t overlay overlay \
        -o lowerdir=/.v2vm/work-lower,upperdir=/.v2vm/work-rw/upper,workdir=/.v2vm/work-rw/work "$W"
fi
$BB mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose mods "/lib/modules/$KVER"
$BB ln -sf /.v2vm/busybox /usr/local/sbin/modprobe
echo /usr/local/sbin/modprobe >/proc/sys/kernel/modprobe
for m in loop veth bridge br_netfilter nf_tables nft_chain_nat nft_ct nft_masq nft_nat nft_redir \
         nft_reject_inet nft_fib_inet nf_nat tun; do $BB modprobe "$m" 2>/dev/null; done
$BB hostname v2vm; $BB ip link set lo up 2>/dev/null || ip link set lo up
echo "+cpu +memory +pids +cpuset +io" >/sys/fs/cgroup/cgroup.subtree_control
{
    echo "== guest: $(uname -r), $(nproc) cpus, $(awk '/MemTotal/ {print $2 " kB"}' /proc/meminfo)"
    echo "== mounts of cgroup type:"; grep cgroup /proc/self/mountinfo
    echo "== /sys/fs/cgroup/cgroup.controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
    echo "== /sys/fs/cgroup/cgroup.subtree_control: $(cat /sys/fs/cgroup/cgroup.subtree_control)"
    echo "== guest uptime at command start: $(cut -d' ' -f1 /proc/uptime) s"
    echo "== command: $(head -c 300 /v2vm-out/cmd.sh)"
} >/v2vm-out/guest.log 2>&1
start=$($BB date +%s)
( cd /; exec /bin/bash /v2vm-out/cmd.sh ) >>/v2vm-out/guest.log 2>&1 </dev/null
rc=$?
echo "== guest command rc=$rc in $(( $($BB date +%s) - start )) s" >>/v2vm-out/guest.log
echo $rc >/v2vm-out/rc
$BB sync
$BB umount /v2vm-out 2>/dev/null
$BB poweroff -f
echo o >/proc/sysrq-trigger
EOF
chmod 755 "$RUN/initrd/init" "$RUN/initrd/bin/busybox"
(cd "$RUN/initrd" && find . | "$BUSYBOX" cpio -o -H newc 2>/dev/null) >"$RUN/initrd.cpio"

# -- boot ------------------------------------------------------------------------------------
case $ACCEL in
    kvm) ACCEL_ARGS=(-accel kvm -cpu host) ;;
    *) ACCEL_ARGS=(-accel tcg,thread=multi,tb-size=256 -cpu "${V2VM_CPU:-max}") ;;
esac
APPEND="console=ttyS0 rdinit=/init cgroup_no_v1=all systemd.unified_cgroup_hierarchy=1 panic=-1 quiet loglevel=4 mitigations=off"
log "booting $KVER ($ACCEL, ${SMP} cpus, ${MEM} MiB); run dir $RUN"
T0=$(date +%s.%N)
timeout --foreground -k 10 "$TIMEOUT" qemu-system-x86_64 "${ACCEL_ARGS[@]}" \
    -machine q35 -smp "$SMP" -m "$MEM" -nodefaults -no-user-config -display none -nic none \
    -serial "file:$RUN/out/console.log" -no-reboot \
    -kernel "$KIMG" -initrd "$RUN/initrd.cpio" -append "$APPEND" \
    -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap" \
    -virtfs "local,path=$MODS,mount_tag=mods,security_model=none,readonly=on" \
    -virtfs "local,path=$WORKDIR,mount_tag=work,security_model=none,readonly=on,multidevs=remap" \
    -virtfs "local,path=$RUN/out,mount_tag=v2out,security_model=none" &
QPID=$!
# A guest kernel that reports a stall (a soft lockup or an RCU stall; seen once under TCG, both
# vCPUs spinning in the kernel for minutes) while its command has written nothing for
# V2VM_STALL_GRACE s is stopped: exit 126, which the caller may take as "boot again".
STALL_GRACE=${V2VM_STALL_GRACE:-180}
stalled=0
while kill -0 "$QPID" 2>/dev/null; do
    sleep 5
    grep -qE 'soft lockup|detected stall|kthread starved' "$RUN/out/console.log" 2>/dev/null || continue
    quiet_since=$(stat -c %Y "$RUN/out/guest.log" 2>/dev/null || printf '%.0f' "$T0")
    if (( $(date +%s) - quiet_since > STALL_GRACE )); then stalled=1; kill "$QPID" 2>/dev/null; break; fi
done
set +e
wait "$QPID"; qrc=$?
set -e
QPID=
T1=$(date +%s.%N)
cat "$RUN/out/guest.log" 2>/dev/null || { echo "--- no guest.log; console:"; tail -50 "$RUN/out/console.log"; }
if ((stalled)); then echo "--- console tail:"; tail -30 "$RUN/out/console.log"
    log "the guest kernel stalled (console above) and its command wrote nothing for ${STALL_GRACE}s"; rc=126
elif [[ $qrc == 124 ]]; then log "timed out after ${TIMEOUT}s"; rc=124
elif [[ -s $RUN/out/rc ]]; then rc=$(cat "$RUN/out/rc")
else echo "--- console tail:"; tail -30 "$RUN/out/console.log"; rc=125; fi
log "VM wall time $(awk -v a="$T0" -v b="$T1" 'BEGIN {printf "%.1f", b - a}') s, guest rc=$rc"
exit "$rc"
