"""Step 3, Labelling: a class list, and clicks (or selections) that assign the current class."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import (
    QColorDialog,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_cryossl._widgets._common import StatusLine, notify_error
from napari_cryossl._widgets._session import Session
from napari_cryossl._widgets._style import default_class_color, to_rgba

_NUMBER_ROLE = Qt.ItemDataRole.UserRole


def _swatch(color, hollow: bool = False) -> QIcon:
    pix = QPixmap(14, 14)
    if hollow:
        pix.fill(QColor(0, 0, 0, 0))
        from qtpy.QtGui import QPainter, QPen

        p = QPainter(pix)
        p.setPen(QPen(QColor("#bfbfbf"), 2))
        p.drawEllipse(2, 2, 10, 10)
        p.end()
    else:
        r, g, b, a = (int(255 * v) for v in to_rgba(color))
        pix.fill(QColor(r, g, b, a))
    return QIcon(pix)


class LabellingWidget(QWidget):
    """Class list with per-class counts; click particles to give them the current class."""

    def __init__(self, session: Session, parent=None) -> None:
        super().__init__(parent)
        self.session = session
        layout = QVBoxLayout(self)
        help_text = QLabel(
            "Choose a class, switch on <b>Label by clicking</b>, then click particles. "
            "Keys <b>1–9</b> choose the class, <b>0</b> removes a label (while a particles "
            "layer is active). Every change is saved at once."
        )
        help_text.setWordWrap(True)
        layout.addWidget(help_text)

        self.class_list = QListWidget()
        self.class_list.setMinimumHeight(120)
        layout.addWidget(self.class_list)
        row = QHBoxLayout()
        self.add_button = QPushButton("Add")
        self.rename_button = QPushButton("Rename")
        self.color_button = QPushButton("Colour")
        self.delete_button = QPushButton("Delete")
        for b in (self.add_button, self.rename_button, self.color_button, self.delete_button):
            row.addWidget(b)
        layout.addLayout(row)

        row2 = QHBoxLayout()
        self.click_button = QPushButton("Label by clicking")
        self.click_button.setCheckable(True)
        self.click_button.setToolTip("While on, a click on a particle gives it the current class")
        self.selected_button = QPushButton("Label selected")
        self.selected_button.setToolTip("Give the current class to the selected particles")
        row2.addWidget(self.click_button)
        row2.addWidget(self.selected_button)
        layout.addLayout(row2)
        self.current_label = QLabel("")
        layout.addWidget(self.current_label)
        self.status = StatusLine()
        layout.addWidget(self.status)
        layout.addStretch(1)

        self.add_button.clicked.connect(self._ask_add)
        self.rename_button.clicked.connect(self._ask_rename)
        self.color_button.clicked.connect(self._ask_color)
        self.delete_button.clicked.connect(self._ask_delete)
        self.click_button.toggled.connect(self.set_label_on_click)
        self.selected_button.clicked.connect(self.label_selected)
        self.class_list.currentItemChanged.connect(self._on_row_changed)
        session.classes_changed.connect(self.refresh)
        session.particles_changed.connect(self.refresh)
        session.tomogram_changed.connect(self.refresh)
        session.current_class_changed.connect(lambda _n: self.refresh())
        session.labelling_changed.connect(lambda _on: self.refresh())
        self.refresh()

    # class list -------------------------------------------------------------
    def add_class(self, name: str, color=None) -> int | None:
        """Add a class (and make it current); returns its number, None on error."""
        try:
            self.session.require_tomogram()
            number = self.session.store.add_class(name.strip() or None, color)
        except Exception as exc:
            self.status.error(notify_error(exc))
            return None
        self.session.classes_changed.emit()
        self.session.set_current_class(number)
        self.refresh()
        return number

    def rename_class(self, number: int, name: str) -> None:
        try:
            self.session.store.rename_class(number, name)
        except Exception as exc:
            self.status.error(notify_error(exc))
            return
        self.session.classes_changed.emit()

    def set_class_color(self, number: int, color) -> None:
        try:
            self.session.store.set_class_color(number, color)
        except Exception as exc:
            self.status.error(notify_error(exc))
            return
        self.session.refresh_layers()
        self.session.classes_changed.emit()

    def delete_class(self, number: int) -> None:
        try:
            self.session.store.delete_class(number)
        except Exception as exc:
            self.status.error(notify_error(exc))
            return
        if self.session.current_class == number:
            numbers = self.session.class_numbers()
            self.session.set_current_class(numbers[0] if numbers else 0)
        self.session.classes_changed.emit()

    # labelling -------------------------------------------------------------
    def set_label_on_click(self, on: bool) -> None:
        if on:
            try:
                self.session.start_labelling()
            except Exception as exc:
                self.status.error(notify_error(exc))
                self.click_button.setChecked(False)
                return
            if self.session.current_class != 0 and not self.session.class_numbers():
                self.status.info("add a class first, then click particles")
            else:
                self.status.info("click particles to label them")
        else:
            self.session.stop_labelling()
        if self.click_button.isChecked() != on:
            self.click_button.setChecked(on)

    def label_selected(self) -> int:
        """Give the current class to the particles selected in the particles/predictions layer."""
        selected: set[int] = set()
        for layer in (self.session.particles_layer, self.session.predictions_layer):
            if layer is not None and layer in self.session.viewer.layers:
                selected |= {int(i) for i in layer.selected_data}
        if not selected:
            self.status.info("no particle is selected")
            return 0
        try:
            self.session.label_particles(sorted(selected))
        except Exception as exc:
            self.status.error(notify_error(exc))
            return 0
        self.status.info(
            f"{len(selected)} particle(s) → {self.session.class_name(self.session.current_class)}"
        )
        return len(selected)

    # display ---------------------------------------------------------------
    def refresh(self) -> None:
        session = self.session
        counts = session.class_counts() if session.store is not None else {0: 0}
        self.class_list.blockSignals(True)
        self.class_list.clear()
        unl = QListWidgetItem(_swatch(None, hollow=True), f"0 · unlabelled ({counts.get(0, 0)})")
        unl.setData(_NUMBER_ROLE, 0)
        self.class_list.addItem(unl)
        for cls in session.store.classes if session.store is not None else []:
            number = int(cls["number"])
            color = cls.get("color") or default_class_color(number)
            item = QListWidgetItem(
                _swatch(color), f"{number} · {cls['name']} ({counts.get(number, 0)})"
            )
            item.setData(_NUMBER_ROLE, number)
            self.class_list.addItem(item)
            if number == session.current_class:
                self.class_list.setCurrentItem(item)
        if session.current_class == 0:
            self.class_list.setCurrentItem(unl)
        self.class_list.blockSignals(False)
        has_classes = bool(session.class_numbers())
        for b in (self.rename_button, self.color_button, self.delete_button):
            b.setEnabled(has_classes)
        self.add_button.setEnabled(session.store is not None)
        if session.store is not None and not has_classes:
            self.current_label.setText("Current class: none yet: add a class to label with")
        else:
            self.current_label.setText(
                f"Current class: <b>{session.current_class} · "
                f"{session.class_name(session.current_class)}</b>"
            )
        if self.click_button.isChecked() != session.label_on_click:
            self.click_button.blockSignals(True)
            self.click_button.setChecked(session.label_on_click)
            self.click_button.blockSignals(False)

    def _on_row_changed(self, item, _previous=None) -> None:
        if item is not None:
            self.session.set_current_class(int(item.data(_NUMBER_ROLE)))

    def _selected_number(self) -> int | None:
        item = self.class_list.currentItem()
        number = int(item.data(_NUMBER_ROLE)) if item is not None else 0
        return number or None

    def _ask_add(self) -> None:
        n = len(self.session.class_numbers()) + 1
        name, ok = QInputDialog.getText(self, "Add class", "Class name:", text=f"class {n}")
        if ok:
            self.add_class(name)

    def _ask_rename(self) -> None:
        number = self._selected_number()
        if number is None:
            return
        name, ok = QInputDialog.getText(
            self, "Rename class", "Class name:", text=self.session.class_name(number)
        )
        if ok and name.strip():
            self.rename_class(number, name.strip())

    def _ask_color(self) -> None:
        number = self._selected_number()
        if number is None:
            return
        color = QColorDialog.getColor(parent=self, title="Class colour")
        if color.isValid():
            self.set_class_color(number, color.name())

    def _ask_delete(self) -> None:
        number = self._selected_number()
        if number is None:
            return
        n = self.session.class_counts().get(number, 0)
        if n:
            answer = QMessageBox.question(
                self,
                "Delete class",
                f"Delete class {self.session.class_name(number)!r}? Its {n} particle(s) become unlabelled.",
            )
            if answer != QMessageBox.StandardButton.Yes:
                return
        self.delete_class(number)
