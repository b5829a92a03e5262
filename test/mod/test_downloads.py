"""Downloads: every byte that reaches a stage was verified against its checksum.

Hostile servers (content that changes between requests, garbage, endless and
dripping bodies), files changed in the store, wrong inline data and a source
executable that lies: each ends with one clear line naming what went wrong, or
with a build that used only verified bytes; the store keeps nothing half-written.
"""

import base64
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from fileserver import FileServer, sha256
from harness import Osbuild

from osbuild.errors import OsbuildError, SourceError
from osbuild.fetching import Prefetcher

ROOT = Path(__file__).resolve().parent.parent.parent

GOOD = b"the package everyone agreed on\n"
BAD = b"the package everyone hated!!!!\n"  # as long as GOOD: only the hash tells them apart
assert len(GOOD) == len(BAD)


@pytest.fixture(autouse=True)
def fast_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OSBUILD_SOURCES_RETRIES", "1")
    monkeypatch.setenv("OSBUILD_SOURCES_BACKOFF", "0.05")
    monkeypatch.setenv("OSBUILD_SOURCES_TIMEOUT", "1")
    monkeypatch.setenv("OSBUILD_SOURCES_MAX_SIZE", "1000000")


def consumer(checksum: str, tag: str = "a") -> dict:
    """A stage that shows what it was handed (its tag makes stages with new ids)."""
    return {"type": "org.osbuild.test.script",
            "options": {"script": f"echo {tag}; cat $INPUT_files/*"},
            "inputs": {"files": {"type": "org.osbuild.files", "origin": "org.osbuild.source",
                                 "references": {checksum: {}}}}}


def curl_manifest(url: str, checksum: str = sha256(GOOD), tag: str = "a") -> dict:
    return {"version": "2",
            "sources": {"org.osbuild.curl": {"items": {checksum: url}}},
            "pipelines": [{"name": "os", "stages": [consumer(checksum, tag)]}]}


def seen(result: dict) -> str:
    return result["metadata"]["os"]["org.osbuild.test.script"]["stdout"]


def store_entries(osbuild: Osbuild, part: str) -> list[str]:
    path = osbuild.store / part
    return sorted(p.name for p in path.iterdir()) if path.exists() else []


def assert_failed_cleanly(osbuild: Osbuild, proc, *needles: str) -> None:
    """Exit 1, one error line holding every needle, no traceback, nothing kept."""
    assert proc.returncode == 1, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("osbuild: error:")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    assert "Traceback" not in proc.stdout + proc.stderr
    assert store_entries(osbuild, "sources") == []  # also no .tmp- files
    assert store_entries(osbuild, "objects") == []  # the consumer never ran
    assert store_entries(osbuild, "tmp") == []


# -- content that changes between requests -------------------------------------


def test_good_then_bad_content_only_good_bytes_reach_stages(osbuild: Osbuild,
                                                            server: FileServer) -> None:
    url = server.url("/flip")
    server.sequences["/flip"] = [GOOD, BAD]
    assert seen(osbuild.build_json(curl_manifest(url))) == "a\n" + GOOD.decode()
    # Another stage reads the file from the store, never from the server again.
    assert seen(osbuild.build_json(curl_manifest(url, tag="b"))) == "b\n" + GOOD.decode()
    assert server.count("/flip") == 1
    # Once the store lost it, the server's new content is refused.
    (osbuild.store / "sources" / sha256(GOOD)).unlink()
    proc = osbuild.run(curl_manifest(url, tag="c"), check=False)
    assert proc.returncode == 1
    assert f"checksum mismatch for {url}: expected {sha256(GOOD)}, got {sha256(BAD)}" \
        in proc.stderr
    assert "c\n" not in proc.stdout
    assert store_entries(osbuild, "sources") == [] and store_entries(osbuild, "tmp") == []


def test_bad_then_good_content_fails_then_builds_with_good(osbuild: Osbuild,
                                                           server: FileServer) -> None:
    url = server.url("/flop")
    server.sequences["/flop"] = [BAD, GOOD]
    proc = osbuild.run(curl_manifest(url), check=False)
    assert_failed_cleanly(osbuild, proc, f"checksum mismatch for {url}", sha256(GOOD))
    assert seen(osbuild.build_json(curl_manifest(url))) == "a\n" + GOOD.decode()
    assert (osbuild.store / "sources" / sha256(GOOD)).read_bytes() == GOOD
    assert server.count("/flop") == 2


def test_retry_after_a_cut_body_gets_changed_content(osbuild: Osbuild,
                                                     server: FileServer) -> None:
    """The first answer breaks off, the retry brings other bytes: refused, not mixed."""
    url = server.url("/cut")
    server.sequences["/cut"] = [GOOD[:10], BAD]
    server.announce["/cut"] = len(GOOD)
    proc = osbuild.run(curl_manifest(url), check=False)
    assert_failed_cleanly(osbuild, proc, f"checksum mismatch for {url}")
    assert server.count("/cut") == 2


