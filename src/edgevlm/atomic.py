"""Write a folder completely or not at all: build it beside its target, then rename it into place.

The temporary folder is named `.{target}.{pid}.partial`, so a later writer of the same target can
tell the leftovers of a killed process (whose pid is gone) from the work of a live one.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_leftovers(target: Path) -> None:
    """Remove the `.partial`/`.old` siblings of `target` left by writers that died."""
    for path in target.parent.glob(f".{target.name}.*"):
        kind = path.name.rsplit(".", 1)[-1]
        pid = path.name[len(target.name) + 2 : -len(kind) - 1]
        if kind in ("partial", "old") and not (pid.isdigit() and _pid_alive(int(pid))):
            _remove(path)


@contextmanager
def atomic_dir(target: str | Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder that becomes `target` when the block ends without error.

    On error the temporary folder is removed and `target` is untouched. An existing target is an
    error unless `replace` is set (then the old one is swapped out only after the new one is whole).
    The caller decides whether an existing target may be replaced at all.
    """
    target = Path(target).absolute()
    if target.exists() and not replace:
        raise FileExistsError(f"{target} already exists")
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(target)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.partial")
    _remove(tmp)
    tmp.mkdir()
    try:
        yield tmp
        if target.exists() or target.is_symlink():
            old = target.with_name(f".{target.name}.{os.getpid()}.old")
            _remove(old)
            target.rename(old)
            try:
                tmp.rename(target)
            except BaseException:
                old.rename(target)
                raise
            _remove(old)
        else:
            tmp.rename(target)
    except BaseException:
        _remove(tmp)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a file whole or not at all: beside it first, then renamed over it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
