"""The prepared-corpus cache: each corpus built once into its own folder (under a lock, by an atomic rename, with
what killed preparers left removed), and opened from there."""

from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import filelock
import numpy as np

from modexp.errors import ModexpError

from .config import BYTE_DTYPE, TOKEN_DTYPES
from .corpus import Corpus
from .shards import _open_in_place

log = logging.getLogger("modexp.data")

# flock refused by the filesystem itself (NFS without lockd, Lustre without -o flock, some FUSE mounts).
LOCKS_REFUSED = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}


def _prepare_once(final: Path, prepare: Callable[[Path], dict[str, Any]]) -> None:
    """Make ``final`` by running prepare(tmp_dir) -> meta.json contents and renaming tmp_dir, at most once.

    The lock only saves duplicate work; correctness comes from the rename, which is atomic and fails if
    another process got there first (then its folder is used). That also makes removing the lock file
    afterwards safe: a process that raced past it merely prepares the same data again.
    """
    lock_path = final.parent / f".{final.name}.lock"
    lock = filelock.FileLock(str(lock_path))
    locked = os.environ.get("MODEXP_LOCKING", "flock") != "none"
    try:
        if locked:
            try:
                lock.acquire(timeout=0)
            except filelock.Timeout:
                log.info("waiting for another process to prepare %s", final)
                lock.acquire()
            except OSError as exc:
                if exc.errno not in LOCKS_REFUSED:
                    raise
                locked = False  # a filesystem without locks: the rename alone keeps this correct
        try:
            if not (final / "meta.json").exists():
                _remove_dead_tmp(final)
                _build(final, prepare)
        finally:
            if locked:
                lock.release()
    finally:
        lock_path.unlink(missing_ok=True)


def _tmp_prefix(final: Path) -> str:
    return f".tmp-{final.name}-"


def _build(final: Path, prepare: Callable[[Path], dict[str, Any]]) -> None:
    started = time.perf_counter()
    log.info("preparing %s", final)
    # Host and pid in the name let a later preparer remove what a killed one left (_remove_dead_tmp).
    # Not tempfile.mkdtemp: its 0700 mode would keep a shared cache from other users.
    tmp = final.parent / f"{_tmp_prefix(final)}{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        meta = prepare(tmp)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.rename(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (final / "meta.json").exists():
            raise
        log.info("%s was prepared by another process first; using that", final)
        return
    if "n_train" in meta:  # `modexp prepare` reports its own summary
        seconds = time.perf_counter() - started
        log.info(
            "prepared %s: %d train + %d val tokens in %.1fs", final, meta["n_train"], meta["n_val"], seconds
        )


def _remove_dead_tmp(final: Path) -> None:
    """Remove temp folders for ``final`` whose preparer (on this host) was killed before its rename."""
    prefix, host = _tmp_prefix(final), socket.gethostname()
    for tmp in final.parent.glob(prefix + "*"):
        parts = tmp.name[len(prefix) :].rsplit("-", 2)
        if len(parts) == 3 and parts[0] == host and parts[1].isdigit() and not _alive(int(parts[1])):
            log.warning("removing %s, left by a process that died while preparing it", tmp)
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _open(folder: Path, fingerprint: str, token_dtype: str = "uint16") -> Corpus:
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if "shards" in meta:  # token shards: read where they lie, the cache holds only their check
            train, val = _open_in_place(meta, token_dtype)
        else:
            dtype = BYTE_DTYPE if meta["dtype"] == "uint8" else TOKEN_DTYPES[meta["dtype"]]
            train = np.memmap(folder / "train.bin", dtype=dtype, mode="r")
            val = np.memmap(folder / "val.bin", dtype=dtype, mode="r")
    except (OSError, ValueError, KeyError) as e:
        raise ModexpError(
            f"the data cache {folder} is damaged ({e}): delete that folder to prepare it again"
        ) from e
    if meta.get("fingerprint") != fingerprint or (len(train), len(val)) != (meta["n_train"], meta["n_val"]):
        raise ModexpError(
            f"the data cache {folder} does not match its meta.json: delete that folder to prepare it again"
        )
    return Corpus(
        train=train,
        val=val,
        vocab_size=int(meta["vocab_size"]),
        fingerprint=fingerprint,
        description=meta,
        path=folder,
    )
