"""Where a corpus's text comes from: listing its source files and shards, the split by file, and which files
are text."""

from __future__ import annotations

import codecs
import hashlib
import os
import sysconfig
from pathlib import Path

from modexp.errors import ModexpError

from .config import DataConfig, _where

DOC_SEP = b"\x00"  # byte-level <|endoftext|>: never inside accepted text, so file boundaries stay visible
DECODE_CHUNK_BYTES = 1 << 24


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _list_text(cfg: DataConfig) -> tuple[Path, list[tuple[str, Path]]]:
    """The source files as (POSIX relative path, path), sorted by relative path."""
    if cfg.name == "stdlib":
        root = Path(sysconfig.get_paths()["stdlib"]).resolve()
        skip_dirs, suffix = {"site-packages", "__pycache__"}, ".py"
    else:
        root = Path(cfg.path).expanduser().resolve()
        if not root.exists():
            raise ModexpError(
                f"data.path={cfg.path} does not exist: give a UTF-8 text file or a directory of them"
            )
        _refuse_inside_modexp_output(cfg, root)
        if root.is_file():
            return root, [(root.name, root)]
        skip_dirs, suffix = set(), ""
    cache_dir = Path(cfg.cache_dir).expanduser().resolve()
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        # Prune in place: os.walk then never descends there. The cache and every folder modexp writes (runs,
        # studies) would otherwise feed the corpus its own output, which changes as runs train.
        dirnames[:] = [
            d
            for d in dirnames
            if d not in skip_dirs
            and not d.startswith(".")
            and here / d != cache_dir
            and not (cfg.name == "text" and written_by_modexp(here / d))
        ]
        for name in filenames:
            if name.endswith(suffix) and not name.startswith("."):
                path = here / name
                files.append((path.relative_to(root).as_posix(), path))
    files.sort()
    return root, files


def _is_run_dir(folder: Path) -> bool:
    return (folder / "run.json").is_file() and (folder / "config.yaml").is_file()


def written_by_modexp(folder: Path) -> bool:
    """A folder modexp writes: a run's, a study's (plan.json, or run folders in it: runs_dir's sweeps), a
    prepared corpus in a cache (meta.json beside train.bin and val.bin), or an analysis's output."""
    if _is_run_dir(folder) or (folder / "plan.json").is_file():
        return True
    if all((folder / name).is_file() for name in ("meta.json", "train.bin", "val.bin")):
        return True
    if all((folder / name).is_file() for name in ("fits.csv", "verdict.csv", "summary.txt")):
        return True
    try:
        return any(_is_run_dir(child) for child in folder.iterdir() if child.is_dir())
    except OSError:
        return False


def _refuse_inside_modexp_output(cfg: DataConfig, root: Path) -> None:
    """A text corpus inside a run or study folder would train on modexp's own files: refused in one line."""
    for folder in (root, *root.parents):
        if _is_run_dir(folder) or (folder / "plan.json").is_file():
            raise ModexpError(
                f"data.path={cfg.path} lies inside {folder}, a folder modexp writes (runs, studies): give a "
                "corpus folder outside runs_dir"
            )


def _list_shards(cfg: DataConfig) -> tuple[Path, list[tuple[str, Path]]]:
    """The shards as (file name, path), sorted by name."""
    root = Path(cfg.path).expanduser().resolve()
    if not root.exists():
        raise ModexpError(
            f"data.path={cfg.path} does not exist: give a directory of pre-tokenised *.bin shards"
        )
    shards = [root] if root.is_file() else sorted(p for p in root.glob("*.bin") if p.is_file())
    if not shards:
        raise ModexpError(
            f"data.path={cfg.path} has no *.bin shards: give a directory of pre-tokenised *.bin shards "
            "(raw uint16/uint32 or llm.c format)"
        )
    return root, [(p.name, p) for p in shards]


def _is_val_file(rel: str, val_fraction: float) -> bool:
    # A stable hash (not Python's salted hash()) so the split is the same in every process.
    return int.from_bytes(hashlib.sha1(rel.encode()).digest()[:8], "big") < val_fraction * 2**64


def _split_by_file(rels: list[str], val_fraction: float) -> set[str]:
    """The val members of rels (>= 2 of them): about val_fraction of them, never none or all."""
    val = {r for r in rels if _is_val_file(r, val_fraction)}
    if not val or len(val) == len(rels):
        # Few files: the hash may pick none (or all); fall back, still deterministically, on hash order.
        by_hash = sorted(rels, key=lambda r: hashlib.sha1(r.encode()).digest())
        val = {by_hash[0]} if not val else set(by_hash[:-1])
    return val


def _is_text(data: bytes) -> bool:
    """UTF-8 without NUL bytes; decoded in pieces so a large file never becomes one huge str."""
    if b"\x00" in data:  # binary (and NUL is DOC_SEP, which must stay unambiguous)
        return False
    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(data)
    try:
        for i in range(0, len(view), DECODE_CHUNK_BYTES):
            decoder.decode(view[i : i + DECODE_CHUNK_BYTES])
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _accepted_texts(
    cfg: DataConfig, root: Path, files: list[tuple[str, Path]]
) -> tuple[list[tuple[str, bytes]], list[str]]:
    """The non-empty UTF-8 files as (relative path, bytes), and the skipped ones; refuses a corpus of no text."""
    # Byte-level corpora are small (tens of MB), so the accepted files are held in memory at once.
    texts, skipped = [], []
    for rel, path in files:
        data = path.read_bytes()
        if _is_text(data):
            if data:
                texts.append((rel, data))
        else:
            skipped.append(rel)
    if cfg.name == "text" and root.is_file() and skipped:
        raise ModexpError(
            f"data.path={cfg.path} is not UTF-8 text: give a UTF-8 text file or a directory of them"
        )
    if not texts:
        raise ModexpError(
            f"{_where(cfg)} holds no UTF-8 text ({len(files)} file(s), {len(skipped)} skipped as binary "
            "or not UTF-8): give a UTF-8 text file or a directory of them"
        )
    return texts, skipped


def _train_part(n: int, val_fraction: float) -> int:
    """Tokens before the tail split's cut: the last val_fraction of n is val."""
    return n - int(n * val_fraction)
