"""Compression recipes: one frozen description of how a model is compressed, with named presets.

A recipe fixes the weight format (bits, group size, 2:4 sparsity and how the mask is chosen), the
activation and KV-cache formats, Λ-shaped attention (sink tokens and window), the calibration
data and the number of QAT steps. ``Recipe.from_preset(name, **overrides)`` starts from a preset
and replaces single options; every value is checked when the recipe is built, and
:meth:`Recipe.check_model` checks it against a model's shapes.

Bit widths of 16 mean "left in floating point" for activations and the KV cache.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass

from llmfab.errors import InputError
from llmfab.quant.config import ModelConfig
from llmfab.quant import kv_cache_4bit
from llmfab.quant.kv4 import SUPPORTED_KV_CACHE_BITS, Kv4Config, KvGranularity
from llmfab.quant.qat_modules import QatMode
from llmfab.quant.smoothing import check_alpha
from llmfab.quant.weight_quant import SUPPORTED_WEIGHT_BITS, ZeroPoint

FLOAT_BITS = 16
QAT_MODES = tuple(mode.value for mode in QatMode)  # what QAT trains
SUPPORTED_ACT_BITS = (8, FLOAT_BITS)
SUPPORTED_KV_BITS = (*SUPPORTED_KV_CACHE_BITS, FLOAT_BITS)


class Sparsity(enum.Enum):
    """Which weights of a decoder linear layer are pruned."""

    NONE = "none"
    TWO_FOUR = "2:4"  # 2 of every 4 consecutive input columns kept


class PruningMethod(enum.Enum):
    """How the 2:4 mask is chosen (see quant/sparsity.py)."""

    SPARSEGPT = "sparsegpt"  # OBS saliency, chosen jointly with GPTQ in one sweep
    WANDA = "wanda"  # |W| * ||X_j||, then GPTQ on the kept weights


_ENUM_FIELDS = {
    "kv_key_granularity": KvGranularity,
    "kv_value_granularity": KvGranularity,
    "sparsity": Sparsity,
    "pruning": PruningMethod,
    "zero_point": ZeroPoint,
}


def _check_choice(what: str, value: int, allowed: tuple[int, ...], option: str) -> None:
    """Raise InputError unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise InputError(f"{option} {value}: {what} must be one of {', '.join(map(str, allowed))}")


def _parse_enum(kind: type[enum.Enum], value, key: str) -> enum.Enum:
    """``kind(value)``, accepting the value with '-' for '_', or an InputError listing choices."""
    text = str(value).replace("-", "_") if kind is not Sparsity else str(value)
    try:
        return kind(text)
    except ValueError:
        choices = ", ".join(member.value for member in kind)
        raise InputError(f"{key.replace('_', '-')} {value!r} is not one of: {choices}") from None


