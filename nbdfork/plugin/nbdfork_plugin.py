# nbdfork: an emulated block device whose oracle checks every WRITE for torn, stale and
# overlapping stamped pages. Run it from the project's venv:
#
#   nbdkit python plugin/nbdfork_plugin.py size=64M report=/tmp/out
#   nbdkit --unix /tmp/nbd.sock --foreground python plugin/nbdfork_plugin.py \
#          size=512M report=/tmp/out write-latency=2ms seed=1
#
# `nbdfork serve --help` and `nbdkit python plugin/nbdfork_plugin.py --dump-plugin` list
# every parameter (size= is required; docs/parameters.md has the bounds). The report directory
# gets events.jsonl (one verdict per line) and summary.json (counts), written when a client
# disconnects and when nbdkit stops. This is the only file that imports `nbdkit`; every
# callback delegates to nbdfork.device.

import os
import sys
import traceback
from pathlib import Path


def _add_project_paths() -> None:
    # nbdkit embeds Debian's /usr/bin/python3, which knows nothing of our venv. This file is
    # package data (nbdfork/plugin/), so the directory that holds the nbdfork package is two
    # levels up: a checkout, or the site-packages of a non-editable install, which then also
    # holds numpy & co. A checkout adds its venv (VIRTUAL_ENV, else <checkout>/.venv). A plain
    # append, not site.addsitedir: the venv's .pth hooks (the editable-install finder,
    # setuptools' distutils shim) are not needed with the source on sys.path, and under qemu
    # TCG every import costs seconds.
    root = Path(__file__).resolve().parent.parent.parent
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    venv = os.environ.get("VIRTUAL_ENV") or str(root / ".venv")
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site_packages = Path(venv) / "lib" / version / "site-packages"
    if site_packages.is_dir() and str(site_packages) not in sys.path:
        sys.path.append(str(site_packages))
    # The plugin logs JSON lines to a file, never to a console: keep structlog from importing
    # rich and pygments for its console renderer (23 s of a TCG guest's plugin start).
    for console_only in ("rich", "pygments", "colorama", "better_exceptions"):
        sys.modules.setdefault(console_only, None)  # type: ignore[arg-type]


_add_project_paths()

import nbdkit  # noqa: E402

from nbdfork.config import PARAMS, DeviceConfig, parse_params  # noqa: E402
from nbdfork.config import check_known as _check_known  # noqa: E402
from nbdfork.device.paths import validate_paths  # noqa: E402
from nbdfork.errors import DeviceError, NbdforkError  # noqa: E402
from nbdfork.log import configure as _configure_log  # noqa: E402
from nbdfork.server import DeviceService  # noqa: E402

API_VERSION = 2


def _one_line_device_errors():
    # nbdkit logs a callback's exception through traceback.format_exception (plugins/python/
    # errors.c, print_python_traceback): a DeviceError, which the device raises on purpose (an
    # injected error, a request beyond the device), is logged as its one-line message; any
    # other exception, a bug, keeps its traceback.
    full = traceback.format_exception

    def format_exception(exc, *args, **kwargs):
        error = args[0] if args else exc
        if isinstance(error, DeviceError):
            return [str(error).replace("\n", "\\n")]
        return full(exc, *args, **kwargs)

    traceback.format_exception = format_exception


_one_line_device_errors()

_params: list[tuple[str, str]] = []
_config: DeviceConfig | None = None
_service: DeviceService | None = None


def _fail_config(exc: NbdforkError) -> None:
    # One line naming the key, then exit: a Python traceback would bury the message. A path
    # may hold a newline; escape it so the message stays one line.
    message = str(exc).replace("\n", "\\n")
    print(f"nbdkit: nbdfork: error: {message}", file=sys.stderr, flush=True)
    os._exit(1)


def dump_plugin():
    # nbdkit's python plugin ignores a script's config_help (nbdkit-python-plugin(3),
    # "Missing"): --dump-plugin is where nbdkit lets a python plugin describe itself.
    for param in PARAMS:
        required = " (required)" if param.required else ""
        print(f"nbdfork_param_{param.key}={param.metavar}{required}: {param.help}")
    sys.stdout.flush()


def config(key, value):
    try:
        _check_known(key)
    except NbdforkError as exc:
        _fail_config(exc)
    _params.append((key, value))


def config_complete():
    global _config
    try:
        _config = parse_params(_params)
        validate_paths(_config)
    except NbdforkError as exc:
        _fail_config(exc)


def thread_model():
    return nbdkit.THREAD_MODEL_PARALLEL


def get_ready():
    global _service
    assert _config is not None
    try:
        _service = DeviceService(_config)
        _configure_log(json_fd=_service.open_log())
    except NbdforkError as exc:
        _fail_config(exc)


def after_fork():
    # Threads do not survive nbdkit's fork into the background: start them here.
    _service.start_background()


def open(readonly):
    return _service.open_connection(readonly=readonly, export=nbdkit.export_name())


def close(h):
    _service.close_connection(h)


def cleanup():
    if _service is not None:
        _service.shutdown()


def get_size(h):
    return _config.size


def can_write(h):
    return True


def can_flush(h):
    return True


def can_fua(h):
    return nbdkit.FUA_NATIVE


def can_trim(h):
    return True


def can_zero(h):
    return True


def can_fast_zero(h):
    return True


def can_multi_conn(h):
    # Every connection sees one store and a flush covers all of it.
    return True


def _call(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except DeviceError as exc:
        nbdkit.set_error(exc.errno)
        raise


_FLAG_FUA = nbdkit.FLAG_FUA


# pread and pwrite run once per request: no _call frame, no argument packing, no module
# attribute lookups beyond the device (bench/throughput.py measures what they cost).
def pread(h, buf, offset, flags):
    try:
        _service.device.pread(buf, offset, h)
    except DeviceError as exc:
        nbdkit.set_error(exc.errno)
        raise


def pwrite(h, buf, offset, flags):
    try:
        _service.device.pwrite(h, buf, offset, fua=flags & _FLAG_FUA != 0)
    except DeviceError as exc:
        nbdkit.set_error(exc.errno)
        raise


def flush(h, flags):
    _call(_service.device.flush, h)


def trim(h, count, offset, flags):
    _call(_service.device.trim, count, offset, fua=bool(flags & nbdkit.FLAG_FUA), connection=h)


def zero(h, count, offset, flags):
    _call(_service.device.zero, count, offset, fua=bool(flags & nbdkit.FLAG_FUA), connection=h)

