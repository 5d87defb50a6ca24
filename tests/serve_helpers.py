"""Helpers for the server tests and the load benchmark: a tiny random BERT with the real MiniLM tokenizer,
saved adapters with different heads, and a real server process on loopback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

import adapterkit as ak

ROOT = Path(__file__).resolve().parents[1]


def perturb(model, name: str, scale: float, seed: int) -> None:
    """Move an adapter far from its near-identity init so that tasks really differ."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ak.adapter_parameters(model, name):
            p.add_(torch.randn(p.shape, generator=g) * scale)


# name -> (head, extra): label names from HeadConfig.labels, from extra["label_names"], none, and regression.
ADAPTERS = {
    "sentiment": (ak.HeadConfig("classification", 2, ("negative", "positive")), {}),
    "topic": (3, {"label_names": ["world", "sports", "tech"]}),
    "sts": ("regression", {}),
    "plain": (None, {}),  # the model's own head, no label names -> LABEL_i
    "hot": (4, {"label_names": ["a", "b", "c", "d"]}),  # loaded while serving
}


def tiny_model_dir(root: Path, seed: int = 0) -> Path:
    """A tiny random BertForSequenceClassification (2 labels) with the MiniLM tokenizer, saved."""
    import transformers
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from adapterkit.models import resolve_model

    transformers.logging.set_verbosity_error()
    tok = AutoTokenizer.from_pretrained(resolve_model("minilm"))
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=2)
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config).eval()
    out = root / f"tiny-bert-{seed}"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def save_adapters(model, root: Path, names, size: int = 8, scale: float = 0.2) -> dict[str, Path]:
    """Add, perturb and save each adapter of ADAPTERS named in ``names``; returns {name: dir}."""
    dirs = {}
    for i, name in enumerate(names):
        head, extra = ADAPTERS[name]
        ak.add_adapter(model, name, ak.AdapterConfig(size=size), head=head)
        perturb(model, name, scale, seed=100 + i)
        dirs[name] = ak.save_adapter(model, name, root / "adapters" / name, extra=extra)
    return dirs


class Server:
    """``python -m adapterkit.serve ... --port 0`` on 127.0.0.1; ``url`` once /healthz answers."""

    def __init__(self, args: list[str], log_path: Path, timeout: float = 120.0):
        import httpx

        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "adapterkit.serve", "--host", "127.0.0.1", "--port", "0",
                                      *args], stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        deadline = time.monotonic() + timeout
        self.url = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            m = re.search(r"listening on (http://\S+:\d+)", self.log())
            if m:
                try:
                    if httpx.get(m.group(1) + "/healthz", timeout=2).status_code == 200:
                        self.url = m.group(1)
                        return
                except httpx.TransportError:
                    pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not become healthy in {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


def build_world(root: Path, names=("sentiment", "sts", "hot")) -> dict:
    """A tiny model dir and saved adapters ``names`` under ``root``: {"model_dir", "dirs", "tok"}."""
    from adapterkit.models import load_model

    model_dir = tiny_model_dir(root)
    model, tok = load_model(str(model_dir))
    dirs = save_adapters(model, root, names)
    return {"root": root, "model_dir": model_dir, "dirs": dirs, "tok": tok}


def build_world_with_root(root: Path) -> dict:
    """build_world, plus ``w["allowed"]``: an adapter root holding a copy of the "hot" adapter as ``hot/``."""
    import shutil

    w = build_world(root)
    w["allowed"] = root / "allowed"
    shutil.copytree(w["dirs"]["hot"], w["allowed"] / "hot")
    return w


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory (VmHWM) in MB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/PID/status")