@dataclass(frozen=True)
class Recipe:
    """How to compress a model. ``sinks``/``window`` of None mean dense attention.

    KV scales are per-channel for keys and per-token for values by default, for KV4 and KV8 alike
    (measured on SmolLM2: docs/lambda_attention.md). ``calib_texts`` are UTF-8 files; empty means the calibration excerpt shipped with llmfab.
    Calibration uses ``calib_samples`` windows of ``calib_seq_len`` tokens. ``smooth_alpha``
    (0 < α < 1) folds SmoothQuant smoothing into the float weights before GPTQ (quant/smoothing.py);
    None leaves the weights as they are. ``head_act_bits`` is the LM head's input width: 8
    (per-token int8) or 16 (float, A16); None means ``act_bits``. ``qat_block_epochs`` > 0 runs
    block-wise reconstruction (quant/block_ap.py) on ``qat_block_samples`` windows of
    ``calib_seq_len`` tokens before the ``qat_steps`` end-to-end QAT steps. Both train on
    ``qat_texts`` (UTF-8 files); empty means the calibration texts when ``calib_texts`` names
    some, else a text shipped with llmfab: passages of four Austen novels
    (tools/make_training_excerpt.py) up to ``BUNDLED_TRAINING_MAX_BITS``-bit weights, the
    calibration excerpt above.
    """

    name: str
    weight_bits: int
    group_size: int = 64
    act_bits: int = 8
    kv_bits: int = 8
    kv_key_granularity: KvGranularity = KvGranularity.PER_CHANNEL
    kv_value_granularity: KvGranularity = KvGranularity.PER_TOKEN
    sparsity: Sparsity = Sparsity.NONE
    pruning: PruningMethod = PruningMethod.SPARSEGPT
    zero_point: ZeroPoint = ZeroPoint.INTEGER
    sinks: int | None = None
    window: int | None = None
    calib_texts: tuple[str, ...] = ()
    calib_samples: int = 32
    calib_seq_len: int = 512
    qat_steps: int = 0
    qat_lr: float = 1e-5
    qat_scale_lr: float = 2e-3
    qat_loss: str = "kl"
    qat_mode: str = "scales"
    qat_block_epochs: int = 0
    qat_block_samples: int = 64
    qat_block_lr: float = 1e-3
    qat_block_scale_lr: float = 1e-3
    qat_texts: tuple[str, ...] = ()
    smooth_alpha: float | None = None
    head_act_bits: int | None = None

    def __post_init__(self) -> None:
        """Reject bit widths, sizes and Λ settings that no stage supports."""
        _check_choice("weight bits", self.weight_bits, SUPPORTED_WEIGHT_BITS, "--weight-bits")
        _check_choice("activation bits", self.act_bits, SUPPORTED_ACT_BITS, "--act-bits")
        _check_choice("KV-cache bits", self.kv_bits, SUPPORTED_KV_BITS, "--kv-bits")
        if self.head_act_bits is not None:
            _check_choice("LM-head input bits", self.head_act_bits, SUPPORTED_ACT_BITS, "--head-act-bits")
        for option, value, smallest in (("--group-size", self.group_size, 1),
                                        ("--calib-samples", self.calib_samples, 1),
                                        ("--calib-seq-len", self.calib_seq_len, 2),
                                        ("--qat-steps", self.qat_steps, 0),
                                        ("--qat-block-epochs", self.qat_block_epochs, 0),
                                        ("--qat-block-samples", self.qat_block_samples, 1)):
            if value < smallest:
                raise InputError(f"{option} is {value}; it must be at least {smallest}")
        if self.qat_lr <= 0 or self.qat_scale_lr <= 0:
            raise InputError(f"--qat-lr and --qat-scale-lr must be positive, got {self.qat_lr} and "
                             f"{self.qat_scale_lr}")
        if self.qat_block_lr <= 0 or self.qat_block_scale_lr <= 0:
            raise InputError(f"--qat-block-lr and --qat-block-scale-lr must be positive, got "
                             f"{self.qat_block_lr} and {self.qat_block_scale_lr}")
        if self.qat_loss not in ("kl", "ce"):
            raise InputError(f"--qat-loss {self.qat_loss!r} is not one of: kl (distillation), ce")
        if self.qat_mode not in QAT_MODES:
            raise InputError(f"--qat-mode {self.qat_mode!r} is not one of: {', '.join(QAT_MODES)}")
        if self.smooth_alpha is not None:
            check_alpha(self.smooth_alpha)
        if self.sparsity is Sparsity.TWO_FOUR and self.group_size % 4:
            raise InputError(
                f"--group-size {self.group_size} is not a multiple of 4, but 2:4 sparsity needs whole "
                "groups of 4 columns in every quantization group; use e.g. 32 or 64"
            )
        if self.zero_point is ZeroPoint.HALF_INTEGER and self.weight_bits == 8:
            raise InputError(
                "--zero-point half-integer needs 9-bit stored zero points at 8 weight bits, which the "
                "packed format does not hold; use --zero-point integer with 8-bit weights"
            )
        if (self.sinks is None) != (self.window is None):
            raise InputError(
                "Λ-shaped attention needs both --sinks and --window (e.g. --sinks 4 --window 1024); "
                f"got sinks={self.sinks}, window={self.window}"
            )
        if self.sinks is not None and (self.sinks < 0 or self.window < 1):
            raise InputError(
                f"--sinks must be >= 0 and --window >= 1, got sinks={self.sinks}, window={self.window}"
            )

    @property
    def lambda_attention(self) -> bool:
        """True when attention is Λ-shaped (sink tokens plus a sliding window)."""
        return self.window is not None

    @property
    def trains(self) -> bool:
        """True when post-training quantization is followed by training (block reconstruction
        and/or end-to-end QAT steps)."""
        return self.qat_steps > 0 or self.qat_block_epochs > 0

    @property
    def head_input_bits(self) -> int | None:
        """Per-token fake-quant bits of the LM head's input, None when it stays float."""
        bits = self.act_bits if self.head_act_bits is None else self.head_act_bits
        return None if bits == FLOAT_BITS else bits

    @property
    def sparse(self) -> bool:
        """True when decoder linears are 2:4-pruned."""
        return self.sparsity is Sparsity.TWO_FOUR

    @classmethod
    def from_preset(cls, preset: str, **overrides) -> "Recipe":
        """The preset named ``preset`` with options replaced by ``overrides`` (None = keep).

        Enum options accept their string values (e.g. ``sparsity="2:4"``). Setting ``window``
        alone on a dense preset turns Λ attention on with the default 4 sinks.
        """
        if preset not in PRESETS:
            raise InputError(f"unknown preset {preset!r}; known presets: {', '.join(PRESETS)}")
        values = {k: v for k, v in overrides.items() if v is not None}
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise InputError(f"unknown recipe option(s) {sorted(unknown)}")
        for key, kind in _ENUM_FIELDS.items():
            if key in values and not isinstance(values[key], kind):
                values[key] = _parse_enum(kind, values[key], key)
        for key in ("calib_texts", "qat_texts"):
            if key in values:
                values[key] = tuple(str(t) for t in values[key])
        base = PRESETS[preset]
        if "window" in values and base.sinks is None and "sinks" not in values:
            values["sinks"] = DEFAULT_SINKS
        return dataclasses.replace(base, **values)

    def check_model(self, config: ModelConfig) -> None:
        """Raise InputError unless this recipe fits ``config`` (group size, 2:4, Λ window)."""
        inputs = {
            "q_proj/k_proj/v_proj/gate_proj/up_proj (hidden_size)": config.hidden_size,
            "o_proj (num_heads * head_dim)": config.q_dim,
            "down_proj (intermediate_size)": config.intermediate_size,
        }
        for layer, width in inputs.items():
            if width % self.group_size:
                divisors = [d for d in range(8, min(width, 256) + 1, 8) if width % d == 0 and
                            all(w % d == 0 for w in inputs.values())]
                raise InputError(
                    f"--group-size {self.group_size} does not divide the input dimension {width} of "
                    f"{layer} in {config.name or 'this model'}; use a group size that divides every "
                    f"layer's input, e.g. one of {divisors or [1]}"
                )
        if self.sinks is not None and self.sinks + self.window > config.max_position_embeddings:
            raise InputError(
                f"Λ attention with {self.sinks} sinks and a window of {self.window} tokens spans more "
                f"than the model's trained context ({config.max_position_embeddings} tokens); "
                f"choose --window at most {config.max_position_embeddings - self.sinks}"
            )

    def to_dict(self) -> dict:
        """JSON-ready dict (enums as their values, tuples as lists)."""
        out = dataclasses.asdict(self)
        for key in _ENUM_FIELDS:
            out[key] = out[key].value
        out["calib_texts"] = list(self.calib_texts)
        out["qat_texts"] = list(self.qat_texts)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "Recipe":
        """Inverse of :meth:`to_dict`."""
        values = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        if set(values) - known:
            raise InputError(f"recipe has unknown field(s) {sorted(set(values) - known)}")
        for key, kind in _ENUM_FIELDS.items():
            if key in values:
                values[key] = _parse_enum(kind, values[key], key)
        values["calib_texts"] = tuple(values.get("calib_texts", ()))
        values["qat_texts"] = tuple(values.get("qat_texts", ()))  # absent from artifacts made before it
        return cls(**values)


