"""Training and fine-tuning SAM-family models (no napari).

- :mod:`.data` - image / instance-label pairs from arrays or folders, prepared exactly as
  inference preprocesses images;
- :mod:`.prompts` - SAM-style prompt sampling with corrective clicks;
- :mod:`.losses` - focal + dice on the best candidate, MSE on the predicted IoU;
- :mod:`.trainer` - :func:`train_iter` / :func:`train` (AdamW, cosine schedule, progress job);
- :mod:`.evaluate` - mean IoU for one random interior point and for the box prompt.
"""

from napari_samscope.core.training.data import PreparedSample, TrainingData, prepare_pair
from napari_samscope.core.training.trainer import (
    TRAINABLE_PARTS,
    TrainConfig,
    TrainResult,
    train,
    train_iter,
)

__all__ = [
    "PreparedSample",
    "TrainingData",
    "prepare_pair",
    "TRAINABLE_PARTS",
    "TrainConfig",
    "TrainResult",
    "train",
    "train_iter",
]
