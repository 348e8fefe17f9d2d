"""Downloading model weights into the user cache, with progress and sha256 checks.

The contract: a file appears under its final name in the cache only once it has
been received completely and its size (and sha256, when the registry knows it)
matched (and its xxh128, for micro-sam's models). Until then the bytes go to a unique ``<name>.<random>.part`` file next to
it, which is deleted on any failure: HTTP error, unreachable server, timeout,
truncated transfer, wrong size or hash, or cancellation (closing the generator).

A download killed outright (SIGKILL, power cut) cannot delete its ``.part`` file; the
next download of the same model removes such stale files (untouched for
:data:`STALE_PART_SECONDS`, so a download running in another process keeps its file).

A file's sha256 is computed once per version of the file and remembered in a sidecar
``<file>.sha256.json`` with its size and modification time (:func:`verified_sha256`), so
``samscope models`` and every load can check a cached file against the registry without
hashing gigabytes each time; :func:`cached_state` says ``"ok"``, ``"missing"``,
``"incomplete"`` or ``"corrupt"``.

Plain :mod:`urllib` is used rather than pooch because the download has to be a
progress-yielding generator (``core/progress.py``) that can be stopped between two
chunks; this module has no third-party dependency.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_samscope.core.progress import Progress, run

if TYPE_CHECKING:  # pragma: no cover
    from napari_samscope.core.weights.spec import ModelSpec

__all__ = [
    "CACHE_ENV_VAR",
    "DownloadError",
    "STALE_PART_SECONDS",
    "cache_dir",
    "cached_file",
    "cached_state",
    "corrupt_message",
    "download",
    "download_iter",
    "file_sha256",
    "verified_sha256",
]

#: Environment variable that overrides the weight cache folder.
CACHE_ENV_VAR = "SAMSCOPE_CACHE_DIR"
_APP_NAME = "napari-samscope"
_CHUNK_SIZE = 1 << 20  # 1 MiB
_USER_AGENT = "napari-samscope (https://github.com/napari-samscope/napari-samscope)"
#: A ``.part`` file untouched for this long belongs to no running download.
STALE_PART_SECONDS = 600.0


class DownloadError(OSError):
    """A model file could not be downloaded or did not pass its checks."""


def cache_dir() -> Path:
    """The folder that holds downloaded weights (not created here).

    ``$SAMSCOPE_CACHE_DIR`` wins when set. Otherwise the platform's user cache:
    ``$XDG_CACHE_HOME/napari-samscope`` or ``~/.cache/napari-samscope`` on Linux,
    ``~/Library/Caches/napari-samscope`` on macOS and
    ``%LOCALAPPDATA%\\napari-samscope\\Cache`` on Windows.
    """
    override = os.environ.get(CACHE_ENV_VAR, "").strip()
    if override:
        return Path(override).expanduser()
    home = Path.home()
    if sys.platform.startswith("win"):
        base = os.environ.get("LOCALAPPDATA", "").strip()
        return (Path(base) if base else home / "AppData" / "Local") / _APP_NAME / "Cache"
    if sys.platform == "darwin":
        return home / "Library" / "Caches" / _APP_NAME
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg) if xdg and Path(xdg).is_absolute() else home / ".cache") / _APP_NAME


def cached_file(spec: ModelSpec, dest_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where ``spec``'s file lives (or will live) in the cache: ``<cache>/<spec.filename>``."""
    return Path(dest_dir if dest_dir is not None else cache_dir()) / spec.filename


def file_sha256(
    path: str | os.PathLike[str], on_chunk: Callable[[int], Any] | None = None
) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks; ``on_chunk(n_bytes)`` after each."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK_SIZE):
            digest.update(chunk)
            if on_chunk is not None:
                on_chunk(len(chunk))
    return digest.hexdigest()


def _hash_sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256.json")


def _remember_sha256(path: Path, digest: str) -> None:
    """Write ``<path>.sha256.json``; a read-only folder only means hashing again next time."""
    stat = path.stat()
    record = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
    with contextlib.suppress(OSError):
        _hash_sidecar(path).write_text(json.dumps(record), encoding="utf-8")


