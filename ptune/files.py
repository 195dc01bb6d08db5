"""Files that survive a kill: atomic writes and safetensors-only tensors (the lowest layer that writes).

Every write goes to a temporary file in the same folder, is flushed and fsync'ed, then renamed over the target
(``os.replace`` is atomic on POSIX), so a reader sees the old file or the new one, never half of one. The file
gets the mode an ordinary ``open()`` would give it (0666 less the umask), not ``mkstemp``'s private 0600, so a
teammate on a shared cluster can read results, predictions and sweep folders. A write that fails (a full disk)
removes its temporary file and raises :class:`ptune.errors.CheckpointError` in one line naming the file.
Weights are read with safetensors only (no pickle, no ``torch.load``).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError

from ptune.errors import CheckpointError

if TYPE_CHECKING:  # torch loads where tensors are written or read, not where a command only reads JSON (table)
    from torch import Tensor

_UMASK_LOCK = threading.Lock()


def umask() -> int:
    """The process umask (it can only be read by setting it, so it is set back at once, under a lock)."""
    with _UMASK_LOCK:
        mask = os.umask(0)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """0666 less the umask: what ``open(path, "w")`` would create."""
    return 0o666 & ~umask()


def dir_mode() -> int:
    """0777 less the umask: what ``mkdir`` would create (``mkdtemp`` makes 0700)."""
    return 0o777 & ~umask()


def _temp_beside(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, file_mode())
    return tmp


def _failed(path: Path, tmp: str, err: BaseException) -> None:
    Path(tmp).unlink(missing_ok=True)
    if isinstance(err, OSError):  # a full disk, a read-only folder: one line, nothing half-written left
        raise CheckpointError(f"could not write {path}: {err.strerror or err}") from None


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """A temp file beside ``path``, flushed to disk, then renamed over it: never a half-written file."""
    path = Path(path)
    tmp = _temp_beside(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        _failed(path, tmp, err)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> dict | None:
    """The JSON object in ``path``; None when it is missing, unreadable, damaged or not an object (for files that a
    run may still be writing, or that a reader can do without)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def atomic_save_tensors(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    path = Path(path)
    tmp = _temp_beside(path)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.chmod(tmp, file_mode())  # safetensors writes a new file of its own (0600)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        _failed(path, tmp, err)
        raise


def read_tensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and header metadata; a missing, truncated or corrupted file is a CheckpointError."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        return load_file(str(path)), metadata
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"checkpoint {path} is corrupted or truncated ({str(err).splitlines()[0]})") from None
