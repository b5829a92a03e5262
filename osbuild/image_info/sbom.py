"""image-info --sbom spdx|cyclonedx: an SBOM of the packages an image has installed.

Each dpkg package becomes an SPDX package with its version, its
architecture and distribution in a purl, its source package, and the license
its Debian copyright file declares when that file is machine-readable (DEP-5).
DEP-5's short names are mostly not SPDX identifiers ("GPL-2+", "Expat"): the
ones that mean an SPDX license are translated, any other becomes a
LicenseRef of that package with the file's text for it. When the build's
metadata (`osbuild --json`) is given, each package also gets the sha256 of the
.deb it was installed from. The SPDX 2.3 document is made, validated and
written with spdx-tools, the SPDX project's own library; the CycloneDX 1.6 one
says the same with cyclonedx-python-lib, CycloneDX's (both imported only for
--sbom).
"""

import datetime
import hashlib
import json
import os
import re
import uuid
from typing import Any
from urllib.parse import quote

from osbuild.image_info import ImageInfoError
from osbuild.image_info.tree import DPKG_STATUS, deb822, dpkg_installed
from osbuild.image_info.treeview import Tree

PATHS = ("usr/share/doc",)  # where copyright files are (a tarball's part to extract)
DEP5_FORMAT = re.compile(r"^Format:\s*https?://www\.debian\.org/doc/packaging-manuals/"
                         r"copyright-format/1\.0/?\s*$", re.M)
# DEP-5 names that are an SPDX license under another name (lower case).
DEP5_NAMES = {"expat": "MIT", "mit/x11": "MIT", "artistic": "Artistic-1.0-Perl",
              "apache-2": "Apache-2.0", "psf-2": "PSF-2.0", "gpl": "GPL-1.0-or-later",
              "lgpl": "LGPL-2.0-or-later", "bsl-1": "BSL-1.0"}
GNU = re.compile(r"^(GPL|LGPL|AGPL|GFDL)-(\d+)(\.\d+)?(\+)?$", re.I)
NAMESPACE = "https://osbuild-deb.invalid"  # of document names: no one serves it
NOT_IN_ID = re.compile(r"[^A-Za-z0-9.-]+")


def packages(view: Tree) -> list[dict[str, Any]] | None:
    """What the SBOM says of each installed dpkg package, read from the tree (None: the
    tree has no dpkg database)."""
    status = view.read_text(DPKG_STATUS)
    if status is None:
        return None
    found = []
    for fields in dpkg_installed(status):
        name = fields["Package"]
        source, _, source_version = fields.get("Source", name).partition(" ")
        copyright_text = view.read_text(f"usr/share/doc/{name}/copyright")
        found.append({
            "name": name, "version": fields.get("Version", ""),
            "arch": fields.get("Architecture", ""),
            "source": source, "source-version": source_version.strip("()") or
            fields.get("Version", ""),
            "homepage": fields.get("Homepage"),
            "licenses": dep5_licenses(copyright_text) if copyright_text else None})
    return sorted(found, key=lambda p: (p["name"], p["arch"]))


def packages_report(view: Tree) -> dict[str, Any]:
    """The "sbom-packages" key: what packages() found; {} without a dpkg database."""
    found = packages(view)
    return {} if found is None else {"sbom-packages": found}


def dep5_licenses(text: str) -> dict[str, Any] | None:
    """The License lines of a DEP-5 file's Files paragraphs, and its stand-alone license
    texts (name -> text); None for a copyright file that is not machine-readable."""
    if not DEP5_FORMAT.search(text):
        return None
    declared: list[str] = []
    texts: dict[str, str] = {}
    for fields in deb822(text):
        if "License" not in fields:
            continue
        first, _, body = fields["License"].partition("\n")
        if "Files" in fields:
            if first and first not in declared:
                declared.append(first)
        elif body:  # " ." stands for an empty line
            texts[first] = "\n".join("" if line == "." else line for line in body.split("\n"))
    return {"declared": declared, "texts": texts}


def _spdx_ids() -> dict[str, str]:
    from spdx_tools.common.spdx_licensing import spdx_licensing
    return {s.lower(): s for s in spdx_licensing.known_symbols
            if not s.startswith("LicenseRef-")}


def _license(atom: str, package: str, known: dict[str, str], refs: dict[str, str]) -> str:
    """One DEP-5 license name as an SPDX identifier, or as the package's LicenseRef."""
    name = atom.strip()
    lower = name.lower()
    if lower in known:
        return known[lower]
    if lower in DEP5_NAMES:
        return DEP5_NAMES[lower]
    gnu = GNU.match(name)
    if gnu and " " not in name:
        family, major, minor, plus = gnu.groups()
        spdx = f"{family.upper()}-{major}{minor or '.0'}-{'or-later' if plus else 'only'}"
        if spdx.lower() in known:
            return known[spdx.lower()]
    ref = "-".join(NOT_IN_ID.sub("-", n.replace("+", "-plus")).strip("-")
                   for n in ("LicenseRef", package, name))
    refs[ref] = name
    return ref


