"""System configuration stages: hostname, timezone, locale, keymap, users,
groups, fstab, systemd.

Every stage runs for real in the sandbox on a small fake tree built here;
nothing reads or writes the host's /etc.
"""

import os
import stat
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from stagetest import load_meta, run_stage

EPOCH = 1_700_000_000  # 2023-11-14; day 19675 since 1970
EPOCH_DAY = EPOCH // 86400


def schema_errors(name: str, options: dict[str, Any]) -> list[str]:
    meta = load_meta(f"org.osbuild.{name}")
    validator = jsonschema.Draft202012Validator({"type": "object", **meta["schema"]})
    return [e.message for e in validator.iter_errors(options)]


def run(name: str, options: dict[str, Any], tree: Path, tmp_path: Path, **kwargs: Any):
    """Run a stage after checking its options are valid, as the engine would."""
    assert schema_errors(name, options) == [], options
    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)
    return run_stage(f"org.osbuild.{name}", options, tree, workdir, **kwargs)


def ok(result) -> None:
    assert result.returncode == 0, "\n".join(result.tail)


def failed_with(result, text: str) -> str:
    assert result.returncode != 0
    last = result.tail[-1]
    assert text in last, result.tail
    assert "Traceback" not in "\n".join(result.tail)
    return last


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    path = tmp_path / "tree"
    (path / "etc").mkdir(parents=True)
    return path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


# --- hostname ---------------------------------------------------------------


def test_hostname_writes_etc_hostname(tree: Path, tmp_path: Path) -> None:
    ok(run("hostname", {"hostname": "web-1.example.com"}, tree, tmp_path))
    assert (tree / "etc/hostname").read_text() == "web-1.example.com\n"
    assert mode(tree / "etc/hostname") == 0o644


def test_hostname_replaces_a_symlink_instead_of_writing_through_it(
    tree: Path, tmp_path: Path
) -> None:
    (tree / "usr").mkdir()
    (tree / "usr/target").write_text("untouched\n")
    (tree / "etc/hostname").symlink_to("../usr/target")
    ok(run("hostname", {"hostname": "debian"}, tree, tmp_path))
    assert not (tree / "etc/hostname").is_symlink()
    assert (tree / "etc/hostname").read_text() == "debian\n"
    assert (tree / "usr/target").read_text() == "untouched\n"


def test_hostname_creates_etc_when_missing(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    ok(run("hostname", {"hostname": "h"}, empty, tmp_path))
    assert (empty / "etc/hostname").read_text() == "h\n"


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"hostname": ""},
        {"hostname": "under_score"},
        {"hostname": "-leading"},
        {"hostname": "trailing-"},
        {"hostname": "dot."},
        {"hostname": "a..b"},
        {"hostname": "x" * 65},
        {"hostname": "a" * 64 + ".b"},
        {"hostname": "new\nline"},
        {"hostname": "ok", "extra": 1},
    ],
)
def test_hostname_schema_rejects(options: dict[str, Any]) -> None:
    assert schema_errors("hostname", options)


def test_hostname_stage_checks_the_name_itself(tree: Path, tmp_path: Path) -> None:
    # The engine validates first; the stage still refuses a name it cannot write.
    result = run_stage("org.osbuild.hostname", {"hostname": "bad name"}, tree, tmp_path)
    failed_with(result, "invalid hostname")
    assert not (tree / "etc/hostname").exists()


# --- timezone ---------------------------------------------------------------


def zoneinfo(tree: Path) -> Path:
    zi = tree / "usr/share/zoneinfo"
    (zi / "Europe").mkdir(parents=True)
    (zi / "Etc").mkdir()
    berlin = Path("/usr/share/zoneinfo/Europe/Berlin")
    data = berlin.read_bytes() if berlin.is_file() else b"TZif2 fake Berlin\n"
    (zi / "Europe/Berlin").write_bytes(data)
    (zi / "Etc/UTC").write_bytes(b"TZif2 fake UTC\n")
    # Absolute symlinks must resolve inside the tree, not on the host.
    (zi / "UTC").symlink_to("/usr/share/zoneinfo/Etc/UTC")
    return zi


