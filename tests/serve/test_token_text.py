"""What logprobs call a token: its own bytes from the vocabulary entry (byte-level BPE or SentencePiece), so the
bytes of a completion's tokens add up to its text even where one character spans several tokens."""

from __future__ import annotations

from serve_support import tiny_tokenizer
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from lorakit.serve.text import TokenText


def sentencepiece_like() -> PreTrainedTokenizerFast:
    """A Unigram tokenizer spelled as Llama-2's: `▁` for a space, `<0xNN>` for bytes without a piece."""
    pieces = [("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0), ("\u2581the", -1.0), ("\u2581cat", -1.0),
              ("<0xE2>", -5.0), ("<0x82>", -5.0), ("<0xAC>", -5.0), ("\u2581", -2.0), ("s", -2.0)]
    backend = Tokenizer(models.Unigram(pieces, unk_id=0, byte_fallback=True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_byte_level_tokens_give_their_bytes_and_add_up_to_the_text():
    tok = tiny_tokenizer()
    texts = TokenText(tok)
    text = "naïve 東京 ok"
    ids = tok.encode(text)
    assert b"".join(texts.bytes(i) for i in ids).decode() == text
    assert len(ids) > len(text) and texts.text(ids[2]) == "\ufffd"  # one byte of "ï" alone
    assert texts.text(tok.eos_token_id) == "<|im_end|>"


def test_sentencepiece_tokens_keep_their_leading_space_and_byte_pieces_their_byte():
    tok = sentencepiece_like()
    texts = TokenText(tok)
    ids = tok.encode("the cats €", add_special_tokens=False)
    assert [texts.text(i) for i in ids[:3]] == [" the", " cat", "s"]
    assert b"".join(texts.bytes(i) for i in ids).decode() == " the cats €"
    assert texts.bytes(tok.convert_tokens_to_ids("<0xE2>")) == b"\xe2"
