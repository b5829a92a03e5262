"""Everything the report reads from an OS tree, without running anything from it.

Each reader takes a Tree (chroot-like, see treeview) and returns the report
keys it knows about, or nothing when the tree lacks the file: a key that is
absent means "not there", never "empty". A reader that could not look (its
tool failed, a file was unreadable) raises CouldNotLook or leaves the failure
in the Tree, and the report's "errors" name it (see failures). Each reader is
a row of report.TREE_READERS, which says what "errors" call it. Key names are
upstream image-info's; Debian's own files (dpkg status, /etc/default/*, apt
sources) add keys.

systemd's enablement state is computed from the unit symlinks and [Install]
sections, as `systemctl list-unit-files` would, so no systemd is needed and
nothing from the tree is executed. The only tool run is rpm (against the
tree's rpmdb with --dbpath), and only when the tree has an rpmdb; when it
fails, or is not installed here, the report's "errors" say so (see failures).
"""

import re
import shlex
from collections.abc import Callable
from typing import Any
from xml.etree import ElementTree

import yaml

from osbuild.image_info import arch
from osbuild.image_info.failures import CouldNotLook, run
from osbuild.image_info.treeview import Tree

DPKG_STATUS = "var/lib/dpkg/status"
# dpkg's architectures, native first; dpkg writes the file once a foreign one is added.
DPKG_ARCH = "var/lib/dpkg/arch"
DPKG_ARCH_NATIVE = "var/lib/dpkg/arch-native"  # newer dpkg: the native one on its own
PROGRAMS = "usr/bin"  # whose ELF headers say what the userspace was built for
RPMDB_DIRS = ("usr/lib/sysimage/rpm", "var/lib/rpm")
UNIT_DIRS = ("etc/systemd/system", "usr/lib/systemd/system", "lib/systemd/system")
UNIT_SUFFIXES = (".service", ".socket", ".timer", ".path", ".target", ".mount",
                 ".automount", ".swap", ".slice", ".scope", ".device")
DROPIN_DIRS = {
    "sysctl.d": ("etc/sysctl.d", "usr/lib/sysctl.d", "lib/sysctl.d"),
    "modprobe": ("etc/modprobe.d", "usr/lib/modprobe.d", "lib/modprobe.d"),
    "tmpfiles.d": ("etc/tmpfiles.d", "usr/lib/tmpfiles.d"),
    "udev-rules": ("etc/udev/rules.d",),
}
# Files whose SELinux label the report shows when the tree has labels at all.
LABELLED_FILES = (
    "/etc/passwd", "/etc/shadow", "/etc/group", "/etc/fstab", "/etc/hostname",
    "/etc/machine-id", "/etc/os-release", "/etc/selinux/config", "/etc/ssh/sshd_config",
    "/boot/grub/grub.cfg", "/root", "/home", "/usr/bin/bash", "/usr/sbin/sshd",
)
FIREWALLD_ZONES = ("etc/firewalld/zones", "usr/lib/firewalld/zones")
# What the readers here open; backends that copy trees out (tarball, libguestfs) copy these.
PATHS = (
    "etc", "usr/lib/os-release", *UNIT_DIRS[1:], DPKG_STATUS, DPKG_ARCH, DPKG_ARCH_NATIVE,
    PROGRAMS, *RPMDB_DIRS, FIREWALLD_ZONES[1],
    *(d for dirs in DROPIN_DIRS.values() for d in dirs if not d.startswith("etc/")),
)
# sshd/ssh keywords that may be given many times and then all apply.
SSH_MULTI = {"hostkey", "acceptenv", "subsystem", "listenaddress", "port", "hostcertificate",
             "setenv", "identityfile", "localforward", "remoteforward", "sendenv",
             "certificatefile", "dynamicforward"}