def test_timezone_links_localtime_and_writes_etc_timezone(tree: Path, tmp_path: Path) -> None:
    zoneinfo(tree)
    (tree / "etc/localtime").write_text("old file\n")
    ok(run("timezone", {"zone": "Europe/Berlin"}, tree, tmp_path))
    assert os.readlink(tree / "etc/localtime") == "../usr/share/zoneinfo/Europe/Berlin"
    assert (tree / "etc/localtime").resolve() == (tree / "usr/share/zoneinfo/Europe/Berlin")
    assert (tree / "etc/timezone").read_text() == "Europe/Berlin\n"


def test_timezone_follows_symlinks_inside_the_tree(tree: Path, tmp_path: Path) -> None:
    zoneinfo(tree)
    ok(run("timezone", {"zone": "UTC"}, tree, tmp_path))
    assert os.readlink(tree / "etc/localtime") == "../usr/share/zoneinfo/UTC"
    assert (tree / "etc/timezone").read_text() == "UTC\n"


def test_timezone_missing_zone_fails_clearly(tree: Path, tmp_path: Path) -> None:
    zoneinfo(tree)
    result = run("timezone", {"zone": "America/New_York"}, tree, tmp_path)
    failed_with(result, "time zone America/New_York not found in the tree's /usr/share/zoneinfo")
    assert not os.path.lexists(tree / "etc/localtime")


def test_timezone_directory_is_not_a_zone(tree: Path, tmp_path: Path) -> None:
    zoneinfo(tree)
    failed_with(run("timezone", {"zone": "Europe"}, tree, tmp_path), "not found")


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"zone": ""},
        {"zone": "../../etc/passwd"},
        {"zone": "/Europe/Berlin"},
        {"zone": "Europe/Berlin/"},
        {"zone": "America/New York"},
        {"zone": "Europe/Berlin", "utc": True},
    ],
)
def test_timezone_schema_rejects(options: dict[str, Any]) -> None:
    assert schema_errors("timezone", options)


# --- locale -----------------------------------------------------------------


def test_locale_writes_systemd_and_debian_files(tree: Path, tmp_path: Path) -> None:
    (tree / "etc/locale.conf").write_text("LANG=C\nLC_TIME=de_DE.UTF-8\n")
    ok(run("locale", {"language": "en_US.UTF-8"}, tree, tmp_path))
    assert (tree / "etc/locale.conf").read_text() == "LANG=en_US.UTF-8\n"
    assert (tree / "etc/default/locale").read_text() == "LANG=en_US.UTF-8\n"
    assert mode(tree / "etc/default") == 0o755


@pytest.mark.parametrize("language", ["C.UTF-8", "POSIX", "sr_RS.UTF-8@latin", "de_DE@euro"])
def test_locale_accepts_real_locale_names(language: str) -> None:
    assert schema_errors("locale", {"language": language}) == []


@pytest.mark.parametrize(
    "options",
    [{}, {"language": ""}, {"language": "en US"}, {"language": "../x"}, {"language": "a\nb"}],
)
def test_locale_schema_rejects(options: dict[str, Any]) -> None:
    assert schema_errors("locale", options)


# --- keymap -----------------------------------------------------------------


def test_keymap_console_only(tree: Path, tmp_path: Path) -> None:
    ok(run("keymap", {"keymap": "de-latin1"}, tree, tmp_path))
    assert (tree / "etc/vconsole.conf").read_text() == "KEYMAP=de-latin1\n"
    assert not (tree / "etc/X11").exists()
    assert not (tree / "etc/default/keyboard").exists()


