"""``core.host_memory``: glibc's malloc keeps large freed blocks for the next pass.

Each check that touches malloc runs in a fresh interpreter: the thresholds are a
process-wide setting, set once. The library sets them only when asked (the ``samscope``
command, ``SAMSCOPE_HOST_MALLOC=keep``, or a call).
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from napari_samscope.core import host_memory

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
needs_glibc = pytest.mark.skipif(not GLIBC, reason="the thresholds are glibc's (Linux)")

# Allocate, write and free 64 MB with glibc's malloc four times; count the page faults of
# the last two rounds. Fresh pages from the kernel fault once per 4 KB page written.
_PROBE = """
import ctypes, json, resource, sys
from napari_samscope.core import host_memory
mode = sys.argv[1]
if mode == "sam":
    from napari_samscope.core.modeling.build import build_sam, tiny_config
    from napari_samscope.core.predict.sam_api import SAM
    SAM.from_sam(build_sam(tiny_config("vit", 64)), device="cpu")
elif mode == "call":
    host_memory.keep_freed_memory()
elif mode == "cli":
    from napari_samscope.cli.main import main
    assert main(["models"]) == 0
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
faults = []
for _ in range(4):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(64 << 20)
    ctypes.memset(block, 1, 64 << 20)
    libc.free(block)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"kept": host_memory._state, "faults": faults[-2:]}))
"""


def _probe(mode: str, **env: str) -> dict:
    import os

    ours = ("SAMSCOPE_HOST_MALLOC", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
            "GLIBC_TUNABLES", "LD_PRELOAD")
    environ = {k: v for k, v in os.environ.items() if k not in ours}
    environ.update(env)
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, env=environ,
        timeout=120, check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


PAGES = (64 << 20) // 4096  # 16,384 pages of 4 KB in the block


@needs_glibc
@pytest.mark.parametrize(
    ("mode", "setting", "kept"),
    [
        ("none", "", None),  # the baseline the module exists for: fresh pages each time
        ("call", "", True),
        ("sam", "", None),  # loading a model leaves the process alone unless asked
        ("sam", "keep", True),
        ("cli", "", True),  # the samscope command is a process of its own
        ("call", "default", False),
        ("cli", "default", False),
    ],
)
def test_who_keeps_freed_memory_and_what_it_saves(mode: str, setting: str, kept) -> None:
    result = _probe(mode, **({"SAMSCOPE_HOST_MALLOC": setting} if setting else {}))
    assert result["kept"] is kept
    if kept:
        assert max(result["faults"]) < PAGES // 20  # the same pages again
    else:
        assert min(result["faults"]) > PAGES // 2  # a 64 MB block mapped anew each time


@needs_glibc
@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("SAMSCOPE_HOST_MALLOC", "default", "SAMSCOPE_HOST_MALLOC=default"),
        ("MALLOC_MMAP_THRESHOLD_", "1048576", "MALLOC_MMAP_THRESHOLD_ is set"),
        ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0", "GLIBC_TUNABLES is set"),
        ("LD_PRELOAD", "/usr/lib/libjemalloc.so.2", "another allocator is preloaded"),
    ],
)
def test_settings_of_the_user_win(monkeypatch, name, value, reason) -> None:
    for other in ("SAMSCOPE_HOST_MALLOC", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
                  "GLIBC_TUNABLES", "LD_PRELOAD"):
        monkeypatch.delenv(other, raising=False)
    assert host_memory.why_not_kept() is None
    monkeypatch.setenv(name, value)
    assert host_memory.why_not_kept() == reason


def test_a_bad_setting_is_a_clear_error(monkeypatch, capsys) -> None:
    monkeypatch.setenv("SAMSCOPE_HOST_MALLOC", "off")
    with pytest.raises(ValueError, match="SAMSCOPE_HOST_MALLOC must be 'keep' or 'default'"):
        host_memory.why_not_kept()
    with pytest.raises(ValueError, match="SAMSCOPE_HOST_MALLOC must be"):
        host_memory.keep_if_requested()
    from napari_samscope.cli.main import main

    assert main(["models"]) == 2
    assert "SAMSCOPE_HOST_MALLOC must be 'keep' or 'default', not 'off'" in capsys.readouterr().err


def test_other_platforms_are_left_alone(monkeypatch) -> None:
    monkeypatch.delenv("SAMSCOPE_HOST_MALLOC", raising=False)
    monkeypatch.setattr(host_memory.sys, "platform", "darwin")
    assert host_memory.why_not_kept() == "not glibc on Linux"
