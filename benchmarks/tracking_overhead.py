"""Driver-side cost of MLflow tracking per trial result, on a local SQLite store (no Ray needed).

Simulates what MLflowTracker does during a search: one child run per trial, one reconcile (one log_batch)
per epoch, a final state. Then replays the same study into a fresh store (what sync_study writes) and replays it
again (must write nothing). Usage: python benchmarks/tracking_overhead.py [--trials 50 --epochs 10]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from attnsearch import tracking as T


def _trial(i: int, epochs: int) -> tuple[T.TrialRecord, list[dict]]:
    config = {"attention": "sa", "stages": "2,3", "position": "default", "sa.groups": 2 + i % 4, "train.lr": 0.1}
    results = [
        {"epoch": e, "val_acc": 0.5 + e / 100, "val_loss": 1 / e, "train_loss": 1.1 / e, "nam_penalty": 0.0,
         "lr": 0.1, "epoch_time_s": 1.0, "flops": 1e8, "macs": 5e7, "params": 1e5, "attn_flops": 1e6,
         "attn_macs": 5e5, "attn_params": 1e3, "timestamp": 1_700_000_000 + e}
        for e in range(1, epochs + 1)
    ]
    return T.TrialRecord(f"t{i:05d}", config), results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=10)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        uri = T.resolve_tracking_uri("sqlite:///bench.db", tmp)
        T.check_tracking(uri)
        parent = T.start_study(uri, "bench", "s", "name: bench\n", {}, False)
        store = T._Store(uri, parent)
        start, per_result = time.perf_counter(), []
        for i in range(args.trials):
            record, results = _trial(i, args.epochs)
            store.reconcile(record)  # on_trial_start: run + params
            for result in results:
                t0 = time.perf_counter()
                record.add_result(result)
                store.reconcile(record)
                per_result.append(time.perf_counter() - t0)
            record.finish(args.epochs)
            store.reconcile(record)
        live = time.perf_counter() - start
        per_result.sort()
        p95 = per_result[int(0.95 * len(per_result))]
        print(f"live: {args.trials} trials x {args.epochs} epochs in {live:.2f} s; per result: median "
              f"{1e3 * statistics.median(per_result):.1f} ms, p95 {1e3 * p95:.1f} ms")

        uri2 = T.resolve_tracking_uri("sqlite:///fresh.db", tmp)
        T.check_tracking(uri2)
        parent2 = T.start_study(uri2, "bench", "s", "name: bench\n", {}, False)
        for label in ("sync into a fresh store", "sync again (no-op)"):
            store2 = T._Store(uri2, parent2)
            t0 = time.perf_counter()
            written = 0
            for i in range(args.trials):
                record, results = _trial(i, args.epochs)
                for result in results:
                    record.add_result(result)
                record.finish(args.epochs)
                written += store2.reconcile(record)["metrics"]
            print(f"{label}: {time.perf_counter() - t0:.2f} s, {written} metric values written")

    t0 = time.perf_counter()
    try:
        T.check_tracking("http://127.0.0.1:9", timeout_s=5)
    except T.TrackingError as e:
        print(f"check_tracking on a dead port: {time.perf_counter() - t0:.2f} s ({str(e)[:60]}...)")


if __name__ == "__main__":
    main()
