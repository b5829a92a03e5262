#!/usr/bin/env bash
# The plain baseline for `make bench`: only the work a bootable Debian qcow2 needs,
# with no engine around it: mmdebstrap to a tar, sfdisk, mkfs.ext4 on a loop
# device, untar, grub-mkimage + boot sector, qemu-img convert.
# Usage: baseline.sh OUTDIR MIRROR [SUITE] [PACKAGES]
set -euo pipefail
out=$1 mirror=$2 suite=${3:-trixie}
packages=${4:-systemd-sysv,linux-image-amd64,openssh-server}
work=$(mktemp -d "${TMPDIR:-/var/tmp}/baseline.XXXXXX")
loop="" mnt="$work/mnt"
cleanup() {
    mountpoint -q "$mnt" && umount "$mnt"
    [ -n "$loop" ] && losetup -d "$loop"
    rm -rf "$work"
}
trap cleanup EXIT

mmdebstrap --quiet --variant=minbase --include="$packages" \
    --dpkgopt=force-unsafe-io "$suite" "$work/root.tar" "$mirror"

uuid=6e4ff95f-f662-45ee-a82a-bdf44a2d0b75
truncate -s 3G "$work/disk.img"
printf 'label: dos\nstart=2048, type=83, bootable\n' | sfdisk -q "$work/disk.img"
size=$(( $(stat -c %s "$work/disk.img") - 2048 * 512 ))
loop=$(losetup --find --show --offset $((2048 * 512)) --sizelimit "$size" "$work/disk.img")
mkfs.ext4 -q -U "$uuid" "$loop"
mkdir "$mnt" && mount "$loop" "$mnt"
tar -C "$mnt" -xf "$work/root.tar"
kernel=$(cd "$mnt/boot" && ls vmlinuz-* | sort -V | tail -1)
version=${kernel#vmlinuz-}
mkdir -p "$mnt/boot/grub"
cat > "$mnt/boot/grub/grub.cfg" <<CFG
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=1
menuentry 'Debian' {
    search --no-floppy --fs-uuid --set=root $uuid
    linux /boot/vmlinuz-$version root=UUID=$uuid ro console=ttyS0
    initrd /boot/initrd.img-$version
}
CFG
echo "UUID=$uuid / ext4 defaults 0 1" > "$mnt/etc/fstab"
umount "$mnt"
losetup -d "$loop"; loop=""

grub-mkimage -O i386-pc -o "$work/core.img" -p '(hd0,msdos1)/boot/grub' \
    biosdisk part_msdos ext2 normal search search_fs_uuid linux serial terminal
python3 - "$work/disk.img" "$work/core.img" <<'PY'
import struct, sys
disk, core = sys.argv[1], open(sys.argv[2], "rb").read()
boot = open("/usr/lib/grub/i386-pc/boot.img", "rb").read()
sectors = (len(core) + 511) // 512
core = bytearray(core + bytes(sectors * 512 - len(core)))
struct.pack_into("<QHH", core, 0x1f4, 2, sectors - 1, 0x820)  # diskboot blocklist
mbr = bytearray(boot[:440])
struct.pack_into("<Q", mbr, 0x5c, 1)  # boot.img: core.img's first sector
with open(disk, "r+b") as f:
    f.write(mbr)
    f.seek(512)
    f.write(core)
PY
qemu-img convert -O qcow2 "$work/disk.img" "$out/baseline.qcow2"
