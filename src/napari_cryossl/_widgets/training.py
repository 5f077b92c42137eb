"""Steps 4 and 6: contrastive pretraining on every particle, fine-tuning on the labelled ones.

Both run `train.iter_pretrain` / `train.iter_finetune` (the same generators the CLI
drives) in a napari thread worker: each yielded `TrainStatus` moves the progress bar and
the live loss plot; Cancel calls ``worker.quit()``, which stops the loop within one step
and keeps a checkpoint (see `_workers.ClosingGeneratorWorker`); Resume continues it.
torch is imported only inside the worker functions, never when this module is imported.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_cryossl._widgets._common import (
    RunPanel,
    StatusLine,
    notify_error,
    notify_info,
    set_path_label,
)
from napari_cryossl._widgets._session import Session
from napari_cryossl._widgets._workers import function_worker, generator_worker
from napari_cryossl.base.options import (
    CPU_PRETRAIN_EPOCHS,
    DEVICE_CHOICES,
    MODEL_PRESETS,
    SSL_METHODS,
    describe,
)
from napari_cryossl.train import FinetuneConfig, PretrainConfig  # numpy-only at import

#: Fine-tuning needs at least this many labelled particles in each class it learns.
MIN_LABELS_PER_CLASS = 2

CHECKPOINT_FILTER = "Checkpoints (*.pt *.pth);;All files (*)"

#: The dock's range for the semi-supervised pseudo-label threshold (the option allows
#: 0-1: below 0.5 a 2-class prediction always passes, 1 never does).
PSEUDO_LABEL_THRESHOLD_RANGE = (0.5, 0.99)
#: The dock's largest number of unlabelled particles per labelled one (FixMatch's 7;
#: each one costs about another labelled step).
MAX_UNLABELLED_RATIO = 7


def probe_environment() -> dict:
    """Device description and the core's defaults; imports torch, so call it in a worker.

    It also imports the training stack (torch, lightly, kornia): each of those imports
    holds the GIL for up to a few hundred ms, so doing them here, when the Pretraining
    section opens, keeps those pauses out of the moment the user presses Start.
    """
    import torch

    import napari_cryossl.nn.augment  # noqa: F401  (kornia)
    import napari_cryossl.train  # noqa: F401
    from napari_cryossl.nn.devices import describe
    from napari_cryossl.nn.models import PRESETS
    from napari_cryossl.nn.ssl import SSL_DEFAULTS

    with contextlib.suppress(ImportError):  # what ssl.build_ssl imports lazily
        import lightly.loss  # noqa: F401
        import lightly.models.modules  # noqa: F401

    n_gpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return {
        "describe": describe(),
        "cuda": n_gpu > 0,
        "devices": ["auto", "cpu"] + [f"cuda:{i}" for i in range(n_gpu)],
        "presets": list(PRESETS),
        "ssl_defaults": {m: dict(v) for m, v in SSL_DEFAULTS.items()},
    }


def suggested_box_size(diameter_px: float | None) -> int:
    """A box that holds the particle with some context: 1.5 diameters, a multiple of 8, 16-64."""
    if not diameter_px:
        return 32
    return int(np.clip(8 * np.ceil(1.5 * diameter_px / 8), 16, 64))


def labelled_table(table):
    """The rows of the particle table with a label (class_number > 0)."""
    return table[table["class_number"].to_numpy() > 0].reset_index(drop=True)


def check_labels(table, min_per_class: int = MIN_LABELS_PER_CLASS) -> None:
    """Refuse to fine-tune on fewer than 2 classes or too few labels, with a message to act on.

    Raises:
        InputError: what is missing, and how many more labels are needed.
    """
    from napari_cryossl.io import InputError

    labels = table["class_number"].to_numpy()
    labels = labels[labels > 0]
    numbers, counts = np.unique(labels, return_counts=True)
    if len(numbers) < 2:
        raise InputError(
            f"fine-tuning needs labelled particles of at least 2 classes; "
            f"found {len(numbers)} class(es) with labels ({len(labels)} labelled particle(s)). "
            "Label some particles in step 3 first."
        )
    few = [(int(n), int(c)) for n, c in zip(numbers, counts, strict=True) if c < min_per_class]
    if few:
        detail = ", ".join(f"class {n}: {c}" for n, c in few)
        raise InputError(
            f"too few labels to fine-tune: every class needs at least {min_per_class} "
            f"labelled particles ({detail})"
        )


class ProjectCheckBox(QCheckBox):
    """ "All tomograms of the project": shown when the project has several, then ticked."""

    def __init__(self, session: Session, text: str, tooltip: str, parent=None) -> None:
        super().__init__(text, parent)
        self.session = session
        self.setToolTip(tooltip)
        self._several = False
        session.project_changed.connect(self._on_project)
        self._on_project()

    def _on_project(self) -> None:
        several = len(self.session.project) > 1
        if several and not self._several:
            self.setChecked(True)  # on by default once there is more than one tomogram
        self._several = several
        self.setVisible(several)

    def all_tomograms(self) -> bool:
        return self._several and self.isChecked()


def project_tables(session: Session, *, every: bool, labelled_only: bool = False) -> list:
    """``(table, tomogram)`` per tomogram to train or predict on: the open one only, or every
    tomogram of the project (others' tables read from their autosaved stores), in order."""
    paths = session.project if every else [session.tomogram_path]
    out = []
    for path in paths:
        table = session.project_store(path).table
        if labelled_only:
            table = labelled_table(table)
        out.append((table, session.project_tomogram(path)))
    return out


def _concat(pairs):
    import pandas as pd

    return pd.concat([t for t, _ in pairs], ignore_index=True)


def _centre_particles_box(config_cls) -> QCheckBox:
    """The switch for ``centre_particles`` (its default is the core's)."""
    spec = describe(config_cls, "centre_particles")
    box = QCheckBox("Centre each particle in its box first")
    box.setChecked(bool(spec.default))
    box.setToolTip(spec.tooltip())
    return box


class _TrainingSection(QWidget):
    """Shared worker handling: start, progress, cancel, resume, errors.

    Every new run trains into a file of its own (``encoder.pt``, then ``encoder-2.pt``...
    beside it), which the core writes only when the run finishes, so neither Start nor
    Cancel ever replaces a model the user already has; Resume continues the last run.
    """

    #: the file name of a run's model in the session's work folder
    base_name = ""

    def __init__(self, session: Session, start_text: str, parent=None) -> None:
        super().__init__(parent)
        self.session = session
        self.run_out: Path | None = None  # the model file of the current (or last) run
        self.worker = None
        self.cancelled = False
        self.last_status = None
        self.panel = RunPanel(start_text, resumable=True)
        self.status = StatusLine()
        self.panel.start_requested.connect(lambda: self.start(resume=False))
        self.panel.resume_requested.connect(lambda: self.start(resume=True))
        self.panel.cancel_requested.connect(self.cancel)

    def output_path(self) -> Path:
        """Where the current (or last) run writes its model; before any run, where the
        next one would."""
        from napari_cryossl.train import unused_checkpoint_path  # numpy-only at import

        if self.run_out is not None:
            return self.run_out
        return unused_checkpoint_path(self.session.work_dir / self.base_name)

    def resume_path(self) -> Path:
        """The resume state Resume continues from."""
        from napari_cryossl.train import last_checkpoint_path  # numpy-only at import

        return last_checkpoint_path(self.output_path())

    def make_job(self, resume: bool):
        """Return a generator function (no arguments) that yields TrainStatus; may raise InputError."""
        raise NotImplementedError

    def start(self, resume: bool = False):
        """Start (or resume) the run in a thread worker; returns it, or None when refused."""
        if self.worker is not None:
            return None
        try:
            self.session.require_tomogram()
            if not resume:
                from napari_cryossl.train import unused_checkpoint_path

                self.run_out = unused_checkpoint_path(self.session.work_dir / self.base_name)
            job = self.make_job(resume)
        except Exception as exc:
            self.status.error(notify_error(exc))
            return None
        worker = generator_worker(job)
        worker.yielded.connect(self._on_status)
        worker.errored.connect(self._on_error)
        worker.aborted.connect(self._on_aborted)
        worker.returned.connect(lambda _r: self._on_success())
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.cancelled = False
        self.last_status = None
        self.panel.reset("resuming…" if resume else "preparing subtomograms…")
        self.panel.set_running(True)
        self.status.info("running in the background: napari stays usable")
        self.session.start_worker(worker)
        return worker

    def cancel(self) -> None:
        if self.worker is not None:
            self.cancelled = True
            self.status.info("cancelling after the current step…")
            self.worker.quit()

    def _on_status(self, status) -> None:
        self.last_status = status
        self.panel.update_status(status)

    def _on_error(self, exc) -> None:
        self.status.error(notify_error(exc))

    def _on_aborted(self) -> None:
        pass

    def _on_success(self) -> None:
        pass

    def _on_finished(self) -> None:
        self.worker = None
        self.panel.set_running(False)
        out = self.output_path_or_none()
        can_resume = self.cancelled and out is not None and self.resume_path().is_file()
        self.panel.resume_button.setEnabled(can_resume)
        if self.cancelled:
            message = "cancelled" + (
                f"; the run so far is in {self.resume_path().name} (Resume continues)"
                if can_resume
                else ""
            )
            kept = self._model_in_use()
            if kept is not None:
                message += f"; {kept.name} is unchanged and still in use"
            self.status.info(message)
            notify_info(message)

    def _model_in_use(self) -> Path | None:
        """The session's model of this kind (what a cancelled run leaves in use)."""
        return None

    def _saved_text(self, out: Path, what: str) -> str:
        """What a finished run says: where it saved, and that an older model was kept."""
        default = self.session.work_dir / self.base_name
        text = f"{what} saved to {out.name}"
        if out != default and default.is_file():
            text += f" ({default.name} is kept)"
        return text

    def output_path_or_none(self) -> Path | None:
        try:
            return self.output_path()
        except Exception:
            return None


class PretrainWidget(_TrainingSection):
    """Self-supervised pretraining of the encoder on every particle (no labels needed)."""

    base_name = "encoder.pt"

    def __init__(self, session: Session, parent=None) -> None:
        super().__init__(session, "Start pretraining", parent)
        self.env = None
        self._probe_worker = None
        layout = QVBoxLayout(self)
        form = QFormLayout()
        method = describe(PretrainConfig, "method")
        self.method = QComboBox()
        for key in method.choices:
            self.method.addItem(SSL_METHODS[key], key)
        self.method.setCurrentIndex(method.choices.index(method.default))
        self.method.setToolTip(method.tooltip())
        preset = describe(PretrainConfig, "preset")
        self.preset = QComboBox()
        self.preset.addItems(preset.choices)
        self.preset.setCurrentText(preset.default)
        self.preset.setToolTip(preset.tooltip())
        self.box_size = QSpinBox()
        self.box_size.setRange(8, 128)
        self.box_size.setSingleStep(8)
        self.box_size.setValue(32)
        self.box_size.setSuffix(" voxels")
        self.box_size.setToolTip("Edge of the subtomogram cut around each particle")
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 10_000)
        # the method's epochs on a GPU (set when the device is known), fewer on a CPU
        self.epochs.setValue(CPU_PRETRAIN_EPOCHS)
        self.epochs.setToolTip(describe(PretrainConfig, "epochs").tooltip())
        self.batch_size = QSpinBox()
        self.batch_size.setRange(2, 4096)
        self.batch_size.setValue(16)  # MoCo's; the chosen method's once the core is loaded
        self.batch_size.setToolTip(describe(PretrainConfig, "batch_size").tooltip())
        self.device = QComboBox()
        self.device.addItems(DEVICE_CHOICES[:2])
        self.device.setToolTip(describe(PretrainConfig, "device").tooltip())
        self.device_label = QLabel("device: checking…")
        self.device_label.setWordWrap(True)
        form.addRow("Method:", self.method)
        form.addRow("Model:", self.preset)
        form.addRow("Box size:", self.box_size)
        form.addRow("Epochs:", self.epochs)
        form.addRow("Batch size:", self.batch_size)
        form.addRow("Device:", self.device)
        form.addRow(self.device_label)
        self.centre_particles = _centre_particles_box(PretrainConfig)
        form.addRow(self.centre_particles)
        self.all_tomograms = ProjectCheckBox(
            session,
            "All tomograms of the project",
            "Pretrain on the particles of every tomogram in the project (step 1), "
            "not only the one shown",
        )
        form.addRow(self.all_tomograms)
        layout.addLayout(form)
        layout.addWidget(self.panel)
        row = QHBoxLayout()
        row.addWidget(QLabel("Encoder:"))
        self.encoder_label = QLabel("")
        row.addWidget(self.encoder_label, 1)
        layout.addLayout(row)
        layout.addWidget(self.status)
        layout.addStretch(1)
        self.method.currentIndexChanged.connect(self._apply_defaults)
        session.tomogram_changed.connect(self._on_tomogram)
        session.models_changed.connect(self._show_encoder)
        self._on_tomogram()

    # environment ---------------------------------------------------------------
    def showEvent(self, event) -> None:  # noqa: N802 (Qt naming)
        super().showEvent(event)
        self.probe()

    def probe(self):
        """Find the device (imports torch) in a worker, the first time the section is shown."""
        if self.env is not None or self._probe_worker is not None:
            return self._probe_worker
        worker = function_worker(probe_environment)
        worker.returned.connect(self._on_probe)
        worker.errored.connect(lambda exc: self.device_label.setText(f"device: unknown ({exc})"))
        worker.finished.connect(lambda: setattr(self, "_probe_worker", None))
        self._probe_worker = worker
        self.session.start_worker(worker)
        return worker

    def _on_probe(self, env: dict) -> None:
        self.env = env
        self.device_label.setText(f"device: {env['describe']}")
        current = self.device.currentText()
        self.device.clear()
        self.device.addItems(env["devices"])
        if current in env["devices"]:
            self.device.setCurrentText(current)
        presets = [p for p in env["presets"] if p in MODEL_PRESETS] + [
            p for p in env["presets"] if p not in MODEL_PRESETS
        ]
        current = self.preset.currentText()
        self.preset.clear()
        self.preset.addItems(presets)
        self.preset.setCurrentText(current or describe(PretrainConfig, "preset").default)
        self._apply_defaults()

    def _apply_defaults(self) -> None:
        if self.env is None:
            return
        defaults = self.env["ssl_defaults"].get(self.method.currentData(), {})
        if "batch_size" in defaults:
            self.batch_size.setValue(int(defaults["batch_size"]))
        if self.env["cuda"] and "epochs" in defaults:
            self.epochs.setValue(int(defaults["epochs"]))

    # run -------------------------------------------------------------------------
    def make_job(self, resume: bool):
        from napari_cryossl.io import InputError

        every = self.all_tomograms.all_tomograms()
        pairs = project_tables(self.session, every=every)
        table = _concat(pairs)
        if len(table) < 2:
            where = "the project's tomograms" if every else "this tomogram"
            raise InputError(
                f"pretraining needs particles: {len(table)} in {where}. Pick some in step 2."
            )
        out = self.output_path()
        if resume and not self.resume_path().is_file():
            raise InputError(f"{self.resume_path()}: no checkpoint to resume; start a new run")
        box = int(self.box_size.value())
        settings = {
            "method": self.method.currentData(),
            "preset": self.preset.currentText(),
            "epochs": int(self.epochs.value()),
            "batch_size": min(int(self.batch_size.value()), len(table)),
            "device": self.device.currentText(),
            "centre_particles": self.centre_particles.isChecked(),
        }

        def job():
            from napari_cryossl.ops.train import pretrain
            from napari_cryossl.train import PretrainConfig

            yield from pretrain(pairs, PretrainConfig(**settings), out, box_size=box,
                                resume=resume)

        return job

    def _on_success(self) -> None:
        self._adopt_encoder()

    def _model_in_use(self) -> Path | None:
        return self.session.encoder_path

    def _adopt_encoder(self) -> None:
        out = self.output_path()
        if out.is_file():
            self.session.use_encoder(out, box_size=int(self.box_size.value()))
            self.status.info(
                self._saved_text(out, "encoder")
                + "; see the population in step 5 (Map) or fine-tune in step 6"
            )

    def _on_tomogram(self) -> None:
        if self.session.tomogram is not None:
            self.box_size.setValue(suggested_box_size(self.session.point_size))
        self._show_encoder()

    def _show_encoder(self) -> None:
        set_path_label(self.encoder_label, self.session.encoder_path)


