"""image-info on the corpus (test/corpus.py): images this project did not make.

Each report is compared field by field with facts computed without
image-info (sfdisk --json, blkid's low-level probe, dpkg's status file and
os-release read with debugfs or tar), and, for every image libguestfs can
open, with virt-inspector: OS, hostname, mount points and packages with
versions must agree; where they do not, the failure names the field and
which side the independent facts back. virt-inspector reads all those images
in one run (INSPECTED_TOGETHER), as its own disk each.
"""

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from hashlib import sha256
from pathlib import Path

import corpus
import corpus_vmdb2
import pytest

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0,
                                 reason="mmdebstrap --mode=root and a loop mount need root")]
DISKS = ("gpt-esp", "split", "btrfs", "vmdb2")
ROOT_PARTITION = {"gpt-esp": 2, "split": 2, "vmdb2": 1}  # of the ext4 disks debugfs reads
INSPECTABLE = (*DISKS, "bare")  # what virt-inspector opens (not a tarball)
# Where virt-inspector cannot read an image at all, and why (image-info's side is
# checked against the facts in test_tree_is_what_the_image_holds).
INSPECTOR_FAILS = {
    # libguestfs 1.48 does not resolve fstab's PARTUUID= sources: /var stays unmounted,
    # and with it dpkg's status file.
    "split": "filesize: /var/lib/dpkg/status: No such file or directory",
}
# One virt-inspector run, so one libguestfs appliance booted under TCG (some 40 s), for
# every image it reads: their disks in this order, /dev/sda first. corpus.py gives each
# image its own UUIDs and labels, which libguestfs resolves across all the disks.
INSPECTED_TOGETHER = tuple(name for name in INSPECTABLE if name not in INSPECTOR_FAILS)
GUESTFS_ENV = {"LIBGUESTFS_BACKEND": "direct", "LIBGUESTFS_BACKEND_SETTINGS": "force_tcg"}


def report_of(corpus_dir: Path, name: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "osbuild.image_info",
                           str(corpus_dir / corpus.IMAGES[name])],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


# --- independent facts ---------------------------------------------------------------


def sfdisk_partitions(image: Path) -> list[dict]:
    table = json.loads(subprocess.run(["sfdisk", "--json", str(image)], capture_output=True,
                                      text=True, check=True).stdout)["partitiontable"]
    parts = []
    for n, p in enumerate(table["partitions"], start=1):
        partuuid = (p["uuid"].lower() if table["label"] == "gpt"
                    else f"{int(table['id'], 16):08x}-{n:02x}")
        parts.append({"number": n, "start": p["start"] * 512, "size": p["size"] * 512,
                      "type": p["type"], "partuuid": partuuid})
    return parts


def blkid(image: Path, offset: int = 0, size: int | None = None) -> dict:
    cmd = ["blkid", "-p", "-o", "export", "-O", str(offset), *(["-S", str(size)] if size else [])]
    out = subprocess.run([*cmd, str(image)], capture_output=True, text=True).stdout
    values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return {"fstype": values.get("TYPE"), "uuid": values.get("UUID"),
            "label": values.get("LABEL")}


def debugfs_cat(image: Path, offset: int, path: str) -> str:
    return subprocess.run(["debugfs", "-R", f"cat {path}", f"{image}?offset={offset}"],
                          capture_output=True, text=True, check=True).stdout


def tree_file(corpus_dir: Path, name: str, path: str) -> str:
    """A file of the OS tree as the image holds it, read without image-info."""
    image = corpus_dir / corpus.IMAGES[name]
    if name == "tarball":
        return subprocess.run(["tar", "-xOf", str(image), f"./{path}"], capture_output=True,
                              text=True, check=True).stdout
    if name == "btrfs":  # debugfs reads ext4 only: the tree the image was made from
        return (corpus_dir / "tree" / path).read_text()
    if name == "bare":
        return debugfs_cat(image, 0, f"/{path}")
    starts = {p["number"]: p["start"] for p in sfdisk_partitions(image)}
    if name == "split" and path.startswith("var/"):
        return debugfs_cat(image, starts[3], f"/{path.removeprefix('var/')}")
    return debugfs_cat(image, starts[ROOT_PARTITION[name]], f"/{path}")


def dpkg_installed(status: str) -> dict[str, str]:
    """name:arch -> version of dpkg's status stanzas that are installed."""
    found = {}
    for stanza in status.split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z-]+): (.*)$", stanza, re.MULTILINE))
        if fields.get("Status") == "install ok installed":
            found[f"{fields['Package']}:{fields['Architecture']}"] = fields["Version"]
    return found


def os_release(text: str) -> dict[str, str]:
    return {k: v.strip('"') for k, v in re.findall(r"^([A-Z_]+)=(.*)$", text, re.MULTILINE)}


# --- image-info against the facts ------------------------------------------------------


