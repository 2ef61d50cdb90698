"""VigiePublisher.close keeps to its timeout and reports each undelivered record once (no broker:
an unreachable address, and librdkafka's in-process mock cluster)."""

from __future__ import annotations

import time

import orjson

from tests.factories import declaration_dict
from vigie.streams.publish import VigiePublisher

UNREACHABLE = "127.0.0.1:1"  # nothing listens on port 1: connections are refused at once


def _publish_two(publisher: VigiePublisher) -> None:
    for line, event_id in ((3, "decl-a"), (7, "decl-b")):
        assert publisher.publish("declarations", orjson.dumps(declaration_dict(event_id=event_id)), line=line)


def test_close_keeps_to_its_timeout_and_reports_each_record_once() -> None:
    seen = []
    publisher = VigiePublisher(UNREACHABLE, config={"log_level": 0}, on_rejection=seen.append)
    _publish_two(publisher)
    began = time.monotonic()
    publisher.close(timeout=1.0)
    elapsed = time.monotonic() - began
    # Before, librdkafka's close waited out message.timeout.ms (5 minutes by default).
    assert elapsed < 4.0, elapsed
    report = publisher.report
    assert report.sent == 2 and report.delivered == 0 and report.undelivered == 2 and not report.ok
    assert [r.line for r in report.rejections] == [3, 7], "one rejection per record, with its line"
    assert all(r.delivery and "close() timed out" in r.reason for r in report.rejections)
    assert seen == report.rejections
    assert str(report.rejections[0]).startswith("<python>:3: not delivered: not acknowledged before close()")


def test_close_after_delivery_reports_nothing() -> None:
    """With a broker (librdkafka's mock cluster) the records are delivered: no purge, no rejection."""
    config = {"test.mock.num.brokers": 1, "log_level": 0}
    publisher = VigiePublisher(UNREACHABLE, config=config)
    _publish_two(publisher)
    began = time.monotonic()
    publisher.close(timeout=10.0)
    assert time.monotonic() - began < 8.0
    assert publisher.report.ok and publisher.report.delivered == 2 and not publisher.report.rejections
