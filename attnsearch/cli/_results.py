"""The commands on a study's results: ``pareto`` (the front of a job's or an experiment's trials), ``ui`` (the
MLflow UI on the job's store) and ``export`` (models as folders)."""

from __future__ import annotations

import argparse
import sys

from ..contract import ALL_STUDIES, EXPERIMENT_KIND_MODELS, LATEST, TAG_EXPERIMENT_KIND
from ._common import (
    add_job_argument,
    add_set_option,
    existing_store,
    experiment_and_uri,
    load_checked_job,
    parse_objectives,
    user_argument,
)


def cmd_pareto(args) -> int:
    from .. import pareto

    experiment, uri, job = experiment_and_uri(args.target, args, args.set)
    existing_store(uri)
    with user_argument(args.target):
        front, hv = pareto.analyze(
            uri, experiment, args.study, objectives=parse_objectives(args.objectives, job), budget=args.budget,
            out=args.out, plot=args.plot, record=True if args.record else None,
            definition=dict(job.search.objectives) if job else None, job=job,
        )
    info = front.attrs
    which = (f"all studies ({', '.join(info.get('studies') or []) or 'none'})" if info["study"] == ALL_STUDIES
             else f"study {info['study']}")
    print(f"Pareto front of {experiment!r}, {which} ({len(front)} trials, budget={args.budget}, "
          f"hypervolume {hv:.6g}):")
    print(pareto.format_front(front))
    for path in (args.out, args.plot):
        if path:
            print(f"wrote {path}")
    own = info["own"]
    own_text = f"{','.join(f'{k}:{m}' for k, m in own['objectives'].items())} at budget {own['budget']}"
    if info["recorded"]:
        names = "as the study's own front" if info["record_key"] is None else f"under key {info['record_key']}"
        print(f"recorded in MLflow {names} (parent run {info['parent_run_id']})")
    elif info["study"] == ALL_STUDIES:
        print("not recorded in MLflow: a comparison of several studies is never recorded")
    else:
        print(f"not recorded in MLflow: the study's own front is {own_text}; add --record to record this one "
              "under its own names")
    return 0


def cmd_ui(args) -> int:
    from mlflow import MlflowClient

    from ..tracking import LOOPBACK_HOSTS, check_port_free, serve_ui, ui_command, ui_environment, ui_url

    job = load_checked_job(args)
    check_port_free(args.host, args.port, "ui")
    command = ui_command(job.tracking.uri, host=args.host, port=args.port)
    if args.host not in LOOPBACK_HOSTS:
        print(f"warning: --host {args.host} serves the MLflow UI beyond this machine, without authentication: "
              "anyone who reaches the port reads, edits and deletes every run of the store; keep 127.0.0.1 (an SSH "
              "tunnel reaches it) or serve an MLflow server with --app-name basic-auth (docker/compose.yaml)",
              file=sys.stderr, flush=True)
    existing_store(job.tracking.uri)
    experiment_id = None
    client = MlflowClient(job.tracking.uri)
    exp = client.get_experiment_by_name(job.experiment)
    if exp is not None:
        experiment_id = exp.experiment_id
        if exp.tags.get(TAG_EXPERIMENT_KIND) != EXPERIMENT_KIND_MODELS:  # a store from before attnsearch tagged it
            client.set_experiment_tag(experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND_MODELS)
    url = ui_url(args.host, args.port, experiment_id, dict(job.search.objectives))
    print("running:", " ".join(command), flush=True)
    return serve_ui(command, url, host=args.host, port=args.port, open_browser=args.open,
                    env=ui_environment(job.tracking.uri))


def cmd_export(args) -> int:
    from ..export import export_study

    job = load_checked_job(args)
    existing_store(job.tracking.uri)
    formats = [f for f in (args.formats or "").split(",") if f]
    with user_argument("--formats"):
        exported = export_study(job, args.out, run_id=args.run, front=args.front, study=args.study,
                                formats=formats)
    for model in exported:
        missing = "".join(f"; no {kind}: {why}" for kind, why in model.unavailable.items())
        print(f"{model.folder}: {', '.join(model.files)}{missing}")
    print(f"{len(exported)} model(s) exported to {args.out}")
    return 0


def add_pareto(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("pareto", help="the Pareto front of a job's (or an MLflow experiment's) trials")
    sp.add_argument("target", help="job YAML file or MLflow experiment name")
    add_set_option(sp, None)
    sp.add_argument("--objectives", help="e.g. val_acc:max,flops:min (default: the job's; for an experiment name, the "
                         "study's own)")
    sp.add_argument("--budget", choices=("full", "any"), default="full")
    sp.add_argument("--study", default=LATEST, metavar=f"ID|{LATEST}|{ALL_STUDIES}",
                    help="which study: an id, the newest (default), or all of the experiment's at equal budget")
    sp.add_argument("--record", action="store_true",
                    help="record this front in MLflow even when it is not the study's own (its objectives at the "
                         "full budget, recorded anyway): under names keyed by its objectives and budget")
    sp.add_argument("--out", help="front.csv or front.parquet")
    sp.add_argument("--plot", help="front.png")
    sp.add_argument("--tracking-uri", help="MLflow tracking URI (default: the job's, or sqlite:///mlflow.db)")
    sp.set_defaults(func=cmd_pareto)


def add_ui(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("ui", help="start the MLflow UI on the job's tracking store (127.0.0.1 by default)")
    add_job_argument(sp)
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=5000)
    sp.add_argument("--open", action="store_true", help="open the study's front in a browser once the UI answers")
    sp.set_defaults(func=cmd_ui)


def add_export(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("export", help="write a study's front (or one trial) as model folders: weights, build "
                                       "spec, model card, torch.export/TorchScript forms")
    add_job_argument(sp)
    which = sp.add_mutually_exclusive_group(required=True)
    which.add_argument("--front", action="store_true", help="the study's recorded Pareto front")
    which.add_argument("--run", metavar="RUN_ID", help="one trial: its MLflow child run id")
    sp.add_argument("--out", required=True, metavar="DIR", help="one folder per model is written under DIR")
    sp.add_argument("--study", metavar=f"ID|{LATEST}", help="with --front: which study (default: the newest)")
    sp.add_argument("--formats", default="pt2,torchscript",
                    help="compiled forms to try besides the weights: pt2 (torch.export), torchscript; '' for none")
    sp.set_defaults(func=cmd_export)
