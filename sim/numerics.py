"""The engine's integer operations in one import (docs/numerics.md).

The emulator, the integer reference model and the RTL/HLS tests use these functions; they are
defined in small modules by topic and re-exported here. numpy is the only dependency.
"""

from llmfab.sim.attention_ops import (
    AttentionConstants,
    Kv4Codes,
    attention,
    causal_visibility,
    kv4_dequantize,
    kv4_quantize,
)
from llmfab.sim.fixed_point import (
    ACT32,
    ACT_CODE_MAX,
    PROB17,
    TRIG18,
    FixedFormat,
    bit_length,
    normalize_mantissa,
    round_shift,
    saturate,
    saturate_to,
)
from llmfab.sim.linear_ops import (
    ActCodes,
    IntegerWeight,
    dequantize_act,
    embed,
    expand_2to4,
    group_sums,
    kept_lanes,
    linear,
    prepare_weight,
    requantize_per_token,
    scale_multipliers,
    signed_weights,
)
from llmfab.sim.special_functions import (
    exp2,
    exp2_table,
    exp_neg_abs,
    reciprocal,
    reciprocal_table,
    rsqrt,
    rsqrt_table,
    sigmoid,
    silu,
)
from llmfab.sim.vector_ops import (
    NormWeight,
    apply_rope,
    multiply,
    prepare_norm,
    residual_add,
    rmsnorm,
    rope_tables,
)

__all__ = [name for name in dir() if not name.startswith("_")]
