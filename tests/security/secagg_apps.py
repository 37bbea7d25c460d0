"""A ClientApp for the SecAgg+ test: the real Offsite ClientApp, with site 2 dropping mid-round.

Lives in its own module so Ray's workers can import it (PYTHONPATH = the repository root).
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

from client.client_app import app as offsite_client

DROPPED_PARTITION = 2


def drop_after_key_sharing(message: Message, context: Context, call_next) -> Message:
    """Site 2 vanishes in the masking stage: after it shared its key shares, before it sends its vector."""
    configs = message.content.config_records.get(RECORD_KEY_CONFIGS)
    stage = configs.get(Key.STAGE) if configs is not None else None
    if (
        int(context.node_config.get("partition-id", -1)) == DROPPED_PARTITION
        and stage == Stage.COLLECT_MASKED_VECTORS
    ):
        raise RuntimeError("site 2 dropped out mid-round")
    return call_next(message, context)


app = ClientApp(mods=[drop_after_key_sharing])


@app.train()
def train(message: Message, context: Context) -> Message:
    """The Offsite ClientApp's train (routes SecAgg+ stages to client.secagg_app)."""
    return offsite_client(message, context)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """The Offsite ClientApp's evaluate (delivers the stand-in before the SecAgg+ rounds)."""
    return offsite_client(message, context)


@app.query()
def query(message: Message, context: Context) -> Message:
    """The Offsite ClientApp's query."""
    return offsite_client(message, context)
