"""Mixed-adapter generation: every row of one batch decodes with its own adapter (or the base model), one
batched forward pass per step, with transformers' KV cache.

    import adapterkit as ak
    texts = ak.generate_mixed(model, tokenizer, ["Translate: hi", "Summarise: ...", "Hello"],
                              adapters=["fr", "summ", None], max_new_tokens=32)

How. Prompts are tokenised and LEFT-padded (so every row's last prompt token sits in the same column), with
an attention mask that hides the padding and position ids counted per row over real tokens only (a row's
positions never depend on its neighbours' lengths). The rows are kept sorted by adapter so that the adapter
layers work on contiguous slices (``layers.Routing.groups``). One prefill forward fills a
``transformers.DynamicCache`` and gives each row's first token; then each step feeds every row's last token
(``(B, 1)``) and appends to the cache. The cache belongs to the batch of requests it was computed for: a key or
value cached under one adapter is never reused under another (every layer's hidden states depend on the
adapter), so nothing here shares prefixes between rows.

:class:`DecodeBatch` is the running batch as data: :func:`prefill` builds one, :func:`decode_step` advances it,
:func:`merge` joins two (the shorter cache is left-padded with masked zeros) and :func:`DecodeBatch.keep`
drops finished rows. :func:`generate_mixed` runs one batch to the end; the server's decode loop
(``adapterkit.serve.decode_loop``) uses the same pieces to let requests join and leave between steps
(continuous batching, Yu et al. 2022, "Orca", OSDI).

Sampling follows transformers' ``generate``: temperature 0 is greedy (argmax); otherwise logits / temperature,
then nucleus (top-p) filtering (Holtzman et al. 2020, arXiv 1904.09751), then one draw from the row's own
``torch.Generator`` (seeded per request: a row's draws do not depend on the other rows of its batch).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .model import list_adapters, use_adapter


@dataclass(frozen=True)
class SamplingParams:
    """How one row generates. ``temperature=0`` is greedy; ``stop`` strings end the text (excluded from it)."""

    max_new_tokens: int = 32
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if type(self.max_new_tokens) is not int or self.max_new_tokens < 1:  # noqa: E721 - not a bool
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0: greedy), got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if not all(isinstance(s, str) and s for s in stop):
            raise ValueError("stop must be non-empty strings")
        object.__setattr__(self, "stop", stop)


@dataclass(eq=False)
class Row:
    """One sequence being generated: its prompt, adapter, parameters and what it has produced so far."""

    prompt_ids: list[int]
    adapter: str | None
    params: SamplingParams = field(default_factory=SamplingParams)
    tag: object = None  # the caller's handle (the server's request), carried along
    generated: list[int] = field(default_factory=list)
    text: str = ""  # the decoded continuation, cut before a stop string once one appears
    finish_reason: str | None = None  # "stop" (EOS or a stop string) | "length" | "cancelled" | an error
    generator: torch.Generator | None = None
    error: BaseException | None = None  # why it ended, when finish_reason is "error"

    def __post_init__(self) -> None:
        if self.params.temperature > 0:
            self.generator = torch.Generator()
            self.generator.manual_seed(self.params.seed if self.params.seed is not None
                                       else int(torch.randint(0, 2**62, ()).item()))

    @property
    def position(self) -> int:
        """The position id of the next token fed for this row (its last sampled one)."""
        return len(self.prompt_ids) + len(self.generated) - 1

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def visible_text(self) -> str:
        """The text safe to stream now: all of it once done; else held back where a stop string might be
        starting, or a multi-byte character is still incomplete (decoded as U+FFFD)."""
        text = self.text
        if self.done:
            return text
        text = text.rstrip("\ufffd")
        hold = 0
        for stop in self.params.stop:
            for k in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:k]):
                    hold = max(hold, k)
                    break
        return text[: len(text) - hold]


@dataclass(eq=False)
class DecodeBatch:
    """Rows decoding together: rows sorted by adapter; ``cache`` holds ``(B, heads, L, head_dim)`` per layer;
    ``mask`` ``(B, L)`` marks real (1) and padding (0) cache columns; ``last`` ``(B,)`` the tokens to feed next."""

    rows: list[Row]
    cache: object  # transformers.DynamicCache
    mask: torch.Tensor  # (B, L) long
    last: torch.Tensor  # (B,) long

    def __len__(self) -> int:
        return len(self.rows)

    def keep(self, indices: Sequence[int]) -> DecodeBatch | None:
        """A batch of only these rows (None when none), with cache columns that no row uses trimmed."""
        if not indices:
            return None
        index = torch.tensor(list(indices), dtype=torch.long, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        used = mask.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else 0  # left padding: leading columns no kept row uses
        for layer in _layers(self.cache):
            layer.keys = layer.keys.index_select(0, index)[:, :, start:]
            layer.values = layer.values.index_select(0, index)[:, :, start:]
        return DecodeBatch([self.rows[i] for i in indices], self.cache, mask[:, start:].contiguous(),
                           self.last.index_select(0, index))


def _layers(cache) -> list:
    from transformers.cache_utils import DynamicLayer

    layers = list(cache.layers)
    if not all(type(layer) is DynamicLayer and layer.is_initialized for layer in layers):
        raise NotImplementedError("mixed generation supports full-attention DynamicCache layers only "
                                  "(no sliding-window or quantised caches)")
    return layers


def eos_ids(model: nn.Module, tokenizer) -> set[int]:
    """The token ids that end a generation: the model's generation config's ``eos_token_id`` (an int or a list)
    and the tokenizer's."""
    ids: set[int] = set()
    for source in (getattr(getattr(model, "generation_config", None), "eos_token_id", None),
                   getattr(tokenizer, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(int(x) for x in source)
    return ids


def _sort_by_adapter(rows: list[Row]) -> list[int]:
    """Row order with each adapter's rows contiguous, in order of first appearance (stable)."""
    first: dict[str | None, int] = {}
    for i, row in enumerate(rows):
        first.setdefault(row.adapter, i)
    return sorted(range(len(rows)), key=lambda i: first[rows[i].adapter])


def _cache_argument(model: nn.Module) -> str:
    """transformers 5.24 renamed ``past_key_values`` to ``cache`` (the old name warns until 5.40)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _forward(model: nn.Module, rows: list[Row], cache, **inputs) -> torch.Tensor:
    """One forward with each row routed through its adapter; the last position's logits ``(B, V)`` as float."""
    inputs[_cache_argument(model)] = cache
    adapters = [r.adapter for r in rows]
    routed = adapters[0] if len(set(adapters)) == 1 else adapters  # one adapter: the plain path
    with use_adapter(model, routed):
        out = model(**inputs, use_cache=True, logits_to_keep=1)
    return out.logits[:, -1].float()


def prefill(model: nn.Module, rows: list[Row], pad_id: int, tokenizer=None, eos: set[int] = frozenset()) -> DecodeBatch:
    """Run the rows' prompts (left-padded) through the model in one forward, fill a new DynamicCache and
    sample each row's first token. Rows come back sorted by adapter."""
    from transformers import DynamicCache

    if any(not r.prompt_ids for r in rows):
        raise ValueError("every prompt needs at least one token")
    rows = [rows[i] for i in _sort_by_adapter(rows)]
    device = next(model.parameters()).device
    width = max(len(r.prompt_ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):  # left padding: every prompt ends in the last column
        ids[i, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
        mask[i, width - len(r.prompt_ids):] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # per row, over its real tokens: padding never shifts them
    cache = DynamicCache(config=model.config)
    logits = _forward(model, rows, input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache)
    batch = DecodeBatch(rows, cache, mask, torch.zeros(len(rows), dtype=torch.long, device=device))
    _advance(batch, logits, tokenizer, eos)
    return batch


def decode_step(model: nn.Module, batch: DecodeBatch, tokenizer=None, eos: set[int] = frozenset()) -> None:
    """Feed every row's last token (``(B, 1)``), extend the cache and mask, sample the next token per row.
    Rows already done are fed too (their output is ignored): drop them with :meth:`DecodeBatch.keep`."""
    device = batch.mask.device
    batch.mask = torch.cat([batch.mask, batch.mask.new_ones((len(batch), 1))], dim=1)
    positions = torch.tensor([[r.position] for r in batch.rows], dtype=torch.long, device=device)
    logits = _forward(model, batch.rows, input_ids=batch.last[:, None], attention_mask=batch.mask,
                      position_ids=positions, cache=batch.cache)
    _advance(batch, logits, tokenizer, eos)


def merge(a: DecodeBatch | None, b: DecodeBatch | None) -> DecodeBatch | None:
    """One batch of both: the shorter cache (and mask) left-padded with masked zeros to the longer, rows
    concatenated then re-sorted by adapter. Both inputs are consumed."""
    if a is None or b is None:
        return a if b is None else b
    length = max(a.mask.shape[1], b.mask.shape[1])

    def pad(t: torch.Tensor, dim: int) -> torch.Tensor:  # left-pad dimension ``dim`` to ``length``
        missing = length - t.shape[dim]
        if not missing:
            return t
        shape = list(t.shape)
        shape[dim] = missing
        return torch.cat([t.new_zeros(shape), t], dim=dim)

    rows = a.rows + b.rows
    order = _sort_by_adapter(rows)
    index = torch.tensor(order, dtype=torch.long, device=a.mask.device)
    for la, lb in zip(_layers(a.cache), _layers(b.cache)):
        la.keys = torch.cat([pad(la.keys, 2), pad(lb.keys, 2)]).index_select(0, index)
        la.values = torch.cat([pad(la.values, 2), pad(lb.values, 2)]).index_select(0, index)
    mask = torch.cat([pad(a.mask, 1), pad(b.mask, 1)]).index_select(0, index)
    last = torch.cat([a.last, b.last]).index_select(0, index)
    return DecodeBatch([rows[i] for i in order], a.cache, mask, last)


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """One token from one row's logits ``(V,)``: argmax at temperature 0, else temperature + top-p + a draw."""
    if params.temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1:
        sorted_probs, sorted_ids = probs.sort(descending=True)
        before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the tokens ranked above each one
        sorted_probs[before >= params.top_p] = 0  # keep the smallest set whose mass reaches top_p
        probs = torch.zeros_like(probs).scatter_(0, sorted_ids, sorted_probs)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


def _advance(batch: DecodeBatch, logits: torch.Tensor, tokenizer, eos: set[int]) -> None:
    """Sample one token per live row (logits ``(B, V)``), record it, and mark rows that are done."""
    greedy = logits.argmax(-1).tolist()
    tokens = []
    for i, row in enumerate(batch.rows):
        if row.done:
            tokens.append(0)
            continue
        token = greedy[i] if row.params.temperature == 0 else sample(logits[i], row.params, row.generator)
        tokens.append(token)
        _accept(row, token, tokenizer, eos)
    batch.last = torch.tensor(tokens, dtype=torch.long, device=batch.mask.device)


def _accept(row: Row, token: int, tokenizer, eos: set[int]) -> None:
    row.generated.append(token)
    if token in eos:
        row.finish_reason = "stop"
        return
    if tokenizer is not None:
        text = tokenizer.decode([t for t in row.generated if t not in eos], skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in row.params.stop) if i >= 0), default=-1)
        if cut >= 0:
            row.text, row.finish_reason = text[:cut], "stop"
            return
        row.text = text
    if len(row.generated) >= row.params.max_new_tokens:
        row.finish_reason = "length"


@torch.inference_mode()
def generate_rows(model: nn.Module, tokenizer, rows: list[Row]) -> list[Row]:
    """Generate every row to its end (EOS, a stop string or ``max_new_tokens``) in one static batch."""
    eos = eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos), 0)
    batch = prefill(model, rows, pad, tokenizer, eos)
    while batch is not None:
        batch = batch.keep([i for i, r in enumerate(batch.rows) if not r.done])
        if batch is not None:
            decode_step(model, batch, tokenizer, eos)
    return rows


