"""The batch jobs on a dask cluster (``pip install 'napari-samscope[distributed]'``).

The core runs everything in one process; this package hands the same core jobs to the
workers of a ``dask.distributed`` cluster, one task per file (or per few tiles of a
plane), so that a folder of many images is annotated or segmented, or the planes of a
stack are embedded, by a local cluster of worker processes, by the workers of an
existing scheduler, or by a Slurm or Kubernetes cluster (dask-jobqueue,
dask-kubernetes) without changes here. The core never imports this package, and
``distributed`` itself is imported only when a scheduler is asked for.

- :func:`~.annotate.auto_annotate`: ``auto_annotate`` with ``scheduler`` / ``workers``;
- :func:`~.everything.everything_folder_job`: ``samscope everything`` on a folder
  (``amg``, ``ais``, ``apg``), one task per image;
- :func:`~.embed.embed_job`: ``samscope embed``, the missing tiles of every plane
  encoded by the workers into one embedding store;
- :mod:`.cluster`: the scheduler choice (:class:`~.cluster.ClusterSpec`), the client,
  and :func:`~.cluster.run_tasks` (retries, one progress report per task);
- :mod:`.worker`: the model each worker process loads once and keeps.
"""

from napari_samscope.distributed.annotate import auto_annotate
from napari_samscope.distributed.cluster import INSTALL_HINT, ClusterSpec, require_distributed

__all__ = ["INSTALL_HINT", "ClusterSpec", "auto_annotate", "require_distributed"]
