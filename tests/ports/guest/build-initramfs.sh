#!/bin/bash
# tests/ports/guest/build-initramfs.sh OUT_DIR: builds the guest the vhost-user guest tests
# boot (tests/ports/test_vhost_user_guest.py, control/tests/follow_qemu.rs): OUT_DIR/vmlinuz (the host's kernel) and
# OUT_DIR/initramfs.cpio.gz (busybox-static, the virtio-net modules with what they depend on,
# and tests/ports/guest/init). Prints OUT_DIR/initramfs.cpio.gz. Kept up to date cheaply: a
# second run with nothing changed only compares a stamp.
#
# The kernel is the newest /boot/vmlinuz-* whose modules are installed (Debian package
# linux-image-amd64), or RS_GUEST_KVER. Needs busybox-static.
set -euo pipefail

out=${1:?usage: build-initramfs.sh OUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)
busybox=/bin/busybox
# The drivers of a virtio-net-pci device, and macvlan (the rx-filter follow test adds a MAC
# to eth0 with one); their dependencies come from modules.dep.
want=(virtio_pci virtio_net macvlan)

die() {
    echo "build-initramfs: $*" >&2
    exit 1
}

kver=${RS_GUEST_KVER:-}
if [[ -z $kver ]]; then
    for k in $(ls -1 /boot/vmlinuz-* 2>/dev/null | sed 's|^/boot/vmlinuz-||' | sort -rV); do
        if [[ -f /lib/modules/$k/modules.dep ]]; then
            kver=$k
            break
        fi
    done
fi
[[ -n $kver ]] || die "no /boot/vmlinuz-* with modules in /lib/modules (Debian package linux-image-amd64)"
kernel=/boot/vmlinuz-$kver
moddir=/lib/modules/$kver
[[ -r $kernel ]] || die "$kernel is not readable"
[[ -x $busybox ]] || die "$busybox is missing (Debian package busybox-static)"

stamp="$kver $(stat -c %Y:%s "$kernel" "$busybox" "$here/init" "$0" | tr '\n' ' ')"
if [[ -f $out/stamp && $(cat "$out/stamp") == "$stamp" && -f $out/initramfs.cpio.gz ]]; then
    echo "$out/initramfs.cpio.gz"
    exit 0
fi

# The modules in load order: each one's dependencies (modules.dep lists them, nearest
# first) before it, each once.
declare -A seen=()
order=()
add() {
    local name=$1 line path deps d
    line=$(grep -E "(^|/)$name\.ko(\.[a-z]+)?:" "$moddir/modules.dep" | head -1) ||
        die "module $name is not in $moddir/modules.dep (built in?)"
    path=${line%%:*}
    deps=${line#*:}
    [[ -n ${seen[$path]:-} ]] && return 0
    seen[$path]=1
    local rev=()
    for d in $deps; do rev=("$d" "${rev[@]}"); done
    for d in "${rev[@]}"; do
        d=${d##*/}
        add "${d%%.ko*}"
    done
    order+=("$path")
}
for m in "${want[@]}"; do
    if grep -qE "(^|/)$m\.ko$" "$moddir/modules.builtin" 2>/dev/null; then
        continue
    fi
    add "$m"
done

mkdir -p "$out"
tmp=$(mktemp -d "$out/root.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp"/{bin,dev,proc,sys,tmp,modules}
cp "$busybox" "$tmp/bin/busybox"
cp "$here/init" "$tmp/init"
chmod 755 "$tmp/init" "$tmp/bin/busybox"
: >"$tmp/modules/order"
for p in "${order[@]}"; do
    base=${p##*/}
    case $base in
    *.ko) cp "$moddir/$p" "$tmp/modules/$base" ;;
    *.ko.xz) xz -dc "$moddir/$p" >"$tmp/modules/${base%.xz}" ;;
    *.ko.zst) zstd -qdc "$moddir/$p" >"$tmp/modules/${base%.zst}" ;;
    *.ko.gz) gzip -dc "$moddir/$p" >"$tmp/modules/${base%.gz}" ;;
    *) die "unknown module file $p" ;;
    esac
    base=${base%.ko*}.ko
    echo "$base" >>"$tmp/modules/order"
done
# The console must exist before the kernel starts /init.
mknod -m 600 "$tmp/dev/console" c 5 1

(cd "$tmp" && find . -mindepth 1 | LC_ALL=C sort | "$busybox" cpio -o -H newc 2>/dev/null) |
    gzip -1 >"$out/initramfs.cpio.gz.new"
mv "$out/initramfs.cpio.gz.new" "$out/initramfs.cpio.gz"
cp "$kernel" "$out/vmlinuz.new"
mv "$out/vmlinuz.new" "$out/vmlinuz"
echo "$stamp" >"$out/stamp"
echo "$out/initramfs.cpio.gz"
