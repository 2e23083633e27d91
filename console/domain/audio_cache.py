"""Fetch and decode recordings once: S3 bytes (kept for "save as .opus") and decoded clips (for play,
the waveform and "save as .wav"). Decoding runs on a worker thread, never on the GUI thread."""

from __future__ import annotations

from collections import OrderedDict

from console.domain.audio import PLAY_RATE, Clip, SessionTrack, decode_audio, join_clips
from console.domain.jobs import call_in_thread
from server.storage.audio_store import AudioStore
from server.storage.errors import StorageError
from server.storage.models import AudioFile


class AudioCache:
    def __init__(self, audio: AudioStore | None, max_items: int = 64) -> None:
        self.audio = audio
        self.max_items = max_items
        self._raw: OrderedDict[str, bytes] = OrderedDict()
        self._clips: OrderedDict[str, Clip] = OrderedDict()

    def _require(self) -> AudioStore:
        if self.audio is None:
            raise StorageError("audio storage is off (no S3 configured): recordings cannot be fetched")
        return self.audio

    async def raw(self, row: AudioFile) -> bytes:
        if row.file_id in self._raw:
            self._raw.move_to_end(row.file_id)
            return self._raw[row.file_id]
        data = await self._require().get_object(row.bucket_name, row.object_key)
        self._raw[row.file_id] = data
        while len(self._raw) > self.max_items:
            self._raw.popitem(last=False)
        return data

    async def clip(self, row: AudioFile) -> Clip:
        if row.file_id in self._clips:
            return self._clips[row.file_id]
        data = await self.raw(row)
        clip = await call_in_thread(decode_audio, data, row.file_type)
        self._clips[row.file_id] = clip
        while len(self._clips) > self.max_items:
            self._clips.popitem(last=False)
        return clip

    async def session_track(self, rows: list[AudioFile]) -> SessionTrack:
        parts = [(row, await self.clip(row)) for row in rows if row.file_type in ("opus", "wav")]
        parts = [(row, clip) for row, clip in parts if clip.rate == PLAY_RATE]
        return await call_in_thread(join_clips, parts)

    async def presigned_url(self, row: AudioFile) -> str:
        return await self._require().presigned_url(row.file_id)
