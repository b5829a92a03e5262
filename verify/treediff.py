"""The tree diff the golden cases are made with: `python3 -m verify.treediff [--upstream] A B`.

Its code lives in osbuild/image_info/treediff.py, since `image-info --diff
--files` compares trees the same way and the engine never imports the harness.
"""

import sys

from osbuild.image_info.treediff import Entry, diff_entries, diff_trees, main, scan

__all__ = ["Entry", "diff_entries", "diff_trees", "main", "scan"]

if __name__ == "__main__":
    sys.exit(main())
