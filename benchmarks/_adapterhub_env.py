"""Create (once) the side virtual environment for the AdapterHub and PEFT baselines.

AdapterHub's ``adapters`` pins an older transformers than adapterkit uses, so it lives in its own venv under
``benchmarks/.venvs/adapterhub`` (gitignored). torch is installed first and pinned (==2.13.0, the CPU wheel);
an unpinned torch would pull a multi-GB CUDA build. PEFT goes in the same venv, never in the project's deps.

    python benchmarks/_adapterhub_env.py          # create or reuse; prints the venv's python
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venvs" / "adapterhub"
TORCH = "torch==2.13.0"
ADAPTERS = "adapters==1.3.0"
PEFT = "peft"
STAMP = VENV / ".adapterkit-bench-ready"


def python_path() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure(verbose: bool = True) -> Path:
    """The side venv's python, creating the venv first if needed (a few minutes, PyPI only)."""
    py = python_path()
    if STAMP.exists() and py.exists():
        return py
    if verbose:
        print(f"[bench] creating {VENV} ({TORCH}, {ADAPTERS}, {PEFT}) ...", file=sys.stderr, flush=True)
    if not py.exists():
        venv.EnvBuilder(with_pip=True, clear=False).create(VENV)

    def pip(*args: str) -> None:
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args], check=True)

    pip(TORCH)  # first, pinned: the CPU wheel
    pip(ADAPTERS, TORCH)
    # Keep the transformers that adapters chose while adding peft.
    tf = subprocess.run([str(py), "-c", "import transformers; print(transformers.__version__)"],
                        check=True, capture_output=True, text=True).stdout.strip()
    pip(PEFT, f"transformers=={tf}", TORCH, "psutil")
    STAMP.write_text(f"{TORCH} {ADAPTERS} transformers=={tf} {PEFT}\n")
    return py


if __name__ == "__main__":
    print(ensure())
