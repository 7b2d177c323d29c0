"""Storage through fsspec: local paths, file:// and s3:// behave alike.

Nothing half-written is ever visible under a final name: local files are
written to a hidden temporary name and renamed; an S3 PUT only appears once
complete. Errors are sorted into "the input is wrong" (`InputMissing`,
`AccessDenied`, `TooLarge`, `NotRegularFile`, `UnsupportedStorage`,
`CredentialsInURI`, `StorageFull`: retrying cannot help) and everything else
(may be transient).

Only the storage the README promises is reachable: local paths, `file://` and
`s3://`, plus any scheme an operator names in STYLIZE_EXTRA_SCHEMES (e.g.
`gs,az`). Every read is bounded while it reads, and a local read refuses
anything but a regular file (a device or FIFO would never end, or never start).
"""

from __future__ import annotations

import errno
import os
import posixpath
import re
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import fsspec
from fsspec.core import url_to_fs

from stylecore.errors import StyleError


TEMPORARY_SUFFIX = ".tmp"  # a write in progress: `.<name>.<32 hex>.tmp` beside its final name
TEMPORARY_PATTERN = re.compile(r"^\..+\.[0-9a-f]{32}\.tmp$")  # exactly what write_bytes creates

MIB = 1 << 20
MAX_IMAGE_BYTES = 256 * MIB  # a content or style image (the pixel limit is checked on decoding)
MAX_REPORT_BYTES = 64 * MIB  # a run's report.json (about 1 KiB a pair)
MAX_JSON_BYTES = 16 * MIB  # a pair's meta.json
MAX_WEIGHTS_BYTES = 2 << 30  # a weights file (VGG19's full state dict is 550 MiB)
MAX_READ_BYTES = MAX_WEIGHTS_BYTES  # any read that names no tighter limit
MAX_GLOB_MATCHES = 10_000  # files one glob may match

BUILTIN_SCHEMES = ("file", "s3")
EXTRA_SCHEMES_VARIABLE = "STYLIZE_EXTRA_SCHEMES"
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*$")


class InputMissing(StyleError):
    """A file or object that should exist does not."""


class AccessDenied(StyleError):
    """The credentials in use may not read or write this location."""


class TooLarge(StyleError):
    """A file over the size limit for its kind (checked while reading, never after)."""

    def __init__(self, message: str, size: int | None = None, limit: int | None = None):
        super().__init__(message)
        self.size, self.limit = size, limit


class NotRegularFile(StyleError):
    """A device, FIFO or socket where a file was expected: reading it would never end (or never start)."""


class UnsupportedStorage(StyleError):
    """A URI scheme this installation does not accept (or whose package is missing)."""


class CredentialsInURI(StyleError):
    """A URI that carries a user name or secret; credentials come from the environment, never from URIs."""


class StorageFull(StyleError):
    """No space (or quota) left where an output is written."""


# --- which URIs are accepted ---------------------------------------------------------------------------


def allowed_schemes() -> tuple[str, ...]:
    extra = os.environ.get(EXTRA_SCHEMES_VARIABLE, "")
    return BUILTIN_SCHEMES + tuple(s.strip().lower() for s in extra.split(",") if s.strip())


def redact(uri: str) -> str:
    """`uri` with any user:secret@ part replaced, so a refusal never echoes the secret."""
    if "://" not in uri:
        return uri
    scheme, rest = uri.split("://", 1)
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rsplit("@", 1)[1]
    return f"{scheme}://{authority}{slash}{path}"


def check_uri(uri: str) -> str:
    """`uri` if it names storage this installation accepts; else `UnsupportedStorage` or
    `CredentialsInURI`, one line that does not repeat a secret."""
    uri = str(uri)
    if "://" not in uri:
        return uri  # a local path: read through the local file system alone, never as an fsspec chain
    scheme, rest = uri.split("://", 1)
    authority = rest.split("/", 1)[0]
    if "@" in authority:
        raise CredentialsInURI(
            f"{redact(uri)}: credentials in a URI are refused (they would be logged and stored); "
            "use the AWS variables or a profile"
        )
    allowed = allowed_schemes()
    if not _SCHEME.match(scheme) or scheme not in allowed or "::" in uri:
        shown = scheme if len(scheme) <= 20 else scheme[:17] + "..."
        raise UnsupportedStorage(
            f"{redact(uri)}: unsupported storage {shown + '://'!r}; accepted: a local path, "
            f"{', '.join(s + '://' for s in allowed)} (more with {EXTRA_SCHEMES_VARIABLE})"
        )
    return uri


