"""Campaigns: spec expansion, seeds, the journal and resume, concurrency, failures, signals,
the merged report, and the example model spec end to end through the real CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from nbdfork.campaign.journal import Journal, read_journal
from nbdfork.campaign.merge import CampaignReport, CellRecord, load_report, wilson
from nbdfork.campaign.orchestrator import Budget, _next_cells, pending_cells
from nbdfork.campaign.spec import OUT, Cell, example_spec, parse_spec
from nbdfork.errors import ConfigError, ReportError
from nbdfork.report.codec import write_json
from nbdfork.seeds import derive_seed
from tests.campaign_driver import describe, python_cells
from tests.conftest import ROOT, nbdkit_env

NBDFORK = Path(sys.executable).parent / "nbdfork"
DRIVER = [sys.executable, "-m", "tests.campaign_driver"]

MODEL_SPEC = """
[campaign]
seed = 7
[[cells]]
kind = "model"
seeds = 2
[cells.axes]
policy = ["stable", "fork"]
latency = ["1ms", "4ms"]
[cells.options]
seconds = 2
device_dummy_free = 1
"""




def _env() -> dict[str, str]:
    """The environment of a campaign subprocess: this checkout's nbdfork and the venv."""
    return nbdkit_env() | {"PYTHONPATH": str(ROOT)}


def _campaign(
    spec: Path, out: Path, *extra: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`campaign run` on python cells (a .json spec, through the driver) or a real spec."""
    head = DRIVER if spec.suffix == ".json" else [str(NBDFORK)]
    argv = [*head, "campaign", "run", str(spec), "--out", str(out), *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=_env(), check=False)  # fmt: skip


def _journal(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()]


def _statuses(out: Path) -> dict[str, str]:
    return {c["id"]: c["status"] for c in json.loads((out / "report.json").read_text())["cells"]}


# ------------------------------------------------------------------------------ spec and seeds


def test_spec_expands_the_cartesian_product_with_readable_ids() -> None:
    """Axes multiply into cells named kind-axis=value (sorted, seed last), seeds varying slowest."""
    spec = parse_spec(MODEL_SPEC.replace("device_dummy_free = 1\n", ""))
    ids = [c.id for c in spec.cells]
    assert len(ids) == 8 and len(set(ids)) == 8
    assert ids[:4] == [
        "model-latency=1ms-policy=stable-seed=0", "model-latency=1ms-policy=fork-seed=0",
        "model-latency=4ms-policy=stable-seed=0", "model-latency=4ms-policy=fork-seed=0",
    ]  # fmt: skip
    cell = spec.cells[1]
    assert cell.axes == {"latency": "1ms", "policy": "fork", "seed": "0"}
    assert cell.argv == ("nbdfork", "model", "--latency", "1ms", "--policy", "fork",
                         "--seconds", "2", "--seed", str(cell.seed), "--out", OUT)  # fmt: skip
    assert cell.ok_statuses == (0,) and cell.cpus == 1


def test_each_cell_seed_is_derived_from_the_campaign_seed_and_its_id() -> None:
    """A cell's seed is derive_seed(campaign seed, cell id): stable, distinct, follows the seed."""
    text = MODEL_SPEC.replace("device_dummy_free = 1\n", "")
    spec = parse_spec(text)
    assert all(c.seed == derive_seed(7, c.id) for c in spec.cells)
    assert len({c.seed for c in spec.cells}) == len(spec.cells)
    assert [c.seed for c in parse_spec(text).cells] == [c.seed for c in spec.cells]
    other = parse_spec(text.replace("seed = 7", "seed = 8"))
    assert all(a.seed != b.seed for a, b in zip(spec.cells, other.cells, strict=True))
    assert other.hash != spec.hash


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (("device_dummy_free = 1", "device_dummy_free = 1"), "cells[0].options.device_dummy_free"),
        (('kind = "model"', 'kind = "vm"'), "cells[0].kind"),
        (('policy = ["stable", "fork"]', 'policy = "fork"'), "cells[0].axes.policy"),
        (("device_dummy_free = 1", "out = 'x'"), "cells[0].options.out"),
        (("seeds = 2", "seeds = 0"), "cells[0].seeds"),
        (("seed = 7", "seed = -1"), "campaign.seed"),
        (("seed = 7", "sede = 7"), "campaign.sede"),
        (("seconds = 2", "seconds = [1, 2]"), "cells[0].options.seconds"),
        (("[cells.options]", "[cells.options]\npolicy = 'none'"), "cells[0].options.policy"),
    ],
)
def test_a_bad_spec_is_one_config_error_naming_the_key(change: tuple[str, str], key: str) -> None:
    """Unknown options, bad kinds, non-list axes, reserved or clashing keys: ConfigError(key)."""
    with pytest.raises(ConfigError) as caught:
        parse_spec(MODEL_SPEC.replace(*change))
    assert caught.value.key == key
    assert "\n" not in str(caught.value)


