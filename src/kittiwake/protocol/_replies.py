"""Replies are values that carry their wire form; this module is the one catalogue.

Every reply after the greeting and the EHLO/LHLO answer carries an RFC 3463 enhanced
status code (RFC 2034 section 3). Texts are generic: no configuration or check names
(a refusal tells the client what happened, not how kittiwake decided it).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Reply"]


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply.

    Attributes:
        code: the three-digit reply code (RFC 5321 section 4.2).
        status: the RFC 3463 enhanced status code ("5.7.1"), or "" where none is
            sent (greeting, EHLO/HELO/LHLO answer).
        text: the human-readable text; a "\\n" makes a multi-line reply.
    """

    code: int
    status: str
    text: str

    @property
    def positive(self) -> bool:
        """2xx and 3xx: the command was accepted (the state machine moves on)."""
        return self.code < 400

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    def to_bytes(self) -> bytes:
        """The wire form, each line ending in CRLF (RFC 5321 section 4.2.1)."""
        prefix = f"{self.code} {self.status} " if self.status else f"{self.code} "
        if "\n" not in self.text:
            return (prefix + self.text + "\r\n").encode("utf-8")
        lines = self.text.split("\n")
        cont = prefix.replace(" ", "-", 1)
        out = [cont + line for line in lines[:-1]]
        out.append(prefix + lines[-1])
        return ("\r\n".join(out) + "\r\n").encode("utf-8")

    def with_text(self, text: str) -> Reply:
        return Reply(self.code, self.status, text)

    def __str__(self) -> str:
        return self.to_bytes().decode("utf-8", "replace").rstrip("\r\n")


# -- Positive -------------------------------------------------------------------------
OK = Reply(250, "2.0.0", "Ok")
SENDER_OK = Reply(250, "2.1.0", "Sender ok")
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient ok")
START_DATA = Reply(354, "", "End data with <CR><LF>.<CR><LF>")
BYE = Reply(221, "2.0.0", "Bye")
#: LMTP, after the final dot: one per recipient, named first (RFC 2033 4.2)
DELIVERED = Reply(250, "2.0.0", "Ok: delivered")
READY_TLS = Reply(220, "2.0.0", "Ready to start TLS")  # RFC 3207 4
VRFY_CANNOT = Reply(252, "2.5.2", "Cannot VRFY user, but will accept message and attempt delivery")
HELP = Reply(
    214,
    "2.0.0",
    "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP\nSee RFC 5321",
)

# -- Temporary failures -----------------------------------------------------------------
TIMEOUT = Reply(421, "4.4.2", "Timeout exceeded, closing connection")
SHUTTING_DOWN = Reply(421, "4.3.2", "Server shutting down, try again later")
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections, try again later")
TOO_MANY_CONNECTIONS_FROM_IP = Reply(
    421, "4.7.0", "Too many connections from your address, try again later"
)
LOCAL_ERROR = Reply(451, "4.3.0", "Local error in processing, try again later")
DENYSOFT = Reply(451, "4.7.1", "Temporary problem, try again later")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
INSUFFICIENT_STORAGE = Reply(452, "4.3.1", "Insufficient system storage")
MAILBOX_FULL = Reply(452, "4.2.2", "Mailbox or disk full, try again later")  # LMTP, per rcpt
MAILBOX_UNAVAILABLE = Reply(451, "4.3.0", "Mailbox temporarily unavailable, try again later")
TLS_NOT_AVAILABLE = Reply(454, "4.7.0", "TLS not available due to temporary reason")

