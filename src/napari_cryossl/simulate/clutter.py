"""Clutter in simulated tomograms: gold fiducials, membranes, ice, filaments, carbon.

Real tomograms hold more than the particles one wants to pick. `_draw_clutter` draws,
from the settings' per-kind amounts (per µm² of the XY field of view), a table of
objects in physical sizes converted to voxels; `_render_clutter` adds their density to
the volume before the optics (so they go through the same CTF, missing wedge, band
limit and noise as the particles), and the particles are placed around them
(`clutter_distance`). The table is the ground truth of the junk: `match_clutter` says
which picks lie on clutter, `clutter_mask` which voxels do.

Densities are in units of protein over the solvent (1 = a voxel full of protein):

- **gold** fiducials, 50–100 Å across, density 7: the mean inner potential of gold
  (about 25 V) against vitreous ice (about 4.5 V) is about 7 times that of protein
  (about 7.5 V) against ice;
- **vesicles** (300–1000 Å across) and flat **membrane** patches (discs 1000–3000 Å
  across, any orientation): a lipid bilayer as two headgroup layers, Gaussians of
  σ 4 Å at ±19 Å from the mid-plane, each at the density of protein at its peak
  (about 47 Å from outer edge to outer edge at half maximum); the hydrocarbon core
  between them is left at the solvent's density;
- **ice** contamination: soft spheres (200–600 Å in radius, edges blurred by 30 Å)
  at the density of protein, centred near the top or bottom face of the volume, where
  crystalline ice grows on the surfaces of a sample;
- **actin**-like filaments, 70 Å across, 1000–4000 Å long, at 0.49 × protein density (42
  kDa per 27.5 Å rise in a 70 Å cylinder) and **microtubule**-like hollow tubes, 250 Å
  across with a 150 Å lumen, 2000–10000 Å long, at 0.70 (13 protofilaments of 110 kDa
  tubulin dimers per 80 Å): straight segments in uniformly random 3D directions,
  cut by the faces of the volume like a real section cuts them;
- optionally a **carbon** support film with its edge: 100–200 Å thick at the bottom or
  top of the volume, covering the field of view beyond a straight edge, at 1.7 (about
  2 g/cm³ of amorphous carbon).

Every size and spacing in Å becomes voxels through the voxel size. Amounts are
expectations per µm² of field of view; the count is their floor plus one with the
probability of the fraction, so it is within one of the expectation.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import special

from napari_cryossl.io import InputError, atomic_write

#: The kinds of clutter, in the order their random streams are drawn.
CLUTTER_KINDS = ("gold", "vesicle", "membrane", "ice", "actin", "microtubule", "carbon")
#: Columns of the clutter table (voxels unless stated). x, y, z: centre (vesicle, bead,
#: blob: the sphere's centre; membrane: the disc's centre; filament: the segment's middle;
#: carbon: a point of the edge at the film's mid-depth), zero-origin voxels like the
#: particle table. radius: sphere radius (vesicle: of the bilayer's mid-plane), disc
#: radius (membrane), outer radius (filaments). inner_radius: a microtubule's lumen.
#: thickness: bilayer (vesicle, membrane) or film (carbon). length: filaments.
#: dx, dy, dz: unit axis (filaments), normal (membrane), or the in-plane direction from
#: the edge into the carbon. density: peak density, protein = 1.
CLUTTER_COLUMNS = (
    "kind",
    "x",
    "y",
    "z",
    "radius",
    "inner_radius",
    "thickness",
    "length",
    "dx",
    "dy",
    "dz",
    "density",
)

GOLD_DENSITY = 7.0
GOLD_DIAMETER_A = (50.0, 100.0)
VESICLE_DIAMETER_A = (300.0, 1000.0)
MEMBRANE_DIAMETER_A = (1000.0, 3000.0)
LEAFLET_OFFSET_A = 19.0  # headgroup peak to mid-plane
LEAFLET_SIGMA_A = 4.0
LEAFLET_DENSITY = 1.0
# outer edge to outer edge at half maximum of the headgroup peaks
BILAYER_THICKNESS_A = 2 * (LEAFLET_OFFSET_A + LEAFLET_SIGMA_A * math.sqrt(2 * math.log(2)))
ICE_RADIUS_A = (200.0, 600.0)
ICE_EDGE_A = 30.0
ICE_DENSITY = 1.0
ACTIN_RADIUS_A = 35.0
ACTIN_LENGTH_A = (1000.0, 4000.0)
ACTIN_DENSITY = round(42_000 / 0.81 / 27.5 / (math.pi * ACTIN_RADIUS_A**2), 2)  # 0.49
MICROTUBULE_RADII_A = (125.0, 75.0)  # outer, lumen
MICROTUBULE_LENGTH_A = (2000.0, 10000.0)
MICROTUBULE_DENSITY = round(
    13 * 110_000 / 0.81 / 80.0 / (math.pi * (125.0**2 - 75.0**2)), 2
)  # 0.70
CARBON_THICKNESS_A = (100.0, 200.0)
CARBON_EDGE_A = 20.0
CARBON_DENSITY = 1.7

# Voxel-averaging blur (the variance of a unit box) added to every edge.
_BOX_VAR = 1.0 / 12.0


# --------------------------------------------------------------------------- drawing


def _clutter_streams(seed: int) -> list[np.random.SeedSequence]:
    """One random stream per kind, independent of the particles' and the noise's
    (`config._seeds` spawns the first two children of the same seed), so clutter never
    moves the noise and one kind's amount never moves another kind's objects."""
    return np.random.SeedSequence(int(seed)).spawn(3)[2].spawn(len(CLUTTER_KINDS))


def _count(rate_per_um2: float, area_um2: float, rng: np.random.Generator) -> int:
    expected = rate_per_um2 * area_um2
    whole = math.floor(expected)
    return whole + int(rng.random() < expected - whole)


def _directions(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 3) uniform unit vectors, zyx."""
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _empty_table() -> pd.DataFrame:
    table = pd.DataFrame({c: pd.Series(dtype=float) for c in CLUTTER_COLUMNS})
    table["kind"] = table["kind"].astype(str)
    return table


