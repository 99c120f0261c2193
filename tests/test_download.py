"""Tests for ris.data.download against a real HTTP server on 127.0.0.1 (no other network access)."""

from __future__ import annotations

import hashlib
import io
import random
import re
import stat
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ris.data import download as dl
from ris.data.download import (
    DownloadError,
    RemoteFile,
    UnsafeArchiveError,
    download,
    fetch_and_extract,
    part_path,
    safe_extract,
    sha256sum,
    verify_file,
)

# --------------------------------------------------------------------------------------------------
# Local file server
# --------------------------------------------------------------------------------------------------


@dataclass
class Route:
    """What the server does for one path; tests may change these fields between calls."""

    data: bytes
    status: int | None = None  # answer every request with this error status
    cut_after: int | None = None  # send the headers, then only this many body bytes, then close
    cut_once: bool = False  # clear ``cut_after`` after it has been applied once
    hang: float | None = None  # accept, then send nothing for this many seconds
    ignore_range: bool = False  # always answer 200 with the whole file


@dataclass
class Hit:
    """One request as the server saw it."""

    path: str
    range: str | None
    status: int = 0
    sent: int = 0


@dataclass
class FileServer:
    """In-memory files over HTTP with Range support, failure injection and a request log."""

    routes: dict[str, Route] = field(default_factory=dict)
    log: list[Hit] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    port: int = 0

    def add(self, path: str, data: bytes, **kw: object) -> Route:
        route = Route(data, **kw)  # type: ignore[arg-type]
        self.routes[path] = route
        return route

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def hits(self, path: str | None = None) -> list[Hit]:
        with self.lock:
            return [h for h in self.log if path is None or h.path == path]

    def sent(self, path: str) -> int:
        return sum(h.sent for h in self.hits(path))


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output quiet
        pass

    def do_GET(self) -> None:  # http.server naming
        files = self.server.files
        hit = Hit(self.path, self.headers.get("Range"))
        with files.lock:
            files.log.append(hit)
            route = files.routes.get(self.path)
            cut = route.cut_after if route is not None else None
            if route is not None and route.cut_once:
                route.cut_after = None
        if route is None:
            hit.status = 404
            self.send_error(404)
            return
        if route.status is not None:
            hit.status = route.status
            self.send_error(route.status)
            return
        if route.hang is not None:
            files.stop.wait(route.hang)  # ends early when the fixture shuts the server down
            self.close_connection = True
            return

        data, start, status = route.data, 0, 200
        if hit.range and not route.ignore_range:
            match = re.fullmatch(r"bytes=(\d+)-", hit.range)
            assert match, hit.range
            start = int(match.group(1))
            if start >= len(data):
                hit.status = 416
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        body = data[start:]
        hit.status = status
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if cut is not None:
            body = body[:cut]
            self.close_connection = True
        for i in range(0, len(body), 1 << 16):
            piece = body[i : i + (1 << 16)]
            with files.lock:
                hit.sent += len(piece)  # counted before writing so the client never gets ahead of the log
            self.wfile.write(piece)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, files: FileServer) -> None:
        self.files = files
        super().__init__(("127.0.0.1", 0), _Handler)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make sure urllib talks to 127.0.0.1 directly even if the environment sets a proxy."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")


@pytest.fixture
def server() -> Iterator[FileServer]:
    files = FileServer()
    httpd = _Server(files)
    files.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield files
    finally:
        files.stop.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------

SIZE = 300_000  # several 64 KiB server writes and client chunks


def payload(size: int = SIZE, seed: int = 1234) -> bytes:
    return random.Random(seed).randbytes(size)


def remote_for(server: FileServer, name: str, data: bytes, *paths: str) -> RemoteFile:
    return RemoteFile(name, tuple(server.url(p) for p in paths), len(data), hashlib.sha256(data).hexdigest())


FAST = {"retries": 0, "backoff": 0.0, "timeout": 5.0, "chunk_size": 1 << 14, "progress": False}


def make_zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, content in entries.items():
            zf.writestr(name, content)
    return buf.getvalue()


