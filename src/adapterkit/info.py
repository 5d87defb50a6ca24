"""``adapterkit info``: what a saved adapter (or a saved full / top-k model) is, without loading a model.

Parameter counts are the ones save_adapter recorded in adapter_config.json; recorded metrics
from the adapter's own metadata and, when the folder is a run's ``adapter/``, from ``../metrics.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

from .config import AdapterConfig
from .io import read_adapter_config
from .methods import RUN_META_FILE, read_result_meta


def describe(directory: str | Path) -> str:
    directory = Path(directory)
    form, meta = read_result_meta(directory)
    lines = [f"{directory}  ({form if form in ('adapter', 'fusion') else 'saved model: ' + str(meta.get('method'))})"]
    if form == "adapter":
        config = read_adapter_config(directory)  # checked by the library: AdapterLoadError if hostile
        c = config["config"]
        lines.append(f"  adapter    size {c['size']}, placement {c['placement']}, activation {c['activation']}, "
                     f"layers {c['layers'] or 'all'}, layer norms {'trained' if c['train_layer_norms'] else 'shared'}, "
                     f"site {AdapterConfig.from_saved(c).site}")
        head = config["head"]
        lines.append(f"  head       {head['kind']}" + (f", labels {head['labels']}" if head.get("labels") else ""))
        base = config["base_model"]
        lines.append("  base model " + ", ".join(f"{k} {v}" for k, v in base.items()))
        counts = config.get("parameters") if isinstance(config.get("parameters"), dict) else {}  # by save_adapter
        order = ("adapter", "layer_norm", "head", "trainable", "base")
        lines.append("  params     " + ", ".join(f"{k} {counts[k + '_params']:,}" for k in order
                                               if isinstance(counts.get(k + "_params"), int)))
    elif form == "fusion":
        from .fusion_io import read_fusion_config

        config = read_fusion_config(directory)
        lines.append(f"  fusion     {config['name']!r} over " + ", ".join(f"{n} ({d})" for n, d in meta["fused_adapters"].items()))
        lines.append(f"  head       {config['head']['kind']}")
    else:
        model_config = _json_object(directory / "config.json")
        lines.append(f"  model      {model_config.get('model_type')} {model_config.get('architectures')}")
    lines.append(f"  trained on task {meta.get('task')} ({meta.get('kind')}), method {meta.get('method')}, "
                 f"base {meta.get('model')}, max length {meta.get('max_length')}, seed {meta.get('seed')}")
    m = _json_object(directory.parent / "metrics.json")
    if isinstance(m.get("trainable_params"), int) and isinstance(m.get("total_params"), int) and \
            isinstance(m.get("trainable_pct"), (int, float)):
        lines.append(f"  trainable  {m['trainable_params']:,} of {m['total_params']:,} ({m['trainable_pct']:.2f}%)")
    best = meta.get("best")
    if best:
        lines.append("  best       " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                           for k, v in best.items()))
    return "\n".join(lines)


def _json_object(path: Path) -> dict:
    """A JSON object file (the run's metrics.json, a saved model's config.json), or {} when absent or not a
    readable object: info describes what it can."""
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > (1 << 24):
            return {}
        m = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    return m if isinstance(m, dict) else {}


__all__ = ["RUN_META_FILE", "describe"]