def _draw_clutter(shape: tuple[int, int, int], config, seed: int) -> pd.DataFrame:
    """The clutter table of a tomogram of `shape` (ZYX voxels) for `config`'s amounts."""
    if not config.clutter:
        return _empty_table()
    vs = config.voxel_size
    nz, ny, nx = shape
    area_um2 = ny * nx * (vs * 1e-4) ** 2
    hi = np.array(shape, float) - 1
    rows = []
    streams = _clutter_streams(seed)

    def add(kind, zyx, radius=0.0, inner=0.0, thickness=0.0, length=0.0, d=(0, 0, 0), rho=1.0):
        rows.append(
            {
                "kind": kind,
                "x": float(zyx[2]),
                "y": float(zyx[1]),
                "z": float(zyx[0]),
                "radius": float(radius),
                "inner_radius": float(inner),
                "thickness": float(thickness),
                "length": float(length),
                "dx": float(d[2]),
                "dy": float(d[1]),
                "dz": float(d[0]),
                "density": float(rho),
            }
        )

    for kind, stream in zip(CLUTTER_KINDS, streams, strict=True):
        rng = np.random.default_rng(stream)
        if kind == "carbon":
            if not config.carbon_edge:
                continue
            n = 1
        else:
            n = _count(getattr(config, _AMOUNT_FIELDS[kind]), area_um2, rng)
        if n == 0:
            continue
        if kind == "gold":
            radii = rng.uniform(*GOLD_DIAMETER_A, size=n) / 2 / vs
            placed: list[np.ndarray] = []
            placed_r: list[float] = []
            for r in radii:  # beads do not overlap each other
                for _ in range(100):
                    c = rng.uniform(0, hi)
                    if all(
                        np.linalg.norm(c - p) >= r + q
                        for p, q in zip(placed, placed_r, strict=True)
                    ):
                        placed.append(c)
                        placed_r.append(r)
                        add(kind, c, radius=r, rho=GOLD_DENSITY)
                        break
        elif kind == "vesicle":
            for r in rng.uniform(*VESICLE_DIAMETER_A, size=n) / 2 / vs:
                add(
                    kind,
                    rng.uniform(0, hi),
                    radius=r,
                    thickness=BILAYER_THICKNESS_A / vs,
                    rho=LEAFLET_DENSITY,
                )
        elif kind == "membrane":
            radii = rng.uniform(*MEMBRANE_DIAMETER_A, size=n) / 2 / vs
            normals = _directions(n, rng)
            for r, normal in zip(radii, normals, strict=True):
                add(
                    kind,
                    rng.uniform(0, hi),
                    radius=r,
                    thickness=BILAYER_THICKNESS_A / vs,
                    d=normal,
                    rho=LEAFLET_DENSITY,
                )
        elif kind == "ice":
            for r in rng.uniform(*ICE_RADIUS_A, size=n) / vs:
                c = rng.uniform(0, hi)
                face = 0.0 if rng.random() < 0.5 else hi[0]
                c[0] = face + rng.uniform(-0.5, 0.5) * r
                add(kind, c, radius=r, rho=ICE_DENSITY)
        elif kind in ("actin", "microtubule"):
            lengths = (
                rng.uniform(*(ACTIN_LENGTH_A if kind == "actin" else MICROTUBULE_LENGTH_A), size=n)
                / vs
            )
            axes = _directions(n, rng)
            for length, axis in zip(lengths, axes, strict=True):
                if kind == "actin":
                    outer, inner, rho = ACTIN_RADIUS_A / vs, 0.0, ACTIN_DENSITY
                else:
                    outer, inner = (r / vs for r in MICROTUBULE_RADII_A)
                    rho = MICROTUBULE_DENSITY
                add(
                    kind,
                    rng.uniform(0, hi),
                    radius=outer,
                    inner=inner,
                    length=length,
                    d=axis,
                    rho=rho,
                )
        else:  # carbon: a film at the bottom or top, beyond an edge through the middle half
            t = rng.uniform(*CARBON_THICKNESS_A) / vs
            angle = rng.uniform(0, 2 * np.pi)
            normal = np.array([0.0, math.sin(angle), math.cos(angle)])
            c = rng.uniform(0.25 * hi, 0.75 * hi)
            c[0] = t / 2 if rng.random() < 0.5 else hi[0] - t / 2
            add(kind, c, thickness=t, d=normal, rho=CARBON_DENSITY)
    if not rows:
        return _empty_table()
    return pd.DataFrame(rows, columns=list(CLUTTER_COLUMNS))


