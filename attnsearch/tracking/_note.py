"""The study's parent-run description (``mlflow.note.content``) as named sections, each written by its owner.

The Pareto record writes the ``pareto`` section (the front's table and plot) and the importance record the
``importance`` section (which knobs matter, the plots); each keeps its text in a tag of its own
(``attnsearch.note.<section>``), so that one rewriting its section never loses the other's. The description is
the sections in ``NOTE_SECTIONS`` order, at most ``NOTE_LIMIT`` characters (MLflow keeps 8,000 of a tag).
"""

from __future__ import annotations

from collections.abc import Mapping

from ..contract import TAG_NOTE

__all__ = ["NOTE_LIMIT", "NOTE_SECTIONS", "note_room", "note_section_tag", "note_tags"]

NOTE_SECTIONS = ("pareto", "importance")
NOTE_LIMIT = 7900
_SEPARATOR = "\n---\n\n"


def note_section_tag(section: str) -> str:
    """The tag that holds one section's text, e.g. ``attnsearch.note.importance``."""
    return f"attnsearch.note.{section}"


def _sections(tags: Mapping[str, str]) -> dict[str, str]:
    found = {s: tags[note_section_tag(s)] for s in NOTE_SECTIONS if tags.get(note_section_tag(s))}
    if not found and tags.get(TAG_NOTE):  # a description written before it had sections: the front's
        found["pareto"] = tags[TAG_NOTE]
    return found


def note_room(tags: Mapping[str, str], section: str) -> int:
    """How many characters ``section`` may take, given what the other sections hold now."""
    others = [text for name, text in _sections(tags).items() if name != section]
    return NOTE_LIMIT - sum(len(t) + len(_SEPARATOR) for t in others)


def note_tags(tags: Mapping[str, str], section: str, text: str) -> dict[str, str]:
    """The tags to write so that the description holds ``text`` as ``section`` and the other sections as they
    are (``tags``: the parent run's tags as read)."""
    if section not in NOTE_SECTIONS:
        raise ValueError(f"unknown description section {section!r}; valid: {', '.join(NOTE_SECTIONS)}")
    sections = {**_sections(tags), section: text}
    note = _SEPARATOR.join(sections[s].rstrip("\n") + "\n" for s in NOTE_SECTIONS if sections.get(s))
    return {note_section_tag(section): text, TAG_NOTE: note[:NOTE_LIMIT]}