DEFAULT_SINKS = 4
DEFAULT_WINDOW = 1024

# SmoothQuant α measured on SmolLM2-135M (docs/compression_measurements.md); the 2-bit presets are
# not measured with smoothing yet and keep it off. w8a8kv8 keeps the LM head's input in float (A16):
# with A8 there it missed its ≤ 1.01 perplexity target on SmolLM2 (1.013 with KV8, 1.006 with the A16
# head; docs/compression_measurements.md, "KV8").
MEASURED_SMOOTH_ALPHA = 0.7

# QAT steps of the 2-bit presets (scales only, lr 2e-3): on SmolLM2-135M 20 steps took w2a8kv4 from
# perplexity ratio 4.91 to 2.66 (docs/compression_measurements.md), 7-30 min on 2 shared cores.
QAT_STEPS_2BIT = 20

# Block reconstruction (2 epochs per layer, latent-weight and scale lr 1e-3) before those 20 steps:
# on SmolLM2-135M (128 windows of four novels; docs/compression_measurements.md, "Block
# reconstruction") w2a8kv4's perplexity ratio 2.13 instead of 2.66, accllm's 2.62 instead of 3.72;
# 22-25 min more on 2 cores.
QAT_BLOCK_EPOCHS_W2 = 2
# ... on 128 windows of 512 tokens of the bundled training text (the measured runs took 128
# windows of the four novels; with 64 of the Emma excerpt accllm's ratio was 3.02, with 128 of the
# bundled text 2.686).
QAT_BLOCK_SAMPLES_2BIT = 128
# Which bundled text training defaults to: the four-novel training text for weights of up to 2
# bits (accllm 2.686, w2a8kv4 1.711 on SmolLM2, 2026-12-03), the Emma calibration excerpt above
# (w4a8kv4 1.092 on it, 1.1005 on the four-novel text: its one lr-1e-4 epoch fits the excerpt).
BUNDLED_TRAINING_MAX_BITS = 2

