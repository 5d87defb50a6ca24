"""Exporting adapters to other formats (format conversion only: no training here).

    onnx.py   the base model with one adapter (bottlenecks, layer-norm copies, head) as one ONNX graph,
              checked against PyTorch with ONNX Runtime (needs ``pip install 'adapterkit[onnx]'``)

Nothing here is imported by the core; the optional packages are imported only when an export runs.
"""

from .onnx import ONNX_META_FILE, OnnxExportError, export_model_onnx, export_onnx

__all__ = ["ONNX_META_FILE", "OnnxExportError", "export_model_onnx", "export_onnx"]
