"""The v2 tar stage through the engine: an OS tree pipeline, tar pipelines, exports.

Archives are listed with Python's tarfile (and GNU tar for zstd), extracted
with GNU tar and compared with the exported tree; the same manifest built in
two stores gives byte-identical archives.
"""

import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from absent import without
from harness import Osbuild
from stagetest import load_meta

EPOCH = 1_700_000_000

TREE_SCRIPT = "\n".join([
    "set -e",
    "mkdir -p etc usr/bin home/user dev run tmp var/lib",
    "echo debian > etc/hostname",
    "ln -s hostname etc/hostname.link",
    "ln -s / etc/escape",
    "printf '#!/bin/sh\\necho tool\\n' > usr/bin/tool",
    "chmod 4755 usr/bin/tool",
    "ln usr/bin/tool usr/bin/tool-alias",
    "mknod dev/null c 1 3 && chmod 0666 dev/null",
    "mkfifo run/initctl && chmod 0600 run/initctl",
    "chmod 1777 tmp",
    "python3 -c \"import hashlib; open('home/user/data.bin', 'wb')"
    ".write(hashlib.sha512(b'seed').digest() * 2000)\"",
    "chown -R 1000:1000 home/user && chmod 0640 home/user/data.bin",
    "truncate -s 8M var/lib/sparse.img && printf end >> var/lib/sparse.img",
    "echo dash > ./-dash",
    "python3 -c \"import os; os.setxattr('etc/hostname', 'user.osbuild', b'yes')\"",
])


def schema() -> dict[str, Any]:
    meta = load_meta("org.osbuild.tar")
    assert meta["summary"] and meta["description"]
    full = {"type": "object", **meta["schema_2"]["options"]}
    jsonschema.Draft202012Validator.check_schema(full)
    return full


def valid(options: dict[str, Any]) -> bool:
    return jsonschema.Draft202012Validator(schema()).is_valid(options)


def tar_pipeline(name: str, options: dict[str, Any], source: str = "os") -> dict[str, Any]:
    assert valid(options), options
    return {"name": name, "source-epoch": EPOCH, "stages": [{
        "type": "org.osbuild.tar", "options": options,
        "inputs": {"tree": {"type": "org.osbuild.tree", "origin": "org.osbuild.pipeline",
                            "references": [f"name:{source}"]}}}]}


def os_pipeline(script: str = TREE_SCRIPT) -> dict[str, Any]:
    return {"name": "os", "source-epoch": EPOCH, "stages": [
        {"type": "org.osbuild.test.script", "options": {"script": script}}]}


# name -> (options, file in the export)
ARCHIVES: dict[str, tuple[dict[str, Any], str]] = {
    "plain": ({"filename": "root.tar"}, "root.tar"),
    "posix": ({"filename": "root.tar", "format": "posix", "numeric-owner": True}, "root.tar"),
    "omit": ({"filename": "out/root.tar.gz", "root-node": "omit", "numeric-owner": True},
             "out/root.tar.gz"),
    "xz": ({"filename": "root.txz", "format": "ustar"}, "root.txz"),
    "zstd": ({"filename": "r.tar.zst"}, "r.tar.zst"),
    "paths": ({"filename": "some.tar", "paths": ["/etc/hostname", "usr/bin", "./dev",
                                                  "etc/escape"]}, "some.tar"),
    "bare": ({"filename": "bare.tar.gz", "compression": "none", "xattrs": False,
              "acls": False, "selinux": False}, "bare.tar.gz"),
    "bzip2": ({"filename": "root.archive", "compression": "bzip2", "sparse": True,
               "transform": "s,^\\./usr/,./opt/,"}, "root.archive"),
}

MAGIC = {"gzip": b"\x1f\x8b", "xz": b"\xfd7zXZ\x00", "zstd": b"\x28\xb5\x2f\xfd",
         "bzip2": b"BZh"}


def manifest() -> dict[str, Any]:
    return {"version": "2", "pipelines": [
        os_pipeline(), *(tar_pipeline(name, opts) for name, (opts, _) in ARCHIVES.items())]}


def build(osbuild: Osbuild) -> Path:
    exports = [arg for name in ["os", *ARCHIVES] for arg in ("--export", name)]
    osbuild.run(manifest(), *exports, "--output-directory", str(osbuild.output))
    return osbuild.output


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory, libdir: Path) -> list[Path]:
    """The same manifest built in two stores, a second apart: two sets of exports."""
    result = []
    for run in ("a", "b"):
        result.append(build(Osbuild(libdir, tmp_path_factory.mktemp(f"tar-{run}"))))
        time.sleep(1.1)
    return result


def archive(out: Path, name: str) -> Path:
    return out / name / ARCHIVES[name][1]


