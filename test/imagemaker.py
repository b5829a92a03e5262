"""test/data/image_info/make_image.py as a module (`from imagemaker import mk`): the
disks and trees that image-info's tests read, made by plain scripts."""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "make_image", Path(__file__).resolve().parent / "data/image_info/make_image.py")
assert _spec and _spec.loader
mk = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mk)
