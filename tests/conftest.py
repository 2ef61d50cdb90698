"""Shared fixtures: the real servers tests start and stop themselves."""

pytest_plugins = ["tests.kafka_fixtures", "tests.clickhouse_fixtures"]