def _assignments(text: str) -> dict[str, str]:
    """KEY=value lines as sh reads them (os-release, locale.conf, /etc/default/*)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.strip().removeprefix("export ").strip()
        try:
            words = shlex.split(value, comments=True)
        except ValueError:
            words = [value.strip().strip("\"'")]
        values[key] = " ".join(words)
    return values


def _content_lines(text: str, keep: Callable[[str], bool] | None = None) -> list[str]:
    """Non-empty lines without comments; `keep` rescues comment-like lines (#include)."""
    lines = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#") and not (keep and keep(line)):
            continue
        lines.append(line)
    return lines


def os_release(tree: Tree) -> dict[str, Any]:
    for path in ("etc/os-release", "usr/lib/os-release"):
        text = tree.read_text(path)
        if text is not None:
            return {"os-release": _assignments(text)}
    return {}


def packages(tree: Tree) -> dict[str, Any]:
    """Installed packages: from dpkg's status file, and from an rpmdb if there is one."""
    found: dict[str, Any] = {}
    status = tree.read_text(DPKG_STATUS)
    if status is not None:
        found["packages"] = _dpkg_packages(status)
    key = "packages-rpm" if "packages" in found else "packages"
    try:
        rpm = _rpm_packages(tree)
    except CouldNotLook as exc:
        raise CouldNotLook(exc.problems, found, key) from None
    if rpm is not None:
        found[key] = rpm
    return found


def _dpkg_packages(status: str) -> list[dict[str, str]]:
    packages = [{"name": f["Package"], "version": f.get("Version", ""),
                 "arch": f.get("Architecture", "")} for f in dpkg_installed(status)]
    return sorted(packages, key=lambda p: (p["name"], p["arch"]))


def dpkg_installed(status: str) -> list[dict[str, str]]:
    """dpkg's status paragraphs of the installed packages (what the report, the SBOM and
    --packages-verify list): not those removed with their config files left, or half
    installed."""
    return [fields for fields in deb822(status)
            if "Package" in fields and fields.get("Status", "").split()[-1:] == ["installed"]]


def _rpm_packages(tree: Tree) -> list[dict[str, str]] | None:
    """The rpmdb's packages (None: no rpmdb); CouldNotLook if rpm cannot list them."""
    dbdir = next((d for d in RPMDB_DIRS if tree.listdir(d)), None)
    if dbdir is None:
        return None
    host = tree.resolve(dbdir)
    query = "%{NAME}\t%|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}\t%{ARCH}\n"
    proc = run(["rpm", "--dbpath", str(host), "-qa", "--qf", query],
               f"rpm -qa of the rpmdb in /{dbdir}", text=True)
    packages = []
    for line in proc.stdout.splitlines():
        name, version, arch = (line.split("\t") + ["", ""])[:3]
        packages.append({"name": name, "version": version, "arch": arch})
    return sorted(packages, key=lambda p: (p["name"], p["arch"]))


def architecture(tree: Tree) -> dict[str, Any]:
    """What the userspace is built for: dpkg's architecture and the ELF machines in /usr/bin.

    Both, because they can disagree: a tree bootstrapped for one architecture
    with another's binaries copied in is a broken image worth seeing as such.
    """
    found: dict[str, Any] = {}
    dpkg = _dpkg_architecture(tree)
    if dpkg:
        found["dpkg"] = dpkg
    machines = arch.elf_machines(tree, PROGRAMS)
    if machines:
        found["elf"] = machines
    return {"architecture": found} if found else {}


def _dpkg_architecture(tree: Tree) -> str | None:
    # Without an arch file (no foreign architecture was ever added), the dpkg
    # package's own Architecture is the native one.
    for path in (DPKG_ARCH_NATIVE, DPKG_ARCH):
        listed = _content_lines(tree.read_text(path) or "")
        if listed:
            return listed[0]
    status = tree.read_text(DPKG_STATUS)
    if status is None:
        return None
    return next((p["arch"] for p in _dpkg_packages(status) if p["name"] == "dpkg"), None)


def identity(tree: Tree) -> dict[str, Any]:
    """machine-id, hostname, timezone, locale, keyboard."""
    found: dict[str, Any] = {}
    machine_id = tree.read_text("etc/machine-id")
    if machine_id is not None:
        found["machine-id"] = machine_id.strip()
    hostname = tree.read_text("etc/hostname")
    if hostname is not None:
        found["hostname"] = next(iter(_content_lines(hostname)), "")
    link = tree.readlink("etc/localtime")
    if link is not None and "zoneinfo/" in link:
        found["timezone"] = link.split("zoneinfo/", 1)[1]
    else:
        zone = tree.read_text("etc/timezone")  # Debian's older record of the zone
        if zone is not None and zone.strip():
            found["timezone"] = zone.strip()
    locale: dict[str, str] = {}
    for path in ("etc/default/locale", "etc/locale.conf"):
        locale.update(_assignments(tree.read_text(path) or ""))
    if locale:
        found["locale"] = locale
    keyboard: dict[str, str] = {}
    for path in ("etc/default/keyboard", "etc/vconsole.conf"):
        keyboard.update(_assignments(tree.read_text(path) or ""))
    if keyboard:
        found["keyboard"] = keyboard
    return found


def accounts(tree: Tree) -> dict[str, Any]:
    """fstab, passwd and groups: upstream's shapes (fields, sorted lines)."""
    found: dict[str, Any] = {}
    fstab = tree.read_text("etc/fstab")
    if fstab is not None:
        entries = []
        for line in _content_lines(fstab):
            fields = line.split()
            entries.append((fields + ["defaults", "0", "0"][len(fields) - 3:])[:6]
                           if len(fields) >= 3 else fields)
        found["fstab"] = sorted(entries)
    for key, path in (("passwd", "etc/passwd"), ("groups", "etc/group")):
        text = tree.read_text(path)
        if text is not None:
            found[key] = sorted(_content_lines(text))
    return found


def fstab_entries(text: str) -> list[tuple[str, str, str, str]]:
    """(source, mount point, type, options) of fstab, for mounting the other partitions."""
    entries = []
    for line in _content_lines(text):
        fields = line.split()
        if len(fields) >= 3:
            entries.append((fields[0], fields[1], fields[2],
                            fields[3] if len(fields) > 3 else "defaults"))
    return entries


def _install_section(text: str) -> dict[str, list[str]]:
    section = ""
    install: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Install]" and "=" in line:
            key, _, value = line.partition("=")
            install.setdefault(key.strip(), []).extend(value.split())
    return install


