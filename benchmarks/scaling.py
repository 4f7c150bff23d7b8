"""Data-parallel scaling: measured step and allreduce times on this machine, extrapolated to clusters.

    python benchmarks/scaling.py            # needs numdl[mpi]; runs mpirun itself

Measures, for the reference MLP (batch 64 per rank) and CNN (batch 128 per rank): the compute time of
one training step (forward, backward, optimizer; one thread per rank) and the time of one Allreduce of
the model's flat float32 gradient buffer among 1 and 2 ranks on this host. Then models N nodes with
a ring allreduce, 2 (N - 1) / N * bytes / bandwidth + 2 (N - 1) * latency, no overlap of communication
with compute, and prints the efficiency compute / (compute + allreduce) for 8, 32 and 64 nodes at
10 and 100 Gbit/s (latency 5 us per message, stated, not measured).
"""

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

MODELS = {"mlp": 64, "cnn": 128}
LATENCY_S = 5e-6
BANDWIDTHS_GBIT = (10, 100)
NODES = (8, 32, 64)


def _model(kind):
    from numdl import bench

    return bench._numdl_model(kind)


def worker():
    """Run under mpirun: time the steps and the allreduce; rank 0 prints one JSON line."""
    from numdl.distributed import world

    comm = world()
    ranks, rank = (comm.size, comm.rank) if comm else (1, 0)
    results = {}
    for kind, batch in MODELS.items():
        model = _model(kind)
        rng = np.random.default_rng(rank)
        x, y = rng.standard_normal((batch, 28, 28)).astype(np.float32), rng.integers(0, 10, batch)
        for _ in range(3):
            model.train_step(x, y)
        steps, start = 20, time.perf_counter()
        for _ in range(steps):
            model.train_step(x, y)
        compute = (time.perf_counter() - start) / steps
        grads = model._bank.grads
        allreduce = 0.0
        if comm:
            for _ in range(5):
                comm.average(grads)
            repeats, start = 100, time.perf_counter()
            for _ in range(repeats):
                comm.average(grads)
            allreduce = (time.perf_counter() - start) / repeats
        results[kind] = {"batch": batch, "bytes": int(grads.nbytes), "step_s": compute, "allreduce_s": allreduce}
    if rank == 0:
        print("SCALING " + json.dumps({"ranks": ranks, "results": results}), flush=True)


def ring_allreduce_seconds(nbytes, nodes, gbit, latency=LATENCY_S):
    return 2 * (nodes - 1) / nodes * nbytes / (gbit * 1e9 / 8) + 2 * (nodes - 1) * latency


def main():
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        sys.exit("error: mpirun not found: pip install 'numdl[mpi]'")
    measured = {}
    for ranks in (1, 2):
        command = [mpirun, "-n", str(ranks), "--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
        result = subprocess.run(command + [sys.executable, __file__, "--worker"], capture_output=True, text=True,
                                env=dict(os.environ, OPENBLAS_NUM_THREADS="1"), timeout=900)
        line = next((l for l in result.stdout.splitlines() if l.startswith("SCALING ")), None)
        if line is None:
            sys.exit(f"error: the {ranks}-rank run failed: {result.stderr.strip().splitlines()[-1:]}")
        measured[ranks] = json.loads(line[len("SCALING "):])["results"]
    print("measured on this host (one thread per rank):")
    print(f"{'model':<6} {'gradient':>10} {'step, 1 rank':>14} {'step, 2 ranks':>14} {'allreduce, 2 ranks':>19}")
    for kind in MODELS:
        one, two = measured[1][kind], measured[2][kind]
        print(f"{kind:<6} {one['bytes'] / 1024:>8.0f} KB {one['step_s'] * 1e3:>11.2f} ms {two['step_s'] * 1e3:>11.2f} ms"
              f" {two['allreduce_s'] * 1e3:>16.3f} ms")
    print(f"\nmodelled efficiency, compute / (compute + ring allreduce), latency {LATENCY_S * 1e6:.0f} us:")
    print(f"{'model':<6} {'link':>9} " + " ".join(f"{n:>9} nodes" for n in NODES))
    for kind in MODELS:
        compute = measured[1][kind]["step_s"]
        for gbit in BANDWIDTHS_GBIT:
            cells = []
            for nodes in NODES:
                comm = ring_allreduce_seconds(measured[1][kind]["bytes"], nodes, gbit)
                cells.append(f"{compute / (compute + comm):>15.0%}")
            print(f"{kind:<6} {gbit:>4} Gbit/s " + " ".join(cells))


if __name__ == "__main__":
    worker() if "--worker" in sys.argv else main()
