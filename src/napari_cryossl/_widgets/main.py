"""The dock widget: the nine workflow steps as sections of one panel.

*Plugins ▸ napari-cryossl ▸ Classify particles* opens it. Each section is its own
widget class (in the modules beside this one) built on the viewer's `Session`, so the
steps share the tomogram, annotations and models, and tests can build any one alone.
Importing this module imports neither torch nor the training code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtWidgets import QSizePolicy, QStyle, QToolBox, QVBoxLayout, QWidget

from napari_cryossl._widgets._session import get_session
from napari_cryossl._widgets.data import DataWidget
from napari_cryossl._widgets.export import ExportWidget
from napari_cryossl._widgets.labelling import LabellingWidget
from napari_cryossl._widgets.picking import PickingWidget
from napari_cryossl._widgets.population import PopulationWidget
from napari_cryossl._widgets.prediction import PredictionWidget
from napari_cryossl._widgets.saliency import SaliencyWidget
from napari_cryossl._widgets.training import FinetuneWidget, PretrainWidget

if TYPE_CHECKING:
    import napari

#: (attribute, section title, widget class), in workflow order.
SECTIONS = (
    ("data", "1 · Data", DataWidget),
    ("picking", "2 · Picking", PickingWidget),
    ("labelling", "3 · Labelling", LabellingWidget),
    ("pretrain", "4 · Pretraining (self-supervised)", PretrainWidget),
    ("population", "5 · Map and suggestions", PopulationWidget),
    ("finetune", "6 · Fine-tuning", FinetuneWidget),
    ("prediction", "7 · Prediction", PredictionWidget),
    ("saliency", "8 · Saliency (Grad-CAM)", SaliencyWidget),
    ("export", "9 · Export", ExportWidget),
)


class CryoSSLWidget(QWidget):
    """All workflow steps in one dock, one collapsible section per step."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent=None) -> None:
        super().__init__(parent)
        # napari hands plugins a PublicOnlyProxy; the session keys on the viewer itself.
        viewer = getattr(napari_viewer, "__wrapped__", napari_viewer)
        self.viewer = viewer
        self.session = get_session(viewer)
        self.toolbox = QToolBox()
        for attr, title, cls in SECTIONS:
            section = cls(self.session)
            setattr(self, attr, section)
            self.toolbox.addItem(section, title)
        # (QToolBox puts each section in its own scroll area: tall sections scroll.)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.toolbox)
        # As wide as the widest section needs beside a vertical scroll bar: napari sizes a
        # dock from its minimum width, and a narrower dock cuts buttons off at the right.
        bar = self.style().pixelMetric(QStyle.PixelMetric.PM_ScrollBarExtent)
        widest = max(self.toolbox.widget(i).minimumSizeHint().width()
                     for i in range(self.toolbox.count()))
        self.setMinimumWidth(max(360, widest + bar + 2 * self.toolbox.frameWidth() + 12))
        # Expanding: napari's dock then gives the sections the whole height.
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Expanding)
        self.destroyed.connect(self.session.quit_workers)
        helper = self.population.helper  # not a bound method: the section dies with the dock
        self.destroyed.connect(lambda *_: helper.close())

    def show_section(self, attr: str) -> QWidget:
        """Open the section named `attr` (e.g. "labelling") and return its widget."""
        section = getattr(self, attr)
        self.toolbox.setCurrentWidget(section)
        return section
