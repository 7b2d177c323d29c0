"""Storage through fsspec: local paths, file:// and s3:// behave alike.

Nothing half-written is ever visible under a final name: local files are
written to a hidden temporary name and renamed; an S3 PUT only appears once
complete. Errors are sorted into "the input is wrong" (`InputMissing`,
`AccessDenied`: retrying cannot help) and everything else (may be transient).
"""

from __future__ import annotations

import os
import posixpath
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import fsspec
from fsspec.core import url_to_fs

from stylecore.errors import StyleError


TEMPORARY_SUFFIX = ".tmp"  # a write in progress: `.<name>.<random>.tmp` beside its final name


class InputMissing(StyleError):
    """A file or object that should exist does not."""


class AccessDenied(StyleError):
    """The credentials in use may not read or write this location."""


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def _local(uri: str) -> str:
    return uri.removeprefix("file://")


def resolve(base: str, path: str) -> str:
    """`path` relative to the folder `base` (a local dir or a URI prefix); absolute paths and URIs pass through."""
    path = str(path)
    if "://" in path or os.path.isabs(path) or path.startswith("~"):
        return os.path.expanduser(path) if path.startswith("~") else path
    if is_remote(base):
        scheme, rest = base.split("://", 1)
        return f"{scheme}://{posixpath.normpath(posixpath.join(rest, path))}"
    return os.path.normpath(os.path.join(_local(base), path))


def absolute(uri: str) -> str:
    return uri if is_remote(uri) else os.path.abspath(os.path.expanduser(_local(uri)))


def parent(uri: str) -> str:
    if is_remote(uri):
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://{posixpath.dirname(rest.rstrip('/'))}"
    return os.path.dirname(os.path.abspath(_local(uri)))


def join(base: str, *parts: str) -> str:
    if is_remote(base):
        return "/".join([base.rstrip("/"), *parts])
    return os.path.join(_local(base), *parts)


def _translate(uri: str, exc: Exception) -> Exception:
    if isinstance(exc, FileNotFoundError):
        return InputMissing(f"{uri}: not found")
    if isinstance(exc, PermissionError):
        return AccessDenied(f"{uri}: access denied")
    if isinstance(exc, IsADirectoryError):
        return InputMissing(f"{uri}: is a folder, not a file")
    return exc


@contextmanager
def _named_errors(uri: str) -> Iterator[None]:
    """Missing, forbidden and folder-instead-of-file become one-line input errors naming `uri`."""
    try:
        yield
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        raise _translate(uri, exc) from None


def read_bytes(uri: str) -> bytes:
    with _named_errors(uri):
        fs, path = url_to_fs(uri)
        return fs.cat_file(path)


def read_head(uri: str, length: int = 1 << 16) -> bytes:
    """The first `length` bytes (one ranged GET on S3): enough for an image header."""
    with _named_errors(uri):
        fs, path = url_to_fs(uri)
        return fs.cat_file(path, start=0, end=length)


def info(uri: str) -> dict:
    with _named_errors(uri):
        fs, path = url_to_fs(uri)
        return fs.info(path)


def exists(uri: str) -> bool:
    """Whether `uri` exists; a location the credentials may not read raises `AccessDenied` rather than
    passing for missing, so the operator is told which of the two it is."""
    try:
        info(uri)
    except InputMissing:
        return False
    return True


def write_bytes(uri: str, data: bytes) -> None:
    """Write so that `uri` holds either its old content or all of `data`, never a part."""
    with _named_errors(uri):
        if is_remote(uri):
            fs, path = url_to_fs(uri)
            fs.pipe_file(path, data)
            return
        target = Path(_local(uri))
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}{TEMPORARY_SUFFIX}")
        try:
            with open(temporary, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)



def remove_temporaries(folder: str) -> int:
    """Delete what a killed writer left in `folder` (hidden `.name.<id>.tmp` files); S3 leaves none."""
    if is_remote(folder):
        return 0
    removed = 0
    for leftover in Path(_local(folder)).glob(f".*{TEMPORARY_SUFFIX}"):
        leftover.unlink(missing_ok=True)
        removed += 1
    return removed


def glob(pattern: str) -> list[str]:
    """Matches of a glob, as URIs in the pattern's own form, sorted."""
    fs, path = url_to_fs(pattern)
    with _named_errors(pattern):
        matches = sorted(fs.glob(path))
    if is_remote(pattern):
        scheme = pattern.split("://", 1)[0]
        return [f"{scheme}://{m}" for m in matches if not fs.isdir(m)]
    return [m for m in matches if os.path.isfile(m)]


def has_magic(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def filesystem(uri: str) -> fsspec.AbstractFileSystem:
    return url_to_fs(uri)[0]
