"""Trial configs as MLflow params (typed, so that readers get the values back exactly) and readable run names."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from ..contract import TAG_PARAM_TYPES

__all__ = ["encode_params", "decode_param", "param_types", "run_params", "run_name"]


def _param_type(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    return "json"


def encode_params(config: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """Flat trial config -> (MLflow param strings, {param: type}) so that ``decode_param`` restores the value
    exactly.

    Scalars are written the way Python prints them (``0.1``, ``True``, ``None``), lists/dicts as JSON.
    """
    flat = config
    values, types = {}, {}
    for key, value in flat.items():
        if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
            value = value.tolist()  # numpy scalars/arrays from a searcher -> plain Python
        kind = _param_type(value)
        types[key] = kind
        if kind == "json":
            values[key] = json.dumps(value, default=str)
        else:  # repr keeps every digit of a float (str does too since 3.2, but say it)
            values[key] = repr(value) if kind == "float" else str(value)
    return values, types


_INT_RE = re.compile(r"^[+-]?\d+$")


def decode_param(text: str | None, kind: str | None = None) -> Any:
    """Inverse of ``encode_params`` for one value. Without ``kind`` (runs logged by other tools) the type is
    guessed: ``True``/``False``, ``None``, integers, floats, JSON lists/dicts, else the string."""
    if text is None:
        return None
    if kind == "str":
        return text
    if kind == "none" or (kind is None and text == "None"):
        return None
    if kind == "bool" or (kind is None and text in ("True", "False", "true", "false")):
        return text.lower() == "true"
    if kind == "int" or (kind is None and _INT_RE.match(text)):
        return int(text)
    if kind == "float":
        return float(text)
    if kind == "json" or (kind is None and text[:1] in "[{"):
        try:
            return json.loads(text)
        except ValueError:
            return text
    if kind is None:
        try:
            return float(text)
        except ValueError:
            return text
    return text


# Short names for knobs in run names; the letters follow the papers (G = Shuffle Attention groups, r = reduction).
_KNOB_ABBREV = {
    "groups": "G", "reduction": "r", "kernel_size": "k", "dilation": "d", "gamma": "g", "beta": "b",
    "e_lambda": "l", "penalty": "p", "combine": "", "fusion": "",
    "spatial": "sp", "no_spatial": "nosp", "detach_weights": "det",
}
_POSITION_ABBREV = {"residual_end": "resend", "post_add": "postadd", "stage_end": "stend"}


def param_types(run: Any) -> dict[str, str]:
    """``{param: type}`` that a run's ``attnsearch.param_types`` tag records (empty for runs of other tools)."""
    return json.loads(run.data.tags.get(TAG_PARAM_TYPES) or "{}")


def run_params(run: Any) -> dict[str, Any]:
    """A run's params (an MLflow ``Run``), each decoded with the type ``param_types`` records (guessed for a param
    it does not name)."""
    types = param_types(run)
    return {key: decode_param(text, types.get(key)) for key, text in run.data.params.items()}


def _fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if value is None:
        return "auto"
    if isinstance(value, (list, tuple)):
        return "".join(map(str, value))
    return str(value).replace(" ", "")


def run_name(config: Mapping[str, Any]) -> str:
    """Readable run name for a trial config: ``sa-G16-s234-resend``, ``se-r8-s3-default``, ``none``.

    ``<type>-<knobs>-s<stages>[-<blocks>]-<position>[-w<width>][-px<size>]``; blocks only when not "all"; width
    multiplier and image size only when the space searches them; training knobs are params.
    """
    kind = config.get("attention")
    if kind is None:
        return "trial"
    kind = str(kind)
    scale = [f"{prefix}{_fmt_value(config[key])}" for key, prefix in (("backbone.width_mult", "w"),
                                                                      ("data.image_size", "px")) if key in config]
    if kind == "none":
        return "-".join(["none", *scale])
    parts = [kind]
    for key, value in config.items():
        if not key.startswith(kind + "."):
            continue
        knob = key[len(kind) + 1:]
        abbrev = _KNOB_ABBREV.get(knob, knob)
        if isinstance(value, bool):
            parts.append(abbrev if value else "no" + abbrev)
        else:
            parts.append(f"{abbrev}{_fmt_value(value)}")
    stages = config.get("stages")
    if stages is not None:
        text = str(stages) if not isinstance(stages, (list, tuple)) else ",".join(map(str, stages))
        items = [s.strip() for s in text.split(",") if s.strip()]
        parts.append("s" + ("".join(items) if all(len(s) == 1 for s in items) else "_".join(items)))
    blocks = config.get("blocks")
    if blocks not in (None, "all"):
        parts.append(str(blocks))
    position = config.get("position")
    if position is not None:
        parts.append(_POSITION_ABBREV.get(str(position), str(position)))
    return "-".join([*parts, *scale])
