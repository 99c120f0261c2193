"""Robust downloads and safe extraction of the dataset archives.

The RefCOCO annotation zips live on a university server that is often slow or offline, and COCO
``train2014.zip`` is 13.5 GB, so the downloader has to survive flaky networks: it resumes partial
downloads with HTTP ``Range`` requests, retries with exponential backoff, falls back to mirrors
(the Internet Archive copy), verifies size and SHA-256 before a file is ever put in its final place,
and turns hung connections into clear errors.  Only the standard library (``urllib``) and ``tqdm``
are used so that fetching the data needs nothing beyond the base install.

Archives are unpacked with :func:`safe_extract`, which refuses path-traversal, absolute-path and
symlink entries before writing anything, and extracts through a temporary directory so that a
failure never leaves a half-extracted tree behind.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import stat
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from tqdm import tqdm

__all__ = [
    "DownloadError",
    "RemoteFile",
    "UnsafeArchiveError",
    "download",
    "fetch_and_extract",
    "part_path",
    "safe_extract",
    "sha256sum",
    "verify_file",
]

logger = logging.getLogger(__name__)

_USER_AGENT = "ris-downloader/0.1 (python-urllib)"
_HASH_CHUNK = 1 << 20
# Indirection so that tests can observe the backoff delays without actually sleeping.
_sleep = time.sleep


class DownloadError(RuntimeError):
    """A file could not be downloaded, verified or extracted."""


class UnsafeArchiveError(DownloadError):
    """An archive contains an entry that would be written outside the target directory."""


@dataclass(frozen=True)
class RemoteFile:
    """A file published at one or more URLs, with the size and SHA-256 it must have.

    ``urls`` are mirrors tried in order; ``size``/``sha256`` may be ``None`` when unknown, in which
    case that check is skipped.
    """

    name: str
    urls: tuple[str, ...]
    size: int | None
    sha256: str | None

    @classmethod
    def from_config(cls, name: str, entry: dict) -> RemoteFile:
        """A ``downloads:`` entry of config.yaml (``urls``, ``size``, ``sha256``)."""
        urls = entry.get("urls") or []
        if not urls:
            raise ValueError(f"config.yaml: field downloads.{name}.urls: expected at least one URL")
        return cls(name, tuple(urls), entry.get("size"), entry.get("sha256"))


# --------------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------------


def sha256sum(path: Path | str) -> str:
    """Hex SHA-256 of a file, hashed in chunks so multi-GB archives need no memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _problem(path: Path, size: int | None, sha256: str | None) -> str | None:
    """Why ``path`` does not match ``size``/``sha256`` (size first: it is free), or None if it does."""
    if not path.is_file():
        return "file is missing"
    if size is not None:
        actual_size = path.stat().st_size
        if actual_size != size:
            return f"size mismatch: expected {size} bytes, actual {actual_size} bytes"
    if sha256 is not None:
        actual_sha = sha256sum(path)
        if actual_sha != sha256.lower():
            return f"sha256 mismatch: expected {sha256.lower()}, actual {actual_sha}"
    return None


def verify_file(path: Path | str, size: int | None, sha256: str | None) -> None:
    """Raise :class:`DownloadError` naming the file, expected and actual values unless it matches."""
    path = Path(path)
    problem = _problem(path, size, sha256)
    if problem is not None:
        raise DownloadError(f"{path}: {problem}")


def part_path(dest: Path | str) -> Path:
    """Where :func:`download` keeps the partial data of ``dest`` until it is verified."""
    dest = Path(dest)
    return dest.with_name(dest.name + ".part")


# --------------------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------------------