def test_keymap_with_font_and_x11(tree: Path, tmp_path: Path) -> None:
    options = {
        "keymap": "us",
        "font": "eurlatgr",
        "x11-keymap": {"layouts": ["us", "de"], "options": ["grp:alt_shift_toggle"]},
    }
    ok(run("keymap", options, tree, tmp_path))
    assert (tree / "etc/vconsole.conf").read_text() == "KEYMAP=us\nFONT=eurlatgr\n"
    xorg = (tree / "etc/X11/xorg.conf.d/00-keyboard.conf").read_text()
    assert xorg.splitlines()[1:] == [
        'Section "InputClass"',
        '        Identifier "system-keyboard"',
        '        MatchIsKeyboard "on"',
        '        Option "XkbLayout" "us,de"',
        '        Option "XkbOptions" "grp:alt_shift_toggle"',
        "EndSection",
    ]
    assert (tree / "etc/default/keyboard").read_text() == (
        'XKBMODEL="pc105"\n'
        'XKBLAYOUT="us,de"\n'
        'XKBVARIANT=""\n'
        'XKBOPTIONS="grp:alt_shift_toggle"\n'
        "\n"
        'BACKSPACE="guess"\n'
    )


def test_keymap_x11_without_options(tree: Path, tmp_path: Path) -> None:
    ok(run("keymap", {"keymap": "fr", "x11-keymap": {"layouts": ["fr"]}}, tree, tmp_path))
    xorg = (tree / "etc/X11/xorg.conf.d/00-keyboard.conf").read_text()
    assert 'Option "XkbLayout" "fr"' in xorg
    assert "XkbOptions" not in xorg
    assert 'XKBOPTIONS=""\n' in (tree / "etc/default/keyboard").read_text()


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"font": "eurlatgr"},
        {"keymap": ""},
        {"keymap": "us", "x11-keymap": {}},
        {"keymap": "us", "x11-keymap": {"layouts": []}},
        {"keymap": "us", "x11-keymap": {"layouts": ["u"]}},
        {"keymap": "us", "x11-keymap": {"layouts": ['us" Option']}},
        {"keymap": "us", "x11-keymap": {"layouts": ["us"], "variants": ["intl"]}},
        {"keymap": "us", "x11-keymap": {"layouts": ["us"], "options": "ctrl:nocaps"}},
        {"keymap": "us\nFONT=x"},
    ],
)
def test_keymap_schema_rejects(options: dict[str, Any]) -> None:
    assert schema_errors("keymap", options)


# --- fstab ------------------------------------------------------------------


def test_fstab_lines(tree: Path, tmp_path: Path) -> None:
    (tree / "etc/fstab").write_text("# old\n/dev/sda1 / ext4 defaults 0 1\n")
    options = {
        "filesystems": [
            {
                "uuid": "6e4ff95f-f662-45ee-a82a-bdf44a2d0b75",
                "vfs_type": "ext4",
                "path": "/",
                "options": "defaults,noatime",
                "passno": 1,
            },
            {"label": "boot", "vfs_type": "ext4", "path": "/boot", "passno": 2},
            {
                "partuuid": "7B77-95E7",
                "vfs_type": "vfat",
                "path": "/boot/efi",
                "options": "umask=0077,shortname=winnt",
                "passno": 2,
            },
            {"partlabel": "data", "vfs_type": "xfs", "path": "/srv/my data", "freq": 1},
            {"device": "tmpfs", "vfs_type": "tmpfs", "path": "/tmp", "options": "size=1G"},
            {"device": "/dev/vdb1", "path": "none", "vfs_type": "swap"},
            {"device": "/dev/vdc1", "path": "/mnt"},
        ]
    }
    ok(run("fstab", options, tree, tmp_path))
    assert (tree / "etc/fstab").read_text().splitlines() == [
        "UUID=6e4ff95f-f662-45ee-a82a-bdf44a2d0b75 / ext4 defaults,noatime 0 1",
        "LABEL=boot /boot ext4 defaults 0 2",
        "PARTUUID=7B77-95E7 /boot/efi vfat umask=0077,shortname=winnt 0 2",
        "PARTLABEL=data /srv/my\\040data xfs defaults 1 0",
        "tmpfs /tmp tmpfs size=1G 0 0",
        "/dev/vdb1 none swap defaults 0 0",
        "/dev/vdc1 /mnt none defaults 0 0",
    ]


