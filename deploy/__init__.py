"""Deployment: a real SuperLink and SuperNodes with TLS, node authentication and local data.

``python -m deploy --help`` lists the commands. The modules, in the order a
deployment needs them: :mod:`deploy.tls` (certificate authority and SuperLink
certificate), :mod:`deploy.node_keys` (SuperNode authentication keys),
:mod:`deploy.node_data` (each node's data file), :mod:`deploy.nodes` (each
SuperNode's key, data and node config together), :mod:`deploy.federation` (start
the SuperLink and SuperNodes, register the nodes, ``flwr run``, stop), with
:mod:`deploy.processes` (processes started and stopped by PID) and
:mod:`deploy.files` (files created once, never overwritten) underneath.
"""
