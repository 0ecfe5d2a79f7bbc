"""Scoring tiles of any size in windows, georeferenced masks out, and the metrics."""
