"""The package version, read by the build (pyproject) and by ``--version``."""

__version__ = "0.1.0"
