"""A ServerApp that times rounds of one empty message per node, polled every 50 ms."""

from __future__ import annotations

import json
import time
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()
POLL_INTERVAL = 0.05


def one_round(grid: Grid, nodes: list[int], server_round: int) -> float:
    """Send one train message to every node; return the seconds until all replied."""
    started = time.monotonic()
    content = RecordDict({"config": ConfigRecord({"server-round": server_round})})
    messages = [Message(content, dst_node_id=n, message_type=MessageType.TRAIN) for n in nodes]
    pending = set(grid.push_messages(messages))
    while pending:
        for reply in grid.pull_messages(list(pending)):
            pending.discard(reply.metadata.reply_to_message_id)
        if pending:
            time.sleep(POLL_INTERVAL)
    return time.monotonic() - started


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the rounds and write ``results.json`` in the shape bench/deploy.py reads."""
    started = time.monotonic()
    nodes = list(grid.get_node_ids())
    while len(nodes) < int(context.run_config["num-nodes"]):
        time.sleep(POLL_INTERVAL)
        nodes = list(grid.get_node_ids())
    rounds = int(context.run_config["num-server-rounds"])
    seconds = [one_round(grid, nodes, r) for r in range(1, rounds + 1)]
    results = {
        "status": "completed",
        "rounds": [{"round": r, "seconds": s} for r, s in enumerate(seconds, start=1)],
        "final": {"accuracy": None, "seconds_total": time.monotonic() - started},
    }
    out = Path(str(context.run_config["output-dir"]))
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results))
