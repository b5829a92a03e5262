"""`python3 -m osbuild`: the same as the `osbuild` command."""

import sys

from .main_cli import main

sys.exit(main())
