"""One training loop for every method (adapter, full, top-k, ln, head) and every task kind.

The protocol is the paper's: AdamW over the trainable parameters only (frozen weights get no optimiser
state), linear warm-up over the first 10% of steps then linear decay to zero, gradient clipping at 1.0,
evaluation on the validation set after every epoch, and the best epoch's weights kept.

Reproducibility:
* the seed fixes the head's initialisation, the ``--max-train`` subset, the order of every epoch
  (a permutation drawn from ``seed`` and the epoch number) and dropout (re-seeded at each epoch start);
  so a run resumed from an epoch checkpoint continues exactly like an uninterrupted one;
* ``--batch-size`` is the *global* batch: with N processes (``accelerate launch`` / ``torchrun``) every
  global batch is split into N contiguous shares and each process's summed loss is divided by the global
  number of targets, so DDP's gradient average equals the one-process gradient;
* every process evaluates the full validation set in order with a fixed batch size (identical numbers
  everywhere, and the same ones ``adapterkit eval`` recomputes from the saved result).

Outputs are atomic: the run lives in a hidden sibling ``.NAME.partial/`` (with its epoch checkpoints, so
``--resume`` can continue after an interruption) and is renamed to ``--output`` only when complete. A
failed run (bad input, NaN loss) leaves nothing behind.
"""

from __future__ import annotations

import json
import math
import platform
import shutil
import sys
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import metrics as M
from .checkpoint import STEPS, Checkpoint, _load_trainable, crash_point
from .data import load_task
from .evaluation import HeadMismatchError, build_features, evaluate, model_kind
from .features import collate, loss_sum, model_inputs, target_count
from .config import MAX_SIZE_FACTOR, SITE_WHEN_UNRECORDED, AdapterConfig
from .methods import (ADAPTER_OPTIONS, MethodConfig, count_parameters, extra_loss, head_parameters, prepare, save_result,
                      trainable_state, with_adapter_options)
from .lora import LORA_ALPHA, LORA_R, LORA_TARGETS
from .models import MODELS, load_model
from .runs import MARKER, check_partial, check_replaceable, replace_dir, share, write_marker

#: Learning rates chosen by measurement on minilm / rotten_tomatoes (2000-4000 examples, 2 epochs): adapters
#: at 1e-3 reach 0.79-0.80 like full fine-tuning at 5e-5; the linear probe needs 3e-2 (at 3e-3 it stays near
#: the majority class). The paper's grid is 3e-5 .. 3e-3; `adapterkit sweep` searches it.
DEFAULT_LR = {"adapter": 1e-3, "ln": 1e-3, "head": 3e-2, "top-k": 1e-4, "full": 5e-5, "fusion": 5e-5,  # fusion: the paper's
              "lora": 5e-4}
# The new head of an adapter run learns at head-only's lr (issue 12: at the adapters' 1e-3 it was still far
# behind after a few hundred steps, and adapters fell below a linear probe on R8 and 20 Newsgroups; measured
# across nine tasks in docs/results.md, "The default recipe"). QA's span head too: at the adapters' lr, size-64
# adapters reached SQuAD F1 35.5 against full FT's 45.0; with the span head at 3e-2, 45.9 (docs/results.md,
# "SQuAD"). Other methods train their head at their own lr.
DEFAULT_HEAD_LR = {"adapter": {"classification": 3e-2, "regression": 3e-2, "qa": 3e-2}}
MAX_SEED = (2**32 - 1) // 1000 - 1000  # seed * 1000 + epoch (dropout re-seeding) must stay a valid numpy seed
MAX_LR = 10.0  # far above any useful lr; larger ones overflow the optimiser's float32 step
DEFAULT_MAX_LENGTH = {"classification": 128, "regression": 128, "qa": 384, "lm": 128, "generation": 384}


