"""`nbdfork kernel fetch SERIES...` and `nbdfork kernel list`: Debian kernels for the guest."""

from __future__ import annotations

import argparse
from pathlib import Path

from nbdfork.harness.fetch import PrivateApt, cache_root, cached_kernels, fetch_series
from nbdfork.harness.kernel import installed_kernels
from nbdfork.options import check_out_dir

__all__ = ["register"]

_EPILOG = """\
examples:
  nbdfork kernel fetch 6.12 7.2     the newest Debian builds of 6.12 (trixie) and 7.2 (sid)
  nbdfork kernel list               installed (/boot) and fetched kernels
  nbdfork run --kernel 7.2 ...      boot a fetched kernel
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `kernel` subcommand with `fetch` and `list`."""
    parser = sub.add_parser(
        "kernel",
        help="fetch Debian kernels (6.1, 6.12, 7.x) into a cache, list what can boot",
        description="Fetch Debian kernel packages with a private apt configuration (the host's "
        "sources and package state are never touched, nothing is installed) and unpack them "
        f"into a cache ({cache_root()}; NBDFORK_KERNEL_CACHE overrides).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    fetch = actions.add_parser("fetch", help="download, verify and unpack kernels by series")
    fetch.add_argument("series", nargs="+", help="series such as 6.12 or 7.2 (newest build)")
    fetch.add_argument("--cache", type=Path, help="cache directory (default: see above)")
    fetch.set_defaults(handler=_fetch)
    listing = actions.add_parser("list", help="installed and fetched kernels")
    listing.add_argument("--cache", type=Path, help="cache directory (default: see above)")
    listing.set_defaults(handler=_list)


def _fetch(args: argparse.Namespace) -> int:
    root: Path = check_out_dir("--cache" if args.cache else "NBDFORK_KERNEL_CACHE",
                               args.cache or cache_root())  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    apt = PrivateApt(root)
    apt.update()  # once for all series: the signed indexes of bookworm, trixie and sid
    for series in args.series:
        kernel = fetch_series(series, root, apt=apt, refresh=False)
        packages = ", ".join(f"{n} {v}" for n, v in kernel.packages.items())
        print(f"{series}: {kernel.release} from {kernel.suite or 'debian'} ({packages})")
        print(f"  image   {kernel.image}\n  modules {kernel.modules}")
    return 0


def _list(args: argparse.Namespace) -> int:
    for kernel in installed_kernels():
        print(f"{kernel.release:<28} installed  {kernel.image}")
    for cached in cached_kernels(args.cache):
        print(f"{cached.release:<28} fetched    {cached.image} ({cached.suite}, {cached.fetched})")
    return 0
