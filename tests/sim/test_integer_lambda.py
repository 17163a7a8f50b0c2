"""Λ-shaped attention in the integer model (sim/lambda_cache.py) against the fake-quant torch
model with quant.lambda_attention, on the tiny random LLaMA with S=2 sinks, a window of W=8 and
per-channel key blocks of 4 tokens, over a stream of 6 windows.

Metrics as in test_integer_model.py (docs/numerics.md §12). The tiny model's attention is nearly
uniform, so a position error barely moves its logits; the tests with teeth sharpen attention by
scaling the float q/k projections before quantization.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmfab.quant.artifact import load_artifact, save_artifact
from llmfab.quant.checkpoint import load_checkpoint
from llmfab.quant.kv_cache_4bit import Kv4CacheConfig
from llmfab.quant.lambda_attention import disable_lambda_attention, enable_lambda_attention
from llmfab.quant.model import LlamaModel
from llmfab.quant.recipe import Recipe
from llmfab.sim import kv_ring, lambda_cache
from llmfab.sim.fixed_point import ACT32
from llmfab.sim.integer_model import LambdaCache
from llmfab.sim.integer_weights import integer_model_from_artifact, integer_model_from_torch, round_to_nearest_model
from llmfab.sim.kv_ring import BlockLayout, LambdaShape

SHAPE = LambdaShape(sinks=2, window=8)
BLOCK = 4
TOKENS = 48  # six windows
DEFAULT_KV4 = Kv4CacheConfig.named("per_channel", "per_token", block_tokens=BLOCK)
LAYOUTS = {
    "act32": None,
    "kv4": DEFAULT_KV4,
    "kv4-per-token": Kv4CacheConfig.named("per_token", "per_token", block_tokens=BLOCK),
    "kv4-per-channel": Kv4CacheConfig.named("per_channel", "per_channel", block_tokens=BLOCK),
    "kv8": Kv4CacheConfig.named("per_channel", "per_token", block_tokens=BLOCK, bits=8),
}
# (max relative logit error, min top-1), as for dense attention; KV8 held to the KV4 bound
TOLERANCE = {"act32": (0.04, 0.9), "kv4": (0.08, 0.85), "kv8": (0.08, 0.85)}


@pytest.fixture(scope="module")
def checkpoint(tiny_hf_folder):
    return load_checkpoint(str(tiny_hf_folder), use_cache=False)


@pytest.fixture(scope="module")
def ids(checkpoint):
    return torch.randint(0, checkpoint.config.vocab_size, (TOKENS,), generator=torch.Generator().manual_seed(0))


def compressed(checkpoint, kv4, shape=SHAPE, sharpen: float = 1.0, **options):
    """(fake-quant torch model with Λ attention, integer model) with the same integer weights;
    ``sharpen`` scales the float q and k projections (attention logits by its square)."""
    float_model = LlamaModel.from_checkpoint(checkpoint)
    for layer in float_model.model.layers:  # new tensors: the checkpoint's weights are shared
        for projection in (layer.self_attn.q_proj, layer.self_attn.k_proj):
            projection.weight.data = projection.weight.data * sharpen
    model = round_to_nearest_model(float_model, **(options or dict(bits=4, group_size=32)))
    enable_lambda_attention(model, shape.sinks, shape.window, kv4=kv4)
    return model, integer_model_from_torch(model, kv4, shape)


def agreement(model, integer, ids) -> tuple[float, float]:
    """(max relative logit error, top-1 agreement) of one prefill of ``ids``."""
    with torch.no_grad():
        reference = model(ids[None], model.new_cache())[0].double().numpy()
    emulated = ACT32.to_float(integer.forward(ids.numpy()))
    relative = np.abs(emulated - reference).max(-1) / np.abs(reference).max(-1)
    return float(relative.max()), float((emulated.argmax(-1) == reference.argmax(-1)).mean())


def off_by_one_query_slot(shape, queries):
    """A deliberate error: full-ring queries one slot too early."""
    return np.minimum(np.asarray(queries), shape.slots - 2)


@pytest.mark.parametrize("layout", ["act32", "kv4", "kv8"])
@pytest.mark.parametrize("options", [
    dict(bits=4, group_size=32),
    dict(bits=2, group_size=32, sparse=True, zero_halves=True),
], ids=["w4g32", "w2g32-2:4-half-zeros"])
def test_lambda_logits_track_fake_quant(checkpoint, ids, layout, options):
    model, integer = compressed(checkpoint, LAYOUTS[layout], **options)
    relative, top1 = agreement(model, integer, ids)
    bound, least = TOLERANCE[layout]
    assert relative <= bound and top1 >= least  # measured 0.018-0.044 and >= 0.96


@pytest.mark.parametrize("layout", ["act32", "kv4"])
def test_a_wrong_slot_position_breaks_the_bound(checkpoint, ids, monkeypatch, layout):
    """With sharpened attention the right slots track torch and a query one slot off does not."""
    model, integer = compressed(checkpoint, LAYOUTS[layout], sharpen=4.0)
    bound, _ = TOLERANCE[layout]
    assert agreement(model, integer, ids)[0] <= bound  # measured 0.021 / 0.044
    monkeypatch.setattr(kv_ring, "query_positions", off_by_one_query_slot)
    assert agreement(model, integer, ids)[0] > bound  # measured 0.11 / 0.14


def test_dense_attention_does_not_pass_for_lambda(checkpoint, ids):
    """The window matters: the dense integer model misses Λ torch on sharpened attention."""
    model, integer = compressed(checkpoint, None, sharpen=4.0)
    dense = type(integer)(**{**integer.__dict__, "lambda_shape": None})
    assert agreement(model, integer, ids)[0] <= TOLERANCE["act32"][0]
    assert agreement(model, dense, ids)[0] > TOLERANCE["act32"][0]


def chunked(integer, ids: np.ndarray, sizes) -> np.ndarray:
    """Logits of ``ids`` fed through one cache in chunks of the given sizes (the last repeats)."""
    cache, logits, at = integer.new_cache(), [], 0
    sizes = list(sizes)
    while at < ids.size:
        size = sizes.pop(0) if len(sizes) > 1 else sizes[0]
        logits.append(integer.forward(ids[at : at + size], cache))
        at += size
    assert cache.position == ids.size
    return np.concatenate(logits)


CHUNKINGS = ([40], [3], [13, 1], [7, 20, 2])


@pytest.mark.parametrize(("shape", "layout"), [
    *((SHAPE, layout) for layout in LAYOUTS), (LambdaShape(0, 8), "kv4"), (LambdaShape(5, 6), "kv4-per-channel"),
], ids=str)
def test_chunked_prefill_equals_decode_steps_bit_for_bit(checkpoint, ids, shape, layout):
    """Any chunking (whole prompt, chunks of 3, 13 then steps, 7 + 20 + 2s) gives the integers of
    decode steps; LambdaShape(5, 6) has a sink block (4 of 5 sinks) that fills and a fifth sink
    that never does."""
    _, integer = compressed(checkpoint, LAYOUTS[layout], shape)
    tokens = ids[:40].numpy()
    steps = chunked(integer, tokens, [1])
    for sizes in CHUNKINGS:
        assert np.array_equal(chunked(integer, tokens, sizes), steps), sizes


def test_reading_blocks_quantized_before_they_fill_would_break_chunking(checkpoint, ids, monkeypatch):
    """The causal reading rule is what makes chunks agree: read every block as stored at the end
    of the chunk (as a plain append-then-read cache would) and chunk boundaries show."""
    _, integer = compressed(checkpoint, DEFAULT_KV4)
    tokens = ids[:40].numpy()
    steps = chunked(integer, tokens, [1])
    monkeypatch.setattr(lambda_cache, "_forms", lambda timeline, queries: [
        (timeline.stored, np.ones((queries.size, timeline.index.size), dtype=bool))])
    assert not np.array_equal(chunked(integer, tokens, [3]), steps)


def test_memory_is_constant_in_stream_length(checkpoint, ids):
    _, integer = compressed(checkpoint, DEFAULT_KV4)
    cache = integer.new_cache()
    sizes = {}
    for end in range(1, 3 * SHAPE.window + 1):
        integer.forward(ids[end - 1 : end].numpy(), cache)
        sizes[end] = cache.nbytes()
    two, three = 2 * SHAPE.window, 3 * SHAPE.window
    assert sizes[two] == sizes[three] and sizes[two] > sizes[SHAPE.sinks + 1]
    window = BlockLayout.window(SHAPE, BLOCK)
    for keys, _ in cache.layers:
        first, stop = window.held_blocks(three - SHAPE.sinks)
        assert stop - first <= window.block_slots and keys.window.blocks.shape[0] == window.block_slots


def test_kv4_holds_codes_and_stages_the_unfinished_block(checkpoint, ids):
    _, integer = compressed(checkpoint, DEFAULT_KV4)
    cache = integer.new_cache()
    integer.forward(ids[:17].numpy(), cache)  # sinks 0-1; window blocks 2-5, 6-9, 10-13 and 14-16 staged
    keys, values = cache.layers[0]
    sink_store, window_store = keys.sinks, keys.window
    assert sink_store.staged.shape[1] == 0 and window_store.staged.shape[1] == 3
    assert window_store.codes.codes.max() <= 15 and window_store.layout.held_blocks(15) == (1, 3)
    assert values.sinks is None and values.window.codes.codes.max() <= 15


def test_lambda_without_eviction_is_the_dense_model_bit_for_bit(checkpoint, ids):
    """With S + W >= the stream and an ACT32 cache, keys rotated at their slots equal keys rotated
    at their positions before storing: Λ and dense agree exactly."""
    _, integer = compressed(checkpoint, None, LambdaShape(4, 60))
    dense = type(integer)(**{**integer.__dict__, "lambda_shape": None})
    assert np.array_equal(integer.forward(ids.numpy()), dense.forward(ids.numpy()))


@pytest.fixture(scope="module")
def artifacts(checkpoint, tmp_path_factory):
    """{preset: folder} of accllm (Λ 2 + 8, KV4) and w4a8kv4 (dense) artifacts with RTN weights."""
    folders = {}
    for preset, options in (("accllm", dict(bits=2, group_size=32, sparse=True)),
                            ("w4a8kv4", dict(bits=4, group_size=32))):
        recipe = Recipe.from_preset(preset, group_size=32, **(dict(sinks=2, window=8) if preset == "accllm" else {}))
        model = round_to_nearest_model(LlamaModel.from_checkpoint(checkpoint), **options)
        folders[preset] = tmp_path_factory.mktemp("artifact") / preset
        save_artifact(folders[preset], model, recipe, checkpoint.tokenizer)
    return folders


def test_integer_model_from_artifact_takes_the_recipe_shape(artifacts, ids):
    artifact = load_artifact(artifacts["accllm"])
    integer = integer_model_from_artifact(artifact)
    assert integer.lambda_shape == LambdaShape(2, 8) and integer.keys.per_channel and not integer.values.per_channel
    assert isinstance(integer.new_cache(), LambdaCache)
    explicit = integer_model_from_torch(artifact.model, Kv4CacheConfig(), LambdaShape(2, 8))
    assert np.array_equal(integer.forward(ids.numpy()), explicit.forward(ids.numpy()))
    disable_lambda_attention(artifact.model)
    dense = integer_model_from_artifact(load_artifact(artifacts["w4a8kv4"]))
    assert dense.lambda_shape is None and dense.keys.per_channel


@pytest.mark.parametrize(("preset", "bits"), [("w8a8kv8", 8), ("accllm", 4)])
def test_artifact_kv_width_and_float_cache_follow_the_recipe(artifacts, ids, preset, bits):
    artifact = load_artifact(artifacts["w4a8kv4"])
    recipe = Recipe.from_preset(preset, **(dict(sinks=2, window=8) if preset == "accllm" else {}))
    for kv_bits, expected in ((recipe.kv_bits, bits), (16, None)):
        relabelled = type(artifact)(**{**artifact.__dict__, "recipe": Recipe.from_preset(
            preset, kv_bits=kv_bits, **(dict(sinks=2, window=8) if preset == "accllm" else {}))})
        integer = integer_model_from_artifact(relabelled)
        assert (None if integer.keys is None else integer.keys.bits) == expected
        assert integer.forward(ids[:12].numpy()).shape == (12, artifact.config.vocab_size)


def test_a_stream_past_the_trained_context_keeps_tracking(checkpoint):
    """Positions never exceed S + W - 1, so a stream longer than max_position_embeddings runs and
    still tracks torch; prefill at once and in chunks of 64 agree bit for bit."""
    length = checkpoint.config.max_position_embeddings + 44
    long_ids = torch.randint(0, checkpoint.config.vocab_size, (length,), generator=torch.Generator().manual_seed(1))
    model, integer = compressed(checkpoint, DEFAULT_KV4)
    relative, top1 = agreement(model, integer, long_ids)
    assert relative <= TOLERANCE["kv4"][0] and top1 >= TOLERANCE["kv4"][1]  # measured 0.037, 0.97
    assert np.array_equal(chunked(integer, long_ids.numpy(), [64]), integer.forward(long_ids.numpy()))


def test_one_form_per_token_equals_the_masked_forms_of_attention(monkeypatch):
    """When every query reads each token in the same form (one decode query), _forms gives one array
    of per-token forms; attention over it equals attention over both forms with per-query masks."""
    from llmfab.sim.attention_ops import AttentionConstants
    from llmfab.sim.vector_ops import rope_tables

    rng = np.random.default_rng(7)
    shape, kv, heads, d = LambdaShape(sinks=2, window=8), 2, 4, 16
    cos, sin = rope_tables(1.0 / 10000 ** (np.arange(0, d, 2) / d), np.arange(shape.slots))
    start = 6  # ring filling: query 6 sees tokens 0..6
    index = np.arange(start + 1)
    raw = rng.integers(-(1 << 20), 1 << 20, (kv, index.size, d))
    stored = raw + rng.integers(-(1 << 12), 1 << 12, raw.shape)  # as if quantized
    ready = np.where(index < 4, 3, kv_ring.NEVER)  # tokens 0..3 read stored, 4..6 raw
    keys = lambda_cache.Timeline(index, raw, stored, ready)
    values = lambda_cache.Timeline(index, raw[::-1].copy(), stored[::-1].copy(), ready)
    q = rng.integers(-(1 << 20), 1 << 20, (heads, 1, d))
    constants = AttentionConstants.for_head_dim(d)
    collapsed = lambda_cache.lambda_attention(q, keys, values, start, shape, cos, sin, constants)

    def both_forms(timeline, queries):
        reads = kv_ring.reads_stored(queries, timeline.ready_at)
        return [(timeline.stored, reads), (timeline.raw, ~reads)]

    monkeypatch.setattr(lambda_cache, "_forms", both_forms)
    masked = lambda_cache.lambda_attention(q, keys, values, start, shape, cos, sin, constants)
    assert np.array_equal(collapsed, masked)
