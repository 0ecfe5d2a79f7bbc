"""Diff-HRNet teaching kit."""
