"""Where budget alerts go besides the log: a webhook (Slack-compatible JSON) and email (SMTP:
implicit TLS on port 465, elsewhere STARTTLS when offered). Each channel takes one alert and
says where it went, or raises; retries, backoff and the record of what happened are
``_alerts``'s. Each exchange is bounded in time and bytes, however the other end behaves."""

from __future__ import annotations

import contextlib
import logging
import smtplib
import socket
import ssl
import threading
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import parseaddr
from typing import Any, Protocol, runtime_checkable

from ollama_meter._urls import shown
from ollama_meter.budgets._smtp import Session
from ollama_meter.records import Alert

log = logging.getLogger("ollama_meter.alerts")


class Channel(Protocol):
    name: str

    def send(self, alert: Alert) -> str:
        """Deliver; return where it went. Raise on failure."""
        ...


@runtime_checkable
class Remembering(Protocol):
    """A channel that keeps something of an alert from one try to the next (email: who has
    it while others are deferred): the dispatcher tells it when it is done with the alert."""

    def forget(self, alert_id: int) -> None:
        """This process tries ``alert_id`` no more: delivered, given up, or left to the next run."""
        ...


CHANNEL_TIMEOUT = 3.0
"""Seconds a channel may take to take an alert; a hanging one is a failed attempt."""
ANSWER_TIMEOUT = 10.0
"""Seconds a server may take to answer an alert it was sent whole (a webhook relaying it to a
chat service, an SMTP server's content filter): past it, the alert may be there all the
same."""


class Undeliverable(OSError):
    """The server refused the alert in a way no later try changes (a redirect, a 404, every
    recipient refused for good): not tried again. The message says what to change."""


class Unanswered(OSError):
    """The server was sent the alert whole and did not answer: it may have it. Tried again at
    the next attempt, minutes later, not at once: each try at once posted it again (a webhook
    answering in 3.5 s got every alert 15 times, and each was on record as never sent)."""


class Deferred(OSError):
    """The server took the alert for some recipients and deferred the others (a 4xx: try
    later). Its text is the record a later run resumes from (:func:`_sent_before`: who has
    it), so it is kept whole: the addresses are the configured recipients, and each of the
    server's answers in it is cut to :data:`ANSWER` characters."""


class _Unsure(Deferred, Unanswered):
    """Recipients deferred before, and the others sent it whole, unanswered."""


ANSWER = 200
"""Characters of one server answer kept in an outcome: a hostile server's answer is its own."""


class _Cut:
    """Ends an HTTP exchange from another thread: called, it shuts the connection's socket
    (a read waiting on it returns at once). ``trace`` is the httpcore hook that finds it."""

    def __init__(self) -> None:
        self.streams: list[Any] = []
        self.done = False
        self.sent = False
        """Whether the request went out whole: from then on the server may have the alert."""

    def trace(self, event: str, info: dict[str, Any]) -> None:
        if event in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            self.streams.append(info.get("return_value"))
        elif event == "http11.send_request_body.complete":
            self.sent = True

    def __call__(self) -> None:
        self.done = True
        if self.streams:
            with contextlib.suppress(OSError, AttributeError, ValueError):
                self.streams[-1].get_extra_info("socket").shutdown(socket.SHUT_RDWR)


