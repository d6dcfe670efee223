"""Importances as text: the terminal table and the markdown section of the study's parent-run description.

A ranking that an unreliability rule flags (``Importances.warnings``/``type_warnings``) is shown as ranks
(``#1``, ``#2``...) with the reasons, never as numbers that look precise.
"""

from __future__ import annotations

from collections.abc import Mapping

from .._table import format_table
from ._evaluate import Importances

__all__ = ["format_importances", "importance_markdown"]

_EVALUATOR_NAMES = {"fanova": "fANOVA", "ped-anova": "PED-ANOVA", "mdi": "mean decrease in impurity"}


def _cells(per: Mapping[str, Mapping[str, float]], reliable: bool) -> tuple[list[str], list[list[str]]]:
    objectives = list(per)
    knobs = list(dict.fromkeys(k for values in per.values() for k in values))
    first = objectives[0] if objectives else None
    if first is not None:  # rows in the first objective's order, then the knobs only others score
        knobs = sorted(knobs, key=lambda k: (k not in per[first], -per[first].get(k, 0.0)))
    rows = []
    for knob in knobs:
        row = [knob]
        for objective in objectives:
            values = per[objective]
            if knob not in values:
                row.append("-")
            elif reliable:
                row.append(f"{values[knob]:.3f}")
            else:
                row.append(f"#{list(values).index(knob) + 1}")
        rows.append(row)
    return ["knob", *objectives], rows


def _counts(imp: Importances) -> str:
    c = imp.counts
    return (f"{c.get('completed', 0)} trials at the full budget ({c.get('early_stopped', 0)} stopped early, "
            f"{c.get('infeasible', 0)} infeasible, {c.get('failed', 0)} failed, {c.get('running', 0)} running)")


def format_importances(imp: Importances, study: str = "", by_type: bool = True) -> str:
    """The terminal report: the whole study's knobs per objective, then (``by_type``) each type's own knobs among
    its trials."""
    name = _EVALUATOR_NAMES.get(imp.evaluator, imp.evaluator)
    lines = [(f"Parameter importances{f' of study {study}' if study else ''} ({name}, normalised per objective; "
              f"{_counts(imp)})")]
    if imp.overall:
        header, rows = _cells(imp.overall, imp.reliable)
        lines.append(format_table(header, rows))
    if imp.warnings:
        lines.append("UNRELIABLE, ranks only: " + "; ".join(imp.warnings))
    if imp.by_type and not by_type:
        which = f" --study {study}" if study else ""
        lines.append(f"(each attention type's own knobs: attnsearch importance JOB{which})")
    elif imp.by_type:
        lines.append("\nEach attention type's knobs among its own trials:")
        for kind, per in imp.by_type.items():
            warn = imp.type_warnings.get(kind, [])
            reliable = imp.reliable and not warn
            head = f"{kind} ({imp.type_trials.get(kind, 0)} trials)"
            if reliable:
                lines += [head, format_table(*_cells(per, True))]
                continue
            why = "; ".join(warn) if warn else "the whole study's ranking is unreliable (above)"
            lines.append(f"{head}: UNRELIABLE ({why}); ranks only:")
            lines += [f"  {objective}: {' > '.join(values)}" for objective, values in per.items()]
    return "\n".join(lines)


def _md_table(per: Mapping[str, Mapping[str, float]], reliable: bool) -> list[str]:
    header, rows = _cells(per, reliable)
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows)]


def importance_markdown(imp: Importances, plots: Mapping[str, str] | None = None, *, limit: int = 2400) -> str:
    """The parent-run description's section: the whole study's ranking (numbers, or ranks with the reasons), one
    line per attention type with its top knob, then links to the plots (``{title: url}``); at most ``limit``
    characters (per-type lines are dropped first, then plot links)."""
    name = _EVALUATOR_NAMES.get(imp.evaluator, imp.evaluator)
    head = [f"**Parameter importances** ({name}, per objective; {_counts(imp)})", ""]
    body = _md_table(imp.overall, imp.reliable) if imp.overall else ["(no knob could be ranked)"]
    if imp.warnings:
        body += ["", "Unreliable, ranks only: " + "; ".join(imp.warnings)]
    per_type = []
    for kind, per in imp.by_type.items():
        first, values = next(iter(per.items()))
        top = next(iter(values), "-")
        flag = " (unreliable)" if imp.type_warnings.get(kind) or not imp.reliable else ""
        per_type.append(f"- `{kind}` ({imp.type_trials.get(kind, 0)} trials): {first} follows `{top}` most{flag}")
    links = [f"[{title}]({url})" for title, url in (plots or {}).items()]

    def text(types: list[str], shown: list[str]) -> str:
        parts = [*head, *body]
        if types:
            parts += ["", "Within each attention type:", *types]
        if shown:
            parts += ["", "Plots: " + " · ".join(shown)]
        return "\n".join(parts) + "\n"

    while len(text(per_type, links)) > limit and per_type:
        per_type.pop()
    while len(text(per_type, links)) > limit and links:
        links.pop()
    return text(per_type, links)[:limit]