def test_an_unparsable_spec_names_the_file() -> None:
    """TOML syntax errors are a ConfigError naming where the spec came from."""
    with pytest.raises(ConfigError, match=r"^spec.toml: not TOML"):
        parse_spec("[campaign\n", "spec.toml")


def test_every_example_spec_parses_into_real_kinds() -> None:
    """`campaign example` specs expand with no hidden kind; the model one is small."""
    for kind in ("model", "run", "crash"):
        spec = parse_spec(example_spec(kind))
        assert {c.kind for c in spec.cells} == {kind}
    model = parse_spec(example_spec("model"))
    assert len(model.cells) == 4 and "--seconds" in model.cells[0].argv


# --------------------------------------------------------------------------------- the journal


def test_the_journal_keeps_the_last_event_and_skips_a_torn_line(tmp_path: Path) -> None:
    """A cell's state is its last event; a line torn by a kill is skipped, the next one kept."""
    journal = Journal(tmp_path)
    journal.append("a", "start", key="k1")
    journal.append("a", "failed", key="k1", exit_status=2)
    journal.append("a", "start", key="k1")
    journal.append("a", "done", key="k1")
    journal.append("b", "start", key="k2")
    journal.close()
    with (tmp_path / "journal.jsonl").open("a") as f:
        f.write('{"cell": "b", "ev')
    again = Journal(tmp_path)
    again.append("c", "start", key="k3")
    again.close()
    states = read_journal(tmp_path)
    assert (states["a"].event, states["a"].attempts, states["a"].key) == ("done", 2, "k1")
    assert states["b"].event == "start" and states["c"].event == "start"


def test_resume_runs_only_cells_not_done_under_the_same_key(tmp_path: Path) -> None:
    """Done cells are skipped; failed, interrupted, unstarted or changed (new key) cells run."""
    source = tmp_path / "cells.json"
    source.write_text(describe("pass", [1, 2, 3, 4]))
    spec = python_cells(source)
    a, b, c, d = spec.cells
    journal = Journal(tmp_path)
    journal.append(a.id, "done", key=a.key)
    journal.append(b.id, "failed", key=b.key)
    journal.append(c.id, "done", key="another argv")
    journal.close()
    assert [x.id for x in pending_cells(spec.cells, read_journal(tmp_path))] == [b.id, c.id, d.id]


# ----------------------------------------------------------------------------- the report


def test_the_report_round_trips_through_its_types(tmp_path: Path) -> None:
    """report.json is written and read back through CampaignReport; another schema is refused."""
    cell = CellRecord(id="x", kind="model", status="done", axes={"seed": "0"}, seed=5,
                      dir="cells/x")  # fmt: skip
    report = CampaignReport(name="n", seed=1, spec_hash="h", executor="local", jobs=2,
                            wall_s=1.5, cells=(cell,))  # fmt: skip
    path = write_json(report, tmp_path)
    assert load_report(tmp_path) == report
    data = json.loads(path.read_text())
    data["cells"][0]["status"] = "finished"
    path.write_text(json.dumps(data))
    with pytest.raises(ReportError, match=r"report\.json: cells\[0\]\.status: invalid enum"):
        load_report(tmp_path)
    path.write_text(json.dumps({**data, "schema": "x/1"}))
    with pytest.raises(ReportError, match="unknown schema 'x/1'"):
        load_report(tmp_path)


