"""What the consumers do when a cluster fails over under them: calls retried while the error is one a
failover cures, transactional calls that outlive their own timeout reported as stuck."""

from __future__ import annotations

import threading

import pytest
from confluent_kafka import KafkaError, KafkaException

from pktstream.consumers.engine import transactions
from pktstream.runtime.kafka import retriable, retrying, transient


def failing(codes: list[int], result: str = "ok") -> tuple[list[int], object]:
    calls: list[int] = []

    def call() -> str:
        calls.append(1)
        if len(calls) <= len(codes):
            raise KafkaException(KafkaError(codes[len(calls) - 1]))
        return result

    return calls, call


def test_transient_errors_are_retried_until_the_call_succeeds() -> None:
    calls, call = failing([KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError._TIMED_OUT,
                           KafkaError.COORDINATOR_NOT_AVAILABLE])
    assert retrying(call, "test", timeout_s=10) == "ok"  # type: ignore[arg-type]
    assert len(calls) == 4


def test_other_errors_and_an_exhausted_deadline_are_raised() -> None:
    calls, call = failing([KafkaError.TOPIC_AUTHORIZATION_FAILED])
    with pytest.raises(KafkaException):
        retrying(call, "test", timeout_s=10)  # type: ignore[arg-type]
    assert len(calls) == 1
    calls, call = failing([KafkaError._TRANSPORT] * 100)
    with pytest.raises(KafkaException):
        retrying(call, "test", timeout_s=0.5)  # type: ignore[arg-type]
    assert 1 < len(calls) < 10
    assert transient(KafkaError(KafkaError.LEADER_NOT_AVAILABLE)) and not transient(None)
    assert not retriable(KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION))  # only what librdkafka says, for txns


def test_a_call_past_its_timeout_is_stuck_and_its_outcome_passes_through(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transactions, "TXN_CALL_S", 0.1)
    release = threading.Event()

    def hangs() -> None:  # as librdkafka#5511: past the timeout it was given
        release.wait(5)

    with pytest.raises(transactions.TransactionStuck, match="commit_transaction"):
        transactions.guarded(hangs, "commit_transaction", grace_s=0.1)
    release.set()
    transactions.guarded(lambda: None, "fine")

    def boom() -> None:
        raise KafkaException(KafkaError(KafkaError._FENCED))

    with pytest.raises(KafkaException):
        transactions.guarded(boom, "fenced")
