"""The package version (one place: the CLI, saved outputs and ``llmsparse env`` read it)."""

__version__ = "0.1.0"
