"""The commands on a study's Optuna record: ``importance`` (which knobs matter, per objective) and ``dashboard``
(optuna-dashboard on the record); and what the study's end and ``sync`` add to its parent run (importances, plots).
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..contract import ConfigError, UsageError
from ..uris import redact_uri
from ._common import add_job_argument, load_checked_job

if TYPE_CHECKING:
    from ..config import Job

DASHBOARD_HOST = "127.0.0.1"  # optuna-dashboard has no login: it listens on this machine only


def resolve_study_id(job: Job, study: str | None, command: str) -> str:
    """``--study ID|latest`` among the job's studies under ``ray.storage_path`` (default: the newest)."""
    from ..search import check_own_study, existing_studies

    known = existing_studies(job)
    if study in (None, "latest"):
        if not known:
            raise ConfigError(f"{command}: job {job.name!r} has no study under ray.storage_path="
                              f"{redact_uri(job.ray.storage_path)}; run it first (attnsearch run JOB)")
        return known[-1]
    if study not in known:
        check_own_study(job, study, f"{command} --study")  # another job's study is refused, naming both
        raise ConfigError(f"{command} --study {study}: no study of that name under ray.storage_path="
                          f"{redact_uri(job.ray.storage_path)}; studies of job {job.name!r}: "
                          f"{', '.join(known) or 'none'}")
    return study


def _optuna_study(job: Job, study_id: str, command: str):
    from ..search import load_optuna_study, optuna_storage_url

    url = optuna_storage_url(job, study_id)
    try:
        return load_optuna_study(url, study_id), url
    except ValueError as exc:
        raise ConfigError(f"{command}: {exc}") from None


def cmd_importance(args) -> int:
    from ..importance import format_importances, study_importances

    job = load_checked_job(args)
    study_id = resolve_study_id(job, args.study, "importance")
    study, _ = _optuna_study(job, study_id, "importance")
    objectives = dict(job.search.objectives)
    if args.objective is not None and args.objective not in objectives:
        raise UsageError(f"importance --objective {args.objective}: not an objective of the job; its objectives: "
                         f"{', '.join(objectives)}")
    imp = study_importances(study, objectives if not study.metric_names else None, args.evaluator,
                            only=args.objective)
    print(format_importances(imp, study_id))
    return 0


def record_importances(job: Job, study_id: str, parent_run_id: str | None, prefix: str = "") -> None:
    """The study's importances and plots on its parent run, as its end does (and ``sync``); a failure here never
    fails the study (``attnsearch sync JOB`` writes them later)."""
    from mlflow import MlflowClient

    from .. import pareto
    from ..importance import format_importances
    from ..importance import record_importances as record
    from ..search import load_optuna_study, optuna_storage_url

    try:
        optuna_study = load_optuna_study(optuna_storage_url(job, study_id), study_id)
        client = MlflowClient(job.tracking.uri)
        study = pareto.select_study(client, job.experiment, study_id, parent_run_id)
        imp = record(client, study, optuna_study, objectives=None if optuna_study.metric_names
                     else dict(job.search.objectives))
    except Exception as exc:  # noqa: BLE001 - the study and its front are recorded either way
        print(f"{prefix}parameter importances not recorded: {exc}; attnsearch sync JOB records them later",
              file=sys.stderr)
        return
    text = format_importances(imp, study_id, by_type=False)
    print((prefix or "\n") + text.replace("\n", "\n" + prefix))
    print(f"{prefix}importances and plots recorded on the parent run {study.parent_run_id}")


def reconcile_optuna(job: Job, study_id: str, prefix: str = "") -> None:
    """``sync``: the study's Optuna record rebuilt from its Ray folder when missing, else completed from it."""
    from ..search import optuna_storage_url, reconcile_optuna_record, study_path
    from ..space import load_space
    from ..tracking.sync import read_ray_trials

    try:
        url = optuna_storage_url(job, study_id)
        records = read_ray_trials(study_path(job, study_id), job.max_t)
        counts = reconcile_optuna_record(url, study_id, records, load_space(job), dict(job.search.objectives))
    except Exception as exc:  # noqa: BLE001 - MLflow's record is synced either way
        print(f"{prefix}Optuna record not reconciled: {exc}", file=sys.stderr)
        return
    print(f"{prefix}Optuna record {counts}")


def _dashboard_command() -> list[str]:
    if importlib.util.find_spec("optuna_dashboard") is None:
        raise UsageError("dashboard: optuna-dashboard is not installed; pip install \"attnsearch[dashboard]\" "
                         "(or pip install optuna-dashboard)")
    script = Path(sys.executable).parent / "optuna-dashboard"
    found = str(script) if script.is_file() else shutil.which("optuna-dashboard")
    if found is None:
        raise UsageError("dashboard: the optuna-dashboard command is not on PATH; reinstall it "
                         "(pip install \"attnsearch[dashboard]\")")
    return [found]


def cmd_dashboard(args) -> int:
    from ..search import open_optuna_storage
    from ..tracking import check_port_free, serve_ui
    from ..uris import redact_uri

    job = load_checked_job(args)
    command = _dashboard_command()
    check_port_free(DASHBOARD_HOST, args.port, "dashboard")
    study_id = resolve_study_id(job, args.study, "dashboard")
    _, url = _optuna_study(job, study_id, "dashboard")
    storage_id = open_optuna_storage(url).get_study_id_from_name(study_id)  # the dashboard's page of the study
    command += [url, "--host", DASHBOARD_HOST, "--port", str(args.port), "--quiet"]
    page = f"http://{DASHBOARD_HOST}:{args.port}/dashboard/studies/{storage_id}"
    print("running: optuna-dashboard", redact_uri(url), "--host", DASHBOARD_HOST, "--port", args.port, flush=True)
    return serve_ui(command, page, host=DASHBOARD_HOST, port=args.port, open_browser=args.open,
                    name="optuna-dashboard")


def add_importance(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("importance", help="which knobs matter: each knob's importance for each objective (Optuna's "
                                           "evaluators on the study's full-budget trials), and each attention "
                                           "type's own knobs among its trials")
    add_job_argument(sp)
    sp.add_argument("--study", metavar="ID|latest", help="which study of the job (default: the newest)")
    sp.add_argument("--objective", metavar="NAME", help="one objective only (default: each of the job's)")
    sp.add_argument("--evaluator", choices=("fanova", "ped-anova", "mdi"), default="fanova",
                    help="fanova (default), ped-anova or mdi (mean decrease in impurity)")
    sp.set_defaults(func=cmd_importance)


def add_dashboard(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("dashboard", help="start optuna-dashboard on the study's Optuna record (127.0.0.1 only)")
    add_job_argument(sp)
    sp.add_argument("--study", metavar="ID|latest", help="which study of the job (default: the newest)")
    sp.add_argument("--port", type=int, default=8080)
    sp.add_argument("--open", action="store_true", help="open the study's page in a browser once it answers")
    sp.set_defaults(func=cmd_dashboard)
