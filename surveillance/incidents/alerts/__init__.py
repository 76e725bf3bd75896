"""Alerts: incident pages to webhook, Alertmanager, Slack and e-mail channels.

:func:`process_alerts` queues one delivery per (incident, channel, kind), sends
what is due, retries with backoff and logs every attempt; see
:mod:`surveillance.incidents.alerts.delivery`.
Messages: :mod:`surveillance.incidents.alerts.messages`;
channel payloads and transports: :mod:`surveillance.incidents.alerts.channels`.
"""

from surveillance.incidents.alerts.channels import ChannelError, render, send
from surveillance.incidents.alerts.delivery import (
    DeliveryReport,
    RetryPolicy,
    message_for,
    process_alerts,
)
from surveillance.incidents.alerts.messages import AlertMessage, build_message

__all__ = [
    "AlertMessage",
    "ChannelError",
    "DeliveryReport",
    "RetryPolicy",
    "build_message",
    "message_for",
    "process_alerts",
    "render",
    "send",
]
