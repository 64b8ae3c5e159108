"""Byte-level corpora (stdlib, text): the accepted files written once into the cache as train.bin and val.bin."""

from __future__ import annotations

import hashlib
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .config import DataConfig
from .sources import DOC_SEP, _accepted_texts, _split_by_file, _train_part

log = logging.getLogger("modexp.data")


class _Sink:
    """A binary output file that counts its items and hashes its bytes as they are written."""

    def __init__(self, path: Path, itemsize: int) -> None:
        self.file = open(path, "wb")  # closed by the caller's with-block
        self.itemsize = itemsize
        self.n = 0
        self.sha1 = hashlib.sha1()

    def write(self, buf: bytes | memoryview | np.ndarray) -> None:
        data = memoryview(buf).cast("B")
        self.file.write(data)
        self.sha1.update(data)
        self.n += len(data) // self.itemsize


def _prepare_text(cfg: DataConfig, root: Path, files: list[tuple[str, Path]], out: Path) -> dict[str, Any]:
    texts, skipped = _accepted_texts(cfg, root, files)
    if skipped:
        level = logging.INFO if cfg.name == "stdlib" else logging.WARNING
        log.log(
            level, "skipped %d binary or non-UTF-8 file(s) under %s, e.g. %s", len(skipped), root, skipped[:3]
        )

    train, val = _Sink(out / "train.bin", 1), _Sink(out / "val.bin", 1)
    with train.file, val.file:
        if len(texts) >= 2:
            val_rels = _split_by_file([rel for rel, _ in texts], cfg.val_fraction)
            for rel, data in texts:
                sink = val if rel in val_rels else train
                sink.write(data)
                sink.write(DOC_SEP)
            split, n_val_files = "by_file_sha1", len(val_rels)
        else:
            data = texts[0][1]
            cut = _train_part(len(data), cfg.val_fraction)
            train.write(memoryview(data)[:cut])
            val.write(memoryview(data)[cut:])
            split, n_val_files = "tail_of_file", 0
    return {
        "source": ("python stdlib " + sys.version.split()[0]) if cfg.name == "stdlib" else "utf-8 text",
        "dtype": "uint8",
        "split": split,
        "n_train": train.n,
        "n_val": val.n,
        "files": {"train": len(texts) - n_val_files, "val": n_val_files, "skipped": len(skipped)},
        "sha1": {"train": train.sha1.hexdigest(), "val": val.sha1.hexdigest()},
    }
