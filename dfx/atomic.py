"""Files written whole or not at all: the new content goes to a temporary file beside the target,
which is then renamed over it (one `os.replace`, atomic on POSIX and Windows).

A killed run therefore never leaves half a manifest, cache or fake under its real name, and a
file shared with another folder by a hard link (`cp -al`) is replaced in this folder only,
never rewritten under the other one.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Callable, Iterator, Union

Content = Union[bytes, str, Callable[[IO[bytes]], object]]

# mkstemp makes its file private (0600); the renamed file gets the permissions open() would have
# given it (0666 less the umask), so a bundle stays readable by the service that runs it. The
# umask can only be read by setting it: once, at import, before any threads write.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path`, with the same suffixes (Keras insists on `.weights.h5`),
    renamed over `path` when the block ends without an exception and removed when it raises."""
    path = Path(path)
    suffix = "".join(path.suffixes)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, 0o666 & ~_UMASK)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike, content: Content) -> None:
    """Write `content` (bytes, text as UTF-8, or a function that writes to a binary handle) to
    `path` whole or not at all."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        if callable(content):
            content(handle)
        else:
            handle.write(content.encode() if isinstance(content, str) else content)
