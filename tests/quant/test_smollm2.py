"""The bundled SmolLM2-135M against transformers, which reads the same GGUF independently:
logits (fp32, max abs 1e-4), tokenizer, perplexity (0.1 %), and a sane greedy answer."""

from __future__ import annotations

import pytest
import torch

from llmfab.quant.checkpoint import load_checkpoint
from llmfab.quant.generate import TorchDecoder, generate
from llmfab.quant.model import LlamaModel
from llmfab.quant.perplexity import perplexity, read_text

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ours():
    checkpoint = load_checkpoint("smollm2-135m")
    return checkpoint, LlamaModel.from_checkpoint(checkpoint)


@pytest.fixture(scope="module")
def transformers_model(ours):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = ours[0].source
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                 dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return model, tokenizer


@pytest.fixture(scope="module")
def tokens(ours):
    return ours[0].tokenizer.encode(read_text(None)[1])


def test_config(ours):
    c = ours[0].config
    assert (c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.vocab_size) == (30, 576, 9, 3, 49152)
    assert c.tie_word_embeddings and c.max_position_embeddings == 8192


def test_tokenizer_matches_transformers(ours, transformers_model):
    text = read_text(None)[1][:50_000]
    assert ours[0].tokenizer.encode(text) == transformers_model[1](text, add_special_tokens=False).input_ids


def test_logits_match_transformers(ours, transformers_model, tokens):
    ids = torch.tensor([tokens[1000:1256]])
    with torch.no_grad():
        diff = (ours[1](ids) - transformers_model[0](ids).logits).abs().max().item()
    assert diff <= 1e-4


def test_perplexity_matches_transformers(ours, transformers_model, tokens):
    first = tokens[:8192]
    ppl_ours = perplexity(ours[1], first, 512, 512).ppl
    ppl_theirs = perplexity(lambda ids: transformers_model[0](ids).logits, first, 512, 512).ppl
    assert abs(ppl_ours / ppl_theirs - 1) <= 1e-3
    assert 5 < ppl_ours < 200  # a working 135M model on English prose


def test_greedy_chat_answer(ours):
    checkpoint, model = ours
    tok = checkpoint.tokenizer
    prompt = tok.encode(tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}]))
    answer = tok.decode(list(generate(TorchDecoder(model), prompt, 20, stop_ids=tok.stop_ids)))
    assert "Paris" in answer
