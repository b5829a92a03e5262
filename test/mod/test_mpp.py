"""osbuild-mpp: mpp-depsolve directives resolved against the real archive."""

import copy
import json
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import jsonschema
import pytest
import yaml

from osbuild import depsolve, formats, inputs, mpp

ROOT = Path(__file__).resolve().parent.parent.parent
REMOVED_KEYS = "/usr/share/keyrings/debian-archive-removed-keys.gpg"
# An unrelated item of the template's own: empty data, so its checksum is sha256("").
INLINE = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

TEMPLATE = {
    "version": "2",
    "mpp-vars": {"suite": "trixie", "architecture": "amd64"},
    "sources": {
        "org.osbuild.inline": {"items": {INLINE: {"encoding": "base64", "data": ""}}},
        "org.osbuild.curl": {"items": {"sha256:" + "f" * 64: {"url": "http://x.invalid/a"}}},
    },
    "pipelines": [
        {
            "name": "os",
            "source-epoch": 1700000000,
            "stages": [
                {
                    "type": "org.osbuild.debs",
                    "inputs": {
                        "packages": {
                            "type": "org.osbuild.files",
                            "origin": "org.osbuild.source",
                            "mpp-depsolve": {"packages": ["less"], "variant": "minbase"},
                        }
                    },
                },
                {"type": "org.osbuild.hostname", "options": {"hostname": "mpp-test"}},
            ],
        },
        {"name": "tar", "stages": [{"type": "org.osbuild.noop"}]},
    ],
}


def run_mpp(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "osbuild.mpp", *args], input=stdin,
                          capture_output=True, text=True)


def test_fills_references_and_sources(tmp_path):
    template = tmp_path / "template.yaml"
    template.write_text(yaml.safe_dump(TEMPLATE, sort_keys=False))
    output = tmp_path / "manifest.json"
    proc = run_mpp(str(template), str(output))
    assert proc.returncode == 0, proc.stderr
    text = output.read_text()
    assert text.endswith("}\n")
    manifest = json.loads(text)

    stage = manifest["pipelines"][0]["stages"][0]
    packages = stage["inputs"]["packages"]
    assert list(packages) == ["type", "origin", "references"]
    references = packages["references"]
    expected = depsolve.depsolve("trixie", "amd64", depsolve.host_mirror(),
                                 [depsolve.DEFAULT_KEYRING], ["less"])
    assert list(references) == list(expected.references())  # install order
    metadata = [r["metadata"] for r in references.values()]
    assert metadata == [{"name": p["name"], "version": p["version"], "essential": p["essential"]}
                        for p in expected.packages]
    assert metadata[0]["essential"] and not metadata[-1]["essential"]
    assert "less" in [m["name"] for m in metadata]

    items = manifest["sources"]["org.osbuild.curl"]["items"]
    assert list(items) == sorted(items)
    assert set(references) | {"sha256:" + "f" * 64} == set(items)
    assert items["sha256:" + "f" * 64] == {"url": "http://x.invalid/a"}
    assert list(manifest["sources"]) == ["org.osbuild.curl", "org.osbuild.inline"]

    # everything else is untouched, mpp-vars is gone
    rest, original = copy.deepcopy(manifest), copy.deepcopy(TEMPLATE)
    del original["mpp-vars"], original["pipelines"][0]["stages"][0]["inputs"]
    del rest["pipelines"][0]["stages"][0]["inputs"]
    original["sources"]["org.osbuild.curl"] = rest["sources"]["org.osbuild.curl"]
    assert rest == original
    assert list(manifest) == ["version", "sources", "pipelines"]

    # the engine accepts it; with no debs stage schema yet, only its structure is checked
    if (ROOT / "stages/org.osbuild.debs.meta.json").exists():
        inspect = subprocess.run([sys.executable, "-m", "osbuild", "--libdir", str(ROOT),
                                  "--inspect", str(output)], capture_output=True, text=True)
        assert inspect.returncode == 0, inspect.stderr
    else:
        loaded = formats.load(manifest, "org.osbuild.linux")
        assert loaded.version == "2"
        jsonschema.validate(references, inputs.SCHEMAS["org.osbuild.files"]["references"])


