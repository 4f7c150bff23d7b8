"""numdl's own items, registered through the same hooks a third-party plugin implements."""

from numdl.extensions import BUILTIN_CALLBACKS, BUILTIN_DATASETS, BUILTIN_METRICS
from numdl.hookspecs import hookimpl
from numdl.layers import BUILTIN_LAYERS
from numdl.losses import BUILTIN_LOSSES
from numdl.optim import BUILTIN_OPTIMIZERS
from numdl.schedules import BUILTIN_SCHEDULES


@hookimpl
def numdl_register_layers():
    return BUILTIN_LAYERS


@hookimpl
def numdl_register_losses():
    return BUILTIN_LOSSES


@hookimpl
def numdl_register_optimizers():
    return BUILTIN_OPTIMIZERS


@hookimpl
def numdl_register_schedules():
    return BUILTIN_SCHEDULES


@hookimpl
def numdl_register_datasets():
    return BUILTIN_DATASETS


@hookimpl
def numdl_register_metrics():
    return BUILTIN_METRICS


@hookimpl
def numdl_register_callbacks():
    return BUILTIN_CALLBACKS
