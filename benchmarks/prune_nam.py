"""Does NAM's sparsity penalty p make a model prune with less loss, and does NAM's importance beat the backbone's
BN scales, the weights' L1 norm and random at equal FLOPs?

For each seed, trains the backbone without attention and with NAM (channel branch at its default slot) at each
penalty p (the loss gets ``p * nam_penalty(model)``, as a study's trial), through ``attnsearch.train.fit`` (the
trial's own loop) on ``--dataset``; then prunes each trained model at each ratio with each importance
(``attnsearch.prune.prune_model``: every dependency group keeps ``int(C * (1 - ratio))`` channels, so all
importances give the same widths and FLOPs at a ratio) and fine-tunes it ``--finetune-epochs`` epochs with the
same settings (``attnsearch.compress.finetune``, what ``attnsearch prune`` runs). Reports the validation accuracy
of the trained model, right after pruning, and after fine-tuning (mean over seeds), the pruned FLOPs as a
fraction of the unpruned, and how sparse NAM's gamma became (share of |gamma| below 1 % of its layer's largest).
``nam`` on the model without NAM is ``bn`` (no NAM module gates a channel) and is not repeated.

    nice -n 10 python benchmarks/prune_nam.py --threads 1            # digits, ResNet-20 at 12 px, 2 seeds

Writes a markdown table to benchmarks/results/prune_nam_<dataset>.md (or --out), the per-run rows as CSV next to it,
and prints the table.
"""

from __future__ import annotations

import argparse
import csv
import platform
import statistics
import sys
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import torch

from attnsearch.compress import finetune
from attnsearch.config import Job
from attnsearch.models import build_model
from attnsearch.prune import prune_model
from attnsearch.space import TrialSettings
from attnsearch.train import fit


def _job(args, seed: int) -> Job:
    return Job.model_validate({
        "name": "prune-bench",
        "backbone": {"name": args.backbone},
        "data": {"dataset": args.dataset, "image_size": args.image_size, "batch_size": args.batch_size,
                 "root": args.root, "train_size": args.train_size},
        "train": {"epochs": args.epochs, "lr": args.lr, "threads": args.threads, "seed": seed, "device": "cpu"},
        "search": {"space": {"attention": {"type": ["nam"]}}},
        "resources": {"cpu": args.threads},
    })


def _nam_sparsity(model: torch.nn.Module) -> float | None:
    shares = []
    for m in model.modules():
        if getattr(m, "_attnsearch_type", None) == "nam":
            g = m.bn.weight.detach().abs()
            shares.append((g < 0.01 * g.max()).float().mean().item())
    return statistics.fmean(shares) if shares else None