def test_fstab_empty_list_gives_empty_file(tree: Path, tmp_path: Path) -> None:
    (tree / "etc/fstab").write_text("/dev/sda1 / ext4 defaults 0 1\n")
    ok(run("fstab", {"filesystems": []}, tree, tmp_path))
    assert (tree / "etc/fstab").read_text() == ""


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"filesystems": [{"path": "/", "vfs_type": "ext4"}]},
        {"filesystems": [{"uuid": "abcd", "label": "root", "path": "/"}]},
        {"filesystems": [{"device": "/dev/vda1", "partuuid": "ab-01", "path": "/"}]},
        {"filesystems": [{"uuid": "abcd", "vfs_type": "ext4"}]},
        {"filesystems": [{"uuid": "not a uuid", "path": "/"}]},
        {"filesystems": [{"uuid": "abcd", "path": "/", "passno": -1}]},
        {"filesystems": [{"uuid": "abcd", "path": "/", "freq": "0"}]},
        {"filesystems": [{"uuid": "abcd", "path": "/", "subvol": "root"}]},
        {"filesystems": [{"label": "a\nb", "path": "/"}]},
    ],
)
def test_fstab_schema_rejects(options: dict[str, Any]) -> None:
    assert schema_errors("fstab", options)


def test_fstab_stage_refuses_two_specs(tree: Path, tmp_path: Path) -> None:
    options = {"filesystems": [{"uuid": "abcd", "label": "x", "path": "/"}]}
    result = run_stage("org.osbuild.fstab", options, tree, tmp_path)
    failed_with(result, "needs exactly one of uuid, label, partuuid, partlabel, device")


# --- accounts: users and groups --------------------------------------------

PASSWD = """\
root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
tester:x:1000:1000:Test User:/home/tester:/bin/sh
"""
GROUP = """\
root:x:0:
daemon:x:1:
sudo:x:27:
users:x:100:
nogroup:x:65534:
tester:x:1000:
"""
SHADOW = """\
root:*:19000:0:99999:7:::
daemon:*:19000:0:99999:7:::
nobody:*:19000:0:99999:7:::
tester:!:19000:0:99999:7:::
"""
GSHADOW = """\
root:*::
daemon:*::
sudo:*::
users:*::
nogroup:*::
tester:!::
"""
# Debian's values for what the shadow tools read from login.defs.
LOGIN_DEFS = """\
UMASK 022
HOME_MODE 0750
UID_MIN 1000
UID_MAX 60000
GID_MIN 1000
GID_MAX 60000
USERGROUPS_ENAB yes
ENCRYPT_METHOD SHA512
PASS_MAX_DAYS 99999
PASS_MIN_DAYS 0
PASS_WARN_AGE 7
"""
HASH_ALICE = "$6$saltsalt$Q1bpxd0WMhNZAGE9O8VFMZZdhSsa0Rs9kvTKHsqN/8cxgX8V0Pqq1lUHaGpTbM6Du9pUUa9l3"
HASH_ROOT = "$y$j9T$8Bd0Zxu7mTrYUhFR1tBzZ.$dD2ZXYwbtZuISs8jxNhOL1Mnb4E6NaJR8O1Z4P8sF0B"
KEY_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE0lq8OQ5Cd3CzXyHJfLDWa8nTYZOsEz8tmQTLMi0d3h alice@a"
KEY_B = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDtJfB9LrNs3l54MShxkOQVsmzE5x3yfmrIgRWvEdzfW alice@b"


