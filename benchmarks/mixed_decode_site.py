"""One bottleneck site of a mixed decode step, in isolation (issue 15): 8 rows x 1 token x 576 (SmolLM2's
width), 8 serial adapters of size 64 (gelu_new), one row each, CPU, fp32, 1 thread, inference mode.

  grouped   what ``BottleneckLayer._apply_mixed`` does: per adapter group, slice, down, act, up, write
  gathered  the adapters' weights stacked once (as a cache per routing would hold them) and two ``baddbmm``

Not wired into adapterkit: it measures whether batching the sites is worth doing for decode steps. The
gathered result differs from grouped by float rounding (~5e-7 here), not bit for bit.

    python benchmarks/mixed_decode_site.py [--rows 8] [--calls 3000]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from adapterkit.bottleneck import Bottleneck


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--hidden", type=int, default=576)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--calls", type=int, default=3000)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    adapters = [Bottleneck(args.hidden, args.size, "gelu_new", init_std=0.02) for _ in range(args.rows)]
    h = torch.randn(args.rows, 1, args.hidden)  # (B, 1, d): one new token per row
    groups = [(i, slice(i, i + 1)) for i in range(args.rows)]
    w_down = torch.stack([a.down.weight.t() for a in adapters]).contiguous()  # (B, d, m)
    b_down = torch.stack([a.down.bias for a in adapters])[:, None]  # (B, 1, m)
    w_up = torch.stack([a.up.weight.t() for a in adapters]).contiguous()  # (B, m, d)
    b_up = torch.stack([a.up.bias for a in adapters])[:, None]  # (B, 1, d)
    act = adapters[0].act

    def grouped():
        out = torch.empty_like(h)
        for i, rows in groups:
            out[rows] = h[rows] + adapters[i](h[rows])
        return out

    def gathered():
        return h + torch.baddbmm(b_up, act(torch.baddbmm(b_down, h, w_down)), w_up)

    with torch.inference_mode():
        print(f"max |grouped - gathered|: {(grouped() - gathered()).abs().max().item():.2e}")
        for f in (grouped, gathered, grouped, gathered):  # interleaved, each twice
            for _ in range(200):
                f()
            t = time.process_time()
            for _ in range(args.calls):
                f()
            per_call = (time.process_time() - t) / args.calls
            print(f"{f.__name__:9s} {per_call * 1e6:7.1f} us per site (CPU time)")


if __name__ == "__main__":
    main()
