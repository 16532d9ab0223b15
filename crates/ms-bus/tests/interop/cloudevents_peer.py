"""The CloudEvents Python SDK as a peer for ms-bus's codecs.

Reads one JSON document on stdin: {"decode": [message, ...]} where a message is
{"binding": "http" | "rabbitmq", "headers": {...}, "content_type": str | null, "body_b64": str}.
Writes one JSON document on stdout: {"decoded": [...], "encoded": [...]}: what the SDK read from
each message (attributes as strings, data as base64 of its bytes), and fixed events the SDK
encodes in both bindings and both content modes, for ms-bus to decode.

JSON data is reported exactly: Python's json reads decimals as floats, which would round
1234567890.123456789 whoever wrote it, so the SDK's JSON reader is given `parse_float=Decimal`
(integers are exact in Python anyway), and data is written back compactly, numbers as read.
"""

import base64
import functools
import json
import sys
from datetime import datetime, timezone
from decimal import Decimal

import cloudevents.core.formats.json as sdk_json
from cloudevents.core.bindings import http, rabbitmq
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

sdk_json.loads = functools.partial(json.loads, parse_float=Decimal)
FMT = JSONFormat()


def exact_json(value):
    """Compact JSON text of `value`, members in their order, Decimals as their digits."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{exact_json(k)}:{exact_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(exact_json(v) for v in value) + "]"
    if isinstance(value, Decimal):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


def data_bytes(data):
    if data is None:
        return b""
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    if isinstance(data, str):
        return data.encode("utf-8")
    return exact_json(data).encode("utf-8")


def attributes(event):
    out = {}
    for name, value in event.get_attributes().items():
        if value is None:
            continue
        if isinstance(value, datetime):
            value = value.isoformat().replace("+00:00", "Z")
        out[name] = str(value)
    return out


def decode(message):
    body = base64.b64decode(message["body_b64"])
    if message["binding"] == "rabbitmq":
        msg = rabbitmq.RabbitMQMessage(
            headers=message["headers"], content_type=message["content_type"], body=body
        )
        event = rabbitmq.from_rabbitmq(msg, FMT)
    else:
        headers = dict(message["headers"])
        if message["content_type"] is not None:
            headers["content-type"] = message["content_type"]
        event = http.from_http(http.HTTPMessage(headers=headers, body=body), FMT)
    return {
        "attributes": attributes(event),
        "data_b64": base64.b64encode(data_bytes(event.get_data())).decode(),
    }


def samples():
    t = datetime(2026, 11, 26, 14, 10, 0, 250000, tzinfo=timezone.utc)
    return [
        CloudEvent(
            {
                "id": "py-json-1",
                "source": "/python/peer",
                "type": "invoicing.invoice.created",
                "subject": "Euro € 😀 \"quoted\" 100%",
                "time": t,
                "datacontenttype": "application/json",
                "partitionkey": "inv-1001",
                "tenantid": "acme",
                "correlationid": "01JD0000000000000000000000",
            },
            {"number": "inv-1001", "total_cents": 4200},
        ),
        CloudEvent(
            {
                "id": "py-bytes-2",
                "source": "/python/peer",
                "type": "files.blob.stored",
                "time": t,
                "datacontenttype": "application/octet-stream",
            },
            bytes([0, 1, 2, 250, 255]),
        ),
        CloudEvent(
            {
                "id": "py-numbers-4",
                "source": "/python/peer",
                "type": "ledger.entry.posted",
                "time": t,
                "datacontenttype": "application/json",
            },
            {"big": 12345678901234567890123, "negative": -98765432109876543210},
        ),
        CloudEvent(
            {
                "id": "py-text-3",
                "source": "/python/peer",
                "type": "notes.note.written",
                "time": t,
                "datacontenttype": "text/plain",
            },
            "plain text",
        ),
    ]


def encode_all():
    out = []
    for event in samples():
        for binding, module in (("http", http), ("rabbitmq", rabbitmq)):
            for mode in ("binary", "structured"):
                msg = (module.to_binary if mode == "binary" else module.to_structured)(event, FMT)
                headers = dict(msg.headers)
                if binding == "http":
                    content_type = None
                    for name in list(headers):
                        if name.lower() == "content-type":
                            content_type = headers.pop(name)
                else:
                    content_type = msg.content_type
                out.append(
                    {
                        "binding": binding,
                        "mode": mode,
                        "headers": headers,
                        "content_type": content_type,
                        "body_b64": base64.b64encode(msg.body).decode(),
                        "expected": {
                            "attributes": attributes(event),
                            "data_b64": base64.b64encode(data_bytes(event.get_data())).decode(),
                        },
                    }
                )
    return out


request = json.load(sys.stdin)
json.dump(
    {"decoded": [decode(m) for m in request["decode"]], "encoded": encode_all()},
    sys.stdout,
)
