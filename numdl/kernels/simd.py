"""Sixteen float32 lanes at a time, for CPU kernels whose inner loops are too short for LLVM's
vectoriser: a numba type for an LLVM ``<16 x float>`` value and the few operations on it that
those kernels need (loads and stores of the first ``count`` lanes, fused multiply-add, lane sums,
lane-wise exp, sigmoid and tanh with the scalar float32 helpers' arithmetic).

Why: LLVM vectorises a loop 16 lanes wide and 4 iterations deep, so a loop of 16 (an attention
head of 16 features, a row of 16 keys) never reaches the vector body and runs scalar. With these,
a kernel says what a vector is. On the AVX-512 cores of the benchmark machines each operation is
one instruction; elsewhere LLVM splits it into what the CPU has (two AVX2 halves, four SSE
quarters), still correct.

Loads and stores are masked by lane (``count``: lanes 0..count-1, the rest read as 0 and left
alone), so a row of any length is handled in 16-lane steps without touching memory past it. The
offset is an index into a 1-D C-contiguous float32 array, not checked: callers stay in range.
CPU kernels only (the CUDA twins have their own loops); float64 kernels keep their loops.

Numba's on-disk cache keys a kernel on its own source file, not on this one: after editing this
module in a checkout, delete numdl/kernels/__pycache__ (an installed upgrade replaces every file).
"""

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from numdl.kernels import activation

LANES = 16
_FLOAT, _INT32, _INT64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
_VECTOR = ir.VectorType(_FLOAT, LANES)
_INT_VECTOR = ir.VectorType(_INT32, LANES)
_MASK = ir.VectorType(ir.IntType(1), LANES)


class Float32x16(types.Type):
    """Sixteen float32 lanes held in one vector register (numba type)."""

    def __init__(self):
        super().__init__(name="Float32x16")


float32x16 = Float32x16()


@register_model(Float32x16)
class _Float32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VECTOR)


def _is_float32_array(array):
    return isinstance(array, types.Array) and array.dtype == types.float32 and array.ndim == 1 and array.layout == "C"


def _address(context, builder, array_type, array, offset, offset_type):
    data = context.make_array(array_type)(context, builder, array).data
    index = context.cast(builder, offset, offset_type, types.int64)
    return builder.bitcast(builder.gep(data, [index]), _VECTOR.as_pointer())


def _splat(builder, value, vector_type):
    one = builder.insert_element(ir.Constant(vector_type, ir.Undefined), value, ir.Constant(_INT32, 0))
    return builder.shuffle_vector(one, ir.Constant(vector_type, ir.Undefined), ir.Constant(_INT_VECTOR, [0] * LANES))


def _first_lanes(context, builder, count, count_type):
    # <16 x i1>: lane i is set when i < count (none for count <= 0). The count is clamped to
    # [0, 16] first, so that one 32-bit lane compare does (not two 64-bit ones).
    count = context.cast(builder, count, count_type, types.int64)
    none, every = ir.Constant(_INT64, 0), ir.Constant(_INT64, LANES)
    count = builder.select(builder.icmp_signed("<", count, none), none, count)
    count = builder.select(builder.icmp_signed(">", count, every), every, count)
    lanes = ir.Constant(_INT_VECTOR, list(range(LANES)))
    return builder.icmp_signed("<", lanes, _splat(builder, builder.trunc(count, _INT32), _INT_VECTOR))


def _intrinsic_call(builder, name, return_type, arguments):
    function = cgutils.get_or_insert_function(builder.module, ir.FunctionType(return_type, [a.type for a in arguments]),
                                              name)
    return builder.call(function, arguments)


def _all_lanes(context, builder, count, count_type):
    return builder.icmp_signed(">=", context.cast(builder, count, count_type, types.int64), ir.Constant(_INT64, LANES))


