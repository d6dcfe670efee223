"""What one trial reported, reduced to what MLflow needs (fed by the Ray callback or a Ray experiment folder)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..contract import (
    BASELINE_KEY,
    FAILED,
    REASON_KEY,
    RUNNING,
    STATE_KEY,
    STATIC_METRICS,
    TIME_ATTR,
    is_number,
    trial_state,
)
from ..uris import redact_text

__all__ = ["TrialRecord", "error_summary"]

# Keys Ray Tune adds to every result: bookkeeping, not metrics of the trial.
_RAY_KEYS = frozenset([
    "timestamp", "done", "training_iteration", "trial_id", "date", "time_this_iter_s", "time_total_s", "pid",
    "hostname", "node_ip", "config", "time_since_restore", "iterations_since_restore", "checkpoint_dir_name",
    "experiment_tag", "should_checkpoint", "timesteps_total", "timesteps_since_restore", "episodes_total",
    "warmup_time", "experiment_id", "perf",
])
MAX_REASON = 2000  # characters of a failure reason kept in the tag



@dataclass
class TrialRecord:
    """What one trial reported, reduced to what MLflow needs; fed by the callback or a Ray trial directory."""

    trial_id: str
    config: dict[str, Any]
    pending: list[dict[str, Any]] = field(default_factory=list)  # per-epoch results not yet confirmed written
    static: dict[str, float] = field(default_factory=dict)
    budget: int = 0
    reported_state: str | None = None
    reported_reason: str | None = None
    state: str = RUNNING
    reason: str | None = None
    failures: int = 0
    start_ms: int | None = None
    end_ms: int | None = None
    nresults: int = 0
    last: dict[str, float] = field(default_factory=dict)  # the newest epoch's metrics (what MLflow shows last)
    baseline: bool = False  # the study's baseline (its config's BASELINE_KEY, taken out of the params)

    def __post_init__(self) -> None:
        if self.config.pop(BASELINE_KEY, False):
            self.baseline = True

    def add_result(self, result: Mapping[str, Any]) -> None:
        """Keep the metrics of one Ray result (bookkeeping keys dropped)."""
        self.nresults += 1
        if result.get(STATE_KEY):
            self.reported_state = str(result[STATE_KEY])
            self.reported_reason = tail(str(result.get(REASON_KEY) or "")) or None
        for key in STATIC_METRICS:
            if is_number(result.get(key)) and key not in self.static:
                self.static[key] = float(result[key])
        epoch = result.get(TIME_ATTR)
        ts = result.get("timestamp")
        if is_number(ts):
            ms = int(float(ts) * 1000)
            self.end_ms = ms
            if self.start_ms is None:
                self.start_ms = ms - int(1000 * float(result.get("time_this_iter_s") or 0))
        if not is_number(epoch) or (isinstance(epoch, float) and not math.isfinite(epoch)):
            return
        epoch = int(epoch)
        self.budget = max(self.budget, epoch)
        metrics = {
            k: float(v) for k, v in result.items()
            if is_number(v) and k not in _RAY_KEYS and k not in STATIC_METRICS and k != TIME_ATTR
        }
        self.pending.append({"epoch": epoch, "ms": self.end_ms, "metrics": metrics})
        self.last = {**self.last, **metrics}

    def finish(self, max_t: int, errored: bool = False, error: str | None = None) -> None:
        """Decide the final state once the trial has ended."""
        if self.nresults == 0 and not errored:
            self.state, self.reason = FAILED, "the trial ended without reporting a result"
            return
        self.state = trial_state(self.reported_state, self.budget, max_t, errored)
        if self.state == self.reported_state:
            self.reason = self.reported_reason
        elif errored:
            self.reason = error_summary(error or "")
        else:
            self.reason = None


_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")
_EXC_LINE_RE = re.compile(r"^[A-Za-z_][\w.()]*(Error|Exception|Interrupt|Exit|Failure)\w*\)?:")


def error_summary(text: str) -> str:
    """The exception line of a traceback (``RuntimeError: boom``) and what follows it, from Ray's error text.

    Ray's ``error.txt`` appends one traceback per failure; the last one counts. The full text stays in the trial
    directory; the tag needs the cause.
    """
    lines = [ln.rstrip() for ln in _ANSI_RE.sub("", text).splitlines() if ln.strip()]
    if not lines:
        return "Ray reported an error without a message"
    start = max((i for i, ln in enumerate(lines) if _EXC_LINE_RE.match(ln)), default=len(lines) - 1)
    return tail("\n".join(lines[start:]))


def tail(text: str) -> str:
    """A failure reason as a tag holds it: credentials redacted, the last ``MAX_REASON`` characters."""
    text = redact_text(text.strip())
    return text if len(text) <= MAX_REASON else "..." + text[-MAX_REASON:]