def test_wilson_interval_matches_known_values() -> None:
    """Wilson 95%: 0/10 -> [0, 0.278]; 5/10 -> [0.237, 0.763]; no trials -> [0, 1]."""
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)


# ------------------------------------------------------------------ the orchestrator, via the CLI


def test_two_jobs_run_two_cells_at_once(tmp_path: Path) -> None:
    """With --jobs 2 two cells' start..end intervals overlap (journal timestamps)."""
    spec = tmp_path / "spec.json"
    spec.write_text(describe("import time; time.sleep(1.5)", [1, 2]))
    proc = _campaign(spec, tmp_path / "out", "--jobs", "2")
    assert proc.returncode == 0, proc.stderr
    lines = _journal(tmp_path / "out")
    spans = {c: [x["t"] for x in lines if x["cell"] == c] for c in ("t-n=1", "t-n=2")}
    (s1, e1), (s2, e2) = spans["t-n=1"], spans["t-n=2"]
    assert max(s1, s2) < min(e1, e2), spans
    assert _statuses(tmp_path / "out") == {"t-n=1": "done", "t-n=2": "done"}


def test_cells_are_packed_into_the_cpu_budget(tmp_path: Path) -> None:
    """--jobs 2 but --cpus 1: one 1-CPU cell at a time (journal spans do not overlap), and
    report.json records the budget."""
    spec = tmp_path / "spec.json"
    spec.write_text(describe("import time; time.sleep(0.5)", [1, 2]))
    proc = _campaign(spec, tmp_path / "out", "--jobs", "2", "--cpus", "1", "--memory", "4G")
    assert proc.returncode == 0, proc.stderr
    lines = _journal(tmp_path / "out")
    (s1, e1), (s2, e2) = ([x["t"] for x in lines if x["cell"] == c] for c in ("t-n=1", "t-n=2"))
    assert min(e1, e2) <= max(s1, s2)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert (report["jobs"], report["cpus"], report["memory"]) == (2, 1, 4 << 30)


def _cell(kind: str, name: str) -> Cell:
    return Cell(id=name, kind=kind, axes={}, seed=1, argv=("true",), ok_statuses=(0,))


def test_first_fit_packing_never_exceeds_the_budget_but_runs_a_big_cell_alone() -> None:
    """A VM cell (2 CPUs, 2.5 GiB) waits while a model cell runs on a 2-CPU budget, a model
    cell behind it may start first; a cell bigger than the budget still runs, alone."""
    budget = Budget(cpus=2, memory=8 << 30)
    vm, m1, m2 = _cell("run", "vm"), _cell("model", "m1"), _cell("model", "m2")
    queue = [vm, m2]
    assert _next_cells(queue, [m1], jobs=4, budget=budget) == [m2]
    assert queue == [vm]
    assert _next_cells(queue, [m1, m2], jobs=4, budget=budget) == []
    assert _next_cells(queue, [], jobs=4, budget=budget) == [vm]
    small = Budget(cpus=1, memory=1 << 30)
    queue = [vm, m1]
    assert _next_cells(queue, [], jobs=4, budget=small) == [vm]  # alone, though too big
    assert _next_cells(queue, [vm], jobs=4, budget=small) == []
    assert _next_cells([m1, m2], [], jobs=1, budget=None) == [m1]  # --jobs still caps