def verified_sha256(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of ``path``, read from its sidecar when the file's size and
    modification time are those recorded there, else computed and recorded."""
    path = Path(path)
    stat = path.stat()
    try:
        record = json.loads(_hash_sidecar(path).read_text(encoding="utf-8"))
        if record["size"] == stat.st_size and record["mtime_ns"] == stat.st_mtime_ns:
            return str(record["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    digest = file_sha256(path)
    _remember_sha256(path, digest)
    return digest


def cached_state(spec: ModelSpec, path: str | os.PathLike[str] | None = None) -> str:
    """``"missing"``, ``"incomplete"`` (wrong size), ``"corrupt"`` (wrong sha256) or
    ``"ok"`` for ``spec``'s file at ``path`` (default: its place in the cache). The hash
    is checked when the registry knows it, through :func:`verified_sha256`."""
    path = Path(path) if path is not None else cached_file(spec)
    try:
        if not path.is_file():
            return "missing"
        if spec.size is not None and path.stat().st_size != spec.size:
            return "incomplete"
        if spec.sha256 is not None and verified_sha256(path) != spec.sha256.lower():
            return "corrupt"
    except OSError:
        return "missing"
    return "ok"


def corrupt_message(spec: ModelSpec, path: Path) -> str:
    """The sentence for a cached file of the right size whose content is not the registered one."""
    return (
        f"The file {path} for model {spec.name!r} is damaged or not the registered file: its "
        f"sha256 does not match the registry's {spec.sha256}. Delete {path} and load the model "
        "again to download a fresh copy."
    )


def _remove_stale_parts(dest: Path) -> None:
    """Delete ``<dest>.*.part`` files left by downloads that were killed."""
    now = time.time()
    for part in dest.parent.glob(f"{dest.name}.*.part"):
        with contextlib.suppress(OSError):
            if now - part.stat().st_mtime > STALE_PART_SECONDS:
                part.unlink()


def _xxh128_hasher() -> Any:
    """A streaming xxh128 (the hash micro-sam publishes for its models)."""
    try:
        import xxhash
    except ImportError:
        raise DownloadError(
            "Checking this model's download needs the 'xxhash' package: pip install xxhash"
        ) from None
    return xxhash.xxh128()


def _by_hand_hint(spec: ModelSpec, dest: Path) -> str:
    return (
        f"If this computer is offline, download {spec.url} on another computer and put the "
        f"file at {dest} (exactly this name; set ${CACHE_ENV_VAR} to use another folder), "
        "then try again."
    )


def _describe_reason(error: BaseException) -> str:
    reason = getattr(error, "reason", error)
    if isinstance(reason, socket.timeout | TimeoutError):
        return "the connection timed out"
    if isinstance(reason, ConnectionRefusedError):
        return "the connection was refused"
    if isinstance(reason, socket.gaierror):
        return "the server name could not be resolved (no internet connection?)"
    return str(reason) or type(reason).__name__


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def download_iter(
    spec: ModelSpec,
    dest_dir: str | os.PathLike[str] | None = None,
    timeout: float = 30.0,
) -> Generator[Progress, None, Path]:
    """Download ``spec.url`` into the cache, yielding byte progress; returns the file path.

    Does nothing (and yields nothing) when the file is already in the cache with
    the expected size and sha256 (the hash is remembered, see :func:`verified_sha256`).
    Otherwise removes stale ``.part`` files of killed downloads and streams the file in 1 MiB chunks into a ``.part``
    file, hashing as it goes, and renames it into place only when the byte count
    matches ``Content-Length`` and ``spec.size``, and the sha256 matches
    ``spec.sha256`` (each check only when the value is known).

    Args:
        spec: the registry entry (needs ``url``, ``filename``, ``size``, ``sha256``).
        dest_dir: folder to download into; default :func:`cache_dir` (created if needed).
        timeout: seconds to wait for the connection and for each chunk.

    Yields:
        ``Progress("downloading <filename>", bytes_done, bytes_total)``; ``total`` is
        0 when neither the registry nor the server states the size.

    Raises:
        ValueError: the model has no download URL.
        DownloadError: unreachable server, HTTP error, timeout, truncated transfer,
            size or hash mismatch, or a cached file of the right size with the wrong
            content (the message names the file to delete). The message says where to
            put the file by hand.
    """
    if not spec.url:
        raise ValueError(
            f"Model {spec.name!r} has no download URL; give the path of its weights file instead."
        )
    dest = cached_file(spec, dest_dir)
    if dest.is_file() and (spec.size is None or dest.stat().st_size == spec.size):
        if spec.sha256 is not None and verified_sha256(dest) != spec.sha256.lower():
            raise DownloadError(corrupt_message(spec, dest))
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_parts(dest)
    message = f"downloading {spec.filename}"
    request = urllib.request.Request(spec.url, headers={"User-Agent": _USER_AGENT})
    fd, part_name = tempfile.mkstemp(dir=dest.parent, prefix=f"{dest.name}.", suffix=".part")
    part = Path(part_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                response = urllib.request.urlopen(request, timeout=timeout)
            except urllib.error.HTTPError as error:
                raise DownloadError(
                    f"Could not download model {spec.name!r}: the server answered HTTP "
                    f"{error.code} ({error.reason}) for {spec.url}. {_by_hand_hint(spec, dest)}"
                ) from error
            except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
                raise DownloadError(
                    f"Could not download model {spec.name!r} from {spec.url}: "
                    f"{_describe_reason(error)}. {_by_hand_hint(spec, dest)}"
                ) from error
            with response:
                header = response.headers.get("Content-Length")
                announced = int(header) if header and header.strip().isdigit() else None
                if spec.size is not None and announced is not None and announced != spec.size:
                    raise DownloadError(
                        f"The server offers {announced:,} bytes for model {spec.name!r} but "
                        f"{spec.size:,} were expected; the file at {spec.url} is not the "
                        "registered one. Nothing was saved."
                    )
                total = spec.size if spec.size is not None else (announced or 0)
                digest = hashlib.sha256()
                xxh = _xxh128_hasher() if spec.xxh128 is not None else None
                done = 0
                yield Progress(message, 0, total)
                while True:
                    try:
                        chunk = response.read(_CHUNK_SIZE)
                    except (OSError, http.client.HTTPException) as error:  # IncompleteRead...
                        raise DownloadError(
                            f"The download of model {spec.name!r} broke off after {done:,} "
                            f"bytes: {_describe_reason(error)}. Nothing was saved; try again. "
                            f"{_by_hand_hint(spec, dest)}"
                        ) from error
                    if not chunk:
                        break
                    out.write(chunk)
                    digest.update(chunk)
                    if xxh is not None:
                        xxh.update(chunk)
                    done += len(chunk)
                    yield Progress(message, done, total)
        expected = announced if announced is not None else spec.size
        if expected is not None and done != expected:
            raise DownloadError(
                f"The download of model {spec.name!r} was cut short: received {done:,} of "
                f"{expected:,} bytes. Nothing was saved; try again. {_by_hand_hint(spec, dest)}"
            )
        if spec.size is not None and done != spec.size:
            raise DownloadError(
                f"The file downloaded for model {spec.name!r} has {done:,} bytes but "
                f"{spec.size:,} were expected. Nothing was saved."
            )
        actual = digest.hexdigest()
        if spec.sha256 is not None and actual != spec.sha256.lower():
            raise DownloadError(
                f"The file downloaded for model {spec.name!r} is damaged or not the registered "
                f"one: its sha256 is {actual} but {spec.sha256} was expected. It was deleted; "
                f"try again. {_by_hand_hint(spec, dest)}"
            )
        if xxh is not None and xxh.hexdigest() != spec.xxh128.lower():
            raise DownloadError(
                f"The file downloaded for model {spec.name!r} is damaged or not the registered "
                f"one: its xxh128 is {xxh.hexdigest()} but {spec.xxh128} was expected. It was "
                f"deleted; try again. {_by_hand_hint(spec, dest)}"
            )
        os.replace(part, dest)
        _remember_sha256(dest, actual)
    except BaseException:  # includes GeneratorExit (cancel) and KeyboardInterrupt
        _remove_quietly(part)
        raise
    return dest


def download(
    spec: ModelSpec,
    dest_dir: str | os.PathLike[str] | None = None,
    progress: Callable[[Progress], Any] | str | None = "tqdm",
    timeout: float = 30.0,
) -> Path:
    """Headless :func:`download_iter`: ``progress`` is ``"tqdm"``, a callback or ``None``."""
    return run(download_iter(spec, dest_dir=dest_dir, timeout=timeout), progress=progress)
