"""The machine an executable was built for, from its ELF or PE/COFF header alone.

A foreign image cannot be asked (nothing from it runs here), and its dpkg
records can disagree with what is actually installed (a multiarch tree, a
mis-bootstrapped one), so the binaries' own headers are read: a few bytes of
each, never the whole file. Names are the kernel's (uname -m), the names
osbuild.toolkit.architectures keys qemu and the boot harness by.
"""

from collections import Counter

from osbuild.image_info.treeview import Tree

ELF_MAGIC = b"\x7fELF"
ELF_HEADER = 64  # enough for e_ident and e_machine in either class
# e_machine -> (name for ELFCLASS32, name for ELFCLASS64), from the ELF psABIs.
ELF_MACHINES: dict[int, tuple[str | None, str | None]] = {
    2: ("sparc", None), 3: ("i386", None), 4: ("m68k", None), 8: ("mips", "mips64"),
    15: ("parisc", "parisc64"), 20: ("ppc", None), 21: (None, "ppc64"), 22: ("s390", "s390x"),
    40: ("arm", None), 43: (None, "sparc64"), 50: (None, "ia64"), 62: ("x32", "x86_64"),
    183: (None, "aarch64"), 243: ("riscv32", "riscv64"), 258: ("loongarch32", "loongarch64"),
    0x9026: (None, "alpha"),
}
# The names that change with byte order, for the byte order that is not the usual one.
LITTLE_ENDIAN_NAMES = {"mips": "mipsel", "mips64": "mips64el", "ppc64": "ppc64le"}
BIG_ENDIAN_NAMES = {"aarch64": "aarch64_be", "arm": "armeb"}
# The COFF header's Machine field of a PE image (what UEFI firmware checks before starting it).
PE_MACHINES = {
    0x14C: "i386", 0x1C0: "arm", 0x1C2: "arm", 0x1C4: "arm", 0x200: "ia64", 0x8664: "x86_64",
    0xAA64: "aarch64", 0x5032: "riscv32", 0x5064: "riscv64", 0x6232: "loongarch32",
    0x6264: "loongarch64", 0xEBC: "ebc",
}
PE_OFFSET_FIELD = 0x3C  # e_lfanew in the MZ header: where "PE\0\0" starts


def elf_machine(head: bytes) -> str | None:
    """The machine of an ELF file from its first bytes; None if they are no ELF header."""
    if len(head) < 20 or not head.startswith(ELF_MAGIC):
        return None
    elf_class, data = head[4], head[5]
    if elf_class not in (1, 2) or data not in (1, 2):
        return None
    machine = int.from_bytes(head[18:20], "little" if data == 1 else "big")
    name = ELF_MACHINES.get(machine, (None, None))[elf_class - 1]
    if name is None:
        return f"unknown-{machine:#x}"
    renames = LITTLE_ENDIAN_NAMES if data == 1 else BIG_ENDIAN_NAMES
    return renames.get(name, name)


def pe_machine(data: bytes) -> str | None:
    """The machine of a PE image (an EFI binary); None if `data` is no PE image."""
    if len(data) < PE_OFFSET_FIELD + 4 or not data.startswith(b"MZ"):
        return None
    offset = int.from_bytes(data[PE_OFFSET_FIELD:PE_OFFSET_FIELD + 4], "little")
    if data[offset:offset + 4] != b"PE\0\0" or len(data) < offset + 6:
        return None
    machine = int.from_bytes(data[offset + 4:offset + 6], "little")
    return PE_MACHINES.get(machine, f"unknown-{machine:#x}")


def elf_machines(tree: Tree, directory: str) -> dict[str, int]:
    """How many regular files in `directory` are ELF files of each machine.

    Links are not counted: they would count a program twice (python3 -> python3.13)
    or, pointing out of the directory, count what is not there.
    """
    counts: Counter[str] = Counter()
    for name in tree.listdir(directory):
        head = tree.read_bytes(f"{directory}/{name}", ELF_HEADER, follow=False)
        machine = None if head is None else elf_machine(head)
        if machine is not None:
            counts[machine] += 1
    return dict(sorted(counts.items()))
