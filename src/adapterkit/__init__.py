"""adapterkit: Houlsby bottleneck adapters (arXiv 1902.00751) for any Hugging Face transformer.

    import adapterkit as ak
    ak.add_adapter(model, "sst2", ak.AdapterConfig(size=64), head=2)
    ak.train_adapter(model, "sst2")          # only the adapter, its layer norms and its head train
    ak.save_adapter(model, "sst2", "out/sst2")
    ak.set_active(model, None)               # the untouched base model
    ak.set_active(model, ak.Stack("lang", "sst2"))                      # sst2's adapters read lang's output
    ak.add_adapter(model, "avg", ak.Average("sst2", "imdb", weights=[0.5, 0.5]))  # a new, averaged adapter
    ak.add_fusion(model, ak.Fuse("sst2", "imdb"), head=2)   # AdapterFusion over frozen adapters
    ak.train_fusion(model, ak.Fuse("sst2", "imdb"))
    ak.set_active(model, ak.Parallel("sst2", "imdb"))                   # B rows in, 2 x B rows out
    ak.generate_mixed(lm, tok, ["Hi", "Hello"], adapters=["chat", None])  # causal LMs: one adapter per row
"""

from .architectures import PRESETS, ArchitectureError, ArchitectureSpec, LayerStack
from .bottleneck import Bottleneck, bottleneck_parameter_count
from .composition import Average, Fuse, Parallel, Stack
from .config import AdapterConfig, AdapterConfigError
from .heads import HeadConfig
from .io import AdapterLoadError, fingerprint, read_adapter_config, save_adapter
from .export.adapterhub import load_adapter  # io.load_adapter, and directories saved by AdapterHub's adapters
from .mixed import predict_mixed, predict_parallel, split_parallel
from .fusion import FusionConfig, add_fusion, fusion_regularization_loss, list_fusions, remove_fusion, train_fusion
from .fusion_io import load_fusion, save_fusion
from .generation import generate_mixed
from .model import (
    active_adapter,
    adapter_parameters,
    adapter_summary,
    add_adapter,
    base_parameters,
    disable_adapters,
    list_adapters,
    parameter_groups,
    remove_adapter,
    set_active,
    train_adapter,
    use_adapter,
)

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "AdapterConfig",
    "AdapterConfigError",
    "AdapterLoadError",
    "ArchitectureError",
    "ArchitectureSpec",
    "Average",
    "Bottleneck",
    "Fuse",
    "FusionConfig",
    "HeadConfig",
    "LayerStack",
    "Parallel",
    "Stack",
    "active_adapter",
    "adapter_parameters",
    "adapter_summary",
    "add_adapter",
    "add_fusion",
    "base_parameters",
    "bottleneck_parameter_count",
    "disable_adapters",
    "fingerprint",
    "fusion_regularization_loss",
    "generate_mixed",
    "list_adapters",
    "list_fusions",
    "load_adapter",
    "load_fusion",
    "parameter_groups",
    "predict_mixed",
    "predict_parallel",
    "read_adapter_config",
    "remove_adapter",
    "remove_fusion",
    "save_adapter",
    "save_fusion",
    "set_active",
    "split_parallel",
    "train_adapter",
    "train_fusion",
    "use_adapter",
]
