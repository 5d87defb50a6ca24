"""Serving a fusion: a directory written by ``adapterkit train --method fusion`` (``save_fusion`` with
``extra["fused_adapters"]`` = {adapter name: its directory}) becomes a task like any adapter.

    adapterkit serve --adapter rte_fusion=runs/rte-fusion ...     # or create_app(..., {"rte_fusion": DIR})

Loading it loads the fused adapters under their saved names (as ``evaluation.load_trained`` does), then the
fusion (``load_fusion``: checksums, base fingerprint, the adapters' hashes); its rows of a batch run through
the ``Fuse`` entry of the mixed routing (``layers.py``), so requests for the fusion and for plain adapters
share one forward pass. Unloading removes the fusion and the adapters it loaded. A fusion is loaded at
startup or by ``/v1/adapters/load`` from a path the server may read; a fused adapter's name that is already
loaded is refused (409), as two adapters of one name would be.
"""

from __future__ import annotations

from pathlib import Path

from ..composition import Fuse
from ..fusion import remove_fusion
from ..fusion_io import FUSION_CONFIG_FILE, load_fusion, read_fusion_config
from ..io import load_adapter
from ..model import get_state, list_adapters, remove_adapter
from .settings import BadAdapter, Conflict, Forbidden, ServeSettings, safe
from .tasks import Task, task_from_model


def is_fusion_dir(path: str) -> bool:
    return (Path(path) / FUSION_CONFIG_FILE).is_file()


def fused_directories(path: str, root: str | None = None, meta: dict | None = None) -> dict[str, str]:
    """{fused adapter name: its directory} as the training run recorded them (``extra.fused_adapters``), one
    per adapter the fusion fuses; ``meta``: the fusion config already read (else read here, inside ``root``)."""
    meta = read_fusion_config(path, root) if meta is None else meta
    fused = (meta.get("extra") or {}).get("fused_adapters")
    if not isinstance(fused, dict) or not fused or not all(isinstance(k, str) and isinstance(v, str) for k, v in fused.items()):
        raise BadAdapter(f"{path}/{FUSION_CONFIG_FILE} names no fused adapter directories (extra.fused_adapters); "
                         "serve a fusion written by 'adapterkit train --method fusion'")
    if set(fused) != set(meta["adapters"]):
        raise BadAdapter(f"{path}/{FUSION_CONFIG_FILE}: extra.fused_adapters names {sorted(fused)} but the fusion "
                         f"fuses {meta['adapters']}; serve a fusion written by 'adapterkit train --method fusion'")
    return fused


def confined_directories(settings: ServeSettings, path: str, fused: dict[str, str]) -> dict[str, tuple[str, str]]:
    """{fused adapter name: (its resolved directory, the adapter root it lies in)}; :class:`Forbidden` (403)
    naming the adapter when one lies outside every ``--adapter-root``, as a hot-loaded adapter would be."""
    out = {}
    for adapter, directory in fused.items():
        try:
            out[adapter] = settings.hot_load_path(directory)
        except Forbidden:
            raise Forbidden(f"the fusion {safe(path)} fuses adapter {adapter!r} from {safe(directory)}, outside the "
                            f"adapter roots this server loads from ({', '.join(settings.adapter_roots)}); keep the "
                            "fused adapters under an --adapter-root too") from None
    return out


def load_fusion_task(engine, name: str, path: str, root: str | None = None) -> Task:
    """Load the fusion directory ``path`` and its fused adapters into ``engine.model``; the task ``name``
    routes its rows through the fusion. With ``root`` (a hot load under ``--adapter-root``: ``path`` is
    resolved inside it), the fusion's files are read inside ``root`` and each fused adapter's inside the root
    it lies in (403 when it lies in none). On any failure the model is left as it was."""
    model = engine.model
    fused = fused_directories(path, root)
    roots: dict[str, str | None] = {adapter: None for adapter in fused}
    if root is not None:
        confined = confined_directories(engine.settings, path, fused)
        fused = {adapter: where for adapter, (where, _) in confined.items()}
        roots = {adapter: adapter_root for adapter, (_, adapter_root) in confined.items()}
    clash = [n for n in fused if n in list_adapters(model)]
    if clash:
        raise Conflict(f"fusion {name!r} fuses adapter(s) {clash} and an adapter of that name is already loaded; "
                       "unload it first (DELETE /v1/adapters/NAME)")
    loaded: list[str] = []
    block: Fuse | None = None
    try:
        for adapter, directory in fused.items():
            load_adapter(model, directory, name=adapter, root=roots[adapter])
            loaded.append(adapter)
        block = load_fusion(model, path, root=root)
        meta = {"extra": read_fusion_config(path, root).get("extra") or {}}
        return task_from_model(model, name, str(path), meta, engine.settings, engine.model_limit, entry=block)
    except BaseException as e:
        if block is not None:
            remove_fusion(model, block)
        for adapter in loaded:
            remove_adapter(model, adapter)
        if isinstance(e, Exception) and not isinstance(e, BadAdapter):
            raise engine._bad(path, e) from None
        raise


def unload_fusion_task(model, task: Task) -> None:
    """Remove the task's fusion and the adapters it fused."""
    block = task.entry
    if block.name in get_state(model).fusions:
        remove_fusion(model, block)
    for adapter in block.names:
        remove_adapter(model, adapter)
