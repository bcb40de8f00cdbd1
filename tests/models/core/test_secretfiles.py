"""Secret files are private from their first byte; symlinks and readable files are refused."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from slimflow.models.core import secretfiles
from slimflow.models.core.secretfiles import SecretFileError, ensure_secret, read_secret, write_secret


@pytest.fixture
def open_umask():
    old = os.umask(0)  # the worst case: files would be created 0666 unless the mode is given
    yield
    os.umask(old)


def _no_chmod(monkeypatch):
    """Fail the test if anything chmods: the mode must come from creation, not be fixed after."""

    def boom(*a, **k):
        raise AssertionError("chmod called: a secret file must be created 0600, not fixed afterwards")

    monkeypatch.setattr(os, "chmod", boom)
    monkeypatch.setattr(os, "fchmod", boom)
    monkeypatch.setattr(Path, "chmod", boom)


def test_secrets_are_created_0600_without_a_chmod(tmp_path, open_umask, monkeypatch):
    _no_chmod(monkeypatch)
    a = ensure_secret(tmp_path / "d" / "auth", prefix="slimflow:")
    assert a.startswith("slimflow:") and len(a) > 30
    assert (tmp_path / "d" / "auth").stat().st_mode & 0o777 == 0o600
    assert ensure_secret(tmp_path / "d" / "auth") == a  # generated once, then read
    write_secret(tmp_path / "pw", "s3cret\n")
    assert (tmp_path / "pw").stat().st_mode & 0o777 == 0o600
    write_secret(tmp_path / "pw", "other\n")  # replaced atomically, still private
    assert read_secret(tmp_path / "pw") == "other"
    assert (tmp_path / "pw").stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_a_secret_file_others_can_read_or_a_symlink_is_refused(tmp_path):
    loose = tmp_path / "loose"
    loose.write_text("x\n")
    loose.chmod(0o644)
    with pytest.raises(SecretFileError, match=r"others can read or write it \(mode 0o644\)"):
        read_secret(loose)
    with pytest.raises(SecretFileError, match="others can read"):
        ensure_secret(loose)
    target = tmp_path / "target"
    target.write_text("planted\n")
    target.chmod(0o600)
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(SecretFileError, match="not a regular file"):
        ensure_secret(link)
    assert target.read_text() == "planted\n"  # a planted link is never followed or overwritten


def test_concurrent_first_use_agrees_on_one_secret(tmp_path):
    path = tmp_path / "auth"
    got: list[str] = []
    threads = [threading.Thread(target=lambda: got.append(ensure_secret(path))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 8 and len(set(got)) == 1


def test_an_empty_secret_file_is_an_error_not_an_empty_password(tmp_path, monkeypatch):
    monkeypatch.setattr(secretfiles.time, "sleep", lambda s: None)
    empty = tmp_path / "empty"
    fd = os.open(empty, os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)
    with pytest.raises(SecretFileError, match="is empty"):
        ensure_secret(empty)
