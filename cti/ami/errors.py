"""Errors raised by the AMI client.

Foreign errors (``OSError``, ``asyncio.IncompleteReadError``, the codec's
``ProtocolError``) are translated once, where the client meets the socket, so
callers only ever catch this tree::

    AmiError
    ├── AmiConnectionError     cannot connect, or not connected right now
    │   └── AmiDisconnected    the connection dropped while an action waited (it was NOT re-sent)
    ├── AmiAuthError           Login was answered with ``Response: Error``
    ├── AmiActionError         an action was answered with ``Response: Error``
    └── AmiTimeout             no complete reply in time (also a ``TimeoutError``)

``UnsafeValueError`` (a CR/LF/NUL in an action field) comes from the codec and
is a ``ValueError``: it is a caller bug, raised before anything is written.
"""

from __future__ import annotations

from cti.ami.codec import Message

__all__ = [
    "AmiActionError",
    "AmiAuthError",
    "AmiConnectionError",
    "AmiDisconnected",
    "AmiError",
    "AmiTimeout",
]


class AmiError(Exception):
    """Base of every error the AMI client raises."""


class AmiConnectionError(AmiError):
    """The AMI connection cannot be opened, or is not up."""


class AmiDisconnected(AmiConnectionError):
    """The connection dropped before the action's reply was complete.

    The action is never re-sent automatically: Asterisk may already have run it
    (an ``Originate`` must not ring a phone twice), so the caller decides.
    """


class AmiAuthError(AmiError):
    """Asterisk refused the Login (wrong username/secret, or a ``permit`` ACL)."""


class AmiActionError(AmiError):
    """Asterisk answered an action with ``Response: Error``."""

    def __init__(self, action: str, response: Message) -> None:
        self.action = action
        self.response = response
        self.message = response.get("Message", "") or ""
        super().__init__(f"AMI action {action} failed: {self.message or '(no message)'}")


class AmiTimeout(AmiError, TimeoutError):
    """No complete reply within the timeout; a late reply is dropped, not delivered."""
