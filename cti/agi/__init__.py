"""FastAGI: Asterisk's ``AGI(agi://host:4573/<flow>)`` runs an :mod:`ivr_flows` flow on our server.

:mod:`~cti.agi.header` reads the ``agi_*`` environment within limits, :mod:`~cti.agi.channel`
pairs command lines with replies (the ``HANGUP`` notice taken out) under one watchdog's deadlines,
:mod:`~cti.agi.call` runs the interpreter's batches and returns an :class:`IvrResult`,
:mod:`~cti.agi.server` accepts, routes by script name, bounds and drains, :mod:`~cti.agi.flows` keeps
the flows current as their files change (a call keeps the version it started on).

    async with AgiServer(flows=lambda: flows, directory=customer_directory(store), on_end=enqueue) as agi:
        ...

The simulated Asterisk side is :mod:`cti.sim.agi_caller`; ``benchmarks/ivr.py`` measures both.
"""

from cti.agi.call import AgiStats, CallSettings, Directory, IvrResult, OnEnd, run_call
from cti.agi.channel import AgiChannel, ConnectionLost, ReplyTimeout, Watchdog
from cti.agi.flows import FlowRegistry
from cti.agi.header import BadHeader, HeaderLimits, read_env
from cti.agi.server import AgiServer, AgiSettings, CustomerStore, customer_directory, flow_id_for

__all__ = [
    "AgiChannel",
    "AgiServer",
    "AgiSettings",
    "AgiStats",
    "BadHeader",
    "CallSettings",
    "ConnectionLost",
    "CustomerStore",
    "Directory",
    "FlowRegistry",
    "HeaderLimits",
    "IvrResult",
    "OnEnd",
    "ReplyTimeout",
    "Watchdog",
    "customer_directory",
    "flow_id_for",
    "read_env",
    "run_call",
]
