"""The fine-tuning dock's plot: training loss and first-prompt IoU per step."""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

__all__ = ["LossPlot", "LOSS_COLOUR", "IOU_COLOUR"]

LOSS_COLOUR = QColor(255, 140, 0)
IOU_COLOUR = QColor(60, 170, 255)


class LossPlot(QWidget):
    """Per-step training loss (orange, left axis 0..max) and first-prompt IoU (blue, right
    axis 0..1), with a legend."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.ious: list[float] = []
        self.setMinimumHeight(90)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.setToolTip("Training loss (orange, left axis) and IoU of the first prompt "
                        "(blue, right axis, 0 to 1)")

    def clear(self) -> None:
        self.steps, self.losses, self.ious = [], [], []
        self.update()

    def add(self, step: int, loss: float, iou: float) -> None:
        self.steps.append(int(step))
        self.losses.append(float(loss))
        self.ious.append(float(iou))
        self.update()

    def _line(self, values: list[float], top: float, rect: Any) -> QPolygonF:
        last, top = max(self.steps[-1], 1), top if top > 0 else 1.0
        return QPolygonF([
            QPointF(rect.left() + rect.width() * s / last,
                    rect.bottom() - rect.height() * min(max(v / top, 0.0), 1.0))
            for s, v in zip(self.steps, values)
        ])

    def paintEvent(self, event: Any) -> None:  # noqa: N802 (Qt name)
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        rect = self.rect().adjusted(34, 20, -30, -18)
        painter.setPen(QPen(self.palette().mid().color()))
        painter.drawRect(rect)
        x = rect.left()
        for text, colour in (("loss (left axis)", LOSS_COLOUR), ("IoU (right axis, 0-1)", IOU_COLOUR)):
            painter.setPen(QPen(colour, 2))
            painter.drawLine(x, 10, x + 14, 10)
            painter.setPen(self.palette().text().color())
            painter.drawText(x + 18, 14, text)
            x += 24 + painter.fontMetrics().horizontalAdvance(text)
        if not self.steps:
            painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, "loss and IoU appear here")
        else:
            top = max(self.losses)
            painter.setPen(LOSS_COLOUR)
            painter.drawText(2, rect.top() + 10, f"{top:.2g}")
            painter.drawText(2, rect.bottom(), "0")
            painter.setPen(IOU_COLOUR)
            painter.drawText(rect.right() + 4, rect.top() + 10, "1")
            painter.drawText(rect.right() + 4, rect.bottom(), "0")
            painter.setPen(self.palette().text().color())
            painter.drawText(rect.left(), rect.bottom() + 15, f"step {self.steps[-1]}")
            for values, colour, scale in ((self.losses, LOSS_COLOUR, top), (self.ious, IOU_COLOUR, 1.0)):
                painter.setPen(QPen(colour, 1.5))
                painter.drawPolyline(self._line(values, scale, rect))
        painter.end()
