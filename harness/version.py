"""The harness version (part of every run id: a new version starts new runs)."""

__version__ = "0.1.0"
