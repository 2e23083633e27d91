"""A headless simulated xiaozhi device: identity, OTA check, the WebSocket protocol client with the
firmware's state machine and playback model, MCP tools, audio inputs and recording.  No Qt here."""

from simulator.client import ConnectionStats, DeviceClient
from simulator.errors import ChannelUnavailable, SimulatorError
from simulator.events import (
    Alert,
    AudioPlayed,
    Disconnected,
    Emotion,
    Event,
    EventStream,
    ProtocolError,
    Sentence,
    ServerCommand,
    StateChanged,
    SttText,
    ToolCalled,
    TtsState,
    TurnFinished,
)
from simulator.identity import DeviceIdentity, load_identity
from simulator.inputs import FileSource, PcmSource, SilenceSource, UplinkEncoder, speak, speak_file
from simulator.mcp_tools import DeviceMcpServer, DeviceState
from simulator.ota import Activation, OtaResult, activate, check_ota
from simulator.playback import PlaybackQueue, PlaybackStats
from simulator.recorder import ConversationRecorder
from simulator.turns import TurnReport

__all__ = [
    "Activation",
    "Alert",
    "AudioPlayed",
    "ChannelUnavailable",
    "ConnectionStats",
    "ConversationRecorder",
    "DeviceClient",
    "DeviceIdentity",
    "DeviceMcpServer",
    "DeviceState",
    "Disconnected",
    "Emotion",
    "Event",
    "EventStream",
    "FileSource",
    "OtaResult",
    "PcmSource",
    "PlaybackQueue",
    "PlaybackStats",
    "ProtocolError",
    "Sentence",
    "ServerCommand",
    "SilenceSource",
    "SimulatorError",
    "StateChanged",
    "SttText",
    "ToolCalled",
    "TtsState",
    "TurnFinished",
    "TurnReport",
    "UplinkEncoder",
    "activate",
    "check_ota",
    "load_identity",
    "speak",
    "speak_file",
]