_AMOUNT_FIELDS = {
    "gold": "gold_per_um2",
    "vesicle": "vesicles_per_um2",
    "membrane": "membranes_per_um2",
    "ice": "ice_per_um2",
    "actin": "actin_per_um2",
    "microtubule": "microtubules_per_um2",
}


# --------------------------------------------------------------------------- geometry


def _row_geometry(row) -> tuple[np.ndarray, np.ndarray]:
    centre = np.array([row["z"], row["y"], row["x"]], float)
    direction = np.array([row["dz"], row["dy"], row["dx"]], float)
    return centre, direction


def _parts(row, dz, dy, dx):
    """Two quantities of one object at offsets (dz, dy, dx) from its centre (arrays that
    broadcast against each other): spheres: the distance from the centre (and None);
    membranes and filaments: the offset along the normal or axis and the distance from
    it; carbon: the in-plane offset into the carbon and the z offset."""
    kind = row["kind"]
    nz, ny, nx = (np.float32(v) for v in _row_geometry(row)[1])
    if kind in ("gold", "ice", "vesicle"):
        return np.sqrt(dz * dz + dy * dy + dx * dx), None
    along = dz * nz + dy * ny + dx * nx
    if kind == "carbon":
        return along, dz
    square = dz * dz + dy * dy + dx * dx - along * along
    return along, np.sqrt(np.maximum(square, 0))


def _matter_distance(row, dz, dy, dx) -> np.ndarray:
    """Distance (voxels) from points at offsets (dz, dy, dx) to the object's matter; 0
    inside.

    Solid objects: gold beads, ice blobs, filaments (a microtubule with its lumen, where
    no particle fits); vesicles and membranes: their bilayer; carbon: the film beyond
    its edge.
    """
    kind = row["kind"]
    if kind not in CLUTTER_KINDS:
        raise InputError(
            f"clutter table: unknown kind {kind!r} (known: {', '.join(CLUTTER_KINDS)})"
        )
    a, b = _parts(row, dz, dy, dx)
    if kind in ("gold", "ice"):
        return np.maximum(a - row["radius"], 0.0)
    if kind == "vesicle":
        return np.maximum(np.abs(a - row["radius"]) - row["thickness"] / 2, 0.0)
    if kind == "membrane":  # a: along the normal, b: in the plane
        return np.hypot(
            np.maximum(np.abs(a) - row["thickness"] / 2, 0.0), np.maximum(b - row["radius"], 0.0)
        )
    if kind in ("actin", "microtubule"):  # a: along the axis, b: from the axis
        return np.hypot(
            np.maximum(np.abs(a) - row["length"] / 2, 0.0), np.maximum(b - row["radius"], 0.0)
        )
    # carbon; a: into the carbon, b: z offset from the film's mid-depth
    return np.hypot(np.maximum(-a, 0.0), np.maximum(np.abs(b) - row["thickness"] / 2, 0.0))


