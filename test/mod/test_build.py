"""The `osbuild` command end to end: real sandboxes, a real store, real exit codes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import Osbuild


def stage(name: str, **options: object) -> dict:
    return {"type": f"org.osbuild.{name}", "options": options}


def v1_stage(name: str, **options: object) -> dict:
    return {"name": f"org.osbuild.{name}", "options": options}


PYTHONROOT = {"name": "build", "stages": [stage("test.pythonroot")]}


def tree_files(path: Path) -> dict[str, tuple[int, str]]:
    result = {}
    for p in sorted(path.rglob("*")):
        content = p.read_text() if p.is_file() and not p.is_symlink() else ""
        result[str(p.relative_to(path))] = (p.lstat().st_mode, content)
    return result


def store_tmp_is_empty(osbuild: Osbuild) -> bool:
    tmp = osbuild.store / "tmp"
    return not tmp.exists() or not any(tmp.iterdir())


def test_rerun_is_fully_cached_with_the_same_metadata(osbuild: Osbuild) -> None:
    manifest = {"version": "2", "pipelines": [{"name": "os", "stages": [
        stage("test.metadata", file="a", content="A"),
        stage("test.metadata", file="b", content="B"),
    ]}]}
    first = osbuild.build_json(manifest)
    second = osbuild.build_json(manifest)
    stages1 = first["pipelines"]["os"]["stages"]
    stages2 = second["pipelines"]["os"]["stages"]
    assert [s["cached"] for s in stages1] == [False, False]
    assert [s["cached"] for s in stages2] == [True, True]
    assert [s["metadata"] for s in stages1] == [s["metadata"] for s in stages2]
    assert stages1[0]["metadata"]["options"] == {"file": "a", "content": "A"}
    assert first["metadata"] == second["metadata"]
    human = osbuild.run(manifest).stdout
    assert human.count(" cached\n") == 2 and " ran " not in human
    assert store_tmp_is_empty(osbuild)


def test_export_writes_the_tree(osbuild: Osbuild) -> None:
    manifest = {"version": "2", "pipelines": [{"name": "os", "stages": [
        stage("test.metadata", file="hello", content="world")]}]}
    proc = osbuild.run(manifest, "--export", "os", "--output-directory", str(osbuild.output))
    assert (osbuild.output / "os/hello").read_text() == "world"
    assert f"exported os to {osbuild.output / 'os'}" in proc.stdout
    assert not [p for p in osbuild.output.iterdir() if p.name.startswith(".")]


def test_build_pipeline_is_the_build_root(osbuild: Osbuild) -> None:
    manifest = {"version": "2", "pipelines": [
        PYTHONROOT,
        {"name": "os", "build": "name:build", "stages": [stage("test.metadata", file="x")]},
        {"name": "hosted", "stages": [stage("test.metadata", file="x")]},
    ]}
    result = osbuild.build_json(manifest)
    assert result["metadata"]["os"]["org.osbuild.test.metadata"]["host_usr"] is False
    assert result["metadata"]["hosted"]["org.osbuild.test.metadata"]["host_usr"] is True


def test_v1_and_v2_make_the_same_tree(osbuild: Osbuild) -> None:
    stages_v1 = [v1_stage("test.metadata", file="a", content="1"),
                 v1_stage("test.metadata", file="b", content="2")]
    v1 = {"pipeline": {"build": {"pipeline": {"stages": [v1_stage("test.pythonroot")]},
                                 "runner": "org.osbuild.linux"},
                       "stages": stages_v1}}
    v2 = {"version": "2", "pipelines": [
        PYTHONROOT,
        {"name": "tree", "build": "name:build", "runner": "org.osbuild.linux",
         "stages": [stage("test.metadata", file="a", content="1"),
                    stage("test.metadata", file="b", content="2")]}]}
    out1, out2 = osbuild.workdir / "v1", osbuild.workdir / "v2"
    osbuild.run(v1, "--export", "tree", "--output-directory", str(out1))
    osbuild.run(v2, "--export", "tree", "--output-directory", str(out2))
    assert tree_files(out1 / "tree") == tree_files(out2 / "tree")
    assert (out1 / "tree/a").read_text() == "1"


def test_seed_build_pipeline_with_only_an_error_stage(osbuild: Osbuild) -> None:
    manifest = {"pipeline": {"build": {"pipeline": {"stages": [v1_stage("error")]},
                                       "runner": "org.osbuild.debian12"},
                             "stages": [v1_stage("noop")],
                             "assembler": {"name": "org.osbuild.noop"}}}
    proc = osbuild.run(manifest, "--export", "assembler", "--output-directory",
                       str(osbuild.output), check=False)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "stage org.osbuild.error" in proc.stderr and "pipeline 'build'" in proc.stderr
    assert not osbuild.output.exists()
    assert store_tmp_is_empty(osbuild)


def test_seed_build_pipeline_without_runner(osbuild: Osbuild) -> None:
    for build in ({"pipeline": {"stages": [v1_stage("test.pythonroot")]}},
                  {"pipeline": {"stages": [v1_stage("test.pythonroot")]}, "runner": None}):
        manifest = {"pipeline": {"build": build,
                                 "stages": [v1_stage("test.metadata", file="x")],
                                 "assembler": {"name": "org.osbuild.noop"}}}
        result = osbuild.build_json(manifest)
        assert result["success"] is True
        assert result["stages"][0]["metadata"]["host_usr"] is False


def test_seed_empty_pipeline_with_assembler_and_failing_build(osbuild: Osbuild) -> None:
    manifest = {"pipeline": {"build": {"pipeline": {"stages": [v1_stage("error", returncode=3)]},
                                       "runner": "org.osbuild.linux"},
                             "assembler": {"name": "org.osbuild.noop"}}}
    proc = osbuild.run(manifest, "--json", check=False)
    assert proc.returncode == 1
    result = json.loads(proc.stdout)
    assert result["success"] is False
    assert "assembler" not in result
    assert result["build"]["stages"][0]["success"] is False
    assert result["error"]["returncode"] == 3
    assert "Traceback" not in proc.stderr


def test_empty_build_root_is_a_clear_error(osbuild: Osbuild) -> None:
    manifest = {"pipeline": {"build": {"pipeline": {"stages": [v1_stage("noop")]}},
                             "stages": [v1_stage("noop")]}}
    proc = osbuild.run(manifest, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[0].startswith("osbuild: error: build root")
    assert "Traceback" not in proc.stderr


def test_failed_stage_reports_and_commits_nothing(osbuild: Osbuild) -> None:
    manifest = {"version": "2", "pipelines": [{"name": "os", "stages": [
        stage("test.metadata", file="a"),
        stage("test.script", script="echo line one; echo line two >&2; exit 7"),
    ]}]}
    proc = osbuild.run(manifest, check=False)
    assert proc.returncode == 1
    assert "org.osbuild.test.script" in proc.stderr and "exit status 7" in proc.stderr
    assert "line two" in proc.stderr
    assert "Traceback" not in proc.stderr
    objects = osbuild.store / "objects"
    assert not objects.exists() or not list(objects.iterdir())
    assert store_tmp_is_empty(osbuild)


def test_checkpoint_resumes_at_first_uncached_stage(osbuild: Osbuild) -> None:
    def manifest(last: str) -> dict:
        return {"version": "2", "pipelines": [{"name": "os", "stages": [
            stage("test.metadata", file="a", content="A"),
            stage("test.metadata", file="b", content=last)]}]}
    first = osbuild.build_json(manifest("1"), "--checkpoint", "org.osbuild.test.metadata")
    assert [s["cached"] for s in first["pipelines"]["os"]["stages"]] == [False, False]
    second = osbuild.build_json(manifest("2"), "--export", "os", "--output-directory",
                                str(osbuild.output))
    assert [s["cached"] for s in second["pipelines"]["os"]["stages"]] == [True, False]
    assert (osbuild.output / "os/a").read_text() == "A"
    assert (osbuild.output / "os/b").read_text() == "2"
    # the cached stage still reports its metadata
    assert second["pipelines"]["os"]["stages"][0]["metadata"]["options"]["file"] == "a"


def test_stdin_and_yaml_manifests(osbuild: Osbuild) -> None:
    manifest = {"version": "2", "pipelines": [{"name": "os", "stages": [stage("noop")]}]}
    proc = osbuild.run("-", "--json", stdin=json.dumps(manifest))
    assert json.loads(proc.stdout)["success"] is True
    yaml_path = osbuild.workdir / "m.yaml"
    yaml_path.write_text("version: '2'\npipelines:\n  - name: os\n    stages:\n"
                         "      - type: org.osbuild.noop\n")
    assert json.loads(osbuild.run(yaml_path, "--json").stdout)["success"] is True


def test_inspect_prints_ids_and_builds_nothing(osbuild: Osbuild) -> None:
    manifest = {"version": "2", "pipelines": [{"name": "os", "stages": [stage("noop")]}]}
    doc = json.loads(osbuild.run(manifest, "--inspect").stdout)
    assert len(doc["pipelines"][0]["id"]) == 64
    assert doc["pipelines"][0]["stages"][0]["id"] == doc["pipelines"][0]["id"]
    assert not osbuild.store.exists()


@pytest.mark.parametrize("text, expected", [
    ('{"version": "2", "pipelines": [{"name": "os", "stages": [{"type": '
     '"org.osbuild.test.metadata", "options": {"file": 3}}]}]}',
     "osbuild: error: pipelines[0].stages[0].options.file: 3 is not of type 'string'"),
    ('{"version": "2", "pipelines": [', "not valid JSON: line 1 column 32: Expecting value"),
    ("", "manifest is empty"),
    ('{"version": "2", "version": "2"}', "duplicate key 'version'"),
    ('{"version": "2", "pipelines": [{"name": "a", "source-epoch": NaN}]}',
     "NaN is not a valid JSON number"),
    ("[" * 100000 + "]" * 100000, "nests too deeply"),
], ids=["schema", "truncated", "empty", "duplicate-key", "nan", "deep"])
def test_bad_input_exits_2_with_one_line(osbuild: Osbuild, text: str, expected: str) -> None:
    path = osbuild.workdir / "bad.json"
    path.write_text(text)
    proc = osbuild.run(path, "--export", "os", "--output-directory", str(osbuild.output),
                       check=False)
    assert proc.returncode == 2, proc.stderr
    assert expected in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not osbuild.store.exists() and not osbuild.output.exists()


def test_non_utf8_manifest(osbuild: Osbuild) -> None:
    path = osbuild.workdir / "bad.json"
    path.write_bytes(b'{"version": "2\xff"}')
    proc = osbuild.run(path, check=False)
    assert proc.returncode == 2 and "not UTF-8" in proc.stderr


def test_export_errors(osbuild: Osbuild) -> None:
    manifest = {"version": "2", "pipelines": [{"name": "os", "stages": [stage("noop")]}]}
    proc = osbuild.run(manifest, "--export", "nope", "--output-directory", "out", check=False)
    assert proc.returncode == 2 and "no pipeline named 'nope'" in proc.stderr
    proc = osbuild.run(manifest, "--export", "os", check=False)
    assert proc.returncode == 1 and "--export needs --output-directory" in proc.stderr


def test_sandbox_confinement(osbuild: Osbuild, tmp_path: Path) -> None:
    script = "; ".join([
        "touch /etc/osbuild-probe 2>/dev/null && echo etc-writable",
        "touch /usr/osbuild-probe 2>/dev/null && echo usr-writable",
        f"ls {tmp_path} >/dev/null 2>&1 && echo host-visible",
        "cat /proc/net/route | wc -l",
        "ls /dev | tr '\\n' ' '",
        "echo; echo epoch=$SOURCE_DATE_EPOCH container=$container",
        "touch tree-file",
    ])
    manifest = {"version": "2", "pipelines": [{"name": "os", "source-epoch": 1000,
                                               "stages": [stage("test.script", script=script)]}]}
    result = osbuild.build_json(manifest, "--export", "os", "--output-directory",
                                str(osbuild.output))
    out = result["metadata"]["os"]["org.osbuild.test.script"]["stdout"]
    assert "writable" not in out and "host-visible" not in out
    assert out.splitlines()[0] == "1"  # only the header: no routes, no network
    assert "sda" not in out and "null" in out
    assert "epoch=1000 container=bwrap-osbuild" in out
    assert (osbuild.output / "os/tree-file").stat().st_mtime == 1000
    assert not os.path.exists("/etc/osbuild-probe")


def test_two_builds_of_one_manifest_at_once(osbuild: Osbuild) -> None:
    manifest = {"version": "2", "pipelines": [{"name": "os", "stages": [
        stage("test.metadata", file="a", sleep=1), stage("test.metadata", file="b")]}]}
    path = osbuild.workdir / "m.json"
    path.write_text(json.dumps(manifest))
    cmd = [sys.executable, "-m", "osbuild", "--libdir", str(osbuild.libdir),
           "--store", str(osbuild.store), str(path), "--json"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    outputs = [p.communicate() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    metas = [json.loads(out)["metadata"] for out, _ in outputs]
    assert metas[0] == metas[1] == metas[2]
    assert len(list((osbuild.store / "objects").iterdir())) == 1


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_during_a_stage_cleans_up(osbuild: Osbuild, sig: int) -> None:
    manifest = {"version": "2", "pipelines": [{"name": "os", "stages": [
        stage("test.metadata", file="a"), stage("test.metadata", file="b", sleep=60)]}]}
    path = osbuild.workdir / "m.json"
    path.write_text(json.dumps(manifest))
    cmd = [sys.executable, "-m", "osbuild", "--libdir", str(osbuild.libdir),
           "--store", str(osbuild.store), str(path), "--checkpoint", "*"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if "org.osbuild.test.metadata" in line and "running" in line and "ran" not in line:
            if (osbuild.store / "objects").exists() and any((osbuild.store / "objects").iterdir()):
                break
    time.sleep(0.5)
    start = time.monotonic()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - start < 10
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert len(list((osbuild.store / "objects").iterdir())) == 1  # only the checkpoint
    assert store_tmp_is_empty(osbuild)
    leftover = subprocess.run(["pgrep", "-f", str(osbuild.libdir) + "/stages"],
                              capture_output=True, text=True).stdout
    assert not leftover
    again = osbuild.build_json({"version": "2", "pipelines": [{"name": "os", "stages": [
        stage("test.metadata", file="a"), stage("test.metadata", file="b")]}]})
    assert [s["cached"] for s in again["pipelines"]["os"]["stages"]] == [True, False]


def test_json_seq_monitor_records(osbuild: Osbuild) -> None:
    manifest = {"version": "2", "pipelines": [{"name": "os", "stages": [
        stage("test.script", script="echo hello-from-stage")]}]}
    proc = osbuild.run(manifest, "--monitor", "JSONSeqMonitor")
    assert proc.stdout.startswith("\x1e")
    records = [json.loads(chunk) for chunk in proc.stdout.split("\x1e") if chunk.strip()]
    assert any(r.get("message") == "hello-from-stage" for r in records)
    results = [r for r in records if "result" in r and "id" in r["result"]]
    assert results[0]["result"]["success"] is True
    assert results[0]["context"]["pipeline"]["stage"]["name"] == "org.osbuild.test.script"
    assert "duration" in results[0] and results[0]["progress"]["done"] == 1
    assert records[-1]["result"]["success"] is True


def test_json_seq_monitor_keeps_stage_errors(osbuild: Osbuild) -> None:
    manifest = {"version": "2", "pipelines": [{"name": "os", "stages": [
        stage("test.script", script="echo boom-reason >&2; exit 4")]}]}
    proc = osbuild.run(manifest, "--monitor", "JSONSeqMonitor", check=False)
    assert proc.returncode == 1
    records = [json.loads(chunk) for chunk in proc.stdout.split("\x1e") if chunk.strip()]
    failed = [r for r in records
              if r.get("result", {}).get("success") is False and "id" in r["result"]]
    assert "boom-reason" in failed[0]["result"]["output"]
    assert "exit status 4" in records[-1]["result"]["error"]


def test_store_subcommand_lists_what_a_build_kept(osbuild: Osbuild) -> None:
    manifest = {"version": "2", "pipelines": [{"name": "os", "stages": [
        stage("test.metadata", file="a", content="x" * 10000)]}]}
    result = osbuild.build_json(manifest)
    object_id = result["pipelines"]["os"]["id"]
    store = [sys.executable, "-m", "osbuild", "store"]
    listing = subprocess.run([*store, "ls", "--json", "--store", str(osbuild.store)],
                             capture_output=True, text=True, check=True).stdout
    assert [e["id"] for e in json.loads(listing)] == [object_id]
    subprocess.run([*store, "prune", "--all", "--store", str(osbuild.store)],
                   capture_output=True, text=True, check=True)
    again = osbuild.build_json(manifest)
    assert again["pipelines"]["os"]["stages"][0]["cached"] is False


def test_cache_size_limit_evicts_least_recently_used(osbuild: Osbuild) -> None:
    def manifest(name: str) -> dict:
        return {"version": "2", "pipelines": [{"name": "os", "stages": [
            stage("test.script", script=f"head -c 600000 /dev/urandom > {name}")]}]}
    for name in ("one", "two", "three"):
        osbuild.run(manifest(name), "--cache-max-size", "1500K")
    objects = list((osbuild.store / "objects").iterdir())
    assert len(objects) == 2  # the oldest went to make room
    latest = osbuild.build_json(manifest("three"), "--cache-max-size", "1500K")
    assert latest["pipelines"]["os"]["stages"][0]["cached"] is True
    oldest = osbuild.build_json(manifest("one"), "--cache-max-size", "1500K")
    assert oldest["pipelines"]["os"]["stages"][0]["cached"] is False
    unlimited = osbuild.run(manifest("four"), "--cache-max-size", "unlimited")
    assert unlimited.returncode == 0
    bad = osbuild.run(manifest("four"), "--cache-max-size", "lots", check=False)
    assert bad.returncode == 1 and "--cache-max-size" in bad.stderr


def test_tree_input_copies_another_pipeline(osbuild: Osbuild) -> None:
    manifest = {"version": "2", "pipelines": [
        {"name": "os", "stages": [stage("test.metadata", file="from-os", content="os")]},
        {"name": "image", "stages": [{
            "type": "org.osbuild.copy",
            "inputs": {"tree": {"type": "org.osbuild.tree", "origin": "org.osbuild.pipeline",
                                "references": ["name:os"]}},
            "options": {"paths": [{"from": "input://tree/", "to": "tree:///"}]}}]},
    ]}
    result = osbuild.build_json(manifest, "--export", "image", "--output-directory",
                                str(osbuild.output))
    assert (osbuild.output / "image/from-os").read_text() == "os"
    assert list(result["pipelines"]) == ["os", "image"]
    # Changing the referenced pipeline changes the consumer's id: no stale cache.
    manifest["pipelines"][0]["stages"][0]["options"]["content"] = "changed"
    osbuild.run(manifest, "--export", "image", "--output-directory", str(osbuild.output))
    assert (osbuild.output / "image/from-os").read_text() == "changed"


def test_only_stages_that_declare_it_get_the_network(osbuild: Osbuild, server) -> None:
    url = server.add("/ping", b"pong")
    fetch = (f"python3 -c \"import urllib.request as u; "
             f"print(u.urlopen('{url}', timeout=5).read().decode())\"")
    manifest = {"version": "2", "pipelines": [{"name": "os", "stages": [
        stage("test.netscript", script=fetch),
        stage("test.script", script=fetch + " || echo no-network", check=False)]}]}
    result = osbuild.build_json(manifest)
    stages_ = result["pipelines"]["os"]["stages"]
    assert stages_[0]["metadata"]["stdout"].strip() == "pong"
    assert stages_[1]["metadata"]["stdout"].strip() == "no-network"
