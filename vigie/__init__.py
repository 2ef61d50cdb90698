"""Vigie: an event-driven streaming risk engine for customs administrations."""

__version__ = "0.1.0"
