"""Tomograms (MRC) and particle tables (RELION STAR, CSV): the one place units and axes change.

Conventions (docs/coordinates.md has the full story, with examples):

- Arrays are **ZYX** voxels. `open_tomogram` returns a read-only ``numpy.memmap`` (MRC) or
  a lazy ``zarr.Array`` (OME-Zarr), so a multi-GB tomogram costs no RAM until boxes are
  read from it.
- Particle files are **XYZ**: pixels (0-based voxel centres of the tomogram) for RELION 3/4
  ``rlnCoordinateX/Y/Z`` and CSV ``x,y,z``; Ångström from the tomogram centre for RELION-5
  ``rlnCenteredCoordinateX/Y/ZAngst``, converted as RELION does:
  ``x_px = x_Å / voxel_size + nx / 2`` (float division, see `centred_to_voxels`).
  RELION-4 pixels of the unbinned tilt series are rescaled to a binned tomogram's voxels
  when the file (or the tomograms.star) gives their pixel size.
- Class numbers are 1-based (``rlnClassNumber``); 0 means unlabelled.
- Every file written here goes through `atomic_write`: a crash leaves the old file or the new
  one, never half of one.
- Every problem with an input file raises `InputError` (a ``ValueError``) whose message
  names the file and the problem; readers never let another exception type escape on bad
  bytes (the fuzz tests hold them to that).

One module per concern, from the bottom up:

- `errors`: `InputError`, `InputWarning` and the argument checks every reader shares;
- `atomic`: `atomic_write`, the clean-up of what a killed writer left, and
  `refuse_to_replace` (no output replaced without consent);
- `omezarr`: OME-Zarr images (`read_ome_zarr`: metadata checked, levels opened lazily);
- `mrc`: `Tomogram`, `open_tomogram` (MRC files and OME-Zarr folders), `read_mrc`, `write_mrc`;
- `coordinates`: RELION-5 centred Å <-> voxels, the tomogram geometry of a file
  (`RelionTomogram`: a tomogram as RELION records it);
- `tables`: the particle table (`PARTICLE_COLUMNS`, `make_particle_table`, `particle_zyx`);
- `star`: the RELION STAR parser and the columns written to STAR files;
- `relion5`: RELION tomogram sets (`read_tomograms_star`, `write_tomograms_star`);
- `particles`: `read_particles` / `write_particles` (STAR or CSV, by suffix);
- `dynamo`: Dynamo tables for subtomogram averaging (`write_dynamo_table`,
  `read_dynamo_table`; needs the optional dynamotable);
- `copick`: copick projects (`read_copick`: runs, tomograms, picks in Å -> particle tables;
  `write_copick`: classes back as picks; needs the optional copick).

Every public name is importable from ``napari_cryossl.io`` itself.
This package imports neither torch nor Qt.
"""

from napari_cryossl.io.atomic import atomic_write, refuse_to_replace, remove_stale_temp_files
from napari_cryossl.io.coordinates import RelionTomogram, centred_to_voxels, voxels_to_centred
from napari_cryossl.io.copick import read_copick, write_copick
from napari_cryossl.io.dynamo import read_dynamo_table, write_dynamo_table
from napari_cryossl.io.errors import InputError, InputWarning
from napari_cryossl.io.errors import _read_text as _read_text
from napari_cryossl.io.mrc import (
    DEFAULT_VOXEL_SIZE,
    MRC_MODES,
    TOMOGRAM_SUFFIXES,
    Tomogram,
    open_tomogram,
    read_mrc,
    write_mrc,
)
from napari_cryossl.io.omezarr import OmeZarrImage, read_ome_zarr
from napari_cryossl.io.particles import PARTICLE_SUFFIXES, read_particles, write_particles
from napari_cryossl.io.relion5 import read_tomograms_star, write_tomograms_star
from napari_cryossl.io.star import _read_star_blocks as _read_star_blocks
from napari_cryossl.io.star import _star_float as _star_float
from napari_cryossl.io.star import _star_text as _star_text
from napari_cryossl.io.star import replace_star_columns
from napari_cryossl.io.tables import (
    PARTICLE_COLUMNS,
    PARTICLE_SOURCES,
    make_particle_table,
    particle_zyx,
)

__all__ = [
    "DEFAULT_VOXEL_SIZE",
    "MRC_MODES",
    "PARTICLE_COLUMNS",
    "PARTICLE_SOURCES",
    "PARTICLE_SUFFIXES",
    "TOMOGRAM_SUFFIXES",
    "InputError",
    "InputWarning",
    "OmeZarrImage",
    "RelionTomogram",
    "Tomogram",
    "atomic_write",
    "refuse_to_replace",
    "centred_to_voxels",
    "make_particle_table",
    "open_tomogram",
    "particle_zyx",
    "read_copick",
    "read_dynamo_table",
    "read_mrc",
    "read_ome_zarr",
    "read_particles",
    "read_tomograms_star",
    "remove_stale_temp_files",
    "replace_star_columns",
    "voxels_to_centred",
    "write_copick",
    "write_dynamo_table",
    "write_mrc",
    "write_particles",
    "write_tomograms_star",
]
