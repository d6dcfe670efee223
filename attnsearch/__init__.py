"""attnsearch: search which attention module, where, and with which knobs, for the FLOPs you can afford."""

__version__ = "0.1.0"