class TrainError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); nothing was written."""


@with_adapter_options
@dataclass(kw_only=True)
class TrainConfig(MethodConfig):
    """Everything one ``adapterkit train`` run depends on (recorded in metrics.json): what trains (the
    :class:`MethodConfig` fields: ``method``, the whole ``adapter`` AdapterConfig, ``top_layers``,
    ``train_pooler``) and how. The adapter's fields are also taken and read under their option names of
    0.1 (``adapter_size``, ``placement``, ``init_std``, ``adapter_layers``, ``site``,
    ``train_embedding_norm``: methods.ADAPTER_OPTIONS); their defaults are AdapterConfig's."""

    output: str
    model: str = "minilm"
    task: str = "rotten_tomatoes"
    lr: float | None = None  # None: DEFAULT_LR[method]
    head_lr: float | None = None  # the task head's lr (None: DEFAULT_HEAD_LR, else lr); see methods.head_parameters
    probe_epochs: int = 0  # LP-FT (Kumar et al. 2022): the first N epochs train only the head, then everything
    # A size-dependent lr: the adapters (not the head) train at lr * lr_reference_size / adapter_size. Adam moves
    # every weight by about lr per step, so the branch's output moves with the m units summed in the up
    # projection: scaling by 1/m keeps that change per step the same for every size. None: lr for every size.
    lr_reference_size: int | None = None
    epochs: int = 3
    batch_size: int = 32
    eval_batch_size: int = 64
    max_length: int | None = None  # None: DEFAULT_MAX_LENGTH[kind]
    doc_stride: int = 128
    max_train: int | None = None
    max_validation: int | None = None
    seed: int = 42
    warmup: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    bf16: bool = False  # bf16 autocast for the training forward/backward; weights, optimiser and eval in fp32
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, more time
    data: dict = field(default_factory=dict)  # load_task's file/column options
    resume: bool = False
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        checks = [(1 <= self.epochs <= 1000, "--epochs must lie in 1..1000"),
                  (self.batch_size >= 1, "--batch-size must be at least 1"),
                  (self.lr is None or 0 < self.lr <= MAX_LR, f"--lr must be a number in (0, {MAX_LR}]"),
                  (self.head_lr is None or 0 < self.head_lr <= MAX_LR, f"--head-lr must be a number in (0, {MAX_LR}]"),
                  (0 <= self.probe_epochs < self.epochs, "--probe-epochs must lie in [0, --epochs)"),
                  (self.lr_reference_size is None or (isinstance(self.lr_reference_size, int) and self.lr_reference_size >= 1),
                   "--lr-reference-size must be a positive integer (an adapter size, e.g. 64)"),
                  (self.lr_reference_size is None or self.method == "adapter",
                   "--lr-reference-size scales an adapter's lr by its size; use it with --method adapter"),
                  (0 <= self.warmup < 1, "--warmup must lie in [0, 1)"),
                  (self.max_length is None or self.max_length >= 8, "--max-length must be at least 8"),
                  (self.eval_batch_size >= 1, "--eval-batch-size must be at least 1"),
                  (self.doc_stride >= 0, "--doc-stride must be at least 0"),
                  (self.max_train is None or self.max_train >= 1, "--max-train must be at least 1"),
                  (self.max_validation is None or self.max_validation >= 1, "--max-validation must be at least 1"),
                  # numpy seeds must be < 2**32 and each epoch re-seeds with seed * 1000 + epoch
                  (0 <= self.seed <= MAX_SEED, f"--seed must lie in 0..{MAX_SEED}")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        self.learning_rate = self.lr if self.lr is not None else DEFAULT_LR.get(self.method, 1e-3)

    def body_lr(self, hidden_size: int | None) -> float:
        """The lr of everything that trains but the task head: ``lr``, times ``lr_reference_size`` / m for
        adapters of width m (on a model of ``hidden_size``)."""
        if self.lr_reference_size is None:
            return self.learning_rate
        if self.adapter.size is None and hidden_size is None:
            raise ValueError("--lr-reference-size needs the adapter's width, and this model's config names no hidden "
                             "size; give --adapter-size")
        return self.learning_rate * self.lr_reference_size / self.adapter.bottleneck_size(hidden_size)

    def head_lr_for(self, kind: str) -> float:
        """The lr of the task head on a task of ``kind``: ``head_lr``, else DEFAULT_HEAD_LR, else ``lr``."""
        if self.head_lr is not None:
            return self.head_lr
        return DEFAULT_HEAD_LR.get(self.method, {}).get(kind, self.learning_rate)

    def recorded(self) -> dict:
        """The settings as metrics.json records them (--resume and sweep compare them): the adapter's fields
        under their option names of 0.1, and any other AdapterConfig field that is not at its default as
        ``adapter_<field>`` (so runs recorded before compare equal)."""
        d = asdict(self)
        if d["model"] not in MODELS and Path(d["model"]).exists():  # a local dir: eval may run elsewhere
            d["model"] = str(Path(d["model"]).resolve())
        for k in ("resume", "overwrite", "progress", "output", "adapter"):
            d.pop(k)
        if d["fuse"]:  # recorded for fusion runs only (runs recorded before --fuse existed compare equal)
            d["fuse"] = list(d["fuse"])
        else:
            d.pop("fuse")
        if d["lr_reference_size"] is None:  # likewise: recorded only where set
            d.pop("lr_reference_size")
        d.update({keyword: getattr(self, keyword) for keyword in ADAPTER_OPTIONS})
        if d["adapter_layers"] is not None:  # as JSON reads it back (--resume compares the two)
            d["adapter_layers"] = list(d["adapter_layers"])
        for f in fields(AdapterConfig):
            if f.name not in ADAPTER_OPTIONS.values() and getattr(self.adapter, f.name) != f.default:
                d[f"adapter_{f.name}"] = getattr(self.adapter, f.name)
        d["lr"] = self.learning_rate
        if self.head_lr is None and self.method in DEFAULT_HEAD_LR:  # the head lrs this run's defaults give, per
            d["default_head_lr"] = DEFAULT_HEAD_LR[self.method]       # task kind: runs before them compare unequal
        return d

    @staticmethod
    def recorded_defaults() -> dict:
        """What each recorded setting was when not given (a run recorded before a setting existed ran at it)."""
        defaults = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
        adapter = AdapterConfig()
        defaults.update({keyword: getattr(MethodConfig(), keyword) for keyword in ADAPTER_OPTIONS})
        defaults.update({f"adapter_{f.name}": getattr(adapter, f.name) for f in fields(AdapterConfig)
                         if f.name not in ADAPTER_OPTIONS.values()})
        defaults["site"] = SITE_WHEN_UNRECORDED  # runs recorded before --site existed hooked the projection
        return defaults


def _versions() -> dict:
    import accelerate
    import transformers

    from . import __version__

    return {"adapterkit": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "accelerate": accelerate.__version__, "python": platform.python_version()}


def _linear_factor(warmup_steps: int, total_steps: int, start: int = 0):
    """Warm-up then linear decay to zero over steps [start, total_steps); zero before ``start``."""
    def factor(step: int) -> float:
        step -= start
        if step < 0:
            return 0.0
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - start - step) / max(1, total_steps - start - warmup_steps))

    return factor


