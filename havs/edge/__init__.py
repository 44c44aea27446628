"""Edges: one OS facility per module, idempotent, no policy."""
