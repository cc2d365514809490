"""Mail over SMTP with smtplib: plain, STARTTLS or implicit TLS, with AUTH.

The message is an :class:`email.message.EmailMessage` in UTF-8 (base64 when
the body is not ASCII, so Japanese text survives any relay). Headers are
built only from our own text and sanitised host/check names: no CR, LF or
control character from anywhere reaches a header. SMTP replies decide
whether a failure is permanent (5xx, authentication refused, STARTTLS not
offered, a certificate that does not verify) or temporary (4xx, refused or
dropped connections, timeouts).
"""

from __future__ import annotations

import email.policy
import email.utils
import smtplib
import ssl
from email.message import EmailMessage

from alerter.notify import DeliveryError, Notification
from alerter.notify.render import subject, text_body
from alerter.settings import MailSettings
from alerter.text import header_text, line_text
from wire.state import plural

TITLE = "MTBBS Health Alert"


def _by_code(code: int, what: str) -> DeliveryError:
    return DeliveryError(f"{what} ({code})", permanent=not 400 <= code < 500)


def build_message(settings: MailSettings, notes: list[Notification]) -> EmailMessage:
    """The mail for ``notes``."""
    message = EmailMessage(policy=email.policy.SMTP)
    message["Subject"] = subject(header_text(settings.subject_prefix, 40), notes)
    message["From"] = header_text(settings.from_addr)
    message["To"] = ", ".join(header_text(a) for a in settings.to)
    message["Date"] = email.utils.formatdate(usegmt=True)
    message["Message-ID"] = email.utils.make_msgid(domain="mtbbs-alerter.invalid")
    message["Auto-Submitted"] = "auto-generated"
    message["X-MTBBS-Notifications"] = header_text(" ".join(n.id for n in notes[:5]), 900)
    body = text_body(TITLE, notes)
    if body.isascii():
        message.set_content(body, charset="us-ascii", cte="7bit")
    else:
        message.set_content(body, charset="utf-8", cte="base64")
    return message


class MailNotifier:
    """Sends one mail per delivery to the configured recipients."""

    channel = "mail"

    def __init__(self, settings: MailSettings, password: str | None) -> None:
        self.settings = settings
        self._password = password

    def describe(self) -> str:
        """Server, port, security and recipients (never the password)."""
        s = self.settings
        return (f"mail via {s.host}:{s.effective_port} ({s.security}) to "
                f"{', '.join(s.to)}")

    def _context(self) -> ssl.SSLContext:
        s = self.settings
        context = ssl.create_default_context(cafile=str(s.tls_ca_file) if s.tls_ca_file
                                             else None)
        if not s.tls_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def send(self, notifications: list[Notification]) -> str:
        """Send the mail; DeliveryError says whether to retry."""
        s = self.settings
        message = build_message(s, notifications)
        host = s.host or ""
        try:
            if s.security == "ssl":
                client: smtplib.SMTP = smtplib.SMTP_SSL(host, s.effective_port,
                                                        timeout=s.timeout,
                                                        context=self._context())
            else:
                client = smtplib.SMTP(host, s.effective_port, timeout=s.timeout)
            with client:
                client.ehlo()
                if s.security == "starttls":
                    client.starttls(context=self._context())
                    client.ehlo()
                if s.username:
                    client.login(s.username, self._password or "")
                refused = client.send_message(message, from_addr=s.from_addr,
                                              to_addrs=list(s.to))
        except smtplib.SMTPAuthenticationError as exc:
            raise DeliveryError(f"SMTP authentication refused ({exc.smtp_code})",
                                permanent=True) from None
        except smtplib.SMTPNotSupportedError:
            raise DeliveryError("the SMTP server does not offer what mail.security or "
                                "mail.username needs (STARTTLS or AUTH)", permanent=True) from None
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            temporary = any(400 <= c < 500 for c in codes)
            raise DeliveryError(f"every recipient refused ({', '.join(map(str, codes))})",
                                permanent=not temporary) from None
        except smtplib.SMTPSenderRefused as exc:
            raise _by_code(exc.smtp_code, "sender refused") from None
        except smtplib.SMTPResponseException as exc:
            text = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) \
                else str(exc.smtp_error)
            raise _by_code(exc.smtp_code, f"SMTP error: {line_text(text, 120)}") from None
        except smtplib.SMTPServerDisconnected:
            raise DeliveryError(f"{host} closed the SMTP connection", permanent=False) from None
        except ssl.SSLCertVerificationError:
            raise DeliveryError(f"TLS certificate of {host} does not verify (mail.tls_ca_file)",
                                permanent=True) from None
        except ssl.SSLError as exc:
            raise DeliveryError(f"TLS with {host} failed: {line_text(exc.reason or exc, 80)}",
                                permanent=False) from None
        except smtplib.SMTPException as exc:
            raise DeliveryError(f"SMTP failed: {line_text(type(exc).__name__, 60)}",
                                permanent=False) from None
        except TimeoutError:
            raise DeliveryError(f"{host} did not answer within {s.timeout:g}s",
                                permanent=False) from None
        except OSError as exc:
            raise DeliveryError(f"cannot reach {host}:{s.effective_port}: "
                                f"{line_text(exc.strerror or type(exc).__name__, 80)}",
                                permanent=False) from None
        if refused:
            return (f"accepted by {host} for {len(s.to) - len(refused)} of {len(s.to)} "
                    f"recipients (refused: {', '.join(sorted(refused))})")
        return f"accepted by {host} for {plural(len(s.to), 'recipient')}"