class _AttemptError(Exception):
    """One attempt on one mirror failed; ``retryable`` says whether the same mirror is worth retrying."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """``"bytes 10-99/100"`` -> ``(10, 100)``; ``"bytes */100"`` -> ``(None, 100)``; junk -> Nones."""
    if not value or not value.strip().lower().startswith("bytes"):
        return None, None
    spec = value.strip()[5:].strip()
    span, _, total = spec.partition("/")
    start = _int_or_none(span.partition("-")[0]) if span != "*" else None
    return start, _int_or_none(total) if total != "*" else None


def _fetch_once(remote: RemoteFile, url: str, part: Path, *, timeout: float, chunk_size: int, progress: bool) -> None:
    """Fetch ``url`` into ``part``, resuming from its current size; raise :class:`_AttemptError`."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    timeout_msg = f"no data from {url} for {timeout} s (timeout)"
    length: int | None = None
    received = 0
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            length = _int_or_none(resp.headers.get("Content-Length"))
            if resp.status == 206:
                start, _total = _parse_content_range(resp.headers.get("Content-Range"))
                if start != offset:
                    part.unlink(missing_ok=True)
                    raise _AttemptError(
                        f"{url} answered 'Range: bytes={offset}-' with Content-Range "
                        f"{resp.headers.get('Content-Range')!r}; discarded the partial file",
                        retryable=True,
                    )
                mode = "ab" if offset else "wb"
            else:
                if offset:
                    logger.info("%s: %s ignored the Range request; restarting from zero", remote.name, url)
                offset, mode = 0, "wb"  # 200: the body is the whole file, truncate the part file
            total = remote.size
            if total is None and length is not None:
                total = offset + length
            with (
                open(part, mode) as fh,
                tqdm(
                    total=total,
                    initial=offset,
                    desc=remote.name,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    disable=not progress,
                ) as bar,
            ):
                read = getattr(resp, "read1", resp.read)  # read1: whatever arrived, up to chunk_size
                while chunk := read(chunk_size):
                    try:
                        fh.write(chunk)
                    except OSError as exc:  # disk full etc.: no mirror can fix that
                        raise DownloadError(f"{remote.name}: cannot write {part}: {exc}") from exc
                    received += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as exc:
        code, reason = exc.code, exc.reason
        cr_header = exc.headers.get("Content-Range") if exc.headers is not None else None
        exc.close()
        if code == 416 and offset:
            _start, total = _parse_content_range(cr_header)
            if total is not None and total == offset:
                return  # the part file already holds the whole file
            part.unlink(missing_ok=True)
            raise _AttemptError(
                f"HTTP 416 from {url} for 'Range: bytes={offset}-'; discarded the partial file",
                retryable=True,
            ) from None
        retryable = code >= 500 or code in (408, 429)
        raise _AttemptError(f"HTTP {code} {reason} from {url}", retryable=retryable) from None
    except TimeoutError:
        raise _AttemptError(timeout_msg, retryable=True) from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise _AttemptError(timeout_msg, retryable=True) from None
        raise _AttemptError(f"cannot reach {url}: {exc.reason}", retryable=True) from None
    except (http.client.HTTPException, OSError) as exc:
        raise _AttemptError(f"connection to {url} failed: {type(exc).__name__}: {exc}", retryable=True) from None

    if length is not None and received < length:
        raise _AttemptError(f"connection to {url} closed early: received {received} of {length} bytes", retryable=True)
    have = part.stat().st_size if part.exists() else 0
    if remote.size is not None and have < remote.size:
        raise _AttemptError(f"incomplete download from {url}: have {have} of {remote.size} bytes", retryable=True)


