"""Export section in a real viewer: RELION 5 (centred Å + tomogram set) and Dynamo tables."""

from __future__ import annotations

import numpy as np
import pytest
import starfile

from napari_cryossl.io import (
    particle_zyx,
    read_dynamo_table,
    read_particles,
    read_tomograms_star,
)


def test_export_relion5_and_dynamo(dock, tomogram, truth, tmp_path):
    pytest.importorskip("dynamotable")
    _viewer, widget = dock()
    assert widget.data.open_path(tomogram)
    session = widget.session
    session.store.add_class("ribosome")
    session.store.add_class("proteasome")
    zyx = particle_zyx(truth)
    rows = session.add_particles(zyx)
    session.store.set_class(rows[:4], 1)
    session.store.set_class(rows[4:8], 2)
    ex = widget.show_section("export")
    ex.classes.setCurrentIndex(ex.classes.findData("labels"))
    n = len(zyx)

    # RELION 5: Å from the tomogram centre, rlnTomoName, and the tomogram set beside
    ex.star_format.setCurrentIndex(ex.star_format.findData("relion5"))
    out = tmp_path / "classified.star"
    assert ex.export(out) == n
    assert "classified_tomograms.star" in ex.status.text()
    written = starfile.read(out)
    assert "rlnCenteredCoordinateXAngst" in written.columns
    assert "rlnCoordinateX" not in written.columns
    assert set(written["rlnTomoName"]) == {tomogram.name}
    records = read_tomograms_star(tmp_path / "classified_tomograms.star")
    assert records[tomogram.name].path == tomogram.resolve()
    back = read_particles(out, tomograms=records)
    np.testing.assert_allclose(particle_zyx(back), zyx, atol=1e-6)
    assert back["class_number"].tolist()[:8] == [1] * 4 + [2] * 4

    # RELION 4 stays the default flavour
    ex.star_format.setCurrentIndex(ex.star_format.findData("relion4"))
    plain = tmp_path / "plain.star"
    assert ex.export(plain) == n and "rlnCoordinateX" in starfile.read(plain).columns

    # Dynamo: 1-based voxels, class, the tomogram in the table map
    tbl = tmp_path / "averaging.tbl"
    assert ex.export(tbl) == n
    table = read_dynamo_table(tbl)
    np.testing.assert_allclose(particle_zyx(table), zyx, atol=1e-9)
    assert table["class_number"].tolist()[:8] == [1] * 4 + [2] * 4
    assert set(table["tomo_name"]) == {tomogram.name}
    assert set(np.loadtxt(tbl)[:, 35]) == {session.voxel_size}
