"""The result of a prompted prediction: masks, scores, low-resolution logits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Prediction", "LABEL_ORDERS"]

#: Accepted values of ``Prediction.to_label_image(order=...)``.
LABEL_ORDERS = ("area", "score", "index")


@dataclass
class Prediction:
    """Masks predicted for one image.

    Attributes:
        masks: ``(N, H, W) bool`` at the original image size.
        scores: ``(N,) float32``, the model's predicted IoU of each mask.
        logits: ``(N, L, L) float32`` low-resolution logits of the same masks (``L = 4 * E``,
            256 for 1024-input models), ready to be fed back as a mask prompt; or None.

    For one object the ``N`` masks are its candidates (3 with ``multimask_output``,
    else 1); for several objects there is one mask per object, in prompt order.
    """

    masks: np.ndarray
    scores: np.ndarray
    logits: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.masks = np.asarray(self.masks, dtype=bool)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        if self.masks.ndim != 3:
            raise ValueError(f"masks must be (N, H, W), not shape {self.masks.shape}.")
        if self.scores.shape[0] != self.masks.shape[0]:
            raise ValueError(
                f"There are {self.masks.shape[0]} masks but {self.scores.shape[0]} scores."
            )
        if self.logits is not None:
            self.logits = np.asarray(self.logits, dtype=np.float32)
            if self.logits.ndim != 3 or self.logits.shape[0] != self.masks.shape[0]:
                raise ValueError(
                    f"logits must be (N, L, L) with N={self.masks.shape[0]}, "
                    f"not shape {self.logits.shape}."
                )

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the masks (the original image size)."""
        return int(self.masks.shape[1]), int(self.masks.shape[2])

    @property
    def areas(self) -> np.ndarray:
        """``(N,) int64`` number of pixels of each mask."""
        return self.masks.reshape(len(self), -1).sum(axis=1, dtype=np.int64)

    def best(self) -> Prediction:
        """The highest-scored mask alone, as a one-mask :class:`Prediction`."""
        if len(self) == 0:
            raise ValueError("This prediction holds no masks.")
        i = int(np.argmax(self.scores))
        logits = None if self.logits is None else self.logits[i : i + 1]
        return Prediction(self.masks[i : i + 1], self.scores[i : i + 1], logits)

    def to_label_image(self, order: str = "area") -> np.ndarray:
        """Paint the masks into one ``(H, W) uint32`` label image (0 = background).

        Mask ``i`` gets label ``i + 1`` whatever the painting order. Where masks overlap,
        the one painted last wins:

        - ``"area"`` (default): larger masks first, so small objects stay visible;
        - ``"score"``: lower scores first, so the most confident mask wins;
        - ``"index"``: in mask order, so later masks win.
        """
        if order not in LABEL_ORDERS:
            raise ValueError(f"order must be one of {LABEL_ORDERS}, not {order!r}.")
        if len(self) >= np.iinfo(np.uint32).max:
            raise ValueError("Too many masks for a uint32 label image.")
        if order == "area":
            sequence = np.argsort(-self.areas, kind="stable")
        elif order == "score":
            sequence = np.argsort(self.scores, kind="stable")
        else:
            sequence = np.arange(len(self))
        labels = np.zeros(self.image_size, dtype=np.uint32)
        for i in sequence:
            labels[self.masks[i]] = i + 1
        return labels

    def boxes(self) -> np.ndarray:
        """``(N, 4) float32`` XYXY box of each mask, in pixels of the original image.

        ``x0, y0`` are the first and ``x1, y1`` the last column/row that holds the mask
        (inclusive, as the official ``batched_mask_to_box``). An empty mask gets a row of
        NaN, so it cannot be mistaken for a one-pixel box.
        """
        out = np.full((len(self), 4), np.nan, dtype=np.float32)
        for i, mask in enumerate(self.masks):
            cols = np.flatnonzero(mask.any(axis=0))
            if cols.size == 0:
                continue
            rows = np.flatnonzero(mask.any(axis=1))
            out[i] = (cols[0], rows[0], cols[-1], rows[-1])
        return out