def test_a_bad_budget_is_one_line_naming_the_option(tmp_path: Path) -> None:
    """--cpus 0, --memory nonsense, and a budget with the Ray executor are refused."""
    spec = tmp_path / "spec.json"
    spec.write_text(describe("pass", [1]))
    for extra, option in ((("--cpus", "0"), "--cpus"), (("--memory", "lots"), "--memory"),
                          (("--executor", "ray", "--cpus", "2"), "--cpus")):  # fmt: skip
        proc = _campaign(spec, tmp_path / f"out{option}{len(extra)}", *extra)
        assert proc.returncode == 2, proc.stderr
        assert option in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_a_failing_cell_is_failed_and_the_others_still_run(tmp_path: Path) -> None:
    """A cell exiting 3 is `failed` with its status and last stderr line; exit status 1."""
    code = ("import sys; n = {n}; print('cell broke', n, file=sys.stderr) if n == 2 else None; "
            "sys.exit(3 if n == 2 else 0)")
    spec = tmp_path / "spec.json"
    spec.write_text(describe(code, [1, 2, 3]))
    proc = _campaign(spec, tmp_path / "out", "--jobs", "1")
    assert proc.returncode == 1, proc.stderr
    assert _statuses(tmp_path / "out") == {"t-n=1": "done", "t-n=2": "failed", "t-n=3": "done"}
    failed = [x for x in _journal(tmp_path / "out") if x["event"] == "failed"]
    assert [(x["cell"], x["exit_status"], x["error"]) for x in failed] == [
        ("t-n=2", 3, "cell broke 2")
    ]
    assert "cell broke 2" in (tmp_path / "out" / "cells" / "t-n=2" / "cell.log").read_text()


