"""A model as a folder: ``weights.pt`` (state dict), ``spec.yaml`` (the build spec), ``README.md`` (a model card:
metrics, FLOPs, params, where the attention sits), and the compiled forms the module allows: ``model.pt2``
(``torch.export`` with a dynamic batch dimension; ``torch.export.load(path).module()``) and
``model.torchscript.pt`` (``torch.jit.trace``; ``torch.jit.load``). Each compiled form is checked before it is kept:
loaded back, it must give the eager model's logits on a batch of another size. What a module does not allow is
said in the card (and returned): on torch 2.14 TorchScript fails for every attention module (their hand-written
``autograd.Function`` gates cannot be serialised; ``torch.jit.script`` fails on the backbones themselves), only
the plain backbone traces; ``torch.export`` handles every module of the zoo.
"""

from __future__ import annotations

import io
import math
import re
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..flops import count
from ..models import attention_modules
from ._spec import SPEC_FILE, WEIGHTS_FILE, ModelSpec, write_weights

__all__ = ["ExportedModel", "export_model", "FORMATS", "PT2_FILE", "TORCHSCRIPT_FILE", "CARD_FILE", "folder_name"]

PT2_FILE = "model.pt2"
TORCHSCRIPT_FILE = "model.torchscript.pt"
CARD_FILE = "README.md"
FORMATS = ("pt2", "torchscript")
_FILES = {"pt2": PT2_FILE, "torchscript": TORCHSCRIPT_FILE}
_TOLERANCE = 1e-4  # compiled forms against the eager logits (float32, same device)


@dataclass
class ExportedModel:
    folder: Path
    spec: ModelSpec
    files: list[str]  # written, relative to folder
    unavailable: dict[str, str] = field(default_factory=dict)  # format -> why not
    seconds: dict[str, float] = field(default_factory=dict)  # format -> time to produce and check it


def folder_name(run_name: str | None, trial_id: str | None) -> str:
    """``<run name>-<trial id>``: run names repeat (two baselines are both ``none``), trial ids do not."""
    text = "-".join(p for p in (run_name, trial_id) if p) or "model"
    # one folder name below the export folder, never "." or ".." (a run named so would write beside or above it)
    return re.sub(r"^\.", "_", re.sub(r"[^A-Za-z0-9_.=-]+", "_", text))


def _examples(spec: ModelSpec) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    size = (3, spec.image_size, spec.image_size)
    return torch.randn(2, *size, generator=gen), torch.randn(3, *size, generator=gen)


