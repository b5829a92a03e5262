#!/usr/bin/python3
"""A small libguestfs server, run by backend_guestfs under the system Python.

Debian's libguestfs binding (python3-guestfs) lives in the system Python,
which a virtualenv does not see, so image-info talks to it through this
script: one JSON request per line on stdin, one JSON answer per line on
stdout ({"ok": value} or {"error": "one line"}). Stdlib and guestfs only; it
imports nothing from the project. Usage: guestfs_server.py RAW_IMAGE
"""

import json
import sys


def one_line(exc: Exception) -> str:
    # libguestfs adds a paragraph of debugging advice; its first line says what failed.
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def main(image: str) -> int:
    try:
        import guestfs
    except ImportError:
        print(json.dumps({"error": "python3-guestfs is not installed in /usr/bin/python3"}),
              flush=True)
        return 1
    g = guestfs.GuestFS(python_return_dict=True)
    try:
        g.add_drive_opts(image, readonly=True, format="raw")
        g.launch()
    except RuntimeError as exc:
        print(json.dumps({"error": f"cannot start the appliance: {one_line(exc)}"}), flush=True)
        return 1

    def xattr(path: str, name: str) -> str | None:
        try:
            return g.lgetxattr(path, name).rstrip(b"\0").decode("utf-8", "replace") or None
        except RuntimeError:
            return None

    ops = {
        "mount": lambda dev, target, opts: g.mount_options(opts, dev, target),
        "umount": lambda target: g.umount(target),
        "exists": g.exists,
        "is_symlink": g.is_symlink,
        "is_dir": g.is_dir,
        "is_file": g.is_file,
        "readlink": g.readlink,
        "cat": lambda path: g.read_file(path).decode("utf-8", "replace"),
        "tar_out": lambda path, local: g.tar_out(path, local, numericowner=True),
        "download": g.download,
        "xattr": xattr,
    }
    print(json.dumps({"ok": "ready"}), flush=True)
    try:
        for line in sys.stdin:
            request = json.loads(line)
            op = ops.get(request["op"])
            if op is None:
                answer = {"error": f"unknown operation {request['op']}"}
            else:
                try:
                    answer = {"ok": op(*request["args"])}
                except RuntimeError as exc:
                    answer = {"error": one_line(exc)}
            print(json.dumps(answer), flush=True)
    finally:
        try:
            g.umount_all()
            g.shutdown()
        finally:
            g.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
