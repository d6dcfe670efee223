"""Reading the user's YAML (job files, search spaces, ``--set`` values) and quoting it back, both bounded.

``parse_yaml`` is ``yaml.SafeLoader`` plus YAML 1.2 floats, duplicate-key errors and a bound on what aliases expand
to (``MAX_EXPANDED_YAML``); ``short_repr`` is how every message quotes a value from those files, never expanding
it first. Errors are ``ConfigError`` naming the source and the line.
"""

from __future__ import annotations

import re
import reprlib
from pathlib import Path
from typing import Any

import yaml

from .contract import ConfigError

__all__ = ["MAX_EXPANDED_YAML", "parse_yaml", "read_yaml", "short_repr"]

# What a document may grow to when its aliases are followed (nodes plus scalar characters; or twice the text's own
# length, for a large file without aliases). YAML aliases are cheap to parse and costly to expand: ten nested
# levels of ten aliases each are 10**10 nodes in 1 KB. Aliases stay allowed (a job may reuse a list of choices),
# so the bound is on what they expand to, checked on the parsed node graph before anything is built.
MAX_EXPANDED_YAML = 100_000


def _expanded_size(root: yaml.Node, limit: int, source: str) -> int:
    """The size of ``root`` with every alias followed (iterative, each distinct node once); a ``ConfigError`` as
    soon as it passes ``limit`` or an alias refers to a node that contains it."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            children = []
        if children_done:
            size = 1 + (len(node.value) if isinstance(node, yaml.ScalarNode) else 0)
            size += sum(sizes[id(c)] for c in children)
            if size > limit:
                line = node.start_mark.line + 1 if node.start_mark is not None else "?"
                raise ConfigError(
                    f"{source}:{line}: YAML aliases expand this document beyond {limit:,} nodes and characters "
                    f"(the node that starts on line {line}); write the values out, or use fewer nested aliases"
                )
            sizes[key] = size
            open_nodes.discard(key)
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            line = node.start_mark.line + 1 if node.start_mark is not None else "?"
            raise ConfigError(f"{source}:{line}: a YAML alias refers to a node that contains it (a recursive "
                              "structure has no value a job can hold)")
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(root)]


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` plus YAML 1.2 floats (``1e-4`` is a float, not a string), duplicate-key errors and a
    bound on what aliases expand to (``MAX_EXPANDED_YAML``)."""

    source = "<yaml>"
    limit = MAX_EXPANDED_YAML

    def get_single_node(self):  # type: ignore[override]
        node = super().get_single_node()
        if node is not None:
            _expanded_size(node, self.limit, self.source)
        return node

    def construct_mapping(self, node, deep=False):  # type: ignore[override]
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"found duplicate key {short_repr(key)}",
                    key_node.start_mark,
                )
            seen[key] = True
        return super().construct_mapping(node, deep=deep)


# PyYAML implements YAML 1.1, where a float needs a dot and a signed exponent; people write 1e-4 and mean a float.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML ``text`` safely; a syntax error becomes a ``ConfigError`` naming ``source`` and the line.

    Aliases may expand the document to ``MAX_EXPANDED_YAML`` nodes and characters (or twice the text's length),
    no further; a deeper nesting than Python's recursion allows is refused too.
    """
    loader = _Loader(text)
    loader.source, loader.limit = source, max(MAX_EXPANDED_YAML, 2 * len(text))
    try:
        return loader.get_single_data()
    except RecursionError:
        raise ConfigError(f"{source}: malformed YAML: nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        start = getattr(exc, "context_mark", None)
        if context and start is not None and mark is not None and start.line != mark.line:
            context += f" (started at line {start.line + 1})"
        detail = f"{context}, {problem}" if context else problem
        raise ConfigError(f"{where}: malformed YAML: {detail}") from None
    finally:
        loader.dispose()


def read_yaml(path: str | Path, what: str = "file") -> Any:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such {what}") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc}") from None
    data = parse_yaml(text, str(path))
    if data is None:
        raise ConfigError(f"{path}: the {what} is empty")
    return data


_REPR = reprlib.Repr()  # keyword arguments only from Python 3.12
_REPR.maxlevel, _REPR.maxstring, _REPR.maxlong, _REPR.maxother = 3, 50, 40, 50
_REPR.maxtuple = _REPR.maxlist = _REPR.maxarray = _REPR.maxdict = _REPR.maxset = _REPR.maxfrozenset = 4
_REPR.maxdeque = 4


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, built without expanding ``value`` first (``reprlib``: a few
    items per level, a few levels): how every message quotes a value from the user's files."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
