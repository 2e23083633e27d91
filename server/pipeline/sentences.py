"""Cut streamed LLM text into sentences as soon as each one ends, cleaned for speaking.

TTS can start on the first sentence while the model is still writing the rest, which is most of the
latency a user hears.  A sentence ends at Chinese 。！？；… (immediately), at English . ! ? once the next
character shows it is not a decimal point ("3.5"), an abbreviation ("e.g.", "Dr.") or a list number
("1."), and at a newline.  Sentences are cleaned of what a TTS engine would read aloud literally:
markdown emphasis, headings, list markers, links, code ticks and emoji.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator

__all__ = ["SentenceSplitter", "clean_for_speech", "split_sentences"]

_CJK_ENDS = "。！？；…"
_ASCII_ENDS = ".!?"
# Characters that close a sentence after its terminator and belong to it: quotes, brackets, markdown.
_CLOSERS = "\"'”’」』）)]】》*_`"
_CJK = re.compile(r"[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef]")
# Lower-cased words whose final "." does not end a sentence.  Single letters and dotted letter groups
# (e.g, i.e, u.s, a.m) are recognised by pattern instead.
_ABBREVIATIONS = frozenset(
    {"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "approx", "fig", "inc", "ltd", "co", "dept", "est"}
)
_DOTTED_LETTERS = re.compile(r"[a-z](?:\.[a-z])*", re.IGNORECASE)
_SOFT_BREAKS = "，,、：:—"


class SentenceSplitter:
    """Feed text deltas with :meth:`feed`; each call returns the sentences completed so far.

    :meth:`flush` returns what is left at the end of the reply and resets the splitter.  A sentence
    that grows past ``max_chars`` without ending is cut at its last comma or space, so one run-on
    sentence cannot hold back the speech.
    """

    def __init__(self, *, max_chars: int = 200) -> None:
        if max_chars < 20:
            raise ValueError("max_chars must be at least 20")
        self.max_chars = max_chars
        self._buffer = ""

    def feed(self, delta: str) -> list[str]:
        self._buffer += delta
        return self._drain(final=False)

    def flush(self) -> list[str]:
        sentences = self._drain(final=True)
        rest = clean_for_speech(self._buffer)
        self._buffer = ""
        return [*sentences, rest] if rest else sentences

    def _drain(self, final: bool) -> list[str]:
        sentences = []
        while True:
            self._buffer = self._buffer.lstrip()
            end = _sentence_end(self._buffer, final)
            if end is None and len(self._buffer) > self.max_chars:
                end = _soft_break(self._buffer, self.max_chars)
            if end is None:
                return sentences
            sentence, self._buffer = clean_for_speech(self._buffer[:end]), self._buffer[end:]
            if sentence:
                sentences.append(sentence)


async def split_sentences(deltas: AsyncIterable[str], *, max_chars: int = 200) -> AsyncIterator[str]:
    """Sentences of a stream of text deltas, each yielded as soon as it is complete."""
    splitter = SentenceSplitter(max_chars=max_chars)
    async for delta in deltas:
        for sentence in splitter.feed(delta):
            yield sentence
    for sentence in splitter.flush():
        yield sentence


def _sentence_end(text: str, final: bool) -> int | None:
    """Index just past the first complete sentence of ``text``; None if it has not ended (yet)."""
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char == "\n":
            return i + 1
        if char not in _CJK_ENDS and char not in _ASCII_ENDS:
            i += 1
            continue
        j = i
        while j < n and (text[j] in _CJK_ENDS or text[j] in _ASCII_ENDS):
            j += 1
        run = text[i:j]
        while j < n and text[j] in _CLOSERS:
            j += 1
        if j == n:
            # The next delta decides: "3." may become "3.5", "e." may become "e.g.", "好的。" may be
            # followed by its closing quote "”" or "……" by more dots.  That costs one token of latency.
            return j if final else None
        if any(c in _CJK_ENDS for c in run):
            return j  # Chinese punctuation ends a sentence whatever follows
        follower = text[j]
        ends = follower.isspace() or _CJK.match(follower) is not None
        if ends and not (run == "." and _period_is_not_an_end(text, i)):
            return j
        i = j
    return None


def _period_is_not_an_end(text: str, i: int) -> bool:
    """Whether the "." at ``text[i]`` (followed by a space) belongs to an abbreviation or a list number."""
    start = i
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    word = text[start:i].lstrip("\"'“‘(（[*_")
    if word.lower() in _ABBREVIATIONS or _DOTTED_LETTERS.fullmatch(word):
        return True
    return start == 0 and word.isdigit()  # "1. First step" — a list marker, not a sentence


def _soft_break(text: str, limit: int) -> int:
    head = text[:limit]
    for position in range(len(head) - 1, limit // 4, -1):
        if head[position] in _SOFT_BREAKS:
            return position + 1
    space = head.rfind(" ", limit // 4)
    return space + 1 if space > 0 else limit


# ---- cleaning ----------------------------------------------------------------------------------------------

_EMOJI = re.compile(
    "["
    "\U0001f000-\U0001faff"  # emoticons, pictographs, transport, symbols & pictographs ext., flags
    "\u2600-\u27bf"  # misc symbols, dingbats
    "\u2b00-\u2bff"  # arrows and stars used as emoji (⭐)
    "\u2300-\u23ff"  # technical symbols used as emoji (⌚⏰)
    "\ufe0e\ufe0f\u200d\u20e3"  # variation selectors, zero-width joiner, keycap
    "]+"
)
_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_LINE_MARKUP = re.compile(r"^\s*(?:#{1,6}\s+|>\s*|[-*+•]\s+|\d{1,3}[.)]\s+)")
_EMPHASIS = re.compile(r"\*\*|__|~~|`+|(?<!\w)[*_]+|[*_]+(?!\w)")
_SPEAKABLE = re.compile(r"\w")


def clean_for_speech(text: str) -> str:
    """``text`` without markdown markup and emoji, whitespace collapsed; "" if nothing speakable is left."""
    text = _IMAGE.sub(r"\1", text)
    text = _LINK.sub(r"\1", text)
    text = _LINE_MARKUP.sub("", text)
    text = _EMPHASIS.sub("", text)
    text = _EMOJI.sub("", text)
    text = " ".join(text.split())
    return text if _SPEAKABLE.search(text) else ""
