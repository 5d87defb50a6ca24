"""`adapterkit serve` hands its options to the server's own parser."""

import subprocess
import sys


def _cli(*args):
    code = "import sys; from adapterkit.cli import app; sys.argv = ['adapterkit', *sys.argv[1:]]; app()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


def test_serve_help_lists_the_server_options():
    done = _cli("serve", "--help")
    assert done.returncode == 0
    for option in ("--adapter NAME=DIR", "--batch-window-ms", "--adapter-root", "--read-only", "--max-body-bytes",
                   "--request-timeout", "--tokenize-threads"):
        assert option in done.stdout


def test_serve_with_a_missing_model_fails_in_one_line(tmp_path):
    done = _cli("serve", "--model", str(tmp_path / "nothing-here"), "--port", "0")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "adapterkit serve: error:" in done.stderr


def test_serve_refuses_a_port_out_of_range_in_one_line():
    done = _cli("serve", "--port", "99999")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "argument --port: '99999' is not a TCP port; give 0-65535" in done.stderr.strip().splitlines()[-1]


def test_serve_without_the_server_extra_names_the_install(monkeypatch, capsys):
    import pytest

    from adapterkit.serve.server import main

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if `pip install adapterkit` without [serve]
    with pytest.raises(SystemExit) as done:
        main(["--port", "0"])
    assert done.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "uvicorn" in err and "pip install 'adapterkit[serve]'" in err


def test_serve_with_an_unreachable_hub_id_fails_at_once(monkeypatch):
    """A name that is not an alias or a directory is checked once, quickly (no minute of hub retries)."""
    import time

    started = time.perf_counter()
    done = _cli("serve", "--model", "nosuch-org/nosuch-model-xyz", "--port", "0")
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr
    assert "nosuch-org/nosuch-model-xyz" in done.stderr and time.perf_counter() - started < 60
