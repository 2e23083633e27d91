"""A small dashboard (messages per day, busiest devices) and the retention policy with a dry-run
preview and "run now"."""

from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtWidgets import (
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from console.domain import operations
from console.domain.backend import ConsoleBackend
from console.domain.jobs import Jobs


class DashboardView(QWidget):
    def __init__(self, backend: ConsoleBackend, jobs: Jobs, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.backend = backend
        self.jobs = jobs
        self.totals = QLabel()
        self.chart = pg.PlotWidget(title="Messages per day (last 14 days)")
        self.chart.setMouseEnabled(x=False, y=False)
        self.busiest = QPlainTextEdit(readOnly=True)
        self.days = QSpinBox(minimum=0, maximum=36500)
        self.days.setValue(backend.settings.conversation.message_retention_days)
        self.preview_button = QPushButton("Dry-run preview")
        self.run_button = QPushButton("Run now")
        self.retention_out = QPlainTextEdit(readOnly=True)
        self.refresh_button = QPushButton("Refresh")
        self.preview_button.clicked.connect(lambda: self.jobs.run("retention preview", self.preview()))
        self.run_button.clicked.connect(lambda: self.jobs.run("retention", self.run_retention()))
        self.refresh_button.clicked.connect(lambda: self.jobs.run("dashboard", self.refresh()))

        box = QGroupBox("Retention policy")
        row = QHBoxLayout()
        row.addWidget(QLabel("keep days (0 = forever):"))
        row.addWidget(self.days)
        row.addWidget(self.preview_button)
        row.addWidget(self.run_button)
        inner = QVBoxLayout(box)
        inner.addLayout(row)
        inner.addWidget(self.retention_out)
        top = QHBoxLayout()
        top.addWidget(self.totals, 1)
        top.addWidget(self.refresh_button)
        charts = QHBoxLayout()
        charts.addWidget(self.chart, 2)
        charts.addWidget(self.busiest, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addLayout(charts, 2)
        layout.addWidget(box, 1)

    async def refresh(self) -> operations.Dashboard:
        d = await operations.dashboard(self.backend.store)
        self.totals.setText(f"≈{d.sessions_total:,} sessions · ≈{d.messages_total:,} messages stored")
        self.chart.clear()
        if d.per_day:
            xs = list(range(len(d.per_day)))
            self.chart.addItem(pg.BarGraphItem(x=xs, height=[n for _, n in d.per_day], width=0.7, brush="#4f8fd6"))
            self.chart.getAxis("bottom").setTicks(
                [[(x, day.strftime("%m-%d")) for x, (day, _) in zip(xs, d.per_day, strict=True)]]
            )
        lines = [f"{dev}: {msgs} messages in {sess} sessions" for dev, sess, msgs in d.busiest]
        self.busiest.setPlainText("Busiest devices (14 days)\n\n" + ("\n".join(lines) or "none"))
        return d

    async def preview(self) -> list[str]:
        report = await operations.retention_preview(self.backend.store, self.backend.audio, self.days.value())
        lines = ["DRY RUN: nothing is removed", *report.lines()] if self.days.value() else ["0 days: keep forever"]
        self.retention_out.setPlainText("\n".join(lines))
        return lines

    async def run_retention(self) -> list[str]:
        if self.days.value() == 0:
            self.retention_out.setPlainText("0 days: keep forever; nothing to remove")
            return []
        report = await operations.retention_run(self.backend.store, self.backend.audio, self.days.value())
        self.retention_out.setPlainText("\n".join(report.lines()))
        return report.lines()