def accounts_tree(base: Path) -> Path:
    """A tree with Debian-like account databases and nothing else of note."""
    etc = base / "etc"
    (etc / "skel").mkdir(parents=True)
    (etc / "skel/.profile").write_text("# skel profile\n")
    for name, content, file_mode in (
        ("passwd", PASSWD, 0o644),
        ("group", GROUP, 0o644),
        ("shadow", SHADOW, 0o640),
        ("gshadow", GSHADOW, 0o640),
        ("login.defs", LOGIN_DEFS, 0o644),
    ):
        (etc / name).write_text(content)
        (etc / name).chmod(file_mode)
    (base / "root").mkdir(mode=0o700)
    (base / "home").mkdir()
    return base


def lines_of(tree: Path, db: str) -> dict[str, str]:
    text = (tree / "etc" / db).read_text()
    return {line.split(":", 1)[0]: line for line in text.splitlines()}


@pytest.fixture
def accounts(tmp_path: Path) -> Path:
    return accounts_tree(tmp_path / "tree")


def test_users_creates_a_user_with_password_and_key(accounts: Path, tmp_path: Path) -> None:
    options = {
        "users": {
            "alice": {
                "uid": 1234,
                "groups": ["sudo", "users"],
                "description": "Alice Example",
                "shell": "/bin/bash",
                "password": HASH_ALICE,
                "key": KEY_A,
                "keys": [KEY_B, KEY_A],
                "expiredate": 20000,
            }
        }
    }
    ok(run("users", options, accounts, tmp_path, source_epoch=EPOCH))
    assert lines_of(accounts, "passwd")["alice"] == (
        "alice:x:1234:1234:Alice Example:/home/alice:/bin/bash"
    )
    assert lines_of(accounts, "shadow")["alice"] == (
        f"alice:{HASH_ALICE}:{EPOCH_DAY}:0:99999:7::20000:"
    )
    group = lines_of(accounts, "group")
    assert group["alice"] == "alice:x:1234:"
    assert group["sudo"] == "sudo:x:27:alice"
    assert group["users"] == "users:x:100:alice"
    # Untouched accounts keep their exact lines.
    assert lines_of(accounts, "shadow")["root"] == "root:*:19000:0:99999:7:::"
    assert mode(accounts / "etc/shadow") == 0o640

    home = accounts / "home/alice"
    assert (home.stat().st_uid, home.stat().st_gid) == (1234, 1234)
    assert mode(home) == 0o750  # HOME_MODE from the tree's login.defs
    assert (home / ".profile").read_text() == "# skel profile\n"
    ssh = home / ".ssh"
    keys = ssh / "authorized_keys"
    assert mode(ssh) == 0o700 and mode(keys) == 0o600
    assert (ssh.stat().st_uid, ssh.stat().st_gid) == (1234, 1234)
    assert (keys.stat().st_uid, keys.stat().st_gid) == (1234, 1234)
    assert keys.read_text() == f"{KEY_A}\n{KEY_B}\n"


def test_users_modifies_existing_users(accounts: Path, tmp_path: Path) -> None:
    options = {
        "users": {
            "root": {"password": HASH_ROOT},
            "tester": {"shell": "/bin/bash", "groups": ["sudo"], "description": "Renamed"},
        }
    }
    ok(run("users", options, accounts, tmp_path, source_epoch=EPOCH))
    shadow = lines_of(accounts, "shadow")
    assert shadow["root"] == f"root:{HASH_ROOT}:{EPOCH_DAY}:0:99999:7:::"
    # Only the password change moves the last-change day.
    assert shadow["tester"] == "tester:!:19000:0:99999:7:::"
    passwd = lines_of(accounts, "passwd")
    assert passwd["root"] == "root:x:0:0:root:/root:/bin/bash"
    assert passwd["tester"] == "tester:x:1000:1000:Renamed:/home/tester:/bin/bash"
    assert lines_of(accounts, "group")["sudo"] == "sudo:x:27:tester"
    # A plain modification creates no home directory.
    assert not (accounts / "home/tester").exists()

    # Groups are replaced, not added to.
    ok(run("users", {"users": {"tester": {"groups": ["users"]}}}, accounts, tmp_path))
    assert lines_of(accounts, "group")["sudo"] == "sudo:x:27:"
    assert lines_of(accounts, "group")["users"] == "users:x:100:tester"


