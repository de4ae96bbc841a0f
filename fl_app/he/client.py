"""Client side of homomorphic encryption, as a ClientApp mod: ``ClientApp(mods=[he_mod])``.

On the way in, the mod decrypts an encrypted global model with this node's secret
context and hands the ClientApp plaintext arrays. On the way out, it takes the train
reply's plaintext update, applies the round's :class:`~strategies.linear.LinearRule`
(sent by the server): weights it in plaintext and applies the rule's affine finish
against the global model it received, then encrypts it. The server's encrypted sum
divided by the total weight *is* the next global model:
``sum_k w_k f(u_k) / sum_k w_k = f(mean)`` for an affine ``f``. Nothing has to be
remembered between rounds, and whatever local training produced (also with local
differential privacy) is what gets encrypted. Without ``he = true`` the mod passes
messages through untouched.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Error, Message, MessageType, RecordDict
from flwr.clientapp.typing import ClientAppCallable

from fl_app.config import node_config_of, run_config_of
from fl_app.he.keys import client_secret_context
from fl_app.he.records import KEY_RECORD, decrypted_model, encrypted_update, is_encrypted
from privacy.he import HEError
from strategies.linear import LinearRule
from strategies.protocol import ARRAYS_KEY, CONFIG_KEY


def key_check(context: Context) -> RecordDict:
    """Return the fingerprint of this node's secret HE context (the server's pre-round check).

    Raises
    ------
    HEError
        If the node has no secret context, naming where it looked.
    """
    key = client_secret_context(node_config_of(context))
    return RecordDict({KEY_RECORD: ConfigRecord({"fingerprint": key.fingerprint})})


def he_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Decrypt the incoming global model; encrypt the outgoing train update."""
    carries_model = msg.metadata.message_type in (MessageType.TRAIN, MessageType.EVALUATE)
    if not (carries_model and run_config_of(context).he):
        return call_next(msg, context)
    try:
        key = client_secret_context(node_config_of(context))
        config = msg.content[CONFIG_KEY]
        if is_encrypted(msg.content[ARRAYS_KEY]):
            msg.content[ARRAYS_KEY] = decrypted_model(msg.content[ARRAYS_KEY], config, key)
        received = [a.numpy() for a in msg.content[ARRAYS_KEY].values()]
        reply = call_next(msg, context)
        if reply.has_error() or msg.metadata.message_type != MessageType.TRAIN:
            return reply
        content = encrypted_update(reply.content, received, LinearRule.from_config(config), key)
    except (HEError, ValueError) as err:
        return Message(Error(code=0, reason=f"homomorphic encryption: {err}"), reply_to=msg)
    return Message(content=content, reply_to=msg)
