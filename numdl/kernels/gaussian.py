"""The reparameterisation of a variational autoencoder and its KL term.

Forward: z = mean + exp(log_var / 2) * eps, with eps standard normal noise drawn from the
counter-based stream of numdl.kernels.dropout (Box-Muller on the uniforms at counters 2c and
2c + 1), so CPU and CUDA draw the same noise (to the rounding of their log and cos) and the
stream's state is two integers; without
sampling (evaluation) z = mean. The KL divergence of N(mean, exp(log_var)) from N(0, 1) per sample:
kl[n] = sum_l 0.5 (exp(log_var) + mean^2 - 1 - log_var).

Backward: the gradient of z and of ``weight`` * kl (the KL term's weight in the loss divided by the
batch size, the mean over samples) with respect to mean and log-variance.

Shapes: x (N, 2L), each row the L means then the L log-variances; out, noise (N, L); kl (N,);
dx like x, dout like out. The noise is stored by forward for backward (zeros without sampling).
"""

import math

from numba import uint64

from numdl.kernels.common import cpu_kernel, cuda, cuda_kernel, same_type, scalar_math
from numdl.kernels.dropout import uniform_from_counter

# --------------------------------------------------------------------------- scalar math (both targets)


@scalar_math
def normal_from_counter(seed, counter, like):
    # Box-Muller in the type of ``like`` (no float64 math in float32 kernels): 1 - u lies in (0, 1],
    # so the log is finite.
    u1 = same_type(like, 1.0) - same_type(like, uniform_from_counter(seed, uint64(2) * counter))
    u2 = same_type(like, uniform_from_counter(seed, uint64(2) * counter + uint64(1)))
    return math.sqrt(same_type(like, -2.0) * math.log(u1)) * math.cos(same_type(like, 6.283185307179586) * u2)


@scalar_math
def sample_element(out, noise, x, sample, seed, offset, i):
    latent = out.shape[1]
    n, l = i // latent, i % latent
    zero = same_type(out[0, 0], 0.0)
    eps = normal_from_counter(seed, offset + uint64(i), zero) if sample else zero
    noise[n, l] = eps
    out[n, l] = x[n, l] + math.exp(same_type(out[0, 0], 0.5) * x[n, latent + l]) * eps


@scalar_math
def kl_of_sample(kl, x, n):
    latent = x.shape[1] // 2
    half, one = same_type(kl[0], 0.5), same_type(kl[0], 1.0)
    total = same_type(kl[0], 0.0)
    for l in range(latent):
        mean, log_var = x[n, l], x[n, latent + l]
        total += half * (math.exp(log_var) + mean * mean - one - log_var)
    kl[n] = total


@scalar_math
def sample_gradient_element(dx, dout, x, noise, weight, i):
    latent = dout.shape[1]
    n, l = i // latent, i % latent
    half, one = same_type(weight, 0.5), same_type(weight, 1.0)
    mean, log_var = x[n, l], x[n, latent + l]
    dx[n, l] = dout[n, l] + weight * mean
    dx[n, latent + l] = (dout[n, l] * half * math.exp(half * log_var) * noise[n, l]
                         + weight * half * (math.exp(log_var) - one))


# ---------------------------------------------------------------------------------------- CPU kernels


@cpu_kernel
def gaussian_sample_forward_cpu(out, noise, x, sample, seed, offset):
    # Overwrites out and noise; seed, offset: uint64.
    for i in range(out.size):
        sample_element(out, noise, x, sample, seed, offset, i)


@cpu_kernel
def gaussian_kl_forward_cpu(kl, x):
    for n in range(x.shape[0]):
        kl_of_sample(kl, x, n)


@cpu_kernel
def gaussian_sample_backward_cpu(dx, dout, x, noise, weight):
    for i in range(dout.size):
        sample_gradient_element(dx, dout, x, noise, weight, i)


# --------------------------------------------------------------------------------------- CUDA kernels


@cuda_kernel
def gaussian_sample_forward_cuda(out, noise, x, sample, seed, offset):
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        sample_element(out, noise, x, sample, seed, offset, i)


@cuda_kernel
def gaussian_kl_forward_cuda(kl, x):
    for n in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        kl_of_sample(kl, x, n)


@cuda_kernel
def gaussian_sample_backward_cuda(dx, dout, x, noise, weight):
    for i in range(cuda.grid(1), dout.size, cuda.gridsize(1)):
        sample_gradient_element(dx, dout, x, noise, weight, i)
