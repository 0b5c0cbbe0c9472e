"""The stream runner's transactions: one Kafka transaction open at a time on a transactional
producer (what a turn of the loop produces, the snapshots and the consumed offsets commit
together), committed, aborted, or, when a call is stuck past its own timeout, the producer replaced
by a new one of the same transactional id, which fences the stuck one and aborts its transaction.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from confluent_kafka import KafkaException, Producer, TopicPartition

from pktstream.consumers.engine.topics import transactional_producer
from pktstream.runtime.kafka import retriable, retrying

log = structlog.get_logger("pktstream.stream")

TXN_CALL_S = 30.0  # the timeout given to each transactional call


class TransactionStuck(Exception):
    """A transactional call did not return within its own timeout and a grace."""


def guarded(call: Callable[[], None], what: str, grace_s: float = 10.0) -> None:
    """``call()`` (one given TXN_CALL_S as its timeout) in a thread of its own, waited for TXN_CALL_S
    plus a grace: past that it is stuck (see Transactions.replace); its outcome otherwise."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as e:  # handed to the caller's thread
            outcome.append(e)

    t = threading.Thread(target=run, name=what, daemon=True)
    t.start()
    t.join(TXN_CALL_S + grace_s)
    if not outcome:
        raise TransactionStuck(f"{what} did not return within {TXN_CALL_S + grace_s:.0f} s")
    if outcome[0] is not None:
        raise outcome[0]


class Transactions:
    """The open transaction of one runner (transactional id ``txn_id``: the app and instance)."""

    def __init__(self, conf: Mapping[str, Any], txn_id: str,
                 on_replace: Callable[[Producer], None] | None = None, extra: Mapping[str, Any] | None = None) -> None:
        self.conf, self.txn_id, self.on_replace, self.extra = dict(conf), txn_id, on_replace, extra
        self._abandoned: list[Producer] = []  # producers replaced while stuck in a call (see replace)
        self.producer = transactional_producer(self.conf, txn_id, extra)
        self.producer.init_transactions(60)
        self.producer.begin_transaction()

    def commit(self, offsets: list[TopicPartition], group: Any) -> bool:
        """Commit the open transaction with the consumed offsets and begin the next. False when it
        was aborted instead (the caller goes back to the last commit)."""
        producer = self.producer
        try:
            # a coordinator's broker dying makes these fail retriably: librdkafka's contract is to call
            # them again (it finds the new coordinator), abort only when the error says so
            if offsets:
                retrying(lambda: guarded(lambda: producer.send_offsets_to_transaction(offsets, group, TXN_CALL_S),
                                         "send_offsets_to_transaction"), "send_offsets", when=retriable)
            retrying(lambda: guarded(lambda: producer.commit_transaction(TXN_CALL_S), "commit_transaction"),
                     "commit_transaction", when=retriable)
        except TransactionStuck as e:
            self.replace(str(e))
            return False
        except KafkaException as e:
            err = e.args[0]
            if err.txn_requires_abort():
                log.warning("transaction_aborted", error=str(err))
                producer.abort_transaction(60)
                producer.begin_transaction()
                return False
            raise
        producer.begin_transaction()
        return True

    def abort(self, why: str) -> None:
        """Abort the open transaction and begin the next (a stuck abort replaces the producer)."""
        producer = self.producer
        try:
            guarded(lambda: producer.abort_transaction(TXN_CALL_S), "abort_transaction")
            producer.begin_transaction()
        except (KafkaException, TransactionStuck) as e:
            self.replace(f"{why}: {e}")

    def replace(self, why: str) -> None:
        """A transactional call that outlived its own timeout (librdkafka can wait forever for a group
        coordinator whose broker left the metadata: confluentinc/librdkafka#5456, #5511): a new
        producer with the same transactional id fences the stuck one and aborts its open
        transaction; the caller goes back to the last commit, as after any abort."""
        log.warning("transaction_stuck_producer_replaced", error=why, transactional_id=self.txn_id)
        self._abandoned.append(self.producer)  # a thread still waits in it: never destroyed under it
        producer = transactional_producer(self.conf, self.txn_id, self.extra)
        retrying(lambda: producer.init_transactions(TXN_CALL_S), "init_transactions", when=retriable)
        producer.begin_transaction()
        self.producer = producer
        if self.on_replace is not None:
            self.on_replace(producer)

    def close(self) -> None:
        with contextlib.suppress(KafkaException):
            self.producer.abort_transaction(10)