@intrinsic
def vload(typingctx, array, offset):
    """array[offset:offset + 16]."""
    if not (_is_float32_array(array) and isinstance(offset, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        return builder.load(_address(context, builder, signature.args[0], args[0], args[1], signature.args[1]), align=4)

    return float32x16(array, offset), codegen


@intrinsic
def vstore(typingctx, array, offset, value):
    """array[offset:offset + 16] = value."""
    if not (_is_float32_array(array) and isinstance(offset, types.Integer) and value == float32x16):
        return None

    def codegen(context, builder, signature, args):
        builder.store(args[2], _address(context, builder, signature.args[0], args[0], args[1], signature.args[1]),
                      align=4)
        return context.get_dummy_value()

    return types.none(array, offset, value), codegen


@intrinsic
def vload_first(typingctx, array, offset, count):
    """Lanes 0..count-1 from array[offset:], the rest 0 (memory past them is not read). A plain
    load when count >= 16: a masked load cannot take its value from a store still in flight (a
    row stored and read back soon after would wait for the store to reach the cache)."""
    if not (_is_float32_array(array) and isinstance(offset, types.Integer) and isinstance(count, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        address = _address(context, builder, signature.args[0], args[0], args[1], signature.args[1])
        with builder.if_else(_all_lanes(context, builder, args[2], signature.args[2])) as (whole, part):
            with whole:
                whole_block, loaded = builder.block, builder.load(address, align=4)
            with part:
                mask = _first_lanes(context, builder, args[2], signature.args[2])
                masked = _intrinsic_call(builder, "llvm.masked.load.v16f32.p0", _VECTOR,
                                         [address, ir.Constant(_INT32, 4), mask, ir.Constant(_VECTOR, [0.0] * LANES)])
                part_block = builder.block
        value = builder.phi(_VECTOR)
        value.add_incoming(loaded, whole_block)
        value.add_incoming(masked, part_block)
        return value

    return float32x16(array, offset, count), codegen


@intrinsic
def vstore_first(typingctx, array, offset, count, value):
    """array[offset + i] = value[i] for lanes i < count; the rest of the array is left alone (a
    plain store when count >= 16, as vload_first)."""
    if not (_is_float32_array(array) and isinstance(offset, types.Integer) and isinstance(count, types.Integer)
            and value == float32x16):
        return None

    def codegen(context, builder, signature, args):
        address = _address(context, builder, signature.args[0], args[0], args[1], signature.args[1])
        with builder.if_else(_all_lanes(context, builder, args[2], signature.args[2])) as (whole, part):
            with whole:
                builder.store(args[3], address, align=4)
            with part:
                mask = _first_lanes(context, builder, args[2], signature.args[2])
                _intrinsic_call(builder, "llvm.masked.store.v16f32.p0", ir.VoidType(),
                                [args[3], address, ir.Constant(_INT32, 4), mask])
        return context.get_dummy_value()

    return types.none(array, offset, count, value), codegen


@intrinsic
def vsplat(typingctx, scalar):
    """The float32 ``scalar`` in every lane."""
    if scalar != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return _splat(builder, args[0], _VECTOR)

    return float32x16(scalar), codegen


@intrinsic
def vsplat_from(typingctx, array, offset):
    """array[offset] in every lane (one broadcast load; the offset is not checked or wrapped)."""
    if not (_is_float32_array(array) and isinstance(offset, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        address = builder.bitcast(_address(context, builder, signature.args[0], args[0], args[1], signature.args[1]),
                                  _FLOAT.as_pointer())
        return _splat(builder, builder.load(address, align=4), _VECTOR)

    return float32x16(array, offset), codegen


@intrinsic
def vzero(typingctx):
    """Every lane 0."""
    def codegen(context, builder, signature, args):
        return ir.Constant(_VECTOR, [0.0] * LANES)

    return float32x16(), codegen


@intrinsic
def vfma(typingctx, a, b, c):
    """a * b + c lane by lane, rounded once."""
    if not (a == b == c == float32x16):
        return None

    def codegen(context, builder, signature, args):
        return _intrinsic_call(builder, "llvm.fma.v16f32", _VECTOR, list(args))

    return float32x16(a, b, c), codegen


def _binary(operation):
    @intrinsic
    def vector_operation(typingctx, a, b):
        if not (a == b == float32x16):
            return None

        def codegen(context, builder, signature, args):
            return getattr(builder, operation)(*args)

        return float32x16(a, b), codegen

    return vector_operation


vadd = _binary("fadd")
vsub = _binary("fsub")
vmul = _binary("fmul")
vdiv = _binary("fdiv")


def _reduce_lanes(builder, value, combine):
    # lane 0 of a tree of combine() over the 16 lanes: halves combined pairwise (8 + 8, 4 + 4, 2 + 2, 1 + 1)
    width = LANES
    while width > 1:
        width //= 2
        rotate = ir.Constant(_INT_VECTOR, [(i + width) % LANES for i in range(LANES)])
        value = combine(value, builder.shuffle_vector(value, ir.Constant(_VECTOR, ir.Undefined), rotate))
    return builder.extract_element(value, ir.Constant(_INT32, 0))


def _larger(builder, a, b):
    return builder.select(builder.fcmp_ordered(">", a, b), a, b)


@intrinsic
def vsum(typingctx, a):
    """The sum of the 16 lanes (added pairwise)."""
    if a != float32x16:
        return None

    def codegen(context, builder, signature, args):
        return _reduce_lanes(builder, args[0], builder.fadd)

    return types.float32(a), codegen


def _constant(value):
    return ir.Constant(_VECTOR, [float(np.float32(value))] * LANES)


def _integer(value):
    return ir.Constant(_INT_VECTOR, [int(value)] * LANES)


def _below(builder, a, b):
    return builder.fcmp_ordered("<", a, b)


def _above(builder, a, b):
    return builder.fcmp_ordered(">", a, b)


def _exp_nonpositive_lanes(builder, x):
    """exp of each lane, for lanes <= 0: activation._exp_nonpositive_float32's steps (Cephes' expf)
    on all lanes at once, so the two agree to an ulp or two (a NaN lane stays NaN)."""
    def madd(a, b, c):
        return builder.fadd(builder.fmul(a, b), c)

    # compares, not min/max: a NaN lane passes both
    low = _constant(activation._EXP_LOW)
    x = builder.select(_below(builder, x, low), low, x)
    x = builder.select(_above(builder, x, _constant(0.0)), _constant(0.0), x)
    k = builder.fptosi(builder.fsub(_constant(0.5), builder.fmul(x, _constant(activation._LOG2E))), _INT_VECTOR)
    kf = builder.sitofp(k, _VECTOR)
    r = builder.fadd(builder.fadd(x, builder.fmul(kf, _constant(activation._LN2_HIGH))),
                     builder.fmul(kf, _constant(activation._LN2_LOW)))
    p = _constant(activation._E0)
    for coefficient in (activation._E1, activation._E2, activation._E3, activation._E4, activation._E5):
        p = madd(p, r, _constant(coefficient))
    y = builder.fadd(madd(builder.fmul(p, r), r, r), _constant(1.0))
    k1 = builder.ashr(builder.add(k, _integer(1)), _integer(1))
    bias, mantissa = _integer(activation._EXPONENT_BIAS), _integer(activation._MANTISSA_SCALE)
    scale1 = builder.bitcast(builder.mul(builder.sub(bias, k1), mantissa), _VECTOR)
    scale2 = builder.bitcast(builder.mul(builder.sub(bias, builder.sub(k, k1)), mantissa), _VECTOR)
    return builder.fmul(builder.fmul(y, scale1), scale2)


def _lane_function(lanes):
    # an intrinsic taking and giving one float32x16, built by lanes(builder, x); its doc is lanes'
    @intrinsic
    def lane_function(typingctx, x):
        if x != float32x16:
            return None

        def codegen(context, builder, signature, args):
            return lanes(builder, args[0])

        return float32x16(x), codegen

    lane_function.__doc__ = lanes.__doc__
    return lane_function


def _sigmoid_lanes(builder, x):
    """sigmoid of each lane: activation._sigmoid_float32's steps (exp of -|x|, no overflow), so the
    two agree to an ulp or two; a NaN lane stays NaN."""
    zero, one = _constant(0.0), _constant(1.0)
    e = _exp_nonpositive_lanes(builder, builder.select(_above(builder, x, zero), builder.fneg(x), x))
    inverse = builder.fdiv(one, builder.fadd(one, e))
    return builder.select(_below(builder, x, zero), builder.fmul(e, inverse), inverse)


def _tanh_lanes(builder, x):
    """tanh of each lane: activation._tanh_float32's steps (a rational function, then float32's
    rounded tail), so the two agree to an ulp or two; a NaN lane stays NaN."""
    zero = _constant(0.0)
    negative = _below(builder, x, zero)
    magnitude = builder.select(negative, builder.fneg(x), x)
    limit = _constant(activation._TANH_RATIONAL_LIMIT)
    c = builder.select(_above(builder, magnitude, limit), limit, magnitude)
    x2 = builder.fmul(c, c)
    numerator = _constant(activation._A6)
    for coefficient in (activation._A5, activation._A4, activation._A3, activation._A2, activation._A1):
        numerator = builder.fadd(builder.fmul(numerator, x2), _constant(coefficient))
    numerator = builder.fmul(c, builder.fadd(builder.fmul(numerator, x2), _constant(activation._A0)))
    denominator = _constant(activation._B3)
    for coefficient in (activation._B2, activation._B1, activation._B0):
        denominator = builder.fadd(builder.fmul(denominator, x2), _constant(coefficient))
    t = builder.fdiv(numerator, denominator)
    for threshold, value in ((activation._S3, activation._V3), (activation._S2, activation._V2),
                             (activation._S1, activation._V1), (activation._S0, activation._V0)):
        t = builder.select(_above(builder, magnitude, _constant(threshold)), _constant(value), t)
    return builder.select(negative, builder.fneg(t), t)


vexp_nonpositive = _lane_function(_exp_nonpositive_lanes)
vsigmoid = _lane_function(_sigmoid_lanes)
vtanh = _lane_function(_tanh_lanes)


@intrinsic
def vkeep_first(typingctx, a, count, fill):
    """a's lanes 0..count-1, the others the float32 ``fill``."""
    if not (a == float32x16 and isinstance(count, types.Integer) and fill == types.float32):
        return None

    def codegen(context, builder, signature, args):
        mask = _first_lanes(context, builder, args[1], signature.args[1])
        return builder.select(mask, args[0], _splat(builder, args[2], _VECTOR))

    return float32x16(a, count, fill), codegen


@intrinsic
def vmax(typingctx, a, b):
    """The larger of a and b lane by lane (b where either is NaN)."""
    if not (a == b == float32x16):
        return None

    def codegen(context, builder, signature, args):
        return _larger(builder, *args)

    return float32x16(a, b), codegen


@intrinsic
def vlargest(typingctx, a):
    """The largest of the 16 lanes."""
    if a != float32x16:
        return None

    def codegen(context, builder, signature, args):
        return _reduce_lanes(builder, args[0], lambda x, y: _larger(builder, x, y))

    return types.float32(a), codegen
