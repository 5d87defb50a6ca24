"""A fusion in the adapter store (``--adapter-store``): addressed by name like an adapter, loaded on first use,
counted, pinned and evicted by :mod:`.residency` like any stored adapter.

    store/glue/sst2/            adapter directories (adapter_config.json)
    store/glue/mrpc/
    store/fusions/rte/          a fusion directory (fusion_config.json), written by
                                'adapterkit train --method fusion --fuse store/glue/sst2,store/glue/mrpc'
    POST /v1/predict {"task": "fusions--rte", ...}

Reading (:func:`read_stored_fusion`, on the residency's loader thread, touching no model): the fusion config
(strict JSON, its checksum, the base-model fingerprint), then every fused adapter at the directory the
training run recorded (``extra.fused_adapters``: absolute, as ``adapterkit train`` writes them; a relative one
is taken from the server's working directory, as ``--adapter`` takes it). **Each must resolve inside the
store root** (a fusion that records a directory outside the store is refused, 400, naming it), and is read
with the store as its root: config, fingerprint, weights against the shapes its config gives in this model,
finite values, and its weights' sha256 must be the one the fusion recorded for it (the adapter it was trained
over). Then the fusion's own weights, checked against the shapes the fusion gives at those adapters' sites.

Inserting (:func:`insert_stored_fusion`, on the worker between batches): the fused adapters go in under
names private to this fusion (``<task>---<saved name>``; ``---`` is in no store name), and the fusion layers
under ``<task>---fusion``; all of it is one transaction. So two stored fusions over the same adapters, or a
fusion and a stored adapter it fuses, are resident side by side (each with its own copy of the fused
adapters' tensors), and evicting the fusion (``Engine._unload``, :func:`.fusion_task.unload_fusion_task`)
removes exactly what it loaded.

Accounting: a resident fusion counts as **one** entry against ``--max-loaded``, and its bytes against
``--max-adapter-memory`` are those of its fusion tensors **plus** its fused adapters' tensors (what it holds).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch

from ..checks import WEIGHTS_FILE, resolve_directory
from ..composition import Fuse
from ..fusion import FusionConfig, FusionLayer, add_fusion, remove_fusion
from ..fusion_io import FUSION_WEIGHTS_FILE, read_fusion_config
from ..heads import HeadConfig
from ..io import (AdapterLoadError, adapter_shape, check_fingerprint, insert_tensors, read_adapter_config,
                  read_checked_safetensors, read_checked_weights)
from ..model import _plan, list_adapters, remove_adapter
from ..architectures import detect
from .fusion_task import fused_directories
from .settings import BadAdapter, Conflict, safe
from .store import StoredAdapter
from .tasks import Task, task_from_model

PRIVATE = "---"  # never in a store name (components are joined by "--" and never start or end with "-")


@dataclass
class FusedAdapter:
    """One fused adapter, read and checked: its saved name in the fusion, where it is, its config and tensors."""

    name: str
    directory: str
    meta: dict
    tensors: dict[str, torch.Tensor]


@dataclass
class ReadFusion:
    """A stored fusion, read and checked off the worker: what :func:`insert_stored_fusion` inserts."""

    meta: dict  # its fusion_config.json
    adapters: list[FusedAdapter]  # in the fusion's order
    tensors: dict[str, torch.Tensor]  # its fusion layers and head
    nbytes: int  # every tensor above: what it takes in memory


def _nbytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def read_stored_fusion(residency, where: StoredAdapter) -> ReadFusion:
    """Read and check the stored fusion ``where`` and its fused adapters (see the module docstring); runs on the
    loader thread. :class:`BadAdapter` (400) saying what is wrong."""
    shown = f"stored fusion {where.name!r}"
    try:
        meta = read_fusion_config(where.directory, root=where.root)
        fused = fused_directories(where.directory, where.root, meta)
        check_fingerprint(where.directory, meta["base_model"], residency._fingerprint)
        adapters = [_read_fused(residency, where, name, fused[name], meta) for name in meta["adapters"]]
        expected = _planned_fusion(residency, where, adapters[0].meta, meta)
        real_dir, real_root = resolve_directory(where.directory, where.root)
        tensors = read_checked_safetensors(where.directory, real_dir, real_root, FUSION_WEIGHTS_FILE, meta, expected,
                                           "fusion")
    except AdapterLoadError as e:
        raise BadAdapter(f"{shown} cannot be loaded: {safe(str(e), 1000)}") from None
    except BadAdapter as e:
        raise BadAdapter(f"{shown} cannot be loaded: {e}") from None
    for key, t in tensors.items():
        if not torch.isfinite(t).all():
            raise BadAdapter(f"{shown} cannot be loaded: tensor {key} of its {FUSION_WEIGHTS_FILE} holds NaN or "
                             "infinite values; retrain or re-save the fusion")
    return ReadFusion(meta, adapters, tensors, _nbytes(tensors) + sum(_nbytes(a.tensors) for a in adapters))


def _read_fused(residency, where: StoredAdapter, name: str, recorded: str, fusion_meta: dict) -> FusedAdapter:
    """Fused adapter ``name`` from the directory the fusion recorded, which must lie inside the store."""
    try:
        real_dir, real_root = resolve_directory(recorded, where.root)
    except AdapterLoadError:
        raise BadAdapter(f"it fuses adapter {name!r} from {safe(recorded)}, outside the adapter store "
                         f"({where.root}); a stored fusion may fuse only adapters saved inside the store: save them "
                         "there and retrain the fusion over those directories") from None
    meta = read_adapter_config(real_dir, root=real_root)
    config, head = adapter_shape(meta)
    check_fingerprint(recorded, meta["base_model"], residency._fingerprint)
    if meta["files"][WEIGHTS_FILE] != fusion_meta["adapter_sha256"][name]:
        raise BadAdapter(f"its fused adapter {name!r} at {safe(recorded)} is not the adapter the fusion was trained "
                         "over (another sha256 of its weights); restore that adapter or retrain the fusion")
    located = StoredAdapter(name, real_dir, real_root, 0)
    expected = residency._planned(located, meta, config, head)
    return FusedAdapter(name, real_dir, meta, read_checked_weights(recorded, real_dir, real_root, meta, expected))


def _planned_fusion(residency, where: StoredAdapter, adapter_meta: dict, meta: dict) -> dict[str, tuple[int, ...]]:
    """The tensors the fusion gives in the model (fusion layers at its adapters' sites, and its head), worked
    out on the worker without changing the model, once per (adapter config, fusion config, head)."""
    key = json.dumps(["fusion", adapter_meta["config"], meta["config"], meta["head"]], sort_keys=True)
    plan = residency._plans.get(key)
    if plan is None:
        config, _ = adapter_shape(adapter_meta)
        fusion_config = FusionConfig.from_dict(meta["config"])
        head = HeadConfig.coerce(meta["head"], model_has_head=True)
        model = residency.engine.model
        try:
            plan = residency.engine.control(lambda: planned_fusion_tensors_at(model, config, fusion_config, head)).result(
                timeout=residency.engine.settings.request_timeout_s)
        except ValueError as e:
            raise AdapterLoadError(f"{where.directory}: the fusion does not fit this model ({e})") from None
        residency._plans[key] = plan
    return plan


def planned_fusion_tensors_at(model, config, fusion_config: FusionConfig, head) -> dict[str, tuple[int, ...]]:
    """:func:`adapterkit.fusion.planned_fusion_tensors` for a fusion over adapters of ``config`` that are not in
    the model yet: a fusion layer at each bottleneck site ``add_adapter`` would use, and the head."""
    state = model.__dict__.get("adapterkit")
    plan = _plan(model, state.spec if state else detect(model), config, head)
    paths = {id(m): p for p, m in model.named_modules()}
    shapes = {}
    for step in plan.steps:
        if step[0] == "bottleneck":  # ("bottleneck", output module, dropout, input module, hidden size)
            with torch.device("meta"):
                layer = FusionLayer(fusion_config, step[4], 0.0)
            shapes.update({f"{paths[id(step[1])]}.adapters.fusion.{k}": tuple(v.shape)
                           for k, v in layer.state_dict().items()})
    heads = tuple(f"{paths[id(step[1])]}.adapters." for step in plan.steps if step[0] == "head")
    shapes.update({k: v for k, v in plan.shapes.items() if heads and k.startswith(heads)})  # the fusion's head
    return shapes


def insert_stored_fusion(engine, where: StoredAdapter, read: ReadFusion) -> Task:
    """Insert a read fusion as task ``where.name`` (worker thread): its fused adapters under private names,
    then its fusion layers; on any error the model is left as it was."""
    model = engine.model
    private = {a.name: f"{where.name}{PRIVATE}{a.name}" for a in read.adapters}
    block = Fuse(*private.values(), name=f"{where.name}{PRIVATE}fusion")
    state = model.__dict__.get("adapterkit")  # None before the first adapter
    taken = [n for n in private.values() if n in list_adapters(model)] + (
        [block.name] if state is not None and block.name in state.fusions else [])
    if taken:
        raise Conflict(f"stored fusion {where.name!r} needs the names {taken} for its adapters, and they are in use; "
                       f"DELETE /v1/adapters/NAME first")
    inserted: list[str] = []
    added = False
    try:
        for a in read.adapters:
            config, head = adapter_shape(a.meta)
            insert_tensors(model, private[a.name], config, head, a.tensors, os.path.join(a.directory, WEIGHTS_FILE))
            inserted.append(private[a.name])

        def fill(own: dict[str, torch.Tensor]) -> None:
            if set(own) != set(read.tensors) or any(own[k].shape != read.tensors[k].shape for k in own):
                raise AdapterLoadError(f"{where.directory}: the fusion's tensors do not fit the fusion built for it; "
                                       "re-save the fusion")
            with torch.no_grad():
                for key, target in own.items():
                    target.copy_(read.tensors[key])

        add_fusion(model, block, FusionConfig.from_dict(read.meta["config"]),
                   HeadConfig.coerce(read.meta["head"], model_has_head=True), fill=fill)
        added = True
        return task_from_model(model, where.name, where.directory, {"extra": read.meta["extra"]}, engine.settings,
                               engine.model_limit, entry=block)
    except BaseException as e:
        if added:
            remove_fusion(model, block)
        for name in inserted:
            remove_adapter(model, name)
        if isinstance(e, (AdapterLoadError, ValueError)):
            raise BadAdapter(f"stored fusion {where.name!r} cannot be loaded: {safe(str(e), 1000)}") from None
        raise


__all__ = ["PRIVATE", "ReadFusion", "insert_stored_fusion", "planned_fusion_tensors_at", "read_stored_fusion"]
