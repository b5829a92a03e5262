"""The corpus's bootable image (vmdb2's, test/corpus_vmdb2.py) boots under the harness.

An image this project did not make: GRUB for BIOS from grub-install in the MBR,
its menu from grub-mkconfig. The other corpus images hold no kernel; they are
image-info's to read (test/mod/test_corpus.py), not the harness's to boot.
"""

from pathlib import Path

import corpus
import corpus_vmdb2
import pytest

from verify import qemu

pytestmark = pytest.mark.slow


def test_vmdb2_image_boots_to_its_login(corpus_dir: Path, vm_artifacts: Path) -> None:
    with qemu.VM(corpus_dir / corpus.IMAGES["vmdb2"], name="corpus-vmdb2",
                 artifacts=vm_artifacts) as vm:  # -snapshot: the corpus stays as built
        result = vm.wait_boot(until="login")
        assert result.success, result.report()
        assert result.hostname == corpus_vmdb2.HOSTNAME, result.report()
