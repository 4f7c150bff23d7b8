"""Numba kernels, one op family per module. Only ``numdl.backend`` imports these.

Each module has the same sections: scalar math shared by both targets, CPU kernels
(``<op>_<forward|backward|step>_cpu``), CUDA kernels (``..._cuda``, the same leading parameters).
CUDA kernels are launched by ``numdl.kernels.common.launch`` (grid-stride, so one launcher fits all).
"""

KERNEL_MODULES = ("linear", "activation", "loss", "optim", "dropout", "conv", "pool", "norm", "elementwise",
                  "recurrent", "sequence", "attention", "check", "conv_transpose", "upsample", "layout",
                  "segmentation", "detection", "gaussian", "dense_chain")
