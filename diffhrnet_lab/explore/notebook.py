"""Helpers for the notebooks' first cells: parameter checking and profile selection.

Papermill injects overrides as a cell starting ``# Parameters`` right after the cell tagged
``parameters``; an unknown name there is only a warning to papermill, and a typo would silently run
the default experiment.  :func:`check_parameters` reads both cells back from the kernel's input
history, so a notebook given an unknown or mistyped parameter stops with a message that lists the
valid ones.  The notebooks' declared cell starts with :data:`DECLARED_MARKER`.
"""

from __future__ import annotations

import ast
from typing import Any

from ..config import ProfileConfig, check_profile, default_profile, profile_config
from ..errors import ConfigError

DECLARED_MARKER = "# Parameters you can change"
INJECTED_MARKER = "# Parameters\n"


def _assignments(source: str) -> dict[str, Any]:
    out = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    try:
                        out[target.id] = ast.literal_eval(node.value)
                    except ValueError:
                        out[target.id] = None
    return out


def check_parameters(namespace: dict[str, Any]) -> ProfileConfig:
    """Validate papermill's injected parameters against the declared ones; return the profile's config.

    The profile is the ``profile`` parameter when set, else ``$DHL_PROFILE``, else ``quick``.
    """
    history = namespace.get("In") or []
    declared_src = next((s for s in reversed(history) if s.lstrip().startswith(DECLARED_MARKER)), None)
    if declared_src is not None:
        declared = _assignments(declared_src)
        injected_src = [s for s in history if s.startswith(INJECTED_MARKER)]
        for src in injected_src:
            for name, value in _assignments(src).items():
                if name not in declared:
                    raise ConfigError(f"unknown notebook parameter '{name}'; this notebook's parameters are: "
                                      f"{', '.join(sorted(declared))}")
                default = declared[name]
                if default is not None and value is not None and not _compatible(default, value):
                    raise ConfigError(f"parameter '{name}' = {value!r} should be a {type(default).__name__} "
                                      f"like its default {default!r}")
    profile = namespace.get("profile") or default_profile()
    check_profile(profile)
    return profile_config(profile)


def _compatible(default: Any, value: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) == isinstance(value, bool)
    if isinstance(default, (int, float)) and isinstance(value, (int, float)):
        return True
    if isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
        return True
    return type(default) is type(value)
