"""The Ray executor on a real two-node cluster started by the test, and the spec's `resources`.

The cluster is two raylets on this machine: `ray start --head` (1 CPU, no custom resource) and
`ray start --address` (1 CPU and `node2 = 1`), each with its own --temp-dir, working directory
and TMPDIR, so a cell's working files on node 2 are in a directory that neither the head nor the
driver uses. Ray is an optional extra: these tests skip without it, and fail when
NBDFORK_RAY_TESTS=1.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nbdfork.campaign.spec import parse_spec
from nbdfork.errors import ConfigError
from nbdfork.seeds import derive_seed

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CELL = "model-policy=fork-seed=0"
SPEC = """
[campaign]
name = "two-nodes"
seed = 1

[[cells]]
kind = "model"
seeds = 1
timeout = 120

[cells.axes]
policy = ["fork"]

[cells.options]
latency = "1ms"
seconds = 1

[cells.resources]
node2 = 1
"""

# Asks the cluster (as a throwaway driver) for its live nodes once both have registered.
NODES = """
import json, sys, time, ray
ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
deadline = time.monotonic() + 60
while len(alive := [n for n in ray.nodes() if n["Alive"]]) < 2 and time.monotonic() < deadline:
    time.sleep(0.2)
print(json.dumps([{k: n[k] for k in ("NodeID", "RayletSocketName", "Resources")} for n in alive]))
"""


# ------------------------------------------------------------------------- spec (no Ray needed)


def test_a_group_s_resources_reach_each_of_its_cells_but_not_their_key() -> None:
    """[cells.resources] gives every cell of the group those amounts; the cell key ignores them."""
    spec = parse_spec(SPEC)
    plain = parse_spec(SPEC.replace("[cells.resources]\nnode2 = 1\n", ""))
    assert [c.resources for c in spec.cells] == [{"node2": 1.0}]
    assert plain.cells[0].resources == {}
    assert spec.cells[0].key == plain.cells[0].key


@pytest.mark.parametrize(
    ("resources", "key", "message"),
    [
        ('"" = 1', "cells[0].resources", "non-empty"),
        ("node2 = 0", "cells[0].resources.node2", "at least 0.0001"),
        ("node2 = -1", "cells[0].resources.node2", "at least"),
        ("node2 = nan", "cells[0].resources.node2", "finite"),
        ("node2 = inf", "cells[0].resources.node2", "finite"),
        ('node2 = "1"', "cells[0].resources.node2", "finite number"),
        ("node2 = true", "cells[0].resources.node2", "finite number"),
        ("CPU = 1", "cells[0].resources.CPU", "Ray's own"),
        ("memory = 1", "cells[0].resources.memory", "Ray's own"),
    ],
)
def test_a_bad_resource_is_one_config_error_naming_it(resources: str, key: str,
                                                      message: str) -> None:  # fmt: skip
    """Empty names, amounts that are not finite positive numbers, Ray's built-ins: one line."""
    with pytest.raises(ConfigError, match=message) as caught:
        parse_spec(SPEC.replace("node2 = 1", resources))
    assert caught.value.key == key
    assert "\n" not in str(caught.value)


# ------------------------------------------------------------------------- the two-node cluster


@dataclass(frozen=True, slots=True)
class Cluster:
    """Where the test's cluster listens and each node's directory (cwd, TMPDIR, --temp-dir)."""

    address: str
    token: str  # Ray's auth token: the cluster listens on every interface, not only loopback
    head: Path
    node2: Path
    nodes: list[dict[str, Any]]  # ray.nodes(): NodeID, RayletSocketName, Resources

    def node_id(self, directory: Path) -> str:
        """The Ray id of the node whose raylet socket lies in `directory`."""
        (found,) = [n["NodeID"] for n in self.nodes
                    if Path(n["RayletSocketName"]).is_relative_to(directory)]  # fmt: skip
        return str(found)


def _require_ray() -> None:
    try:
        import ray  # noqa: F401, PLC0415
    except ImportError:
        if os.environ.get("NBDFORK_RAY_TESTS") == "1":
            pytest.fail("NBDFORK_RAY_TESTS=1 but ray is not installed: pip install -e '.[ray]'")
        pytest.skip("ray is not installed (pip install -e '.[ray]'; NBDFORK_RAY_TESTS=1 fails)")


