"""A Grid that delivers messages to the real ClientApp inside this process.

It replaces only the transport (SuperLink, SuperNodes, Ray): the server's round loop,
the strategies and the ClientApp are the real ones. Tests and benchmarks use it where
the transport is not what is being measured, to run many configurations in seconds;
end-to-end tests and the overhead benchmark use real ``flwr run`` processes instead.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from fl_app import client_app as product_client_app
from fl_app import server_app
from fl_app.config import RunConfig
from fl_app.server.results import RESULTS_FILE

RUN_ID = 7


class RunNotStartedError(RuntimeError):
    """The ServerApp refused to start the run (it logged one ERROR line saying why)."""


def set_task_identity() -> None:
    """Let code outside a Flower process construct Messages (Flower requires a run ID)."""
    TaskIdentity.run_id = RUN_ID
    TaskIdentity.node_id = 0
    TaskIdentity.task_id = 1


class InProcessGrid(Grid):
    """Grid over ``num_nodes`` in-process nodes running ``client_app``.

    Parameters
    ----------
    client_app : ClientApp
        The app each node runs.
    num_nodes : int
        Nodes with node-config ``partition-id`` 0..n-1 and ``num-partitions`` n.
    run_config : dict[str, Any]
        The run config every node sees.
    reply_hook : callable, optional
        ``hook(partition_id, message, reply) -> reply | None`` may change a reply or
        drop it (``None`` = the node never answers): fault injection for tests and
        robustness benchmarks, never reachable from a run config.
    override_config : dict[str, Any], optional
        What ``grid.run.override_config`` returns (the raw ``--run-config``).
    node_configs : Sequence[dict[str, Any]], optional
        More node-config keys, one dict per node (as a SuperNode's ``--node-config``).
    """

    def __init__(
        self,
        client_app: ClientApp,
        num_nodes: int,
        run_config: dict[str, Any],
        reply_hook: Callable[[int, Message, Message], Message | None] | None = None,
        override_config: dict[str, Any] | None = None,
        node_configs: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        set_task_identity()
        self.client_app = client_app
        self.reply_hook = reply_hook
        self.node_ids = [1000 + 17 * i for i in range(num_nodes)]
        self.contexts = {
            node: Context(
                run_id=RUN_ID,
                node_id=node,
                node_config={
                    "partition-id": i,
                    "num-partitions": num_nodes,
                    **(node_configs[i] if node_configs else {}),
                },
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for i, node in enumerate(self.node_ids)
        }
        self._run = replace(Run.create_empty(RUN_ID), override_config=override_config or {})
        self._replies: dict[str, Message] = {}
        self.sent: list[Message] = []

    def set_run(self, run: Run) -> None:
        """Replace the run."""
        self._run = run

    @property
    def run(self) -> Run:
        """The run these nodes take part in."""
        return self._run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        """Not supported (deprecated in Flower): build ``Message`` directly."""
        raise NotImplementedError("deprecated in Flower; build Message directly")

    def get_node_ids(self) -> Iterable[int]:
        """Return the node IDs."""
        return list(self.node_ids)

    def get_nodes(self) -> Iterable[NodeInfo]:
        """Return the nodes in registration (= partition) order."""
        return [
            NodeInfo(node_id=node, registered_at=f"2026-01-01T00:00:{i:02d}")
            for i, node in enumerate(self.node_ids)
        ]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Run the ClientApp on each message now; keep the replies for pulling."""
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            self.sent.append(message)
            context = self.contexts[message.metadata.dst_node_id]
            try:
                reply = self.client_app(message, context)
            except Exception as err:
                reply = Message(Error(code=0, reason=repr(err)), reply_to=message)
            if self.reply_hook is not None:
                reply = self.reply_hook(int(context.node_config["partition-id"]), message, reply)
            if reply is not None:
                self._replies[message.metadata.message_id] = reply
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Return (and forget) the replies to these message IDs that exist."""
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push the messages and return their replies."""
        return self.pull_messages(self.push_messages(messages))


ReplyHook = Callable[[int, Message, Message], Message | None]


def run_server_app_in_process(
    out: Path,
    overrides: dict[str, Any],
    *,
    num_nodes: int = 3,
    client_app: ClientApp | None = None,
    reply_hook: ReplyHook | None = None,
    node_configs: Sequence[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run the real ServerApp once against ``num_nodes`` in-process ClientApps.

    Parameters
    ----------
    out : Path
        The run's ``output-dir`` (must not exist yet).
    overrides : dict[str, Any]
        Run-config overrides on top of the defaults, as ``--run-config`` would give.
    num_nodes : int
        Simulated clients.
    client_app : ClientApp, optional
        Defaults to the product's ClientApp.
    reply_hook : ReplyHook, optional
        Fault injection, see :class:`InProcessGrid`.
    node_configs : Sequence[dict[str, Any]], optional
        More node-config keys per node, see :class:`InProcessGrid`.

    Returns
    -------
    dict[str, Any]
        The run's ``results.json``.

    Raises
    ------
    RunNotStartedError
        If the ServerApp refused to start (its ERROR log line says why).
    """
    overrides = {"output-dir": str(out), **overrides}
    config = {**RunConfig().to_dict(), **overrides}
    grid = InProcessGrid(
        client_app or product_client_app.app,
        num_nodes,
        config,
        reply_hook,
        override_config=overrides,
        node_configs=node_configs,
    )
    context = Context(
        run_id=RUN_ID, node_id=0, node_config={}, state=RecordDict(), run_config=config
    )
    server_app.app(grid, context)
    results = out / RESULTS_FILE
    if not results.is_file():
        raise RunNotStartedError(f"the run wrote no {results}; its ERROR log line says why")
    return json.loads(results.read_text())
