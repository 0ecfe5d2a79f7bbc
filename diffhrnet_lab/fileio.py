"""Crash-safe file writing, safetensors I/O and the one markdown-table writer.

A run killed part-way (pre-emption, Ctrl-C, a full disk) must never leave a half-written
checkpoint, tile or report behind.  Everything the kit writes goes to a temporary file in the
destination folder and is renamed over the target only once complete: ``os.replace`` is atomic
on POSIX and Windows when source and target share a file system.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch


def _readable(path: Path) -> None:
    """Give a finished output the permissions of any new file (0666 less the umask, 0644 usually).

    ``mkstemp`` creates 0600 and safetensors writes its files 0600: checkpoints, bundles and
    feature caches would then be unreadable to the colleagues a run folder is shared with."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    On any exception the temporary file is removed and ``target`` is left untouched.
    ``suffix`` defaults to the target's own so that libraries that pick a format from the
    extension (GDAL, matplotlib) still do.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=(target.suffix if suffix is None else suffix) + ".tmp",
        dir=target.parent,
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _readable(tmp_path)
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    # GDAL may leave an .aux.xml beside the temporary name.
    Path(str(tmp_path) + ".aux.xml").unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden temporary folder beside ``target``; on success, fsync it and move it onto ``target``.

    Checkpoints and bundles are folders: readers must see the old one or the whole new one, never
    a half-written mix.  An existing ``target`` is moved aside first and removed after the rename.
    """
    target = Path(target)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                _readable(f)
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_csv(target: str | os.PathLike, rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> None:
    """Rows as CSV with a header; a column a row lacks is left empty."""
    with atomic_path(target) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, list(columns), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in columns})


def atomic_write_json(target: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(target, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def check_writable(folder: str | os.PathLike, need_bytes: int = 0, what: str = "outputs") -> Path:
    """Fail early, with the folder's name, if outputs cannot be written there, or if the disk has
    less than ``need_bytes`` free: better a clear error before training than a crash at the first
    checkpoint an hour in."""
    from .errors import DataError

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise DataError(f"{folder}: output folder is not writable ({exc.strerror or exc})") from None
    free = shutil.disk_usage(folder).free
    if free < need_bytes:
        raise DataError(f"{folder}: only {free / 2**20:.0f} MiB free on its disk, but {what} need about "
                        f"{need_bytes / 2**20:.0f} MiB; free some space or choose another --out")
    return folder


def checkpoint_bytes(*modules, copies: int = 4) -> int:
    """Room for two checkpoints (the new one is written beside the old) of ``copies`` float32 tensors
    per trainable parameter (weights, Adam's two moments, EMA)."""
    n = sum(p.numel() for m in modules for p in m.parameters() if p.requires_grad)
    return 2 * copies * 4 * n


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor]) -> None:
    """Tensors as safetensors (never a pickle: loading one cannot run code)."""
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))


def atomic_save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor]) -> None:
    with atomic_path(path) as tmp:
        save_tensors(tmp, tensors)


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A safetensors file; an unreadable one is a :class:`DataError` naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .errors import DataError

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise DataError(f"{path}: cannot read safetensors file ({str(exc)[:120]})") from None


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub markdown table; cells are written with ``str``."""
    lines = ["| " + " | ".join(map(str, columns)) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)
