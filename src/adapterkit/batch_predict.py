"""``adapterkit predict --input-file``: score a CSV / TSV / JSONL file with a trained adapter, to JSON Lines.

    adapterkit predict --adapter runs/rt/adapter --input-file reviews.csv --output preds.jsonl
    adapterkit predict --onnx exports/rt --input-file reviews.csv --output preds.jsonl   # ONNX Runtime

The model call is the only thing the two differ in (``_TorchModel``, ``_OnnxModel``): with ``--onnx`` the
graph ``adapterkit export --format onnx`` wrote runs with ONNX Runtime on the CPU, its tokenizer, labels, max
length (and the run's eval batch size, for exports that recorded it) read from ``adapterkit_onnx.json``.

One line per input row, in input order: ``{"index": i, "label": ..., "scores": {label: probability}}``
(classification) or ``{"index": i, "score": x}`` (regression). Columns follow ``train``'s rules
(``data/files.py``: ``--text-column`` / ``--text-pair-column``, else the first known layout); a label column,
if present, is ignored.

How it runs: rows are taken in chunks of ``CHUNK_ROWS`` in input order; within a chunk they are tokenised as
``eval`` tokenises (the adapter's recorded max length), sorted by length, and batched (the recorded eval
batch size by default), so a file of up to one chunk is batched exactly as ``eval`` batches its validation
set and gives the same logits bit for bit. Each finished chunk is appended to ``.OUTPUT.partial`` and
flushed to disk; at the end that file is renamed to OUTPUT (atomic). ``--resume`` continues an interrupted
run after its last complete line; chunk boundaries are fixed, so a resumed file equals an uninterrupted one.
Everything is checked (adapter, file, columns) before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch

from .data.base import DataError
from .data.files import read_records, resolve_columns
from .features import collate, length_batches, model_inputs, tokenize

CHUNK_ROWS = 8192


def _partial_paths(output: Path) -> tuple[Path, Path]:
    return output.with_name(f".{output.name}.partial"), output.with_name(f".{output.name}.partial.json")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _rows(input_file: str, text_column, text_pair_column) -> list[tuple[str, str | None]]:
    records = read_records(input_file, "--input-file")
    text_col, pair_col, _ = resolve_columns(records[0].keys(), text_column, text_pair_column, None,
                                            where=str(input_file), need_label=False)
    rows = []
    for i, r in enumerate(records):
        missing = [c for c in (text_col, pair_col) if c is not None and c not in r]
        if missing:
            raise DataError(f"{input_file} (row {i}): no column {missing[0]!r} (columns: {', '.join(map(str, r))})")
        text = "" if r[text_col] is None else str(r[text_col])
        rows.append((text, None if pair_col is None else ("" if r[pair_col] is None else str(r[pair_col]))))
    return rows


def _resume_point(partial: Path, state: Path, expected: dict, rows: int) -> int:
    """How many complete lines the interrupted run wrote (the file is cut back to them), after checking that
    it was the same job."""
    try:
        saved = json.loads(state.read_text())
    except (OSError, ValueError):
        saved = None
    if saved != expected:
        raise DataError(f"{partial} was written for another input file or model; delete it (and {state.name}) "
                        "to start over")
    data = partial.read_bytes()
    keep = data[: data.rfind(b"\n") + 1]
    lines = keep.splitlines()
    for i, line in enumerate(lines):
        try:
            ok = json.loads(line).get("index") == i
        except (ValueError, AttributeError):
            ok = False
        if not ok:
            raise DataError(f"{partial}: line {i + 1} is not prediction {i}; delete it and {state.name} to start over")
    if len(lines) > rows:
        raise DataError(f"{partial} has more lines than the input has rows; delete it and {state.name} to start over")
    if len(keep) != len(data):
        with open(partial, "r+b") as f:
            f.truncate(len(keep))
    return len(lines)


_KINDS = ("classification", "regression")


def _check_kind(kind: str) -> str:
    if kind not in _KINDS:
        raise ValueError(f"predict --input-file scores classification and regression adapters; this one is {kind} "
                         "(use predict TEXT [PAIR] for it)")
    return kind


class _TorchModel:
    """A saved adapter on its base model, run by PyTorch (what ``eval`` runs)."""

    def __init__(self, adapter: str, model: str | None):
        from .methods import read_result_meta

        _, self.meta = read_result_meta(adapter)
        self.adapter, self.model_name = adapter, model
        self.kind = _check_kind(self.meta.get("kind") or "classification")
        self.max_length = self.meta.get("max_length") or 128
        self.batch_size = self.meta.get("eval_batch_size") or 64
        self.job = {"adapter": os.path.realpath(adapter), "model": model}  # which model wrote a partial file

    def load(self) -> None:
        from .evaluation import load_trained

        self.trained = load_trained(self.adapter, self.model_name)
        self.tokenizer = self.trained.tokenizer
        config = self.trained.model.config
        self.names = self.meta.get("label_names") or [str(config.id2label[i]) for i in range(config.num_labels)]

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:  # (B, T) each -> (B, C)
        return self.trained.model(**batch).logits.float()


class _OnnxModel:
    """An ``adapterkit export --format onnx`` directory, run by ONNX Runtime on the CPU."""

    def __init__(self, directory: str):
        from .export.onnx import ONNX_META_FILE, read_export, require_onnx

        require_onnx(("onnxruntime",), "predict --onnx")
        self.directory, self.meta = directory, read_export(directory)
        self.kind = _check_kind(self.meta["kind"])
        self.max_length = self.meta["max_length"]
        self.batch_size = (self.meta.get("info") or {}).get("eval_batch_size") or 64
        self.job = {"onnx": os.path.realpath(directory), "export_sha256": _sha256(Path(directory) / ONNX_META_FILE)}

    def load(self) -> None:
        from transformers import AutoTokenizer

        from .export.onnx import OnnxExportError, cpu_session

        graph = Path(self.directory) / self.meta["model_file"]
        try:
            self.session = cpu_session(graph, purpose="predict --onnx")
        except OnnxExportError:
            raise
        except Exception as e:  # onnxruntime's own error classes derive from Exception only
            raise OnnxExportError(f"ONNX Runtime cannot load {graph} ({' '.join(str(e).split())}); export again") from None
        self.tokenizer = AutoTokenizer.from_pretrained(self.directory)
        width = self.session.get_outputs()[0].shape[-1]
        self.names = self.meta["label_names"] or [str(i) for i in range(width if isinstance(width, int) else 0)]

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:  # (B, T) each -> (B, C)
        from .export.onnx import run_session

        return torch.from_numpy(run_session(self.session, batch)[0]).float()


@torch.no_grad()
def _chunk_lines(scorer, rows, start: int, batch_size: int) -> list[str]:
    kind, names = scorer.kind, scorer.names
    examples = [{"text": t, "text_pair": p, "label": 0} for t, p in rows]
    features = tokenize(examples, kind, scorer.tokenizer, scorer.max_length)
    lines = [""] * len(features)
    for rows_of_batch in length_batches(features, batch_size):  # as evaluate() batches
        chunk = [features[i] for i in rows_of_batch]
        logits = scorer.logits(model_inputs(collate(chunk, kind, scorer.tokenizer.pad_token_id)))
        for j, i in enumerate(rows_of_batch):
            if kind == "regression":
                result = {"index": start + i, "score": float(logits[j].squeeze(-1))}
            else:
                probs = torch.softmax(logits[j], -1).tolist()
                result = {"index": start + i, "label": names[int(logits[j].argmax(-1))],
                          "scores": dict(zip(names, probs))}
            lines[i] = json.dumps(result) + "\n"
    return lines


def predict_file(adapter: str | None, input_file: str, output: str, model: str | None = None, text_column=None,
                 text_pair_column=None, batch_size: int | None = None, resume: bool = False,
                 progress: bool = True, onnx: str | None = None) -> dict:
    """Write the predictions for every row of ``input_file`` to ``output`` (see the module doc) with the saved
    adapter ``adapter`` (PyTorch) or the ONNX export directory ``onnx`` (ONNX Runtime), exactly one of them;
    returns {"rows", "resumed_at", "output"}."""
    from tqdm.auto import tqdm

    if (adapter is None) == (onnx is None):
        raise ValueError("give exactly one of --adapter DIR (PyTorch) and --onnx DIR (an ONNX export)")
    if onnx is not None and model is not None:
        raise ValueError("--model does not apply to --onnx: the base model is inside the exported graph")
    out = Path(output)
    partial, state = _partial_paths(out)
    if os.path.lexists(out):
        raise FileExistsError(f"--output {output} already exists; pick a new path (predictions never replace a file)")
    if partial.exists() and not resume:
        raise FileExistsError(f"{partial} holds an interrupted run's predictions; pass --resume to continue it, "
                              "or delete it to start over")
    if batch_size is not None and not 1 <= batch_size <= 1 << 16:
        raise ValueError(f"--batch-size must be between 1 and 65536, got {batch_size}")
    scorer = _OnnxModel(onnx) if onnx is not None else _TorchModel(adapter, model)
    rows = _rows(input_file, text_column, text_pair_column)  # bad input fails here, before anything is written
    scorer.load()
    batch_size = batch_size or scorer.batch_size
    job = {"input_sha256": _sha256(Path(input_file)), **scorer.job, "rows": len(rows),
           "max_length": scorer.max_length, "batch_size": batch_size}
    done = _resume_point(partial, state, job, len(rows)) if resume and partial.exists() else 0
    if not partial.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        state.write_text(json.dumps(job) + "\n")
        partial.touch()
    bar = tqdm(total=len(rows), initial=done, unit="row", desc="predict", disable=not progress, file=sys.stderr,
               mininterval=1.0)
    with open(partial, "a", encoding="utf-8") as f:
        for start in range(done - done % CHUNK_ROWS, len(rows), CHUNK_ROWS):
            lines = _chunk_lines(scorer, rows[start: start + CHUNK_ROWS], start, batch_size)
            skip = max(0, done - start)  # a resumed chunk is recomputed whole; its written rows are kept
            f.writelines(lines[skip:])
            f.flush()
            os.fsync(f.fileno())
            bar.update(len(lines) - skip)
    bar.close()
    os.replace(partial, out)
    state.unlink(missing_ok=True)
    return {"rows": len(rows), "resumed_at": done, "output": str(out)}


__all__ = ["CHUNK_ROWS", "predict_file"]
