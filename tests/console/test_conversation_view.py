"""The conversation: bubbles, tool calls paired with results, idle gaps, multimodal parts, the system
prompt, search in the session, audio decoded off the GUI thread, saving, URLs, and no output device."""

from __future__ import annotations

import subprocess
import urllib.request
import wave
from pathlib import Path
from typing import Any

import soundfile
from PySide6.QtGui import QGuiApplication

from console.domain.conversation import Bubble, Divider
from console.domain.links import message_link, parse_target, session_link
from tests.console.conftest import QLoop
from tests.console.seed import seed_rich_session


def test_timeline_pairs_tools_marks_gaps_and_shows_parts(console: Any, qloop: QLoop) -> None:
    ids = qloop.run(seed_rich_session(console.backend.store, console.backend.audio))
    view = console.window.conversation
    conv = qloop.run(view.open("rich-1"))
    kinds = [type(i).__name__ for i in conv.items]
    assert kinds == ["Bubble", "Bubble", "Bubble", "Divider", "Bubble"], "tool result folded into its call"
    call = conv.items[1].tool_calls[0]
    assert isinstance(conv.items[1], Bubble) and call.name == "get_weather"
    assert '"晴"' in (call.result or "") and call.collapsed, "long JSON starts collapsed"
    assert isinstance(conv.items[3], Divider) and conv.items[3].gap.total_seconds() >= 400
    assert conv.items[4].parts == ("[image_url] http://x/cat.png",)
    assert "你是小智" in view.prompt.text()
    view.find.setText("北京")
    assert view.find_count.text() == "3 found", "text and tool arguments are searched"
    assert "background" in view.bubbles[ids["user"]].text.text(), "matches are marked"
    assert view.bubbles[ids["user"]].play_button.text().startswith("▶")


def test_audio_plays_or_says_no_device_and_still_saves_and_links(console: Any, qloop: QLoop, tmp_path: Path) -> None:
    ids = qloop.run(seed_rich_session(console.backend.store, console.backend.audio))
    view = console.window.conversation
    qloop.run(view.open("rich-1"))
    qloop.until(lambda: view.track is not None)
    assert len(view.track.segments) == 2 and 2.5 < view.track.clip.seconds < 4.0
    # PULSE_SERVER points nowhere: there is no output device — said in the view, not raised.
    assert qloop.run(view.play_message(ids["user"])) is False
    assert view.audio_note.isVisible() and "save" in view.audio_note.text()
    opus = qloop.run(view.save_message_audio(ids["user"], tmp_path / "a.opus"))
    info = soundfile.info(str(opus))
    assert info.format == "OGG" and 1.0 < info.duration < 1.5
    wav_path = qloop.run(view.save_message_audio(ids["answer"], tmp_path / "b.wav"))
    with wave.open(str(wav_path)) as w:
        assert w.getframerate() == 24000 and 1.3 < w.getnframes() / 24000 < 1.7
    whole = qloop.run(view.save_session_audio(tmp_path / "s.wav"))
    assert soundfile.info(str(whole)).duration > 2.5
    url = qloop.run(view.copy_url(ids["answer"]))
    assert QGuiApplication.clipboard().text() == url
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read(4) == b"OggS", "the presigned URL serves the recording without credentials"


def test_links_round_trip_and_open_flag_opens_the_session(console: Any, qloop: QLoop) -> None:
    ids = qloop.run(seed_rich_session(console.backend.store, console.backend.audio))
    link = message_link("rich-1", ids["answer"])
    assert parse_target(link).session_id == "rich-1" and parse_target(link).message_id == ids["answer"]
    assert parse_target("session/rich-1").session_id == "rich-1"
    assert parse_target(session_link("a/b c")).session_id == "a/b c"
    qloop.run(console.window.open_session("rich-1", ids["answer"]))
    assert console.window.conversation.current_message_id == ids["answer"]


def test_screenshot_command_renders_views_to_png(console_settings: Any, tmp_path: Path) -> None:
    """`xiaozhi console --screenshot` as a real process against the test database and bucket."""
    import yaml

    db, s3 = console_settings.database, console_settings.minio
    config = {
        "database": {"host": db.host, "port": db.port, "username": db.username, "database": db.database,
                     "password": db.password.get_secret_value()},
        "minio": {"endpoint": s3.endpoint, "access_key_id": s3.access_key_id,
                  "secret_access_key": s3.secret_access_key.get_secret_value(), "bucket_audio": s3.bucket_audio},
        "data_dir": str(tmp_path / "data"),
    }  # fmt: skip
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "sessions.png"
    done = subprocess.run(
        [".venv/bin/xiaozhi", "-c", str(tmp_path / "config.yaml"), "--log-level", "WARNING", "console",
         "--screenshot", str(out), "--view", "sessions"],
        cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
