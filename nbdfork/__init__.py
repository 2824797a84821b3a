"""nbdfork: what a real Linux kernel sends to a block device while pages are under writeback.

`PACKAGE` is this package's directory wherever it is installed (a checkout or site-packages);
`IMPORT_ROOT` is the directory to put on PYTHONPATH to import it (the guest and nbdkit's
embedded Python use it); `PLUGIN` is the nbdkit plugin, shipped as package data.
"""

from pathlib import Path

__all__ = ["IMPORT_ROOT", "PACKAGE", "PLUGIN", "__version__"]

__version__ = "0.1.0"

PACKAGE = Path(__file__).resolve().parent
IMPORT_ROOT = PACKAGE.parent
PLUGIN = PACKAGE / "plugin" / "nbdfork_plugin.py"
