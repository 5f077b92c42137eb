"""The map's plot: a matplotlib canvas with one point per particle, lasso and rectangle
selection, rings for the selected particles and a star for the one being looked at.

matplotlib (a core dependency) draws it and its own ``LassoSelector`` and
``RectangleSelector`` select; a drag shorter than 1 % of the axes is a click on the
nearest point. Used by the dock's Map section (`population.PopulationWidget`).
"""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from matplotlib.path import Path as MplPath
from matplotlib.widgets import LassoSelector, RectangleSelector
from qtpy.QtCore import QSize, Signal
from qtpy.QtWidgets import QSizePolicy

__all__ = ["MapCanvas"]

#: A click on the map (not a lasso) moves less than this fraction of the axes' span.
_CLICK_FRACTION = 0.01
#: From this many points on, the map draws them as small dots without antialiasing, one
#: ``Line2D`` per colour (Agg stamps one marker image per line) instead of a scatter,
#: whose every point is a path of its own: several times faster at 10,000 points, so the
#: viewer does not freeze when a map arrives (docs/benchmarks.md).
_MANY_POINTS = 2000


class MapCanvas(FigureCanvasQTAgg):
    """The 2D map: one point per particle. Emits ``selected(indices)`` after a lasso or
    rectangle and ``clicked(index)`` after a click on (near) a point."""

    selected = Signal(object)
    clicked = Signal(int)

    def __init__(self, parent=None) -> None:
        figure = Figure(figsize=(3.6, 3.2), dpi=100, facecolor="#262930")
        super().__init__(figure)
        self.setParent(parent)
        self.setMinimumHeight(260)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.axes = figure.add_axes((0.02, 0.02, 0.96, 0.96))
        self.axes.set_facecolor("#1e1f24")
        self.axes.set_xticks([])
        self.axes.set_yticks([])
        for spine in self.axes.spines.values():
            spine.set_color("#555")
        self.xy = np.zeros((0, 2))
        self.points = self.axes.scatter([], [], s=10, linewidths=0)
        self.dots: list = []  # the Line2D groups of a large map
        self.rings = self.axes.scatter([], [], s=40, facecolors="none", edgecolors="white",
                                       linewidths=1.0, zorder=3)
        self.marker = self.axes.scatter([], [], s=160, marker="*", c="#ffeb3b",
                                        edgecolors="black", linewidths=0.6, zorder=4)
        self.selector = None
        self.set_mode("lasso")

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt naming)
        # matplotlib asks for the figure's size in pixels (360 wide): the map takes the
        # width the dock gives it instead of widening the section
        return QSize(200, 260)

    def minimumSizeHint(self) -> QSize:  # noqa: N802 (Qt naming)
        return QSize(120, 260)

    # drawing ------------------------------------------------------------------------
    def set_points(self, xy: np.ndarray, colors: np.ndarray | None = None) -> None:
        """New positions (and limits); ``colors=None`` leaves the painting to a
        `set_colors` that follows, so a new map is painted once, not twice."""
        self.xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        if colors is not None:
            self._paint(colors)
        if len(self.xy):
            lo, hi = self.xy.min(0), self.xy.max(0)
            pad = 0.05 * np.maximum(hi - lo, 1e-6)
            self.axes.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
            self.axes.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
        self.set_rings([])
        self.set_marker(None)

    def set_colors(self, colors: np.ndarray) -> None:
        self._paint(colors)
        self.draw_idle()

    def _paint(self, colors: np.ndarray) -> None:
        """Points in ``colors`` (N, 4 RGBA): a scatter, or dots grouped by colour for many."""
        colors = np.asarray(colors, dtype=np.float64).reshape(-1, 4)
        for line in self.dots:
            line.remove()
        self.dots = []
        if len(self.xy) < _MANY_POINTS:
            self.points.set_offsets(self.xy)
            self.points.set_facecolors(colors)
            self.points.set_sizes(np.full(len(self.xy), 12.0))
            return
        self.points.set_offsets(np.zeros((0, 2)))
        # alpha (a prediction's confidence) in quarter steps: a few groups, not thousands
        quantised = colors.copy()
        quantised[:, 3] = np.clip(np.round(quantised[:, 3] * 4) / 4, 0.25, 1.0)
        # one integer per 8-bit RGBA colour: a 1D unique, far faster than rows of floats
        rgba = np.round(quantised * 255).astype(np.uint32)
        key = (rgba[:, 0] << 24) | (rgba[:, 1] << 16) | (rgba[:, 2] << 8) | rgba[:, 3]
        _, first, which = np.unique(key, return_index=True, return_inverse=True)
        which = which.reshape(-1)
        # the commonest colour (usually the unlabelled particles) underneath the others
        for g in np.argsort(-np.bincount(which, minlength=len(first)), kind="stable"):
            mine = which == g
            (line,) = self.axes.plot(
                self.xy[mine, 0], self.xy[mine, 1], linestyle="none", marker="o",
                markersize=2.2, markeredgewidth=0, color=quantised[first[g]],
                antialiased=False, zorder=1.5, scalex=False, scaley=False,
            )
            self.dots.append(line)

    def set_rings(self, indices) -> None:
        idx = np.asarray(sorted(indices), dtype=np.int64)
        idx = idx[(idx >= 0) & (idx < len(self.xy))]
        self.rings.set_offsets(self.xy[idx] if idx.size else np.zeros((0, 2)))
        self.draw_idle()

    def set_marker(self, index: int | None) -> None:
        ok = index is not None and 0 <= index < len(self.xy)
        self.marker.set_offsets(self.xy[[index]] if ok else np.zeros((0, 2)))
        self.draw_idle()

    # selecting ----------------------------------------------------------------------
    def set_mode(self, mode: str) -> None:
        """"lasso" or "rectangle"."""
        if self.selector is not None:
            self.selector.set_active(False)
            self.selector.disconnect_events()
        if mode == "rectangle":
            self.selector = RectangleSelector(self.axes, self._on_rectangle, useblit=False,
                                              interactive=False, button=[1])
        else:
            self.selector = LassoSelector(self.axes, self._on_lasso, useblit=False, button=[1])

    def _span(self) -> float:
        x0, x1 = self.axes.get_xlim()
        y0, y1 = self.axes.get_ylim()
        return float(max(abs(x1 - x0), abs(y1 - y0)))

    def nearest(self, x: float, y: float) -> int | None:
        """The point nearest (x, y) in map units, if within 3 % of the axes' span."""
        if not len(self.xy):
            return None
        d = np.hypot(self.xy[:, 0] - x, self.xy[:, 1] - y)
        i = int(np.argmin(d))
        return i if d[i] <= 0.03 * self._span() else None

    def select_polygon(self, vertices) -> np.ndarray:
        """Indices of the points inside a polygon (map units): what a lasso selects."""
        verts = np.asarray(vertices, dtype=np.float64).reshape(-1, 2)
        if len(verts) < 3 or not len(self.xy):
            return np.zeros(0, np.int64)
        return np.flatnonzero(MplPath(verts).contains_points(self.xy))

    def _click_or(self, verts: np.ndarray, select) -> None:
        extent = float(np.ptp(verts, axis=0).max()) if len(verts) else 0.0
        if extent < _CLICK_FRACTION * self._span():
            index = self.nearest(*verts[0]) if len(verts) else None
            if index is not None:
                self.clicked.emit(int(index))
            return
        self.selected.emit(select())

    def _on_lasso(self, vertices) -> None:
        verts = np.asarray(vertices, dtype=np.float64).reshape(-1, 2)
        self._click_or(verts, lambda: self.select_polygon(verts))

    def _on_rectangle(self, press, release) -> None:
        x0, x1 = sorted((press.xdata, release.xdata))
        y0, y1 = sorted((press.ydata, release.ydata))
        verts = np.array([[x0, y0], [x1, y1]])
        inside = (
            (self.xy[:, 0] >= x0) & (self.xy[:, 0] <= x1)
            & (self.xy[:, 1] >= y0) & (self.xy[:, 1] <= y1)
        )
        self._click_or(verts, lambda: np.flatnonzero(inside))
