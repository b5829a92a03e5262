"""osbuild-deb: build OS images from osbuild manifests, for Debian-family systems.

This package is also bind-mounted into every stage sandbox so stages can
import `osbuild.api`; keep this file free of imports that a build root's
plain Python may lack.
"""

__version__ = "0.1.0"
