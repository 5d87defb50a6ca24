"""Reading a ``torch.save``d state dict (``pytorch_adapter.bin``) without trusting it.

A ``.bin`` file is a pickle, and unpickling can run code. Two guards, in this order:

1. the pickle is scanned opcode by opcode (``pickletools.genops``, which parses without executing) and every
   global it names must be one of the few a plain ``{name: tensor}`` dict needs (an OrderedDict, the
   tensor-rebuild function, storage types); anything else (a function, a class of some package) is refused
   before ``torch.load`` sees the file;
2. ``torch.load(..., weights_only=True)`` (PyTorch's restricted unpickler) then reads it, and the result must
   be a dict of names to floating-point tensors.

Only the zip format that ``torch.save`` writes since PyTorch 1.6 is read; the older one is refused with a
hint (re-save it). Refs: https://docs.python.org/3/library/pickletools.html,
https://pytorch.org/docs/stable/generated/torch.load.html (``weights_only``).
"""

from __future__ import annotations

import io
import pickletools
import zipfile

import torch

from ..checks import AdapterLoadError

# (module, name) of every global a torch.save of a plain state dict may name.
_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    *(("torch", f"{kind}Storage") for kind in ("Float", "Half", "BFloat16", "Double")),
}
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8", "SHORT_BINSTRING", "BINSTRING", "STRING"}


def pickle_globals(data: bytes) -> set[tuple[str, str]]:
    """The (module, name) pairs a pickle refers to, found without unpickling it."""
    found, strings = set(), []
    for op, arg, _ in pickletools.genops(data):
        if op.name in _STRING_OPS:
            strings.append(arg)
        elif op.name in ("GLOBAL", "INST"):
            module, _, name = arg.partition(" ")
            found.add((module, name))
        elif op.name == "STACK_GLOBAL":
            found.add((strings[-2], strings[-1]) if len(strings) >= 2 else ("?", "?"))
    return found


def load_state_dict(data: bytes, shown: str) -> dict[str, torch.Tensor]:
    """The ``{name: tensor}`` dict in the bytes of a ``.bin`` file, or AdapterLoadError naming the problem."""
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise AdapterLoadError(f"{shown} is not a zip-format torch file (a raw pickle, or saved by PyTorch < 1.6); "
                               "re-save it with torch.save from a current PyTorch, or as safetensors")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
            if len(pickles) != 1:
                raise AdapterLoadError(f"{shown} holds {len(pickles)} pickles, not the one torch.save writes; re-save it")
            names = pickle_globals(archive.read(pickles[0]))
    except (zipfile.BadZipFile, ValueError, EOFError) as e:
        if isinstance(e, AdapterLoadError):
            raise
        raise AdapterLoadError(f"{shown} is not a readable torch file ({e}); re-save it") from None
    foreign = sorted(f"{m}.{n}" for m, n in names - _ALLOWED_GLOBALS)
    if foreign:
        raise AdapterLoadError(f"{shown} is not a plain tensor file: its pickle refers to {foreign[0]}"
                               f"{f' and {len(foreign) - 1} more' if len(foreign) > 1 else ''}, which a state dict "
                               "does not need; refusing to load it (re-save the weights as a dict of tensors)")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - the restricted unpickler raises several kinds
        raise AdapterLoadError(f"{shown} could not be read as plain tensors ({' '.join(str(e).split())[:200]}); "
                               "re-save it as a dict of tensors") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise AdapterLoadError(f"{shown} does not hold a dict of names to tensors; re-save the adapter")
    bad = next((k for k, v in state.items() if not v.is_floating_point()), None)
    if bad is not None:
        raise AdapterLoadError(f"{shown}: tensor {bad} is {state[bad].dtype}, not floating point; re-save the adapter")
    return dict(state)


__all__ = ["load_state_dict", "pickle_globals"]