def _linear_schedule(optimizer, warmup: float, total_steps: int, body_start: int = 0):
    """Every group: ``warmup`` of its steps of linear warm-up, then linear decay to zero. With ``body_start``
    (LP-FT's probe phase) the first group (everything but the head) starts at that step."""
    head = _linear_factor(int(warmup * total_steps), total_steps)
    if not body_start:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, head)
    body = _linear_factor(int(warmup * (total_steps - body_start)), total_steps, body_start)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, [body] + [head] * (len(optimizer.param_groups) - 1))


def _epoch_order(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[int]:
    """This epoch's example order: a seeded shuffle, then length-grouped batches (HF's group_by_length):
    within each run of 50 batches examples are sorted by length, and the batches are shuffled again. Short
    snippets then share batches with short snippets and padding (wasted compute) drops by about a third."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(lengths), generator=g).tolist()
    mega = 50 * batch_size
    order = [i for k in range(0, len(order), mega)
             for i in sorted(order[k: k + mega], key=lambda i: -lengths[i])]
    batches = [order[k: k + batch_size] for k in range(0, len(order), batch_size)]
    return [i for b in torch.randperm(len(batches), generator=g).tolist() for i in batches[b]]


def train(config: TrainConfig, accelerator=None) -> dict:
    """Run training as configured; returns the metrics written to ``<output>/metrics.json``."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    output = Path(config.output)
    run_dir = output.with_name(f".{output.name}.partial")
    if (output.exists() or output.is_symlink()) and not config.overwrite:
        raise FileExistsError(f"output {output} already exists; choose another --output or pass --overwrite")
    if output.exists() or output.is_symlink():
        check_replaceable(output)  # --overwrite replaces only a run adapterkit wrote
    finished = _finished_partial(run_dir, config) if config.resume else None
    if finished is not None:  # killed between removing its checkpoints and its final rename
        if accelerator.is_main_process:
            replace_dir(run_dir, output)
        accelerator.wait_for_everyone()
        return finished

    # 1. Everything that can fail on bad input happens before anything is written.
    method = config  # a TrainConfig is the MethodConfig of its run
    task = load_task(config.task, seed=config.seed, max_train=config.max_train,
                     max_validation=config.max_validation, **config.data)
    max_length = config.max_length or DEFAULT_MAX_LENGTH[task.kind]
    set_seed(config.seed)  # the new head's initialisation
    try:
        model, tokenizer = load_model(config.model, kind=model_kind(task.kind), labels=task.label_names)
    except RuntimeError as e:  # transformers: the checkpoint's head has another size than the task needs
        if "mismatched" not in str(e):
            raise
        raise HeadMismatchError(f"model {config.model!r} has a task head whose size does not fit task {task.name!r} "
                                f"({task.num_labels or 1} outputs); use its base model (without the head) or a model "
                                "trained for these labels") from None
    max_length = _check_model_limits(config, model, max_length)
    label_mean = sum(e["label"] for e in task.train) / len(task.train) if task.kind == "regression" else None
    trainable = prepare(model, method, task.kind, task.label_names, label_mean)
    if config.gradient_checkpointing:
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise ValueError(f"{type(model).__name__} does not support gradient checkpointing; "
                             "drop --gradient-checkpointing")
        # non-reentrant: works with a frozen embedding layer (no input that requires grad) and keeps RNG state.
        # transformers 5 renamed the method (the 4.x name is a deprecated alias there).
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable({"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    counts = count_parameters(model)
    train_features = build_features(task.train, task.kind, tokenizer, max_length, config.doc_stride, training=True)
    val_features = build_features(task.validation, task.kind, tokenizer, max_length, config.doc_stride)
    if not train_features or not val_features:
        raise TrainError(f"task {task.name!r} gives no usable {'train' if not train_features else 'validation'} "
                         "examples after tokenisation; check the data or raise --max-length")

    # 2. Optimiser over the trainable parameters only; schedule over all global steps.
    n_proc = accelerator.num_processes
    if config.batch_size % n_proc:
        raise ValueError(f"--batch-size {config.batch_size} must be divisible by the {n_proc} processes")
    steps_per_epoch = math.ceil(len(train_features) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    head_lr, body_lr = config.head_lr_for(task.kind), config.body_lr(_hidden_size(model))
    if body_lr > MAX_LR:
        raise ValueError(f"--lr x --lr-reference-size / the adapter size is {body_lr:g}, above {MAX_LR}; lower --lr "
                         "or --lr-reference-size")
    own_group = head_lr != body_lr or config.probe_epochs > 0
    head = {id(p) for p in head_parameters(model, method)} if own_group else set()
    if config.probe_epochs and not head:
        raise ValueError("--probe-epochs needs a task head that trains (this task shares the model's frozen head); "
                         "drop --probe-epochs")
    groups = [{"params": [p for p in trainable if id(p) not in head], "lr": body_lr}]
    if head:  # a new head starts from random weights: it may need a larger step than the rest
        groups.append({"params": [p for p in trainable if id(p) in head], "lr": head_lr})
    optimizer = torch.optim.AdamW(groups, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = _linear_schedule(optimizer, config.warmup, total_steps, steps_per_epoch * config.probe_epochs)
    ddp_model, optimizer = accelerator.prepare(model, optimizer)
    higher = M.higher_is_better(task.metric)

    # 3. Fresh run directory, or continue from its last epoch checkpoint.
    checkpoint = Checkpoint(run_dir)
    state = {"epoch": 0, "history": [], "best": None, "train_seconds": 0.0, "examples": 0,
             "config": config.recorded()}
    best_state = trainable_state(model)
    latest = checkpoint.latest() if config.resume or not config.overwrite else None
    if latest is not None and not config.resume:  # an interrupted run's epochs are not discarded silently
        raise FileExistsError(f"{output} has an interrupted run with epoch checkpoints ({run_dir}); pass --resume "
                              "to continue it, or --overwrite to start over")
    if latest is not None:
        saved = latest[1]
        # A setting added after the checkpoint was written ran at its default then.
        defaults = TrainConfig.recorded_defaults()
        saved_config = {**{k: defaults[k] for k in state["config"].keys() - saved["config"].keys() if k in defaults},
                        **saved["config"]}
        if saved_config != state["config"]:
            diff = sorted(k for k in state["config"] if saved_config.get(k) != state["config"][k])
            raise ValueError(f"--resume: {run_dir} was started with different settings ({', '.join(diff)}); "
                             "rerun with the same options or drop --resume")
        best_state, state = checkpoint.load(model, optimizer, scheduler)
        if accelerator.is_main_process and not (run_dir / MARKER).is_file():  # begun by an earlier version
            write_marker(run_dir)
    elif accelerator.is_main_process:
        if run_dir.exists() or run_dir.is_symlink():
            check_partial(run_dir)  # never delete what adapterkit did not write
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        write_marker(run_dir)
    accelerator.wait_for_everyone()

    try:
        for epoch in range(state["epoch"], config.epochs):
            set_seed(config.seed * 1000 + epoch)  # dropout: identical whether resumed or not
            started = time.perf_counter()
            loss_total, seen = _train_epoch(ddp_model, optimizer, scheduler, train_features, task.kind, config,
                                            epoch, tokenizer.pad_token_id, accelerator, trainable)
            state["train_seconds"] += time.perf_counter() - started
            state["examples"] += seen
            scores = evaluate(model, tokenizer, task.kind, task.metric, task.validation, val_features,
                              config.eval_batch_size, accelerator.device)
            record = {"epoch": epoch + 1, "train_loss": loss_total, **scores}
            state["history"].append(record)
            better = state["best"] is None or (scores["main"] > state["best"]["main"] if higher
                                               else scores["main"] < state["best"]["main"])
            if better:
                state["best"], best_state = record, trainable_state(model)
            state["epoch"] = epoch + 1
            if accelerator.is_main_process:
                checkpoint.save(model, optimizer, scheduler, best_state, state)
                if config.progress:
                    shown = ", ".join(f"{k} {v:.4f}" for k, v in record.items() if k != "epoch")
                    tqdm.write(f"epoch {epoch + 1}/{config.epochs}: {shown}", file=sys.stderr)
            accelerator.wait_for_everyone()
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"interrupted; the last finished epoch is checkpointed in {run_dir}: "
                                "rerun the same command with --resume to continue") from None
    except BaseException:
        if accelerator.is_main_process:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise

    # 4. Best weights back in, final outputs, then one rename.
    _load_trainable(model, best_state)
    metrics = {
        "task": task.name, "kind": task.kind, "metric": task.metric, "model": config.model, "method": config.method,
        "adapter_size": config.adapter_size if config.method == "adapter" else None,
        "placement": config.placement if config.method == "adapter" else None,
        "init_std": config.init_std if config.method == "adapter" else None,
        "adapter_layers": list(config.adapter_layers) if config.method == "adapter" and config.adapter_layers else None,
        "train_pooler": config.train_pooler if method.uses_adapter or config.method == "fusion" else None,
        "fuse": list(config.fuse) if config.method == "fusion" else None,
        "train_embedding_norm": config.train_embedding_norm if config.method in ("adapter", "ln") else None,
        "site": config.site if config.method == "adapter" else None,
        "bf16": config.bf16, "gradient_checkpointing": config.gradient_checkpointing,
        "top_layers": config.top_layers if config.method == "top-k" else None,
        **({"lora": {"r": LORA_R, "alpha": LORA_ALPHA, "targets": list(LORA_TARGETS)}} if config.method == "lora" else {}),
        **counts, "epochs": state["history"], "best": state["best"],
        "train_seconds": round(state["train_seconds"], 3),
        "examples_per_second": round(state["examples"] / max(state["train_seconds"], 1e-9), 2),
        "seed": config.seed, "lr": config.learning_rate, "body_lr": body_lr, "head_lr": head_lr,
        "probe_epochs": config.probe_epochs,
        "batch_size": config.batch_size,
        "max_length": max_length, "num_processes": n_proc, "device": str(accelerator.device),
        "label_names": task.label_names, "split": task.split, "config": config.recorded(), "versions": _versions(),
    }
    if accelerator.is_main_process:
        try:
            _write_outputs(model, tokenizer, method, run_dir, metrics, config, max_length)
            checkpoint.remove()
            crash_point(config.epochs, len(STEPS))
            share(run_dir)  # group-readable as the umask allows (temp-file helpers make 0700 / 0600)
            replace_dir(run_dir, output)  # --overwrite: the old run (checked again) aside, then deleted
        except BaseException:
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
    accelerator.wait_for_everyone()
    return metrics


def _finished_partial(run_dir: Path, config: TrainConfig) -> dict | None:
    """The metrics of a run completed in ``run_dir`` with ``config``'s settings whose checkpoints are already
    deleted (outputs are written before that), else None."""
    if not (run_dir / MARKER).is_file() or Checkpoint(run_dir).exists() or not (run_dir / "curves.png").is_file():
        return None
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError, RecursionError):
        return None
    same = isinstance(metrics, dict) and metrics.get("config") == json.loads(json.dumps(config.recorded()))
    return metrics if same else None


def _hidden_size(model) -> int | None:
    c = model.config
    hidden = getattr(c, "hidden_size", None) or getattr(c, "d_model", None) or getattr(c, "n_embd", None)
    return hidden if isinstance(hidden, int) else None


def _check_model_limits(config: TrainConfig, model, max_length: int) -> int:
    """Refuse a --max-length above the model's position limit (a default above it is lowered to it) and an
    --adapter-size above 4x the hidden size (a bottleneck wider than that is no bottleneck, and a typo such
    as 64000 would allocate gigabytes), before any adapter is allocated. Returns the max length to use."""
    c = model.config
    limit = None if c.model_type == "t5" else getattr(c, "max_position_embeddings", None) or getattr(c, "n_positions", None)
    if isinstance(limit, int) and c.model_type in ("roberta", "xlm-roberta", "camembert"):
        limit -= (c.pad_token_id if isinstance(c.pad_token_id, int) else 1) + 1  # positions start after padding_idx
    if isinstance(limit, int) and max_length > limit:
        if config.max_length is not None:
            raise ValueError(f"--max-length {config.max_length} is above the limit of model {config.model!r}, "
                             f"{limit} tokens (its position embeddings); pass --max-length {limit} or less")
        max_length = limit
    hidden = _hidden_size(model)
    size = config.adapter.bottleneck_size(hidden) if hidden is not None else None
    if config.method == "adapter" and size is not None and size > MAX_SIZE_FACTOR * hidden:
        raise ValueError(f"--adapter-size {size} is above the limit of {MAX_SIZE_FACTOR * hidden} ({MAX_SIZE_FACTOR} x the hidden "
                         f"size {hidden} of model {config.model!r}); bottleneck sizes are usually 8 to {hidden}")
    return max_length


def _train_epoch(model, optimizer, scheduler, features, kind, config, epoch, pad_id, accelerator, trainable):
    """One pass over the data in this epoch's seeded order; returns (mean train loss, examples seen)."""
    model.train()
    order = _epoch_order([len(f["input_ids"]) for f in features], config.batch_size, config.seed, epoch)
    n_proc, rank = accelerator.num_processes, accelerator.process_index
    steps = range(0, len(order), config.batch_size)
    bar = tqdm(steps, desc=f"epoch {epoch + 1}/{config.epochs}", unit="step", leave=False, file=sys.stderr, mininterval=1.0,
               disable=not (config.progress and accelerator.is_main_process))
    loss_sum_epoch, targets_epoch, seen, started = 0.0, 0, 0, time.perf_counter()
    for step_start in bar:
        global_batch = [features[i] for i in order[step_start: step_start + config.batch_size]]
        targets = sum(target_count(f, kind) for f in global_batch)
        if len(global_batch) < n_proc or targets == 0:  # too short to give every process a row: skip everywhere
            continue
        n = len(global_batch)  # contiguous shares: [rank*n/N, (rank+1)*n/N)
        mine = global_batch[rank * n // n_proc: (rank + 1) * n // n_proc]
        batch = {k: v.to(accelerator.device) for k, v in collate(mine, kind, pad_id).items()}
        with torch.autocast(accelerator.device.type, dtype=torch.bfloat16, enabled=config.bf16):
            summed = loss_sum(model(**model_inputs(batch)), batch, kind)  # loss_sum upcasts logits to fp32
        if not torch.isfinite(summed):
            raise TrainError(f"the loss became {float(summed.detach())} at epoch {epoch + 1}; lower --lr "
                             f"(now {config.learning_rate:g}) or check the data for broken labels")
        accelerator.backward(summed * n_proc / targets + extra_loss(accelerator.unwrap_model(model), config))
        if config.grad_clip:
            accelerator.clip_grad_norm_(trainable, config.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_sum_epoch += float(summed.detach())
        targets_epoch += targets / n_proc if n_proc > 1 else targets
        seen += len(global_batch)
        bar.set_postfix(loss=f"{loss_sum_epoch / targets_epoch:.4f}",
                        ex_s=f"{seen / (time.perf_counter() - started):.1f}")
    total = accelerator.reduce(torch.tensor([loss_sum_epoch, targets_epoch], device=accelerator.device), "sum")
    return float(total[0] / total[1]), seen


def _write_outputs(model, tokenizer, method, run_dir: Path, metrics: dict, config: TrainConfig, max_length: int):
    from .plots import plot_curves

    meta = {"task": metrics["task"], "kind": metrics["kind"], "metric": metrics["metric"],
            "model": config.recorded()["model"],
            "method": config.method, "label_names": metrics["label_names"], "max_length": max_length,
            "doc_stride": config.doc_stride, "eval_batch_size": config.eval_batch_size, "seed": config.seed,
            "max_validation": config.max_validation, "data": config.data, "best": metrics["best"]}
    save_result(model, tokenizer, method, run_dir / "adapter", meta)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    plot_curves(metrics, run_dir / "curves.png")


__all__ = ["DEFAULT_HEAD_LR", "DEFAULT_LR", "TrainConfig", "TrainError", "train"]
