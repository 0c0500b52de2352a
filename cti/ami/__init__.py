"""AMI (Asterisk Manager Interface): sans-IO codec, reconnecting asyncio client, errors."""

from cti.ami.backoff import Backoff
from cti.ami.client import AmiClient, AmiStats, ConnectHandler, EventHandler
from cti.ami.codec import Decoder, Message, ProtocolError, UnsafeValueError, encode_action
from cti.ami.errors import (
    AmiActionError,
    AmiAuthError,
    AmiConnectionError,
    AmiDisconnected,
    AmiError,
    AmiTimeout,
)

__all__ = [
    "AmiActionError",
    "AmiAuthError",
    "AmiClient",
    "AmiConnectionError",
    "AmiDisconnected",
    "AmiError",
    "AmiStats",
    "AmiTimeout",
    "Backoff",
    "ConnectHandler",
    "Decoder",
    "EventHandler",
    "Message",
    "ProtocolError",
    "UnsafeValueError",
    "encode_action",
]
