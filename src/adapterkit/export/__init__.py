"""Exchange and export formats outside the core (format conversion only: no training here).

    onnx.py              the base model with one adapter (bottlenecks, layer-norm copies, head) as one ONNX
                         graph, checked against PyTorch with ONNX Runtime (``pip install 'adapterkit[onnx]'``)
    adapterhub.py        AdapterHub (``adapters``) directories in and out; adapterhub_format.py maps the
                         options, torch_files.py reads ``.bin`` files without unpickling anything else
    convert.py           ``adapterkit convert``

Nothing here is imported by the core; the optional packages are imported only when an export runs.
"""

from .onnx import ONNX_META_FILE, OnnxExportError, export_model_onnx, export_onnx

__all__ = ["ONNX_META_FILE", "OnnxExportError", "export_model_onnx", "export_onnx"]