# -- servers that return garbage -----------------------------------------------

HTML = b"<html><body><h1>503 Service Unavailable</h1>try again later</body></html>\n"


def serve_garbage(server: FileServer, kind: str) -> tuple[str, list[str]]:
    """Set up one kind of garbage at /garbage; returns its URL and what the error says."""
    path = "/garbage"
    url = server.url(path)
    if kind == "wrong bytes":
        server.add(path, BAD)
        return url, [f"checksum mismatch for {url}"]
    if kind == "HTML error page with status 200":
        server.add(path, HTML)
        return url, [f"checksum mismatch for {url}"]
    if kind == "truncated body":
        server.add(path, GOOD)
        server.drops[path] = 100
        return url, [url, f"connection closed after {len(GOOD) // 2} of {len(GOOD)} bytes",
                     "gave up after 2 attempts"]
    if kind == "404":
        return url, [url, "HTTP 404"]
    if kind == "announces a huge body":
        server.add(path, GOOD)
        server.announce[path] = 10**12
        return url, [url, "announces 1000000000000 bytes, more than the limit of 1000000 bytes"]
    if kind == "endless body":
        server.endless.add(path)
        return url, [url, "larger than the limit of 1000000 bytes (OSBUILD_SOURCES_MAX_SIZE)"]
    if kind == "slow drip":
        server.add(path, GOOD * 100)
        server.drip[path] = 0.2
        return url, [url, "slower than 1000 bytes/s for 1 s", "gave up after 2 attempts"]
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["wrong bytes", "HTML error page with status 200",
                                  "truncated body", "404", "announces a huge body",
                                  "endless body", "slow drip"])
def test_garbage_from_the_server_is_one_clear_error(osbuild: Osbuild, server: FileServer,
                                                    kind: str) -> None:
    url, needles = serve_garbage(server, kind)
    proc = osbuild.run(curl_manifest(url), check=False)
    assert_failed_cleanly(osbuild, proc, "org.osbuild.curl", *needles)


# -- the store's files are checked again before a stage gets them -------------


def corrupt_in_place(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    with open(path, "r+b") as f:  # the same inode: what a disk error or an editor does
        f.write(bytes(data))


@pytest.mark.parametrize("damage", ["changed in place", "truncated", "a symlink to a host file",
                                    "a directory"])
def test_file_changed_in_the_store_is_fetched_again(osbuild: Osbuild, server: FileServer,
                                                    damage: str) -> None:
    url = server.add("/pkg", GOOD)
    osbuild.build_json(curl_manifest(url))
    stored = osbuild.store / "sources" / sha256(GOOD)
    if damage == "changed in place":
        corrupt_in_place(stored)
    elif damage == "truncated":
        stored.write_bytes(GOOD[:5])
    else:
        stored.unlink()
        if damage == "a directory":
            stored.mkdir()
        else:
            stored.symlink_to("/etc/hostname")
    proc = osbuild.run(curl_manifest(url, tag="b"), "--json")
    assert seen(json.loads(proc.stdout)) == "b\n" + GOOD.decode()
    assert server.count("/pkg") == 2
    assert stored.is_file() and not stored.is_symlink() and stored.read_bytes() == GOOD


def test_changed_store_file_never_reaches_a_stage_when_the_server_is_bad(
        osbuild: Osbuild, server: FileServer) -> None:
    url = server.url("/pkg")
    server.sequences["/pkg"] = [GOOD, BAD]
    osbuild.build_json(curl_manifest(url))
    corrupt_in_place(osbuild.store / "sources" / sha256(GOOD))
    proc = osbuild.run(curl_manifest(url, tag="b"), check=False)
    assert proc.returncode == 1
    assert "does not match its checksum (changed on disk)" in proc.stdout
    assert f"checksum mismatch for {url}" in proc.stderr
    assert "\nb\n" not in proc.stdout and not proc.stdout.startswith("b\n")
    assert store_entries(osbuild, "sources") == [] and store_entries(osbuild, "tmp") == []


def test_fully_cached_build_does_not_hash_sources(osbuild: Osbuild, server: FileServer) -> None:
    """A build that runs no stage reads no source: a damaged file waits for the next user."""
    url = server.add("/pkg", GOOD)
    osbuild.build_json(curl_manifest(url))
    corrupt_in_place(osbuild.store / "sources" / sha256(GOOD))
    result = osbuild.build_json(curl_manifest(url))
    assert [s["cached"] for s in result["pipelines"]["os"]["stages"]] == [True]
    assert server.count("/pkg") == 1


# -- inline data and the v1 files source --------------------------------------


def inline_manifest(checksum: str, data: bytes) -> dict:
    return {"version": "2",
            "sources": {"org.osbuild.inline": {"items": {checksum: {
                "encoding": "base64", "data": base64.b64encode(data).decode()}}}},
            "pipelines": [{"name": "os", "stages": [consumer(checksum)]}]}


def test_inline_data_with_a_wrong_checksum_is_rejected_before_the_build(
        osbuild: Osbuild) -> None:
    proc = osbuild.run(inline_manifest(sha256(GOOD), BAD), check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"osbuild: error: sources.org.osbuild.inline.items.{sha256(GOOD)}: data does not "
        f"match its checksum (it is {sha256(BAD)})")
    assert store_entries(osbuild, "sources") == [] and store_entries(osbuild, "objects") == []


def test_inline_source_itself_refuses_a_wrong_checksum(osbuild: Osbuild, tmp_path: Path) -> None:
    """Behind the manifest check, the source executable verifies too (a v1 path or a bug)."""
    request = {"items": {sha256(GOOD): {"encoding": "base64",
                                        "data": base64.b64encode(BAD).decode()}},
               "options": {}, "cache": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, str(osbuild.libdir / "sources/org.osbuild.inline")],
                          input=json.dumps(request), capture_output=True, text=True)
    assert proc.returncode == 1
    assert json.loads(proc.stdout) == {"type": "error", "message": (
        f"checksum mismatch for inline item: expected {sha256(GOOD)}, got {sha256(BAD)}")}
    assert list((tmp_path / "cache").iterdir()) == []