def _template(name: str) -> str:
    # getty@tty1.service is an instance of getty@.service, which systemctl lists.
    match = re.match(r"^([^@]+@)[^.]+(\..+)$", name)
    return match.group(1) + match.group(2) if match else name


def services(tree: Tree) -> dict[str, Any]:
    """services-enabled/-disabled/-masked and default-target, as systemctl would list them.

    Enabled: a unit some .wants/.requires/.upholds directory under
    /etc/systemd/system links to. Masked: linked to /dev/null in /etc. Disabled:
    a unit file whose [Install] section names a target or alias but that is
    neither enabled nor masked (units without one are "static", units with only
    Also= "indirect": systemctl lists neither as disabled).
    """
    etc = UNIT_DIRS[0]
    enabled: set[str] = set()
    for wants in tree.listdir(etc):
        if wants.endswith((".wants", ".requires", ".upholds")):
            for name in tree.listdir(f"{etc}/{wants}"):
                enabled.add(_template(name))
    masked = {name for name in tree.listdir(etc)
              if name.endswith(UNIT_SUFFIXES) and tree.readlink(f"{etc}/{name}") == "/dev/null"}
    seen: set[str] = set()
    disabled: set[str] = set()
    for directory in UNIT_DIRS:
        for name in tree.listdir(directory):
            if name in seen or not name.endswith(UNIT_SUFFIXES):
                continue
            seen.add(name)  # the first directory in the search path wins
            if tree.readlink(f"{directory}/{name}") is not None:
                continue  # an alias or a mask, not a unit file
            text = tree.read_text(f"{directory}/{name}")
            if text is None:
                continue
            install = _install_section(text)
            if any(install.get(k) for k in ("WantedBy", "RequiredBy", "UpheldBy", "Alias")):
                if name not in enabled and name not in masked:
                    disabled.add(name)
    if not seen and not enabled:
        return {}
    found: dict[str, Any] = {
        "services-enabled": sorted(enabled),
        "services-disabled": sorted(disabled),
    }
    if masked:
        found["services-masked"] = sorted(masked)
    for directory in UNIT_DIRS:
        link = tree.readlink(f"{directory}/default.target")
        if link is not None:
            found["default-target"] = link.rsplit("/", 1)[-1]
            break
    return found


