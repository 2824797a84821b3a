"""The matrix run (`nbdfork run`): filesystems x stable_writes x workloads on one or more real
kernels, the device on the host judging every WRITE. plan.py is what one boot runs, guest.py
runs it in the guest, session.py drives it from the host, schema.py/results.py build
report.json and render.py/plots.py draw it. Modules are imported directly: reading the schema
loads no matplotlib.
"""

__all__: list[str] = []