def generate_mixed(model: nn.Module, tokenizer, prompts: Sequence[str] | Sequence[Sequence[int]],
                   adapters: Sequence[str | None], max_new_tokens: int = 32, temperature: float = 0.0,
                   top_p: float = 1.0, seed: int | None = None, stop: Sequence[str] | str = (),
                   return_ids: bool = False) -> list[str] | list[list[int]]:
    """Generate a continuation of each prompt, row ``i`` with adapter ``adapters[i]`` (None: the base model),
    all rows in one batched forward per step. Greedy by default (``temperature=0``); with a temperature,
    each row draws from its own generator seeded with ``seed`` (random when None). Stops at EOS, at a
    ``stop`` string (not included) or after ``max_new_tokens``. Returns the texts (the generated token ids,
    EOS included when it ended the row, with ``return_ids=True``). Prompts are texts (tokenised as they are,
    with the tokenizer's special tokens) or lists of token ids."""
    prompts, adapters = list(prompts), list(adapters)
    if len(prompts) != len(adapters):
        raise ValueError(f"{len(adapters)} adapters for {len(prompts)} prompts; give one adapter (or None) per prompt")
    missing = sorted({a for a in adapters if a is not None} - set(list_adapters(model)))
    if missing:
        raise ValueError(f"no adapter named {missing[0]!r} in the model; add or load it first")
    params = SamplingParams(max_new_tokens, temperature, top_p, seed, stop)
    ids = [p if not isinstance(p, str) else tokenizer(p)["input_ids"] for p in prompts]
    rows = [Row(list(i), a, params) for i, a in zip(ids, adapters)]
    generate_rows(model, tokenizer, rows)
    return [r.generated for r in rows] if return_ids else [r.text for r in rows]


__all__ = ["DecodeBatch", "Row", "SamplingParams", "decode_step", "eos_ids", "generate_mixed", "generate_rows",
           "merge", "prefill", "sample"]
