"""One session: header, system prompt, search within the session, the whole-session player with its
waveform and playhead (which follows the message list), and the bubbles."""

from __future__ import annotations

import time
from pathlib import Path

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from console.domain import formatting, links
from console.domain.audio import SessionTrack, wav_bytes
from console.domain.audio_cache import AudioCache
from console.domain.backend import ConsoleBackend
from console.domain.conversation import Bubble, Conversation, Divider, load_conversation
from console.domain.jobs import Jobs, call_in_thread
from console.domain.player import AudioPlayer, NoOutputDevice
from console.views.bubbles import BubbleWidget, DividerWidget
from console.views.waveform import WaveformView
from server.storage.models import AudioFile


class ConversationView(QWidget):
    status_message = Signal(str)

    def __init__(self, backend: ConsoleBackend, jobs: Jobs, player: AudioPlayer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.backend = backend
        self.jobs = jobs
        self.player = player
        self.cache: AudioCache | None = None
        self.conversation: Conversation | None = None
        self.track: SessionTrack | None = None
        self.bubbles: dict[str, BubbleWidget] = {}
        self._widgets: list[QWidget] = []
        self._matches: list[int] = []
        self._match_pos = -1
        self._current_bubble: BubbleWidget | None = None
        self._playing_what: str = ""  # "session" or a message id
        self.last_click_to_sound_s: float | None = None  # measured by the benchmark

        self.header = QLabel("Select a session")
        self.header.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.header.setWordWrap(True)
        self.copy_link = QToolButton(text="Copy link")
        self.copy_link.clicked.connect(self._copy_session_link)
        self.prompt_toggle = QToolButton(text="System prompt", checkable=True)
        self.prompt = QLabel()
        self.prompt.setWordWrap(True)
        self.prompt.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.prompt.hide()
        self.prompt_toggle.toggled.connect(self.prompt.setVisible)
        self.find = QLineEdit(placeholderText="Find in this session…")
        self.find.setClearButtonEnabled(True)
        self.find.textChanged.connect(self.search)
        self.find.returnPressed.connect(lambda: self.next_match(1))
        self.find_count = QLabel()
        self.play_button = QPushButton("▶ Play session")
        self.play_button.clicked.connect(self.toggle_play)
        self.save_session = QPushButton("Save session audio…")
        self.save_session.clicked.connect(self._save_session_dialog)
        self.audio_note = QLabel()
        self.audio_note.setWordWrap(True)
        self.audio_note.setStyleSheet("color: #b36b00;")
        self.audio_note.hide()
        self.waveform = WaveformView()
        self.waveform.seek_requested.connect(self._seek)

        self.list_host = QWidget()
        self.list_layout = QVBoxLayout(self.list_host)
        self.list_layout.setSpacing(6)
        self.list_layout.addStretch(1)
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setWidget(self.list_host)

        top = QHBoxLayout()
        top.addWidget(self.header, 1)
        top.addWidget(self.copy_link)
        top.addWidget(self.prompt_toggle)
        tools = QHBoxLayout()
        tools.addWidget(self.find, 1)
        tools.addWidget(self.find_count)
        tools.addWidget(self.play_button)
        tools.addWidget(self.save_session)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 0, 0, 0)
        layout.addLayout(top)
        layout.addWidget(self.prompt)
        layout.addLayout(tools)
        layout.addWidget(self.audio_note)
        layout.addWidget(self.waveform)
        layout.addWidget(self.scroll, 1)

        self._tick = QTimer(self, interval=33)  # playhead: one timer, only while something plays
        self._tick.timeout.connect(self._follow_playhead)

    # ---- loading ------------------------------------------------------------------------------------

    async def open(self, session_id: str, message_id: str | None = None) -> Conversation:
        self.header.setText(f"Loading session {session_id}…")
        conversation = await load_conversation(self.backend.store, session_id)
        self.show_conversation(conversation)
        if message_id:
            self.scroll_to_message(message_id)
        self.track = None
        self.waveform.show_track(None)
        if conversation.audio and self.backend.audio is not None:
            self.jobs.run("load session audio", self._load_track(conversation), replace=True)
        return conversation

    async def _load_track(self, conversation: Conversation) -> SessionTrack:
        rows = sorted(conversation.audio, key=lambda a: (a.created_at, a.file_id))
        track = await self._cache().session_track(rows)
        if self.conversation is conversation:
            self.track = track
            self.waveform.show_track(track)
        return track

    def _cache(self) -> AudioCache:
        if self.cache is None or self.cache.audio is not self.backend.audio:
            self.cache = AudioCache(self.backend.audio)
        return self.cache

    def show_conversation(self, conversation: Conversation) -> None:
        self.player.stop()
        self._tick.stop()
        self.conversation = conversation
        info = conversation.info
        deleted = info.metadata.get("deleted") or info.metadata.get("audio_deleted")
        note = f" · <b>{'deleted' if info.metadata.get('deleted') else 'audio deleted'}</b>" if deleted else ""
        self.header.setText(
            f"<b>{info.device_id}</b> · agent {info.agent_id or '-'} · {formatting.local_time(info.started_at)} · "
            f"{formatting.duration(info.duration)} · {info.status} · {info.message_count} messages · "
            f"{info.audio_count} recordings{note}<br><small>{info.session_id}</small>"
        )
        self.prompt.setText(conversation.system_prompt or "(no system prompt stored for this device)")
        for w in self._widgets:
            w.deleteLater()
        self._widgets, self.bubbles, self._current_bubble = [], {}, None
        for item in conversation.items:
            widget: QWidget
            if isinstance(item, Bubble):
                bubble = BubbleWidget(item)
                bubble.play_clicked.connect(self.play_message_clicked)
                bubble.save_clicked.connect(self._save_message_dialog)
                bubble.url_clicked.connect(lambda mid: self.jobs.run("presigned URL", self.copy_url(mid)))
                bubble.link_clicked.connect(self._copy_message_link)
                self.bubbles[item.message.message_id] = bubble
                widget = bubble
            else:
                assert isinstance(item, Divider)
                widget = DividerWidget(item)
            self.list_layout.insertWidget(self.list_layout.count() - 1, widget)
            self._widgets.append(widget)
        has_audio = bool(conversation.audio)
        self.play_button.setEnabled(has_audio)
        self.save_session.setEnabled(has_audio)
        self.audio_note.setVisible(has_audio and self.backend.audio is None)
        self.audio_note.setText("Audio storage (S3) is not connected: recordings cannot be played.")
        self.search(self.find.text())

    def scroll_to_message(self, message_id: str) -> None:
        bubble = self.bubbles.get(message_id)
        if bubble is not None:
            self._set_current(bubble)
            self.scroll.ensureWidgetVisible(bubble)

    # ---- search within the session ------------------------------------------------------------------

    def search(self, text: str) -> None:
        if self.conversation is None:
            return
        self._matches = self.conversation.find(text)
        for bubble in self.bubbles.values():
            bubble.set_mark(text.strip())
        self.find_count.setText(f"{len(self._matches)} found" if text.strip() else "")
        self._match_pos = -1
        if self._matches:
            self.next_match(1)

    def next_match(self, step: int) -> None:
        if not self._matches or self.conversation is None:
            return
        self._match_pos = (self._match_pos + step) % len(self._matches)
        item = self.conversation.items[self._matches[self._match_pos]]
        if isinstance(item, Bubble):
            self.scroll.ensureWidgetVisible(self.bubbles[item.message.message_id])

    # ---- audio --------------------------------------------------------------------------------------

    def _row_for(self, message_id: str) -> AudioFile:
        assert self.conversation is not None
        for item in self.conversation.bubbles:
            if item.message.message_id == message_id and item.audio is not None:
                return item.audio
        raise KeyError(f"message {message_id} has no audio")

    def play_message_clicked(self, message_id: str) -> None:
        self.jobs.run("play audio", self.play_message(message_id), replace=True)

    async def play_message(self, message_id: str) -> bool:
        started = time.perf_counter()
        clip = await self._cache().clip(self._row_for(message_id))
        self._playing_what = message_id
        ok = self._start(clip)
        self.last_click_to_sound_s = time.perf_counter() - started
        self.scroll_to_message(message_id)
        return ok

    async def play_session(self, start_s: float = 0.0) -> bool:
        if self.track is None and self.conversation is not None:
            await self._load_track(self.conversation)
        if self.track is None:
            return False
        self._playing_what = "session"
        return self._start(self.track.clip, start_s)

    def _start(self, clip: object, start_s: float = 0.0) -> bool:
        try:
            self.player.play(clip, start_s)  # type: ignore[arg-type]
        except NoOutputDevice as exc:
            self.audio_note.setText(f"{exc}. You can still save the audio (.opus / .wav) or copy its URL.")
            self.audio_note.show()
            return False
        self.audio_note.hide()
        self.play_button.setText("⏸ Pause")
        self._tick.start()
        return True

    def toggle_play(self) -> None:
        if self.player.playing:
            self.player.pause()
            self.play_button.setText("▶ Play session")
        elif self.player.loaded is not None and not self.player.finished and self._playing_what == "session":
            self.player.resume()
            self.play_button.setText("⏸ Pause")
            self._tick.start()
        else:
            self.jobs.run("play session", self.play_session())

    def _seek(self, seconds: float) -> None:
        if self._playing_what == "session" and self.player.loaded is not None:
            self.player.seek(seconds)
        elif self.track is not None:
            self.jobs.run("play session", self.play_session(seconds))

    def _follow_playhead(self) -> None:
        position = self.player.position_s
        if self._playing_what == "session":
            self.waveform.set_position(position)
            if self.track is not None:
                seg = self.track.segment_at(position)
                if seg is not None and seg.message_id in self.bubbles:
                    bubble = self.bubbles[seg.message_id]
                    if bubble is not self._current_bubble:
                        self._set_current(bubble)
                        self.scroll.ensureWidgetVisible(bubble)
        if not self.player.playing:
            self._tick.stop()
            self.play_button.setText("▶ Play session")

    def _set_current(self, bubble: BubbleWidget) -> None:
        if self._current_bubble is not None:
            self._current_bubble.set_current(False)
        bubble.set_current(True)
        self._current_bubble = bubble

    @property
    def current_message_id(self) -> str | None:
        return None if self._current_bubble is None else self._current_bubble.bubble.message.message_id

    # ---- saving and links ---------------------------------------------------------------------------

    async def save_message_audio(self, message_id: str, path: Path) -> Path:
        row = self._row_for(message_id)
        if path.suffix.lower() == ".wav":
            data = await call_in_thread(wav_bytes, await self._cache().clip(row))
        else:
            data = await self._cache().raw(row)
        await call_in_thread(path.write_bytes, data)
        self.status_message.emit(f"saved {path} ({formatting.size(len(data))})")
        return path

    async def save_session_audio(self, path: Path) -> Path:
        track = self.track
        if track is None and self.conversation is not None:
            track = await self._load_track(self.conversation)
        assert track is not None
        data = await call_in_thread(wav_bytes, track.clip)
        await call_in_thread(path.write_bytes, data)
        self.status_message.emit(f"saved {path} ({formatting.size(len(data))})")
        return path

    def _save_message_dialog(self, message_id: str) -> None:
        kinds = "Ogg Opus (*.opus);;WAV (*.wav)"
        path, _ = QFileDialog.getSaveFileName(self, "Save audio", f"{message_id}.opus", kinds)
        if path:
            self.jobs.run("save audio", self.save_message_audio(message_id, Path(path)))

    def _save_session_dialog(self) -> None:
        if self.conversation is None:
            return
        name = f"{self.conversation.info.session_id}.wav"
        path, _ = QFileDialog.getSaveFileName(self, "Save session audio", name, "WAV (*.wav)")
        if path:
            self.jobs.run("save audio", self.save_session_audio(Path(path)))

    async def copy_url(self, message_id: str) -> str:
        url = await self._cache().presigned_url(self._row_for(message_id))
        QGuiApplication.clipboard().setText(url)
        self.status_message.emit("presigned URL copied to the clipboard")
        return url

    def _copy_session_link(self) -> None:
        if self.conversation is not None:
            QGuiApplication.clipboard().setText(links.session_link(self.conversation.info.session_id))
            self.status_message.emit("session link copied")

    def _copy_message_link(self, message_id: str) -> None:
        if self.conversation is not None:
            QGuiApplication.clipboard().setText(links.message_link(self.conversation.info.session_id, message_id))
            self.status_message.emit("message link copied")
