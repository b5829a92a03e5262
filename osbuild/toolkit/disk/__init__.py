"""The disk toolkit of stages and assemblers: one module per concern.

The disk stages (sfdisk, mkfs.*, mtools.copy, grub2.inst, qemu) are thin
wrappers around these modules, and the v1 qemu and rawfs assemblers make
whole images with the same ones. Callers import the module they need:

- blockdev: sizes of images and devices, and the build's clock
  (SOURCE_DATE_EPOCH), which every other module may need;
- partition: partition tables (dos and gpt) checked, written with sfdisk and
  read back;
- mkfs: empty file systems on a device (ext4, xfs, btrfs, FAT);
- fromdir: file systems filled from a directory without loop devices or
  mounts (mkfs.ext4 -d, mkfs.btrfs --rootdir, mkfs.xfs -p), and whether a
  tree fits (TooSmall);
- proto: the mkfs.xfs prototype file that describes a tree;
- fat: FAT content written with mtools (this kernel has no vfat driver);
- grub_bios: GRUB for BIOS (boot.img, core.img) without grub-install;
- convert: raw images to qcow2, vmdk, vpc, vdi, vhdx with qemu-img, with the
  random ids and times qemu-img writes made reproducible;
- sparse: the data extents of a sparse file (SEEK_DATA/SEEK_HOLE), which convert
  and fromdir walk.

Everything here is deterministic where the tools allow it: ids that tools
would pick at random are derived from the request or the image's content, and
timestamps come from SOURCE_DATE_EPOCH. Tools run through osbuild.toolkit.tool.run and
user errors end the stage with one line (osbuild.api.fail). Stdlib only, like
osbuild.api: it runs on the build root's Python.
"""