def test_users_key_for_existing_user_creates_home(accounts: Path, tmp_path: Path) -> None:
    ok(run("users", {"users": {"tester": {"key": KEY_A}}}, accounts, tmp_path))
    home = accounts / "home/tester"
    assert mode(home) == 0o700
    assert (home.stat().st_uid, home.stat().st_gid) == (1000, 1000)
    keys = home / ".ssh/authorized_keys"
    assert keys.read_text() == f"{KEY_A}\n"
    # A second run adds only what is missing.
    ok(run("users", {"users": {"tester": {"keys": [KEY_A, KEY_B]}}}, accounts, tmp_path))
    assert keys.read_text() == f"{KEY_A}\n{KEY_B}\n"


def test_users_root_key_and_new_home(accounts: Path, tmp_path: Path) -> None:
    options = {
        "users": {
            "root": {"key": KEY_B},
            "tester": {"home": "/srv/tester", "force_password_reset": True},
        }
    }
    ok(run("users", options, accounts, tmp_path, source_epoch=EPOCH))
    keys = accounts / "root/.ssh/authorized_keys"
    assert keys.read_text() == f"{KEY_B}\n"
    assert (keys.stat().st_uid, keys.stat().st_gid) == (0, 0)
    assert lines_of(accounts, "passwd")["tester"].endswith(":/srv/tester:/bin/sh")
    assert (accounts / "srv/tester").is_dir()
    assert (accounts / "srv/tester").stat().st_uid == 1000
    assert lines_of(accounts, "shadow")["tester"] == "tester:!:0:0:99999:7:::"


def test_users_home_symlink_stays_inside_the_tree(accounts: Path, tmp_path: Path) -> None:
    (accounts / "var/home/tester").mkdir(parents=True)
    (accounts / "home").rmdir()
    (accounts / "home").symlink_to("/var/home")  # as on ostree systems
    ok(run("users", {"users": {"tester": {"key": KEY_A}}}, accounts, tmp_path))
    assert (accounts / "var/home/tester/.ssh/authorized_keys").read_text() == f"{KEY_A}\n"


def test_users_ssh_path_that_is_a_file_fails_clearly(accounts: Path, tmp_path: Path) -> None:
    (accounts / "root/.ssh").write_text("not a directory\n")
    result = run("users", {"users": {"root": {"key": KEY_A}}}, accounts, tmp_path)
    failed_with(result, "/root/.ssh exists in the tree and is not a directory")


def test_users_same_options_same_bytes(tmp_path: Path) -> None:
    options = {
        "users": {
            "root": {"password": HASH_ROOT},
            "alice": {"password": HASH_ALICE, "groups": ["sudo"], "key": KEY_A},
            "bob": {"uid": 1500, "gid": 100, "shell": "/bin/bash"},
        }
    }
    trees = []
    for n in (1, 2):
        tree = accounts_tree(tmp_path / f"tree{n}")
        ok(run("users", options, tree, tmp_path, source_epoch=EPOCH))
        trees.append(tree)
    files = ["passwd", "passwd-", "group", "group-", "shadow", "shadow-", "gshadow", "gshadow-"]
    for name in files:
        assert (trees[0] / "etc" / name).read_bytes() == (trees[1] / "etc" / name).read_bytes()
    keys = "home/alice/.ssh/authorized_keys"
    assert (trees[0] / keys).read_bytes() == (trees[1] / keys).read_bytes()
    for line in lines_of(trees[0], "shadow").values():
        if line.split(":")[0] in options["users"]:
            assert line.split(":")[2] == str(EPOCH_DAY)
    assert lines_of(trees[0], "passwd")["bob"] == "bob:x:1500:100::/home/bob:/bin/bash"