class WebhookChannel:
    name = "webhook"
    check = "the server OMETER_ALERT_WEBHOOK_URL names"

    def __init__(
        self, url: str, *, timeout: float = CHANNEL_TIMEOUT, answer: float = ANSWER_TIMEOUT
    ) -> None:
        self.url = url
        self.where = shown(url, path=False)  # a webhook's path is its secret
        self.timeout, self.answer = timeout, answer

    def send(self, alert: Alert) -> str:
        import httpx  # loaded when an alert goes out, not by every command that reads budgets

        from ollama_meter.upstream._sdk_made import on_this_machine, proxy_problem
        from ollama_meter.upstream._tls import client_tls

        # Streamed, the body never read: the status says it all, and a webhook that answers
        # with an endless body (a URL that serves a download) held the alert thread for
        # ever, its memory growing, every later alert queued behind it. The timeout bounds
        # each read, not the answer: one trickled a byte at a time is cut by a watchdog.
        cut = _Cut()
        within = self.timeout * 2 + self.answer  # to connect, to send, and for the answer
        watchdog = threading.Timer(within, cut)
        watchdog.daemon = True
        # This machine's loopback is posted to straight, as Ollama is called: through a proxy
        # in the environment it was the proxy's own loopback, and no alert arrived.
        straight = on_this_machine(self.url)
        if not straight and (problem := proxy_problem()) is not None:
            raise OSError(f"{problem}; the alert to {self.where} goes through it")
        try:
            timeout = httpx.Timeout(self.timeout, read=self.answer)
            # The certificates SSL_CERT_FILE names, straight or not (trust_env off drops them).
            verify = client_tls()
            with httpx.Client(timeout=timeout, trust_env=not straight, verify=verify) as client:
                request = client.build_request(
                    "POST", self.url, json=alert.payload(), extensions={"trace": cut.trace}
                )
                watchdog.start()
                response = client.send(request, stream=True)
                status, reason = response.status_code, response.reason_phrase
                moved = response.headers.get("location", "")
                response.close()
        except httpx.HTTPError as exc:
            if cut.sent:  # (a timeout, the watchdog, or the connection closed unanswered)
                raise Unanswered(
                    f"{self.where} was sent the alert and did not answer "
                    + (f"within {within:g} s" if cut.done else f"({type(exc).__name__})")
                ) from None
            if cut.done:
                raise OSError(f"{self.where} did not answer within {within:g} s") from None
            raise OSError(f"{type(exc).__name__} posting to {self.where}") from None
        finally:
            watchdog.cancel()
        answered = f"{self.where} answered {status} {reason}"
        if 300 <= status < 400:  # never followed: the alert goes where the setting says only
            try:  # the server's words: anything at all
                elsewhere = shown(str(httpx.URL(self.url).join(moved)), path=False)
            except Exception:
                moved = ""
            if not moved:
                elsewhere = "an address it does not say (no readable Location)"
            raise Undeliverable(
                f"{answered}, redirecting to {elsewhere}: an alert is posted only to "
                "OMETER_ALERT_WEBHOOK_URL, never on; set it to the address the redirect names"
            )
        if 400 <= status < 500 and status not in _FOR_NOW:
            raise Undeliverable(
                f"{answered}: no later try changes that; check OMETER_ALERT_WEBHOOK_URL "
                "(its path is the webhook's secret)"
            )
        if not 200 <= status < 300:
            raise OSError(answered)
        return f"sent to {self.where}"


_FOR_NOW = frozenset({408, 425, 429})
"""The 4xx answers that mean "later" (a timeout, too early, too many): tried again."""


SMTPS_PORT = 465
"""The port of SMTP over implicit TLS (RFC 8314): TLS from the first byte, no STARTTLS."""


