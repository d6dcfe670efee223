"""Forward+backward time of Triplet Attention's three 7x7 2->1 convolutions alone, as a share of the bottleneck.

Triplet's gates convolve 2-channel Z-pooled maps of size (C, W), (H, C) and (H, W). This times exactly those
convolutions (channels-last input, as the module runs them) against the Bottleneck block at the same shape,
interleaved, to show how much of the module's cost no elementwise optimisation can remove.

    python benchmarks/triplet_convs.py --threads 1 --repeats 15
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torchvision.models.resnet import Bottleneck


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["32x256x28x28", "32x64x56x56"], help="BxCxHxW")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--kernel-size", type=int, default=7)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    k = args.kernel_size
    for shape_s in args.shapes:
        b, c, h, w = (int(v) for v in shape_s.lower().split("x"))
        torch.manual_seed(0)
        x = torch.randn(b, c, h, w, requires_grad=True)
        grad = torch.randn(b, c, h, w)
        block = Bottleneck(c, c // 4).train()
        weights = [torch.randn(1, 2, k, k, requires_grad=True) for _ in range(3)]
        maps = [torch.randn(b, 2, *size).contiguous(memory_format=torch.channels_last).requires_grad_()
                for size in ((c, w), (h, c), (h, w))]

        def convs(maps=maps, weights=weights) -> None:
            for m, wt in zip(maps, weights, strict=False):
                out = F.conv2d(m, wt, padding=k // 2)
                out.backward(torch.ones_like(out))

        def block_step(x=x, block=block, grad=grad) -> None:
            x.grad = None
            block(x).backward(grad)

        convs()
        block_step()
        ratios, conv_ms = [], []
        for _ in range(args.repeats):
            t_block = (_time(block_step) + _time(block_step)) / 2
            t_conv = _time(convs)
            ratios.append(t_conv / t_block)
            conv_ms.append(t_conv * 1e3)
        print(f"{shape_s}: Triplet's three {k}x{k} convolutions fwd+bwd {statistics.median(conv_ms):.1f} ms = "
              f"{100 * statistics.median(ratios):.1f} % of the bottleneck (median of {args.repeats})")


if __name__ == "__main__":
    main()
