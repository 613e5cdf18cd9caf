"""Where the embedded tiny checkpoint lives: the cache directory ($OMNI_RUNTIME_CACHE, default
~/.cache/omni_runtime), written on first use so that any number of concurrent first users all
succeed (a private directory renamed into place; a stale copy replaced only under a lock)."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from . import tiny_checkpoint
from .tiny_checkpoint import _STAMP, FORMAT_VERSION, PRESETS

__all__ = ["CACHE_ENV", "default_checkpoint_dir", "is_complete_checkpoint"]

CACHE_ENV = "OMNI_RUNTIME_CACHE"


def _cache_root() -> Path:
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "omni_runtime"


def _cache_error(root: Path, problem: str) -> ValueError:
    """A ValueError that names the cache directory, where it came from and how to change it."""
    env = os.environ.get(CACHE_ENV)
    where = f"{CACHE_ENV}={env}" if env else f"the default cache directory (set {CACHE_ENV} to choose another)"
    return ValueError(f"cannot use the cache directory {root} ({where}): {problem}")


def _os_problem(e: OSError) -> str:
    return f"{e.strerror or type(e).__name__}" + (f": {e.filename}" if e.filename else "")


def _make_cache_root(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise _cache_error(root, "it is a file, not a directory")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # a file in its place (or one of its parents is a file)
        raise _cache_error(root, "it (or a parent) is a file, not a directory") from None
    except NotADirectoryError:
        raise _cache_error(root, "a parent of it is a file, not a directory") from None
    except OSError as e:
        raise _cache_error(root, f"it cannot be created ({_os_problem(e)})") from None


def is_complete_checkpoint(target) -> bool:
    """Whether `target` holds a complete tiny checkpoint of this format (its version marker)."""
    # The version marker is the last file written, and directories only appear here by rename:
    # a matching marker means a complete checkpoint of this format.
    try:
        return (Path(target) / _STAMP).read_text().strip() == str(FORMAT_VERSION)
    except (OSError, UnicodeDecodeError):
        return False


def _move_aside(target: Path) -> Path:
    """Rename a stale `target` (directory or file) to a unique hidden sibling; returns that."""
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
    os.replace(target, aside / "stale")
    return aside


def default_checkpoint_dir(preset: str = "tiny", seed: int = 0, create: bool = True) -> Path:
    """The cached tiny checkpoint directory $OMNI_RUNTIME_CACHE/tiny-<preset>-seed<seed>, written
    on first use. create=False only returns the path (it may not exist yet).

    Safe under concurrent first uses (several processes at once): each writer builds its own copy
    in a private temporary directory and renames it into place (atomic); a writer that finds a
    complete checkpoint there discards its copy, so a complete checkpoint is never moved while
    someone loads it. A stale one (another format version, or no version marker: interrupted by
    an older runtime, or made by hand) is replaced only under an exclusive `fcntl.flock` on
    `.<name>.lock` in the cache directory, re-checked once the lock is held.

    Raises ValueError naming OMNI_RUNTIME_CACHE and the path when the cache directory is a file,
    cannot be created or is not writable."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    root = _cache_root()
    target = root / f"tiny-{preset}-seed{seed}"
    if is_complete_checkpoint(target) or not create:
        return target
    _make_cache_root(root)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp.", dir=root))
    except OSError as e:
        raise _cache_error(root, f"it is not writable ({_os_problem(e)})") from None
    try:
        try:
            tiny_checkpoint.write_tiny_checkpoint(tmp, seed=seed, preset=preset)
        except OSError as e:  # e.g. a full disk
            raise _cache_error(root, f"writing the tiny checkpoint failed ({_os_problem(e)})") from None
        _install(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # our copy when another writer's won (else gone)
    return target


def _install(tmp: Path, target: Path) -> None:
    """Rename the finished copy `tmp` to `target` unless a complete checkpoint is already there."""
    try:
        os.rename(tmp, target)  # fails when target is a non-empty directory or a file
        return
    except OSError:
        pass
    if is_complete_checkpoint(target):
        return  # another writer won: theirs stays, ours is discarded
    import fcntl  # POSIX only, and only needed here

    lock_path = target.parent / f".{target.name}.lock"
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise _cache_error(target.parent, f"cannot create the lock file ({_os_problem(e)})") from None
    aside = None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if is_complete_checkpoint(target):  # replaced while we waited for the lock
            return
        if target.exists() or target.is_symlink():
            aside = _move_aside(target)
        try:
            os.rename(tmp, target)
        except OSError:
            # A lock-free writer's rename (first branch above) can land between our move and
            # ours; its copy is complete, so it stays.
            if not is_complete_checkpoint(target):
                raise
    except OSError as e:
        raise _cache_error(target.parent, f"cannot install the tiny checkpoint at {target} ({_os_problem(e)})") from None
    finally:
        os.close(fd)  # releases the lock
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
