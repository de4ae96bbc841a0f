"""A ClientApp that answers at once; with ``import-torch`` it first imports torch."""

from __future__ import annotations

import importlib

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Reply with one metric (after importing torch when the run asks)."""
    if context.run_config.get("import-torch"):
        importlib.import_module("torch")
    return Message(RecordDict({"metrics": MetricRecord({"ok": 1})}), reply_to=msg)
