"""v1 assemblers in the real sandbox: noop, tar (round trips, determinism), rawfs."""

import contextlib
import hashlib
import json
import os
import re
import stat
import subprocess
import sys
import uuid as uuidlib
from pathlib import Path

import jsonschema
import pytest
from absent import without
from stagetest import load_meta, run_stage

EPOCH = 1_700_000_000
CAPS = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_raw+p


def make_tree(root: Path) -> Path:
    """A small OS-like tree with every kind of file an image has."""
    root.mkdir()
    os.chmod(root, 0o711)
    for d in ("etc", "usr/bin", "dev", "run", "home/user"):
        (root / d).mkdir(parents=True)
    tmp = root / "tmp"
    tmp.mkdir()
    os.chmod(tmp, 0o1777)
    (root / "etc/hostname").write_text("debian\n")
    os.setxattr(root / "etc/hostname", "user.osbuild", b"yes")
    tool = root / "usr/bin/tool"
    tool.write_bytes(b"#!/bin/sh\necho tool\n")
    os.chmod(tool, 0o4755)
    os.link(tool, root / "usr/bin/tool-alias")
    ping = root / "usr/bin/ping"
    ping.write_bytes(b"\x7fELF fake ping")
    os.chmod(ping, 0o755)
    os.setxattr(ping, "security.capability", CAPS)  # after chown/chmod, which drop it
    os.symlink("/usr/share/zoneinfo/UTC", root / "etc/localtime")
    os.symlink("hostname", root / "etc/hostname.link")
    os.mknod(root / "dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(root / "dev/loop9", 0o660 | stat.S_IFBLK, os.makedev(7, 9))
    os.mkfifo(root / "run/initctl", 0o600)
    for node, mode in (("dev/null", 0o666), ("dev/loop9", 0o660)):
        os.chmod(root / node, mode)  # mknod's mode went through the umask
    data = root / "home/user/data.bin"
    data.write_bytes(hashlib.sha512(b"seed").digest() * 2000)
    os.chown(root / "home/user", 1000, 1000)
    os.chown(data, 1000, 1000)
    os.chmod(data, 0o640)
    return root


def snapshot(root: Path, xattrs: bool = True, links: bool = True, times: bool = False) -> dict:
    """What an image must preserve of a tree, keyed by path."""
    result = {}
    inodes: dict[int, list[str]] = {}
    for path in sorted([root, *root.rglob("*")]):
        rel = "/" + str(path.relative_to(root)) if path != root else "/"
        if rel == "/lost+found":
            continue
        st = path.lstat()
        entry = {"mode": oct(st.st_mode), "uid": st.st_uid, "gid": st.st_gid}
        if stat.S_ISREG(st.st_mode):
            entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
            if st.st_nlink > 1:
                inodes.setdefault(st.st_ino, []).append(rel)
        elif stat.S_ISLNK(st.st_mode):
            entry["target"] = os.readlink(path)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            entry["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
        if xattrs and not stat.S_ISLNK(st.st_mode):
            entry["xattrs"] = {k: os.getxattr(path, k, follow_symlinks=False)
                               for k in sorted(os.listxattr(path, follow_symlinks=False))}
        if times and not stat.S_ISLNK(st.st_mode):
            entry["mtime"] = int(st.st_mtime)
        result[rel] = entry
    if links:
        result["hardlinks"] = sorted(sorted(group) for group in inodes.values())
    return result


@pytest.fixture
def tree(tmp_path):
    return make_tree(tmp_path / "tree")


def assemble(tmp_path: Path, name: str, options: dict, tree: Path, out: str = "out",
             source_epoch: int | None = None):
    output = tmp_path / out
    output.mkdir()
    work = tmp_path / f"work-{out}"
    work.mkdir()
    validate(name, options)
    result = run_stage(name, options, output, work, kind="assemblers",
                       inputs={"tree": {"path": tree}}, source_epoch=source_epoch)
    return result, output


def schema_validator(name: str) -> jsonschema.Draft202012Validator:
    meta = load_meta(name, kind="assemblers")
    assert meta["summary"] and meta["description"]
    schema = {"type": "object", **meta["schema"]}
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def validate(name: str, options: dict) -> None:
    schema_validator(name).validate(options)


def error_line(result) -> str:
    errors = [line for line in result.tail if line.startswith("error: ")]
    assert len(errors) == 1, result.tail
    return errors[0]


# --- noop --------------------------------------------------------------------


def test_noop_writes_nothing(tmp_path, tree):
    result, output = assemble(tmp_path, "org.osbuild.noop", {}, tree)
    assert result.returncode == 0, result.tail
    assert list(output.iterdir()) == []


# --- tar ---------------------------------------------------------------------

DECOMPRESS = {None: [], "gzip": ["--gzip"], "xz": ["--xz"], "zstd": ["--zstd"],
              "bzip2": ["--bzip2"], "lzma": ["--lzma"]}
MAGIC = {"gzip": b"\x1f\x8b", "xz": b"\xfd7zXZ\x00", "zstd": b"\x28\xb5\x2f\xfd",
         "bzip2": b"BZh", "lzma": b"\x5d\x00\x00"}


def listing(archive: Path, compression: str | None) -> dict[str, list[str]]:
    out = subprocess.run(["tar", *DECOMPRESS[compression], "--numeric-owner", "-tvf", archive],
                         capture_output=True, text=True, check=True).stdout
    entries = {}
    for line in out.splitlines():
        fields = line.split()
        name = fields[5]
        entries[name] = [fields[0], fields[1], *fields[6:]]
        if fields[0][0] in "bc":
            entries[name].insert(2, fields[2])  # major,minor
    return entries


def extract(archive: Path, compression: str | None, dest: Path) -> Path:
    dest.mkdir()
    subprocess.run(["tar", *DECOMPRESS[compression], "--numeric-owner", "--xattrs",
                    "--xattrs-include=*", "--acls", "-xpf", archive, "-C", dest], check=True)
    return dest


@pytest.mark.parametrize("compression", [None, "gzip", "xz", "zstd", "bzip2", "lzma"])
def test_tar_round_trips_special_files(tmp_path, tree, compression):
    options = {"filename": "image.tar"}
    if compression:
        options["compression"] = compression
    result, output = assemble(tmp_path, "org.osbuild.tar", options, tree)
    assert result.returncode == 0, result.tail
    archive = output / "image.tar"
    assert sorted(p.name for p in output.iterdir()) == ["image.tar"]
    if compression:
        assert archive.read_bytes().startswith(MAGIC[compression])

    entries = listing(archive, compression)
    assert entries["./"][:2] == ["drwx--x--x", "0/0"]
    assert entries["./tmp/"][:2] == ["drwxrwxrwt", "0/0"]
    assert entries["./dev/null"] == ["crw-rw-rw-", "0/0", "1,3"]
    assert entries["./dev/loop9"] == ["brw-rw----", "0/0", "7,9"]
    assert entries["./run/initctl"][:2] == ["prw-------", "0/0"]
    assert entries["./etc/localtime"][:2] == ["lrwxrwxrwx", "0/0"]
    assert entries["./etc/localtime"][-2:] == ["->", "/usr/share/zoneinfo/UTC"]
    assert entries["./usr/bin/tool"][:2] == ["-rwsr-xr-x", "0/0"]
    assert entries["./usr/bin/tool-alias"][0].startswith("h")
    assert entries["./usr/bin/tool-alias"][-3:] == ["link", "to", "./usr/bin/tool"]
    assert entries["./home/user/data.bin"][:2] == ["-rw-r-----", "1000/1000"]
    tree_names = {"./"} | {
        "./" + str(p.relative_to(tree)) + ("/" if p.is_dir() and not p.is_symlink() else "")
        for p in tree.rglob("*")}
    assert set(entries) == tree_names

    extracted = extract(archive, compression, tmp_path / "extracted")
    assert snapshot(extracted, times=True) == snapshot(tree, times=True)


def test_tar_is_deterministic_with_source_epoch(tmp_path, tree):
    for compression in (None, "gzip", "xz", "zstd"):
        options = {"filename": "a.tar", **({"compression": compression} if compression else {})}
        first, out1 = assemble(tmp_path, "org.osbuild.tar", options, tree, f"1-{compression}",
                               source_epoch=EPOCH)
        # Between runs: read everything (atime) and touch inode metadata (ctime).
        for path in tree.rglob("*"):
            if path.is_file() and not path.is_symlink():
                path.read_bytes()
                os.chmod(path, stat.S_IMODE(path.stat().st_mode))
        os.setxattr(tree / "usr/bin/ping", "security.capability", CAPS)
        second, out2 = assemble(tmp_path, "org.osbuild.tar", options, tree, f"2-{compression}",
                                source_epoch=EPOCH)
        assert first.returncode == second.returncode == 0, first.tail + second.tail
        one, two = (out1 / "a.tar").read_bytes(), (out2 / "a.tar").read_bytes()
        assert one == two, f"{compression}: archives differ"
        if compression == "gzip":
            assert one[4:8] == b"\0\0\0\0"  # no time stamp in the gzip header
        if compression is None:
            assert b"PaxHeaders." not in one  # no pid-based header names
            assert b"atime=" not in one and b"ctime=" not in one
    mtimes = extract(out1 / "a.tar", None, tmp_path / "x")
    assert {int(p.lstat().st_mtime) for p in mtimes.rglob("*")} == {EPOCH}


def test_tar_without_xattrs(tmp_path, tree):
    options = {"filename": "plain.tar", "xattrs": False, "acls": False, "selinux": False}
    result, output = assemble(tmp_path, "org.osbuild.tar", options, tree)
    assert result.returncode == 0, result.tail
    extracted = extract(output / "plain.tar", None, tmp_path / "extracted")
    assert os.listxattr(extracted / "etc/hostname") == []
    assert os.listxattr(extracted / "usr/bin/ping") == []


@pytest.mark.parametrize("program", ["lzip", "lzop"])
def test_tar_missing_compressor_is_clear(tmp_path, osbuild, program):
    # Whether or not the host has it (lzop comes with libguestfs), the engine runs with
    # the host's /usr, this manifest's build root, lacking it (test/absent.py).
    options = {"filename": "x.tar", "compression": program}
    validate("org.osbuild.tar", options)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"pipeline": {
        "stages": [{"name": "org.osbuild.test.script", "options": {"script": "echo x > x"}}],
        "assembler": {"name": "org.osbuild.tar", "options": options}}}))
    proc = subprocess.run([*without([program], tmp_path), sys.executable, "-m", "osbuild",
                           "--libdir", str(osbuild.libdir), "--store", str(osbuild.store),
                           "--export", "assembler", "--output-directory", str(osbuild.output),
                           str(manifest)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line.strip() for line in proc.stderr.splitlines() if "error: " in line]
    assert errors[-1] == (
        f"error: compression {program} needs {program}, which the build root does not have")
    assert not osbuild.output.exists()


@pytest.mark.parametrize("name", ["org.osbuild.tar", "org.osbuild.rawfs"])
def test_filename_escape_refused_at_run_time(tmp_path, tree, name):
    """The schema refuses slashes; the assembler refuses them too when run without it."""
    output, work = tmp_path / "out", tmp_path / "work"
    output.mkdir()
    work.mkdir()
    options = {"filename": "../escape.img"}
    if name == "org.osbuild.rawfs":
        options |= {"root_fs_uuid": str(uuidlib.uuid4()), "size": 64 << 20}
    assert not schema_validator(name).is_valid(options)
    result = run_stage(name, options, output, work, kind="assemblers",
                       inputs={"tree": {"path": tree}})
    assert result.returncode == 1
    assert error_line(result) == "error: filename '../escape.img' must be a plain file name"
    assert list(output.iterdir()) == [] and not (tmp_path / "escape.img").exists()


# --- rawfs -------------------------------------------------------------------


def debugfs(image: Path, command: str) -> str:
    proc = subprocess.run(["debugfs", "-R", command, image], capture_output=True, text=True,
                          check=True)
    return proc.stdout


def rawfs(tmp_path, tree, fs_type: str | None, size: int, out: str = "out", epoch=None):
    fs_uuid = str(uuidlib.uuid4())
    options = {"filename": "root.img", "root_fs_uuid": fs_uuid, "size": size}
    if fs_type:
        options["fs_type"] = fs_type
    result, output = assemble(tmp_path, "org.osbuild.rawfs", options, tree, out, epoch)
    return result, output, fs_uuid


@contextlib.contextmanager
def mounted(image: Path, mountpoint: Path):
    """Mount an image read-only through its own loop device; always undone."""
    mountpoint.mkdir()
    dev = subprocess.run(["losetup", "--find", "--show", "--read-only", image],
                         capture_output=True, text=True, check=True).stdout.strip()
    try:
        subprocess.run(["mount", "-o", "ro", dev, mountpoint], check=True)
        try:
            yield mountpoint
        finally:
            subprocess.run(["umount", mountpoint], check=True)
    finally:
        subprocess.run(["losetup", "-d", dev], check=True)


def test_rawfs_ext4(tmp_path, tree):
    size = 64 << 20
    result, output, fs_uuid = rawfs(tmp_path, tree, None, size, epoch=EPOCH)
    assert result.returncode == 0, result.tail
    assert sorted(p.name for p in output.iterdir()) == ["root.img"]
    image = output / "root.img"
    assert image.stat().st_size == size
    assert image.stat().st_blocks * 512 < size  # sparse

    header = subprocess.run(["dumpe2fs", "-h", image], capture_output=True, text=True,
                            check=True).stdout
    fields = dict(re.findall(r"^([^:\n]+):\s+(.*)$", header, re.M))
    assert fields["Filesystem UUID"] == fs_uuid
    assert fields["Directory Hash Seed"] == fs_uuid
    assert fields["Block size"] == "4096"  # usage type "default", not "small"
    assert "has_journal" in fields["Filesystem features"]
    created = subprocess.run(["date", "-u", "-d", f"@{EPOCH}", "+%a %b %e %H:%M:%S %Y"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert " ".join(fields["Filesystem created"].split()) == " ".join(created.split())

    names = {line.split()[-1] for line in debugfs(image, "ls -l /").splitlines() if line.strip()}
    assert {"etc", "usr", "dev", "run", "home", "tmp", "lost+found"} <= names
    assert debugfs(image, "cat /etc/hostname") == "debian\n"
    data = (tree / "home/user/data.bin").read_bytes()
    dumped = tmp_path / "data.bin"
    subprocess.run(["debugfs", "-R", f"dump /home/user/data.bin {dumped}", image],
                   capture_output=True, check=True)
    assert dumped.read_bytes() == data

    root = debugfs(image, "stat /")
    assert re.search(r"Mode:\s+0711", root), root  # debugfs fixed what mke2fs -d left 0755
    tool = debugfs(image, "stat /usr/bin/tool")
    assert re.search(r"Mode:\s+04755", tool) and re.search(r"Links: 2\b", tool)
    assert debugfs(image, "stat /usr/bin/tool").split("Inode:")[1].split()[0] == \
        debugfs(image, "stat /usr/bin/tool-alias").split("Inode:")[1].split()[0]
    owner = debugfs(image, "stat /home/user/data.bin")
    assert re.search(r"User:\s+1000\s+Group:\s+1000", owner)
    assert re.search(r"Mode:\s+0640", owner)
    assert re.search(r"Mode:\s+01777", debugfs(image, "stat /tmp"))
    assert "Device major/minor number: 01:03" in debugfs(image, "stat /dev/null")
    assert "Type: character special" in debugfs(image, "stat /dev/null")
    assert "Type: block special" in debugfs(image, "stat /dev/loop9")
    assert "Type: FIFO" in debugfs(image, "stat /run/initctl")
    assert 'Fast link dest: "/usr/share/zoneinfo/UTC"' in debugfs(image, "stat /etc/localtime")
    assert "security.capability" in debugfs(image, "ea_list /usr/bin/ping")
    assert 'user.osbuild (3) = "yes"' in debugfs(image, "ea_list /etc/hostname")
    subprocess.run(["e2fsck", "-fn", image], capture_output=True, check=True)


def test_rawfs_ext4_is_reproducible(tmp_path, tree):
    """Same tree, options and SOURCE_DATE_EPOCH: the same bytes (uuid is the hash seed)."""
    options = {"filename": "r.img", "root_fs_uuid": "9c6ae55b-cf88-45b8-84e8-64990759f39d",
               "size": 64 << 20}
    first, out1 = assemble(tmp_path, "org.osbuild.rawfs", options, tree, "a", EPOCH)
    second, out2 = assemble(tmp_path, "org.osbuild.rawfs", options, tree, "b", EPOCH)
    assert first.returncode == second.returncode == 0, first.tail + second.tail
    assert (out1 / "r.img").read_bytes() == (out2 / "r.img").read_bytes()


def test_rawfs_ext4_mounted_matches_tree(tmp_path, tree):
    result, output, _ = rawfs(tmp_path, tree, "ext4", 64 << 20)
    assert result.returncode == 0, result.tail
    with mounted(output / "root.img", tmp_path / "mnt") as mnt:
        assert snapshot(mnt, times=True) == snapshot(tree, times=True)


def test_rawfs_btrfs(tmp_path, tree):
    size = 128 << 20
    result, output, fs_uuid = rawfs(tmp_path, tree, "btrfs", size)
    assert result.returncode == 0, result.tail
    image = output / "root.img"
    assert image.stat().st_size == size
    super_block = subprocess.run(["btrfs", "inspect-internal", "dump-super", image],
                                 capture_output=True, text=True, check=True).stdout
    fields = dict(re.findall(r"^(\S+)\s+(.*)$", super_block, re.M))
    assert fields["fsid"] == fs_uuid
    assert fields["total_bytes"] == str(size)
    with mounted(image, tmp_path / "mnt") as mnt:
        assert (mnt / "etc/hostname").read_text() == "debian\n"
        got, want = snapshot(mnt, times=True), snapshot(tree, times=True)
    # What mkfs.btrfs --rootdir of btrfs-progs 6.2 drops must be reported, not hidden.
    warnings = [line for line in result.tail if line.startswith("warning: ")]
    got["/"].pop("mtime"), want["/"].pop("mtime")  # the root's is mkfs's time (see rawfs)
    if got["/"] != want["/"]:
        assert got["/"]["mode"] == "0o40755"
        assert "warning: mkfs.btrfs made the root directory 40755 0:0 instead of 40711 0:0" \
            in warnings
        got["/"]["mode"] = want["/"]["mode"]
    if got["/dev/null"]["rdev"] != want["/dev/null"]["rdev"]:
        assert "warning: mkfs.btrfs lost the device numbers of 2 of 2 device nodes " \
            "(they read as 0:0 in the image)" in warnings
        got["/dev/null"]["rdev"], got["/dev/loop9"]["rdev"] = (1, 3), (7, 9)
    assert got == want


def test_rawfs_xfs(tmp_path, tree):
    size = 300 << 20
    result, output, fs_uuid = rawfs(tmp_path, tree, "xfs", size)
    assert result.returncode == 0, result.tail
    image = output / "root.img"
    assert image.stat().st_size == size
    uuid_line = subprocess.run(["xfs_db", "-r", "-c", "uuid", image], capture_output=True,
                               text=True, check=True).stdout
    assert uuid_line.strip() == f"UUID = {fs_uuid}"
    subprocess.run(["xfs_repair", "-n", image], capture_output=True, check=True)
    with mounted(image, tmp_path / "mnt") as mnt:
        # The prototype format keeps content, modes (sticky bit fixed up), owners,
        # devices and symlinks; not xattrs, hard links or times (documented).
        assert snapshot(mnt, xattrs=False, links=False) == snapshot(tree, xattrs=False,
                                                                     links=False)
        assert stat.S_IMODE((mnt / "tmp").stat().st_mode) == 0o1777


def test_rawfs_xfs_refuses_whitespace_names(tmp_path, tree):
    (tree / "etc/with space").write_text("x")
    result, output, _ = rawfs(tmp_path, tree, "xfs", 300 << 20)
    assert result.returncode == 1
    assert error_line(result) == (
        "error: xfs rawfs cannot hold '/etc/with space': its name cannot be written "
        "in a mkfs.xfs prototype file")
    assert list(output.iterdir()) == []


@pytest.mark.parametrize("fs_type", ["ext4", "btrfs", "xfs"])
def test_rawfs_tree_bigger_than_size_fails_up_front(tmp_path, tree, fs_type):
    (tree / "big").write_bytes(os.urandom(3 << 20))
    size = 2 << 20
    result, output, _ = rawfs(tmp_path, tree, fs_type, size)
    assert result.returncode == 1
    line = error_line(result)
    assert line.startswith(f"error: size {size} bytes is too small for the tree: it needs at least")
    assert list(output.iterdir()) == []


def test_rawfs_ext4_no_space_from_mkfs_is_mapped(tmp_path, tree):
    """Data fits the up-front estimate, but not with ext4's journal and inode tables."""
    (tree / "big").write_bytes(os.urandom(11 << 20))
    size = 12 << 20  # big enough for ext4 to want a 4 MiB journal
    result, output, _ = rawfs(tmp_path, tree, "ext4", size)
    assert result.returncode == 1
    assert any("Could not allocate" in line for line in result.tail)  # mkfs said so...
    assert re.fullmatch(rf"error: size {size} bytes is too small for the tree: its data "
                        r"\(about \d+ bytes\) and the structures of mkfs.ext4 do not fit",
                        error_line(result))
    assert list(output.iterdir()) == []  # ...and no broken image is left


def test_rawfs_xfs_no_space_from_mkfs_is_mapped(tmp_path, tree):
    """A sparse file passes the up-front check, but mkfs.xfs -p writes all of it."""
    with open(tree / "sparse", "wb") as f:
        f.truncate(295 << 20)
    size = 300 << 20
    result, output, _ = rawfs(tmp_path, tree, "xfs", size)
    assert result.returncode == 1
    assert re.fullmatch(rf"error: size {size} bytes is too small for the tree: its data "
                        r"\(about \d+ bytes\) and the structures of mkfs.xfs do not fit",
                        error_line(result))
    assert list(output.iterdir()) == []


def test_rawfs_btrfs_below_its_minimum(tmp_path, tree):
    """mkfs.btrfs grows a too small image instead of failing: caught afterwards."""
    size = 32 << 20
    result, output, _ = rawfs(tmp_path, tree, "btrfs", size)
    assert result.returncode == 1
    line = error_line(result)
    match = re.fullmatch(rf"error: size {size} bytes is too small for the tree: "
                         r"it needs at least about (\d+) bytes", line)
    assert match and int(match.group(1)) > size
    assert list(output.iterdir()) == []


# --- schemas -----------------------------------------------------------------

UUID = "9c6ae55b-cf88-45b8-84e8-64990759f39d"

ACCEPTED = [
    ("org.osbuild.noop", {}),
    ("org.osbuild.tar", {"filename": "root.tar.xz", "compression": "xz"}),
    ("org.osbuild.tar", {"filename": "root.tar", "acls": False, "selinux": False,
                         "xattrs": True}),
    ("org.osbuild.tar", {"filename": "r.tar.lz", "compression": "lzip"}),
    ("org.osbuild.rawfs", {"filename": "root.ext4", "root_fs_uuid": UUID, "size": 1 << 30}),
    ("org.osbuild.rawfs", {"filename": "r.xfs", "root_fs_uuid": UUID, "size": 300 << 20,
                           "fs_type": "xfs"}),
]

REJECTED = [
    ("org.osbuild.noop", {"anything": 1}),
    ("org.osbuild.tar", {}),
    ("org.osbuild.tar", {"filename": "dir/root.tar"}),
    ("org.osbuild.tar", {"filename": ".."}),
    ("org.osbuild.tar", {"filename": "a.tar", "compression": "rar"}),
    ("org.osbuild.tar", {"filename": "a.tar", "root-node": "omit"}),
    ("org.osbuild.rawfs", {"filename": "r.img", "root_fs_uuid": UUID}),
    ("org.osbuild.rawfs", {"filename": "r.img", "root_fs_uuid": "not-a-uuid", "size": 1}),
    ("org.osbuild.rawfs", {"filename": "r.img", "root_fs_uuid": UUID, "size": "1G"}),
    ("org.osbuild.rawfs", {"filename": "r.img", "root_fs_uuid": UUID, "size": 1,
                           "fs_type": "vfat"}),
]


@pytest.mark.parametrize("name,options", ACCEPTED)
def test_schema_accepts(name, options):
    schema_validator(name).validate(options)


@pytest.mark.parametrize("name,options", REJECTED)
def test_schema_rejects(name, options):
    assert not schema_validator(name).is_valid(options)


def test_meta_json_is_json():
    for name in ("org.osbuild.noop", "org.osbuild.tar", "org.osbuild.rawfs"):
        meta = json.loads((Path(__file__).resolve().parents[2] / "assemblers" /
                           f"{name}.meta.json").read_text())
        assert set(meta) == {"summary", "description", "schema"}
