"""Flower app: ServerApp, ClientApp, data, model, run config and results.

Opacus calls ``logging.basicConfig()`` when imported, which gives the root logger a
stream handler: every line of Flower's logger (which propagates) would then print a
second time, uncoloured, DEBUG lines included. A handler on the root logger first
makes that call do nothing, so each event is one line.
"""

import logging

logging.getLogger().addHandler(logging.NullHandler())
