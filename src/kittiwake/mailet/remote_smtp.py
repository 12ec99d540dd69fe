"""RemoteDelivery's SMTP client side (aiosmtplib): opening a connection the way the
parameters say (source address, implicit TLS, STARTTLS, certificate checks, AUTH) and
running one mail transaction on it, with the ESMTP parameters the destination offers.

TLS (kittiwake's choices, see docs/mailets.md):

* default: STARTTLS whenever offered, the certificate not checked (opportunistic, RFC
  7435, as Postfix's ``smtp_tls_security_level=may``); a failed handshake is retried in
  clear text on a new connection. ``startTLS=false``: never STARTTLS.
* ``sslEnable``: TLS from the first byte (RFC 8314 implicit TLS, port 465 by default);
  no clear-text fallback.
* ``verifyServerIdentity``: TLS is required (STARTTLS, or ``sslEnable``) and the
  certificate must chain to a trusted CA and name the host (the MX or gateway name, as
  RFC 6125 and Postfix's ``verify`` level); a failure, or no STARTTLS, defers with
  ``4.7.5``. A check a man in the middle could skip by hiding STARTTLS would be none.

ESMTP parameters on MAIL:

* ``SIZE=n`` when the server offers SIZE (RFC 1870); a message larger than the
  server's announced limit fails at once with ``5.3.4``, without sending it.
* ``SMTPUTF8`` when the envelope or the header holds UTF-8 and the server offers it
  (RFC 6531 3.4); a non-ASCII envelope address to a server without SMTPUTF8 fails at once
  with ``5.6.7``. A UTF-8 header alone is sent as is (as Postfix does).
* ``BODY=8BITMIME`` when the message has 8-bit bytes and the server offers 8BITMIME
  (RFC 6152). To a server without it such a message is sent unchanged (as Exim and
  sendmail do; no 7-bit conversion).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import ssl
import time
from dataclasses import dataclass, field

import aiosmtplib
from aiosmtplib.protocol import normalize_message_line_endings

from kittiwake.mailet.api import Mail

__all__ = ["ClientSettings", "Result", "enhanced", "open_connection", "transaction"]

log = logging.getLogger("kittiwake.remote")
mail_log = logging.getLogger("kittiwake.mail")

_STATUS = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")


@dataclass
class Result:
    """What one attempt did to each recipient."""

    delivered: list[str] = field(default_factory=list)
    #: recipient -> (reply text, permanent)
    failed: dict[str, tuple[str, bool]] = field(default_factory=dict)
    #: recipient -> the host that answered for it (the DSN's Remote-MTA)
    remote: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ClientSettings:
    """How RemoteDelivery talks to other servers (from its parameters)."""

    helo: str
    timeout: float
    connect_timeout: float
    #: STARTTLS when offered (``startTLS``)
    start_tls: bool = True
    #: implicit TLS (``sslEnable``)
    implicit_tls: bool = False
    #: TLS required and the certificate checked (``verifyServerIdentity``)
    verify: bool = False
    #: CA certificates for ``verify`` (PEM file; None: the system's)
    trusted: str | None = None
    #: source address of outgoing connections (``bind``)
    bind: str | None = None
    send_partial: bool = False
    tls_context: ssl.SSLContext = field(default_factory=ssl.create_default_context)

    @staticmethod
    def make_tls_context(verify: bool, trusted: str | None) -> ssl.SSLContext:
        """Raises: OSError, ssl.SSLError: ``trusted`` cannot be read."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        if verify:
            if trusted:
                ctx.load_verify_locations(cafile=trusted)
        else:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


def enhanced(code: int, text: str) -> str:
    """A reply as ``"550 5.1.1 text"``: with an enhanced status (RFC 3463) always."""
    m = _STATUS.match(text.strip())
    if m and m.group(1) == str(code)[0]:
        return f"{code} {text.strip()}"
    klass = "5" if code >= 500 else "4"
    return f"{code} {klass}.0.0 {text.strip()}"


