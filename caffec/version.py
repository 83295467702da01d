"""caffec's version: in every artifact's generated source, and `caffec --version`."""

__version__ = "0.1.0"