class EmailChannel:
    name = "email"
    check = "the SMTP server OMETER_SMTP_HOST and OMETER_SMTP_PORT name"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        sender: str,
        recipients: Sequence[str],
        user: str | None = None,
        password: str | None = None,
        timeout: float = CHANNEL_TIMEOUT,
        answer: float = ANSWER_TIMEOUT,
        implicit_tls: bool | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.answer = answer
        self.sender, self.recipients = _dns_domain(sender), [_dns_domain(r) for r in recipients]
        self.user, self.password = user, password
        self.timeout = timeout
        # On 465 the server waits for a TLS hello: spoken in clear, each attempt timed out.
        self.implicit_tls = port == SMTPS_PORT if implicit_tls is None else implicit_tls
        self._have: dict[int, set[str]] = {}
        """Per alert, the addresses that have it, while some the server deferred do not, and
        the process tries it still (:meth:`forget`): an alert given up with a recipient still
        deferred was kept for the life of the process, one more each such alert."""

    def forget(self, alert_id: int) -> None:
        self._have.pop(alert_id, None)

    def send(self, alert: Alert) -> str:
        addresses = [parseaddr(r)[1] for r in self.recipients]
        said = alert.deliveries.get(self.name)
        have = self._have.get(alert.id, set()) | _sent_before(said, addresses)
        if owed := [a for a in addresses if a not in have]:
            message = EmailMessage()
            message["Subject"] = alert.subject
            message["From"] = self.sender
            message["To"] = ", ".join(self.recipients)
            message.set_content(alert.text() + "\n")
            tls = ssl.create_default_context() if self.implicit_tls else None
            smtp = Session(self.timeout, tls, answer=self.answer)
            # A whole session (about six exchanges) within three reads' timeout, and the
            # answer to the message within its own.
            watchdog = threading.Timer(self.timeout * 3 + self.answer, smtp.cut)
            watchdog.daemon = True
            watchdog.start()
            try:
                refused, unsendable = self._send(smtp, message, owed)
            except smtplib.SMTPResponseException as exc:
                raise self._kept(alert, addresses, have, self._for_good(exc)) from None
            except smtplib.SMTPRecipientsRefused as exc:  # each for good: 4xx return above
                raise Undeliverable(
                    f"{self.host} refused every recipient: {_answers(exc.recipients)}; "
                    "check OMETER_ALERT_EMAIL_TO"
                ) from None
            except (OSError, smtplib.SMTPException) as exc:  # no server, a timeout, cut off
                if smtp.sent:  # (after its final "."): the server may have it all the same
                    said = str(exc)[:ANSWER]  # smtplib's words: a read timed out, or cut
                    exc = Unanswered(f"{self.host} was sent the alert and did not answer ({said})")
                raise self._kept(alert, addresses, have, exc) from None
            finally:
                watchdog.cancel()
                smtp.close()
            have |= {a for a in owed if a not in refused and a not in unsendable}
        else:
            refused, unsendable = {}, []
        took = ", ".join(a for a in addresses if a in have)
        # A 4xx is "try later" (a full mailbox): tried again, for those alone. Not the others:
        # they have it, and would get it again.
        if deferred := {a: answer for a, answer in refused.items() if 400 <= answer[0] < 500}:
            self._have[alert.id] = have
            raise Deferred(f"{SENT}{took or 'none'}{DEFERRED}{_answers(deferred)}")
        self._have.pop(alert.id, None)
        outcome = f"sent to {took}"
        if refused:
            said = _answers(refused)
            log.warning("alert email to %s refused by %s: %s", ", ".join(refused), self.host, said)
            outcome += f"; refused by the server: {said}"
        if unsendable:  # what another try would meet again: said once, not tried again
            why = _no_smtputf8(self.host, unsendable)
            log.warning("alert email not sent to %s", why)
            outcome += f"; not sent to {why}"
        return outcome

    def _kept(self, alert: Alert, addresses: list[str], have: set[str], exc: Exception) -> Any:
        """``exc``, a try that failed after an earlier one left some recipients deferred, with
        the record of who has the alert (:func:`_sent_before`): its own text alone took the
        record's place, and the next run mailed them all again."""
        if not have or isinstance(exc, Undeliverable):  # none yet; or never tried again
            return exc
        self._have[alert.id] = have
        took = ", ".join(a for a in addresses if a in have)
        kind = _Unsure if isinstance(exc, Unanswered) else Deferred
        return kind(f"{SENT}{took}{UNSENT}{str(exc)[:ANSWER]}")

    def _for_good(self, exc: smtplib.SMTPResponseException) -> OSError:
        """``exc`` as an :class:`Undeliverable` when the server's 5xx says no try changes it."""
        if not 500 <= exc.smtp_code < 600:
            return exc
        said = f"{exc.smtp_code} {_text(exc.smtp_error)}"
        if isinstance(exc, smtplib.SMTPSenderRefused):
            what = f"refused the sender {exc.sender} ({said}); check OMETER_SMTP_FROM"
        elif isinstance(exc, smtplib.SMTPAuthenticationError):
            what = f"refused the login ({said}); check OMETER_SMTP_USER and OMETER_SMTP_PASSWORD"
        else:
            what = f"refused the alert ({said}); check the server's log for why"
        return Undeliverable(f"{self.host} {what}")

    def _send(
        self, smtp: smtplib.SMTP, message: EmailMessage, to: list[str]
    ) -> tuple[dict[str, tuple[int, bytes]], list[str]]:
        """Send ``message``; the recipients the server refused (all refused raises, unless
        some only for now), and those it cannot take from this server (no SMTPUTF8)."""
        smtp.connect(self.host, self.port)
        smtp.ehlo_or_helo_if_needed()  # EHLO, else HELO (an RFC 821 server): never neither
        if self.implicit_tls:
            pass  # TLS from the first byte: the login below goes inside it
        elif smtp.has_extn("starttls"):
            smtp.starttls(context=ssl.create_default_context())
            smtp.ehlo()
        elif self.user:  # no offer (or one stripped on the way): the password stays here
            raise Undeliverable(
                f"{self.host} does not offer STARTTLS: the OMETER_SMTP_USER login is not "
                "sent in clear (use a server or port that offers STARTTLS, or no user)"
            )
        if self.user:
            smtp.login(self.user, self.password or "")
        # An address with a non-ASCII local part (jürgen@) needs the server's SMTPUTF8; smtplib
        # refused the whole message for one such recipient where it is not offered, each try.
        utf8 = smtp.has_extn("smtputf8")
        if not utf8 and not (sender := parseaddr(self.sender)[1]).isascii():
            raise Undeliverable(
                f"not sent from {_no_smtputf8(self.host, [sender], 'OMETER_SMTP_FROM')}"
            )
        unsendable = [] if utf8 else [a for a in to if not a.isascii()]
        sendable = [a for a in to if a not in unsendable]
        if not sendable:
            raise Undeliverable(f"not sent to {_no_smtputf8(self.host, unsendable)}")
        if unsendable:  # nor named where they get nothing, in a header they would garble
            del message["To"]
            message["To"] = ", ".join(r for r in self.recipients if parseaddr(r)[1].isascii())
        try:
            refused = smtp.send_message(message, to_addrs=sendable)
        except smtplib.SMTPRecipientsRefused as exc:  # every one: deferred, or failed
            if not any(400 <= code < 500 for code, _ in exc.recipients.values()):
                raise
            return exc.recipients, unsendable
        # The server has the message since it took its DATA: a QUIT answered with anything
        # but 221 (smtplib's ``with`` raises then) is no failure, or the alert is mailed again.
        with contextlib.suppress(smtplib.SMTPException, OSError):
            smtp.quit()
        return refused, unsendable