def write_zip(path: Path, entries: dict[str, bytes]) -> Path:
    path.write_bytes(make_zip(entries))
    with zipfile.ZipFile(path) as zf:  # zipfile must keep the names exactly as given
        assert zf.namelist() == list(entries)
    return path


def tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) if root.exists() else []


# --------------------------------------------------------------------------------------------------
# download()
# --------------------------------------------------------------------------------------------------


def test_complete_download(server: FileServer, tmp_path: Path) -> None:
    data = payload()
    server.add("/refcoco.zip", data)
    remote = remote_for(server, "refcoco.zip", data, "/refcoco.zip")
    dest = tmp_path / "sub" / "refcoco.zip"

    assert download(remote, dest, **{**FAST, "progress": True}) == dest

    assert dest.read_bytes() == data
    assert sha256sum(dest) == remote.sha256
    assert not part_path(dest).exists()
    assert [(h.range, h.status, h.sent) for h in server.hits()] == [(None, 200, len(data))]


def test_interrupted_download_resumes_with_range(server: FileServer, tmp_path: Path) -> None:
    data, k = payload(), 100_000
    route = server.add("/f.bin", data, cut_after=k)
    remote = remote_for(server, "f.bin", data, "/f.bin")
    dest = tmp_path / "f.bin"

    with pytest.raises(DownloadError, match=r"f\.bin: connection to .* closed early"):
        download(remote, dest, **FAST)
    assert not dest.exists()
    assert part_path(dest).read_bytes() == data[:k]

    route.cut_after = None
    download(remote, dest, **FAST)

    assert dest.read_bytes() == data
    assert not part_path(dest).exists()
    assert [(h.range, h.status) for h in server.hits()] == [(None, 200), (f"bytes={k}-", 206)]
    assert server.sent("/f.bin") == len(data)  # nothing fetched twice


def test_short_read_is_retried_and_resumed_in_one_call(server: FileServer, tmp_path: Path) -> None:
    data, k = payload(), 70_000
    server.add("/f.bin", data, cut_after=k, cut_once=True)
    remote = remote_for(server, "f.bin", data, "/f.bin")

    dest = download(remote, tmp_path / "f.bin", **{**FAST, "retries": 1})

    assert dest.read_bytes() == data
    assert [h.range for h in server.hits()] == [None, f"bytes={k}-"]
    assert server.sent("/f.bin") == len(data)


def test_server_ignoring_range_restarts_from_zero(server: FileServer, tmp_path: Path) -> None:
    data, k = payload(), 50_000
    server.add("/f.bin", data, ignore_range=True)
    remote = remote_for(server, "f.bin", data, "/f.bin")
    dest = tmp_path / "f.bin"
    part_path(dest).write_bytes(b"\xff" * k)  # stale garbage: must be truncated, not appended to

    download(remote, dest, **FAST)

    assert dest.read_bytes() == data
    assert [(h.range, h.status, h.sent) for h in server.hits()] == [(f"bytes={k}-", 200, len(data))]


def test_failing_mirrors_fall_back_to_next(server: FileServer, tmp_path: Path) -> None:
    data = payload()
    server.add("/broken", data, status=500)
    server.add("/gone", data, status=404)
    server.add("/good", data)
    remote = remote_for(server, "f.bin", data, "/broken", "/gone", "/good")

    download(remote, tmp_path / "f.bin", **{**FAST, "retries": 2})

    assert (tmp_path / "f.bin").read_bytes() == data
    # 500 is retried (1 + 2 attempts), 404 goes to the next mirror at once.
    assert [(h.path, h.status) for h in server.hits()] == [
        ("/broken", 500),
        ("/broken", 500),
        ("/broken", 500),
        ("/gone", 404),
        ("/good", 200),
    ]