def _free_ports(count: int) -> list[int]:
    """`count` distinct ports nothing listens on now (bound to port 0, then released)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _env(directory: Path, token: str) -> dict[str, str]:
    # PYTHONPATH: the nodes' workers, the cells and the CLI import this checkout's nbdfork,
    # wherever the venv's editable install points. TMPDIR: the node's own scratch space.
    # RAY_AUTH_*: this cluster's own token, whatever ~/.ray/auth_token holds (a local
    # ray.init() writes one, and `ray start --head` then demands it).
    (directory / "tmp").mkdir(parents=True, exist_ok=True)
    return dict(os.environ, PYTHONPATH=str(ROOT), TMPDIR=str(directory / "tmp"),
                RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0",
                NO_COLOR="1")  # fmt: skip


def _ray_start(directory: Path, token: str, groups: list[int], *extra: str) -> None:
    """`ray start` a node in a session of its own (its daemons stay in that process group)."""
    ports = _free_ports(6)
    argv = [str(BIN / "ray"), "start", "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
            "--temp-dir", str(directory / "r"), "--object-store-memory", str(100 << 20),
            "--disable-usage-stats", "--log-style", "record",
            *(f"--{name}={port}" for name, port in zip(
                ("node-manager-port", "object-manager-port", "metrics-export-port",
                 "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                 "runtime-env-agent-port"), ports, strict=True)),
            *extra]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=directory, env=_env(directory, token), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    groups.append(proc.pid)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output


def _stop(groups: list[int], grace: float = 2.0) -> None:
    """SIGTERM each node's process group, SIGKILL what is left after `grace` seconds (the
    raylets and the GCS outlast a SIGTERM by many seconds; the cluster's state is throwaway)."""
    for group in reversed(groups):  # node 2 first: its raylet need not watch the GCS go away
        _signal(group, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(_signal(g, 0) for g in groups) and time.monotonic() < deadline:
        time.sleep(0.1)
    for group in groups:
        _signal(group, signal.SIGKILL)


def _signal(group: int, sig: int) -> bool:
    """Signal a process group; False when no process of it is left."""
    try:
        os.killpg(group, sig)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A head with 1 CPU and no `node2` resource, and node 2 with 1 CPU and `node2 = 1`."""
    _require_ray()
    base = tmp_path_factory.mktemp("ray")  # short: Ray's unix socket paths must fit 107 bytes
    head, node2 = base / "head", base / "n2"
    token = secrets.token_hex(32)
    groups: list[int] = []
    try:
        (gcs, client, dashboard) = _free_ports(3)
        _ray_start(head, token, groups, "--head", f"--port={gcs}", "--include-dashboard=false",
                   f"--ray-client-server-port={client}", f"--dashboard-port={dashboard}")
        address = f"127.0.0.1:{gcs}"
        _ray_start(node2, token, groups, f"--address={address}", "--resources", '{"node2": 1}')
        query = subprocess.run([sys.executable, "-c", NODES, address], cwd=base,
                               env=_env(base, token), capture_output=True, text=True, timeout=90,
                               check=False)  # fmt: skip
        assert query.returncode == 0, query.stderr
        nodes = json.loads(query.stdout.strip().splitlines()[-1])
        assert len(nodes) == 2, nodes
        yield Cluster(address, token, head, node2, nodes)
    finally:
        _stop(groups)


def _campaign(cluster: Cluster, spec: str, out: Path) -> subprocess.CompletedProcess[str]:
    """`nbdfork campaign run` of `spec` on the cluster, as a driver with its own TMPDIR."""
    out.parent.mkdir(parents=True)
    (out.parent / "spec.toml").write_text(spec)
    argv = [str(BIN / "nbdfork"), "campaign", "run", str(out.parent / "spec.toml"),
            "--out", str(out), "--executor", "ray", "--address", cluster.address]  # fmt: skip
    return subprocess.run(argv, cwd=out.parent, env=_env(out.parent, cluster.token),
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip


@pytest.mark.slow
def test_a_cell_asking_for_a_custom_resource_runs_on_the_node_that_has_it(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A node2 = 1 cell runs on node 2 in node 2's TMPDIR and reaches --out only as an archive."""
    head, node2 = cluster.node_id(cluster.head), cluster.node_id(cluster.node2)
    resources = {n["NodeID"]: n["Resources"] for n in cluster.nodes}
    assert "node2" not in resources[head] and resources[head]["CPU"] == 1  # it could take a cell
    assert resources[node2]["node2"] == 1
    out = tmp_path / "driver" / "out"
    proc = _campaign(cluster, SPEC, out)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    (cell,) = report["cells"]
    assert (cell["id"], cell["status"], report["counts"]["done"]) == (CELL, "done", 1)
    # Where it ran, by Ray's node id (the journal's and report's node: host/first 12 digits).
    assert head[:12] != node2[:12]
    assert cell["node"] == f"{socket.gethostname()}/{node2[:12]}"
    (done,) = [e for e in map(json.loads, (out / "journal.jsonl").read_text().splitlines())
               if e["event"] == "done"]  # fmt: skip
    assert (done["executor"], done["node"]) == ("ray", cell["node"])
    # Its working files were in node 2's TMPDIR, gone when the task returned: what is in
    # --out came back in the archive, not through a shared directory.
    directory = out / "cells" / CELL
    argv = (directory / "cell.log").read_text().splitlines()[0].removeprefix("# ").split()
    worked = Path(argv[argv.index("--out") + 1])
    assert worked.is_relative_to(cluster.node2 / "tmp") and not worked.exists()
    assert list((cluster.node2 / "tmp").iterdir()) == []
    # The shipped report is the cell's: its schema, policy, latency and derived seed.
    model = json.loads((directory / "report.json").read_text())
    assert model["schema"] == "nbdfork.model-report/1"
    assert model["plan"]["seed"] == cell["seed"] == derive_seed(1, CELL)
    assert [(r["policy"], r["latency_ms"]) for r in model["runs"]] == [("fork", 1.0)]
    assert (directory / "report.md").is_file()


@pytest.mark.slow
def test_a_cell_asking_for_a_resource_no_node_has_fails_at_once_naming_it(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A node3 = 1 cell fails at submission with one line naming node3, not queued forever."""
    out = tmp_path / "driver" / "out"
    started = time.monotonic()
    proc = _campaign(cluster, SPEC.replace("node2 = 1", "node3 = 1"), out)
    assert proc.returncode == 1, proc.stderr
    assert time.monotonic() - started < 60
    (cell,) = json.loads((out / "report.json").read_text())["cells"]
    assert (cell["status"], cell["error"]) == ("failed", "ray: no live node has node3=1")