async def _socket(address: str, port: int, bind: str | None, timeout: float) -> socket.socket:
    """A connected TCP socket, from ``bind`` when given.

    Raises:
        OSError, TimeoutError: the connection failed.
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        if bind:
            sock.bind((bind, 0))
        async with asyncio.timeout(timeout):
            await asyncio.get_running_loop().sock_connect(sock, (address, port))
    except BaseException:
        sock.close()
        raise
    return sock


async def open_connection(
    settings: ClientSettings,
    name: str,
    address: str,
    port: int,
    username: str | None = None,
    password: str | None = None,
) -> aiosmtplib.SMTP | str:
    """A connection that has said EHLO (and STARTTLS, AUTH when due); a string: why
    this host cannot be used now (a temporary failure, try the next host)."""
    where = f"{name}[{address}]:{port}"
    modes: list[bool | None]
    if settings.implicit_tls:
        modes = [False]
    elif settings.verify:
        modes = [True]  # required
    elif settings.start_tls:
        modes = [None, False]  # when offered; in clear if the handshake fails
    else:
        modes = [False]
    for mode in modes:
        try:
            sock = await _socket(address, port, settings.bind, settings.connect_timeout)
        except TimeoutError:
            return f"4.4.1 connection to {where} timed out"
        except OSError as exc:
            source = f" from {settings.bind}" if settings.bind else ""
            # the system's words for errno ("Connection refused"): asyncio's
            # sock_connect puts "Connect call failed (ADDRESS)" in strerror
            why = os.strerror(exc.errno) if exc.errno else str(exc)
            return f"4.4.1 connection to {where}{source} failed: {why}"
        smtp = aiosmtplib.SMTP(
            hostname=name,  # the name the certificate must show (server_hostname)
            sock=sock,
            local_hostname=settings.helo,
            timeout=settings.timeout,
            use_tls=settings.implicit_tls,
            start_tls=mode,
            validate_certs=settings.verify,
            tls_context=settings.tls_context,
            username=username,
            password=password if username else None,
        )
        try:
            await smtp.connect(timeout=settings.connect_timeout)
            if smtp.is_ehlo_or_helo_needed:  # after STARTTLS: EHLO again (RFC 3207 4.2)
                try:
                    await smtp.ehlo()
                except aiosmtplib.SMTPHeloError:
                    await smtp.helo()
            return smtp
        except asyncio.CancelledError:
            smtp.close()
            sock.close()
            raise
        except aiosmtplib.SMTPResponseException as exc:
            smtp.close()
            sock.close()  # harmless if the transport closed it already
            # a 4xx/5xx greeting, EHLO or AUTH: this host will not take it now
            return enhanced(exc.code, exc.message)
        except (aiosmtplib.SMTPException, OSError) as exc:
            smtp.close()
            sock.close()
            tls_error = isinstance(exc, ssl.SSLError) or "tls" in str(exc).lower()
            cause = exc.__cause__ if exc.__cause__ is not None else exc
            if isinstance(cause, ssl.SSLCertVerificationError) or (
                settings.verify and isinstance(cause, ssl.SSLError)
            ):
                return f"4.7.5 TLS certificate of {where} not verified: {cause}"
            if settings.verify and "starttls" in str(exc).lower():
                return f"4.7.4 {where} does not offer STARTTLS (verifyServerIdentity)"
            if mode is None and tls_error:
                log.info("STARTTLS with %s failed (%s); in clear", where, exc)
                continue
            return f"4.4.1 connection to {where} failed: {exc}"
    return f"4.7.5 TLS with {where} failed"


def _needs_utf8(address: str) -> bool:
    return not address.isascii()


#: a mailbox with nothing to quote: no space, angle bracket, quote, backslash or other
#: specials in the local part (a domain literal's brackets are fine)
_PLAIN_MAILBOX = re.compile(r"[^\s<>()\[\]\\,;:\"@]+@[^\s<>()\\,;:\"@]+")
#: a quoted local part (RFC 5321 4.1.2 Quoted-string), never a CR or LF in it
_QUOTED_MAILBOX = re.compile(r'"(?:[^"\\\r\n]|\\[^\r\n])*"@[^\s<>()\\,;:"@]+')


def _path(address: str) -> bytes:
    """The RFC 5321 4.1.2 path of ``address`` (``<>`` for the null sender).

    Raises:
        ValueError: not a mailbox that can go on a command line as it is (a space, a
            CR or LF, an angle bracket...): sent, it could add a parameter or a command.
    """
    if not address:
        return b"<>"
    if _PLAIN_MAILBOX.fullmatch(address) or _QUOTED_MAILBOX.fullmatch(address):
        return b"<" + address.encode("utf-8") + b">"
    raise ValueError(f"{address!r} cannot be sent as an SMTP path")


async def _mail_from(smtp: aiosmtplib.SMTP, sender: str, path: bytes, options: list[str]) -> None:
    """MAIL, as ``SMTP.mail`` but with a path made here (``SMTP.mail`` parses every
    address with ``email.utils``: a sixth of the client's work per message)."""
    args = [option.encode("ascii") for option in options]
    response = await smtp.execute_command(b"MAIL", b"FROM:" + path, *args)
    if response.code != 250:
        raise aiosmtplib.SMTPSenderRefused(response.code, response.message, sender)


async def _rcpt_to(smtp: aiosmtplib.SMTP, recipient: str, path: bytes) -> None:
    response = await smtp.execute_command(b"RCPT", b"TO:" + path)
    if response.code not in (250, 251):
        raise aiosmtplib.SMTPRecipientRefused(response.code, response.message, recipient)


def data_text(data: bytes) -> bytes:
    """The DATA text for ``data``: every line ending CRLF, dot-stuffed, ended with
    CRLF.CRLF (RFC 5321 4.5.2, 4.1.1.4), exactly as aiosmtplib's ``SMTP.data`` makes it,
    but without two regular expressions over the whole message when its lines all end in
    CRLF already (always, for mail received over SMTP: kittiwake refuses bare CR and LF).
    """
    crlf = data.count(b"\r\n")
    if data.count(b"\n") != crlf or data.count(b"\r") != crlf:
        # a bare CR or LF (a mailet's text, sendmail's): CRLF as aiosmtplib makes it
        data = normalize_message_line_endings(data)
    elif not data.endswith(b"\r\n"):
        data += b"\r\n"
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..") + b".\r\n"


async def _data(smtp: aiosmtplib.SMTP, data: bytes) -> aiosmtplib.SMTPResponse:
    """DATA, as ``SMTP.data`` but with the text made by :func:`data_text`."""
    response = await smtp.execute_command(b"DATA")
    if response.code != 354:
        raise aiosmtplib.SMTPDataError(response.code, response.message)
    protocol = smtp.protocol
    if protocol is None:
        raise aiosmtplib.SMTPServerDisconnected("Connection lost")
    try:
        # read_response marks a reply as expected before it yields to the loop, so no
        # reply can come in between (one task owns a leased connection)
        protocol.write(data_text(data))
        response = await protocol.read_response(timeout=smtp.timeout)
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
        smtp.close()  # what SMTP.data does: the connection is out of step now
        raise
    if response.code != 250:
        raise aiosmtplib.SMTPDataError(response.code, response.message)
    return response


async def transaction(
    smtp: aiosmtplib.SMTP,
    settings: ClientSettings,
    mail: Mail,
    data: bytes,
    rcpts: list[str],
    where: str,
) -> tuple[Result | str, bool]:
    """One mail transaction on an open connection.

    Returns:
        (the outcome, the connection can carry another one); a string outcome: this
        host failed temporarily, try the next one.
    """
    result = Result()
    sender = mail.sender or ""

    def fail_all(text: str, permanent: bool) -> tuple[Result, bool]:
        for r in rcpts:
            result.failed[r] = (text, permanent)
        return result, True

    options: list[str] = []
    utf8_envelope = _needs_utf8(sender) or any(_needs_utf8(r) for r in rcpts)
    if smtp.supports_extension("smtputf8"):
        if utf8_envelope or not _header(data).isascii():
            options.append("SMTPUTF8")
    elif utf8_envelope:
        # RFC 6531 3.4: no downgrade of an address; status 5.6.7 (RFC 6531 3.5)
        return fail_all(
            f"5.6.7 {where} does not support SMTPUTF8, needed for a non-ASCII address", True
        )
    if smtp.supports_extension("size"):
        limit = smtp.esmtp_extensions.get("size", "").strip()
        if limit.isdigit() and int(limit) and len(data) > int(limit):
            # RFC 1870 6.1: a message over the announced fixed maximum is not sent
            return fail_all(
                f"5.3.4 message size {len(data)} exceeds the limit {limit} of {where}", True
            )
        options.append(f"SIZE={len(data)}")
    if not data.isascii() and smtp.supports_extension("8bitmime"):
        options.append("BODY=8BITMIME")  # RFC 6152 3
    try:
        sender_path = _path(sender)
    except ValueError:
        return fail_all(f"5.1.7 bad sender address syntax: {sender!r}", True)
    paths: dict[str, bytes] = {}
    for r in rcpts:
        try:
            paths[r] = _path(r)
        except ValueError:
            result.failed[r] = (f"5.1.3 bad destination mailbox address syntax: {r!r}", True)
    if not paths:
        return result, True
    in_data = False
    try:
        try:
            await _mail_from(smtp, sender, sender_path, options)
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code >= 500:
                return fail_all(enhanced(exc.code, exc.message), True)
            return enhanced(exc.code, exc.message), exc.code != 421
        accepted: list[str] = []
        for r, path in paths.items():
            try:
                await _rcpt_to(smtp, r, path)
                accepted.append(r)
            except aiosmtplib.SMTPResponseException as exc:
                result.failed[r] = (enhanced(exc.code, exc.message), exc.code >= 500)
                if exc.code == 421:  # the server is closing the connection
                    for other in rcpts:
                        result.failed.setdefault(other, (enhanced(exc.code, exc.message), False))
                    return result, False
        if not accepted:
            return result, True
        if result.failed and not settings.send_partial:
            # James's sendpartial=false: no DATA; the refused ones fail as they were
            # refused, the accepted ones are tried again later
            await smtp.rset()
            for r in accepted:
                result.failed[r] = ("4.5.3 other recipients were refused", False)
            return result, True
        in_data = True
        try:
            reply = await _data(smtp, data)
        except aiosmtplib.SMTPResponseException as exc:
            text = enhanced(exc.code, exc.message)
            for r in accepted:
                result.failed[r] = (text, exc.code >= 500)
            return result, exc.code != 421
        result.delivered.extend(accepted)
        if mail_log.isEnabledFor(logging.INFO):
            # Postfix's line for a relayed recipient (the spool runner's for a local one)
            delay = time.time() - mail.received_at if mail.received_at else 0.0
            text = " ".join(reply.message.split())
            for r in accepted:
                mail_log.info(
                    "%s: to=<%s>, relay=%s, delay=%.2f, dsn=2.0.0, status=sent (%d %s)",
                    mail.name,
                    r,
                    where,
                    delay,
                    reply.code,
                    text,
                )
        return result, True
    except (aiosmtplib.SMTPException, OSError) as exc:
        if not in_data and not result.failed:
            # nothing was decided here (no DATA sent): the next host may take it
            return f"4.4.2 {where}: {exc}", False
        for r in rcpts:
            if r not in result.failed and r not in result.delivered:
                result.failed[r] = (f"4.4.2 {where}: {exc}", False)
        return result, False


def _header(data: bytes) -> bytes:
    end = data.find(b"\r\n\r\n")
    if end < 0:
        end = data.find(b"\n\n")
    return data if end < 0 else data[:end]


async def close(smtp: aiosmtplib.SMTP, timeout: float = 5.0) -> None:
    """QUIT politely (RFC 5321 4.1.1.10), then close whatever happened."""
    with contextlib.suppress(Exception):
        if smtp.is_connected:
            async with asyncio.timeout(timeout):
                await smtp.quit()
    smtp.close()
