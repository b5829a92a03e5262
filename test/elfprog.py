"""Tiny static ELF programs for foreign architectures, made byte by byte.

Tests and golden cases need a program of another architecture (an arm64
update-rc.d, an exit-42 riscv64 binary) without building or downloading
one: an ELF64 header, one loadable segment and three instructions.
"""

import struct

ELF_MACHINES = {"arm64": 0xB7, "riscv64": 0xF3}


def static_program(machine: int, code: list[int]) -> bytes:
    """An ELF64 little-endian executable: one loadable segment holding `code` (32-bit words)."""
    base, entry_offset = 0x400000, 64 + 56
    body = b"".join(struct.pack("<I", word) for word in code)
    size = entry_offset + len(body)
    header = struct.pack("<4sBBBB8xHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0,
                         2, machine, 1, base + entry_offset, 64, 0, 0, 64, 56, 1, 0, 0, 0)
    segment = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, size, size, 0x1000)
    return header + segment + body


def exit_program(architecture: str, status: int) -> bytes:
    """A program of dpkg architecture `architecture` that exits with `status` (< 2048)."""
    if architecture == "arm64":
        # movz x0, #status; movz x8, #93 (exit); svc #0
        code = [0xD2800000 | (status << 5), 0xD2800BA8, 0xD4000001]
    elif architecture == "riscv64":
        # addi a0, zero, status; addi a7, zero, 93 (exit); ecall
        code = [0x00000513 | (status << 20), 0x05D00893, 0x00000073]
    else:
        raise ValueError(f"no exit program for {architecture}")
    return static_program(ELF_MACHINES[architecture], code)
