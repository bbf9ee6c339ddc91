"""heml bench runs end to end (a tiny grid) and writes its JSON and plot."""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_tiny_grid_writes_results(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "heml",
            "bench",
            "--quick",
            "--no-goals",
            "--dims",
            "8",
            "--out",
            str(tmp_path),
            "--cap",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for system in ("heml", "floor (SEAL ops)", "TenSEAL naive", "scikit-learn (plaintext)"):
        assert system in out
    assert "not run" in out  # the 2 s cap stops the naive baseline at n=4096, never extrapolated
    (result,) = tmp_path.glob("bench-*.json")
    data = json.loads(result.read_text())
    heml_cells = [c for c in data["cells"] if c["system"] == "heml"]
    assert {c["n"] for c in heml_cells} == {1, 64, 4096}
    assert all(c["max_abs_error"] < 1e-4 for c in heml_cells)
    assert all(c["bytes_up"] > 0 and c["bytes_down"] > 0 for c in heml_cells)
    assert list(tmp_path.glob("bench-*.png"))