def _ssh_effective(tree: Tree, path: str, host_blocks: bool) -> dict[str, Any] | None:
    """The keywords that apply globally, first value winning, Include followed.

    sshd and ssh take the first value they get for a keyword; conditional
    blocks (Match, and Host blocks other than `Host *` for ssh) do not apply
    to everyone and are left out.
    """
    if not tree.is_file(path):
        return None
    values: dict[str, Any] = {}
    names: dict[str, str] = {}
    visited: set[str] = set()

    def read(file: str, depth: int) -> None:
        if depth > 16 or file in visited:
            return
        visited.add(file)
        active = True
        for line in (tree.read_text(file) or "").splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = re.split(r"\s*=\s*|\s+", line, maxsplit=1)
            key = parts[0]
            value = " ".join(parts[1].split()) if len(parts) > 1 else ""
            lower = key.lower()
            if lower == "match" or (host_blocks and lower == "host"):
                active = host_blocks and lower == "host" and value.strip() == "*"
                continue
            if not active:
                continue
            if lower == "include":
                for pattern in value.split():
                    # Relative includes are relative to /etc/ssh for both files.
                    base = pattern if pattern.startswith("/") else "/etc/ssh/" + pattern
                    directory, _, glob = base.rpartition("/")
                    for name in tree.listdir(directory, glob):
                        read(f"{directory}/{name}".lstrip("/"), depth + 1)
                continue
            if lower in SSH_MULTI:
                names.setdefault(lower, key)
                values.setdefault(lower, []).append(value)
            elif lower not in values:
                names[lower] = key
                values[lower] = value

    read(path, 0)
    return {names[k]: v for k, v in values.items()}


def ssh(tree: Tree) -> dict[str, Any]:
    found = {}
    for key, path, host_blocks in (("sshd_config", "etc/ssh/sshd_config", False),
                                   ("ssh_config", "etc/ssh/ssh_config", True)):
        effective = _ssh_effective(tree, path, host_blocks)
        if effective is not None:
            found[key] = effective
    return found


def _is_include(line: str) -> bool:
    return line.startswith(("#include", "#includedir"))


def sudoers(tree: Tree) -> dict[str, Any]:
    files: dict[str, list[str]] = {}
    for path in ["etc/sudoers", *(f"etc/sudoers.d/{n}" for n in tree.listdir("etc/sudoers.d"))]:
        text = tree.read_text(path)
        if text is not None:
            files["/" + path] = _content_lines(text, _is_include)
    return {"sudoers": files} if files else {}


def dropins(tree: Tree) -> dict[str, Any]:
    """sysctl.d, modprobe, tmpfiles.d, udev-rules: {path: lines} per configuration file."""
    found: dict[str, Any] = {}
    for key, directories in DROPIN_DIRS.items():
        files: dict[str, list[str]] = {}
        seen = set()
        for directory in directories:
            host = tree.resolve(directory)
            if host is None or host in seen:
                continue  # lib/ is usr/lib/ on merged-/usr systems
            seen.add(host)
            for name in tree.listdir(directory):
                if name.endswith((".conf", ".rules")):
                    text = tree.read_text(f"{directory}/{name}")
                    if text is not None:
                        files[f"/{directory}/{name}"] = _content_lines(text)
        if files:
            found[key] = files
    return found