def members(path: Path) -> list[tarfile.TarInfo]:
    data = path.read_bytes()
    if data.startswith(MAGIC["zstd"]):
        data = subprocess.run(["zstd", "-dc"], input=data, capture_output=True,
                              check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getmembers()


def by_name(path: Path) -> dict[str, tarfile.TarInfo]:
    return {m.name: m for m in members(path)}


def extract(path: Path, dest: Path, *flags: str) -> Path:
    dest.mkdir()
    subprocess.run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls",
                    *flags, "-xpf", str(path), "-C", str(dest)], check=True)
    return dest


def snapshot(root: Path) -> dict[str, Any]:
    """What an archive must keep of a tree, keyed by path."""
    result: dict[str, Any] = {}
    inodes: dict[int, list[str]] = {}
    for path in sorted([root, *root.rglob("*")]):
        rel = "/" + str(path.relative_to(root)) if path != root else "/"
        st = path.lstat()
        entry: dict[str, Any] = {"mode": oct(st.st_mode), "uid": st.st_uid, "gid": st.st_gid}
        if stat.S_ISREG(st.st_mode):
            entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
            if st.st_nlink > 1:
                inodes.setdefault(st.st_ino, []).append(rel)
        elif stat.S_ISLNK(st.st_mode):
            entry["target"] = os.readlink(path)
        elif stat.S_ISCHR(st.st_mode):
            entry["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
        if not stat.S_ISLNK(st.st_mode):
            entry["mtime"] = int(st.st_mtime)
            entry["xattrs"] = {k: os.getxattr(path, k, follow_symlinks=False)
                               for k in sorted(os.listxattr(path, follow_symlinks=False))}
        result[rel] = entry
    result["hardlinks"] = sorted(sorted(group) for group in inodes.values())
    return result


# --- through the engine ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["plain", "posix"])
def test_archive_round_trips_the_tree(outputs: list[Path], tmp_path: Path, name: str) -> None:
    out = outputs[0]
    path = archive(out, name)
    assert sorted(p.name for p in (out / name).iterdir()) == [path.name]
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    entries = by_name(path)
    tree = out / "os"
    want = {"./"} | {"./" + str(p.relative_to(tree)) for p in tree.rglob("*")}
    assert {n if n != "." else "./" for n in entries} == want
    names = [m.name for m in members(path)]
    assert names == sorted(names, key=lambda n: n.split("/"))  # --sort=name, depth first
    tool = entries["./usr/bin/tool"]
    assert stat.S_IMODE(tool.mode) == 0o4755
    assert entries["./usr/bin/tool-alias"].islnk()
    assert entries["./usr/bin/tool-alias"].linkname == "./usr/bin/tool"
    assert entries["./dev/null"].ischr() and (entries["./dev/null"].devmajor,
                                               entries["./dev/null"].devminor) == (1, 3)
    assert entries["./run/initctl"].isfifo()
    assert entries["./etc/escape"].issym() and entries["./etc/escape"].linkname == "/"
    assert entries["./home/user/data.bin"].uid == 1000
    assert entries["./etc/hostname"].pax_headers["SCHILY.xattr.user.osbuild"] == "yes"
    assert {m.mtime for m in members(path)} == {EPOCH}
    # GNU tar writes xattrs as pax headers, so even format "gnu" gives a pax archive here.
    if name == "plain":
        assert tool.uname == "root"  # names, as upstream does by default
    else:
        assert tool.uname == "" and tool.gname == ""
    extracted = extract(path, tmp_path / "x")
    assert snapshot(extracted) == snapshot(tree)


def test_omit_root_node_auto_gzip_into_a_subdirectory(outputs: list[Path]) -> None:
    path = archive(outputs[0], "omit")
    assert path.read_bytes().startswith(MAGIC["gzip"])
    assert path.read_bytes()[4:8] == b"\0\0\0\0"  # gzip -n: no time stamp
    names = [m.name for m in members(path)]
    assert "." not in names and "./" not in names
    assert not any(n.startswith("./") for n in names)
    tops = [n for n in names if "/" not in n]
    assert tops == sorted(os.listdir(outputs[0] / "os"))
    assert "-dash" in tops  # a name that looks like an option is still a name
    assert "etc/hostname" in names


def test_explicit_and_suffix_compression(outputs: list[Path], tmp_path: Path) -> None:
    out = outputs[0]
    assert archive(out, "xz").read_bytes().startswith(MAGIC["xz"])
    assert archive(out, "zstd").read_bytes().startswith(MAGIC["zstd"])
    assert archive(out, "bzip2").read_bytes().startswith(MAGIC["bzip2"])
    bare = archive(out, "bare").read_bytes()
    assert bare[257:265] == b"ustar  \0"  # "none" wins over the .gz ending; GNU headers
    assert b"SCHILY.xattr" not in bare and b"PaxHeaders" not in bare
    ustar = members(archive(out, "xz"))
    assert ustar[0].name == "." and "./etc/hostname" in {m.name for m in ustar}
    assert "./usr/bin/tool" in by_name(archive(out, "zstd"))


def test_paths_in_the_given_order(outputs: list[Path]) -> None:
    names = [m.name for m in members(archive(outputs[0], "paths"))]
    assert names == ["etc/hostname", "usr/bin", "usr/bin/tool", "usr/bin/tool-alias",
                     "./dev", "./dev/null", "etc/escape"]
    escape = by_name(archive(outputs[0], "paths"))["etc/escape"]
    assert escape.issym() and escape.linkname == "/"  # archived as the link it is


def test_sparse_and_transform(outputs: list[Path], tmp_path: Path) -> None:
    path = archive(outputs[0], "bzip2")
    entries = by_name(path)
    assert "./opt/bin/tool" in entries and "./usr/bin/tool" not in entries
    sparse = entries["./var/lib/sparse.img"]
    assert sparse.sparse == [(8 << 20, 3), ((8 << 20) + 3, 0)]  # only the data is stored
    extracted = extract(path, tmp_path / "x")
    data = (extracted / "var/lib/sparse.img").read_bytes()
    assert len(data) == (8 << 20) + 3 and data.endswith(b"end") and not data[:-3].strip(b"\0")


def test_archives_are_byte_identical_in_two_stores(outputs: list[Path]) -> None:
    first, second = outputs
    assert (first / "os/etc/hostname").stat().st_ctime != \
        (second / "os/etc/hostname").stat().st_ctime
    for name in ARCHIVES:
        assert archive(first, name).read_bytes() == archive(second, name).read_bytes(), name


# --- errors -------------------------------------------------------------------------------


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    return [line.strip() for line in proc.stderr.splitlines() if "error: " in line][-1]


@pytest.mark.parametrize("paths, expected", [
    (["etc/escape/etc/passwd"], "path 'etc/escape/etc/passwd' goes through a symlink in the "
                                "tree"),
    (["etc/missing"], "path 'etc/missing' is not in the tree"),
])
def test_bad_paths_are_refused(osbuild: Osbuild, paths: list[str], expected: str) -> None:
    manifest = {"version": "2", "pipelines": [
        os_pipeline("mkdir etc && ln -s / etc/escape"),
        tar_pipeline("tar", {"filename": "x.tar", "paths": paths})]}
    proc = osbuild.run(manifest, "--export", "tar", "--output-directory",
                       str(osbuild.output), check=False)
    assert error_line(proc) == f"error: {expected}"
    assert not osbuild.output.exists()


def test_missing_compressor_is_a_clear_error(osbuild: Osbuild, tmp_path: Path) -> None:
    # lzop is installed wherever libguestfs is: the engine runs with the host's /usr
    # (this manifest's build root) lacking it (test/absent.py).
    manifest = {"version": "2", "pipelines": [
        os_pipeline("echo x > x"), tar_pipeline("tar", {"filename": "x.tar.lzo"})]}
    path = tmp_path / "lzop.json"
    path.write_text(json.dumps(manifest))
    proc = subprocess.run([*without(["lzop"], tmp_path), sys.executable, "-m", "osbuild",
                           "--libdir", str(osbuild.libdir), "--store", str(osbuild.store),
                           "--export", "tar", "--output-directory", str(osbuild.output),
                           str(path)], capture_output=True, text=True, cwd=tmp_path)
    assert error_line(proc) == (
        "error: compression lzop needs lzop, which the build root does not have")
    assert not osbuild.output.exists()


# --- schema -------------------------------------------------------------------------------

ACCEPTED = [
    {"filename": "root.tar"},
    {"filename": "images/root.tar.xz", "compression": "xz", "format": "posix"},
    {"filename": "r.tar", "root-node": "omit", "numeric-owner": True, "acls": False},
    {"filename": "r.tar", "paths": ["/etc", "usr/bin"], "sparse": True},
    {"filename": "r.tar", "compression": "auto", "transform": "s,^,x/,"},
]

REJECTED = [
    {},
    {"filename": "../root.tar"},
    {"filename": "a/../../root.tar"},
    {"filename": "dir/"},
    {"filename": "/"},
    {"filename": "r.tar", "compression": "rar"},
    {"filename": "r.tar", "root-node": "maybe"},
    {"filename": "r.tar", "paths": ["/etc"], "root-node": "omit"},
    {"filename": "r.tar", "paths": []},
    {"filename": "r.tar", "paths": ["../etc"]},
    {"filename": "r.tar", "format": "zip"},
    {"filename": "r.tar", "numeric-owner": "yes"},
    {"filename": "r.tar", "unknown": 1},
]


@pytest.mark.parametrize("options", ACCEPTED)
def test_schema_accepts(options: dict[str, Any]) -> None:
    assert valid(options)


@pytest.mark.parametrize("options", REJECTED)
def test_schema_rejects(options: dict[str, Any]) -> None:
    assert not valid(options)


def test_inputs_schema_wants_a_tree() -> None:
    inputs = load_meta("org.osbuild.tar")["schema_2"]["inputs"]
    validator = jsonschema.Draft202012Validator(inputs)
    assert validator.is_valid({"tree": {"type": "org.osbuild.tree"}})
    assert not validator.is_valid({})
    assert not validator.is_valid({"tree": {"type": "org.osbuild.files"}})