def license_expression(lines: list[str], package: str, known: dict[str, str],
                       refs: dict[str, str]) -> str | None:
    """The SPDX expression for a package's DEP-5 License lines (all of them apply)."""
    parts = []
    for line in lines:
        # DEP-5: a comma groups ("A or B, and C" is "(A or B) and C"); "with X
        # exception" names an exception SPDX may not know: the whole name is a ref.
        expression = ""
        for group in line.split(","):
            tokens = [t for t in re.split(r"\s+(or|and)\s+|^(or|and)\s+", group.strip(),
                                          flags=re.I) if t]
            joiner = "AND"
            if tokens and tokens[0].lower() in ("or", "and"):
                joiner = tokens.pop(0).upper()
            terms = [t.upper() if t.lower() in ("or", "and")
                     else _license(t, package, known, refs) for t in tokens]
            if not terms:
                continue
            term = "(" + " ".join(terms) + ")"
            expression = f"({expression} {joiner} {term})" if expression else term
        if expression:
            parts.append(expression)
    return " AND ".join(parts) if parts else None


def checksums(metadata: dict[str, Any]) -> dict[tuple[str, str, str], str]:
    """(name, version, architecture) -> sha256 of every package a build's stages record."""
    found: dict[tuple[str, str, str], str] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if {"name", "version", "architecture", "sha256"} <= node.keys():
                found[(node["name"], node["version"], node["architecture"])] = node["sha256"]
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(metadata.get("metadata", metadata) if isinstance(metadata, dict) else metadata)
    return found