@pytest.mark.parametrize("name", DISKS)
def test_partitions_are_what_sfdisk_and_blkid_say(name: str, corpus_dir: Path) -> None:
    image = corpus_dir / corpus.IMAGES[name]
    report = report_of(corpus_dir, name)
    facts = sfdisk_partitions(image)
    for fact in facts:
        fact.update(blkid(image, fact["start"], fact["size"]))
    keys = ("number", "start", "size", "type", "partuuid", "fstype", "uuid", "label")
    assert [{k: p[k] for k in keys} for p in report["partitions"]] == facts


@pytest.mark.parametrize("name", corpus.IMAGES)
def test_tree_is_what_the_image_holds(name: str, corpus_dir: Path) -> None:
    report = report_of(corpus_dir, name)
    status = dpkg_installed(tree_file(corpus_dir, name, "var/lib/dpkg/status"))
    assert len(status) > 100
    assert {f"{p['name']}:{p['arch']}": p["version"] for p in report["packages"]} == status
    assert report["hostname"] == tree_file(corpus_dir, name, "etc/hostname").strip()
    release = os_release(tree_file(corpus_dir, name, "usr/lib/os-release"))
    assert {k: report["os-release"].get(k) for k in ("ID", "VERSION_ID")} == \
        {k: release.get(k) for k in ("ID", "VERSION_ID")}
    assert "ssh.service" in report["services-enabled"]
    if name == "bare":
        assert report["filesystem"] == blkid(corpus_dir / corpus.IMAGES[name])


def test_root_that_is_not_the_largest_partition(corpus_dir: Path) -> None:
    report = report_of(corpus_dir, "split")
    sizes = {p["number"]: p["size"] for p in report["partitions"]}
    assert max(sizes, key=sizes.__getitem__) == 3  # /var
    # The tree is the root (2) with /boot and /var mounted by LABEL and PARTUUID: the
    # packages (test_tree_is_what_the_image_holds) come from /var's partition.
    assert sorted(row[:2] for row in report["fstab"]) == sorted([
        [f"UUID={corpus.ROOT_UUID['split']}", "/"], ["LABEL=corpus-boot", "/boot"],
        [f"PARTUUID={corpus.VAR_PARTUUID}", "/var"]])


def test_esp_is_what_mtools_says(corpus_dir: Path) -> None:
    report = report_of(corpus_dir, "gpt-esp")
    [esp] = report["esp"]
    assert esp["partition"] == 1 and esp["uuid"] == "C0A9-C0A9"
    assert sorted(esp["efi-binaries"]) == ["/EFI/BOOT/BOOTX64.EFI", "/EFI/debian/grubx64.efi"]
    assert set(esp["efi-binaries"].values()) == {"x86_64"}


def test_grub_for_bios_is_what_the_disk_holds(corpus_dir: Path) -> None:
    """vmdb2's grub-install: the report's GRUB byte ranges and menu, hashed and read here."""
    image = corpus_dir / corpus.IMAGES["vmdb2"]
    report = report_of(corpus_dir, "vmdb2")
    data = image.read_bytes()[:sfdisk_partitions(image)[0]["start"]]
    assert b"GRUB" in data[:440] and report["bootloader"] == "grub"
    assert report["grub2-bios"] == {
        "boot-code": {"start": 0, "end": 440, "sha256": sha256(data[:440]).hexdigest()},
        "core-area": {"start": 512, "end": len(data), "sha256": sha256(data[512:]).hexdigest()}}
    grub_cfg = tree_file(corpus_dir, "vmdb2", "boot/grub/grub.cfg")
    kernels = re.findall(r"^\s*linux\s+(\S+)\s+(.*)$", grub_cfg, re.MULTILINE)
    assert kernels and [(e["linux"], e["options"]) for e in report["grub-menu"]] == \
        [(path, " ".join(options.split())) for path, options in kernels]
    first = report["grub-menu"][0]
    assert f"root=UUID={corpus_vmdb2.ROOT_UUID}" in first["options"].split()
    root = sfdisk_partitions(image)[0]["start"]
    stat = subprocess.run(["debugfs", "-R", f"stat {first['linux']}", f"{image}?offset={root}"],
                          capture_output=True, text=True).stdout
    assert "Type: regular" in stat, f"{first['linux']} is not in the image"


# --- image-info against virt-inspector -------------------------------------------------


def run_inspector(*images: Path) -> subprocess.CompletedProcess[str]:
    drives = [arg for image in images for arg in ("-a", str(image))]
    return subprocess.run(["virt-inspector", "--no-icon", "--format=raw", *drives],
                          capture_output=True, text=True, env={**os.environ, **GUESTFS_ENV},
                          timeout=900)


@pytest.fixture(scope="module")
def inspected(corpus_dir: Path) -> subprocess.CompletedProcess[str]:
    """virt-inspector's one run on INSPECTED_TOGETHER, its disks in that order."""
    return run_inspector(*(corpus_dir / corpus.IMAGES[name] for name in INSPECTED_TOGETHER))


