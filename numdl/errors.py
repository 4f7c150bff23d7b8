"""numdl's exceptions. Each carries one line that names the problem; the CLI prints it and exits."""


class NumdlError(Exception):
    """Base of every error numdl raises on purpose (bad input, bad config, missing data)."""

    exit_code = 1


class ConfigError(NumdlError):
    """A config value is missing, unknown or of the wrong type; the message names the key."""

    exit_code = 2


class RegistryError(ConfigError):
    """A registered name is unknown (the message lists the available ones) or registered twice."""


class UnknownNameError(RegistryError):
    """A config names an item nobody registered; callers prefix the config key that named it."""


class ShapeError(NumdlError, ValueError):
    """An array's shape does not fit the layer or loss it is given to; both shapes are named."""


class DataError(NumdlError, ValueError):
    """Input data are unusable: labels out of range, NaN/Inf, empty, wrong dtype, missing files."""


class DeviceError(NumdlError):
    """The requested device (a CUDA GPU) is not available."""


class CheckpointError(NumdlError):
    """A checkpoint cannot be read (truncated, tampered, not safetensors) or does not fit the model;
    the message names the file and every offending tensor."""


class TrainingDiverged(NumdlError):
    """Training produced NaN or Inf; the message names the first layer that did. Weights are left
    as they were before the step, and no checkpoint is written from them."""
