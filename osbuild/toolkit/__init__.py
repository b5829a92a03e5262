"""The stage toolkit: what stages and assemblers import besides osbuild.api.

Everything here runs inside the sandbox on the build root's Python, which has
only the standard library, so a module here imports the standard library,
osbuild.api and the toolkit itself, never the engine. The engine may import
the toolkit (one implementation of a fact). This folder is the list:
test/mod/test_layers.py holds it to what the stages import, and ci/stage-gate
runs the cases of every stage that reaches a changed module.

- stagelib: paths in the tree, write_file, make_dirs;
- tool: run(), every tool a stage calls;
- debian: dpkg, mmdebstrap and initramfs-tools facts;
- debversion: Debian's version order;
- debfile: .deb files rewritten for a foreign install;
- foreign: a foreign tree's slowest programs done by the build root's
  (which, when, their stand-ins); callserver serves the call-outs;
- architectures: each tool's name for an architecture;
- tarlib: tarballs of a tree;
- disk/: partition tables, mkfs, file systems from a directory, FAT through
  mtools, GRUB for BIOS, image conversion.
"""
