"""A real espeak-ng provider that kills its own process on one sentence: the fault for the speech-pool tests.

It lives in an importable module because the pool's worker processes rebuild it by reference.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from server.pipeline.tts import EspeakTts, TtsProvider

DIE = "please die now"


class CrashingEspeak(EspeakTts):
    name = "crashing-espeak"

    async def synthesize(self, text: str) -> np.ndarray:
        if text == DIE:
            os._exit(3)  # what a segfaulting engine looks like to the pool
        return await super().synthesize(text)

    def worker_recipe(self) -> tuple[Callable[..., TtsProvider], dict[str, Any]]:
        return CrashingEspeak, super().worker_recipe()[1]
