"""Wall time of ``attnsearch.flops.count`` and ``check_attention_placement`` (median of N runs).

Usage: python benchmarks/flops_count_timing.py [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from attnsearch.flops import count
from attnsearch.models import build_model, check_attention_placement
from attnsearch.models.sites import _sites


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.repeats}")
    for backbone, attention in [
        ("resnet50", None),
        ("resnet50", {"type": "se", "position": "residual_end"}),
        ("resnet50", {"type": "triplet", "position": "residual_end"}),
        ("resnet101", {"type": "cbam", "position": "residual_end"}),
        ("mobilenet_v2", {"type": "coord"}),
    ]:
        model = build_model(backbone, 1000, attention=attention)
        c = count(model, (1, 3, 224, 224))
        t = median_time(lambda model=model: count(model, (1, 3, 224, 224)), args.repeats)
        name = attention["type"] if attention else "plain"
        print(f"count {backbone:13s} {name:8s} 224x224: {t * 1e3:7.1f} ms  "
              f"(macs {c['macs'] / 1e9:.3f} G, flops {c['flops'] / 1e9:.3f} G, params {c['params']:,})")

    def cold_check():
        _sites.cache_clear()
        check_attention_placement("resnet101", {"type": "se", "position": "residual_end"}, 224)

    print(f"check_attention_placement resnet101 se, cold cache: {median_time(cold_check, args.repeats) * 1e3:.2f} ms")
    warm = median_time(lambda: check_attention_placement("resnet101", {"type": "sa", "groups": 64}, 224), args.repeats)
    print(f"check_attention_placement resnet101 sa, warm cache: {warm * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
