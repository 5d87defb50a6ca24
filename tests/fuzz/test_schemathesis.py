"""Schemathesis against the LIVE server (``python -m adapterkit.serve`` on 127.0.0.1): every operation of the
published OpenAPI schema, every check (``--checks all``), all phases, a bounded number of examples per
operation. Zero failures allowed: no 5xx, every status documented, every body matching its schema, invalid
data rejected, unsupported methods answered 405 with ``Allow``.

Two checks get this server's honest status lists (``schemathesis.toml`` written below):
``positive_data_acceptance`` also takes 400 (a schema-valid load of a path that is not an adapter directory),
413 and 503 (limits and back-pressure the schema cannot express); ``negative_data_rejection`` also takes 413
(too many inputs is 413 by design). Slow (a few minutes): ``make test-slow`` or ``pytest -m slow``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from serve_helpers import Server, build_world

CONFIG = """\
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "400", "401", "403", "404", "409", "413", "503"]

[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422"]
"""


@pytest.mark.slow
def test_schemathesis_finds_nothing(tmp_path):
    w = build_world(tmp_path, names=("sentiment", "sts", "hot"))
    allowed = tmp_path / "allowed"
    shutil.copytree(w["dirs"]["hot"], allowed / "hot")
    args = ["--model", str(w["model_dir"]), "--adapter", f"sentiment={w['dirs']['sentiment']}",
            "--adapter", f"sts={w['dirs']['sts']}", "--adapter-root", str(allowed), "--max-inputs", "8",
            "--max-chars", "300", "--max-body-bytes", str(256 << 10), "--batch-window-ms", "1",
            "--log-level", "error", "--threads", "1"]
    server = Server(args, tmp_path / "server.log")
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    st = Path(sys.executable).with_name("schemathesis")
    try:
        done = subprocess.run(
            [str(st), "--config-file", str(config), "--no-color", "run", f"{server.url}/openapi.json",
             "--checks", "all", "--max-examples", "40", "--seed", "13", "--workers", "1",
             "--generation-database", "none", "--request-timeout", "30", "--max-time", "180",
             "--report", "junit", "--report-dir", str(tmp_path / "report")],
            capture_output=True, text=True, timeout=420, cwd=tmp_path)
        alive = server.proc.poll() is None
    finally:
        server.stop()
    out = done.stdout + done.stderr
    summary = out[out.rfind("SUMMARY") if "SUMMARY" in out else -3000:]
    print(summary)
    (tmp_path.parent / "schemathesis-summary.txt").write_text(summary)
    assert alive, server.log()
    assert done.returncode == 0, out[-12000:]
    assert "Server error" not in out and re.search(r"(\d+) generated, \1 passed", summary), summary
