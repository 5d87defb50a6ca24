"""What each budget of experiments/run.py trains: tasks, data sizes, lr grids, epochs (plain data).

A budget is one dict; the experiments read their settings from it, and a budget without an experiment's key
skips that experiment (see run.experiments_of).
"""

PAPER_LRS = (3e-5, 3e-4, 3e-3)
SEED = 42  # every budget's seed; the seeds experiment adds others
GLUE_TASKS = ("glue/rte", "glue/mrpc", "glue/stsb", "glue/cola", "glue/sst2")
PAIR_TASKS = {"glue/rte", "glue/mrpc", "glue/stsb", "boolq"}
LONG_TASKS = {"20newsgroups", "r8", "boolq"}
TABLE2_TASKS = ("20newsgroups", "r8", "sms_spam", "trec", "rotten_tomatoes", "boolq")

#: Budgets. quick = what one session on ~2 shared CPU cores can afford (about an hour of training);
#: full = closer to the paper's protocol (full train sets, the lr grid on every task; many hours on CPU).
BUDGETS = {
    "quick": {
        "max_train": 800, "max_validation": 400, "epochs": 2, "batch_size": 16, "seed": SEED,
        "len_single": 64, "len_pair": 128,
        # Table 1: the paper's full lr grid on MRPC; on the other tasks the two grid points that MRPC
        # showed can work (full FT 3e-5/3e-4, adapters 3e-4/3e-3); sizes 8/256 at the task's best adapter lr.
        "grid_tasks": ("glue/mrpc",), "task_grid": {"full": (3e-5, 3e-4), "adapter": (3e-4, 3e-3)}, "table1_tasks": ("glue/mrpc", "glue/rte", "glue/stsb", "glue/cola"),
        "table1_late": ("glue/sst2",), "sizes": (8, 64, 256), "grid_all_sizes": False,
        "seq_tasks": ("glue/stsb", "glue/cola", "glue/mrpc"),
        "fig3_tasks": ("rotten_tomatoes",), "fig3_sizes": (1, 2, 8, 64, 256), "fig3_topk": (1, 2, 3),
        "table2_tasks": ("rotten_tomatoes", "trec", "sms_spam", "r8"), "table2_topk": 2,
        "ablation_task": "rotten_tomatoes", "init_stds": (1e-7, 1e-5, 1e-3, 1e-2),
        "larger_max_train": 2000,
        "lr_note": "adapters, LN-only and head-only 3e-3 (the grid point MRPC chose for adapters); full FT and "
                   "top-k 1e-4 (3e-5 did not leave the majority class in ~100 steps on MRPC, 3e-4 collapsed on "
                   "STS-B) (sequential full FT too)",
        "machine": "one torch thread per process (3x faster than two on this oversubscribed machine)",
        "squad": {"max_train": 600, "max_validation": 300, "epochs": 1, "max_length": 256, "doc_stride": 64,
                  "sizes": (2, 8, 64, 256)},
    },
    # standard = what one session on an idle 2-core machine affords (a few hours): the four small GLUE tasks
    # with their full train sets and dev sets, 3 epochs; other tasks (and SST-2) capped at 4000 train examples
    # (2000 for the long-text ones and SQuAD's questions). The lr grid has three points per method: for full
    # FT the paper's 3e-5 and 3e-4 with 1e-4 between them (its 3e-3 diverges for full FT), for adapters the
    # paper's 3e-4 and 3e-3 with 1e-3 between them (3e-5 barely moves adapters in a few hundred steps).
    "standard": {
        "max_train": None, "max_train_other": 4000, "max_train_long": 2000, "sst2_max_train": 4000,
        "max_validation": None, "epochs": 3, "batch_size": 32,
        "seed": SEED, "len_single": 128, "len_pair": 128,
        "grid_tasks": (), "task_grid": {"full": (3e-5, 1e-4, 3e-4), "adapter": (3e-4, 1e-3, 3e-3)},
        "table1_tasks": GLUE_TASKS[:4], "table1_late": ("glue/sst2",), "sizes": (8, 64, 256), "grid_all_sizes": False,
        "other_lrs": {"adapter": 1e-3, "ln": 3e-3, "head": 3e-2, "full": 1e-4, "top-k": 1e-4},
        "seq_tasks": ("glue/stsb", "glue/cola", "glue/mrpc"),
        "fig3_tasks": ("trec", "rotten_tomatoes"), "fig3_sizes": (1, 4, 16, 64, 256), "fig3_topk": (1, 2, 3),
        "table2_tasks": ("rotten_tomatoes", "trec", "sms_spam", "r8", "20newsgroups", "boolq"), "table2_topk": 2,
        "ablation_task": "rotten_tomatoes", "init_stds": (1e-7, 1e-5, 1e-3, 1e-2, 1e-1, 1.0),
        "larger_max_train": 4000, "skip": ("larger", "probe"),  # the quick budget's diagnostics
        "levers_task": "rotten_tomatoes", "levers_layers": ((3, 4, 5), (5,)),
        "longer_task": "glue/cola", "longer_epochs": 10, "pooler": True,
        "seeds_task": "glue/cola", "extra_seeds": (43, 44), "mpnet_task": "glue/cola",
        "recipe_tasks": ("r8", "20newsgroups"),
        # AdapterFusion (issue 14): on RTE and MRPC over the Table-1 adapters (m = 64) of the GLUE tasks; the
        # fusion layers at these lrs (the paper: 5e-5 for 10 epochs), the new head at 3e-2 (the recipe's head lr)
        "fusion_tasks": ("glue/rte", "glue/mrpc"), "fusion_sources": GLUE_TASKS, "fusion_lrs": (1e-4, 1e-3),
        "fusion_head_lr": 3e-2,
        "recipe_check": ("glue/rte", "glue/mrpc", "glue/stsb", "glue/cola", "rotten_tomatoes", "trec", "sms_spam"),
        "recipe_check_variants": ({"head_lr": 3e-2}, {"head_lr": 3e-2, "site": "before_dropout"}, {}),
        # SQuAD's size-64 gap (125 steps): its head at its own lr, and the adapters at 3x the lr (size 256, 4x
        # the capacity at the same lr, got above full FT: is size 64 just slower at 1e-3?)
        "recipe_squad_variants": ({"head_lr": 3e-2}, {"lr": 3e-3}),
        # issue 12, item 3: the evidence again with the default recipe (recipe 2: the adapter after the sublayer's
        # dropout, an adapter's new classification/regression head at head_lr; SQuAD's span head at the adapters'
        # lr, the default). Full FT, top-k, LN-only and head-only are unchanged: their cached runs are reused.
        # Table 1 chooses epochs from (epochs, long_epochs) for every method (the paper: {3, 20}; 10 is the largest
        # affordable here: run.py's rerun docstring has the cost), MPNet runs on ``mpnet_tasks``.
        "rerun": {"head_lr": 3e-2, "long_epochs": 10, "mpnet_tasks": GLUE_TASKS[:4]},
        # AdapterHub's default bottleneck adapter (``adapters``' "seq_bn": SeqBnConfig(), reduction factor 16, ReLU)
        # and its flex head (add_classification_head: 2 layers, tanh, on [CLS]), trained by the side venv at the
        # Table-2 budget, as (config, lr) runs in priority order: the default at AdapterHub's documented lr (1e-4,
        # docs/training.md) first, then at adapterkit's 1e-3, then Houlsby's "double_seq_bn" at 1e-3 (issue 12's
        # comparison on a held-out task)
        "adapterhub": {"runs": (("seq_bn", 1e-4), ("seq_bn", 1e-3), ("double_seq_bn", 1e-3))},
        "recipe_variants": ({"head_lr": 3e-2}, {"head_lr": 1e-2}, {}, {"head_lr": 3e-2, "site": "before_dropout"},
                            {"head_lr": 3e-2, "probe_epochs": 1},
                            {"head_lr": 3e-2, "train_embedding_norm": True}, {"head_lr": 3e-2, "init_std": 2e-2}),
        "lr_note": "adapters 1e-3 (adapterkit's default), LN-only 3e-3, head-only 3e-2 (a new head alone needs "
                   "a large lr), full FT and top-k 1e-4 (sequential full FT too)",
        "machine": "two runs at a time (`--jobs 2`), one torch thread each, on an otherwise idle 2-core machine",
        "squad": {"max_train": 2000, "max_validation": 1000, "epochs": 2, "max_length": 256, "doc_stride": 64,
                  "sizes": (2, 8, 64, 256)},
        # issue 15 (experiments/generation.py): SmolLM2-135M on generative tasks. Measured on this machine (loaded,
        # 17% of a core): a squad-gen step of batch 8 (prompts ~190 tokens) ~40 CPU-s for adapters; greedy eval
        # ~10 CPU-s per squad-gen question, every epoch; trec-gen prompts are ~75 tokens. Validation sets are
        # kept small because generation, not training, dominates.
        "generation": {"model": "smollm2", "tasks": ("squad-gen", "trec-gen"),
                       "max_train": {"squad-gen": 200, "trec-gen": 400},
                       "max_validation": {"squad-gen": 100, "trec-gen": 200},
                       "epochs": 2, "batch_size": 8, "eval_batch_size": 16, "max_length": 384,
                       "adapter_sizes": (12, 64), "full_lr": 5e-5,
                       # LoRA at 5e-4 (its default) was still far from converged on squad-gen after 50 steps
                       # (train loss 1.03 against the adapters' 0.64): a larger lr too, so its row is not a straw man
                       "lora_extra_lrs": (2e-3,)},
    },
    "full": {
        "max_train": None, "max_validation": None, "epochs": 3, "batch_size": 32, "seed": SEED,
        "len_single": 128, "len_pair": 128,
        "grid_tasks": GLUE_TASKS, "task_grid": {"full": PAPER_LRS, "adapter": PAPER_LRS}, "table1_tasks": GLUE_TASKS[:4], "table1_late": ("glue/sst2",),
        "sizes": (8, 64, 256), "grid_all_sizes": True,
        "seq_tasks": ("glue/stsb", "glue/cola", "glue/mrpc", "glue/rte"),
        "fig3_tasks": ("rotten_tomatoes", "glue/cola"), "fig3_sizes": (1, 2, 4, 8, 16, 32, 64, 128, 256),
        "fig3_topk": (1, 2, 3, 4, 5, 6),
        "table2_tasks": TABLE2_TASKS, "table2_topk": 2,
        "ablation_task": "rotten_tomatoes", "init_stds": (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2),
        "larger_max_train": None,
        "squad": {"max_train": 4000, "max_validation": 1500, "epochs": 2, "max_length": 384, "doc_stride": 128,
                  "sizes": (2, 8, 64, 256)},
    },
}
#: SST-2's train set has 67k rows: even the full budget uses a seeded subset.
SST2_FULL_MAX_TRAIN = 10000