def _train(job: Job, attention: dict | None, penalty: float):
    settings = TrialSettings(attention=attention, train=job.train, nam_penalty=penalty, width_mult=1.0,
                         image_size=job.data.image_size)
    final: dict = {}

    def report(metrics, state):
        if state is not None:
            final.update(metrics=metrics, state=state)

    verdict = fit(job, settings, report)
    if verdict != "completed":
        raise RuntimeError(f"training {attention} p={penalty}: {verdict}")
    model = build_model(job.backbone.name, num_classes=final["state"]["model"]["fc.weight"].shape[0],
                        attention=attention, input_size=job.data.image_size)
    model.load_state_dict(final["state"]["model"])
    return settings, model.eval(), final["metrics"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--root", default=None)
    p.add_argument("--train-size", type=int, default=None, help="a seeded, stratified subset of the training split "
                   "(data.train_size; default: all of it)")
    p.add_argument("--backbone", default="resnet20")
    p.add_argument("--image-size", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--penalties", default="0,1e-4,1e-3,1e-2")
    p.add_argument("--ratios", default="0.3,0.6")
    p.add_argument("--importances", default="nam,bn,l1,random")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    penalties = [float(v) for v in args.penalties.split(",")]
    ratios = [float(v) for v in args.ratios.split(",")]
    importances = args.importances.split(",")
    seeds = [int(v) for v in args.seeds.split(",")]
    out = args.out or Path(__file__).parent / "results" / f"prune_nam_{args.dataset}.md"
    variants = [("none", None, 0.0)] + [(f"nam p={pen:g}", {"type": "nam"}, pen) for pen in penalties]
    rows, started = [], time.perf_counter()
    for seed in seeds:
        job = _job(args, seed)
        for label, attention, penalty in variants:
            settings, model, trained = _train(job, attention, penalty)
            sparsity = _nam_sparsity(model)
            print(f"seed {seed} {label}: val_acc {trained['val_acc']:.4f}", flush=True)
            for ratio in ratios:
                for importance in importances:
                    if attention is None and importance == "nam":
                        continue
                    result = prune_model(model, ratio, input_size=args.image_size, importance=importance,
                                         seed=seed)
                    first: dict = {}
                    final = finetune(result.model, job, settings, args.finetune_epochs,
                                     lambda epoch, m, first=first: first.update(m) if epoch == 0 else None)
                    rows.append({"seed": seed, "model": label, "ratio": ratio, "importance": importance,
                                 "val_acc": trained["val_acc"], "val_acc_pruned": first["val_acc"],
                                 "val_acc_finetuned": final["val_acc"], "flops": trained["flops"],
                                 "pruned_flops": final["flops"], "nam_sparsity": sparsity})
                    print(f"  ratio {ratio:g} {importance}: pruned {first['val_acc']:.4f} -> fine-tuned "
                          f"{final['val_acc']:.4f}", flush=True)
    wall = time.perf_counter() - started
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    text = _table(rows, args, importances, wall, argv if argv is not None else sys.argv[1:])
    out.write_text(text)
    print(text)
    return 0


def _table(rows, args, importances, wall, argv) -> str:
    groups = defaultdict(list)
    for r in rows:
        groups[(r["model"], r["ratio"], r["importance"])].append(r)
    base = defaultdict(list)
    for r in rows:
        if r["importance"] == importances[-1] or r["model"] == "none":
            base[r["model"]].append(r)

    def mean(items, key):
        values = [i[key] for i in items if i[key] is not None]
        return statistics.fmean(values) if values else None

    models = list(dict.fromkeys(r["model"] for r in rows))
    ratios = list(dict.fromkeys(r["ratio"] for r in rows))
    seeds = sorted({r["seed"] for r in rows})
    head = ["model", "trained val_acc", "NAM gamma < 1% of max", "ratio", "FLOPs kept"]
    head += [f"{imp}: pruned / fine-tuned" for imp in importances]
    lines = [
        "# Pruning NAM models: does p help, does NAM's importance help?", "",
        f"`python benchmarks/prune_nam.py {' '.join(argv)}` ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{platform.processor() or platform.machine()}, {args.threads} thread(s), {wall / 60:.1f} min).", "",
        f"{args.backbone} at {args.image_size} px on {args.dataset}, {args.epochs} epochs (SGD lr {args.lr}, cosine), "
        f"seeds {seeds}; pruned at each ratio (each dependency group keeps int(C * (1 - ratio)) channels), then "
        f"{args.finetune_epochs} fine-tuning epoch(s). Validation accuracy, mean over seeds.", "",
        "| " + " | ".join(head) + " |", "|" + "---|" * len(head),
    ]
    for model in models:
        items = [r for r in rows if r["model"] == model]
        sparsity = mean(items, "nam_sparsity")
        for ratio in ratios:
            cells = [model, f"{mean(items, 'val_acc'):.4f}", "-" if sparsity is None else f"{sparsity:.2f}",
                     f"{ratio:g}"]
            some = [r for r in items if r["ratio"] == ratio]
            cells.append(f"{statistics.fmean(r['pruned_flops'] / r['flops'] for r in some):.3f}")
            for imp in importances:
                g = groups.get((model, ratio, imp))
                cells.append("(= bn)" if not g else
                             f"{mean(g, 'val_acc_pruned'):.4f} / {mean(g, 'val_acc_finetuned'):.4f}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
