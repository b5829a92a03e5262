"""image-info: a JSON report of what a disk image, file system image, tree or tarball holds.

The report uses upstream osbuild's image-info key names (image-format,
partition-table, partitions, bootloader, packages, os-release, services-*, ...)
and adds what Debian needs (dpkg packages with versions and architectures, apt
sources, /etc/default files). It reads images it did not make: nothing here
assumes the layout our own stages produce.

Modules, one concern each:
- cli: command line, output and the error boundary (flags, exit statuses).
- report: assembly of the report: one table row per reader (tree, disk and boot
  loader keys), the order they run in, and the ExitStack that holds what they open.
- diff: two reports compared path by path (--diff).
- pkgverify: installed files against dpkg's md5sums and lists (--packages-verify).
- sbom: the installed packages as an SPDX document (--sbom spdx).
- source: what the input is (directory, tarball, disk or file system image) and
  how it becomes something readable (a raw file, an extracted tree).
- disk: image format, partition table, partitions and their file systems.
- bootloader: GRUB2 BIOS boot code, the ESP's EFI files, grub.cfg menu entries,
  BLS entries; vercmp: rpm's version comparison that orders them.
- treeview: safe, chroot-like reads from an OS tree that may hold hostile symlinks.
- tree: everything read from the OS tree (packages, os-release, services, ...).
- discoverable: the Discoverable Partitions verdicts (gpt_types: the type table).
- failures: the report's "errors": where a reader could not look (its tool
  failed, a file was unreadable), never reported as "nothing there".
- backends, backend_loop, backend_guestfs (+ guestfs_server): how file systems
  inside an image are reached: loop devices as root, libguestfs without root;
  backend_types: the Backend protocol all three share.
"""

from osbuild.errors import OsbuildError


class ImageInfoError(OsbuildError):
    """Something about the input keeps image-info from reading it."""