def download(
    remote: RemoteFile,
    dest: Path | str,
    *,
    retries: int = 3,
    backoff: float = 1.0,
    timeout: float = 30.0,
    chunk_size: int = 1 << 20,
    progress: bool = True,
) -> Path:
    """Download ``remote`` to ``dest`` and return ``dest``, verified against its size and SHA-256.

    An already verified ``dest`` is returned without touching the network.  Data goes to
    ``<dest>.part`` first and is resumed from there (``Range`` request) after an interruption; the
    part file is renamed to ``dest`` only once verified.  Each mirror gets ``retries`` extra attempts
    after connection errors, timeouts, HTTP 5xx and short reads, waiting ``backoff * 2**attempt``
    seconds in between; HTTP 403/404 and corrupt data move on to the next mirror at once.  Raises
    :class:`DownloadError` listing every URL and its last error when all mirrors fail.
    """
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    dest = Path(dest)
    if dest.is_file() and _problem(dest, remote.size, remote.sha256) is None:
        logger.debug("%s: %s already present and verified", remote.name, dest)
        return dest
    if not remote.urls:
        raise DownloadError(f"{remote.name}: no URL to download from")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)

    if part.exists() and remote.size is not None:
        have = part.stat().st_size
        if have == remote.size:  # a previous run got everything but stopped before the rename
            problem = _problem(part, remote.size, remote.sha256)
            if problem is None:
                os.replace(part, dest)
                return dest
            logger.warning("%s: discarding complete but corrupt %s (%s)", remote.name, part, problem)
            part.unlink()
        elif have > remote.size:
            logger.warning("%s: discarding %s, larger than the expected %d bytes", remote.name, part, remote.size)
            part.unlink()

    failures: list[tuple[str, str, int]] = []  # (url, last error, attempts)
    for url in remote.urls:
        last_error = "not attempted"
        attempts = 0
        for attempt in range(retries + 1):
            attempts += 1
            try:
                _fetch_once(remote, url, part, timeout=timeout, chunk_size=chunk_size, progress=progress)
            except _AttemptError as exc:
                last_error = exc.message
                if not exc.retryable:
                    break
                if attempt < retries:
                    delay = backoff * 2**attempt
                    logger.warning(
                        "%s: %s; retry %d/%d in %.1f s", remote.name, exc.message, attempt + 1, retries, delay
                    )
                    if delay > 0:
                        _sleep(delay)
                continue
            problem = _problem(part, remote.size, remote.sha256)
            if problem is None:
                os.replace(part, dest)
                return dest
            part.unlink(missing_ok=True)
            last_error = f"data downloaded from {url} is corrupt ({problem}); deleted {part.name}"
            break
        logger.warning("%s: giving up on %s: %s", remote.name, url, last_error)
        failures.append((url, last_error, attempts))
    raise DownloadError(_failure_message(remote, failures, part))


def _failure_message(remote: RemoteFile, failures: list[tuple[str, str, int]], part: Path) -> str:
    def tries(n: int) -> str:
        return f" [gave up after {n} attempts]" if n > 1 else ""

    if len(failures) == 1:
        url, error, n = failures[0]
        message = f"{remote.name}: {error}{tries(n)}"
    else:
        lines = [f"{remote.name}: download failed from all {len(failures)} mirrors:"]
        lines += [f"  - {url}: {error}{tries(n)}" for url, error, n in failures]
        message = "\n".join(lines)
    if part.exists() and part.stat().st_size:
        message += f"\n{part.stat().st_size} bytes kept in {part}; run again to resume."
    return message


# --------------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------------


def _member_path(zip_path: Path, info: zipfile.ZipInfo) -> PurePosixPath | None:
    """Safe relative path of an archive entry (None for the root itself); raise if it is unsafe."""
    name = info.filename

    def unsafe(reason: str) -> UnsafeArchiveError:
        return UnsafeArchiveError(f"{zip_path}: refusing to extract unsafe entry {name!r}: {reason}")

    if stat.S_ISLNK(info.external_attr >> 16):
        raise unsafe("it is a symbolic link")
    if "\x00" in name:
        raise unsafe("it contains a NUL byte")
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
        raise unsafe("it is an absolute path")
    parts: list[str] = []
    for component in name.replace("\\", "/").split("/"):  # backslashes are separators on Windows
        if component in ("", "."):
            continue
        if component == "..":
            if not parts:
                raise unsafe("its '..' components escape the target directory")
            parts.pop()
        else:
            parts.append(component)
    if not parts:
        if info.is_dir():
            return None
        raise unsafe("it resolves to the target directory itself")
    return PurePosixPath(*parts)