# w2a8kv4's weight groups: 32 columns a scale. With group 64 and the schedule above the ratio was
# 2.13; with 32 the post-training model is 153.9 instead of 192.4 and the trained one 1.74 (target
# 1.8), at 2.568 bits per weight instead of 2.289 (docs/compression_measurements.md, "Group size at
# 2 bits"). accllm keeps 64: under 2:4 a MAC unit of the RTL takes
# 64 columns (32 kept weights), so its groups must be multiples of 64 (rtl/engine/gemm_core.py).
W2_GROUP_SIZE = 32

# w4a8kv4's block reconstruction: one epoch, latent-weight lr 1e-4 (scales 1e-3), no end-to-end
# steps took SmolLM2-135M's ratio from 1.132 to 1.092 (docs/compression_measurements.md, "Block
# reconstruction at 4 bits"; ~7 min more on 2 cores). The 2-bit schedule (lr 1e-3) wrecks it (3.10).
QAT_BLOCK_EPOCHS_W4 = 1
QAT_BLOCK_LR_W4 = 1e-4

PRESETS: dict[str, Recipe] = {
    "w8a8kv8": Recipe("w8a8kv8", weight_bits=8, group_size=64, act_bits=8, kv_bits=8,
                      smooth_alpha=MEASURED_SMOOTH_ALPHA, head_act_bits=FLOAT_BITS),  # A16 head: see above
    "w4a8kv4": Recipe("w4a8kv4", weight_bits=4, group_size=64, act_bits=8, kv_bits=4,
                      smooth_alpha=MEASURED_SMOOTH_ALPHA, qat_block_epochs=QAT_BLOCK_EPOCHS_W4,
                      qat_block_lr=QAT_BLOCK_LR_W4),
    "w2a8kv4": Recipe("w2a8kv4", weight_bits=2, group_size=W2_GROUP_SIZE, act_bits=8, kv_bits=4,
                      qat_steps=QAT_STEPS_2BIT, qat_block_epochs=QAT_BLOCK_EPOCHS_W2,
                      qat_block_samples=QAT_BLOCK_SAMPLES_2BIT),
    "accllm": Recipe("accllm", weight_bits=2, group_size=64, act_bits=8, kv_bits=4,
                     sparsity=Sparsity.TWO_FOUR, pruning=PruningMethod.SPARSEGPT,
                     sinks=DEFAULT_SINKS, window=DEFAULT_WINDOW, qat_steps=QAT_STEPS_2BIT,
                     qat_block_epochs=QAT_BLOCK_EPOCHS_W2, qat_block_samples=QAT_BLOCK_SAMPLES_2BIT),
}


def kv4_cache_config(recipe: Recipe) -> kv_cache_4bit.Kv4CacheConfig | None:
    """The packed cache layout a recipe asks for (code width ``kv_bits``, keys and values scaled
    separately), or None for a float cache (``kv_bits`` 16)."""
    if recipe.kv_bits == FLOAT_BITS:
        return None
    return kv_cache_4bit.Kv4CacheConfig(Kv4Config(recipe.kv_key_granularity, bits=recipe.kv_bits),
                                        Kv4Config(recipe.kv_value_granularity, bits=recipe.kv_bits))


def kv_bytes_per_token(config: ModelConfig, recipe: Recipe) -> float:
    """KV-cache bytes one token of one sequence occupies, over all layers, keys and values, as the
    cache classes that store them count it (quant/kv_cache_4bit.py)."""
    return kv_cache_4bit.kv_bytes_per_token(config, kv4_cache_config(recipe))