def disk_and_number(device: str) -> tuple[str, int]:
    """/dev/sdb2 (or btrfsvol:/dev/sdb2/@) -> ("b", 2); a whole disk, /dev/sdc, is number
    0; a name on no disk, ("", 0)."""
    found = re.search(r"/dev/sd([a-z]+)(\d*)", device)
    return (found.group(1), int(found.group(2) or 0)) if found else ("", 0)


def inspector(proc: subprocess.CompletedProcess[str], drive: int) -> dict:
    """virt-inspector's view of the OS whose root is on its `drive`th disk (0: /dev/sda):
    distro, hostname, {mount point: partition number on that disk}, packages."""
    assert proc.returncode == 0, proc.stderr
    letter = chr(ord("a") + drive)
    systems = ET.fromstring(proc.stdout).findall("operatingsystem")
    roots = [osys.findtext("root", "") for osys in systems]
    mine = [osys for osys, root in zip(systems, roots, strict=True)
            if disk_and_number(root)[0] == letter]
    assert len(mine) == 1, f"virt-inspector: {len(mine)} roots on /dev/sd{letter}, not 1 " \
        f"(all its roots: {roots})"
    [osys] = mine
    mounts: dict[str, int | str] = {}
    for mp in osys.findall("mountpoints/mountpoint"):
        device = mp.get("dev", "")
        disk, number = disk_and_number(device)
        # a mount point on another image's disk keeps its device name: it cannot match
        mounts[mp.text or ""] = number if disk == letter else device
    packages = {}
    for app in osys.findall("applications/application"):
        epoch, version, release = (app.findtext(k) or "" for k in ("epoch", "version", "release"))
        full = (f"{epoch}:" if epoch not in ("", "0") else "") + version + \
            (f"-{release}" if release else "")
        packages[f"{app.findtext('name')}:{app.findtext('arch')}"] = full
    return {"distro": osys.findtext("distro"), "hostname": osys.findtext("hostname"),
            "mountpoints": mounts, "packages": packages}


def image_info_view(report: dict) -> dict:
    """The same fields from image-info's report, fstab's sources resolved to partitions."""
    parts = report.get("partitions", [])

    def number(source: str) -> int | str:
        kind, _, value = source.partition("=")
        field = {"UUID": "uuid", "LABEL": "label", "PARTUUID": "partuuid"}.get(kind)
        found = [p["number"] for p in parts if field and p.get(field) == value]
        return found[0] if found else (0 if not parts else source)

    return {"distro": report["os-release"].get("ID"), "hostname": report.get("hostname"),
            "mountpoints": {row[1]: number(row[0]) for row in report.get("fstab", [])
                            if row[1].startswith("/")},
            "packages": {f"{p['name']}:{p['arch']}": p["version"]
                         for p in report["packages"]}}


@pytest.mark.parametrize("name", INSPECTOR_FAILS)
def test_virt_inspector_cannot_read(name: str, corpus_dir: Path) -> None:
    proc = run_inspector(corpus_dir / corpus.IMAGES[name])  # alone: its failure is its own
    assert proc.returncode != 0 and INSPECTOR_FAILS[name] in proc.stderr, \
        f"virt-inspector now reads {name}: compare it ({proc.stderr[-300:]})"


# One pytest-xdist worker runs them all, so the module's `inspected` runs once.
@pytest.mark.xdist_group("virt-inspector")
@pytest.mark.parametrize("name", INSPECTED_TOGETHER)
def test_virt_inspector_agrees(name: str, corpus_dir: Path,
                               inspected: subprocess.CompletedProcess[str]) -> None:
    ours = image_info_view(report_of(corpus_dir, name))
    theirs = inspector(inspected, INSPECTED_TOGETHER.index(name))
    facts = dpkg_installed(tree_file(corpus_dir, name, "var/lib/dpkg/status"))
    disagree = []
    for field in ours:
        if ours[field] == theirs[field]:
            continue
        if field == "packages":
            keys = sorted(set(ours[field]) ^ set(theirs[field]) |
                          {k for k in ours[field] if ours[field].get(k) != theirs[field].get(k)})
            for k in keys[:10]:
                right = ("image-info" if ours[field].get(k) == facts.get(k) else
                         "virt-inspector" if theirs[field].get(k) == facts.get(k) else "neither")
                disagree.append(f"packages[{k}]: image-info {ours[field].get(k)!r}, "
                                f"virt-inspector {theirs[field].get(k)!r}, dpkg's status "
                                f"{facts.get(k)!r}: {right} is right")
        else:
            disagree.append(f"{field}: image-info {ours[field]!r}, virt-inspector "
                            f"{theirs[field]!r}")
    assert not disagree, "\n".join(disagree)
