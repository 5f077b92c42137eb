"""benchmarks/czii_portal.py: scoring pickers on a copick project with the CZII metric,
end to end without the network (a small local copick project with the challenge's kind
names, a simulated tomogram and its true picks in Å)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

copick = pytest.importorskip("copick")

ROOT = Path(__file__).resolve().parents[1]
VOXEL = 20.0
# the challenge's kinds, stood in for by the built-in complexes of the same names
KINDS = {"apo-ferritin": "apoferritin", "ribosome": "ribosome80S"}


def _load_script():
    spec = importlib.util.spec_from_file_location(
        "czii_portal", ROOT / "benchmarks" / "czii_portal.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["czii_portal"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def czii_project(tmp_path_factory):
    """A copick project laid out like the challenge's: objects apo-ferritin and ribosome
    (labels and radii of the challenge), one run with a simulated tomogram (wbp, 20 Å)
    and the true picks under user curation, session 0; a decoy user's picks beside them."""
    from napari_cryossl.particles.picking_metrics import CZII_RADII_A
    from napari_cryossl.simulate import SimulationConfig, simulate_tomogram_details

    root_dir = tmp_path_factory.mktemp("czii")
    config_path = root_dir / "config.json"
    config = {
        "config_type": "filesystem",
        "name": "czii-test",
        "overlay_root": f"local://{root_dir / 'overlay'}",
        "static_root": f"local://{root_dir / 'static'}",
        "overlay_fs_args": {"auto_mkdir": True},
        "pickable_objects": [
            {"name": name, "is_particle": True, "label": i + 1, "radius": CZII_RADII_A[name]}
            for i, name in enumerate(KINDS)
        ],
    }
    config_path.write_text(json.dumps(config))
    root = copick.from_file(str(config_path))
    sim = SimulationConfig(
        n_classes=2, box_size=16, voxel_size=VOXEL, snr=2.0, structures=tuple(KINDS.values())
    )
    result = simulate_tomogram_details((32, 80, 80), 6, sim, seed=3)
    run = root.new_run("TS_test")
    run.new_voxel_spacing(VOXEL).new_tomogram("wbp").from_numpy(result.volume)
    xyz_a = result.particles[["x", "y", "z"]].to_numpy(dtype=np.float64) * VOXEL
    classes = result.particles["class_number"].to_numpy()
    for label, name in enumerate(KINDS, start=1):
        run.new_picks(object_name=name, session_id="0", user_id="curation").from_numpy(
            xyz_a[classes == label]
        )
        # another user's picks are not the ground truth
        decoy = run.new_picks(object_name=name, session_id="0", user_id="someone")
        decoy.from_numpy(np.array([[5.0, 5.0, 5.0]]))
    return config_path, {name: int((classes == k).sum()) for k, name in enumerate(KINDS, 1)}


def test_kind_names_from_the_portal_map_to_the_challenge_kinds():
    script = _load_script()
    assert script.kind_of("apo-ferritin") == "apo-ferritin"
    assert script.kind_of("ferritin complex") == "apo-ferritin"
    assert script.kind_of("cytosolic ribosome") == "ribosome"
    assert script.kind_of("pp7 VLP") == "virus-like-particle"
    assert script.kind_of("membrane") is None


def test_score_a_local_copick_project_end_to_end(czii_project, tmp_path):
    script = _load_script()
    config, n_true = czii_project
    result = script.score_copick(
        config,
        pickers=("dog", "template"),
        templates=dict(KINDS),
        angular_step=60.0,
        radii_a={k: v for k, v in script.CZII_RADII_A.items() if k in KINDS},
    )
    assert result["runs"] == ["TS_test"] and result["voxel_spacing"] == VOXEL
    for picker in ("dog", "template"):
        entry = result["pickers"][picker]
        for name, count in n_true.items():
            assert entry["kinds"][name]["n_true"] == count  # the decoy user is left out
            assert entry["kinds"][name]["weight"] == 1.0  # the challenge's weights
        assert 0.0 <= entry["fbeta"] <= 1.0
        assert entry["seconds_per_run"] > 0
    # with the true templates at SNR 2, template matching finds most particles
    assert result["pickers"]["template"]["recall"] >= 0.6
    # the command line writes the same JSON
    out = tmp_path / "score.json"
    assert (
        script.main(
            ["score", str(config), "--pickers", "dog", "--max-runs", "1", "--out", str(out)]
        )
        == 0
    )
    saved = json.loads(out.read_text())
    assert set(saved["pickers"]) == {"dog"}
    # every challenge kind is scored; kinds absent from the project have no true particles
    assert saved["pickers"]["dog"]["kinds"]["beta-amylase"]["weight"] == 0.0
    assert saved["pickers"]["dog"]["kinds"]["ribosome"]["n_true"] == n_true["ribosome"]
