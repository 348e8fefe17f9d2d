"""The output folder's record of which source file each output belongs to.

``auto_annotate`` keeps ``samscope_manifest.json`` in its output folder. Per output stem
it records the source file (its resolved path), the source's size, modification time and
sha256, and the names of the files written for it. The manifest gives three guarantees:

- **stable names**: a source keeps the stem it got on its first run, whatever files are
  added to the folder later (``x.tif`` stays ``x.txt`` when ``x.png`` appears; the new
  file gets ``x_png.txt``);
- **"already done" checks the source**: outputs count as done only when the manifest
  says they were made from this very file with this very content; a changed source
  (other content under the same name) is annotated again;
- **outputs are never inputs**: when the output folder is the input folder, the files
  the manifest lists are left out of the images to annotate.

The hash is computed once per file version and remembered with its size and
modification time, so a re-run over an unchanged folder does not re-read every image.
The manifest is written atomically after each annotated file, so an interrupted run
keeps the record of everything it finished. Several processes may annotate into one
folder at once (the distributed runner does): a save holds an exclusive ``flock`` on the
output folder itself, merges what is on disk with the stems this process recorded, and
writes the result, so no process loses another's records.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["MANIFEST_NAME", "Manifest", "SourceRecord", "resolved_path", "source_fingerprint"]

MANIFEST_NAME = "samscope_manifest.json"
_FORMAT = "napari-samscope-outputs/1"
_CHUNK = 1 << 20


@dataclass
class SourceRecord:
    """What the manifest knows about the outputs of one stem.

    Attributes:
        source: resolved path of the source image.
        size: its size in bytes when it was annotated.
        mtime_ns: its modification time (nanoseconds) when it was annotated.
        sha256: hex sha256 of its content.
        outputs: the names of the files written for it, in the output folder.
        settings: what else the outputs depend on (a command's options, the model), as
            the command that wrote them spells it; ``""`` when nothing is recorded.
    """

    source: str
    size: int
    mtime_ns: int
    sha256: str
    outputs: list[str] = field(default_factory=list)
    settings: str = ""

    def to_json(self) -> dict:
        data = asdict(self)
        if not self.settings:  # manifests without settings keep their layout
            del data["settings"]
        return data


def resolved_path(path: Path) -> Path:
    """``path.resolve()``, or the absolute path of a link that loops back to itself."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return path.absolute()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def source_fingerprint(path: Path, known: SourceRecord | None = None) -> tuple[int, int, str]:
    """``(size, mtime_ns, sha256)`` of ``path``; the hash of ``known`` is reused when its
    size and modification time still match (the file was not touched since)."""
    stat = path.stat()
    if known is not None and known.size == stat.st_size and known.mtime_ns == stat.st_mtime_ns:
        return stat.st_size, stat.st_mtime_ns, known.sha256
    return stat.st_size, stat.st_mtime_ns, _sha256(path)


class Manifest:
    """The manifest of one output folder (see the module docstring)."""

    def __init__(self, folder: Path, records: dict[str, SourceRecord] | None = None,
                 existed: bool = False) -> None:
        self.folder = folder
        #: output stem -> record
        self.records: dict[str, SourceRecord] = dict(records or {})
        #: whether the folder had a manifest when it was loaded (False for a new folder or
        #: a folder written by a version that kept none)
        self.existed = existed
        #: stems this instance recorded or refreshed since it was loaded (what a save merges)
        self._changed: set[str] = set()

    @property
    def path(self) -> Path:
        return self.folder / MANIFEST_NAME

    @classmethod
    def load(cls, folder: Path) -> Manifest:
        """Read ``folder``'s manifest; an empty one when there is none.

        Raises:
            ValueError: the manifest exists but cannot be read (the message says to
                delete it, which makes every output count as not done).
        """
        records = cls._read(folder / MANIFEST_NAME)
        return cls(folder) if records is None else cls(folder, records, existed=True)

    @staticmethod
    def _read(path: Path) -> dict[str, SourceRecord] | None:
        """The records of the manifest file at ``path``, None when there is none."""
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            records = {
                str(stem): SourceRecord(
                    source=str(item["source"]), size=int(item["size"]), mtime_ns=int(item["mtime_ns"]),
                    sha256=str(item["sha256"]), outputs=[str(n) for n in item.get("outputs", [])],
                    settings=str(item.get("settings", "")),
                )
                for stem, item in data["sources"].items()
            }
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(
                f"the output manifest {path} cannot be read ({exc}); delete it to start the "
                "record afresh (every image is then annotated again)"
            ) from None
        return records

    def stem_of(self, source: Path) -> str | None:
        """The stem recorded for ``source`` (compared by resolved path), or None."""
        key = str(resolved_path(source))
        return next((stem for stem, rec in self.records.items() if rec.source == key), None)

    def output_paths(self) -> set[Path]:
        """Resolved paths of every output the manifest lists, and of the manifest itself."""
        folder = self.folder.resolve()
        names = {MANIFEST_NAME, *(n for rec in self.records.values() for n in rec.outputs)}
        return {folder / n for n in names}

    def is_done(self, stem: str, source: Path, outputs: Iterable[Path],
                settings: str | None = None) -> bool:
        """True when every path of ``outputs`` exists and the manifest records them as
        made from ``source`` with its current content (and, when ``settings`` is given,
        with these settings)."""
        outputs = list(outputs)
        if not all(p.exists() for p in outputs):
            return False
        record = self.records.get(stem)
        if record is None or record.source != str(resolved_path(source)):
            return False
        if settings is not None and record.settings != settings:
            return False
        if not {p.name for p in outputs} <= set(record.outputs):
            return False
        size, mtime_ns, digest = source_fingerprint(source, record)
        if digest != record.sha256:
            return False
        if (size, mtime_ns) != (record.size, record.mtime_ns):
            record.size, record.mtime_ns = size, mtime_ns  # same content, touched: remember
            self._changed.add(stem)
        return True

    def record(self, stem: str, source: Path, outputs: Iterable[Path], keep: bool = True,
               settings: str = "") -> None:
        """Record that ``outputs`` were made from ``source`` (its current content) under
        ``stem`` with ``settings``; with ``keep``, names recorded earlier for the same
        source are kept."""
        known = self.records.get(stem)
        same_source = known is not None and known.source == str(resolved_path(source))
        size, mtime_ns, digest = source_fingerprint(source, known if same_source else None)
        names = [p.name for p in outputs]
        if keep and same_source:
            names = sorted({*known.outputs, *names})
        self.records[stem] = SourceRecord(str(resolved_path(source)), size, mtime_ns, digest, names,
                                          settings)
        self._changed.add(stem)

    def save(self) -> None:
        """Merge this instance's records into the manifest on disk and write it atomically.

        Records of stems this instance did not touch are taken from disk, so concurrent
        writers (other processes annotating other files into the same folder) keep theirs;
        afterwards this instance holds the merged records too.
        """
        with _folder_lock(self.folder):
            on_disk = self._read(self.path) or {}
            merged = {**on_disk, **{s: self.records[s] for s in self._changed if s in self.records}}
            merged.update({s: r for s, r in self.records.items() if s not in on_disk})
            data = {"format": _FORMAT, "sources": {s: r.to_json() for s, r in sorted(merged.items())}}
            tmp = self.path.with_name(f".{MANIFEST_NAME}.tmp-{os.getpid()}-{threading.get_ident()}")
            try:
                tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")
                os.replace(tmp, self.path)
            finally:
                if tmp.exists():
                    tmp.unlink()
        self.records = merged
        self._changed.clear()
        self.existed = True


@contextlib.contextmanager
def _folder_lock(folder: Path):
    """An exclusive ``flock`` on the folder itself (no lock file is left behind); where the
    platform has no ``flock`` saves are still atomic, only the merge is unguarded."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