def _created() -> datetime.datetime:
    """SOURCE_DATE_EPOCH if set (the same document for the same image), else now."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch is not None:
        try:
            return datetime.datetime.fromtimestamp(int(epoch), datetime.UTC)
        except (ValueError, OverflowError):
            raise ImageInfoError(f"SOURCE_DATE_EPOCH={epoch!r} is not a time") from None
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def _purl(package: dict[str, Any], osr: dict[str, Any]) -> str:
    """The package URL of a Debian package: pkg:deb/<distro>/<name>@<version>?arch=&distro=."""
    distro = str(osr.get("ID") or "debian").lower()
    qualifier = f"&distro={quote(distro)}-{quote(osr['VERSION_ID'])}" \
        if osr.get("VERSION_ID") else ""
    return (f"pkg:deb/{quote(distro)}/{quote(package['name'])}@"
            f"{quote(package['version'], safe='')}?arch={quote(package['arch'])}{qualifier}")


def _homepage(package: dict[str, Any]) -> str | None:
    """The Homepage field when it is a URL (some are not)."""
    page = package["homepage"]
    return page if page and re.match(r"^https?://\S+$", page) else None


def spdx(report: dict[str, Any], found: list[dict[str, Any]], name: str,
         sums: dict[tuple[str, str, str], str] | None = None) -> str:
    """The SPDX 2.3 JSON document of an image's report and its packages' facts."""
    from spdx_tools.common.spdx_licensing import spdx_licensing
    from spdx_tools.spdx.jsonschema.document_converter import DocumentConverter
    from spdx_tools.spdx.model import (
        Actor,
        ActorType,
        Checksum,
        ChecksumAlgorithm,
        CreationInfo,
        Document,
        ExternalPackageRef,
        ExternalPackageRefCategory,
        ExtractedLicensingInfo,
        Package,
        PackagePurpose,
        Relationship,
        RelationshipType,
        SpdxNoAssertion,
    )
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    osr = report.get("os-release") or {}
    known = _spdx_ids()
    sums = sums or {}
    digest = hashlib.sha256(repr([(p["name"], p["version"], p["arch"]) for p in found])
                            .encode()).hexdigest()
    creation = CreationInfo(
        "SPDX-2.3", "SPDXRef-DOCUMENT", f"image-info SBOM of {name}",
        f"{NAMESPACE}/spdx/{quote(name)}-{digest}",
        [Actor(ActorType.TOOL, "image-info (osbuild-deb)")], _created())
    image = Package("SPDXRef-Image", name, SpdxNoAssertion(), files_analyzed=False,
                    primary_package_purpose=PackagePurpose.OPERATING_SYSTEM,
                    version=osr.get("VERSION_ID"))
    pkgs, relationships = [image], [
        Relationship("SPDXRef-DOCUMENT", RelationshipType.DESCRIBES, "SPDXRef-Image")]
    extracted: list[Any] = []
    used: set[str] = set()
    for p in found:
        spdx_id = "SPDXRef-deb-" + NOT_IN_ID.sub("-", f"{p['name']}-{p['arch']}")
        while spdx_id in used:
            spdx_id += "-"
        used.add(spdx_id)
        refs: dict[str, str] = {}
        licenses = p["licenses"]
        expression = license_expression(licenses["declared"], p["name"], known, refs) \
            if licenses else None
        for ref, dep5_name in refs.items():
            if ref not in {e.license_id for e in extracted}:
                text = licenses["texts"].get(dep5_name) if licenses else None
                extracted.append(ExtractedLicensingInfo(
                    ref, text or f"See /usr/share/doc/{p['name']}/copyright",
                    dep5_name, comment="a license name of the package's DEP-5 copyright"))
        purl = _purl(p, osr)
        sha256 = sums.get((p["name"], p["version"], p["arch"]))
        homepage = _homepage(p)
        pkgs.append(Package(
            spdx_id, p["name"], SpdxNoAssertion(), version=p["version"],
            files_analyzed=False, homepage=homepage,
            source_info=f"built from the source package {p['source']} {p['source-version']}",
            license_concluded=SpdxNoAssertion(),
            license_declared=spdx_licensing.parse(expression) if expression
            else SpdxNoAssertion(),
            copyright_text=SpdxNoAssertion(),
            checksums=[Checksum(ChecksumAlgorithm.SHA256, sha256)] if sha256 else [],
            external_references=[ExternalPackageRef(
                ExternalPackageRefCategory.PACKAGE_MANAGER, "purl", purl)]))
        relationships.append(Relationship("SPDXRef-Image", RelationshipType.CONTAINS, spdx_id))
    document = Document(creation, packages=pkgs, relationships=relationships,
                        extracted_licensing_info=extracted)
    problems = validate_full_spdx_document(document)
    if problems:
        raise AssertionError(f"the SBOM is not valid SPDX: {problems[0].validation_message}")
    converted = DocumentConverter().convert(document)
    # spdx-tools writes SPDX 2.2's "PACKAGE_MANAGER"; 2.3 spells it with a hyphen
    # (spdx/tools-python#813): what the 2.3 schema accepts.
    for package in converted.get("packages", []):
        for ref in package.get("externalRefs", []):
            ref["referenceCategory"] = ref["referenceCategory"].replace("_", "-")
    return json.dumps(converted, indent=2, sort_keys=True) + "\n"


def cyclonedx(report: dict[str, Any], found: list[dict[str, Any]], name: str,
              sums: dict[tuple[str, str, str], str] | None = None) -> str:
    """The same facts as a CycloneDX 1.6 JSON document, made and checked against
    CycloneDX's schema with cyclonedx-python-lib, the CycloneDX project's library."""
    from cyclonedx.model import (
        ExternalReference,
        ExternalReferenceType,
        HashAlgorithm,
        HashType,
        Property,
        XsUri,
    )
    from cyclonedx.model.bom import Bom, BomMetaData
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.model.license import LicenseExpression
    from cyclonedx.model.tool import ToolRepository
    from cyclonedx.output.json import JsonV1Dot6
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator
    from packageurl import PackageURL
    from spdx_tools.common.spdx_licensing import spdx_licensing

    osr = report.get("os-release") or {}
    known = _spdx_ids()
    sums = sums or {}
    digest = hashlib.sha256(repr([(p["name"], p["version"], p["arch"]) for p in found])
                            .encode()).hexdigest()
    image = Component(name=name, type=ComponentType.OPERATING_SYSTEM, bom_ref="image",
                      version=osr.get("VERSION_ID"))
    tool = Component(name="image-info (osbuild-deb)", type=ComponentType.APPLICATION)
    serial = uuid.uuid5(uuid.NAMESPACE_URL, f"{NAMESPACE}/cyclonedx/{quote(name)}-{digest}")
    bom = Bom(serial_number=serial, metadata=BomMetaData(
        component=image, timestamp=_created(), tools=ToolRepository(components=[tool])))
    for p in found:
        licenses = p["licenses"]
        expression = license_expression(licenses["declared"], p["name"], known, {}) \
            if licenses else None
        sha256 = sums.get((p["name"], p["version"], p["arch"]))
        homepage = _homepage(p)
        purl = _purl(p, osr)
        bom.components.add(Component(
            name=p["name"], version=p["version"], bom_ref=purl,
            purl=PackageURL.from_string(purl),
            licenses=[LicenseExpression(str(spdx_licensing.parse(expression)))]
            if expression else None,
            hashes=[HashType(alg=HashAlgorithm.SHA_256, content=sha256)] if sha256 else None,
            external_references=[ExternalReference(type=ExternalReferenceType.WEBSITE,
                                                   url=XsUri(homepage))] if homepage else None,
            properties=[Property(name="debian:source-package",
                                 value=f"{p['source']} {p['source-version']}")]))
    bom.register_dependency(image, list(bom.components))
    text = JsonV1Dot6(bom).output_as_string(indent=2)
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    if error is not None:
        raise AssertionError(f"the SBOM is not valid CycloneDX: {error}")
    return json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
