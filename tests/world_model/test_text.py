"""Tests of the text encoders: zero context, and UMT5 with a tiny random model and an offline tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from astra_gym.world_model.text import NullTextEncoder, UMT5TextEncoder, clean_prompt

WORDS = ["a", "red", "car", "drives", "left", "on", "the", "road", "&"]


def test_null_encoder_gives_one_zero_token_per_prompt():
    encoder = NullTextEncoder(16, dtype=torch.bfloat16)
    context = encoder.encode(["a", "b", "c"])
    assert context.shape == (3, 1, 16) and context.dtype == torch.bfloat16
    assert not context.any()
    assert encoder.encode("single").shape == (1, 1, 16)
    with pytest.raises(ValueError, match="text_dim"):
        NullTextEncoder(0)


def test_clean_prompt():
    assert clean_prompt("  a \n red\t\tcar &amp;amp; ") == "a red car &"


def make_wan_folder(root: Path) -> Path:
    """Writes a tiny random UMT5 encoder and a word-level tokenizer in the diffusers Wan layout."""
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    backend.post_processor = tokenizers.processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    tokenizer.save_pretrained(root / "tokenizer")
    config = transformers.UMT5Config(
        vocab_size=len(vocab),
        d_model=16,
        d_kv=4,
        d_ff=32,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        dropout_rate=0.0,
    )
    torch.manual_seed(0)
    transformers.UMT5EncoderModel(config).save_pretrained(root / "text_encoder")
    return root


@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory) -> Path:
    return make_wan_folder(tmp_path_factory.mktemp("wan"))


def test_umt5_zeroes_positions_past_the_prompt_length(wan_folder):
    encoder = UMT5TextEncoder.from_pretrained(wan_folder, max_length=12)
    context = encoder.encode(["a red car drives left", "the road"])
    assert context.shape == (2, 12, 16) and encoder.text_dim == 16
    lengths = [6, 3]  # words + end token
    for row, n in enumerate(lengths):
        assert not context[row, n:].any()
        assert (context[row, :n].abs().sum(dim=-1) > 0).all()


def test_umt5_real_tokens_do_not_see_the_padding(wan_folder):
    short = UMT5TextEncoder.from_pretrained(wan_folder, max_length=8).encode("a red car")
    long = UMT5TextEncoder.from_pretrained(wan_folder, max_length=20).encode("a red car")
    torch.testing.assert_close(long[:, :8], short, atol=1e-5, rtol=1e-5)


def test_umt5_cleans_whitespace_and_truncates(wan_folder):
    encoder = UMT5TextEncoder.from_pretrained(wan_folder, max_length=4)
    torch.testing.assert_close(encoder.encode(" a \n red  car "), encoder.encode("a red car"))
    truncated = encoder.encode("a red car drives left on the road")
    assert truncated.shape == (1, 4, 16) and (truncated[0].abs().sum(dim=-1) > 0).all()


def test_umt5_missing_folder_names_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="text_encoder"):
        UMT5TextEncoder.from_pretrained(tmp_path / "nowhere")
