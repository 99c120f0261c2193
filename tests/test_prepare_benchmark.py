"""The prepare benchmark end to end at a tiny size (its generator, ris/data/fake_refer.py: tests/test_fake_refer.py)."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def bench():
    from benchmarks import prepare_benchmark

    return prepare_benchmark


def test_benchmark_script_prints_one_json_line(bench, tmp_path, capsys):
    argv = ["--refs", "120", "--images", "50", "--anns", "200", "--out", str(tmp_path / "work")]
    bench.main(argv)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["counts_match"] is True
    assert result["refs"] == 120 and sum(s["refs"] for s in result["summary"].values()) == 120
    assert result["cpu_count"] >= 1 and result["peak_rss_mb"] > 0
    for key in ("prepare_s", "load_refs_s", "load_instances_s", "rle_s", "tables_s", "parquet_write_s"):
        assert result[key] >= 0
    assert not (tmp_path / "work" / "refer").exists()  # removed without --keep
