"""Sources against a real HTTP server on 127.0.0.1: verified, atomic, cached, retried."""

import base64
import hashlib
import json
import lzma
import os
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
from fileserver import sha256

from osbuild import checksums, fetching, sourcelib
from osbuild.errors import ModuleNotFound, SourceError

LIBDIR = Path(__file__).resolve().parent.parent.parent


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setenv("OSBUILD_SOURCES_RETRIES", "2")
    monkeypatch.setenv("OSBUILD_SOURCES_BACKOFF", "0.05")
    monkeypatch.setenv("OSBUILD_SOURCES_TIMEOUT", "10")


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.name.startswith(".tmp-"))


def test_good_fetch_both_item_shapes(server, tmp_path):
    a, b = b"hello, world\n", os.urandom(300_000)
    items = {sha256(a): server.add("/a", a), sha256(b): {"url": server.add("/b", b)}}
    cache = tmp_path / "cache"
    fetching.fetch(LIBDIR, "org.osbuild.curl", items, cache)
    assert (cache / sha256(a)).read_bytes() == a
    assert (cache / sha256(b)).read_bytes() == b
    assert (cache / sha256(b)).stat().st_mode & 0o777 == 0o644
    assert leftovers(cache) == []


@pytest.mark.parametrize("algorithm", ["md5", "sha1", "sha384", "sha512"])
def test_other_algorithms(server, tmp_path, algorithm):
    data = b"some bytes for " + algorithm.encode()
    checksum = f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
    fetching.fetch(LIBDIR, "org.osbuild.curl", {checksum: server.add("/x", data)}, tmp_path)
    assert (tmp_path / checksum).read_bytes() == data


def test_cached_item_is_not_fetched_again(server, tmp_path):
    data = b"cache me"
    items = {sha256(data): server.add("/c", data)}
    fetching.fetch(LIBDIR, "org.osbuild.curl", items, tmp_path)
    fetching.fetch(LIBDIR, "org.osbuild.curl", items, tmp_path)
    assert server.count("/c") == 1


def test_source_itself_skips_cached_items(server, tmp_path):
    """The protocol, spoken directly: a cached item is neither fetched nor reported."""
    cached, fresh = b"already here", b"new"
    (tmp_path / sha256(cached)).write_bytes(cached)
    request = {"items": {sha256(cached): server.add("/old", cached),
                         sha256(fresh): server.add("/new", fresh)},
               "options": {}, "cache": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(LIBDIR / "sources/org.osbuild.curl")],
                          input=json.dumps(request), capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert {r["checksum"] for r in records} == {sha256(fresh)}
    assert all(r["type"] == "progress" for r in records)
    assert server.count("/old") == 0 and server.count("/new") == 1
    assert (tmp_path / sha256(fresh)).read_bytes() == fresh


def test_wrong_checksum_fails_and_leaves_nothing(server, tmp_path):
    url = server.add("/wrong", b"not what you asked for")
    expected = sha256(b"something else")
    with pytest.raises(SourceError) as e:
        fetching.fetch(LIBDIR, "org.osbuild.curl", {expected: url}, tmp_path)
    message = str(e.value)
    assert url in message and expected in message
    assert sha256(b"not what you asked for") in message
    assert "\n" not in message
    assert list(tmp_path.iterdir()) == []
    assert server.count("/wrong") == 1  # a mismatch is not retried


def test_dropped_connection_is_retried(server, tmp_path):
    data = os.urandom(200_000)
    url = server.add("/flaky", data)
    server.drops["/flaky"] = 2
    fetching.fetch(LIBDIR, "org.osbuild.curl", {sha256(data): url}, tmp_path)
    assert (tmp_path / sha256(data)).read_bytes() == data
    assert server.count("/flaky") == 3
    assert leftovers(tmp_path) == []