def test_inline_file_changed_in_the_store_is_written_again(osbuild: Osbuild) -> None:
    osbuild.build_json(inline_manifest(sha256(GOOD), GOOD))
    corrupt_in_place(osbuild.store / "sources" / sha256(GOOD))
    manifest = inline_manifest(sha256(GOOD), GOOD)
    manifest["pipelines"][0]["stages"][0]["options"]["script"] += "; echo again"
    assert seen(osbuild.build_json(manifest)) == "a\n" + GOOD.decode() + "again\n"


def test_v1_files_source_with_a_wrong_checksum(osbuild: Osbuild, server: FileServer) -> None:
    url = server.add("/v1", BAD)
    manifest = {"sources": {"org.osbuild.files": {"urls": {sha256(GOOD): {"url": url}}}},
                "pipeline": {"stages": [{"name": "org.osbuild.noop"}]}}
    proc = osbuild.run(manifest, check=False)
    assert_failed_cleanly(osbuild, proc, "org.osbuild.files", f"checksum mismatch for {url}")


# -- the engine does not take a source's word for it -----------------------------

LYING_SOURCE = """#!/usr/bin/env python3
import json, sys
request = json.load(sys.stdin)
for checksum in request["items"]:
    with open(f"{request['cache']}/{checksum}", "wb") as f:
        f.write(b"whatever I like")
"""


def test_a_source_that_stores_wrong_content_is_caught(osbuild: Osbuild, server: FileServer,
                                                      tmp_path: Path) -> None:
    libdir = tmp_path / "libdir"
    shutil.copytree(osbuild.libdir, libdir, symlinks=True)
    (libdir / "sources/org.osbuild.curl").write_text(LYING_SOURCE)
    liar = Osbuild(libdir, osbuild.workdir)
    url = server.add("/pkg", GOOD)
    proc = liar.run(curl_manifest(url), check=False)
    assert_failed_cleanly(liar, proc, f"org.osbuild.curl stored {sha256(GOOD)} with content "
                          "that does not match the checksum")
    assert server.count("/pkg") == 0


# -- the background prefetch ----------------------------------------------------


def test_prefetch_that_crashes_never_leaves_a_pipeline_waiting(tmp_path: Path) -> None:
    """An OSError in the background thread (here: the cache is a file) is an error, not a hang."""
    not_a_dir = tmp_path / "cache"
    not_a_dir.write_text("")
    batches = {name: {"org.osbuild.inline": {sha256(GOOD): {
        "encoding": "base64", "data": base64.b64encode(GOOD).decode()}}} for name in ("a", "b")}
    prefetch = Prefetcher(ROOT, not_a_dir, batches, lambda *_: None, lambda _: None).start()
    waited: dict[str, BaseException | None] = {}

    def wait_all() -> None:
        for name in ("a", "b"):
            try:
                prefetch.wait(name)
                waited[name] = None
            except OsbuildError as e:
                waited[name] = e

    waiter = threading.Thread(target=wait_all, daemon=True)
    waiter.start()
    waiter.join(10)
    prefetch.stop()
    assert not waiter.is_alive(), "a pipeline waits forever for its sources"
    assert isinstance(waited["a"], SourceError) and str(not_a_dir) in str(waited["a"])