def _fs(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The file system and path of an accepted `uri`; a scheme whose package is missing is one line."""
    check_uri(uri)
    if not is_remote(uri):
        return fsspec.filesystem("file"), os.path.expanduser(_local(uri))
    try:
        return url_to_fs(uri)
    except (ImportError, ValueError) as exc:
        scheme = uri.split("://", 1)[0]
        raise UnsupportedStorage(f"{redact(uri)}: {scheme}:// storage is not available here ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None


# --- paths -----------------------------------------------------------------------------------------------


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


# --- errors ------------------------------------------------------------------------------------------------


def _translate(uri: str, exc: Exception) -> Exception:
    if isinstance(exc, FileNotFoundError):
        return InputMissing(f"{uri}: not found")
    if isinstance(exc, PermissionError):
        return AccessDenied(f"{uri}: access denied")
    if isinstance(exc, IsADirectoryError):
        return InputMissing(f"{uri}: is a folder, not a file")
    if isinstance(exc, (NotADirectoryError, FileExistsError)):
        return InputMissing(f"{uri}: a part of the path is a file, not a folder")
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(f"{uri}: no space left on the device (or over the disk quota)")
    if isinstance(exc, OSError) and exc.errno == errno.EROFS:
        return AccessDenied(f"{uri}: read-only file system")
    return exc


_NAMED = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


@contextmanager
def _named_errors(uri: str) -> Iterator[None]:
    """Missing, forbidden and folder-instead-of-file become one-line input errors naming `uri`."""
    try:
        yield
    except _NAMED as exc:
        raise _translate(uri, exc) from None


def _size(n: int) -> str:
    return f"{n:,} bytes"


def _too_large(uri: str, size: int | None, limit: int) -> TooLarge:
    shown = _size(size) if size is not None else f"more than {_size(limit)}"
    return TooLarge(f"{uri}: {shown} is over the limit of {_size(limit)}", size, limit)


def _not_regular(uri: str) -> NotRegularFile:
    return NotRegularFile(f"{uri}: not a regular file (a device, FIFO or socket)")


# --- reading -------------------------------------------------------------------------------------------------


def _open_local(uri: str, path: str) -> int:
    """A read-only descriptor of the regular file at `path`: opened without blocking (a FIFO with no
    writer would block forever) and checked with fstat, so nothing can be swapped in between."""
    with _named_errors(uri):
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise InputMissing(f"{uri}: is a folder, not a file")
        if not stat.S_ISREG(mode):
            raise _not_regular(uri)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_fd(fd: int, count: int) -> bytes:
    chunks, left = [], count
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 24))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_bytes(uri: str, limit: int = MAX_READ_BYTES) -> bytes:
    """The whole of `uri`, at most `limit` bytes: `TooLarge` as soon as byte limit+1 is read (a file that
    grows, or lies about its size, cannot get past it); `NotRegularFile` for a local device, FIFO or socket."""
    fs, path = _fs(uri)
    if not is_remote(uri):
        fd = _open_local(uri, path)
        try:
            size = os.fstat(fd).st_size
            if size > limit:
                raise _too_large(uri, size, limit)
            data = _read_fd(fd, limit + 1)
        finally:
            os.close(fd)
    else:
        with _named_errors(uri):
            data = fs.cat_file(path, start=0, end=limit + 1)  # one ranged GET: never more than limit + 1
    if len(data) > limit:
        raise _too_large(uri, None, limit)
    return data


def read_head(uri: str, length: int = 1 << 16) -> bytes:
    """The first `length` bytes (one ranged GET on S3): enough for an image header."""
    fs, path = _fs(uri)
    if not is_remote(uri):
        fd = _open_local(uri, path)
        try:
            return _read_fd(fd, length)
        finally:
            os.close(fd)
    with _named_errors(uri):
        return fs.cat_file(path, start=0, end=length)


def info(uri: str) -> dict:
    fs, path = _fs(uri)
    with _named_errors(uri):
        return fs.info(path)


LINK_SECONDS = 7 * 24 * 3600  # the longest an S3 presigned URL may live


def shareable_url(uri: str, seconds: int = LINK_SECONDS) -> str | None:
    """An https URL a browser (the dashboard) can open for `uri` without credentials: presigned on S3; local
    files have none."""
    if not uri.startswith("s3://"):
        return None
    fs, path = _fs(uri)
    try:
        return fs.sign(path, expiration=seconds)
    except Exception:  # noqa: BLE001 - signing needs credentials; without them there is just no link
        return None


def exists(uri: str) -> bool:
    """Whether `uri` exists; a location the credentials may not read raises `AccessDenied` rather than
    passing for missing, so the operator is told which of the two it is."""
    try:
        info(uri)
    except InputMissing:
        return False
    return True


def check_file(uri: str, limit: int = MAX_READ_BYTES) -> None:
    """What `read_bytes(uri, limit)` would refuse without reading: missing, a folder, a device/FIFO/socket,
    or over `limit` by its size."""
    fs, path = _fs(uri)
    if not is_remote(uri):
        with _named_errors(uri):
            mode = os.stat(path)
        if stat.S_ISDIR(mode.st_mode):
            raise InputMissing(f"{uri}: is a folder, not a file")
        if not stat.S_ISREG(mode.st_mode):
            raise _not_regular(uri)
        size = mode.st_size
    else:
        found = info(uri)
        if found.get("type") == "directory":
            raise InputMissing(f"{uri}: is a folder, not a file")
        size = found.get("size")
    if size is not None and size > limit:
        raise _too_large(uri, size, limit)


# --- writing ---------------------------------------------------------------------------------------------------


def write_bytes(uri: str, data: bytes) -> None:
    """Write so that `uri` holds either its old content or all of `data`, never a part. A full disk or quota
    is `StorageFull`, one line naming `uri`."""
    fs, path = _fs(uri)
    with _written(uri):
        if is_remote(uri):
            fs.pipe_file(path, data)
        else:
            _replace_locally(path, lambda handle: handle.write(data))


def write_stream(uri: str, produce) -> None:
    """`write_bytes` for data too large to hold twice: `produce(file)` writes it piece by piece. Local: to a
    hidden temporary name, fsynced and renamed; S3: an upload (multipart when large) that appears whole on
    completion and is aborted if `produce` fails. A full disk or quota is `StorageFull`."""
    fs, path = _fs(uri)
    with _written(uri):
        if not is_remote(uri):
            _replace_locally(path, produce)
            return
        handle = fs.open(path, "wb")
        try:
            produce(handle)
        except BaseException:
            handle.discard()  # closing would publish what was written so far
            handle.closed = True  # nor may the file's finaliser close it
            raise
        handle.close()


@contextmanager
def _written(uri: str) -> Iterator[None]:
    """A write's errors as one line naming `uri`: missing, forbidden, full."""
    try:
        with _named_errors(uri):
            yield
    except OSError as exc:
        translated = _translate(uri, exc)
        if translated is exc:
            raise
        raise translated from None


def _replace_locally(path: str, produce) -> None:
    """`produce` writes a hidden temporary file beside `path`, fsynced, then renamed over it: never a part."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}{TEMPORARY_SUFFIX}")
    try:
        with open(temporary, "wb") as handle:
            produce(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def remove(uri: str) -> None:
    """Delete `uri` if it is there."""
    fs, path = _fs(uri)
    with _named_errors(uri):
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            pass


def remove_temporaries(folder: str, within: str | None = None) -> int:
    """Delete what a killed writer left in `folder`: only regular files named as `write_bytes` names its
    temporaries (`.<name>.<32 hex>.tmp`), never through a symlink (neither `folder` nor an entry is followed),
    and nothing when `folder` is not inside `within` (the run's output) once symlinks are resolved. S3
    leaves none."""
    if is_remote(folder):
        return 0
    path = os.path.abspath(os.path.expanduser(_local(folder)))
    if within is not None and not is_remote(within):
        root = os.path.realpath(os.path.expanduser(_local(within)))
        real = os.path.realpath(path)
        if os.path.commonpath([root, real]) != root:
            return 0
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError:  # absent, a symlink, or not a folder: nothing of ours there
        return 0
    removed = 0
    try:
        with os.scandir(fd) as entries:
            names = [e.name for e in entries if TEMPORARY_PATTERN.match(e.name) and e.is_file(follow_symlinks=False)]
        for name in names:
            try:
                if not stat.S_ISREG(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                    continue
                os.unlink(name, dir_fd=fd)  # unlink never follows a symlink
                removed += 1
            except FileNotFoundError:
                pass
    finally:
        os.close(fd)
    return removed


# --- listing -------------------------------------------------------------------------------------------------------


class TooManyMatches(StyleError):
    """A glob matching more files than a manifest may name."""


def glob(pattern: str, limit: int = MAX_GLOB_MATCHES) -> list[str]:
    """Matches of a glob (files only), as URIs in the pattern's own form, sorted; `TooManyMatches` once more
    than `limit` are found (a local glob stops walking there)."""
    fs, path = _fs(pattern)
    if not is_remote(pattern):
        import glob as globbing

        matches = []
        with _named_errors(pattern):
            for match in globbing.iglob(path, recursive=True):
                if os.path.isfile(match):
                    matches.append(match)
                    if len(matches) > limit:
                        raise TooManyMatches(f"glob {pattern!r} matches more than {limit:,} files (the limit per glob)")
        return sorted(matches)
    with _named_errors(pattern):
        found = fs.glob(path, detail=True)
    files = sorted(m for m, entry in found.items() if entry.get("type") != "directory")
    if len(files) > limit:
        raise TooManyMatches(f"glob {pattern!r} matches more than {limit:,} files (the limit per glob)")
    scheme = pattern.split("://", 1)[0]
    return [f"{scheme}://{m}" for m in files]


def has_magic(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def filesystem(uri: str) -> fsspec.AbstractFileSystem:
    return _fs(uri)[0]