def _first_line(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    text = text.split(". ")[0].rstrip(".:")  # the diagnosis, not the compiler's advice
    return f"{type(exc).__name__}: {text[:300]}"


def _pt2(model: nn.Module, example: torch.Tensor, check: torch.Tensor, want: torch.Tensor, path: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    buffer.seek(0)
    with torch.no_grad():
        got = torch.export.load(buffer).module()(check)
    if not torch.allclose(got, want, atol=_TOLERANCE, rtol=_TOLERANCE):
        raise RuntimeError(f"the exported program's logits differ from the module's by "
                           f"{(got - want).abs().max().item():.3g}")
    path.write_bytes(buffer.getvalue())


def _torchscript(model: nn.Module, example: torch.Tensor, check: torch.Tensor, want: torch.Tensor,
                 path: Path) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript's deprecation and tracer warnings: the check below decides
        traced = torch.jit.trace(model, example, check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
        buffer.seek(0)
        got = torch.jit.load(buffer)(check)
    if not torch.allclose(got, want, atol=_TOLERANCE, rtol=_TOLERANCE):
        raise RuntimeError(f"the traced module's logits differ from the module's by "
                           f"{(got - want).abs().max().item():.3g} (data-dependent control flow?)")
    path.write_bytes(buffer.getvalue())


def export_model(
    model: nn.Module,
    spec: ModelSpec,
    folder: str | Path,
    *,
    metrics: Mapping[str, Any] | None = None,
    formats: Sequence[str] = FORMATS,
    extra: Mapping[str, str] | None = None,
) -> ExportedModel:
    """Write ``model`` (the spec's architecture with its weights) to ``folder``: weights, spec, card and the
    compiled ``formats`` (``pt2``, ``torchscript``) the module allows. ``metrics`` (the trial's) and ``extra``
    (e.g. its MLflow model URI) go into the card."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"formats: unknown {unknown}; valid: {list(FORMATS)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    write_weights(model.state_dict(), folder / WEIGHTS_FILE)
    (folder / SPEC_FILE).write_text(spec.to_yaml())
    out = ExportedModel(folder, spec, [WEIGHTS_FILE, SPEC_FILE])
    example, check = _examples(spec)
    with torch.no_grad():
        want = model(check)
    for kind in formats:
        path = folder / _FILES[kind]
        path.unlink(missing_ok=True)
        started = time.perf_counter()
        try:
            (_pt2 if kind == "pt2" else _torchscript)(model, example, check, want, path)
            out.files.append(_FILES[kind])
        except Exception as exc:  # noqa: BLE001 - any failure of a compiler is a format this module lacks
            out.unavailable[kind] = _first_line(exc)
        out.seconds[kind] = time.perf_counter() - started
    costs = count(model, input_size=(1, 3, spec.image_size, spec.image_size))
    (folder / CARD_FILE).write_text(model_card(model, spec, costs, metrics or {}, out, extra or {}))
    out.files.append(CARD_FILE)
    return out


def _number(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float) and math.isnan(value):
        return "-"
    if isinstance(value, (int, float)) and abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def model_card(model: nn.Module, spec: ModelSpec, costs: Mapping[str, Any], metrics: Mapping[str, Any],
               exported: ExportedModel, extra: Mapping[str, str]) -> str:
    """The folder's README.md: what the model is, how well it did, what it costs, where its attention sits."""
    src = spec.source
    title = src.get("run_name") or spec.backbone
    summary = (f"{spec.backbone} (width x{spec.width_mult:g}) at {spec.image_size}x{spec.image_size}, "
               f"{spec.num_classes} classes, attention: {spec.describe_attention()}.")
    lines = [f"# {title}", "", summary, ""]
    if spec.pruning:
        p = spec.pruning
        lines += [f"Channel-pruned (`attnsearch prune`): {float(p['ratio']):g} of every dependency group's channels "
                  f"removed by {p['importance']} importance from run `{p.get('source_run')}`, then fine-tuned "
                  f"{p.get('finetune_epochs', 0)} epoch(s); the spec's `pruning.history` rebuilds the widths.", ""]
    if src:
        lines += ["## Source", "", *[f"- {k}: `{v}`" for k, v in src.items()], *[f"- {k}: {v}" for k, v in
                                                                                  extra.items()], ""]
    shown = {k: v for k, v in metrics.items() if v is not None}
    lines += ["## Metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_number(v)} |" for k, v in shown.items()] or ["| (none recorded) | |"]
    lines += ["", "## Cost (attnsearch.flops.count, batch 1)", "", "| count | value |", "|---|---|"]
    lines += [f"| {k} | {_number(int(costs[k]))} |" for k in ("macs", "flops", "params", "attn_macs", "attn_flops",
                                                                "attn_params") if k in costs]
    sites = attention_modules(model)
    lines += ["", "## Attention placement", ""]
    if sites:
        lines += ["| site | module | params |", "|---|---|---|"]
        lines += [f"| `{name}` | {type(m).__name__} | {sum(p.numel() for p in m.parameters()):,} |"
                  for name, m in sites.items()]
    else:
        lines += ["None: the plain backbone."]
    norm = (f"normalised with mean {[round(v, 4) for v in spec.mean]} and std {[round(v, 4) for v in spec.std]} "
            "(per channel, pixels in [0, 1])"
            if spec.mean is not None else "as the trial's data")
    lines += ["", "## Input", "",
              f"Float32 tensors (N, 3, {spec.image_size}, {spec.image_size}), {norm}; dataset `{spec.dataset}`.",
              "", "## Files", ""]
    described = {WEIGHTS_FILE: "state dict (`torch.load(..., weights_only=True)`)",
                 SPEC_FILE: "build spec: backbone, classes, width, image size, attention dict, normalisation",
                 PT2_FILE: "`torch.export` program, dynamic batch (`torch.export.load(path).module()`)",
                 TORCHSCRIPT_FILE: "TorchScript, traced (`torch.jit.load(path)`)"}
    lines += [f"- `{f}`: {described[f]}" for f in exported.files if f in described]
    lines += [f"- {kind}: not available for this module: {why}" for kind, why in exported.unavailable.items()]
    lines += ["", "## Loading", "", "```python", "from attnsearch.export import load_model",
              f'model = load_model("{exported.folder.name}")   # this folder; eval mode', "```", ""]
    return "\n".join(lines)
