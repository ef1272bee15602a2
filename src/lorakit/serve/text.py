"""Turning a growing list of token ids into streamed text: incremental decoding and stop strings."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

REPLACEMENT = "\ufffd"  # what decode shows for an incomplete UTF-8 sequence; wait for the token that completes it


class TextStream:
    """Text of one output, released piece by piece so that the pieces concatenate to the final text.

    Decoding re-reads a few tokens before the new ones (`prefix`) because many tokenizers decode a token
    differently at the start of a string (SentencePiece drops a leading space). Text that could be the start of a
    stop string is held back until it is clear, so a client never receives part of a stop string.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.stop = stop
        self.ids: list[int] = []
        self.text = ""
        self.sent = 0
        self.prefix = 0
        self.read = 0
        self.stopped = False

    def add(self, token: int) -> str:
        """Add one generated token; returns the text now safe to send (maybe empty). Sets `stopped` on a stop."""
        self.ids.append(token)
        before = self._decode(self.prefix, self.read)
        after = self._decode(self.prefix, len(self.ids))
        if len(after) > len(before) and not after.endswith(REPLACEMENT):
            self._append(after[len(before) :])
            self.prefix, self.read = self.read, len(self.ids)
        return self._release(final=False)

    def finish(self) -> str:
        """All text not yet sent, including a trailing incomplete character (as decode shows it)."""
        if not self.stopped and self.read < len(self.ids):
            before = self._decode(self.prefix, self.read)
            self._append(self._decode(self.prefix, len(self.ids))[len(before) :])
            self.read = len(self.ids)
        return self._release(final=True)

    def _decode(self, start: int, end: int) -> str:
        return self.tokenizer.decode(self.ids[start:end], skip_special_tokens=True)

    def _append(self, piece: str) -> None:
        if self.stopped:
            return
        start = max(0, len(self.text) - max((len(s) for s in self.stop), default=0) + 1)
        self.text += piece
        hits = [p for p in (self.text.find(s, start) for s in self.stop) if p >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped = True

    def _release(self, final: bool) -> str:
        hold = 0 if final or self.stopped else max((len(s) - 1 for s in self.stop), default=0)
        end = max(self.sent, len(self.text) - hold)
        piece = self.text[self.sent : end]
        self.sent = end
        return piece


class TokenText:
    """Each token id's own bytes and text, as logprobs show them (OpenAI's `token` and `bytes`).

    A token's bytes come from its vocabulary entry, not from decoding it alone: decoding one token drops a
    SentencePiece word's leading space and turns part of a UTF-8 character into U+FFFD, while the entry keeps both
    (byte-level BPE spells bytes as printable characters, SentencePiece as `<0xNN>` and `▁` for a space). The text
    is those bytes as UTF-8, with U+FFFD where a character is split across tokens.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.tokenizer = tokenizer
        self.special = set(tokenizer.all_special_ids)
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self.byte_level = type(getattr(backend, "decoder", None)).__name__ == "ByteLevel"
        self._cache: dict[int, tuple[str, bytes]] = {}

    def text(self, token: int) -> str:
        return self._get(token)[0]

    def bytes(self, token: int) -> bytes:
        return self._get(token)[1]

    def _get(self, token: int) -> tuple[str, bytes]:
        hit = self._cache.get(token)
        if hit is None:
            raw = self._bytes(token)
            hit = self._cache[token] = (raw.decode("utf-8", errors="replace"), raw)
        return hit

    def _bytes(self, token: int) -> bytes:
        piece = self.tokenizer.convert_ids_to_tokens(token)
        if piece is None:
            return b""
        if token in self.special:
            return piece.encode()
        if self.byte_level and all(c in BYTE_OF for c in piece):
            return bytes(BYTE_OF[c] for c in piece)
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            return bytes([int(piece[3:5], 16)])
        if "\u2581" in piece:  # SentencePiece's word boundary
            return piece.replace("\u2581", " ").encode()
        return self.tokenizer.decode([token]).encode()


def _byte_alphabet() -> dict[str, int]:
    """GPT-2's printable spelling of each byte (as byte-level BPE vocabularies store tokens), reversed."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


BYTE_OF = _byte_alphabet()
