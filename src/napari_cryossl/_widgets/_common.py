"""Small Qt pieces shared by the workflow sections: messages, progress with ETA, a loss plot.

The loss plot is a hand-written QPainter widget (about 80 lines) instead of a matplotlib
canvas: it redraws in well under a millisecond on every training step, so the live plot
never competes with napari for the GUI thread, and it needs no extra dependency.
"""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, Qt, Signal
from qtpy.QtGui import QColor, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)


def friendly_message(exc: BaseException) -> str:
    """One line a scientist can act on, for any error a workflow step can raise."""
    from napari_cryossl.io import InputError

    text = str(exc).strip()
    if isinstance(exc, InputError):
        return text
    name = type(exc).__name__
    if "OutOfMemoryError" in name or "out of memory" in text.lower():
        return (
            "out of GPU memory: lower the batch size (or use a smaller model preset) "
            f"and start again ({text.splitlines()[0] if text else name})"
        )
    if isinstance(exc, FileNotFoundError):
        return f"file not found: {exc.filename or text}"
    if isinstance(exc, PermissionError):
        return f"not allowed to write {exc.filename or text}"
    return f"{name}: {text}" if text else name


def notify_error(exc: BaseException | str) -> str:
    """Show an error as a napari notification (input errors without a traceback).

    Returns:
        The message shown, for the widget's own status line.
    """
    from napari.utils.notifications import notification_manager, show_error

    if isinstance(exc, str):
        show_error(exc)
        return exc
    from napari_cryossl.io import InputError

    message = friendly_message(exc)
    if isinstance(exc, (InputError, FileNotFoundError, PermissionError)) or "memory" in message:
        show_error(message)
    else:  # an unexpected failure: keep the traceback one click away
        notification_manager.receive_error(type(exc), exc, exc.__traceback__)
    return message


def notify_info(message: str) -> None:
    from napari.utils.notifications import show_info

    show_info(message)


def set_path_label(label, path, empty: str = "none yet") -> None:
    """Show a path as its last two parts (the whole path in the tooltip): long paths
    without spaces cannot wrap and would widen the dock."""
    from pathlib import Path

    if path is None:
        label.setText(empty)
        label.setToolTip("")
        return
    path = Path(path)
    parts = path.parts
    label.setText(str(path) if len(parts) <= 3 else "…/" + "/".join(parts[-2:]))
    label.setToolTip(str(path))


def enclosing_scroll_area(widget) -> QScrollArea | None:
    """The scroll area a dock section sits in (QToolBox gives each its own), or None."""
    parent = widget.parent()
    while parent is not None and not isinstance(parent, QScrollArea):
        parent = parent.parent()
    return parent


def compact_combo(combo: QComboBox, chars: int = 6) -> QComboBox:
    """A combo box that asks for room for ``chars`` characters, not its longest item, and
    grows with the dock: napari's styled combo boxes otherwise push a section sideways."""
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(chars)
    combo.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
    return combo


class ElidedLabel(QLabel):
    """A one-line label that shortens its text with "…" to the width it gets (the whole
    text in the tooltip), instead of widening the dock: for names that cannot wrap."""

    def __init__(self, text: str = "", parent=None) -> None:
        super().__init__(parent)
        self._full = ""
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.setText(text)

    def setText(self, text: str) -> None:  # noqa: N802 (Qt naming)
        self._full = str(text)
        self.setToolTip(self._full)
        self._elide()

    def text(self) -> str:
        return self._full

    def minimumSizeHint(self):  # noqa: N802 (Qt naming)
        hint = super().minimumSizeHint()
        hint.setWidth(min(hint.width(), self.fontMetrics().horizontalAdvance("x" * 8)))
        return hint

    def sizeHint(self):  # noqa: N802 (Qt naming)
        return self.minimumSizeHint()

    def resizeEvent(self, event) -> None:  # noqa: N802 (Qt naming)
        super().resizeEvent(event)
        self._elide()

    def _elide(self) -> None:
        shown = self.fontMetrics().elidedText(
            self._full, Qt.TextElideMode.ElideMiddle, max(self.width(), 1)
        )
        super().setText(shown)


