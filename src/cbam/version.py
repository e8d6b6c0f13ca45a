"""The version of cbam, for the package and the command line alike (pyproject.toml gives the same)."""

__version__ = "0.1.0"
