"""Benchmark worker: builds models and times them on command, one JSON object per line on stdin/stdout.

The same file runs in adapterkit's venv (methods ``plain``, ``adapterkit``, ``fusion``, ``full``, ``head``) and in
the side venv (``plain``, ``adapterhub``, ``lora``, ``full``, ``head``), so that ``run.py`` can interleave A B A B
across two transformers versions in one run. Only one worker computes at a time: the others wait on stdin.

Requests: {"cmd": "hello"} | {"cmd": "build", "key", **spec} | {"cmd": "time", "key", "n"} |
{"cmd": "save", "key", "dir"} | {"cmd": "memory", **spec, "steps"} | {"cmd": "drop", "key"} | {"cmd": "quit"}.
A spec: model_dir, method, size (bottleneck m), layers, mode ("infer" | "train"), batch, seq, bf16,
grad_ckpt, compile, train_layer_norms, threads; fuse (fusion: how many adapters of size m it fuses).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

# Keep the protocol channel clean: everything printed by libraries goes to stderr.
_PROTO = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

LORA_TARGETS = {"bert": ["query", "value"], "mpnet": ["q", "v"]}


def _versions() -> dict:
    out = {"python": sys.version.split()[0], "torch": torch.__version__, "threads": torch.get_num_threads()}
    for mod in ("transformers", "adapters", "peft", "adapterkit"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - not installed in this venv
            pass
    return out


def _vm(field: str) -> int:
    """VmRSS / VmHWM of this process in bytes (Linux /proc)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


class Bench:
    """One configured model with its batch and (for training) its optimizer."""

    def __init__(self, spec: dict):
        from transformers import AutoModelForSequenceClassification

        torch.manual_seed(0)
        self.spec = spec
        method, mode = spec["method"], spec.get("mode", "infer")
        model = AutoModelForSequenceClassification.from_pretrained(spec["model_dir"], num_labels=2)
        model_type = model.config.model_type
        hidden = model.config.hidden_size
        self.trainable_note = ""
        if method == "adapterkit":
            import adapterkit as ak

            cfg = ak.AdapterConfig(size=spec["size"], activation="gelu", layers=tuple(spec["layers"]) if spec.get("layers") else None,
                                   train_layer_norms=spec.get("train_layer_norms", True))
            ak.add_adapter(model, "task", cfg, head=2)
            if mode == "train":
                ak.train_adapter(model, "task")
            ak.set_active(model, "task")
        elif method == "fusion":  # AdapterFusion over spec["fuse"] frozen adapters of size m: only the fusion layers
            import adapterkit as ak  # and its head train (the training loop's value regulariser is left out: cheap)

            names = [f"a{i}" for i in range(spec["fuse"])]
            for name in names:
                ak.add_adapter(model, name, ak.AdapterConfig(size=spec["size"], activation="gelu"), head=2)
            block = ak.Fuse(*names)
            ak.add_fusion(model, block, head=2)
            if mode == "train":
                ak.train_fusion(model, block)
            ak.set_active(model, block)
        elif method == "adapterhub":
            import adapters
            from adapters import DoubleSeqBnConfig

            if model_type == "mpnet":  # not pre-supported by adapters: its plugin interface
                from adapters import AdapterModelInterface

                adapters.init(model, interface=AdapterModelInterface(
                    adapter_methods=["bottleneck"], base_model="mpnet", model_embeddings="embeddings",
                    model_layers="encoder.layer", layer_self_attn="attention", layer_cross_attn=None,
                    attn_o_proj="attn.o", attn_q_proj="attn.q", attn_k_proj="attn.k", attn_v_proj="attn.v",
                    layer_intermediate_proj="intermediate.dense", layer_output_proj="output.dense",
                    layer_ln_1="attention.LayerNorm", layer_ln_2="output.LayerNorm"))
            else:
                adapters.init(model)
            n_layers = model.config.num_hidden_layers
            leave_out = [i for i in range(n_layers) if spec.get("layers") and i not in spec["layers"]]
            cfg = DoubleSeqBnConfig(reduction_factor=hidden / spec["size"], non_linearity="gelu", leave_out=leave_out)
            model.add_adapter("task", config=cfg)
            model.set_active_adapters("task")
            if mode == "train":
                model.train_adapter("task")  # freezes everything else, the HF classifier included
                for p in model.classifier.parameters():  # train the task head, as the others do
                    p.requires_grad_(True)
        elif method == "lora":
            from peft import LoraConfig, TaskType, get_peft_model

            cfg = LoraConfig(task_type=TaskType.SEQ_CLS, r=16, lora_alpha=32, lora_dropout=0.0,
                             target_modules=LORA_TARGETS.get(model_type))
            model = get_peft_model(model, cfg)  # classifier is in modules_to_save: trained
        elif method == "head":
            for p in model.parameters():
                p.requires_grad_(False)
            for p in model.classifier.parameters():
                p.requires_grad_(True)
        elif method == "frozen":  # the measured floor: dX through every layer, no weight gradient but the norms'
            for p in model.parameters():
                p.requires_grad_(False)
            for m in model.modules():
                if isinstance(m, torch.nn.LayerNorm) and m is not model.base_model.embeddings.LayerNorm:
                    for p in m.parameters():
                        p.requires_grad_(True)
            for p in model.classifier.parameters():
                p.requires_grad_(True)
        elif method in ("plain", "full"):
            pass
        else:
            raise ValueError(f"unknown method {method!r}")
        if spec.get("grad_ckpt"):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model = model
        self.params_total = sum(p.numel() for p in model.parameters())
        self.params_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad) if mode == "train" else 0
        g = torch.Generator().manual_seed(1)
        b, t = spec["batch"], spec["seq"]
        self.batch = {
            "input_ids": torch.randint(1000, model.config.vocab_size - 1, (b, t), generator=g),
            "attention_mask": torch.ones(b, t, dtype=torch.long),
        }
        self.labels = torch.randint(0, 2, (b,), generator=g)
        self.mode = mode
        self.autocast = spec.get("bf16", False)
        if mode == "train":
            model.train()
            params = [p for p in model.parameters() if p.requires_grad]
            self.opt = torch.optim.AdamW(params, lr=1e-4)
            self.fn = self._train_step
        else:
            model.eval()
            for p in model.parameters():
                p.requires_grad_(False)
            self.fn = self._infer
        self.forward = torch.compile(model) if spec.get("compile") else model

    def _ctx(self):
        if self.autocast:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        import contextlib

        return contextlib.nullcontext()

    def _infer(self):
        with torch.inference_mode(), self._ctx():
            return self.forward(**self.batch).logits

    def _train_step(self):
        with self._ctx():
            loss = self.forward(**self.batch, labels=self.labels).loss
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.detach()

    def time(self, n: int) -> list[float]:
        return self.clocks(n)[0]

    def clocks(self, n: int) -> tuple[list[float], list[float]]:
        """Wall-clock and CPU (process_time: this process's CPU seconds, all its threads) per call. On a shared
        machine CPU time leaves out the time this process sat preempted."""
        wall, cpu = [], []
        for _ in range(n):
            c0, t0 = time.process_time(), time.perf_counter()
            self.fn()
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        return wall, cpu


