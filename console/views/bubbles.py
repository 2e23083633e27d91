"""Message bubbles: role colour, time, text (search matches marked), multimodal parts, tool calls with
their results (long JSON collapsed), and per-message audio buttons."""

from __future__ import annotations

import html

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPlainTextEdit, QToolButton, QVBoxLayout, QWidget

from console.domain import formatting
from console.domain.conversation import Bubble, Divider, ToolCall
from console.views.palette import mark_colour, role_colour


def marked(text: str, needle: str) -> str:
    if not needle:
        return html.escape(text).replace("\n", "<br>")
    low, key, out, pos = text.casefold(), needle.casefold(), [], 0
    while (hit := low.find(key, pos)) >= 0:
        out.append(html.escape(text[pos:hit]))
        out.append(f"<span style='background:{mark_colour()}'>{html.escape(text[hit : hit + len(key)])}</span>")
        pos = hit + len(key)
    out.append(html.escape(text[pos:]))
    return "".join(out).replace("\n", "<br>")


class ToolCallBox(QFrame):
    def __init__(self, call: ToolCall, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 2, 4, 2)
        self.toggle = QToolButton(checkable=True)
        self.toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        status = "→ result" if call.result is not None else "(no result)"
        self.toggle.setText(f"⚙ {call.name}  {status}")
        self.toggle.setChecked(not call.collapsed)
        self.body = QPlainTextEdit(readOnly=True)
        body = f"arguments:\n{call.arguments}"
        if call.result is not None:
            body += f"\n\nresult:\n{call.result}"
        self.body.setPlainText(body)
        self.body.setMaximumHeight(160)
        self.body.setVisible(not call.collapsed)
        self.toggle.toggled.connect(self.body.setVisible)
        layout.addWidget(self.toggle)
        layout.addWidget(self.body)


class BubbleWidget(QFrame):
    play_clicked = Signal(str)  # message_id
    save_clicked = Signal(str)
    url_clicked = Signal(str)
    link_clicked = Signal(str)

    def __init__(self, bubble: Bubble, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.bubble = bubble
        msg = bubble.message
        self.setObjectName("bubble")
        self._base_style = f"#bubble {{ background: {role_colour(msg.role)}; border-radius: 8px; }}"
        self.setStyleSheet(self._base_style)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(10, 6, 10, 6)
        head = QHBoxLayout()
        title = QLabel(f"<b>{msg.role}</b> · {formatting.clock_time(msg.created_at)} · #{msg.sequence_num}")
        head.addWidget(title)
        head.addStretch(1)
        link = QToolButton(text="Link", toolTip="Copy a link to this message")
        link.clicked.connect(lambda: self.link_clicked.emit(msg.message_id))
        head.addWidget(link)
        if bubble.audio is not None:
            secs = bubble.audio.duration_ms / 1000
            self.play_button = QToolButton(text=f"▶ {secs:.1f} s", toolTip="Play this message's audio")
            self.play_button.clicked.connect(lambda: self.play_clicked.emit(msg.message_id))
            save = QToolButton(text="Save", toolTip="Save this audio (.opus or .wav)")
            save.clicked.connect(lambda: self.save_clicked.emit(msg.message_id))
            url = QToolButton(text="URL", toolTip="Copy a presigned URL any player can open")
            url.clicked.connect(lambda: self.url_clicked.emit(msg.message_id))
            for w in (self.play_button, save, url):
                head.addWidget(w)
        outer.addLayout(head)
        self.text = QLabel()
        self.text.setWordWrap(True)
        self.text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.text.setTextFormat(Qt.TextFormat.RichText)
        self.set_mark("")
        outer.addWidget(self.text)
        self.text.setVisible(bool(msg.content))
        for part in bubble.parts:
            label = QLabel(html.escape(part))
            label.setWordWrap(True)
            outer.addWidget(label)
        for call in bubble.tool_calls:
            outer.addWidget(ToolCallBox(call))

    def set_mark(self, needle: str) -> None:
        self.text.setText(marked(self.bubble.message.content, needle))

    def set_current(self, current: bool) -> None:
        extra = " #bubble { border: 2px solid #e53935; }" if current else ""
        self.setStyleSheet(self._base_style + extra)


class DividerWidget(QLabel):
    def __init__(self, divider: Divider, parent: QWidget | None = None) -> None:
        super().__init__(f"— {formatting.duration(divider.gap)} later · {formatting.local_time(divider.at)} —", parent)
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.setStyleSheet("color: gray;")
