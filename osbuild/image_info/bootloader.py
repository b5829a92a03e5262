"""Boot loaders: GRUB2 for BIOS in the MBR, EFI files on the ESP, grub.cfg, BLS entries.

The BIOS check is upstream's: the sha256 of the MBR boot code (bytes [0, 440))
and of the gap between the MBR and the first partition, where GRUB embeds its
core.img (bytes [512, first partition start)). The ESP is read with mtools
straight from the raw image (no vfat driver or mount needed); an ESP mtools
cannot read is an error of the report, not an empty ESP. grub.cfg and BLS
entries are read from the OS tree.
"""

import hashlib
import os
import shlex
from functools import cmp_to_key
from pathlib import Path
from typing import Any

from osbuild.image_info.arch import pe_machine
from osbuild.image_info.disk import Layout, Partition
from osbuild.image_info.failures import CouldNotLook, run
from osbuild.image_info.treeview import Tree
from osbuild.image_info.vercmp import evrcmp

BOOT_CODE = (0, 440)
ESP_TYPES = ("C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "ef")
BIOS_BOOT_TYPE = "21686148-6449-6E6F-744E-656564454649"
# boot.img carries this message text; no other common boot code does.
GRUB_MARKER = b"GRUB \0"
GRUB_CONFIGS = ("boot/grub/grub.cfg", "boot/grub2/grub.cfg")
GRUB_ENVS = ("boot/grub/grubenv", "boot/grub2/grubenv")
BLS_DIR = "boot/loader/entries"
# What this module reads from a tree; backends that copy trees out copy these.
PATHS = (*GRUB_CONFIGS, *GRUB_ENVS, BLS_DIR)
ESP_TEXT_SUFFIXES = (".cfg", ".conf", ".csv")
ESP_TEXT_MAX = 64 * 1024


def _sha256_range(image: Path, start: int, end: int) -> str:
    digest = hashlib.sha256()
    with open(image, "rb") as f:
        f.seek(start)
        left = end - start
        while left > 0:
            chunk = f.read(min(left, 1024 * 1024))
            if not chunk:
                break
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def _range(image: Path, start: int, end: int) -> dict[str, Any]:
    return {"start": start, "end": end, "sha256": _sha256_range(image, start, end)}


def bios(image: Path, layout: Layout) -> dict[str, Any]:
    """{"grub2-bios": ...} when the MBR holds GRUB's boot code, else {}."""
    if not layout.partitions:
        return {}
    with open(image, "rb") as f:
        boot_code = f.read(BOOT_CODE[1])
    if GRUB_MARKER not in boot_code:
        return {}
    info: dict[str, Any] = {"boot-code": _range(image, *BOOT_CODE)}
    first = min(p.start for p in layout.partitions)
    if first > 512:
        info["core-area"] = _range(image, 512, first)
    for part in layout.partitions:
        # On GPT, GRUB embeds core.img in a BIOS boot partition instead.
        if part.type.upper() == BIOS_BOOT_TYPE:
            info["bios-boot-partition"] = _range(image, part.start, part.start + part.size)
    return {"grub2-bios": info}


def _mtools_env() -> dict[str, str]:
    # Skip mtools' sanity checks of the FAT (a foreign image may be a little odd).
    return {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


def _esp_files(image: Path, part: Partition) -> list[str]:
    """Every file on the ESP; CouldNotLook if mdir cannot read it (never an empty list)."""
    proc = run(["mdir", "-i", f"{image}@@{part.start}", "-/", "-b", "::/"],
               f"partition {part.number}", text=True, env=_mtools_env())
    return sorted(line.removeprefix("::") for line in proc.stdout.splitlines()
                  if line.startswith("::/") and not line.endswith("/"))


def _esp_read(image: Path, part: Partition, path: str) -> bytes:
    return run(["mcopy", "-n", "-i", f"{image}@@{part.start}", f"::{path}", "-"],
               f"{path} on partition {part.number}", env=_mtools_env()).stdout


def esp(image: Path, layout: Layout) -> dict[str, Any]:
    """{"esp": ...}: every file on each EFI system partition with its sha256.

    "efi-binaries" gives each *.efi file's machine type from its PE header (null
    when it is none): firmware starts only its own, so a BOOTAA64.EFI on an x86_64
    image, or an arm64 GRUB under the x86_64 name, is what this shows. A partition
    mtools cannot list is left out and a file it cannot copy has a null sha256: both
    are CouldNotLook's problems (the report's "errors"), with what was read.
    """
    found = []
    problems: list[str] = []
    for part in layout.partitions or []:
        if part.type not in ESP_TYPES or part.fs.fstype != "vfat":
            continue
        try:
            paths = _esp_files(image, part)
        except CouldNotLook as exc:
            problems += exc.problems
            continue
        files: dict[str, str | None] = {}
        texts: dict[str, list[str]] = {}
        machines: dict[str, str | None] = {}
        for path in paths:
            data: bytes | None = None
            try:
                data = _esp_read(image, part, path)
            except CouldNotLook as exc:
                problems += exc.problems
            files[path] = None if data is None else hashlib.sha256(data).hexdigest()
            if path.lower().endswith(".efi"):
                machines[path] = None if data is None else pe_machine(data)
            if data is not None and path.lower().endswith(ESP_TEXT_SUFFIXES) \
                    and len(data) <= ESP_TEXT_MAX:
                texts[path] = data.decode("utf-8", errors="replace").splitlines()
        found.append({"partition": part.number, "label": part.fs.label, "uuid": part.fs.uuid,
                      "files": files, "configs": texts, "efi-binaries": machines})
    report = {"esp": found} if found else {}
    if problems:
        raise CouldNotLook(problems, report)
    return report


def _menu_lines(text: str) -> list[list[str]]:
    """grub.cfg as lists of words; lines shlex cannot split (multi-line strings) are skipped."""
    lines = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            words = shlex.split(stripped, comments=False, posix=True)
        except ValueError:
            continue
        # `;` ends a command in grub script as in sh; treat it as a line break.
        command: list[str] = []
        for word in words:
            if word == ";":
                lines.append(command)
                command = []
            else:
                command.append(word)
        lines.append(command)
    return [line for line in lines if line]


def grub_menu(tree: Tree) -> dict[str, Any]:
    """{"grub-menu": [...]}: the menu entries of grub.cfg, submenus included."""
    config = next((p for p in GRUB_CONFIGS if tree.is_file(p)), None)
    if config is None:
        return {}
    text = tree.read_text(config) or ""
    entries: list[dict[str, Any]] = []
    blocks: list[tuple[str, Any]] = []  # ("menuentry", entry) | ("submenu", title) | ("", None)
    for words in _menu_lines(text):
        command = words[0]
        opens = words[-1] == "{"
        if command == "menuentry" and len(words) > 1:
            entry: dict[str, Any] = {"title": words[1], "linux": None, "initrd": None,
                                     "options": None}
            submenus = [value for kind, value in blocks if kind == "submenu"]
            if submenus:
                entry["submenu"] = " > ".join(submenus)
            blocks.append(("menuentry", entry))
            entries.append(entry)
            continue
        if command == "submenu" and len(words) > 1:
            blocks.append(("submenu", words[1]))
            continue
        current = next((v for k, v in reversed(blocks) if k == "menuentry"), None)
        if current is not None and command in ("linux", "linux16", "linuxefi") \
                and len(words) > 1:
            current["linux"] = words[1]
            current["options"] = " ".join(words[2:])
        elif current is not None and command in ("initrd", "initrd16", "initrdefi"):
            current["initrd"] = " ".join(words[1:])
        if opens:
            blocks.append(("", None))
        for word in words:
            if word == "}" and blocks:
                blocks.pop()
    return {"grub-menu": entries, "grub-config": "/" + config}


def _bls_entry(text: str) -> dict[str, str]:
    entry: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        value = value.strip()
        # Keys may repeat (several initrd lines): keep them all, in order.
        entry[key] = f"{entry[key]} {value}" if key in entry else value
    return entry


def _bls_order(a: dict[str, str], b: dict[str, str]) -> int:
    """Newest first, as grub's blscfg: by version (rpmvercmp), then by file name."""
    va, vb = a.get("version"), b.get("version")
    if va is not None and vb is not None:
        rc = evrcmp(va, vb)
        if rc:
            return -rc
    elif va is not None or vb is not None:
        return -1 if va is not None else 1  # entries with a version come first
    return -evrcmp(a["id"], b["id"])


def bootmenu(tree: Tree) -> dict[str, Any]:
    """{"bootmenu": [...]}: the Boot Loader Specification entries, in grub's order."""
    names = tree.listdir(BLS_DIR, "*.conf")
    if not names:
        return {}
    entries = []
    for name in names:
        text = tree.read_text(f"{BLS_DIR}/{name}")
        if text is not None:
            entries.append({"id": name.removesuffix(".conf"), **_bls_entry(text)})
    return {"bootmenu": sorted(entries, key=cmp_to_key(_bls_order))}


def boot_environment(tree: Tree) -> dict[str, Any]:
    """{"boot-environment": {...}}: the variables of GRUB's environment block."""
    env = next((p for p in GRUB_ENVS if tree.is_file(p)), None)
    if env is None:
        return {}
    values = {}
    for line in (tree.read_text(env) or "").splitlines():
        # The block is padded with '#' to 1024 bytes.
        if line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key] = value
    return {"boot-environment": values}


def bootloader_name(layout: Layout | None, found: dict[str, Any]) -> str:
    """Upstream's "bootloader" value: "grub" when GRUB boots the image (BIOS or EFI)."""
    if "grub2-bios" in found:
        return "grub"
    for esp_info in found.get("esp", []):
        if any(Path(p).name.lower().startswith("grub") and p.lower().endswith(".efi")
               for p in esp_info["files"]):
            return "grub"
    return "unknown"