class FinetuneWidget(_TrainingSection):
    """Train a classifier on the labelled particles, starting from the pretrained encoder."""

    base_name = "classifier.pt"

    def __init__(self, session: Session, parent=None) -> None:
        super().__init__(session, "Start fine-tuning", parent)
        # the semi-supervised settings and tomograms of the last started run: Resume keeps
        # them (and the particles they imply), since the run's saved split numbers those
        self._run_scope: tuple[dict, bool] | None = None
        layout = QVBoxLayout(self)
        form = QFormLayout()
        row = QHBoxLayout()
        self.init_label = QLabel("")
        self.init_button = QPushButton("Choose…")
        self.init_button.setToolTip(
            "Use another encoder checkpoint (e.g. one pretrained with the CLI)"
        )
        row.addWidget(self.init_label, 1)
        row.addWidget(self.init_button)
        form.addRow("Encoder:", row)
        # None in FinetuneConfig means "the recipe's": show the resolved default recipe.
        recipe = FinetuneConfig().resolved()
        self.epochs = QSpinBox()
        # 0 = "auto": the recipe's epochs for the device the run gets (core's choice, as
        # on the command line: more on a GPU)
        self.epochs.setRange(0, 10_000)
        self.epochs.setSpecialValueText(
            f"auto ({recipe.epochs} on a CPU, {FinetuneConfig().resolved('cuda').epochs} on a GPU)"
        )
        self.epochs.setValue(0)
        self.epochs.setToolTip(describe(FinetuneConfig, "epochs").tooltip())
        self.batch_size = QSpinBox()
        self.batch_size.setRange(2, 4096)
        self.batch_size.setValue(int(recipe.batch_size))
        self.batch_size.setToolTip(describe(FinetuneConfig, "batch_size").tooltip())
        self.min_steps = QSpinBox()
        # -1 = "auto": what the command line does without --min-steps (the recipe's on a
        # GPU, fewer on a CPU, none when the epochs are chosen)
        self.min_steps.setRange(-1, 1_000_000)
        self.min_steps.setSpecialValueText(
            f"auto ({FinetuneConfig().resolved('cpu').min_steps} on a CPU, "
            f"{FinetuneConfig().resolved('cuda').min_steps} on a GPU, 0 with chosen epochs)"
        )
        self.min_steps.setValue(-1)
        self.min_steps.setToolTip(describe(FinetuneConfig, "min_steps").tooltip())
        self.device = QComboBox()
        self.device.addItems(DEVICE_CHOICES)
        self.device.setToolTip(describe(FinetuneConfig, "device").tooltip())
        self.head_from_probe = QCheckBox("Start the last layer from a linear probe")
        self.head_from_probe.setToolTip(describe(FinetuneConfig, "head_init").tooltip())
        form.addRow("Epochs:", self.epochs)
        form.addRow("Batch size:", self.batch_size)
        form.addRow("Min. steps:", self.min_steps)
        form.addRow("Device:", self.device)
        form.addRow(self.head_from_probe)
        self.centre_particles = _centre_particles_box(FinetuneConfig)
        form.addRow(self.centre_particles)
        self._add_semi_supervised_rows(form)
        self.all_tomograms = ProjectCheckBox(
            session,
            "All tomograms of the project",
            "Fine-tune on the labels of every tomogram in the project (step 1), not only the "
            "one shown; class numbers mean the same classes in every tomogram",
        )
        self.all_tomograms.toggled.connect(self._show_state)
        form.addRow(self.all_tomograms)
        layout.addLayout(form)
        self.semi_supervised.toggled.connect(self._show_state)
        self.labels_label = QLabel("")
        self.labels_label.setWordWrap(True)
        layout.addWidget(self.labels_label)
        layout.addWidget(self.panel)
        layout.addWidget(self.status)
        layout.addStretch(1)
        self.init_button.clicked.connect(self._choose_init)
        session.models_changed.connect(self._show_state)
        session.particles_changed.connect(self._show_state)
        session.classes_changed.connect(self._show_state)
        session.tomogram_changed.connect(self._show_state)
        session.project_changed.connect(self._show_state)
        self._show_state()

    def _add_semi_supervised_rows(self, form) -> None:
        """The semi-supervised switch (FixMatch on the class-0 particles; off by default)
        and, shown while it is on, its pseudo-label threshold and unlabelled ratio."""
        semi = describe(FinetuneConfig, "semi_supervised")
        self.semi_supervised = QCheckBox(
            "Learn from the unlabelled particles too (semi-supervised)"
        )
        self.semi_supervised.setChecked(bool(semi.default))
        self.semi_supervised.setToolTip(semi.tooltip())
        threshold = describe(FinetuneConfig, "pseudo_label_threshold")
        self.pseudo_label_threshold = QDoubleSpinBox()
        self.pseudo_label_threshold.setDecimals(2)
        self.pseudo_label_threshold.setSingleStep(0.05)
        self.pseudo_label_threshold.setRange(*PSEUDO_LABEL_THRESHOLD_RANGE)
        self.pseudo_label_threshold.setValue(float(threshold.default))
        self.pseudo_label_threshold.setToolTip(threshold.tooltip())
        ratio = describe(FinetuneConfig, "unlabelled_ratio")
        self.unlabelled_ratio = QSpinBox()
        self.unlabelled_ratio.setRange(int(ratio.info.minimum or 1), MAX_UNLABELLED_RATIO)
        self.unlabelled_ratio.setValue(int(ratio.default))
        self.unlabelled_ratio.setSuffix(" per labelled")
        self.unlabelled_ratio.setToolTip(ratio.tooltip())
        # the two settings in a box of their own, shown only while the switch is on
        self.semi_options = QWidget()
        rows = QFormLayout(self.semi_options)
        rows.setContentsMargins(0, 0, 0, 0)
        rows.addRow("Pseudo-label threshold:", self.pseudo_label_threshold)
        rows.addRow("Unlabelled:", self.unlabelled_ratio)
        form.addRow(self.semi_supervised)
        form.addRow(self.semi_options)
        self.semi_supervised.toggled.connect(self._show_semi_options)
        self._show_semi_options()

    def _show_semi_options(self, *_) -> None:
        on = self.semi_supervised.isChecked()
        self.semi_options.setVisible(on)
        self.semi_options.setEnabled(on)

    def _semi_settings(self) -> dict:
        """The FinetuneConfig fields of the semi-supervised controls (only the switch
        when it is off, so that a plain run's settings are what they were without it)."""
        if not self.semi_supervised.isChecked():
            return {"semi_supervised": False}
        return {
            "semi_supervised": True,
            "pseudo_label_threshold": float(self.pseudo_label_threshold.value()),
            "unlabelled_ratio": int(self.unlabelled_ratio.value()),
        }

    def make_job(self, resume: bool):
        from napari_cryossl.io import InputError

        # Resume takes the particles the run started with: its saved split numbers them, so
        # switching semi-supervised or "All tomograms" in between must not change them
        if resume and self._run_scope is not None:
            semi_settings, every = self._run_scope
        else:
            semi_settings, every = self._semi_settings(), self.all_tomograms.all_tomograms()
        semi = semi_settings["semi_supervised"]
        # semi-supervised: the unlabelled rows (class 0) travel too, for the pseudo-labels
        pairs = project_tables(self.session, every=every, labelled_only=not semi)
        table = _concat(pairs)
        check_labels(table)
        n_labelled = int((table["class_number"].to_numpy() > 0).sum())
        out = self.output_path()
        if resume and not self.resume_path().is_file():
            raise InputError(f"{self.resume_path()}: no checkpoint to resume; start a new run")
        init = self.session.encoder_path
        box = int(
            getattr(self.session, "box_size", 0) or suggested_box_size(self.session.point_size)
        )
        settings = {
            "epochs": int(self.epochs.value()) or None,  # None: the recipe's for the device
            "batch_size": min(int(self.batch_size.value()), n_labelled),
            "min_steps": int(self.min_steps.value()) if self.min_steps.value() >= 0 else None,
            "device": self.device.currentText(),
            "head_init": "probe" if self.head_from_probe.isChecked() else "random",
            "centre_particles": self.centre_particles.isChecked(),
            **semi_settings,
            # names travel in the checkpoint, so predictions elsewhere (CLI) keep them
            "class_names": {n: self.session.class_name(n) for n in self.session.class_numbers()},
        }
        self._run_scope = (semi_settings, every)

        def job():
            from napari_cryossl.ops.train import finetune
            from napari_cryossl.train import FinetuneConfig

            # with an encoder, its box size and architecture (ops.finetune takes them)
            yield from finetune(pairs, FinetuneConfig(**settings), out, init=init,
                                box_size=None if init is not None else box, resume=resume)

        return job

    def _on_success(self) -> None:
        out = self.output_path()
        if out.is_file():
            self.session.use_classifier(out)
            acc = (self.last_status.metrics or {}).get("val_accuracy") if self.last_status else None
            text = self._saved_text(out, "classifier")
            if isinstance(acc, float):
                text += f" (validation accuracy {acc:.1%})"
            self.status.info(text + "; continue with step 7 (Prediction)")

    def _model_in_use(self) -> Path | None:
        return self.session.classifier_path

    def _choose_init(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Encoder checkpoint", "", CHECKPOINT_FILTER)
        if path:
            self.session.use_encoder(Path(path))

    def _show_state(self) -> None:
        set_path_label(self.init_label, self.session.encoder_path, "none: training from scratch")
        if self.session.store is None:
            self.labels_label.setText("")
            self._update_ready()
            return
        all_counts = self.session.class_counts()
        counts = {n: c for n, c in all_counts.items() if n > 0}
        n_unlabelled = all_counts.get(0, 0)
        prefix = "Labelled"
        if self.all_tomograms.all_tomograms():
            try:
                labels = self._tables()["class_number"].to_numpy()
            except Exception as exc:  # another tomogram's annotations cannot be read
                self.labels_label.setText(f"Labels of the project: {exc}")
                self._update_ready()
                return
            n_unlabelled = int((labels == 0).sum())
            numbers, n = np.unique(labels[labels > 0], return_counts=True)
            counts = dict.fromkeys(counts, 0) | dict(zip(numbers.tolist(), n.tolist(), strict=True))
            prefix = f"Labelled in {len(self.session.project)} tomograms"
        parts = [f"{self.session.class_name(n)}: {c}" for n, c in counts.items()]
        text = f"{prefix}: " + (", ".join(parts) if parts else "none")
        if self.semi_supervised.isChecked():
            text += f"; unlabelled (learnt from with pseudo-labels): {n_unlabelled}"
        self.labels_label.setText(text)
        self._update_ready()

    def _tables(self):
        """Every particle, labelled or not, of the tomograms fine-tuning would use."""
        return _concat(project_tables(self.session, every=self.all_tomograms.all_tomograms()))

    def _labelled(self):
        """The labelled particles fine-tuning would use (every project tomogram's if chosen)."""
        every = self.all_tomograms.all_tomograms()
        return _concat(project_tables(self.session, every=every, labelled_only=True))

    def _on_finished(self) -> None:
        super()._on_finished()
        self._update_ready()

    def _update_ready(self) -> None:
        """Start is offered only when fine-tuning can run; the tooltip says what is missing."""
        if self.worker is not None:
            return
        reason = None
        if self.session.store is None:
            reason = "open a tomogram in step 1 first"
        else:
            try:
                check_labels(self._labelled())
            except Exception as exc:  # InputError: what is missing, in the user's words
                reason = str(exc)
        button = self.panel.start_button
        button.setEnabled(reason is None)
        button.setToolTip(reason or "train the classifier on the labelled particles")
