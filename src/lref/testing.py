"""Tiny random-initialised models and tokenizers built locally, for fast tests without any download."""

from __future__ import annotations

from pathlib import Path

from lref.labels import PRESETS
from lref.prompts import instruction

_CORPUS_EXTRA = [
    "Query: cordless drill 18v\nProduct: DeWalt 20V MAX cordless drill driver kit\nRelevance: Exact",
    "Query: garden hose 50 ft\nProduct: Flexzilla 50 ft. garden hose, green\nRelevance: Partial",
    "Query: ceiling fan\nProduct: replacement light kit for ceiling fan\nRelevance: Irrelevant",
    "Brand: Acme\nAttributes: size: 10 in; colour: white\nDescription: a sturdy product for home use",
    "0 1 2 3 4 5 6 7 8 9 in. ft. inch feet pack of black white steel brass",
]


def build_tiny_tokenizer(save_dir: str | Path | None = None, vocab_size: int = 600):
    """A byte-level BPE tokenizer trained on prompt-like text; label words of every preset get their own tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [instruction(scheme) for scheme in PRESETS.values()] + _CORPUS_EXTRA
    corpus += [" ".join(f" {label}" for label in scheme.labels) for scheme in PRESETS.values()] * 20
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<eos>", "<bos>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    if save_dir is not None:
        tokenizer.save_pretrained(str(save_dir))
    return tokenizer


def build_tiny_causal_lm(save_dir: str | Path, seed: int = 0, embedding_scale: float = 1.0) -> Path:
    """Save a tiny random Gemma-3 causal LM plus its tokenizer to `save_dir` and return the folder.

    `embedding_scale` multiplies the (tied) embeddings. Training tests use about 10: at the default init scale the
    frozen LM head keeps the logits within about ±1, whatever LoRA does, so the model could not learn a label."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    save_dir = Path(save_dir)
    tokenizer = build_tiny_tokenizer(save_dir)
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=1024,
        sliding_window=64,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(config)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(embedding_scale)
    model.save_pretrained(str(save_dir))
    return save_dir


def build_tiny_encoder(save_dir: str | Path, seed: int = 0) -> Path:
    """Save a tiny random BERT encoder plus a WordPiece tokenizer to `save_dir` and return the folder."""
    import torch
    from tokenizers import (
        Tokenizer,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    save_dir = Path(save_dir)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    wordpiece = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wordpiece.train_from_iterator(
        _CORPUS_EXTRA + [instruction(s) for s in PRESETS.values()],
        trainers.WordPieceTrainer(vocab_size=400, special_tokens=specials),
    )
    cls, sep = wordpiece.token_to_id("[CLS]"), wordpiece.token_to_id("[SEP]")
    wordpiece.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=wordpiece, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]",
    )
    tokenizer.save_pretrained(str(save_dir))
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=256,
    )
    BertModel(config).save_pretrained(str(save_dir))
    return save_dir
