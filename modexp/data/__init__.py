"""Corpora as token memmaps, and the batches a training loop draws from them.

Three sources (``data.name``):

- ``stdlib``: the running interpreter's own standard library ``.py`` files, as bytes (vocab 256).
  Nothing to download, tens of MB, identical on every machine with the same Python.
- ``text``: a UTF-8 text file or a directory of them (recursively), as bytes. Hidden files and
  folders (``.git``, ...) and the cache folder itself are not read.
- ``tokens``: pre-tokenised ``*.bin`` shards in a directory (or one such file): nanoGPT style (raw
  little-endian uint16 or uint32) or llm.c style (a 256 x int32 header starting with magic 20240520;
  its version decides the dtype, 1 = uint16 and 2 = uint32, whatever ``data.token_dtype`` says).

Byte-level corpora (stdlib, text) skip files that are not UTF-8 or hold a NUL byte (taken for binary;
logged). Several files are joined with a NUL byte after each: the byte-level end-of-text, unambiguous
since no accepted file contains one. Their ``vocab_size`` may exceed 256 (padding) but not be less.

Splits. A directory of >= 2 text files is split BY FILE: sha1(relative path) puts about
``val_fraction`` of the files in val, independently per file, so adding a file never moves another
across the split. One text file is split by position: its last ``val_fraction`` of bytes is val.
Shards whose name contains ``val`` are the validation split; without any, the last ``val_fraction``
of all tokens is.

Every corpus is prepared once into ``<cache_dir>/<name>-<fingerprint[:16]>/{train.bin,val.bin,meta.json}``.
The fingerprint is a sha1 over the source location, every source file's (relative path, size,
mtime_ns), the split and vocab settings and a format version: a stat per file, so a later load
never re-reads the sources, yet an edited, added or removed file gives a new folder.
Preparation writes into a temporary folder beside the final one and renames it into place, under a
file lock so that concurrent jobs wait for one preparer instead of all doing the work.
"""

from .cache import LOCKS_REFUSED, _prepare_once
from .config import BYTE_DTYPE, NAMES, TOKEN_DTYPES, DataConfig, check_data
from .corpus import Corpus, Tokens, TokenView
from .load import is_prepared, load_corpus, train_split_tokens
from .shards import (
    LLMC_HEADER_BYTES,
    LLMC_MAGIC,
    LLMC_VERSIONS,
    PREPARED_FORMAT,
    PREPARED_META,
    prepared_meta,
)
from .sources import DOC_SEP, _is_text, _is_val_file, _list_text, _split_by_file
from .text import _prepare_text

__all__ = [
    "BYTE_DTYPE",
    "DOC_SEP",
    "LLMC_HEADER_BYTES",
    "LLMC_MAGIC",
    "LLMC_VERSIONS",
    "LOCKS_REFUSED",
    "NAMES",
    "PREPARED_FORMAT",
    "PREPARED_META",
    "TOKEN_DTYPES",
    "Corpus",
    "DataConfig",
    "TokenView",
    "Tokens",
    "_is_text",
    "_is_val_file",
    "_list_text",
    "_prepare_once",
    "_prepare_text",
    "_split_by_file",
    "check_data",
    "is_prepared",
    "load_corpus",
    "prepared_meta",
    "train_split_tokens",
]
