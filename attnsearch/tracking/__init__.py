"""MLflow tracking: one parent run per study, one child run per Ray trial, all written by the driver.

Layout (README, "MLflow layout"): one experiment per job; a parent run tagged ``attnsearch.study`` holds the
job YAML, the resolved search space and the Pareto artifacts; each Ray trial gets one child run
(``mlflow.parentRunId``, ``attnsearch.trial_id``) with the trial config as params, per-epoch metrics at
``step=epoch``, the static counts once (step 0) and the ``attnsearch.state``/``budget``/``reason`` tags.

One module per job: ``_connection`` (health check, short HTTP retries, UI command), ``_ui`` (``attnsearch ui``:
the runs page's URL, the server in its own process group), ``_params`` (typed params,
run names), ``_records`` (what a trial reported), ``_datasets`` (a trial's dataset inputs), ``_store`` (the
idempotent store), ``_parent_run`` (the experiment and a study's parent run), ``_note`` (the parent's description in
sections), ``callback`` (the Ray Tune callback) and ``sync`` (replaying a Ray experiment directory). Only the last two
import Ray; import them by their module (``attnsearch.tracking.callback``, ``attnsearch.tracking.sync``).
"""

from ..contract import TrackingError
from ..uris import redact_uri, resolve_tracking_uri
from ._connection import LOOPBACK_HOSTS, check_tracking, fast_http, first_line, ui_command, ui_environment
from ._datasets import dataset_inputs
from ._note import NOTE_LIMIT, NOTE_SECTIONS, note_room, note_section_tag, note_tags
from ._params import decode_param, encode_params, param_types, run_name, run_params
from ._parent_run import (
    ensure_experiment,
    find_parent,
    job_study_ids,
    latest_parent,
    open_or_create_parent,
    recorded_job,
    start_prune,
    start_retrain,
    start_study,
)
from ._records import TrialRecord, error_summary
from ._store import Store, quote, search_all
from ._ui import STOP_GRACE_S, check_port_free, front_filter, serve_ui, ui_url, wait_for_port

__all__ = [
    "TrackingError",
    "STOP_GRACE_S",
    "check_port_free",
    "front_filter",
    "serve_ui",
    "ui_url",
    "wait_for_port",
    "TrialRecord",
    "Store",
    "redact_uri",
    "resolve_tracking_uri",
    "check_tracking",
    "ui_command",
    "ui_environment",
    "LOOPBACK_HOSTS",
    "fast_http",
    "first_line",
    "encode_params",
    "decode_param",
    "param_types",
    "run_params",
    "run_name",
    "error_summary",
    "quote",
    "search_all",
    "NOTE_LIMIT",
    "NOTE_SECTIONS",
    "note_room",
    "note_section_tag",
    "note_tags",
    "dataset_inputs",
    "ensure_experiment",
    "find_parent",
    "latest_parent",
    "job_study_ids",
    "open_or_create_parent",
    "recorded_job",
    "start_study",
    "start_retrain",
    "start_prune",
]
