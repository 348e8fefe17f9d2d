"""Where the tasks run: the ``scheduler`` / ``workers`` choice and the dask client.

- ``scheduler=None``: in the calling process (no dask at all);
- ``scheduler="local"``: a ``LocalCluster`` of ``workers`` single-threaded worker
  processes on the loopback interface, started for the run and closed after it;
- ``scheduler="tcp://host:port"`` (or any address dask accepts, such as ``tls://``):
  an existing scheduler and its workers (a cluster started by hand, by dask-jobqueue
  on Slurm, by dask-kubernetes, ...).

:func:`run_tasks` submits one task per item with dask's retries, reports one
:class:`~napari_samscope.core.progress.Progress` per finished task and returns the
results in submission order; the first task that fails for good cancels the rest.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from napari_samscope.core.progress import Job, Progress

__all__ = [
    "INSTALL_HINT",
    "ClusterSpec",
    "open_client",
    "require_distributed",
    "run_tasks",
    "start_local_cluster",
]

INSTALL_HINT = "pip install 'napari-samscope[distributed]'"
LOCAL = "local"
CONNECT_TIMEOUT_S = 10.0  # seconds to wait for an existing scheduler to answer


def require_distributed() -> Any:
    """The ``distributed`` module, or an ImportError that says how to install it."""
    try:
        import distributed
    except ImportError:
        raise ImportError(
            "running on a dask scheduler needs the 'distributed' package, which is not "
            f"installed; install it with: {INSTALL_HINT}"
        ) from None
    return distributed


@dataclass(frozen=True)
class ClusterSpec:
    """Where to run: ``address`` None (in-process), ``"local"`` or a scheduler address.

    ``workers`` is the number of single-threaded worker processes of a local cluster
    (None: one per CPU core); it cannot be combined with an existing scheduler, whose
    workers are started by whoever started the scheduler.
    """

    address: str | None = None
    workers: int | None = None

    def __post_init__(self) -> None:
        address, workers = self.address, self.workers
        if address is not None and (not isinstance(address, str) or not address.strip()):
            raise ValueError(f"scheduler must be None, 'local' or an address such as tcp://host:8786, not {address!r}")
        if workers is not None:
            if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
                raise ValueError(f"workers must be a whole number of at least 1, not {workers!r}")
            if address is None:
                object.__setattr__(self, "address", LOCAL)
            elif address != LOCAL:
                raise ValueError(
                    "workers applies to scheduler='local' only; the workers of an existing "
                    f"scheduler ({address}) are started with it (dask worker, dask-jobqueue, ...)"
                )
        if self.address is not None and self.address != LOCAL and "://" not in self.address:
            raise ValueError(
                f"scheduler {self.address!r} is neither 'local' nor an address such as tcp://host:8786"
            )

    @property
    def in_process(self) -> bool:
        return self.address is None

    @property
    def local_workers(self) -> int:
        return self.workers or os.cpu_count() or 1


@contextlib.contextmanager
def open_client(spec: ClusterSpec, echo: Callable[[str], Any] | None = print) -> Iterator[Any]:
    """A connected ``distributed.Client`` for ``spec`` (closed, with its local cluster, on exit).

    ``echo`` receives one line with the dashboard address when the cluster has one.

    Raises:
        ImportError: ``distributed`` is not installed (the message has the install command).
        ValueError: ``spec`` is in-process, or the scheduler does not answer.
    """
    if spec.in_process:
        raise ValueError("open_client needs a scheduler ('local' or an address), not None")
    distributed = require_distributed()
    cluster = None
    try:
        if spec.address == LOCAL:
            cluster = start_local_cluster(spec.local_workers)
            client = distributed.Client(cluster)
        else:
            try:
                client = distributed.Client(spec.address, timeout=CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError, ValueError) as exc:
                raise ValueError(
                    f"could not reach a dask scheduler at {spec.address} "
                    f"({' '.join(str(exc).split()) or type(exc).__name__}); check the address and that "
                    "the scheduler is running ('dask scheduler' prints its address)"
                ) from None
        try:
            link = dashboard_link(client)
            if link and echo is not None:
                echo(f"dask dashboard: {link}")
            yield client
        finally:
            client.close()
    finally:
        if cluster is not None:
            cluster.close()


def start_local_cluster(workers: int, dashboard: bool = True) -> Any:
    """A ``LocalCluster`` of ``workers`` single-threaded processes on the loopback interface.

    The workers start without dask's default ``MALLOC_TRIM_THRESHOLD_``: a fixed malloc
    threshold makes every large tensor allocation a fresh ``mmap`` (page faults on each
    model call), which slows the model down markedly; the memory a worker
    frees is then kept for its next image instead of being handed back at once.
    """
    import dask

    distributed = require_distributed()
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        return distributed.LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address="127.0.0.1:0" if dashboard else None,
        )


def dashboard_link(client: Any) -> str | None:
    """The dashboard address of the client's scheduler, None when it serves none."""
    try:
        services = client.scheduler_info().get("services", {})
    except Exception:  # an old scheduler or a closed client: no link to show
        return None
    return client.dashboard_link if "dashboard" in services else None


def run_tasks(
    client: Any,
    function: Callable[..., Any],
    arguments: Sequence[tuple[Any, ...]],
    *,
    retries: int = 2,
    message: str = "tasks",
) -> Job[list[Any]]:
    """Run ``function(*args)`` for every ``args`` of ``arguments`` on the cluster.

    A task whose worker dies is rerun elsewhere by the scheduler; a task that raises is
    retried ``retries`` times. Yields one ``Progress`` per finished task.

    Returns:
        The results, in the order of ``arguments``.

    Raises:
        The first error of a task that failed for good (the other tasks are cancelled).
    """
    distributed = require_distributed()
    if int(retries) < 0:
        raise ValueError(f"retries must be 0 or more, not {retries}")
    total = len(arguments)
    futures = [
        client.submit(function, *args, retries=int(retries), pure=False) for args in arguments
    ]
    order = {future.key: index for index, future in enumerate(futures)}
    results: list[Any] = [None] * total
    yield Progress(message, 0, total)
    try:
        for done, future in enumerate(distributed.as_completed(futures), start=1):
            results[order[future.key]] = future.result()
            yield Progress(message, done, total)
    finally:
        client.cancel([f for f in futures if not f.done()])
    return results
