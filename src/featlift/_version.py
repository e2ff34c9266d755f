"""featlift's version: the one place it is written (the package root and pyproject.toml read it here)."""

__version__ = "0.1.0"
