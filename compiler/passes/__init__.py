"""Relax passes, one per file; each docstring says what it expects and what it guarantees."""
