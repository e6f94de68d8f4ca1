"""kt: a self-hosted AI gateway whose policies are deployed from Git."""

__version__ = "0.1.0"