def test_one_apt_root_per_repository_set(monkeypatch):
    entered = []
    real_enter = depsolve.AptRoot.__enter__

    def counting_enter(self):
        entered.append((self.repos[0].suite, self.architecture))
        return real_enter(self)

    monkeypatch.setattr(depsolve.AptRoot, "__enter__", counting_enter)
    template = copy.deepcopy(TEMPLATE)
    second = copy.deepcopy(template["pipelines"][0]["stages"][0])
    second["inputs"]["packages"]["mpp-depsolve"] = {"packages": ["hostname"],
                                                    "variant": "essential"}
    template["pipelines"][1]["stages"].insert(0, second)
    with ExitStack() as stack:
        manifest = mpp.process(template, mpp.Depsolver(stack))
    assert entered == [("trixie", "amd64")]
    refs = [p["stages"][0]["inputs"]["packages"]["references"] for p in manifest["pipelines"]]
    assert all(r["metadata"]["essential"] for r in refs[1].values())
    assert set(refs[1]) < set(refs[0])
    assert "mpp-depsolve" not in json.dumps(manifest) and template["mpp-vars"]


def test_deterministic_output(tmp_path):
    template = json.dumps({**TEMPLATE, "mpp-vars": {**TEMPLATE["mpp-vars"], "suite": "bookworm"}})
    first, second = run_mpp("-", "-", stdin=template), run_mpp("-", "-", stdin=template)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    assert '"name": "less"' in first.stdout


def manifest_with(directive_place: str, directive: dict) -> str:
    template = copy.deepcopy(TEMPLATE)
    stage = template["pipelines"][0]["stages"][0]
    if directive_place == "options":
        stage["options"] = {"mpp-depsolve": directive}
    else:
        stage["inputs"]["packages"]["mpp-depsolve"] = directive
    return json.dumps(template)


@pytest.mark.parametrize("place,directive,code,message", [
    ("options", {"packages": ["less"]}, 2,
     "manifest.pipelines[0].stages[0].options.mpp-depsolve: unsupported here"),
    ("inputs", {"packages": ["less"], "colour": 1}, 2,
     "pipelines[0].stages[0].inputs.packages: request: Additional properties"),
    ("inputs", {"packages": ["no-such-pkg"]}, 1,
     "pipelines[0].stages[0].inputs.packages: unknown package 'no-such-pkg' in trixie/amd64"),
    ("inputs", {"packages": [], "keyrings": [REMOVED_KEYS]}, 1,
     "InRelease of trixie is not signed by the given keyring(s)"),
])
def test_errors(tmp_path, place, directive, code, message):
    output = tmp_path / "out.json"
    proc = run_mpp("-", str(output), stdin=manifest_with(place, directive))
    assert proc.returncode == code
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("osbuild-mpp: error: ")
    assert message in lines[0]
    assert not output.exists() and list(tmp_path.iterdir()) == []


def test_template_errors():
    proc = run_mpp("-", "-", stdin=json.dumps({"pipelines": []}))
    assert proc.returncode == 2 and "takes v2 manifests" in proc.stderr
    bad_vars = {**TEMPLATE, "mpp-vars": {"suite": "trixie", "name": "x"}}
    proc = run_mpp("-", "-", stdin=json.dumps(bad_vars))
    assert proc.returncode == 2 and "mpp-vars: must be an object" in proc.stderr
    proc = run_mpp("only-one-argument")
    assert proc.returncode == 2 and "osbuild-mpp: error:" in proc.stderr


def test_v1_directive_becomes_an_option_and_files_urls(tmp_path):
    template = {"pipeline": {
        "build": {"pipeline": {"stages": [{"name": "org.osbuild.debs", "options": {
            "packages": {"mpp-depsolve": {"suite": "bookworm", "architecture": "amd64",
                                          "variant": "essential", "packages": []}}}}]},
                  "runner": "org.osbuild.debian12"},
        "stages": [{"name": "org.osbuild.hostname", "options": {"hostname": "v1"}}]}}
    output = tmp_path / "manifest.json"
    proc = run_mpp("-", str(output), stdin=json.dumps(template))
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(output.read_text())
    packages = manifest["pipeline"]["build"]["pipeline"]["stages"][0]["options"]["packages"]
    urls = manifest["sources"]["org.osbuild.files"]["urls"]
    assert packages and all(p.startswith("sha256:") for p in packages)
    assert set(packages) == set(urls) and all(u.endswith(".deb") for u in urls.values())
    loaded = formats.load(manifest, "org.osbuild.debian12", ROOT)
    stage = loaded.pipelines["build"].stages[0]
    assert list(stage.inputs["packages"].references) == packages