def cloud_init(tree: Tree) -> dict[str, Any]:
    files: dict[str, Any] = {}
    drop_ins = tree.listdir("etc/cloud/cloud.cfg.d", "*.cfg")
    paths = ["etc/cloud/cloud.cfg", *(f"etc/cloud/cloud.cfg.d/{n}" for n in drop_ins)]
    for path in paths:
        text = tree.read_text(path)
        if text is None:
            continue
        try:
            files["/" + path] = yaml.safe_load(text)
        except yaml.YAMLError:
            files["/" + path] = _content_lines(text)
    return {"cloud-init": files} if files else {}


def chrony(tree: Tree) -> dict[str, Any]:
    """Directives of chrony's configuration, includes and source directories followed."""
    main = next((p for p in ("etc/chrony/chrony.conf", "etc/chrony.conf") if tree.is_file(p)), None)
    if main is None:
        return {}
    directives: dict[str, list[str]] = {}

    def read(path: str, depth: int) -> None:
        if depth > 8:
            return
        for line in _content_lines(tree.read_text(path) or ""):
            if line[0] in "!;%":
                continue
            key, _, value = line.partition(" ")
            value = value.strip()
            if key in ("include", "confdir", "sourcedir"):
                suffix = ".sources" if key == "sourcedir" else ".conf"
                for item in value.split():
                    if key == "include":
                        directory, _, glob = item.rpartition("/")
                    else:
                        directory, glob = item, "*" + suffix
                    for name in tree.listdir(directory, glob):
                        read(f"{directory}/{name}".lstrip("/"), depth + 1)
            directives.setdefault(key, []).append(value)

    read(main, 0)
    return {"chrony": directives}


def deb822(text: str) -> list[dict[str, str]]:
    """deb822 paragraphs (apt sources, dpkg's status, DEP-5): field -> value, continuation
    lines joined with newlines, as they are."""
    stanzas = []
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            if line.startswith("#"):
                continue
            if line[:1] in (" ", "\t") and key is not None:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                key = key.strip()
                fields[key] = value.strip()
        if fields:
            stanzas.append(fields)
    return stanzas


def apt_sources(tree: Tree) -> dict[str, Any]:
    files: dict[str, Any] = {}
    paths = ["etc/apt/sources.list",
             *(f"etc/apt/sources.list.d/{n}" for n in tree.listdir("etc/apt/sources.list.d"))]
    for path in paths:
        text = tree.read_text(path)
        if text is None:
            continue
        if path.endswith(".sources"):
            files["/" + path] = deb822(text)
        elif path.endswith(".list"):
            files["/" + path] = _content_lines(text)
    return {"apt-sources": files} if files else {}


def selinux(tree: Tree) -> dict[str, Any]:
    """The SELinux configuration, and the labels of key files when the tree has labels."""
    found: dict[str, Any] = {}
    config = tree.read_text("etc/selinux/config")
    if config is not None:
        found["config"] = _assignments(config)
    labels = {}
    for path in LABELLED_FILES:
        label = tree.label(path)
        if label is not None:
            labels[path] = label
    if labels:
        found["labels"] = labels
    return {"selinux": found} if found else {}


def firewall(tree: Tree) -> dict[str, Any]:
    """firewall-enabled: the services firewalld's default zone allows (upstream's key)."""
    conf = tree.read_text("etc/firewalld/firewalld.conf")
    if conf is None:
        return {}
    zone = _assignments(conf).get("DefaultZone") or "public"
    for directory in FIREWALLD_ZONES:
        data = tree.read_bytes(f"{directory}/{zone}.xml")
        if data is None:
            continue
        try:
            root = ElementTree.fromstring(data)
        except ElementTree.ParseError as exc:
            raise CouldNotLook([f"/{directory}/{zone}.xml: {exc}"]) from None
        return {"firewall-enabled": sorted(s.get("name", "") for s in root.iter("service"))}
    return {}


def kernel_cmdline(tree: Tree) -> dict[str, Any]:
    text = tree.read_text("etc/kernel/cmdline")
    return {"kernel-cmdline": " ".join(text.split())} if text is not None else {}
