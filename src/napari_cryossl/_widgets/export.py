"""Step 9, Export: particles with their classes and probabilities as RELION STAR, CSV or a
Dynamo table.

Writes through `io.write_particles` / `io.write_dynamo_table` (the same writers as
`cryossl predict`), so files follow RELION conventions: XYZ pixel coordinates (RELION 4)
or Å from the tomogram centre with a tomogram set beside (RELION 5), 1-based
rlnClassNumber, rlnMaxValueProbDistribution for the predicted probability, rlnTomoName.
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

#: The STAR flavours the dock writes.
STAR_FORMATS = {
    "RELION 4 (pixels)": "relion4",
    "RELION 5 (Å from centre)": "relion5",
}

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
        self.star_format = QComboBox()
        for label, key in STAR_FORMATS.items():
            self.star_format.addItem(label, key)
        self.star_format.setToolTip(
            "RELION 4: rlnCoordinateX/Y/Z in pixels of this tomogram. RELION 5: "
            "rlnCenteredCoordinateX/Y/ZAngst (Å from the tomogram centre) and the tomogram "
            "set beside it (NAME_tomograms.star)"
        )
        form.addRow("Class:", self.classes)
        form.addRow("STAR:", self.star_format)
        form.addRow(self.use_filter)
        layout.addLayout(form)
        row = QHBoxLayout()
        self.star_button = QPushButton("Save STAR…")
        self.csv_button = QPushButton("Save CSV…")
        self.dynamo_button = QPushButton("Save Dynamo…")
        self.dynamo_button.setToolTip(
            "A Dynamo table (.tbl) for subtomogram averaging: x, y, z (1-based voxels), "
            "class, tomogram index; the table map (.doc) beside it names the tomogram"
        )
        row.addWidget(self.star_button)
        row.addWidget(self.csv_button)
        row.addWidget(self.dynamo_button)
        layout.addLayout(row)
        self.status = StatusLine()
        layout.addWidget(self.status)
        layout.addStretch(1)
        self.star_button.clicked.connect(lambda: self._ask(".star"))
        self.csv_button.clicked.connect(lambda: self._ask(".csv"))
        self.dynamo_button.clicked.connect(lambda: self._ask(".tbl"))

    def export(self, path) -> int:
        """Write the particles to `path` (.star, .csv or .tbl); returns how many (0 on error).

        A .star file is RELION 4 or RELION 5 as the *STAR* choice says; RELION 5 also
        writes the tomogram set beside it (``<name>_tomograms.star``).
        """
        from napari_cryossl.io import (
            RelionTomogram,
            write_dynamo_table,
            write_particles,
            write_tomograms_star,
        )

        path = Path(path)
        extra = ""
        try:
            self.session.require_tomogram()
            tomo = self.session.tomogram
            table = export_table(
                self.session.store.table,
                classes=self.classes.currentData(),
                min_confidence=self.session.min_confidence if self.use_filter.isChecked() else 0.0,
                tomo_name=Path(tomo.path).name,
            )
            shape = tuple(int(s) for s in tomo.shape)
            relion5 = self.star_format.currentData() == "relion5"
            if path.suffix.lower() == ".tbl":
                write_dynamo_table(table, path, voxel_size=self.session.voxel_size)
            elif path.suffix.lower() == ".star" and relion5:
                name = Path(tomo.path).name
                table["tomo_name"] = name  # every particle of the dock is in this tomogram
                record = RelionTomogram(
                    name=name,
                    tilt_series_pixel_size=self.session.voxel_size,
                    size_xyz=(shape[2], shape[1], shape[0]),
                    path=Path(tomo.path).resolve(),
                )
                write_particles(table, path, relion5=True, tomograms={name: record})
                tomograms = path.with_name(path.stem + "_tomograms.star")
                write_tomograms_star({name: record}, tomograms)
                extra = f" (+ {tomograms.name})"
            else:
                write_particles(table, path, voxel_size=self.session.voxel_size, tomogram_shape=shape)
        except Exception as exc:
            self.status.error(notify_error(exc))
            return 0
        self.status.info(f"{len(table)} particles saved to {path.name}{extra}")
        self.status.setToolTip(str(path))
        return len(table)

    def _ask(self, suffix: str) -> None:
        try:
            default = str(self.session.work_dir / f"particles{suffix}")
        except Exception:
            default = f"particles{suffix}"
        kind = {
            ".star": "RELION STAR (*.star)",
            ".csv": "CSV (*.csv)",
            ".tbl": "Dynamo table (*.tbl)",
        }[suffix]
        path, _ = QFileDialog.getSaveFileName(self, "Save particles", default, kind)
        if path:
            if Path(path).suffix.lower() != suffix:
                path += suffix
            self.export(path)
