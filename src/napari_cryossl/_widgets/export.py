"""Step 8, Export: particles with their classes and probabilities as RELION STAR or CSV.

Writes through `io.write_particles` (the same writer as `cryossl predict`), so files
follow RELION conventions: XYZ pixel coordinates, 1-based rlnClassNumber,
rlnMaxValueProbDistribution for the predicted probability, rlnTomoName.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_cryossl._widgets._common import StatusLine, notify_error
from napari_cryossl._widgets._session import Session

#: What goes into rlnClassNumber.
CLASS_SOURCES = {
    "labels, else prediction": "merged",
    "prediction": "predicted",
    "labels only": "labels",
}


def export_table(
    table, *, classes: str = "merged", min_confidence: float = 0.0, tomo_name: str = ""
):
    """The particle table to write, with class_number and probability chosen by `classes`.

    Args:
        table: the annotation store's table (class_number = label, predicted_class, probability).
        classes: "merged" (a person's label wins over the prediction), "predicted" or "labels".
        min_confidence: drop predicted (not labelled) particles below this probability.
        tomo_name: written as rlnTomoName where the table has none.
    """
    out = table.copy()
    labels = out["class_number"].to_numpy(dtype=np.int64)
    predicted = (
        out["predicted_class"].to_numpy(dtype=np.int64)
        if "predicted_class" in out
        else np.zeros(len(out), np.int64)
    )
    prob = (
        out["probability"].to_numpy(dtype=np.float64)
        if "probability" in out
        else np.full(len(out), np.nan)
    )
    if classes == "predicted":
        out["class_number"] = predicted
    elif classes == "merged":
        out["class_number"] = np.where(labels > 0, labels, predicted)
        prob = np.where(labels > 0, 1.0, prob)  # a person's label is certain
    elif classes != "labels":
        raise ValueError(f"classes must be one of 'merged', 'predicted', 'labels', got {classes!r}")
    out["probability"] = prob if classes != "labels" else np.nan
    if min_confidence > 0 and classes != "labels":
        keep = (labels > 0) | (np.nan_to_num(prob, nan=0.0) >= min_confidence)
        out = out[keep]
    if tomo_name and "tomo_name" in out:
        names = out["tomo_name"].astype(str)
        out["tomo_name"] = np.where(names == "", tomo_name, names)
    return out.drop(columns=[c for c in ("predicted_class",) if c in out]).reset_index(drop=True)


class ExportWidget(QWidget):
    """Save the particles (labels and/or predictions) as STAR or CSV."""

    def __init__(self, session: Session, parent=None) -> None:
        super().__init__(parent)
        self.session = session
        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.classes = QComboBox()
        for label, key in CLASS_SOURCES.items():
            self.classes.addItem(label, key)
        self.classes.setToolTip("What to write as rlnClassNumber (0 = unlabelled)")
        self.use_filter = QCheckBox("skip doubtful predictions")
        self.use_filter.setToolTip(
            "Leave out predicted particles below step 7's minimum confidence (labels are kept)"
        )
        form.addRow("Class:", self.classes)
        form.addRow(self.use_filter)
        layout.addLayout(form)
        row = QHBoxLayout()
        self.star_button = QPushButton("Save STAR…")
        self.csv_button = QPushButton("Save CSV…")
        row.addWidget(self.star_button)
        row.addWidget(self.csv_button)
        layout.addLayout(row)
        self.status = StatusLine()
        layout.addWidget(self.status)
        layout.addStretch(1)
        self.star_button.clicked.connect(lambda: self._ask(".star"))
        self.csv_button.clicked.connect(lambda: self._ask(".csv"))

    def export(self, path) -> int:
        """Write the particles to `path` (.star or .csv); returns how many (0 on error)."""
        from napari_cryossl.io import write_particles

        try:
            self.session.require_tomogram()
            tomo = self.session.tomogram
            table = export_table(
                self.session.store.table,
                classes=self.classes.currentData(),
                min_confidence=self.session.min_confidence if self.use_filter.isChecked() else 0.0,
                tomo_name=Path(tomo.path).name,
            )
            write_particles(
                table,
                path,
                voxel_size=self.session.voxel_size,
                tomogram_shape=tuple(int(s) for s in tomo.shape),
            )
        except Exception as exc:
            self.status.error(notify_error(exc))
            return 0
        self.status.info(f"{len(table)} particles saved to {Path(path).name}")
        self.status.setToolTip(str(path))
        return len(table)

    def _ask(self, suffix: str) -> None:
        try:
            default = str(self.session.work_dir / f"particles{suffix}")
        except Exception:
            default = f"particles{suffix}"
        kind = "RELION STAR (*.star)" if suffix == ".star" else "CSV (*.csv)"
        path, _ = QFileDialog.getSaveFileName(self, "Save particles", default, kind)
        if path:
            if Path(path).suffix.lower() != suffix:
                path += suffix
            self.export(path)
