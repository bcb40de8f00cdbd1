"""Files that hold secrets: created 0600 from the first byte, never written first and chmod-ed after.

``open()`` followed by ``chmod`` leaves a window in which the file has the umask's mode (often
0644) and another user can open it; a file descriptor opened then stays readable after the chmod.
Here the file is created by ``os.open(..., O_CREAT | O_EXCL, 0o600)`` (the umask can only narrow
that), never follows a symlink planted at its path, and an existing file that others can read is
refused rather than trusted.
"""

from __future__ import annotations

import os
import secrets
import stat
import time
from pathlib import Path

from slimflow.models.core.errors import SlimflowError

PRIVATE = 0o600


class SecretFileError(SlimflowError):
    """A secret file is readable by others, is not a regular file, or cannot be written."""


def _check_private(path: Path) -> None:
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise SecretFileError(f"{path} should hold a secret but is not a regular file (a symlink?)")
    if st.st_mode & 0o077:
        raise SecretFileError(
            f"{path} holds a secret but others can read or write it (mode {oct(st.st_mode & 0o777)}):"
            f" run `chmod 600 {path}` if nobody else could have read it, or delete it to get a new one"
        )


def write_secret(path: Path, text: str, *, uid: int | None = None, gid: int | None = None) -> Path:
    """Write ``text`` to ``path`` (replaced atomically if it exists), mode 0600 from creation on.

    ``uid``/``gid`` hand the file to another user (e.g. PostgreSQL's) before any byte is written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, PRIVATE)
    try:
        if uid is not None:
            os.fchown(fd, uid, -1 if gid is None else gid)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            fd = -1
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_secret(path: Path) -> str:
    """The secret in ``path`` (stripped), refusing a file others can read."""
    path = Path(path)
    _check_private(path)
    return path.read_text(encoding="utf-8").strip()


def ensure_secret(path: Path, nbytes: int = 24, prefix: str = "") -> str:
    """The secret stored in ``path``; generated (``prefix`` + a random token) on first use."""
    path = Path(path)
    if not os.path.lexists(path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, PRIVATE)
        except FileExistsError:
            pass  # created by a concurrent call: read theirs
        else:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(prefix + secrets.token_urlsafe(nbytes) + "\n")
    for _ in range(100):  # a concurrent creator may not have written it yet
        value = read_secret(path)
        if value:
            return value
        time.sleep(0.02)
    raise SecretFileError(f"{path} should hold a secret but is empty: delete it to get a new one")
