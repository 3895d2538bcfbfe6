"""The commands: the ``leengine`` CLI, cnictl, the CNI plugin and the daemons. Only these choose adapters.

Commands only: a daemon's module is named ``*_cmd.py`` (its agent is in ``node/`` or
``control/``); launchers of real processes for tests and the lab are in ``lab/``.
"""