def format_duration(seconds: float) -> str:
    """'1:05' / '1:02:03' for a progress line."""
    if not math.isfinite(seconds) or seconds < 0:
        return "--:--"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class StatusLine(QLabel):
    """A wrapped one-line message under a section; errors in red."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setWordWrap(True)
        self.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.is_error = False

    def info(self, text: str) -> None:
        self.is_error = False
        self.setStyleSheet("")
        self.setText(text)

    def error(self, text: str) -> None:
        self.is_error = True
        self.setStyleSheet("color: #ff6b6b;")
        self.setText(text)


class LossPlot(QWidget):
    """A live line plot of one or two series (e.g. loss and accuracy) against steps."""

    _COLORS = ("#4fc3f7", "#ffb74d", "#81c784", "#e57373")

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setMinimumHeight(110)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.series: dict[str, list[tuple[float, float]]] = {}

    def clear(self) -> None:
        self.series = {}
        self.update()

    def add_point(self, name: str, x: float, y: float) -> None:
        if y is None or not math.isfinite(float(y)):
            return
        self.series.setdefault(name, []).append((float(x), float(y)))
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt naming)
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        rect = QRectF(self.rect()).adjusted(46, 6, -6, -16)
        painter.setPen(QPen(QColor("#888888"), 1))
        painter.drawRect(rect)
        points = [p for s in self.series.values() for p in s]
        if not points:
            painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, "loss will appear here")
            painter.end()
            return
        xs = [p[0] for p in points]
        x0, x1 = min(xs), max(xs)
        x1 = x1 if x1 > x0 else x0 + 1
        legend_x = rect.left() + 4
        for k, (name, pts) in enumerate(self.series.items()):
            ys = [p[1] for p in pts]
            y0, y1 = min(ys), max(ys)
            if y1 <= y0:
                y0, y1 = y0 - 0.5, y1 + 0.5
            color = QColor(self._COLORS[k % len(self._COLORS)])
            path = QPainterPath()
            for i, (x, y) in enumerate(pts):
                px = rect.left() + (x - x0) / (x1 - x0) * rect.width()
                py = rect.bottom() - (y - y0) / (y1 - y0) * rect.height()
                if i == 0:
                    path.moveTo(QPointF(px, py))
                else:
                    path.lineTo(QPointF(px, py))
            painter.setPen(QPen(color, 1.5))
            painter.drawPath(path)
            # every series has its own y range: print it in its colour
            painter.drawText(QPointF(2, rect.top() + 10 + 12 * k), f"{y1:.3g}")
            painter.drawText(QPointF(2, rect.bottom() - 12 * k), f"{y0:.3g}")
            label = f"{name} {ys[-1]:.3g}"
            painter.drawText(QPointF(legend_x, rect.bottom() + 13), label)
            legend_x += painter.fontMetrics().horizontalAdvance(label) + 12
        painter.end()


#: The epoch metrics (fractions) a RunPanel shows as percentages, in this order, with their
#: names; ``pseudo_label_rate``: semi-supervised fine-tuning's share of unlabelled
#: particles above the pseudo-label threshold (``train.semi_supervised``).
PERCENT_METRICS = {
    "train_accuracy": "train accuracy",
    "val_accuracy": "val accuracy",
    "best_val_accuracy": "best val accuracy",
    "pseudo_label_rate": "pseudo-labelled",
}


class RunPanel(QWidget):
    """Start / Cancel / Resume buttons, a progress bar with ETA, a metrics line and a loss plot.

    The owning section connects `start_requested`, `cancel_requested` and
    `resume_requested`, and feeds `update_status` with each `status.TrainStatus`.
    """

    start_requested = Signal()
    cancel_requested = Signal()
    resume_requested = Signal()

    def __init__(
        self, start_text: str = "Start", *, resumable: bool = True, plot: bool = True, parent=None
    ) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        buttons = QHBoxLayout()
        self.start_button = QPushButton(start_text)
        self.cancel_button = QPushButton("Cancel")
        self.resume_button = QPushButton("Resume")
        self.cancel_button.setEnabled(False)
        self.resume_button.setEnabled(False)
        self.resume_button.setVisible(resumable)
        self.cancel_button.setToolTip(
            "Stop after the current step; the run so far is kept beside the model file, "
            "and the model in use is not replaced"
        )
        self.resume_button.setToolTip("Continue the last cancelled run from its checkpoint")
        for b in (self.start_button, self.cancel_button, self.resume_button):
            buttons.addWidget(b)
        layout.addLayout(buttons)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setFormat("idle")
        self.progress.setTextVisible(True)
        layout.addWidget(self.progress)
        self.metrics = QLabel("")
        self.metrics.setWordWrap(True)
        layout.addWidget(self.metrics)
        self.plot = LossPlot() if plot else None
        if self.plot is not None:
            layout.addWidget(self.plot)
        self.start_button.clicked.connect(self.start_requested)
        self.cancel_button.clicked.connect(self.cancel_requested)
        self.resume_button.clicked.connect(self.resume_requested)
        self._x = 0
        from napari_cryossl.base.status import TimeLeft

        self.pace = TimeLeft()

    def set_running(self, running: bool) -> None:
        self.start_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        if running:
            self.resume_button.setEnabled(False)

    def reset(self, text: str = "starting…") -> None:
        from napari_cryossl.base.status import TimeLeft

        self.progress.setValue(0)
        self.progress.setFormat(text)
        self.metrics.setText("")
        self.pace = TimeLeft()  # the same estimate of the time left as the command line
        self._x = 0
        if self.plot is not None:
            self.plot.clear()

    def update_status(self, status) -> None:
        """Show one `status.TrainStatus` (or anything with its stage/step/n_steps fields)."""
        frac = status_fraction(status)
        self.progress.setValue(int(round(1000 * frac)))
        n_steps = int(getattr(status, "n_steps", 0) or 0)
        self.pace.update(int(getattr(status, "step", 0) or 0), n_steps)
        eta = self.pace.seconds_left(int(getattr(status, "step", 0) or 0), n_steps)
        done = bool(getattr(status, "done", False))
        event = getattr(status, "event", "step")
        n_epochs = int(getattr(status, "n_epochs", 0) or 0)
        parts = [str(getattr(status, "stage", "") or "")]
        if n_epochs:
            # `epoch` counts completed epochs: the one running is epoch + 1
            running = int(getattr(status, "epoch", 0) or 0) + (
                0 if event in ("epoch", "done") else 1
            )
            parts.append(f"epoch {min(max(running, 1), n_epochs)}/{n_epochs}")
        parts.append(f"{100 * frac:.0f}%")
        parts.append("done" if done else f"ETA {format_duration(eta)}")
        self.progress.setFormat(" · ".join(p for p in parts if p))

        loss = getattr(status, "loss", None)
        metrics = dict(getattr(status, "metrics", {}) or {})
        if event in ("epoch", "done") or not self.metrics.text():
            shown = []
            if loss is not None and math.isfinite(float(loss)):
                shown.append(f"{'mean ' if event == 'epoch' else ''}loss {float(loss):.4g}")
            for key, name in PERCENT_METRICS.items():
                value = metrics.get(key)
                if isinstance(value, (int, float)) and math.isfinite(float(value)):
                    shown.append(f"{name} {100 * float(value):.0f}%")
            if metrics.get("note"):
                shown.append(str(metrics["note"]))
            if shown:
                self.metrics.setText(" · ".join(shown))
        if self.plot is not None:
            step = float(getattr(status, "step", 0) or 0)
            if event == "step" and loss is not None:
                self.plot.add_point("loss", step, float(loss))
            if event == "epoch" and "val_accuracy" in metrics:
                self.plot.add_point("val accuracy", step, float(metrics["val_accuracy"]))


def status_fraction(status) -> float:
    """Fraction of the run done: `TrainStatus.fraction`, or step / n_steps."""
    if getattr(status, "done", False):
        return 1.0
    frac = getattr(status, "fraction", None)
    if frac is not None:
        return float(frac)
    n_steps = int(getattr(status, "n_steps", 0) or 0)
    step = int(getattr(status, "step", 0) or 0)
    return min(1.0, step / n_steps) if n_steps > 0 else 0.0
