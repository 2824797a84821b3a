"""nbdfork: what a real Linux kernel sends to a block device while pages are under writeback."""

__all__ = ["__version__"]

__version__ = "0.1.0"
