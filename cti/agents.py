"""The configured agents, and how Asterisk's names for a device lead back to one.

One registry for the call model, the WebSocket hub and the web pages, so an
agent known to one is known to all. Asterisk names an agent's phone in several
ways: a queue member interface (``PJSIP/1001``, ``Local/1001@from-queue/n``),
a state interface, a channel (``PJSIP/1001-0000002b``,
``Local/1001@sim-agents-00002968;1``) or a dialplan extension (a transfer to
``1001``). :func:`device_of` reduces each to one comparable key.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from cti.config import AgentConfig

__all__ = ["AgentRegistry", "device_of", "interface_device"]


def device_of(channel: str) -> str:
    """The device a channel belongs to, lower case: ``PJSIP/1001-0000002b`` -> ``pjsip/1001``."""
    name = channel.lower()
    if name.endswith((";1", ";2")):
        name = name[:-2]
    head, sep, _ = name.rpartition("-")
    return head if sep and "/" in head else name


def interface_device(interface: str) -> str:
    """A member interface's device: ``Local/1001@sim-agents/n`` -> ``local/1001@sim-agents``."""
    return interface.lower().removesuffix("/n")


def _extension_of(device: str) -> str | None:
    """``local/1001@ctx`` and ``pjsip/1001`` ring extension 1001."""
    _, sep, rest = device.partition("/")
    if not sep:
        return None
    return rest.partition("@")[0] or None


class AgentRegistry:
    """Agents by id, and every name Asterisk may use for their device."""

    def __init__(self, agents: Iterable[AgentConfig] = ()) -> None:
        self._agents = list(agents)
        self._by_id = {a.id: a for a in self._agents}
        self._by_interface = {a.interface.lower(): a for a in self._agents}
        self._by_device = {interface_device(a.interface): a for a in self._agents}
        self._by_name = {a.name.lower(): a for a in self._agents} | {a.id.lower(): a for a in self._agents}
        self._by_extension = {a.extension: a for a in self._agents if a.extension}

    def __iter__(self) -> Iterator[AgentConfig]:
        return iter(self._agents)

    def __len__(self) -> int:
        return len(self._agents)

    def __contains__(self, agent_id: object) -> bool:
        return agent_id in self._by_id

    def get(self, agent_id: str) -> AgentConfig | None:
        return self._by_id.get(agent_id)

    @property
    def ids(self) -> frozenset[str]:
        return frozenset(self._by_id)

    def by_interface(self, interface: str, state_interface: str | None = None,
                     member_name: str | None = None) -> AgentConfig | None:
        """The agent behind a queue member: interface, state interface, extension, then name."""
        key = interface.lower()
        agent = self._by_interface.get(key) or self._by_device.get(interface_device(key))
        if agent is None and state_interface:
            agent = self.by_device(interface_device(state_interface))
        if agent is None and key.startswith("local/") and "@" in key:
            # FreePBX-style members: Local/1001@from-queue/n rings extension 1001.
            agent = self._by_extension.get(key[6 : key.index("@")])
        if agent is None and member_name:
            agent = self._by_name.get(member_name.lower())
        return agent

    def by_device(self, device: str) -> AgentConfig | None:
        """The agent whose phone a channel's device is (see :func:`device_of`)."""
        agent = self._by_device.get(device)
        if agent is None:
            ext = _extension_of(device)
            agent = self._by_extension.get(ext) if ext else None
        return agent

    def with_device(self, device: str) -> AgentConfig | None:
        """The agent whose configured interface is exactly this device (no extension guess)."""
        return self._by_device.get(device)

    def by_extension(self, extension: str) -> AgentConfig | None:
        return self._by_extension.get(extension) or self._by_device.get(f"pjsip/{extension}")
