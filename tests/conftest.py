"""With pytest-xdist (the README runs two workers, one per core) every worker and what it spawns runs torch on one thread:
two workers with torch's default thread count would put more threads than cores on the machine, and OpenMP then spins."""
import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
