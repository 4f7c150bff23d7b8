"""Data-parallel training over MPI (mpi4py): ``mpirun -n N numdl train CONFIG``.

Only a process launched by an MPI launcher (mpirun, mpiexec, srun) with more than one rank uses
this module; ``import numdl`` and single-process runs never import mpi4py. Each rank holds the whole
model and trains on its shard of every epoch's shuffled order (the same order everywhere, from the
same seed); after each backward pass one ``Allreduce`` over the model's flat gradient buffer averages
the gradients (no pickling), so the clip, the NaN guard and the optimizer step see the same numbers
on every rank, and the replicas stay identical. Batch-norm running statistics are averaged at every
epoch's end. Rank 0 alone writes the run folder and prints; the others write into a temporary folder
that is removed. An error on any rank aborts every rank (MPI_Abort), so none waits in a collective.
"""

import os

#: Variables by which MPI launchers tell a process its world size.
_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE", "SLURM_NTASKS")
_LOCAL_SIZE_VARIABLES = ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE")


def launched_size():
    """The world size an MPI launcher announced, or 1 (no mpi4py import, no MPI initialisation)."""
    for name in _SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 1


def local_size():
    """Ranks on this host (for dividing its cores), or 1."""
    for name in _LOCAL_SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return max(1, int(value))
    return 1


class World:
    """The MPI world of a data-parallel run: rank, size and the few collectives training needs."""

    def __init__(self):
        from numdl.errors import ConfigError

        try:
            from mpi4py import MPI
        except ImportError:
            raise ConfigError("launched under MPI, but mpi4py is missing: pip install 'numdl[mpi]'") from None
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()

    def average(self, array):
        """Average ``array`` (a contiguous host buffer) over the ranks, in place."""
        self.comm.Allreduce(self.MPI.IN_PLACE, array, op=self.MPI.SUM)
        array /= array.dtype.type(self.size)
        return array

    def average_scalar(self, value):
        return self.comm.allreduce(float(value), op=self.MPI.SUM) / self.size

    def broadcast(self, array):
        self.comm.Bcast(array, root=0)

    def agree(self, value):
        """Rank 0's value of a small picklable Python object (a config, a path) on every rank."""
        return self.comm.bcast(value, root=0)

    def abort(self, code=1):
        self.comm.Abort(code)


_world = None


def world():
    """The World when launched with more than one rank, else None (created once)."""
    global _world
    if _world is None and launched_size() > 1:
        _world = World()
    return _world


class GradientAverager:
    """What Sequential.train_step calls between backward and the NaN guard: averages the flat
    gradient buffer and the loss over the ranks."""

    def __init__(self, world):
        self.world = world

    def __call__(self, gradients, loss):
        self.world.average(gradients)
        return self.world.average_scalar(loss)


class EpochAverager:
    """fit callback, first at each epoch's end: averages every layer's non-trained state (batch-norm
    running statistics) over the ranks, so that checkpoints and evaluation agree everywhere, and makes
    the epoch's samples/s the combined throughput of all ranks."""

    def __init__(self, model, world):
        self.model, self.world = model, world

    def on_epoch_end(self, epoch, logs):
        for layer in self.model.layers:
            for array in layer.named_state().values():
                self.world.average(array)
        logs["samples_per_second"] = self.world.comm.allreduce(logs["samples_per_second"], op=self.world.MPI.SUM)
        logs["ranks"] = self.world.size


def prepare_model(model, world):
    """Start every replica from rank 0's weights and state, and average gradients from now on."""
    if model._bank is not None:
        world.broadcast(model._bank.values)
    for layer in model.layers:
        for array in layer.named_state().values():
            world.broadcast(array)
    model.reduce_gradients = GradientAverager(world)


def scaled_lr(lr, size, rule):
    """The learning rate for ``size`` ranks: ``none`` keeps it, ``linear`` multiplies it by the
    number of ranks (the effective batch grows by that much), ``sqrt`` by its square root."""
    return {"none": lr, "linear": lr * size, "sqrt": lr * size ** 0.5}[rule]