def test_backoff_is_exponential_and_skipped_for_404(
    server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(dl, "_sleep", sleeps.append)
    data = payload(1000)
    server.add("/broken", data, status=503)
    server.add("/gone", data, status=403)
    remote = remote_for(server, "f.bin", data, "/broken", "/gone")

    with pytest.raises(DownloadError) as err:
        download(remote, tmp_path / "f.bin", **{**FAST, "retries": 3, "backoff": 0.5})

    assert sleeps == [0.5, 1.0, 2.0]
    assert len(server.hits("/broken")) == 4 and len(server.hits("/gone")) == 1
    message = str(err.value)
    assert "f.bin" in message and "all 2 mirrors" in message
    assert f"{server.url('/broken')}: HTTP 503" in message
    assert f"{server.url('/gone')}: HTTP 403" in message
    assert not (tmp_path / "f.bin").exists()


def test_unreachable_mirror_is_reported(server: FileServer, tmp_path: Path) -> None:
    data = payload(1000)
    server.add("/good", data)
    dead = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    dead_url = f"http://127.0.0.1:{dead.server_address[1]}/x"
    dead.server_close()  # nothing listens on that port any more: connection refused
    remote = RemoteFile("f.bin", (dead_url, server.url("/good")), len(data), None)

    download(remote, tmp_path / "f.bin", **FAST)
    assert (tmp_path / "f.bin").read_bytes() == data

    with pytest.raises(DownloadError, match=rf"f\.bin: cannot reach {re.escape(dead_url)}"):
        download(RemoteFile("f.bin", (dead_url,), None, None), tmp_path / "other.bin", **FAST)


def test_checksum_mismatch_leaves_nothing(server: FileServer, tmp_path: Path) -> None:
    data = payload()
    server.add("/f.bin", data)
    wrong_sha = "0" * 64
    remote = RemoteFile("refcoco.zip", (server.url("/f.bin"),), len(data), wrong_sha)
    dest = tmp_path / "refcoco.zip"

    with pytest.raises(DownloadError) as err:
        download(remote, dest, **FAST)

    message = str(err.value)
    assert "refcoco.zip" in message
    assert wrong_sha in message and hashlib.sha256(data).hexdigest() in message
    assert not dest.exists() and not part_path(dest).exists()


def test_size_mismatch_is_reported(server: FileServer, tmp_path: Path) -> None:
    data = payload(1000)
    server.add("/f.bin", data)
    remote = RemoteFile("f.bin", (server.url("/f.bin"),), 999, None)

    with pytest.raises(DownloadError, match="expected 999 bytes, actual 1000 bytes"):
        download(remote, tmp_path / "f.bin", **FAST)
    assert list(tmp_path.iterdir()) == []


def test_hanging_server_times_out(server: FileServer, tmp_path: Path) -> None:
    server.add("/x", payload(1000), hang=30.0)
    remote = remote_for(server, "refcoco.zip", payload(1000), "/x")

    t0 = time.monotonic()
    with pytest.raises(DownloadError) as err:
        download(remote, tmp_path / "refcoco.zip", **{**FAST, "retries": 1, "timeout": 0.5})
    elapsed = time.monotonic() - t0

    assert elapsed < 5.0
    message = str(err.value)
    assert message.startswith(f"refcoco.zip: no data from {server.url('/x')} for 0.5 s (timeout)")
    assert "2 attempts" in message
    assert len(server.hits("/x")) == 2


def test_verified_file_makes_no_request(server: FileServer, tmp_path: Path) -> None:
    data = payload()
    server.add("/f.bin", data)
    remote = remote_for(server, "f.bin", data, "/f.bin")
    dest = tmp_path / "f.bin"
    dest.write_bytes(data)

    assert download(remote, dest, **FAST) == dest
    assert server.hits() == []


def test_corrupt_existing_file_is_replaced(server: FileServer, tmp_path: Path) -> None:
    data = payload()
    server.add("/f.bin", data)
    remote = remote_for(server, "f.bin", data, "/f.bin")
    dest = tmp_path / "f.bin"
    dest.write_bytes(b"old")

    download(remote, dest, **FAST)
    assert dest.read_bytes() == data
    assert len(server.hits()) == 1


def test_complete_part_file_is_verified_without_request(server: FileServer, tmp_path: Path) -> None:
    data = payload()
    server.add("/f.bin", data)
    remote = remote_for(server, "f.bin", data, "/f.bin")
    dest = tmp_path / "f.bin"
    part_path(dest).write_bytes(data)

    download(remote, dest, **FAST)
    assert dest.read_bytes() == data and not part_path(dest).exists()
    assert server.hits() == []


def test_unknown_size_and_complete_part_uses_416(server: FileServer, tmp_path: Path) -> None:
    data = payload(5000)
    server.add("/f.bin", data)
    remote = RemoteFile("f.bin", (server.url("/f.bin"),), None, hashlib.sha256(data).hexdigest())
    dest = tmp_path / "f.bin"
    part_path(dest).write_bytes(data)

    download(remote, dest, **FAST)
    assert dest.read_bytes() == data
    assert [(h.range, h.status) for h in server.hits()] == [("bytes=5000-", 416)]


# --------------------------------------------------------------------------------------------------
# verify_file() / sha256sum()
# --------------------------------------------------------------------------------------------------


def test_verify_file(tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(b"hello")
    sha = hashlib.sha256(b"hello").hexdigest()
    assert sha256sum(path) == sha
    verify_file(path, 5, sha)
    verify_file(path, None, None)
    with pytest.raises(DownloadError, match=r"a\.bin: size mismatch: expected 6 bytes, actual 5 bytes"):
        verify_file(path, 6, sha)
    with pytest.raises(DownloadError, match=rf"a\.bin: sha256 mismatch: expected {'1' * 64}, actual {sha}"):
        verify_file(path, 5, "1" * 64)
    with pytest.raises(DownloadError, match="missing"):
        verify_file(tmp_path / "nope", 5, sha)


# --------------------------------------------------------------------------------------------------
# safe_extract()
# --------------------------------------------------------------------------------------------------


def test_safe_extract_normal_zip(tmp_path: Path) -> None:
    archive = write_zip(
        tmp_path / "a.zip",
        {
            "refcoco/": b"",
            "refcoco/refs(unc).p": b"refs",
            "refcoco/sub/instances.json": b"{}",
            "top.txt": b"t",
        },
    )
    target = tmp_path / "out"

    assert safe_extract(archive, target) == [target / "refcoco", target / "top.txt"]
    assert tree(target) == [
        "refcoco",
        "refcoco/refs(unc).p",
        "refcoco/sub",
        "refcoco/sub/instances.json",
        "top.txt",
    ]
    assert (target / "refcoco" / "sub" / "instances.json").read_bytes() == b"{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip", "out"]  # staging dir removed


def test_safe_extract_merges_into_existing_tree(tmp_path: Path) -> None:
    target = tmp_path / "out"
    (target / "refcoco").mkdir(parents=True)
    (target / "refcoco" / "keep.txt").write_bytes(b"mine")
    (target / "refcoco" / "refs.p").write_bytes(b"stale")
    archive = write_zip(tmp_path / "a.zip", {"refcoco/refs.p": b"new"})

    safe_extract(archive, target)
    assert (target / "refcoco" / "keep.txt").read_bytes() == b"mine"
    assert (target / "refcoco" / "refs.p").read_bytes() == b"new"


@pytest.mark.parametrize(
    "bad_name",
    ["../evil.txt", "ok/../../evil.txt", "/abs/evil.txt", "C:\\evil.txt", "..\\evil.txt"],
)
def test_safe_extract_refuses_escaping_entries(tmp_path: Path, bad_name: str) -> None:
    archive = write_zip(tmp_path / "bad.zip", {"ok/first.txt": b"fine", bad_name: b"evil"})
    target = tmp_path / "deep" / "out"

    with pytest.raises(UnsafeArchiveError) as err:
        safe_extract(archive, target)

    assert "bad.zip" in str(err.value) and repr(bad_name) in str(err.value)
    assert not target.exists()
    assert tree(tmp_path) == ["bad.zip"]  # nothing at all was written, not even the good entry


def test_safe_extract_refuses_symlinks(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("data/ok.txt", b"fine")
        link = zipfile.ZipInfo("data/link")
        link.create_system = 3  # unix
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    archive = tmp_path / "link.zip"
    archive.write_bytes(buf.getvalue())
    target = tmp_path / "out"

    with pytest.raises(UnsafeArchiveError, match=r"link\.zip.*'data/link'.*symbolic link"):
        safe_extract(archive, target)
    assert tree(tmp_path) == ["link.zip"]


def test_safe_extract_corrupt_zip(tmp_path: Path) -> None:
    archive = tmp_path / "corrupt.zip"
    archive.write_bytes(payload(4096))
    with pytest.raises(DownloadError, match=r"corrupt\.zip is not a valid zip file: "):
        safe_extract(archive, tmp_path / "out")
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(make_zip({"a.txt": payload(10_000)})[:5000])
    with pytest.raises(DownloadError, match=r"truncated\.zip is not a valid zip file: "):
        safe_extract(truncated, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_safe_extract_bad_member_data_leaves_no_partial_tree(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("data/1.txt", b"A" * 1000)
        zf.writestr("data/2.txt", b"B" * 1000)
    raw = bytearray(buf.getvalue())
    raw[raw.index(b"B" * 1000) + 500] = ord("C")  # flip one byte of the second entry: CRC error
    archive = tmp_path / "crc.zip"
    archive.write_bytes(bytes(raw))
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_bytes(b"mine")

    with pytest.raises(DownloadError, match=r"crc\.zip is not a valid zip file: entry 'data/2\.txt'"):
        safe_extract(archive, target)
    assert tree(target) == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crc.zip", "out"]


# --------------------------------------------------------------------------------------------------
# fetch_and_extract()
# --------------------------------------------------------------------------------------------------


def test_fetch_and_extract_end_to_end(server: FileServer, tmp_path: Path) -> None:
    data = make_zip({"refcoco/refs(unc).p": payload(20_000), "refcoco/instances.json": b'{"images": []}'})
    server.add("/mirror/refcoco.zip", data, status=500)
    server.add("/refcoco.zip", data)
    remote = remote_for(server, "refcoco.zip", data, "/mirror/refcoco.zip", "/refcoco.zip")
    downloads, extracted = tmp_path / "downloads", tmp_path / "refer"

    assert fetch_and_extract(remote, downloads, extracted, **FAST) == extracted

    assert (downloads / "refcoco.zip").read_bytes() == data
    assert (extracted / "refcoco" / "instances.json").read_bytes() == b'{"images": []}'
    marker = extracted / ".refcoco.zip.extracted"
    assert marker.read_text().strip() == remote.sha256
    assert [h.path for h in server.hits()] == ["/mirror/refcoco.zip", "/refcoco.zip"]

    n_hits = len(server.hits())
    fetch_and_extract(remote, downloads, extracted, **FAST)
    (downloads / "refcoco.zip").unlink()  # the marker alone is enough: the archive may be deleted
    fetch_and_extract(remote, downloads, extracted, **FAST)
    assert len(server.hits()) == n_hits
    assert not (downloads / "refcoco.zip").exists()

    marker.write_text("stale\n")  # a marker for another archive version means: extract again
    fetch_and_extract(remote, downloads, extracted, **FAST)
    assert marker.read_text().strip() == remote.sha256
    assert len(server.hits()) == n_hits + 2  # one more 500 from the mirror, then the good URL


# --------------------------------------------------------------------------------------------------
# The files of config.yaml
# --------------------------------------------------------------------------------------------------


def test_config_downloads() -> None:
    """config.yaml carries the known sizes and sha256 of every archive, original URL first."""
    import yaml

    from tests.helpers import REPO

    downloads = yaml.safe_load((REPO / "config.yaml").read_text())["downloads"]
    remotes = {name: RemoteFile.from_config(name, entry) for name, entry in downloads.items()}
    assert set(remotes) == {"refcoco.zip", "refcoco+.zip", "refcocog.zip", "train2014.zip"}
    for key, remote in remotes.items():
        assert re.fullmatch(r"[0-9a-f]{64}", remote.sha256 or "")
        assert all(url.endswith("/" + key) for url in remote.urls)
    assert remotes["refcoco.zip"].urls[0] == "https://bvisionweb1.cs.unc.edu/licheng/referit/data/refcoco.zip"
    assert remotes["refcoco.zip"].urls[1].startswith("https://web.archive.org/web/20220413011718id_/")
    assert remotes["refcoco.zip"].size == 53993993
    assert remotes["train2014.zip"].size == 13510573713
    with pytest.raises(ValueError, match="downloads.x.zip.urls"):
        RemoteFile.from_config("x.zip", {"urls": []})