def clutter_distance(clutter: pd.DataFrame, zyx) -> np.ndarray:
    """Distance (voxels) from points to the matter of each clutter object, 0 inside.

    Args:
        clutter: the clutter table (`simulate_tomogram_details`, or `read_clutter`).
        zyx: (n, 3) points in voxels, ZYX (e.g. picks).

    Returns:
        (n, len(clutter)) float distances: row i, column j is point i to object j
        (bilayers: to the bilayer, so a particle inside a vesicle is not on it;
        microtubules: to the tube with its lumen).
    """
    points = np.asarray(zyx, float).reshape(-1, 3)
    out = np.empty((len(points), len(clutter)))
    for j, (_, row) in enumerate(clutter.iterrows()):
        d = points - _row_geometry(row)[0]
        out[:, j] = _matter_distance(row, d[:, 0], d[:, 1], d[:, 2])
    return out


def match_clutter(clutter: pd.DataFrame, zyx, margin: float = 0.0) -> np.ndarray:
    """For each point, the row (0-based position) of the nearest clutter object whose
    matter lies within `margin` voxels, or -1: which picks lie on junk.

    A pick whose centre is within a particle radius of a gold bead is a pick of the bead:
    pass that radius as `margin`.
    """
    distances = clutter_distance(clutter, zyx)
    if distances.shape[1] == 0:
        return np.full(len(distances), -1, dtype=np.int64)
    nearest = distances.argmin(axis=1)
    hit = distances[np.arange(len(distances)), nearest] <= margin
    return np.where(hit, nearest, -1).astype(np.int64)


def clutter_mask(shape, clutter: pd.DataFrame, margin: float = 0.0) -> np.ndarray:
    """Boolean ZYX volume of `shape`: True where a voxel lies within `margin` voxels of
    clutter matter (as `clutter_distance` measures it)."""
    shape = tuple(int(s) for s in shape)
    mask = np.zeros(shape, dtype=bool)
    for _, row in clutter.iterrows():
        window = _window(row, shape, margin + 1)
        if window is None:
            continue
        sl, (dz, dy, dx) = window
        mask[sl] |= _matter_distance(row, dz, dy, dx) <= margin
    return mask


def _extent(row) -> np.ndarray:
    """Half-extent (zyx voxels) of the box around the centre holding the object's matter
    (carbon: infinite in y and x)."""
    kind = row["kind"]
    direction = _row_geometry(row)[1]
    if kind in ("gold", "ice"):
        return np.full(3, row["radius"])
    if kind == "vesicle":
        return np.full(3, row["radius"] + row["thickness"])
    if kind == "membrane":
        # a disc of radius R with normal n reaches R·sqrt(1 - n_i²) along axis i
        return row["radius"] * np.sqrt(np.clip(1 - direction**2, 0, 1)) + row["thickness"]
    if kind in ("actin", "microtubule"):
        return np.abs(direction) * row["length"] / 2 + row["radius"]
    return np.array([row["thickness"] / 2, np.inf, np.inf])


def _window(row, shape, pad: float):
    """(slices, (dz, dy, dx) offsets from the centre, broadcastable) of the voxel window
    holding an object and `pad` voxels around it, clipped to `shape`; None when it misses
    the volume."""
    centre = _row_geometry(row)[0]
    extent = _extent(row) + pad
    with np.errstate(invalid="ignore"):
        lo = np.maximum(np.floor(np.nan_to_num(centre - extent, neginf=0)), 0).astype(np.int64)
        hi = np.minimum(
            np.ceil(np.nan_to_num(centre + extent, posinf=max(shape))) + 1, shape
        ).astype(np.int64)
    if np.any(hi <= lo):
        return None
    axes = [
        np.arange(a, b, dtype=np.float32) - np.float32(c)
        for a, b, c in zip(lo, hi, centre, strict=True)
    ]
    slices = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    return slices, (axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :])


