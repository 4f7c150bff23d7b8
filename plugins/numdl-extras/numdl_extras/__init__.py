"""numdl-extras: Swish (learnable beta), Lion and focal loss, registered through numdl's hooks."""

__version__ = "0.1.0"
