"""Client side of homomorphic encryption, as a ClientApp mod: ``ClientApp(mods=[he_mod])``.

On the way in, the mod decrypts an encrypted global model with this node's secret
context (refusing a sum that wrapped around the fixed-point range) and hands the
ClientApp plaintext arrays. On the way out, it takes the train reply's plaintext
update, applies the round's :class:`~strategies.linear.LinearRule` (sent by the
server): weights it in plaintext and applies the rule's affine finish against the
global model it received, then encrypts it. The server's encrypted sum divided by the
total weight *is* the next global model: ``sum_k w_k f(u_k) / sum_k w_k = f(mean)``
for an affine ``f``. Nothing has to be remembered between rounds, and whatever local
training produced (also with local differential privacy) is what gets encrypted.
Without ``he = true`` the mod passes messages through untouched.

Under distributed DP (``dp = "distributed"``) the update is instead clipped, given
this node's share of the noise (drawn from the node's secret with a fresh nonce,
never from the run's seed) and weighted so that the round's sum over the fixed
denominator is central DP's noisy mean (:func:`fl_app.he.records.noisy_payload`).
Only the weight and ``num-examples = 1`` leave the node, and it answers no
evaluation, unless its node config sets ``dp-report-metrics``.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MessageType,
    RecordDict,
)
from flwr.clientapp.typing import ClientAppCallable

from fl_app.config import NodeConfig, RunConfig, node_config_of, run_config_of
from fl_app.dp.local import SECRET_FILE
from fl_app.he.keys import client_secret_context
from fl_app.he.records import (
    KEY_RECORD,
    decrypted_arrays,
    encrypted_update,
    is_encrypted,
    noisy_encrypted_update,
    share_of,
)
from privacy import PrivacyError
from privacy.client_level import NoiseShare
from privacy.he import MIN_CLIENTS, HEError
from privacy.secrets import SecretError, derive_generator, load_or_create_secret, new_nonce
from strategies.linear import LinearRule
from strategies.protocol import ARRAYS_KEY, CONFIG_KEY

NOISE_LABEL = "distributed noise"
"""HMAC label of a node's distributed-DP noise seed (with a fresh nonce per update)."""


def key_check(context: Context) -> RecordDict:
    """Return the fingerprint of this node's secret HE context (the server's pre-round check).

    Raises
    ------
    HEError
        If the node has no secret context, naming where it looked.
    """
    key = client_secret_context(node_config_of(context))
    return RecordDict({KEY_RECORD: ConfigRecord({"fingerprint": key.fingerprint})})


def _refuse(reason: str) -> PrivacyError:
    return PrivacyError(f"node refuses to train: {reason}; nothing was trained")


def accepted_share(config: ConfigRecord, run: RunConfig, node: NodeConfig) -> NoiseShare:
    """Return the round's noise share if this node accepts it.

    Raises
    ------
    PrivacyError
        If the round has fewer than :data:`~privacy.he.MIN_CLIENTS` clients, or less
        noise than the node's ``dp-min-noise-multiplier``.
    ValueError
        If the round config does not describe a share.
    """
    share = share_of(config, run.dp_clipping_norm)
    if share.shares < MIN_CLIENTS:
        raise _refuse(
            f"the round has {share.shares} clients; distributed DP under HE needs at least "
            f"{MIN_CLIENTS} (with fewer, each could read the others' update)"
        )
    if share.noise_multiplier < node.dp_min_noise_multiplier:
        raise _refuse(
            f"noise multiplier {share.noise_multiplier:.4g} is below its "
            f"dp-min-noise-multiplier {node.dp_min_noise_multiplier:g}"
        )
    return share


def he_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Decrypt the incoming global model; encrypt (and under distributed DP, noise) the update."""
    message_type = msg.metadata.message_type
    carries_model = message_type in (MessageType.TRAIN, MessageType.EVALUATE)
    run = run_config_of(context)
    if not (carries_model and run.he):
        return call_next(msg, context)
    distributed = run.dp == "distributed"
    try:
        node = node_config_of(context)
        if distributed and message_type == MessageType.EVALUATE and not node.dp_report_metrics:
            raise PrivacyError(
                "node under distributed DP reports no evaluation (its dp-report-metrics is false)"
            )
        key = client_secret_context(node)
        config = msg.content[CONFIG_KEY]
        share = accepted_share(config, run, node) if distributed else None
        if is_encrypted(msg.content[ARRAYS_KEY]):
            arrays = decrypted_arrays(msg.content[ARRAYS_KEY], config, key)
            plaintext = ArrayRecord({name: Array(a) for name, a in arrays.items()})
            # a new RecordDict: the one received may be shared with other nodes' messages
            # (in-process grids, Flower's strategies); every node decrypts for itself
            msg.content = RecordDict({**dict(msg.content.items()), ARRAYS_KEY: plaintext})
            received = list(arrays.values())
        else:
            received = [a.numpy() for a in msg.content[ARRAYS_KEY].values()]
        reply = call_next(msg, context)
        if reply.has_error() or message_type != MessageType.TRAIN:
            return reply
        rule = LinearRule.from_config(config)
        if share is None:
            content = encrypted_update(reply.content, received, rule, key)
        else:
            secret = load_or_create_secret(Path(node.state_dir) / SECRET_FILE)
            rng = derive_generator(secret, new_nonce(), NOISE_LABEL)
            content = noisy_encrypted_update(
                reply.content, received, rule, key, share, rng, node.dp_report_metrics
            )
    except (HEError, ValueError) as err:
        return Message(Error(code=0, reason=f"homomorphic encryption: {err}"), reply_to=msg)
    except (PrivacyError, SecretError) as err:
        return Message(Error(code=0, reason=str(err)), reply_to=msg)
    return Message(content=content, reply_to=msg)