# --------------------------------------------------------------------------- rendering


def _edge(x: np.ndarray, sigma: float) -> np.ndarray:
    """1 well inside (x < 0), 0 well outside, a Gaussian-blurred step of width sigma."""
    return 0.5 * special.erfc(x / np.float32(math.sqrt(2) * sigma))


def _bilayer(s: np.ndarray, voxel_size: float) -> np.ndarray:
    """Density of a bilayer at signed distances `s` (voxels) from its mid-plane, each voxel
    the average of the profile over its length along the normal (mass-conserving at any
    voxel size)."""
    h = LEAFLET_OFFSET_A / voxel_size
    sigma = LEAFLET_SIGMA_A / voxel_size
    areal = LEAFLET_DENSITY * sigma * math.sqrt(2 * math.pi)  # voxels of protein per voxel²
    k = np.float32(1 / (math.sqrt(2) * sigma))
    out = np.zeros_like(s)
    for mu in (-h, h):
        out += special.erf((s - mu + 0.5) * k) - special.erf((s - mu - 0.5) * k)
    return out * np.float32(areal / 2)


def _object_density(row, dz, dy, dx, voxel_size: float) -> np.ndarray:
    kind = row["kind"]
    a, b = _parts(row, dz, dy, dx)
    sharp = math.sqrt(_BOX_VAR)
    rho = np.float32(row["density"])
    if kind == "gold":
        return rho * _edge(a - row["radius"], sharp)
    if kind == "ice":
        return rho * _edge(a - row["radius"], math.hypot(ICE_EDGE_A / voxel_size, sharp))
    if kind == "vesicle":
        return _bilayer(a - np.float32(row["radius"]), voxel_size)
    if kind == "membrane":
        return _bilayer(a, voxel_size) * _edge(b - row["radius"], 1.0)
    if kind in ("actin", "microtubule"):
        value = _edge(b - row["radius"], sharp) * _edge(np.abs(a) - row["length"] / 2, sharp)
        if row["inner_radius"] > 0:
            value = value * (1 - _edge(b - row["inner_radius"], sharp))
        return rho * value
    # carbon
    edge = math.hypot(CARBON_EDGE_A / voxel_size, sharp)
    return rho * _edge(-a, edge) * _edge(np.abs(b) - row["thickness"] / 2, sharp)


def _render_clutter(volume: np.ndarray, clutter: pd.DataFrame, offset, voxel_size: float) -> None:
    """Add the clutter's density to `volume` (float32 ZYX, in place); the table's voxel
    (0, 0, 0) is the volume's `offset` (a padded volume)."""
    offset = np.asarray(offset, float)
    for _, row in clutter.iterrows():
        shifted = row.copy()
        shifted["z"], shifted["y"], shifted["x"] = (
            row["z"] + offset[0],
            row["y"] + offset[1],
            row["x"] + offset[2],
        )
        # soft edges reach a few of their widths beyond the nominal extent
        blur = 3 * ICE_EDGE_A / voxel_size if row["kind"] == "ice" else 3.0
        window = _window(shifted, volume.shape, 2.0 + blur)
        if window is None:
            continue
        sl, (dz, dy, dx) = window
        volume[sl] += _object_density(shifted, dz, dy, dx, voxel_size)


# --------------------------------------------------------------------------- files


def write_clutter(clutter: pd.DataFrame, path: Path | str) -> Path:
    """Write a clutter table as CSV (atomically); coordinates in zero-origin voxels, like
    the particle files' x, y, z."""
    path = Path(path)
    with atomic_write(path) as tmp:
        clutter.loc[:, list(CLUTTER_COLUMNS)].to_csv(tmp, index=False, float_format="%.4f")
    return path


def read_clutter(path: Path | str) -> pd.DataFrame:
    """Read a clutter table written by `write_clutter` (InputError names a bad file)."""
    path = Path(path)
    try:
        table = pd.read_csv(path, dtype={"kind": str})
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a clutter table ({exc})") from None
    missing = [c for c in CLUTTER_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(f"{path}: not a clutter table, missing columns {', '.join(missing)}")
    unknown = sorted(set(table["kind"]) - set(CLUTTER_KINDS))
    if unknown:
        raise InputError(f"{path}: unknown clutter kinds {', '.join(unknown)}")
    return table.loc[:, list(CLUTTER_COLUMNS)]
