"""The session list: lazy keyset paging, filters, full-text search with highlighted hits, live arrivals."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt

from console.domain.session_query import SessionPager, SessionQuery
from console.models.session_list_model import SESSION_ID_ROLE, SessionListModel
from tests.console.conftest import QLoop
from tests.console.seed import seed_sessions


def test_list_pages_in_lazily_and_model_is_well_behaved(console: Any, qloop: QLoop, qtmodeltester: Any) -> None:
    store = console.backend.store
    qloop.run(seed_sessions(store, 450))
    model = SessionListModel(console.jobs)
    model.reset_with(SessionPager(store, SessionQuery(), page_size=200))
    assert qloop.run(model.load_next_page()) == 200
    assert model.rowCount() == 200 and model.canFetchMore()
    assert model.data(model.index(0, 0), SESSION_ID_ROLE) == "s-00449", "newest first"
    qtmodeltester.check(model)
    model.fetchMore()
    qloop.until(lambda: model.rowCount() == 400)
    model.fetchMore()
    qloop.until(lambda: model.rowCount() == 450)
    assert not model.canFetchMore()
    ids = [model.data(model.index(r, 0), SESSION_ID_ROLE) for r in range(450)]
    assert ids == [f"s-{i:05d}" for i in range(449, -1, -1)], "every session once, in order"
    qtmodeltester.check(model)


def test_scrolling_the_view_fetches_more(console: Any, qloop: QLoop) -> None:
    qloop.run(seed_sessions(console.backend.store, 260))
    view = console.window.sessions
    qloop.run(view.reload())
    assert view.model.rowCount() == 200
    view.table.scrollToBottom()
    qloop.until(lambda: view.model.rowCount() == 260)
    assert "260 sessions" in view.count_label.text()


def test_filters_and_full_text_search_highlight_hits(console: Any, qloop: QLoop) -> None:
    qloop.run(seed_sessions(console.backend.store, 20))
    view = console.window.sessions
    view.device.setText("aa:bb:cc:00:00:01")
    qloop.run(view.reload(view.current_query()))
    assert view.model.rowCount() == 10
    view.device.setText("")
    view.search.setText("天气 7")
    qloop.run(view.reload(view.current_query()))
    sessions = {view.model.session_at(r).session_id for r in range(view.model.rowCount())}
    assert sessions == {"s-00007", "s-00017"}
    assert view.hits.isVisible()
    page = view.hits.toHtml()
    assert "天气" in page and "#ffd54f" in page, "hits are highlighted"
    view.search.setText("WEATHER number 14")
    qloop.run(view.reload(view.current_query()))
    assert [view.model.session_at(r).session_id for r in range(view.model.rowCount())] == ["s-00014"]
    view.has_tools.setCurrentIndex(1)  # tools: yes → none of these sessions
    qloop.until(lambda: view.model.rowCount() == 0 and not view.model.loading)


def test_new_sessions_appear_at_the_top(console: Any, qloop: QLoop) -> None:
    store = console.backend.store
    qloop.run(seed_sessions(store, 3))
    view = console.window.sessions
    qloop.run(view.reload())

    async def later() -> None:
        await store.start_session("brand-new", "aa:bb:cc:00:00:03")

    qloop.run(later())
    assert qloop.run(view.model.load_newer()) == 1
    assert view.model.session_at(0).session_id == "brand-new"
    assert view.model.rowCount() == 4


def test_selecting_a_row_opens_the_conversation_and_keys_step(console: Any, qloop: QLoop, qtbot: Any) -> None:
    qloop.run(seed_sessions(console.backend.store, 3))
    qloop.run(console.window.sessions.reload())
    console.window.sessions.step(1)
    conv = console.window.conversation
    qloop.until(lambda: conv.conversation is not None and conv.conversation.info.session_id == "s-00002")
    qtbot.keyClick(console.window, Qt.Key.Key_Down, Qt.KeyboardModifier.AltModifier)
    qloop.until(lambda: conv.conversation.info.session_id == "s-00001")
