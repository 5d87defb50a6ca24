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