def _dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def saved_activation_bytes(b: Bench) -> dict:
    """Bytes autograd keeps for backward after one training forward (unique storages, parameters excluded),
    by (backward node, saved field): exact and independent of the allocator."""
    params = {p.untyped_storage().data_ptr() for p in b.model.parameters()}
    with b._ctx():
        loss = b.forward(**b.batch, labels=b.labels).loss
    seen, by, stack, visited = set(), {}, [loss.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in visited:
            continue
        visited.add(node)
        for attr in dir(node):
            if not attr.startswith("_saved_"):
                continue
            try:
                value = getattr(node, attr)
            except Exception:  # noqa: BLE001 - some saved fields cannot be read back
                continue
            for t in value if isinstance(value, (tuple, list)) else [value]:
                if torch.is_tensor(t):
                    st = t.untyped_storage()
                    if st.data_ptr() in params or st.data_ptr() in seen:
                        continue
                    seen.add(st.data_ptr())
                    key = f"{type(node).__name__}.{attr[7:]}"
                    by[key] = by.get(key, 0) + st.nbytes()
        stack.extend(f for f, _ in node.next_functions)
    del loss
    return {"total": sum(by.values()), "by_node": dict(sorted(by.items(), key=lambda kv: -kv[1]))}


def handle(req: dict, benches: dict) -> dict:
    cmd = req["cmd"]
    if cmd == "hello":
        return {"versions": _versions()}
    if cmd == "build":
        if req.get("threads"):
            torch.set_num_threads(int(req["threads"]))
        t0 = time.perf_counter()
        b = Bench(req)
        warm = b.time(int(req.get("warmup", 1)))
        benches[req["key"]] = b
        return {"build_s": time.perf_counter() - t0, "warmup_s": warm, "params_total": b.params_total,
                "params_trainable": b.params_trainable}
    if cmd == "time":
        wall, cpu = benches[req["key"]].clocks(int(req["n"]))
        return {"times": wall, "cpu": cpu}
    if cmd == "drop":
        benches.pop(req["key"], None)
        return {}
    if cmd == "save":
        b = benches[req["key"]]
        method, d = b.spec["method"], req["dir"]
        if method == "adapterkit":
            import adapterkit as ak

            ak.save_adapter(b.model, "task", d)
        elif method == "adapterhub":
            b.model.save_adapter(d, "task", with_head=False)
        else:  # lora -> adapter only; full -> the whole model (safetensors)
            b.model.save_pretrained(d)
        return {"bytes": _dir_bytes(d), "files": sorted(os.listdir(d))}
    if cmd == "memory":
        # Fresh process per configuration (run.py's job). Peak RSS of the training steps above the RSS held
        # before them: VmHWM is reset through /proc/self/clear_refs ("5") after the model, batch and
        # optimizer exist, then read after ``steps`` training steps.
        if req.get("threads"):
            torch.set_num_threads(int(req["threads"]))
        b = Bench(req)
        before = _vm("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        times, cpu = b.clocks(int(req.get("steps", 2)))
        peak = _vm("VmHWM")
        # Reading saved fields back through checkpointing's own saved-tensor hooks crashes the process: skip.
        saved = {"total": 0, "by_node": {}} if req.get("grad_ckpt") else saved_activation_bytes(b)
        return {"rss_before": before, "rss_peak": peak, "delta": peak - before, "times": times, "cpu": cpu,
                "saved_bytes": saved["total"], "saved_by_node": saved["by_node"],
                "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
                "params_trainable": b.params_trainable}
    if cmd == "quit":
        return {"bye": True}
    raise ValueError(f"unknown cmd {cmd!r}")


def main() -> None:
    benches: dict = {}
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        try:
            resp = {"ok": True, **handle(req, benches)}
        except Exception as e:  # noqa: BLE001 - reported to the orchestrator
            resp = {"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()}
        _PROTO.write(json.dumps(resp) + "\n")
        _PROTO.flush()
        if req.get("cmd") == "quit":
            break


if __name__ == "__main__":
    main()
