"""Shared test settings: small, deterministic, CPU."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")
