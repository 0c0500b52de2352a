"""Skills-based routing state in Redis: the pure core's decisions (:mod:`routing`), made and
reserved atomically by Lua scripts so that several servers sharing one Redis never double-assign.
CTI routing mode's controller (AMI events in, Setvar/Redirect out) is :mod:`cti.router.controller`."""

from cti.router.store import MAX_MS, RouterStore, Settled, Transition

__all__ = ["MAX_MS", "RouterStore", "Settled", "Transition"]
