# The benchmark baseline: the nbdkit Python plugin a user writes in an afternoon — a bytearray
# store, no checks, no latency. bench/throughput.py compares nbdfork against it:
#
#   nbdkit --unix /tmp/min.sock --foreground python bench/minimal_plugin.py size=256M
#
# size= is required (binary suffixes k M G accepted). The bytearray is allocated up front
# (zeroed pages are only resident once touched), so this baseline is not meant for huge sizes.

import errno

import nbdkit

API_VERSION = 2

_SUFFIXES = {"": 0, "k": 10, "m": 20, "g": 30}
_size = 0
_disk = bytearray()


def config(key, value):
    global _size
    if key != "size":
        nbdkit.set_error(errno.EINVAL)
        raise RuntimeError(f"unknown parameter {key!r} (allowed: size)")
    number, suffix = value.rstrip("kKmMgG"), value[len(value.rstrip("kKmMgG")) :]
    _size = int(number) << _SUFFIXES[suffix.lower()]


def config_complete():
    global _disk
    if _size <= 0:
        raise RuntimeError("size= is required, e.g. size=256M")
    _disk = bytearray(_size)


def thread_model():
    return nbdkit.THREAD_MODEL_PARALLEL


def open(readonly):
    return 1


def get_size(h):
    return _size


def can_multi_conn(h):
    return True


def pread(h, buf, offset, flags):
    buf[:] = _disk[offset : offset + len(buf)]


def pwrite(h, buf, offset, flags):
    _disk[offset : offset + len(buf)] = buf
