"""`make bench-int8` end to end on a handful of texts: both kernels timed against fp32, cosines reported."""

from __future__ import annotations

import json

from benchmarks.int8_kernels import main
from tests.int8_helpers import patch_slow_int_mm


def test_int8_benchmark_times_both_kernels_against_fp32(tmp_path, capsys, monkeypatch):
    patch_slow_int_mm(monkeypatch)  # the timings are not what this checks
    out = tmp_path / "int8.json"
    assert main(["--texts", "3", "--int-mm-texts", "2", "--threads", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    names = [name for group in result["groups"] for name in group["cases"]]
    assert names == ["fp32", "int8 fbgemm", "fp32", "int8 int_mm"]
    for group in result["groups"]:
        for case in group["cases"].values():
            assert len(case["seconds"]) == 2 and case["min_cosine_to_fp32"] > 0.99
    assert "| 1 | 3 | int8 fbgemm |" in capsys.readouterr().out
