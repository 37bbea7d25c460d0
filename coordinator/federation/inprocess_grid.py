"""A Flower `Grid` that delivers messages to a ClientApp in this process (no transport).

Used by tests and benchmarks to run the ServerApp's round loop quickly.

Each message is deep-copied on the way in and out, as a transport would, and handled at once.
Nodes listed in `silent` never answer (a dropped site); a ClientApp exception becomes an error
reply, as Flower's runtime does.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

Handler = Callable[[Message, Context], Message]


class InProcessGrid(Grid):
    """Nodes are `node_id -> node_config`; every node runs `client_app`."""

    def __init__(
        self,
        client_app: Handler,
        node_configs: dict[int, dict],
        run_config: dict | None = None,
        silent: Iterable[int] = (),
        run_id: int = 4242,
    ):
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, SUPERLINK_NODE_ID, 1
        self.client_app = client_app
        self.silent = set(silent)
        self.contexts = {
            nid: Context(run_id, nid, dict(cfg), RecordDict(), dict(run_config or {}))
            for nid, cfg in node_configs.items()
        }
        self._run = Run.create_empty(run_id)
        self._replies: dict[str, Message] = {}
        self.sent: list[Message] = []

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl=None
    ):
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            ids.append(msg.metadata.message_id)
            self.sent.append(msg)
            node = msg.metadata.dst_node_id
            if node in self.silent or node not in self.contexts:
                continue
            incoming = copy.deepcopy(msg)
            try:
                reply = self.client_app(incoming, self.contexts[node])
            except Exception as exc:  # noqa: BLE001 - Flower turns any ClientApp error into an error reply
                reply = Message(
                    Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, f"{type(exc).__name__}: {exc}"),
                    reply_to=incoming,
                )
            reply = copy.deepcopy(reply)
            reply.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            self._replies[msg.metadata.message_id] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))
