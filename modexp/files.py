"""Reading a file that may be anything: a run folder's files come from wherever the folder came from.

A leaf module (the standard library only), so that every reader, plug-in notes included, can use it without
importing the run folder's machinery.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO


class NotRegular(OSError):
    """A file a reader expected is a FIFO, a device, a socket or a folder: never opened for reading."""


def open_regular(path: Path) -> BinaryIO:
    """Open a (run folder's) file for reading only if it is a regular file: a FIFO planted there would block
    the reader, a device would never end. NotRegular (an OSError) otherwise; symbolic links are followed."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise NotRegular(errno.EINVAL, "not a regular file", str(path))
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # O_NONBLOCK: a FIFO swapped in meanwhile does not block
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegular(errno.EINVAL, "not a regular file", str(path))
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_text(path: Path) -> str:
    """A regular file's text (UTF-8): OSError (NotRegular for a FIFO or device), or UnicodeDecodeError."""
    with open_regular(path) as f:
        return f.read().decode("utf-8")