def test_dropped_every_time_fails(server, tmp_path):
    data = os.urandom(50_000)
    url = server.add("/broken", data)
    server.drops["/broken"] = 100
    with pytest.raises(SourceError, match="connection closed after 25000 of 50000 bytes"):
        fetching.fetch(LIBDIR, "org.osbuild.curl", {sha256(data): url}, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_404_fails_clearly_after_retries(server, tmp_path):
    url = server.url("/missing")
    with pytest.raises(SourceError) as e:
        fetching.fetch(LIBDIR, "org.osbuild.curl", {sha256(b"x"): url}, tmp_path)
    assert str(e.value) == (
        f"org.osbuild.curl: cannot download {url}: HTTP 404 Not Found (gave up after 3 attempts)"
    )
    assert server.count("/missing") == 3
    assert list(tmp_path.iterdir()) == []


def test_connection_refused_is_an_error(server, tmp_path, monkeypatch):
    monkeypatch.setenv("OSBUILD_SOURCES_RETRIES", "0")
    url = server.url("/x").replace(f":{server.port}", ":1")
    with pytest.raises(SourceError, match=r"cannot download .*:1/x: .*refused.*1 attempt\)"):
        fetching.fetch(LIBDIR, "org.osbuild.curl", {sha256(b"x"): url}, tmp_path)


def test_parallel_fetch_of_many_items(server, tmp_path):
    items = {}
    for i in range(4 * sourcelib.DEFAULT_WORKERS):
        data = f"item {i}\n".encode() * (i + 1)
        path = f"/many/{i}"
        server.delay[path] = 0.2
        items[sha256(data)] = server.add(path, data)
    start = time.monotonic()
    fetching.fetch(LIBDIR, "org.osbuild.curl", items, tmp_path)
    elapsed = time.monotonic() - start
    for checksum in items:
        assert checksums.verify_file(tmp_path / checksum, checksum)
    # A bounded pool: more than one at a time, never more than the pool's size.
    assert 2 <= server.max_in_flight <= sourcelib.DEFAULT_WORKERS
    assert elapsed < 4 * sourcelib.DEFAULT_WORKERS * 0.2


def test_workers_keep_their_connections_alive(server, tmp_path, monkeypatch):
    # Mirrors and proxies limit how fast a client opens connections: a new one
    # per file made 170 files take 30 s here instead of one second.
    monkeypatch.setenv("OSBUILD_SOURCES_WORKERS", "2")
    blobs = [os.urandom(1000 + i) for i in range(30)]
    items = {sha256(b): server.add(f"/k{i}", b) for i, b in enumerate(blobs)}
    fetching.fetch(LIBDIR, "org.osbuild.curl", items, tmp_path)
    assert all((tmp_path / c).read_bytes() == b for c, b in zip(items, blobs, strict=True))
    assert server.connections <= 2


def test_server_closing_kept_connections_is_not_a_failure(server, tmp_path, monkeypatch):
    monkeypatch.setenv("OSBUILD_SOURCES_WORKERS", "1")
    monkeypatch.setenv("OSBUILD_SOURCES_RETRIES", "0")  # a stale connection is no attempt
    server.drop_idle = True
    blobs = [os.urandom(500 + i) for i in range(10)]
    items = {sha256(b): server.add(f"/s{i}", b) for i, b in enumerate(blobs)}
    fetching.fetch(LIBDIR, "org.osbuild.curl", items, tmp_path)
    assert all((tmp_path / c).read_bytes() == b for c, b in zip(items, blobs, strict=True))
    assert [server.count(f"/s{i}") for i in range(10)] == [1] * 10
    assert server.connections == 10


def test_redirects_are_followed(server, tmp_path):
    data = b"moved"
    target = server.add("/new", data)
    server.redirects["/old"] = target
    fetching.fetch(LIBDIR, "org.osbuild.curl", {sha256(data): server.url("/old")}, tmp_path)
    assert (tmp_path / sha256(data)).read_bytes() == data


def test_one_failure_fails_the_whole_fetch(server, tmp_path):
    good = b"good"
    items = {sha256(good): server.add("/good", good), sha256(b"bad"): server.url("/nope")}
    with pytest.raises(SourceError, match="/nope: HTTP 404"):
        fetching.fetch(LIBDIR, "org.osbuild.curl", items, tmp_path)
    assert leftovers(tmp_path) == []
    assert not (tmp_path / sha256(b"bad")).exists()


def test_progress_records_arrive(server, tmp_path):
    data = os.urandom(3 * 1024 * 1024)
    url = server.add("/big", data)
    records: list[dict] = []
    fetching.fetch(LIBDIR, "org.osbuild.curl", {sha256(data): url}, tmp_path,
                  on_progress=records.append)
    assert records, "no progress records"
    assert all(r["type"] == "progress" and r["checksum"] == sha256(data) for r in records)
    assert all(r["url"] == url for r in records)
    assert records[-1]["done"] == records[-1]["total"] == len(data)
    done = [r["done"] for r in records]
    assert done == sorted(done)


def test_interrupt_kills_the_source_and_leaves_no_partial_file(server, tmp_path):
    data = os.urandom(4 * 1024 * 1024)
    url = server.add("/stall", data)
    server.stall.add("/stall")
    seen: list[dict] = []

    def interrupt(record: dict) -> None:
        seen.append(record)
        # The first chunk has landed in a temp file: now the user presses Ctrl-C.
        assert [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
        raise KeyboardInterrupt

    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        fetching.fetch(LIBDIR, "org.osbuild.curl", {sha256(data): url}, tmp_path,
                      on_progress=interrupt)
    # Killed, not waited for: the stalled download would take 30 s.
    assert time.monotonic() - start < 10
    assert seen and seen[0]["done"] < len(data)
    assert list(tmp_path.iterdir()) == []
    assert not children_running("org.osbuild.curl")


def children_running(needle: str) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == os.getpid() and needle.encode() in cmdline:
            found.append(int(stat.parent.name))
    return found


def test_files_source_takes_v1_urls(server, tmp_path):
    data = b"v1 manifests say files"
    urls = {sha256(data): server.add("/v1", data)}
    fetching.fetch(LIBDIR, "org.osbuild.files", urls, tmp_path)
    assert (tmp_path / sha256(data)).read_bytes() == data


def test_unsupported_scheme_fails(tmp_path):
    with pytest.raises(SourceError, match="unsupported URL scheme"):
        fetching.fetch(LIBDIR, "org.osbuild.curl", {sha256(b"x"): "gopher://x/y"}, tmp_path)


def test_malformed_checksum_is_refused_before_running(tmp_path):
    with pytest.raises(SourceError, match="invalid checksum"):
        fetching.fetch(LIBDIR, "org.osbuild.curl", {"sha256:abc": "http://x/"}, tmp_path)
    with pytest.raises(SourceError, match="64 hex digits"):
        fetching.fetch(LIBDIR, "org.osbuild.curl", {"sha256:" + "0" * 40: "http://x/"}, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_unknown_source_type(tmp_path):
    with pytest.raises(ModuleNotFound, match="org.osbuild.nope"):
        fetching.fetch(LIBDIR, "org.osbuild.nope", {sha256(b"x"): "http://x/"}, tmp_path)


def test_inline_base64_and_lzma(tmp_path):
    plain, packed = b"#!/bin/sh\necho hi\n", b"compressed " * 100
    items = {
        sha256(plain): {"encoding": "base64", "data": base64.b64encode(plain).decode()},
        sha256(packed): {"encoding": "lzma+base64",
                         "data": base64.b64encode(lzma.compress(packed)).decode()},
    }
    records: list[dict] = []
    fetching.fetch(LIBDIR, "org.osbuild.inline", items, tmp_path, on_progress=records.append)
    assert (tmp_path / sha256(plain)).read_bytes() == plain
    assert (tmp_path / sha256(packed)).read_bytes() == packed
    assert {r["checksum"] for r in records} == set(items)
    assert leftovers(tmp_path) == []


def test_inline_checksum_mismatch(tmp_path):
    wrong = sha256(b"other")
    items = {wrong: {"encoding": "base64", "data": base64.b64encode(b"data").decode()}}
    with pytest.raises(SourceError, match=f"checksum mismatch for inline item: expected {wrong}"):
        fetching.fetch(LIBDIR, "org.osbuild.inline", items, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_inline_bad_base64(tmp_path):
    items = {sha256(b"x"): {"encoding": "base64", "data": "not base64!"}}
    with pytest.raises(SourceError, match="is not valid base64"):
        fetching.fetch(LIBDIR, "org.osbuild.inline", items, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_verify_file(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    assert checksums.verify_file(path, sha256(b"abc"))
    assert not checksums.verify_file(path, sha256(b"abd"))
    assert not checksums.verify_file(tmp_path / "missing", sha256(b"abc"))
    with pytest.raises(SourceError):
        checksums.verify_file(path, "crc32:abcd")


# --- schemas -----------------------------------------------------------------


def validator(name: str) -> jsonschema.Draft202012Validator:
    meta = json.loads((LIBDIR / "sources" / f"{name}.meta.json").read_text())
    assert meta["summary"] and meta["description"]
    schema = {"type": "object", **meta["schema"]}
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


CHECKSUM = "sha256:" + "ab" * 32

ACCEPTED = [
    ("org.osbuild.curl", {"items": {CHECKSUM: "https://mirror.example/x.deb"}}),
    ("org.osbuild.curl", {"items": {CHECKSUM: {"url": "https://x/", "insecure": True}}}),
    ("org.osbuild.curl", {"items": {CHECKSUM: {"url": "https://x/",
                                               "secrets": {"name": "org.osbuild.mtls"}}}}),
    ("org.osbuild.curl", {"urls": {"md5:" + "0" * 32: "https://x/"}}),
    ("org.osbuild.files", {"urls": {CHECKSUM: "https://x/", "sha512:" + "1" * 128: {"url": "y"}}}),
    ("org.osbuild.inline", {"items": {CHECKSUM: {"encoding": "base64", "data": "aGk="}}}),
    ("org.osbuild.inline", {"items": {CHECKSUM: {"encoding": "lzma+base64", "data": ""}}}),
]

REJECTED = [
    ("org.osbuild.curl", {"items": {"sha256:XYZ": "https://x/"}}),
    ("org.osbuild.curl", {"items": {"../../etc/passwd": "https://x/"}}),
    ("org.osbuild.curl", {"items": {CHECKSUM: {"url": "https://x/", "mirror": "y"}}}),
    ("org.osbuild.curl", {"items": {CHECKSUM: "https://x/"}, "urls": {}}),
    ("org.osbuild.curl", {}),
    ("org.osbuild.files", {"items": {CHECKSUM: "https://x/"}}),
    ("org.osbuild.inline", {"items": {CHECKSUM: {"encoding": "hex", "data": "00"}}}),
    ("org.osbuild.inline", {"items": {CHECKSUM: {"data": "aGk="}}}),
]


@pytest.mark.parametrize("name,section", ACCEPTED)
def test_schema_accepts(name, section):
    validator(name).validate(section)


@pytest.mark.parametrize("name,section", REJECTED)
def test_schema_rejects(name, section):
    assert not validator(name).is_valid(section)
