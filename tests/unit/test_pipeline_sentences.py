"""SentenceSplitter: sentences come out as soon as they end, never early, and cleaned for TTS."""

from __future__ import annotations

import pytest

from server.pipeline.sentences import SentenceSplitter, clean_for_speech, split_sentences


def split_streamed(text: str, step: int = 1) -> list[str]:
    """Feed ``text`` in slices of ``step`` characters, then flush."""
    splitter = SentenceSplitter()
    out: list[str] = []
    for start in range(0, len(text), step):
        out += splitter.feed(text[start : start + step])
    return out + splitter.flush()


@pytest.mark.parametrize("step", [1, 3, 1000])
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello there! How are you? I'm fine.", ["Hello there!", "How are you?", "I'm fine."]),
        ("你好。今天天气很好！你呢？", ["你好。", "今天天气很好！", "你呢？"]),
        ("第一；第二……第三", ["第一；", "第二……", "第三"]),
        ("The price is 3.5 dollars. Cheap!", ["The price is 3.5 dollars.", "Cheap!"]),
        ("Fruit, e.g. apples, i.e. food. Done", ["Fruit, e.g. apples, i.e. food.", "Done"]),
        ("Ask Dr. Smith at 5 p.m. today. Thanks", ["Ask Dr. Smith at 5 p.m. today.", "Thanks"]),
        ("Wait... what?! Really", ["Wait...", "what?!", "Really"]),
        ("line one\nline two\n\nline three", ["line one", "line two", "line three"]),
        ('He said "stop." Then left.', ['He said "stop."', "Then left."]),
        ("他说：“好的。”然后走了。", ["他说：“好的。”", "然后走了。"]),
        ("Version 2.0.1 is out.", ["Version 2.0.1 is out."]),
        ("Mixed English?然后中文。", ["Mixed English?", "然后中文。"]),
        ("I have 3. Then more", ["I have 3.", "Then more"]),
        ("1. First step.\n2. Second step.", ["First step.", "Second step."]),
    ],
)
def test_splits_at_sentence_ends_only(text: str, expected: list[str], step: int) -> None:
    assert split_streamed(text, step) == expected


def test_sentence_is_released_as_soon_as_it_has_ended() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("你好") == []
    assert splitter.feed("。我是") == ["你好。"]  # Chinese full stop: whatever follows, the sentence has ended
    assert splitter.feed("小智。") == []  # a closing quote or more dots could still follow
    assert splitter.feed("你") == ["我是小智。"]
    splitter.flush()
    assert splitter.feed("It costs 3") == []
    assert splitter.feed(".") == []  # could still become 3.5
    assert splitter.feed("5 dollars.") == []  # could be "dollars.com" — wait for the next character
    assert splitter.feed(" And") == ["It costs 3.5 dollars."]
    assert splitter.flush() == ["And"]
    assert splitter.flush() == []  # flush resets


def test_long_run_on_sentence_is_cut_at_a_comma() -> None:
    splitter = SentenceSplitter(max_chars=40)
    text = "This sentence goes on, and on and on and on without any end in sight"
    out = splitter.feed(text)
    assert out[0] == "This sentence goes on,"
    rest = splitter.flush()
    assert all(len(s) <= 40 for s in out + rest)
    assert " ".join(out + rest) == text


def test_markdown_and_emoji_are_not_read_aloud() -> None:
    out = split_streamed(
        "## Result\n**Great news!** 🎉 The *light* is `on`. See [the docs](http://x.y/z). 😀\n- item one"
    )
    assert out == ["Result", "Great news!", "The light is on.", "See the docs.", "item one"]


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("snake_case_name stays", "snake_case_name stays"),
        ("__bold__ and ~~gone~~", "bold and gone"),
        ("👍🏽 好的！", "好的！"),
        ("❤️", ""),
        ("---", ""),
        ("![a cat](cat.png) here", "a cat here"),
        ("> quoted   text", "quoted text"),
    ],
)
def test_clean_for_speech(raw: str, clean: str) -> None:
    assert clean_for_speech(raw) == clean


async def test_async_helper_yields_first_sentence_before_the_stream_ends() -> None:
    seen: list[str] = []

    async def deltas():
        for piece in ["Hello", " world.", " Second", " sentence"]:
            yield piece
            seen.append(piece)

    out = []
    async for sentence in split_sentences(deltas()):
        out.append((sentence, len(seen)))
    # "Hello world." came out while " Second" was being produced, not at the end.
    assert out == [("Hello world.", 2), ("Second sentence", 4)]
