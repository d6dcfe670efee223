"""How a pydantic schema's problems are told: one line per error naming the file and the key path
(``format_validation_error``), the nearest valid name (``did_you_mean``), and ``--set dotted.key=value``
overrides applied to a raw mapping against the schema's keys (``apply_schema_overrides``)."""

from __future__ import annotations

import difflib
import re
import typing
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from ._yaml import parse_yaml, short_repr
from .contract import ConfigError
from .uris import redact_text

__all__ = ["apply_schema_overrides", "did_you_mean", "format_loc", "format_validation_error", "is_mapping_field",
           "model_at", "parse_override", "shown_override"]


def did_you_mean(value: Any, valid: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` when one of ``valid`` is close to ``value``, else ``""``."""
    if not isinstance(value, (str, int, float)) or len(str(value)) > 200:  # a list or a long text: no suggestion
        return ""
    close = difflib.get_close_matches(str(value), [str(v) for v in valid], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def format_loc(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def model_at(model: type[BaseModel], loc: Sequence[Any]) -> type[BaseModel] | None:
    """The pydantic model class reached by following ``loc`` from ``model`` (None when it leaves the models)."""
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        annotation = getattr(field, "annotation", None) if field else None
        # unwrap Optional[Model]
        candidates = [annotation, *typing.get_args(annotation)]
        models = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not models:
            return None
        model = models[0]
    return model


def format_validation_error(exc: ValidationError, source: str, model: type[BaseModel], prefix: str = "") -> str:
    """One message for all errors of ``exc``: one line per error, each naming ``source`` and the key path."""
    lines = []
    for err in exc.errors():
        loc = [p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p in ("function-after",)))]
        path = format_loc(loc)
        kind = err["type"]
        if kind == "extra_forbidden":
            parent = model_at(model, loc[:-1])
            valid = sorted(parent.model_fields) if parent else []
            key = loc[-1]
            level = f" under {format_loc(loc[:-1])!r}" if loc[:-1] else ""
            msg = f"unknown key {short_repr(key)}{did_you_mean(key, valid)}; valid keys{level}: {valid}"
        elif kind == "missing":
            msg = "required key is missing"
        elif kind in ("model_type", "model_attributes_type", "dict_type"):
            msg = f"expected a mapping (got {short_repr(err.get('input'))})"
        elif kind == "value_error":
            msg = str(err["ctx"]["error"]) if "ctx" in err else err["msg"].removeprefix("Value error, ")
            # model validators report at their model's level and name their own key: keep the path short
            if msg.startswith("root: "):
                path, msg = format_loc([*loc, "root"]), msg.removeprefix("root: ")
        elif kind == "literal_error":
            expected = err.get("ctx", {}).get("expected", "")
            valid = re.findall(r"'([^']*)'", expected)
            msg = f"{err['msg']} (got {short_repr(err['input'])}){did_you_mean(err['input'], valid)}"
        else:
            msg = err["msg"]
            if not isinstance(err.get("input"), (dict, list)):
                msg += f" (got {short_repr(err.get('input'))})"
        full = f"{prefix}{path}" if path else prefix.rstrip(".")
        lines.append(f"{source}: {full}: {msg}" if full else f"{source}: {msg}")
    return "\n".join(dict.fromkeys(lines))


# --------------------------------------------------------------------------------------------------- overrides


def shown_override(text: str, limit: int = 120) -> str:
    """How a message quotes one ``--set`` override: credentials redacted (``redact_text``), then cut."""
    text = redact_text(str(text))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=0.05"`` -> ``(["train", "lr"], 0.05)``; the value is parsed as YAML."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {shown_override(text)!r}: expected dotted.key=value, e.g. --set train.lr=0.05")
    return key.split("."), parse_yaml(value, f"--set {key}")


def is_mapping_field(model: type[BaseModel], key: str) -> bool:
    annotation = model.model_fields[key].annotation
    return model_at(model, [key]) is not None or "dict" in str(annotation)


def apply_schema_overrides(raw: dict[str, Any], overrides: Iterable[str], source: str,
                           schema: type[BaseModel]) -> dict[str, Any]:
    """Apply ``--set`` overrides to the raw mapping of ``schema``; a key the schema does not have is an error."""
    for text in overrides:
        keys, value = parse_override(text)
        model: type[BaseModel] | None = schema
        node = raw
        for depth, key in enumerate(keys):
            here = ".".join(keys[: depth + 1])
            if model is not None and key not in model.model_fields:
                valid = sorted(model.model_fields)
                level = f" under {'.'.join(keys[:depth])!r}" if depth else ""
                raise ConfigError(
                    f"{source}: --set {shown_override(text)}: unknown key {here!r}{did_you_mean(key, valid)}; "
                    f"valid keys{level}: {valid}"
                )
            if depth == len(keys) - 1:
                node[key] = value
                break
            if model is not None and not is_mapping_field(model, key):
                raise ConfigError(
                    f"{source}: --set {shown_override(text)}: {here} is a value, not a mapping; use --set {here}=VALUE"
                )
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                raise ConfigError(
                    f"{source}: --set {shown_override(text)}: {here} is {short_repr(child)}, not a mapping; "
                    f"set {here}=... instead"
                )
            node = child
            model = model_at(model, [key]) if model is not None else None
    return raw