def _move_into_place(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``, merging into an existing directory and replacing existing files."""
    if src.is_dir() and dst.is_dir():  # dst may be a user's symlink to a directory: merge into it
        for child in src.iterdir():
            _move_into_place(child, dst / child.name)
        src.rmdir()
        return
    if dst.is_symlink() or dst.is_file():
        dst.unlink()
    elif dst.is_dir():
        shutil.rmtree(dst)
    shutil.move(os.fspath(src), os.fspath(dst))


def safe_extract(zip_path: Path | str, target_dir: Path | str) -> list[Path]:
    """Extract ``zip_path`` into ``target_dir`` and return the extracted top-level paths.

    Every entry is checked before anything is written: absolute paths, ``..`` escaping the target and
    symlinks raise :class:`UnsafeArchiveError`.  Entries are extracted into a temporary sibling of
    ``target_dir`` and only then moved into place, so a corrupt archive leaves no partial tree.
    """
    zip_path = Path(zip_path)
    target_dir = Path(target_dir)
    try:
        archive = zipfile.ZipFile(zip_path)
    except FileNotFoundError as exc:
        raise DownloadError(f"{zip_path} does not exist") from exc
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as exc:
        raise DownloadError(f"{zip_path} is not a valid zip file: {exc}") from exc

    with archive:
        plan = [(info, _member_path(zip_path, info)) for info in archive.infolist()]
        members = [(info, rel) for info, rel in plan if rel is not None]
        top_level = sorted({rel.parts[0] for _, rel in members})

        work_dir = Path(os.path.abspath(target_dir))
        work_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{work_dir.name}.", suffix=".extracting", dir=work_dir.parent))
        try:
            for info, rel in members:
                out = staging.joinpath(*rel.parts)
                try:
                    if info.is_dir():
                        out.mkdir(parents=True, exist_ok=True)
                        continue
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with archive.open(info) as src, open(out, "wb") as dst:
                        shutil.copyfileobj(src, dst, _HASH_CHUNK)
                except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
                    raise DownloadError(f"{zip_path} is not a valid zip file: entry {info.filename!r}: {exc}") from exc
                except (OSError, NotImplementedError) as exc:
                    raise DownloadError(f"{zip_path}: cannot extract entry {info.filename!r}: {exc}") from exc
            work_dir.mkdir(parents=True, exist_ok=True)
            for name in top_level:
                _move_into_place(staging / name, work_dir / name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return [target_dir / name for name in top_level]


# --------------------------------------------------------------------------------------------------
# Download + extract
# --------------------------------------------------------------------------------------------------


def _marker_path(remote: RemoteFile, extract_dir: Path) -> Path:
    return extract_dir / f".{remote.name}.extracted"


def _marker_valid(marker: Path, remote: RemoteFile) -> bool:
    if not marker.is_file():
        return False
    content = marker.read_text(encoding="utf-8").strip().lower()
    if remote.sha256 is None:
        return bool(content)
    return content == remote.sha256.lower()


def fetch_and_extract(remote: RemoteFile, download_dir: Path | str, extract_dir: Path | str, **kw: object) -> Path:
    """Download ``remote`` into ``download_dir`` and extract it into ``extract_dir``; return ``extract_dir``.

    Completion is recorded by the marker ``extract_dir/.<name>.extracted`` holding the archive's
    SHA-256, written last.  With a valid marker nothing is downloaded, hashed or extracted, so the
    (possibly 13 GB) archive may be deleted once extracted.  ``kw`` is passed on to :func:`download`.
    """
    download_dir = Path(download_dir)
    extract_dir = Path(extract_dir)
    marker = _marker_path(remote, extract_dir)
    if _marker_valid(marker, remote):
        logger.debug("%s: already extracted into %s", remote.name, extract_dir)
        return extract_dir
    archive = download(remote, download_dir / remote.name, **kw)  # type: ignore[arg-type]
    digest = remote.sha256.lower() if remote.sha256 else sha256sum(archive)
    marker.unlink(missing_ok=True)
    safe_extract(archive, extract_dir)
    tmp_marker = marker.with_name(marker.name + ".tmp")
    tmp_marker.write_text(digest + "\n", encoding="utf-8")
    os.replace(tmp_marker, marker)
    return extract_dir
