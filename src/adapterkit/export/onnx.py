"""ONNX export: the base model with one adapter -- its bottlenecks, layer-norm copies and head -- as ONE graph.

Bottleneck adapters cannot be merged into the base weights (the nonlinearity is in the way), so the adapter
must be traced with the model. adapterkit's adapters are forward hooks (``layers.py``); ``torch.export``
(non-strict) runs the model as Python does, hooks included, with the adapter active for every row, and
``torch.onnx.export(dynamo=True)`` (torch's supported exporter since 2.9; the TorchScript one is deprecated)
turns that program into ONNX with dynamic batch and sequence axes. The graph is then run with ONNX Runtime on
a padded batch of another size than the traced one and compared with PyTorch before anything is written.

An export directory holds
  model.onnx             the graph (weights inside; ``model.onnx.data`` beside it for models over 1.5 GiB)
  model.int8.onnx        with ``quantize="int8"``: ONNX Runtime's dynamic int8 quantisation of model.onnx
  tokenizer files        as ``tokenizer.save_pretrained`` writes them
  adapterkit_onnx.json   inputs, outputs, task kind, label names, max length, the adapter's name and
                         fingerprint, the base model's fingerprint, the parity measured at export, versions

References: torch.onnx (https://pytorch.org/docs/stable/onnx_export.html), torch.export dynamic shapes
(https://pytorch.org/docs/stable/export.html), ONNX Runtime quantisation
(https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import inspect
import json
import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import io as _io
from ..checks import existing_entries
from ..model import adapter_tensors, get_state, use_adapter

ONNX_META_FILE = "adapterkit_onnx.json"
FORMAT_VERSION = 1
MODEL_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
KINDS = ("classification", "regression", "qa")
QUANTIZE = ("int8",)
#: ONNX Runtime vs PyTorch, max abs difference of the outputs, relative to max(1, max |output|).
TOLERANCE = 1e-4
_EXTERNAL_DATA_BYTES = 3 << 29  # 1.5 GiB: protobuf caps one file at 2 GiB
_INSTALL = "pip install 'adapterkit[onnx]'"
# Texts of different lengths: the traced batch (2 rows) and the checked batch (3 rows, other lengths) differ,
# so a graph that had the traced shapes baked in fails the check.
_TRACE_TEXTS = ("a gripping, beautifully acted film", "dull")
_CHECK_TEXTS = ("it is a movie about a man who walks for a very long time and then walks back home again",
                "too long", "the cast is fine, the script is not")


class OnnxExportError(ValueError):
    """The export cannot be made (a missing package, a model or task kind it does not cover, a failed check),
    or a directory given as an export is not one this adapterkit can run."""


def require_onnx(names: tuple[str, ...] = ("onnx", "onnxscript", "onnxruntime"),
                 purpose: str = "ONNX export") -> dict[str, Any]:
    """The optional packages ``purpose`` needs (export: all three; running an export: onnxruntime), imported;
    OnnxExportError naming the install command if not."""
    modules, missing = {}, []
    for name in names:
        try:
            modules[name] = importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise OnnxExportError(f"{purpose} needs {', '.join(missing)} (not installed); {_INSTALL}")
    return modules


class _Outputs(nn.Module):
    """The model as ONNX sees it: named tensors in, a tuple of output tensors out."""

    def __init__(self, model: nn.Module, output_names: tuple[str, ...]):
        super().__init__()
        self.model = model
        self.output_names = output_names

    def forward(self, input_ids, attention_mask, token_type_ids=None):  # (B, T) each -> ((B, C), ...)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        out = self.model(**inputs)
        return tuple(out[n] for n in self.output_names)


def _input_names(model: nn.Module, tokenizer) -> tuple[str, ...]:
    """input_ids and attention_mask, and token_type_ids where the tokenizer gives them and the model takes them
    (DistilBERT's tokenizer gives them, its forward has no such argument)."""
    produced = set(tokenizer(_TRACE_TEXTS[0]).keys())
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in produced and "token_type_ids" in inspect.signature(model.forward).parameters:
        names.append("token_type_ids")
    missing = [n for n in ("input_ids", "attention_mask") if n not in produced]
    if missing:
        raise OnnxExportError(f"the tokenizer gives no {missing[0]}; ONNX export covers text models whose tokenizer "
                              "gives input_ids and attention_mask")
    return tuple(names)


def _encode(tokenizer, texts, names: tuple[str, ...], device) -> dict[str, torch.Tensor]:
    enc = tokenizer(list(texts), padding=True, return_tensors="pt")
    return {n: enc[n].to(device) for n in names}


def adapter_digest(model: nn.Module, name: str) -> str:
    """sha256 of adapter ``name``'s tensors (keys and float32 bytes, in key order): which weights were exported."""
    digest = hashlib.sha256()
    for key, t in sorted(adapter_tensors(model, name).items()):
        digest.update(key.encode())
        digest.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


# ---- the output directory ---------------------------------------------------------------------------------
def _check_target(directory: Path) -> None:
    """Replace only what an export wrote: a new path, an empty directory, or an export directory whose
    every entry its adapterkit_onnx.json lists."""
    entries = existing_entries(directory, "export")
    if not entries:
        return
    try:
        meta = json.loads((directory / ONNX_META_FILE).read_text())
        ours = isinstance(meta, dict) and "adapterkit_onnx_format" in meta and isinstance(meta.get("files"), list)
    except (OSError, ValueError, RecursionError):
        ours = False
    if not ours:
        raise FileExistsError(f"{directory} is not a directory adapterkit exported; pick a new or empty path "
                              "(an export replaces the whole directory)")
    foreign = sorted(entries - {ONNX_META_FILE, *map(str, meta["files"])})
    if foreign:
        raise FileExistsError(f"{directory} holds {foreign[0]!r}, which adapterkit did not write; pick a new or "
                              "empty path (an export replaces the whole directory)")


def read_export(directory: str | os.PathLike) -> dict[str, Any]:
    """The checked ``adapterkit_onnx.json`` of an export directory (what :func:`export_model_onnx` wrote);
    OnnxExportError saying what is wrong and how to make one if ``directory`` is not such an export."""
    directory = Path(directory)
    make = "make one with `adapterkit export --adapter DIR --format onnx --output OUT`"
    if not directory.is_dir():
        raise OnnxExportError(f"{directory} {'is not a directory' if directory.exists() else 'does not exist'}; an "
                              f"ONNX export is a directory: {make}")
    path = directory / ONNX_META_FILE
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise OnnxExportError(f"{directory} is not an adapterkit ONNX export (no {ONNX_META_FILE}); {make}") from None
    except (OSError, ValueError, RecursionError) as e:
        raise OnnxExportError(f"{path} is not readable JSON ({e}); export again") from None
    if not isinstance(meta, dict) or "adapterkit_onnx_format" not in meta:
        raise OnnxExportError(f"{path} is not an adapterkit ONNX export's {ONNX_META_FILE}; {make}")
    if meta["adapterkit_onnx_format"] != FORMAT_VERSION:
        raise OnnxExportError(f"{directory} is an ONNX export of format {meta['adapterkit_onnx_format']!r}; this "
                              f"adapterkit reads format {FORMAT_VERSION}: export again (or upgrade adapterkit)")
    model_file, labels, max_length = meta.get("model_file"), meta.get("label_names"), meta.get("max_length")
    if not (isinstance(model_file, str) and Path(model_file).name == model_file and (directory / model_file).is_file()):
        raise OnnxExportError(f"{directory} has no graph file {model_file!r} (its {ONNX_META_FILE} names it); export again")
    if meta.get("kind") not in KINDS or not (labels is None or isinstance(labels, list) and all(
            isinstance(n, str) for n in labels)) or not (isinstance(max_length, int) and max_length > 0):
        raise OnnxExportError(f"{path} has an invalid kind, label_names or max_length; export again")
    return meta


@contextlib.contextmanager
def _quiet_exporter():
    """torch.onnx reports its steps and warns about what it skips (torchvision ops...); the CLI keeps its own
    output. Errors still raise."""
    names = ("torch.onnx", "torch.export", "torch._export", "onnxscript", None)  # None: root (ORT's quantiser)
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(open(os.devnull, "w")) as null:  # noqa: SIM115
            warnings.simplefilter("ignore")
            try:
                yield
            finally:
                null.close()
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


# ---- export -----------------------------------------------------------------------------------------------
def _trace(wrapper: nn.Module, example: dict[str, torch.Tensor], input_names, output_names):
    # Named dims: one batch and one sequence symbol shared by all inputs (the ONNX axes are named after them).
    # Learned position embeddings bound the sequence (torch.export proves the graph for lengths up to that).
    positions = getattr(getattr(wrapper.model, "config", None), "max_position_embeddings", None)
    batch = torch.export.Dim("batch")
    sequence = torch.export.Dim("sequence", max=positions) if isinstance(positions, int) and positions > 2 else \
        torch.export.Dim("sequence")
    dynamic = {n: {0: batch, 1: sequence} for n in input_names}
    with _quiet_exporter():
        return torch.onnx.export(wrapper, tuple(example[n] for n in input_names), dynamo=True, dynamic_shapes=dynamic,
                                 input_names=list(input_names), output_names=list(output_names), verbose=False)


def _check_dynamic_axes(proto, input_names) -> None:
    """Every input must keep symbolic batch and sequence axes (a specialised trace would fix them)."""
    for value in proto.graph.input:
        if value.name in input_names:
            dims = value.type.tensor_type.shape.dim
            if len(dims) != 2 or any(d.dim_param == "" for d in dims):
                shape = [d.dim_param or d.dim_value for d in dims]
                raise OnnxExportError(f"the exported graph fixed the shape of {value.name} to {shape}; this model "
                                      "cannot be exported with dynamic batch and sequence axes")


def cpu_session(path: str | os.PathLike, threads: int | None = None, purpose: str = "ONNX export"):
    """An ONNX Runtime InferenceSession of the graph at ``path`` on the CPU (``threads``: intra-op threads,
    None: ONNX Runtime's default, one per core)."""
    ort = require_onnx(("onnxruntime",), purpose)["onnxruntime"]
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_session(session, inputs: dict[str, torch.Tensor | np.ndarray]) -> list[np.ndarray]:
    """The graph's outputs, in its order, for ``inputs`` (B, T) each; inputs the graph does not take (e.g.
    token_type_ids for DistilBERT) are left out, as int64."""
    as_numpy = {k: v.cpu().numpy() if torch.is_tensor(v) else v for k, v in inputs.items()}
    feed = {i.name: np.asarray(as_numpy[i.name], dtype=np.int64) for i in session.get_inputs()}
    return session.run(None, feed)


def run_onnx(path: str | os.PathLike, inputs: dict[str, torch.Tensor | np.ndarray],
             threads: int | None = None) -> list[np.ndarray]:
    """Run an exported graph with ONNX Runtime on the CPU: the outputs in the graph's order."""
    return run_session(cpu_session(path, threads), inputs)


def _max_diff(onnx_outputs: list[np.ndarray], torch_outputs: tuple[torch.Tensor, ...]) -> tuple[float, float]:
    """(max abs difference, max abs reference value) over all outputs."""
    diff = scale = 0.0
    for got, want in zip(onnx_outputs, torch_outputs):
        want = want.detach().float().cpu().numpy()
        if got.shape != want.shape:
            raise OnnxExportError(f"ONNX Runtime gave an output of shape {list(got.shape)} where PyTorch gives "
                                  f"{list(want.shape)}; the export is wrong (please report it)")
        diff = max(diff, float(np.abs(got.astype(np.float32) - want).max()))
        scale = max(scale, float(np.abs(want).max()))
    return diff, scale


def export_model_onnx(model: nn.Module, tokenizer, output: str | os.PathLike, adapter: str | None = None, *,
                      kind: str = "classification", label_names: list[str] | None = None, max_length: int = 128,
                      quantize: str | None = None, info: dict | None = None) -> Path:
    """Export ``model`` with adapter ``adapter`` active for every row (None: no adapter, the model as it is,
    e.g. a fully fine-tuned one) to the directory ``output``, written atomically (a temporary sibling renamed
    into place).

    ``kind``: classification / regression (output ``logits``: (B, labels)) or qa (``start_logits``,
    ``end_logits``: (B, T)). Inputs: ``input_ids``, ``attention_mask`` (and ``token_type_ids`` where the
    tokenizer gives them), int64 of shape (batch, sequence), both axes dynamic. ``quantize="int8"`` also
    writes ONNX Runtime's dynamic int8 quantisation. ``info`` (JSON-able) goes into adapterkit_onnx.json.

    ONNX Runtime must reproduce PyTorch's outputs (eval mode) within TOLERANCE on a padded batch of another
    shape than the traced one, else OnnxExportError and nothing is written. ``output`` must be new, empty,
    or an earlier export: anything else raises FileExistsError and is left alone."""
    modules = require_onnx()
    if kind not in KINDS:
        raise OnnxExportError(f"ONNX export covers {', '.join(KINDS)} models, not {kind!r} (causal-LM generation "
                              "needs a KV-cache graph, which this export does not build)")
    if quantize not in (None, *QUANTIZE):
        raise OnnxExportError(f"unknown quantisation {quantize!r}; choose {', '.join(QUANTIZE)} or none")
    if adapter is not None and adapter not in get_state(model).configs:
        known = ", ".join(get_state(model).configs) or "none"
        raise OnnxExportError(f"no adapter named {adapter!r} on this model (adapters: {known})")
    if info is not None:
        json.dumps(info)  # JSON-able, or TypeError now rather than after the export
    output = Path(output)
    _check_target(output)
    output_names = ("start_logits", "end_logits") if kind == "qa" else ("logits",)
    input_names = _input_names(model, tokenizer)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with use_adapter(model, adapter):  # None: no adapter (the model as it is)
            wrapper = _Outputs(model, output_names).eval()
            program = _trace(wrapper, _encode(tokenizer, _TRACE_TEXTS, input_names, device), input_names, output_names)
            check = _encode(tokenizer, _CHECK_TEXTS, input_names, device)
            with torch.no_grad():
                reference = wrapper(**check)
            meta = _meta(model, adapter, kind, label_names, max_length, input_names, output_names, info, modules)
    finally:
        model.train(was_training)
    _check_dynamic_axes(program.model_proto, input_names)
    external = sum(p.numel() * p.element_size() for p in model.parameters()) > _EXTERNAL_DATA_BYTES
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = _io._new_directory(output.parent, f".{output.name}.tmp-")
    try:
        program.save(str(tmp / MODEL_FILE), external_data=external)
        del program
        diff, scale = _max_diff(run_onnx(tmp / MODEL_FILE, check), reference)
        if not diff <= TOLERANCE * max(1.0, scale):
            raise OnnxExportError(f"ONNX Runtime's outputs differ from PyTorch's by {diff:.3g} (over {TOLERANCE:g} x "
                                  f"max(1, {scale:.3g})); the graph is not exact for this model (please report it)")
        meta["parity"] = {"max_abs_diff": diff, "max_abs_output": scale, "tolerance": TOLERANCE,
                          "batch_shape": list(check["input_ids"].shape)}
        if quantize == "int8":
            meta["int8"] = _quantize_int8(tmp, check, reference)
        tokenizer.save_pretrained(str(tmp))
        meta["files"] = sorted(os.listdir(tmp))
        _io._write(tmp / ONNX_META_FILE, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
        _io._fsync(tmp)
        _check_target(output)  # again: nothing may have appeared there meanwhile
        _io.replace_directory(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output


def _quantize_int8(tmp: Path, check: dict[str, torch.Tensor], reference) -> dict[str, Any]:
    """ONNX Runtime's dynamic quantisation: int8 weights of MatMul/Gemm, activations quantised per call."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_exporter():
        quantize_dynamic(str(tmp / MODEL_FILE), str(tmp / INT8_FILE), weight_type=QuantType.QInt8)
    diff, scale = _max_diff(run_onnx(tmp / INT8_FILE, check), reference)
    return {"file": INT8_FILE, "weight_type": "int8", "method": "onnxruntime.quantization.quantize_dynamic",
            "max_abs_diff_on_check_batch": diff}


def _meta(model, adapter, kind, label_names, max_length, input_names, output_names, info, modules) -> dict[str, Any]:
    import transformers

    from .. import __version__

    described = None
    if adapter is not None:
        state = get_state(model)
        described = {"name": adapter, "config": state.configs[adapter].to_dict(),
                     "head": state.heads[adapter].to_dict(), "tensors_sha256": adapter_digest(model, adapter)}
    return {
        "adapterkit_onnx_format": FORMAT_VERSION,
        "model_file": MODEL_FILE,
        "inputs": {n: ["batch", "sequence"] for n in input_names},
        "input_dtype": "int64",
        "outputs": list(output_names),
        "kind": kind,
        "label_names": list(label_names) if label_names else None,
        "max_length": max_length,
        "adapter": described,
        "base_model": _io.fingerprint(model),
        "info": info or {},
        "versions": {"adapterkit": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
                     **{n: getattr(m, "__version__", "?") for n, m in modules.items()}},
    }


def export_onnx(adapter_dir: str | os.PathLike, output: str | os.PathLike, model: str | None = None,
                quantize: str | None = None) -> Path:
    """Export a saved adapter (the ``adapter/`` folder of a training run, or any directory ``save_adapter``
    wrote) on its base model (``model``, default: the one the run recorded, else minilm) to ``output``; a full or
    top-k run's saved model exports as it is. See :func:`export_model_onnx` for what is written and checked."""
    from ..evaluation import load_trained
    from ..methods import ADAPTER_NAME, read_result_meta

    require_onnx()
    _check_target(Path(output))  # before the model is loaded: a bad target fails at once
    if quantize not in (None, *QUANTIZE):
        raise OnnxExportError(f"unknown quantisation {quantize!r}; choose {', '.join(QUANTIZE)} or none")
    form, meta = read_result_meta(adapter_dir)
    kind = meta.get("kind") or _head_kind(adapter_dir, form)
    if kind not in KINDS:
        raise OnnxExportError(f"{adapter_dir} is a {kind} adapter; ONNX export covers {', '.join(KINDS)} (causal-LM "
                              "generation needs a KV-cache graph, which this export does not build)")
    trained = load_trained(adapter_dir, model)
    info = {k: meta[k] for k in ("task", "model", "method", "eval_batch_size") if meta.get(k) is not None}
    labels = meta.get("label_names")
    if labels is None and kind == "classification":  # the names predict gives (the model config's)
        config = trained.model.config
        labels = [str(config.id2label[i]) for i in range(config.num_labels)]
    if model is not None:
        info["model"] = model
    if form == "adapter":
        config = _io.read_adapter_config(adapter_dir)
        info["adapter_config_sha256"] = config.get("config_sha256")
        info["adapter_saved_name"] = config.get("name")
    return export_model_onnx(trained.model, trained.tokenizer, output, ADAPTER_NAME if form == "adapter" else None,
                             kind=kind, label_names=labels, max_length=meta.get("max_length") or 128,
                             quantize=quantize, info=info)


def _head_kind(adapter_dir, form: str) -> str:
    """The task kind of an adapter saved without run metadata: its head says regression or classification."""
    if form != "adapter":
        return "classification"
    head = _io.read_adapter_config(adapter_dir).get("head") or {}
    return "regression" if head.get("kind") == "regression" else "classification"


__all__ = ["INT8_FILE", "MODEL_FILE", "ONNX_META_FILE", "TOLERANCE", "OnnxExportError", "adapter_digest",
           "cpu_session", "export_model_onnx", "export_onnx", "read_export", "require_onnx", "run_onnx",
           "run_session"]