def test_users_without_passwd_fails_clearly(tree: Path, tmp_path: Path) -> None:
    (tree / "etc/group").write_text(GROUP)
    result = run("users", {"users": {"alice": {}}}, tree, tmp_path)
    failed_with(result, "the tree has no /etc/passwd")


def test_users_tool_error_names_the_user(accounts: Path, tmp_path: Path) -> None:
    result = run("users", {"users": {"alice": {"groups": ["nosuch"]}}}, accounts, tmp_path)
    last = failed_with(result, "useradd for user alice failed")
    assert "nosuch" in last
    assert "alice" not in lines_of(accounts, "passwd")


@pytest.mark.parametrize(
    "options",
    [
        {"users": {"alice": {"uid": "1000"}}},
        {"users": {"alice": {"uid": -1}}},
        {"users": {"alice": {"name": "alice"}}},
        {"users": {"alice": {"groups": "sudo"}}},
        {"users": {"alice": {"groups": ["sudo,root"]}}},
        {"users": {"alice": {"description": "a:b"}}},
        {"users": {"alice": {"home": "home/alice"}}},
        {"users": {"alice": {"home": "/home/../etc"}}},
        {"users": {"alice": {"shell": "bash"}}},
        {"users": {"alice": {"password": "x:y"}}},
        {"users": {"alice": {"key": "ssh-ed25519 A\nssh-rsa B"}}},
        {"users": {"alice": {"keys": KEY_A}}},
        {"users": {"alice": {"expiredate": "2030-01-01"}}},
        {"users": {"alice": {"force_password_reset": "yes"}}},
        {"users": {"-alice": {}}},
        {"users": {"..": {}}},
        {"users": {"a" * 33: {}}},
        {"users": {}, "force": True},
    ],
)
def test_users_schema_rejects(options: dict[str, Any]) -> None:
    assert schema_errors("users", options)


def test_groups_creates_groups(accounts: Path, tmp_path: Path) -> None:
    ok(run("groups", {"groups": {"docker": {"gid": 990}, "devs": {}}}, accounts, tmp_path))
    group = lines_of(accounts, "group")
    assert group["docker"] == "docker:x:990:"
    assert group["devs"] == "devs:x:1001:"  # the first free GID from GID_MIN
    assert lines_of(accounts, "gshadow")["docker"] == "docker:!::"


def test_groups_existing_group_fails_unless_forced(accounts: Path, tmp_path: Path) -> None:
    failed_with(run("groups", {"groups": {"sudo": {}}}, accounts, tmp_path), "group sudo")
    failed_with(run("groups", {"groups": {"other": {"gid": 27}}}, accounts, tmp_path), "other")
    options = {"groups": {"sudo": {"gid": 4000}, "other": {"gid": 27}}, "force": True}
    ok(run("groups", options, accounts, tmp_path))
    group = lines_of(accounts, "group")
    assert group["sudo"] == "sudo:x:27:"
    assert group["other"].startswith("other:x:") and group["other"] != "other:x:27:"


def test_groups_without_group_file_fails_clearly(tree: Path, tmp_path: Path) -> None:
    failed_with(run("groups", {"groups": {"x": {}}}, tree, tmp_path), "the tree has no /etc/group")


@pytest.mark.parametrize(
    "options",
    [
        {"groups": {"docker": {"gid": "990"}}},
        {"groups": {"docker": {"gid": -5}}},
        {"groups": {"docker": {"members": ["a"]}}},
        {"groups": {"bad/name": {}}},
        {"groups": {}, "force": "yes"},
        {"groups": {}, "other": 1},
    ],
)
def test_groups_schema_rejects(options: dict[str, Any]) -> None:
    assert schema_errors("groups", options)


# --- systemd ----------------------------------------------------------------

