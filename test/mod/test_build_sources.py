"""Sources through the engine: fetched on the host, verified, cached, handed in as inputs."""

import base64
import json
import signal
import subprocess
import sys
import time

import pytest
from fileserver import FileServer, sha256
from harness import Osbuild


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OSBUILD_SOURCES_RETRIES", "1")
    monkeypatch.setenv("OSBUILD_SOURCES_BACKOFF", "0.05")


def consumer(*checksums: str) -> dict:
    return {"type": "org.osbuild.test.script",
            "options": {"script": "for f in $INPUT_files/*; do cat $f; echo; done; "
                                  "ls $INPUT_files | sort > listing"},
            "inputs": {"files": {"type": "org.osbuild.files", "origin": "org.osbuild.source",
                                 "references": {c: {} for c in checksums}}}}


def test_curl_items_reach_the_stage_and_are_fetched_once(osbuild: Osbuild,
                                                         server: FileServer) -> None:
    a, b = b"first file", b"second file"
    url_a, url_b = server.add("/a", a), server.add("/b", b)
    manifest = {"version": "2",
                "sources": {"org.osbuild.curl": {"items": {sha256(a): {"url": url_a},
                                                           sha256(b): url_b}}},
                "pipelines": [{"name": "os", "stages": [consumer(sha256(a), sha256(b))]}]}
    result = osbuild.build_json(manifest, "--export", "os", "--output-directory",
                                str(osbuild.output))
    out = result["metadata"]["os"]["org.osbuild.test.script"]["stdout"]
    assert "first file" in out and "second file" in out
    assert (osbuild.output / "os/listing").read_text().split() == sorted([sha256(a), sha256(b)])
    # A changed stage needs the files again: they come from the store, not the server.
    manifest["pipelines"][0]["stages"].append({"type": "org.osbuild.noop"})
    osbuild.build_json(manifest)
    assert server.count("/a") == 1 and server.count("/b") == 1


def test_checksum_mismatch_names_the_url_and_builds_nothing(osbuild: Osbuild,
                                                            server: FileServer) -> None:
    url = server.add("/evil", b"not what was promised")
    wanted = sha256(b"what was promised")
    manifest = {"version": "2",
                "sources": {"org.osbuild.curl": {"items": {wanted: url}}},
                "pipelines": [{"name": "os", "stages": [consumer(wanted)]}]}
    proc = osbuild.run(manifest, check=False)
    assert proc.returncode == 1
    assert url in proc.stderr and "Traceback" not in proc.stderr
    assert not list((osbuild.store / "sources").iterdir())
    assert not list((osbuild.store / "objects").iterdir())


def test_dropped_connection_is_retried(osbuild: Osbuild, server: FileServer) -> None:
    data = b"x" * 100000
    url = server.add("/flaky", data)
    server.drops["/flaky"] = 1
    manifest = {"version": "2",
                "sources": {"org.osbuild.curl": {"items": {sha256(data): url}}},
                "pipelines": [{"name": "os", "stages": [consumer(sha256(data))]}]}
    osbuild.build_json(manifest)
    assert server.count("/flaky") == 2


def test_fully_cached_build_needs_no_network(osbuild: Osbuild, server: FileServer) -> None:
    data = b"payload"
    url = server.add("/p", data)
    manifest = {"version": "2",
                "sources": {"org.osbuild.curl": {"items": {sha256(data): url}}},
                "pipelines": [{"name": "os", "stages": [consumer(sha256(data))]}]}
    osbuild.build_json(manifest)
    del server.files["/p"]
    osbuild.run(manifest, "--cache-max-size", "unlimited")
    assert server.count("/p") == 1


def test_inline_source(osbuild: Osbuild) -> None:
    data = b"inline payload"
    manifest = {"version": "2",
                "sources": {"org.osbuild.inline": {"items": {sha256(data): {
                    "encoding": "base64", "data": base64.b64encode(data).decode()}}}},
                "pipelines": [{"name": "os", "stages": [consumer(sha256(data))]}]}
    result = osbuild.build_json(manifest)
    assert "inline payload" in result["metadata"]["os"]["org.osbuild.test.script"]["stdout"]


def test_v1_files_source_is_fetched(osbuild: Osbuild, server: FileServer) -> None:
    data = b"v1 data"
    url = server.add("/v1", data)
    manifest = {"sources": {"org.osbuild.files": {"urls": {sha256(data): url}}},
                "pipeline": {"stages": [{"name": "org.osbuild.noop"}]}}
    osbuild.run(manifest)
    assert (osbuild.store / "sources" / sha256(data)).read_bytes() == data


def test_download_progress_is_reported(osbuild: Osbuild, server: FileServer) -> None:
    first, second = b"y" * 1000, b"z" * 1000
    urls = [server.add("/first", first), server.add("/second", second)]
    manifest = {"version": "2",
                "sources": {"org.osbuild.curl": {"items": {sha256(first): urls[0],
                                                           sha256(second): urls[1]}}},
                "pipelines": [{"name": "os", "stages": [consumer(sha256(first))]},
                              {"name": "other", "stages": [consumer(sha256(second))]}]}
    human = osbuild.run(manifest, "--export", "os", "--output-directory",
                        str(osbuild.output)).stdout
    assert "fetched 1 file for pipeline os (org.osbuild.curl)" in human
    assert "pipeline other" not in human
    proc = osbuild.run(manifest, "--monitor", "JSONSeqMonitor")
    records = [json.loads(c) for c in proc.stdout.split("\x1e") if c.strip()]
    downloads = [r for r in records if r.get("context", {}).get("source") == "org.osbuild.curl"]
    assert downloads and downloads[-1]["progress"] == {"name": "download", "done": 1000,
                                                       "total": 1000}
    assert downloads[-1]["source"]["url"] == urls[1]


def test_missing_source_for_an_input_is_a_clear_error(osbuild: Osbuild) -> None:
    wanted = sha256(b"nobody provides this")
    manifest = {"version": "2", "pipelines": [{"name": "os", "stages": [consumer(wanted)]}]}
    proc = osbuild.run(manifest, check=False)
    assert proc.returncode == 2  # found by validation, before anything runs
    assert proc.stderr == (f"osbuild: error: pipelines[0].stages[0].inputs.files.references."
                           f"{wanted}: no source provides this checksum\n")


def test_interrupt_during_background_download_leaves_nothing(osbuild: Osbuild,
                                                             server: FileServer) -> None:
    data = b"s" * 200000
    url = server.add("/stall", data)
    server.stall.add("/stall")
    manifest = {"version": "2",
                "sources": {"org.osbuild.curl": {"items": {sha256(data): url}}},
                "pipelines": [{"name": "os", "stages": [consumer(sha256(data))]}]}
    path = osbuild.workdir / "m.json"
    path.write_text(json.dumps(manifest))
    cmd = [sys.executable, "-m", "osbuild", "--libdir", str(osbuild.libdir), "--store",
           str(osbuild.store), str(path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while server.count("/stall") == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert list((osbuild.store / "sources").iterdir()) == []
    assert not list((osbuild.store / "tmp").iterdir())
    running = subprocess.run(["pgrep", "-f", "sources/org.osbuild.curl"], capture_output=True,
                             text=True).stdout
    assert str(osbuild.libdir) not in running
