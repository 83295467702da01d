"""Jinja2 templates, one per kernel primitive per target (``c/``, ``cuda/``)."""