UNITS = {
    "a.service": "[Unit]\nDescription=A\n[Service]\nExecStart=/bin/true\n"
    "[Install]\nWantedBy=multi-user.target\n",
    "b.service": "[Unit]\nDescription=B\n[Service]\nExecStart=/bin/true\n"
    "[Install]\nWantedBy=multi-user.target\nAlias=bee.service\n",
    "getty@.service": "[Unit]\nDescription=Getty %I\n[Service]\nExecStart=/bin/true\n"
    "[Install]\nWantedBy=getty.target\nDefaultInstance=tty1\n",
    "t.timer": "[Unit]\nDescription=T\n[Timer]\nOnCalendar=daily\n"
    "[Install]\nWantedBy=timers.target\n",
    "multi-user.target": "[Unit]\nDescription=Multi-User\n",
    "graphical.target": "[Unit]\nDescription=Graphical\n",
    "timers.target": "[Unit]\nDescription=Timers\n",
    "getty.target": "[Unit]\nDescription=Gettys\n",
}


@pytest.fixture
def units(tree: Path) -> Path:
    unitdir = tree / "usr/lib/systemd/system"
    unitdir.mkdir(parents=True)
    for name, text in UNITS.items():
        (unitdir / name).write_text(text)
    return tree


def links(tree: Path) -> dict[str, str]:
    """Every symlink under the tree's /etc/systemd, with its target."""
    base = tree / "etc/systemd"
    found = {}
    for path in sorted(base.rglob("*")):
        if path.is_symlink():
            found[str(path.relative_to(base))] = os.readlink(path)
    return found


def test_systemd_enable_disable_mask_default(units: Path, tmp_path: Path) -> None:
    options = {
        "enabled_services": ["a.service", "b.service", "t.timer", "getty@tty2.service"],
        "disabled_services": ["b.service"],
        "masked_services": ["c.service"],
        "masked_generators": ["systemd-gpt-auto-generator"],
        "default_target": "graphical.target",
    }
    ok(run("systemd", options, units, tmp_path))
    unitdir = "/usr/lib/systemd/system"
    assert links(units) == {
        "system/c.service": "/dev/null",
        "system/default.target": f"{unitdir}/graphical.target",
        "system/getty.target.wants/getty@tty2.service": f"{unitdir}/getty@.service",
        "system/multi-user.target.wants/a.service": f"{unitdir}/a.service",
        "system/timers.target.wants/t.timer": f"{unitdir}/t.timer",
        "system-generators/systemd-gpt-auto-generator": "/dev/null",
    }


def test_systemd_unknown_unit_fails_naming_it(units: Path, tmp_path: Path) -> None:
    result = run("systemd", {"enabled_services": ["a.service", "nope.service"]}, units, tmp_path)
    last = failed_with(result, "systemctl enable nope.service failed")
    assert "nope.service" in last.split("failed", 1)[1]
    assert len([line for line in result.tail if line.startswith("error:")]) == 1


def test_systemd_unknown_default_target_fails(units: Path, tmp_path: Path) -> None:
    result = run("systemd", {"default_target": "nope.target"}, units, tmp_path)
    failed_with(result, "systemctl set-default nope.target failed")


def test_systemd_generator_mask_replaces_existing_link(units: Path, tmp_path: Path) -> None:
    gens = units / "etc/systemd/system-generators"
    gens.mkdir(parents=True)
    (gens / "g").symlink_to("/usr/lib/systemd/g")
    ok(run("systemd", {"masked_generators": ["g"]}, units, tmp_path))
    assert os.readlink(gens / "g") == "/dev/null"


@pytest.mark.parametrize(
    "options",
    [
        {"enabled_services": "a.service"},
        {"enabled_services": ["--global"]},
        {"enabled_services": ["../a.service"]},
        {"masked_services": ["a b.service"]},
        {"masked_generators": ["../../bin/sh"]},
        {"masked_generators": [".."]},
        {"default_target": ["graphical.target"]},
        {"unit_files": []},
    ],
)
def test_systemd_schema_rejects(options: dict[str, Any]) -> None:
    assert schema_errors("systemd", options)
