"""Helper process for tests/test_annotations.py: edits a store in a loop until killed.

Usage: python _kill_writer.py STORE_PATH

Edit k (k = 0, 1, 2, ...) adds one particle at z = y = x = k with class 1 + k % 2, so
any saved state must be "particles 0..m-1" for some m: a prefix of the edits. After each
edit is saved the process prints k (flushed), so the parent knows which edits were
acknowledged before it sent SIGKILL. On start it continues from what the file holds.
"""

from __future__ import annotations

import sys

from napari_cryossl.particles.annotations import AnnotationStore


def main(path: str) -> None:
    store = AnnotationStore(path, tomo_name="tomo.mrc")
    while len(store.classes) < 2:
        store.add_class()
    k = len(store)
    print(f"ready {k}", flush=True)
    while True:
        store.add_particles([[k, k, k]], class_number=1 + k % 2)
        print(k, flush=True)
        k += 1


if __name__ == "__main__":
    main(sys.argv[1])
