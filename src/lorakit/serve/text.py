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