def _no_smtputf8(
    host: str, addresses: Sequence[str], setting: str = "OMETER_ALERT_EMAIL_TO"
) -> str:
    return (
        f"{', '.join(addresses)}: {host} does not offer SMTPUTF8, which an address with "
        f"letters beyond ASCII before the @ needs; give an ASCII address in {setting}, or use "
        "a server that offers SMTPUTF8"
    )


SENT, DEFERRED = "sent to ", "; deferred by the server (tried again): "
UNSENT = "; the others not sent (tried again): "
"""How an attempt that left recipients deferred is on record (``failed: sent to A; deferred
...``), or a later one that failed before them (``failed: sent to A; the others ...``): the
next run reads from it who has the alert already."""


def _sent_before(outcome: str | None, addresses: Sequence[str]) -> set[str]:
    """Those of ``addresses`` an earlier attempt on record sent the alert to, while it left
    others deferred (none when it did not)."""
    said = (outcome or "").removeprefix("failed: ")
    ends = [said.find(mark) for mark in (DEFERRED, UNSENT) if mark in said]
    if not said.startswith(SENT) or not ends:
        return set()
    return _joined(said[len(SENT) : min(ends)], addresses)


def _joined(listed: str, addresses: Sequence[str]) -> set[str]:
    """The ``addresses`` that ``listed``, their join with ", ", names in every reading of it.

    Not its pieces between commas: a quoted address holds ", " (``"x, c@y, z"@y``), and
    c@y, deferred, was read as having the alert. A list these addresses do not make (one
    who had it since taken out of the setting) names none: mailed again rather than never."""
    starts = [0] + [at + 2 for at in range(len(listed)) if listed.startswith(", ", at)]
    readings: dict[int, set[str] | None] = {len(listed) + 2: set()}  # past the end: none
    for at in reversed(starts):
        common: set[str] | None = None
        for address in set(addresses):
            end = at + len(address)
            whole = end == len(listed) or listed.startswith(", ", end)
            if not whole or not listed.startswith(address, at):
                continue
            if (rest := readings.get(end + 2)) is not None:
                common = {address} | rest if common is None else common & ({address} | rest)
        readings[at] = common
    return readings[0] or set()


def _answers(refused: dict[str, tuple[int, bytes]]) -> str:
    return ", ".join(f"{r} ({code} {_text(text)[:ANSWER]})" for r, (code, text) in refused.items())


def _text(said: bytes | str) -> str:
    return said.decode(errors="replace") if isinstance(said, bytes) else said


def _dns_domain(address: str) -> str:
    """``address`` with its domain as DNS writes it: ``it@müller.de`` as ``it@xn--mller-kva.de``,
    which any server takes (smtplib asks for SMTPUTF8 for the first, which most do not offer,
    and every delivery failed). A name that IDNA cannot write is left as it is."""
    import idna  # httpx's reading of such names, as the URL settings use it

    local, at, domain = parseaddr(address)[1].rpartition("@")
    if not at or domain.isascii():
        return address
    try:
        written = idna.encode(domain, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        return address
    return address.replace(f"{local}@{domain}", f"{local}@{written}")