# -- Permanent failures: syntax and sequence ---------------------------------------------
UNRECOGNIZED = Reply(500, "5.5.1", "Command unrecognized")
USE_LHLO = Reply(500, "5.5.1", "Command unrecognized: this is LMTP, use LHLO")
LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long")
EMPTY_LINE = Reply(500, "5.5.2", "Empty command line")
BAD_ENCODING = Reply(500, "5.5.2", "Command line is not valid UTF-8 text")
CONTROL_CHARACTERS = Reply(500, "5.5.2", "Control characters not allowed in a command line")
BARE_LINE_ENDING = Reply(
    500, "5.5.2", "Bare CR or LF not allowed, lines must end with CRLF (RFC 5321 2.3.8)"
)
BARE_LINE_ENDING_DATA = Reply(
    554,
    "5.6.11",
    "Bare CR or LF in message text not allowed, lines must end with CRLF (RFC 5321 2.3.8)",
)
HELO_NEEDS_DOMAIN = Reply(501, "5.5.4", "Domain name or address literal required")
NO_ARGUMENTS = Reply(501, "5.5.4", "No arguments allowed")
ARGUMENT_REQUIRED = Reply(501, "5.5.4", "Argument required")
MAIL_SYNTAX = Reply(501, "5.5.4", "Syntax: MAIL FROM:<address>")
RCPT_SYNTAX = Reply(501, "5.5.4", "Syntax: RCPT TO:<address>")
BDAT_SYNTAX = Reply(501, "5.5.4", "Syntax: BDAT <size> [LAST]")
BAD_SENDER_SYNTAX = Reply(501, "5.1.7", "Bad sender address syntax")
BAD_RECIPIENT_SYNTAX = Reply(501, "5.1.3", "Bad recipient address syntax")
PATH_TOO_LONG = Reply(501, "5.1.3", "Path too long")
BAD_PARAMETER_VALUE = Reply(501, "5.5.4", "Bad parameter value")
NOT_IMPLEMENTED = Reply(502, "5.5.1", "Command not implemented")
NEED_HELO = Reply(503, "5.5.1", "Send HELO or EHLO first")
NEED_LHLO = Reply(503, "5.5.1", "Send LHLO first")
NESTED_MAIL = Reply(503, "5.5.1", "Sender already specified")
NEED_MAIL = Reply(503, "5.5.1", "Need MAIL before RCPT")
NEED_RCPT = Reply(503, "5.5.1", "Need RCPT before DATA")
BAD_SEQUENCE = Reply(503, "5.5.1", "Bad sequence of commands")
DATA_AFTER_BDAT = Reply(503, "5.5.1", "DATA not allowed after BDAT in one transaction")
TLS_ALREADY_ACTIVE = Reply(503, "5.5.1", "TLS already active")  # RFC 3207 4.2
STARTTLS_IN_TRANSACTION = Reply(503, "5.5.1", "STARTTLS not allowed during a mail transaction")
STARTTLS_AFTER_AUTH = Reply(503, "5.5.1", "STARTTLS not allowed after AUTH")
UNKNOWN_PARAMETER = Reply(555, "5.5.4", "Unsupported MAIL or RCPT parameter")
UTF8_NEEDS_SMTPUTF8 = Reply(553, "5.6.7", "Non-ASCII address needs the SMTPUTF8 parameter")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
MAILBOX_OVER_QUOTA = Reply(552, "5.2.2", "Mailbox full: over its size limit")  # LMTP, per rcpt

# -- Permanent failures: policy (default texts; hooks may give their own) ----------------
DENY = Reply(554, "5.7.1", "Rejected")
NO_SUCH_USER = Reply(550, "5.1.1", "No such user here")
RELAY_DENIED = Reply(550, "5.7.1", "Relaying denied")
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")  # RFC 4954 6
# Octets after STARTTLS and before the handshake (CVE-2011-0411, CVE-2024-34083 class):
# they were sent in clear text, so they are never executed; the connection is closed.
STARTTLS_INJECTION = Reply(
    554, "5.7.0", "Commands after STARTTLS and before the TLS handshake are not allowed"
)
LITERAL_NOT_RELAYED = Reply(550, "5.7.1", "Relaying to address literals denied")
ROUTING_LOOP = Reply(550, "5.4.6", "Routing loop detected for this address")  # RFC 3463
NOT_YOUR_ADDRESS = Reply(550, "5.7.1", "Sender address not owned by the authenticated user")
MISSING_FROM = Reply(550, "5.7.1", "Message has no From header, or no address in it")

# -- AUTH (RFC 4954 sections 4 and 6) ------------------------------------------------------
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
AUTH_SYNTAX = Reply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
AUTH_CANCELLED = Reply(501, "5.7.0", "Authentication cancelled")
AUTH_BAD_BASE64 = Reply(501, "5.5.2", "Cannot decode the response as base64")
AUTH_BAD_RESPONSE = Reply(501, "5.5.2", "Malformed authentication response")
AUTH_ALREADY = Reply(503, "5.5.1", "Already authenticated")
AUTH_IN_TRANSACTION = Reply(503, "5.5.1", "AUTH not allowed during a mail transaction")
AUTH_UNKNOWN_MECHANISM = Reply(504, "5.5.4", "Unrecognized authentication type")
AUTH_TOO_WEAK = Reply(534, "5.7.9", "Authentication mechanism is too weak")
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
AUTH_ENCRYPTION_REQUIRED = Reply(
    538, "5.7.11", "Encryption required for requested authentication mechanism"
)
AUTH_LINE_TOO_LONG = Reply(500, "5.5.6", "Authentication exchange line is too long")
AUTH_TEMPORARY = Reply(454, "4.7.0", "Temporary authentication failure")
AUTH_BLOCKED = Reply(454, "4.7.0", "Too many failed authentications from your address, try later")
AUTH_TOO_MANY_FAILURES = Reply(421, "4.7.0", "Too many failed authentication attempts")