def _wait_for(predicate: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def test_sigterm_stops_cleanly_and_a_rerun_runs_only_the_missing_cells(tmp_path: Path) -> None:
    """SIGTERM: the running cell's process group dies, it is journalled `interrupted`, exit 130;
    the same command then runs only the cells that were not done, its partial dir set aside."""
    block = tmp_path / "block"
    block.touch()
    code = ("import os, pathlib, subprocess, time; n = {n}; "
            f"slow = n == 2 and os.path.exists({str(block)!r}); "
            "child = subprocess.Popen(['sleep', '60']) if slow else None; "
            "pathlib.Path('{out}', 'child').write_text(str(child.pid)) if child else None; "
            "time.sleep(60 if slow else 0.1)")  # fmt: skip
    spec, out = tmp_path / "spec.json", tmp_path / "out"
    spec.write_text(describe(code, [1, 2, 3]))
    argv = [*DRIVER, "campaign", "run", str(spec), "--out", str(out), "--jobs", "1",
            "--grace", "2"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env=_env())  # fmt: skip
    # A cell runs in DIR/.running/<name without = or ,> and moves to DIR/cells/<id> at its end.
    _wait_for(lambda: any(p.read_text() for p in out.glob(".running/t-n_2-*/child")))
    child = int(next(out.glob(".running/t-n_2-*/child")).read_text())
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    _wait_for(lambda: not _alive(child), 10)
    assert (out / "cells" / "t-n=2" / "child").exists() and not any(out.glob(".running/*"))
    events = [(x["cell"], x["event"]) for x in _journal(out)]
    assert events == [("t-n=1", "start"), ("t-n=1", "done"), ("t-n=2", "start"),
                      ("t-n=2", "interrupted")]  # fmt: skip
    assert _statuses(out) == {"t-n=1": "done", "t-n=2": "interrupted", "t-n=3": "pending"}

    block.unlink()
    again = _campaign(spec, out)
    assert again.returncode == 0, again.stderr
    starts = [x["cell"] for x in _journal(out) if x["event"] == "start"]
    assert starts == ["t-n=1", "t-n=2", "t-n=2", "t-n=3"]  # t-n=1 was not run again
    assert (out / "previous" / "t-n=2" / "child").exists()
    assert not (out / "cells" / "t-n=2" / "child").exists()
    assert _statuses(out) == dict.fromkeys(("t-n=1", "t-n=2", "t-n=3"), "done")


def test_a_changed_spec_is_refused_without_force(tmp_path: Path) -> None:
    """Rerunning DIR with another spec is one error line and exit 2; --force runs it."""
    spec, out = tmp_path / "spec.json", tmp_path / "out"
    spec.write_text(describe("pass", [1]))
    assert _campaign(spec, out).returncode == 0
    assert _campaign(spec, out).returncode == 0  # the same spec: nothing to do
    assert [x["event"] for x in _journal(out)] == ["start", "done"]
    spec.write_text(describe("pass", [1, 2]))
    refused = _campaign(spec, out)
    assert refused.returncode == 2
    assert refused.stderr.strip().count("\n") == 0 and "differs from the spec" in refused.stderr
    forced = _campaign(spec, out, "--force")
    assert forced.returncode == 0
    assert [x["cell"] for x in _journal(out) if x["event"] == "start"] == ["t-n=1", "t-n=2"]


def test_the_local_executor_never_imports_ray(tmp_path: Path) -> None:
    """A local campaign runs without importing ray (an optional extra)."""
    spec = tmp_path / "spec.json"
    spec.write_text(describe("pass", [1]))
    code = ("import sys; from nbdfork.cli import main; import tests.campaign_driver as d; "
            "d.command.load_spec = d.python_cells; "
            f"status = main(['campaign', 'run', {str(spec)!r}, "
            f"'--out', {str(tmp_path / 'o')!r}]); "
            "assert status == 0, status; assert 'ray' not in sys.modules, 'ray imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env=_env(), check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def test_the_ray_executor_without_ray_is_one_line_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--executor ray without ray installed: a ConfigError that names the `ray` extra."""
    from nbdfork.campaign.executors import RayExecutor  # noqa: PLC0415

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConfigError, match=r"\.\[ray\]") as caught:
        RayExecutor(None)
    assert caught.value.key == "--executor"


@pytest.mark.slow
def test_the_example_model_spec_runs_end_to_end(tmp_path: Path) -> None:
    """`campaign example model` piped into `campaign run`: every cell done with its model
    report, a merged report.md with the spread and a plot; `campaign report` re-renders it."""
    example = subprocess.run([str(NBDFORK), "campaign", "example", "model"], capture_output=True,
                             text=True, check=True, timeout=60).stdout  # fmt: skip
    spec, out = tmp_path / "spec.toml", tmp_path / "out"
    spec.write_text(example)
    proc = _campaign(spec, out, timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["schema"] == "nbdfork.campaign/1"
    assert {c["status"] for c in report["cells"]} == {"done"} and len(report["cells"]) == 4
    for cell in report["cells"]:
        model = json.loads((out / cell["dir"] / "report.json").read_text())
        assert model["runs"][0]["policy"] == cell["axes"]["policy"]
        assert model["seed"] == cell["seed"]
    events = _journal(out)
    assert len(events) == 8 and all(isinstance(e["cell"], str) for e in events)
    md = (out / "report.md").read_text()
    assert "| stable | 1ms | jitter:0.9 | 2 |" in md and "| fork | 1ms | jitter:0.9 | 2 |" in md
    assert (out / "model_spread.png").stat().st_size > 1000
    (out / "report.md").unlink()
    again = subprocess.run([str(NBDFORK), "campaign", "report", str(out)], capture_output=True,
                           text=True, timeout=120, check=False)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert (out / "report.md").read_text() == md
    assert "<table>" in (out / "report.html").read_text()
    # `nbdfork report` re-renders any report: the campaign's and a model cell's
    for directory in (out, out / report["cells"][0]["dir"]):
        (directory / "report.md").unlink()
        proc = subprocess.run([str(NBDFORK), "report", str(directory)], capture_output=True,
                              text=True, timeout=120, check=False)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert (directory / "report.md").is_file()
    assert (out / "report.md").read_text() == md


def _ray_available() -> bool:
    try:
        import ray  # noqa: F401, PLC0415
    except ImportError:
        if os.environ.get("NBDFORK_RAY_TESTS") == "1":
            pytest.fail("NBDFORK_RAY_TESTS=1 but ray is not installed: pip install -e '.[ray]'")
        return False
    return True


@pytest.mark.slow
def test_the_ray_executor_runs_model_cells_on_a_local_runtime(tmp_path: Path) -> None:
    """--executor ray on a private local runtime: each model cell's tar.gz is unpacked into
    DIR/cells/<id>/ with its report, and the journal says done."""
    if not _ray_available():
        pytest.skip("ray is not installed (pip install -e '.[ray]'; NBDFORK_RAY_TESTS=1 fails)")
    spec, out = tmp_path / "spec.toml", tmp_path / "out"
    spec.write_text(example_spec("model").replace("seeds = 2", "seeds = 1").replace(
        "seconds = 2", "seconds = 1"))  # fmt: skip
    proc = _campaign(spec, out, "--executor", "ray", timeout=600)
    assert proc.returncode == 0, proc.stderr
    cells = ("model-policy=stable-seed=0", "model-policy=fork-seed=0")
    assert _statuses(out) == dict.fromkeys(cells, "done")
    for cell in cells:
        model = json.loads((out / "cells" / cell / "report.json").read_text())
        assert model["runs"][0]["policy"] in cell
        assert "nbdfork" in (out / "cells" / cell / "cell.log").read_text()
    done = [x for x in _journal(out) if x["event"] == "done"]
    assert {x["executor"] for x in done} == {"ray"} and all(x["node"] for x in done)


def test_the_merged_report_sets_the_model_beside_the_kernel() -> None:
    """With run and model cells, one table pairs stable_writes=0 with `none` and 1 with
    `stable` (kernel tear rate with its interval, stall spread over seeds) and shows fork."""
    from nbdfork.campaign.merge import Collected, Sample, campaign_blocks  # noqa: PLC0415
    from nbdfork.report.document import to_markdown  # noqa: PLC0415

    def run(sw: str, torn: int, p99: float) -> Sample:
        return Sample({"fs": "ext4", "stable_writes": sw},
                      {"torn": torn, "stamped": 1000, "stale": 0, "overlapping": 0,
                       "stall_p99_ms": p99})  # fmt: skip

    def model(policy: str, p99: float) -> Sample:
        return Sample({"policy": policy}, {"throughput": 100.0, "stall_p99_ms": p99, "torn": 0,
                                           "stale": 0, "overlapping": 0})  # fmt: skip

    found = Collected({"run": [run("0", 10, 1.0), run("0", 20, 3.0), run("1", 0, 9.0)],
                       "model": [model("none", 0.1), model("stable", 5.0),
                                 model("fork", 0.2)]}, {})  # fmt: skip
    cell = CellRecord(id="c", kind="run", status="done", axes={}, seed=1, dir="cells/c")
    report = CampaignReport(name="n", seed=1, spec_hash="h" * 16, executor="local", jobs=1,
                            wall_s=1.0, cells=(cell,), counts={"done": 1})  # fmt: skip
    md = to_markdown(campaign_blocks(report, found, []))
    assert "## The model beside the kernel" in md
    assert ("| no stable pages | stable_writes=0 | 2 | 30/2000 | 1.5 (1.05-2.13) | 2 (1-3) "
            "| none | 1 | 0 | 0.1 |") in md
    assert "| stable pages (the writer waits) | stable_writes=1 | 1 | 0/1000 | 0 (0-0.383) |" in md
    assert "| page forking (a copy is written) | - | - | - | - | - | fork | 1 | 0 | 0.2 |" in md
    assert "fork-unordered" not in md  # no such cell: no row


def test_a_running_cells_output_streams_into_its_log_and_the_display(tmp_path: Path) -> None:
    """Each stdout line reaches `on_line` (the campaign's display) and cell.log while the cell
    still runs, not when it ends."""
    import asyncio  # noqa: PLC0415

    from nbdfork.campaign.executors import LocalExecutor  # noqa: PLC0415

    code = ("import time; print('booting', flush=True); time.sleep(1.5); "
            "print('workload', flush=True)")  # fmt: skip
    cell = Cell(id="c", kind="python", axes={}, seed=1, argv=(sys.executable, "-c", code),
                ok_statuses=(0,))  # fmt: skip
    directory = tmp_path / "cells" / "c"
    directory.mkdir(parents=True)
    heard: list[tuple[float, str, str]] = []

    def on_line(line: str) -> None:
        logs = list((tmp_path / ".running").glob("*/cell.log"))
        heard.append((time.monotonic(), line, logs[0].read_text() if logs else ""))

    outcome = asyncio.run(LocalExecutor().run(cell, directory, on_line))
    ended = time.monotonic()
    assert outcome.ok and [line for _, line, _ in heard] == ["booting", "workload"]
    assert ended - heard[0][0] > 1.0  # heard while the cell was still sleeping
    assert "booting" in heard[0][2]  # and already in its log
    assert "workload" in (directory / "cell.log").read_text()
