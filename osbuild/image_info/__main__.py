import sys

from osbuild.image_info.cli import main

sys.exit(main())
