"""Shared test settings: small, deterministic, CPU."""

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")


#: The copick project that `copick_project` builds: pickable objects (label -> name),
#: runs and the tomograms' voxel spacing (Å).
COPICK_OBJECTS = {1: "ribosome", 2: "proteasome"}
COPICK_RUNS = ("TS_001", "TS_002")
COPICK_VOXEL = 10.0


@pytest.fixture(scope="module")
def copick_project(tmp_path_factory):
    """(config.json path, {run: (picks XYZ in Å, class numbers)}): a copick project built
    with copick's own API in a temporary folder, shared by a test module. Two runs
    (`COPICK_RUNS`), each a simulated 32x64x64 tomogram (wbp, `COPICK_VOXEL` Å) with 10
    picks (user curator, session 1) of the two objects (`COPICK_OBJECTS`)."""
    import json

    import numpy as np

    copick = pytest.importorskip("copick")
    from napari_cryossl.simulate import SimulationConfig, simulate_tomogram

    root_dir = tmp_path_factory.mktemp("copick")
    config_path = root_dir / "config.json"
    config = {
        "config_type": "filesystem",
        "name": "test",
        "overlay_root": f"local://{root_dir / 'overlay'}",
        "static_root": f"local://{root_dir / 'static'}",
        "overlay_fs_args": {"auto_mkdir": True},
        "pickable_objects": [
            {"name": name, "is_particle": True, "label": label, "radius": 60.0}
            for label, name in COPICK_OBJECTS.items()
        ],
    }
    config_path.write_text(json.dumps(config))
    root = copick.from_file(str(config_path))
    sim = SimulationConfig(
        n_classes=2, box_size=16, voxel_size=COPICK_VOXEL, snr=1.0, particle_diameter_a=120.0
    )
    truth = {}
    for seed, name in enumerate(COPICK_RUNS):
        vol, table = simulate_tomogram((32, 64, 64), 10, sim, seed=seed)
        run = root.new_run(name)
        vs = run.new_voxel_spacing(COPICK_VOXEL)
        vs.new_tomogram("wbp").from_numpy(np.asarray(vol, dtype=np.float32))
        xyz_a = table[["x", "y", "z"]].to_numpy(dtype=np.float64) * COPICK_VOXEL
        classes = table["class_number"].to_numpy()
        for label, obj in COPICK_OBJECTS.items():
            picks = run.new_picks(object_name=obj, session_id="1", user_id="curator")
            picks.from_numpy(xyz_a[classes == label])
        truth[name] = (xyz_a, classes)
    return config_path, truth


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a test module, restored afterwards.

    On a busy 2-core machine two OpenMP threads that wait for each other made small 3D
    convolutions ~50x slower (measured: 1.7 s vs 0.03 s for a training step). Modules opt
    in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_ome_zarr(
    path,
    volume,
    voxel_size: float = 10.0,
    *,
    unit: str | None = "angstrom",
    chunks: int = 16,
    n_levels: int = 2,
    version: str = "0.4",
):
    """Write a ZYX volume as an OME-Zarr multiscale image with zarr itself (NGFF 0.4 on
    Zarr v2, or 0.5 on Zarr v3): level i is the volume binned 2^i times (mean), its scale
    voxel_size · 2^i in `unit` (no unit when None)."""
    import numpy as np
    import zarr

    group = zarr.open_group(str(path), mode="w", zarr_format=2 if version == "0.4" else 3)
    level = np.asarray(volume)
    datasets = []
    for i in range(n_levels):
        if i:
            z, y, x = (s // 2 * 2 for s in level.shape)
            level = (
                level[:z, :y, :x]
                .reshape(z // 2, 2, y // 2, 2, x // 2, 2)
                .mean(axis=(1, 3, 5))
                .astype(level.dtype)
            )
        array = group.create_array(
            str(i),
            shape=level.shape,
            dtype=level.dtype,
            chunks=tuple(min(chunks, s) for s in level.shape),
        )
        array[...] = level
        datasets.append(
            {
                "path": str(i),
                "coordinateTransformations": [{"type": "scale", "scale": [voxel_size * 2**i] * 3}],
            }
        )
    axes = [{"name": n, "type": "space"} for n in "zyx"]
    if unit is not None:
        for axis in axes:
            axis["unit"] = unit
    multiscale = {"name": "tomogram", "axes": axes, "datasets": datasets}
    if version == "0.4":
        group.attrs["multiscales"] = [{"version": "0.4", **multiscale}]
    else:
        group.attrs["ome"] = {"version": version, "multiscales": [multiscale]}
    return path


@pytest.fixture
def ome_zarr_writer():
    """`write_ome_zarr(path, volume, voxel_size, ...)`; skips the test without zarr."""
    pytest.importorskip("zarr")
    return write_ome_zarr
