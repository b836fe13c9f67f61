"""Chaos suite for Conclave: real node processes, injected faults, recorded histories, checkers.

Pure modules (no I/O): :mod:`chaos.grudge`, :mod:`chaos.schedule`, :mod:`chaos.checkers`, :mod:`chaos.jobs`.
Everything that touches processes, namespaces or sockets lives in :mod:`chaos.netns`, :mod:`chaos.proxy`,
:mod:`chaos.cluster`, :mod:`chaos.nemesis`, :mod:`chaos.workload` and :mod:`chaos.runner`.
"""

PREFIX = "cvc"
