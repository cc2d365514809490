"""POSTing JSON with urllib, and telling temporary failures from permanent ones.

HTTP 5xx, 408, timeouts and refused or reset connections are temporary;
429 is temporary and its ``Retry-After`` is honoured; any other 4xx (404,
400 ``invalid_payload``, 403, 410) and a redirect are permanent: the URL or
the payload is wrong and retrying will not fix it. A certificate that does
not verify is permanent too. Error texts never contain the URL (it is a
secret for Slack); only its host name is ever shown.
"""

from __future__ import annotations

import email.utils
import json
import ssl
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from alerter.notify import DeliveryError
from alerter.text import line_text

USER_AGENT = "mtbbs-alerter/0.1"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A webhook that redirects is misconfigured; following it would re-send
    # the payload (as a GET, losing it) somewhere we were not told about.
    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def url_host(url: str) -> str:
    """The host name of ``url`` (what logs may show of a secret URL)."""
    return urlsplit(url).hostname or "?"


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta seconds or an HTTP date)."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    delta = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, delta)


def classify_status(status: int, body: str, retry_after: str | None) -> DeliveryError:
    """The DeliveryError for an HTTP error status."""
    detail = f"HTTP {status}"
    if body:
        detail += f" {line_text(body, 120)}"
    if status == 429:
        return DeliveryError(detail, permanent=False, retry_after=retry_after_seconds(retry_after))
    if status >= 500 or status == 408:
        return DeliveryError(detail, permanent=False)
    return DeliveryError(detail, permanent=True)


def post_json(url: str, payload: Any, *, timeout: float,
              headers: dict[str, str] | None = None) -> tuple[int, str]:
    """POST ``payload`` as JSON; (status, first bytes of the body) on 2xx, else DeliveryError."""
    data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    request = urllib.request.Request(url, data=data, method="POST", headers={
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": USER_AGENT,
        **(headers or {}),
    })
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            body = response.read(2048).decode("utf-8", "replace")
            return int(response.status), body
    except urllib.error.HTTPError as exc:
        try:
            body = exc.read(512).decode("utf-8", "replace")
        except (OSError, ValueError):
            body = ""
        status = int(exc.code)
        if 300 <= status < 400:
            raise DeliveryError(f"HTTP {status} redirect (fix the URL)", permanent=True) \
                from None
        raise classify_status(status, body, exc.headers.get("Retry-After")) from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, ssl.SSLCertVerificationError):
            raise DeliveryError(f"TLS certificate of {url_host(url)} does not verify",
                                permanent=True) from None
        text = str(reason) if not isinstance(reason, str) else reason
        raise DeliveryError(f"cannot reach {url_host(url)}: {line_text(text, 120)}",
                            permanent=False) from None
    except TimeoutError:
        raise DeliveryError(f"{url_host(url)} did not answer within {timeout:g}s",
                            permanent=False) from None
    except (ConnectionError, OSError) as exc:
        raise DeliveryError(f"connection to {url_host(url)} failed: "
                            f"{line_text(type(exc).__name__, 60)}", permanent=False) from None
    except ValueError:
        raise DeliveryError("the URL is not usable", permanent=True) from None
