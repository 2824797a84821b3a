"""Kernel fetching (private apt, package choice, cache) and multi-kernel reports, offline."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from nbdfork.cli import main
from nbdfork.errors import ConfigError
from nbdfork.experiments.matrix.schema import KernelInfo, load_report, write_report
from nbdfork.experiments.matrix.session import kernel_list, merge_reports
from nbdfork.harness.fetch import META, FetchError, PrivateApt, cached_kernels, pick_packages

GOLDEN = Path(__file__).parent / "golden" / "report"

NAMES = [
    "linux-image-6.1.0-50-amd64-unsigned", "linux-image-6.12.117+deb13-amd64-unsigned",
    "linux-image-6.12.9+deb13-amd64-unsigned", "linux-binary-7.2.13+deb14-amd64",
    "linux-modules-7.2.13+deb14-amd64", "linux-base-7.2.13+deb14-amd64",
    "linux-binary-7.2.9+deb14-amd64", "linux-image-amd64", "linux-headers-6.12.117+deb13-amd64",
]  # fmt: skip


def test_a_series_picks_its_newest_build_in_either_packaging() -> None:
    """6.12 -> the newest linux-image-...-unsigned; 7.2 -> binary + modules + base, newest."""
    assert pick_packages("6.12", NAMES) == (
        "6.12.117+deb13-amd64", ["linux-image-6.12.117+deb13-amd64-unsigned"]
    )
    assert pick_packages("7.2", NAMES) == ("7.2.13+deb14-amd64", [
        "linux-binary-7.2.13+deb14-amd64", "linux-modules-7.2.13+deb14-amd64",
        "linux-base-7.2.13+deb14-amd64",
    ])  # fmt: skip
    assert pick_packages("6.1", NAMES)[0] == "6.1.0-50-amd64"  # not 6.12
    assert pick_packages("7", NAMES)[0] == "7.2.13+deb14-amd64"  # the newest 7.x
    with pytest.raises(FetchError, match=r"no Debian kernel of series 7\.1"):
        pick_packages("7.1", NAMES)
    with pytest.raises(ConfigError, match="not a series"):
        pick_packages("latest", NAMES)


def test_private_apt_never_points_at_the_hosts_apt(tmp_path: Path) -> None:
    """Every apt directory and list is under the cache; sources name the archive keyring."""
    apt = PrivateApt(tmp_path)
    options = dict(o.split("=", 1) for o in apt.options()[1::2])
    for key in ("Dir::Etc::SourceParts", "Dir::State", "Dir::State::status", "Dir::Cache"):
        assert options[key].startswith(str(tmp_path))
    assert options["Dir::Etc::SourceList"] == "/dev/null"
    sources = (tmp_path / "apt" / "sources" / "nbdfork.sources").read_text()
    assert "Suites: bookworm trixie sid" in sources
    assert "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" in sources


def test_kernel_list_shows_fetched_kernels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fetched kernel's metadata makes it listed (and findable by series)."""
    dest = tmp_path / "7.2.13+deb14-amd64"
    dest.mkdir()
    (dest / META).write_text(json.dumps({
        "release": "7.2.13+deb14-amd64", "series": "7.2", "image": str(dest / "vmlinuz"),
        "modules": str(dest), "packages": {"linux-binary-7.2.13+deb14-amd64": "7.2.13-1"},
        "suite": "sid", "fetched": "2026-11-30T00:00:00+00:00",
    }))  # fmt: skip
    monkeypatch.setenv("NBDFORK_KERNEL_CACHE", str(tmp_path))
    assert [k.release for k in cached_kernels()] == ["7.2.13+deb14-amd64"]
    assert main(["kernel", "list"]) == 0
    assert "7.2.13+deb14-amd64" in capsys.readouterr().out


def test_kernel_lists_and_merged_reports(tmp_path: Path) -> None:
    """--kernel 6.1,7.2 is a list; merged runs carry kernel-qualified ids and dirs."""
    assert kernel_list("6.1,7.2") == ["6.1", "7.2"] and kernel_list("7.2") == ["7.2"]
    assert kernel_list(None) == [None]
    with pytest.raises(ConfigError, match="once"):
        kernel_list("7.2,7.2")
    out = Path("/r")
    golden = load_report(GOLDEN)
    reports = [
        msgspec.structs.replace(
            golden, kernel=k, accel="tcg",
            kernel_info=KernelInfo(release=k, image=f"/k/{k}"),
            runs=tuple(msgspec.structs.replace(r, kernel=k) for r in golden.runs[:1]),
        )
        for k in ("6.1.0-57-amd64", "7.2.13+deb14-amd64")
    ]  # fmt: skip
    merged = merge_reports(out, reports, [out / "kernels" / "6.1", out / "kernels" / "7.2"])
    name = golden.runs[0].id
    assert [r.id for r in merged.runs] == [f"6.1.0-57-amd64:{name}", f"7.2.13+deb14-amd64:{name}"]
    assert merged.runs[1].dir == f"kernels/7.2/runs/{name}"
    assert merged.kernels == ("6.1.0-57-amd64", "7.2.13+deb14-amd64")
    overhead = golden.harness.per_config_overhead_s
    assert merged.harness.per_config_overhead_s == overhead + overhead
    assert merged.harness.per_kernel is not None and len(merged.harness.per_kernel) == 2
    assert isinstance(merged.kernel_info, tuple) and len(merged.kernel_info) == 2
    # a merged report is a report: it writes and loads back equal
    assert load_report(write_report(merged, tmp_path / "report.json")) == merged
