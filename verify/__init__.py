"""Verification tools: boot images and check them from the inside."""

# treediff: two trees as upstream's diff.json; compare: a document against a
# golden in which null means "don't care" (both used by test/cases).
# metrics: what osbuild-boot-test --json reports of a boot (milestones, systemd's view).
# bootlog: what a boot's consoles and screen mean (failure signs, milestones), no qemu;
# qemu: the machine itself (process, screen capture, artifacts); qmp: speaking QMP
# to a running qemu (verify.qemu's Monitor), nothing about booting.
