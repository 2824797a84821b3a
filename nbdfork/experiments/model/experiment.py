"""`nbdfork model` declared: its options, main function and report."""

from __future__ import annotations

from nbdfork.config import parse_duration
from nbdfork.errors import ConfigError
from nbdfork.experiments.model.device import parse_latencies, parse_reorders
from nbdfork.experiments.model.policy import Policy, parse_policies
from nbdfork.experiments.model.writeback import WritebackTuning
from nbdfork.experiments.model.writer import Workload
from nbdfork.harness.experiment import Experiment, ReportKind
from nbdfork.options import (
    Option,
    Parser,
    parse_bounded_float,
    parse_bounded_int,
    parse_out_dir,
    parse_path,
)
from nbdfork.seeds import SEED_LIMIT

__all__ = ["EXPERIMENT", "OPTIONS"]

_EPILOG = """\
examples:
  nbdfork model --out results/model               4 policies x 1ms,4ms, about a minute
  nbdfork model --latency 0.5ms,2ms,8ms --reorder off,jitter:0.9 --seeds 3 --out results/sweep
  nbdfork model --policy stable,fork --seconds 10 --seed 7 --out results/two
  nbdfork model --out results/model --compare results/kernel    beside `nbdfork run`'s report

--reorder: off (fixed latency), jitter:F (uniform in [L(1-F), L(1+F)]), lognormal:S
(median L, sigma S), window:N (the device's seeded reply reordering within N writes).
"""


def _duration(low: float = 0.0) -> Parser:
    def parse(option: str, text: str) -> float:
        value = parse_duration(option, text)
        if value < low:
            raise ConfigError(option, f"{text} must be at least {low * 1e3:g} ms")
        return value

    return parse


_W, _T = Workload(), WritebackTuning()

OPTIONS: tuple[Option, ...] = (
    Option("policy", "policies to run, comma-separated (default: all four)",
           parse=lambda key, text: parse_policies(text, key), default=tuple(Policy)),
    Option("seconds", "writing time per run (5), in [0.1, 3600]",
           parse=parse_bounded_float(0.1, 3600, low_open=False), default=5.0),
    Option("seed", "seed of every random choice (default: random)",
           parse=parse_bounded_int(0, SEED_LIMIT - 1), campaign=False),
    Option("seeds", "repetitions per setting (1), in [1, 1000]",
           parse=parse_bounded_int(1, 1000), default=1),
    Option("latency", "median device write latencies, comma-separated (1ms,4ms)",
           parse=lambda key, text: parse_latencies(text, key),
           default=parse_latencies("1ms,4ms")),
    Option("reorder", "device reorderings, comma-separated (jitter:0.9)",
           parse=lambda key, text: parse_reorders(text, key),
           default=parse_reorders("jitter:0.9")),
    Option("writers", "writer threads (4)", parse=parse_bounded_int(1, 256), default=_W.writers,
           group="model"),
    Option("pages", "hot pages per writer (2)", parse=parse_bounded_int(1, 1 << 16),
           default=_W.pages, group="model"),
    Option("think", "mean pause between a writer's stores (0.5ms)", parse=_duration(),
           default=_W.think, group="model"),
    Option("fsync_every", "a writer fsyncs its pages every N stores (0: never)",
           parse=parse_bounded_int(0, 1 << 30), default=_W.fsync_every, group="model"),
    Option("dirty_expire", "age at which a dirty page is written back (3ms)",
           parse=_duration(), default=_T.dirty_expire, group="model"),
    Option("writeback_interval", "how often the flusher wakes (1ms)", parse=_duration(1e-5),
           default=_T.interval, group="model"),
    Option("send_pace", "pause between sectors of a send (0)", parse=_duration(),
           default=_T.send_pace, group="model"),
    Option("queue_depth", "writes in flight at most (128, as nbd.ko)",
           parse=parse_bounded_int(1, 1 << 16), default=_T.queue_depth, group="model"),
    Option("threads", "nbdkit worker threads (16)", parse=parse_bounded_int(1, 1024),
           default=16, group="model"),
    Option("compare", "a real-kernel report (`nbdfork run` DIR/report.json) to set beside the "
           "none/stable rows", parse=parse_path, metavar="DIR"),
    Option("out", "where report.json, report.md, plots and runs/ go (required)",
           parse=parse_out_dir, metavar="DIR", campaign=False, required=True),
)  # fmt: skip

EXPERIMENT = Experiment(
    name="model",
    help="page-forking model: none/stable/fork/fork-unordered on the emulated device",
    description="Run a userspace page cache with writeback over the emulated device, one "
    "writeback policy at a time, and report writer throughput, stalls, copies, fork "
    "memory and the device oracle's verdicts.",
    epilog=_EPILOG,
    options=OPTIONS,
    main="nbdfork.experiments.model.cli:main",
    report=ReportKind("nbdfork.model-report/1", "nbdfork.experiments.model.schema:ModelReport",
                      "nbdfork.experiments.model.report:render_model_report"),
)
