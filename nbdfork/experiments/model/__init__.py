"""The page-forking model: a userspace page cache with writeback over the emulated device,
run under one writeback policy at a time (none, stable, fork, fork-unordered).

`policy` names the policies, `cache` owns the page state machine, `writeback` the flusher,
send path and fsync, `writer` the writer threads, `export` the libnbd connection, `device`
the device settings and the oracle's verdicts, `run` one run, `sweep` many, `summary`,
`plots`, `compare` and `report` the results. `schema` defines report.json
(`nbdfork.model-report/1`, `load_model_report`), from which `report.render_model_report`
redraws report.md, report.html and the plots. docs/page-forking.md says what it can and
cannot show.

Kept free of imports so that reading a model report (`nbdfork.experiments.model.schema`, e.g. a
campaign merging its cells) loads neither libnbd nor matplotlib; import the modules directly.
"""

__all__: list[str] = []
