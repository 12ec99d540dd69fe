"""Who the client is: AUTH, trusted networks, and the sender identity checks that follow
from them (the application side of issue 5; the rules are pure, in ``policy/``).

:class:`Access` is what one listener's sessions share (its ``AuthConfig``, the stores,
the per-IP failure budget); :class:`Authenticator` is one session's state: the SASL
exchange under way, failures on this connection, the authenticated user.

AUTH, in order (RFC 4954 4 and 6):

* a mechanism kittiwake lacks: ``504 5.5.4``; PLAIN/LOGIN with
  ``plainAuthEnabled false``: ``534 5.7.9`` (too weak for this listener's policy);
* clear text where ``requireSSL`` (kittiwake's default): ``538 5.7.11``;
* an address that used up its failure budget: ``454 4.7.0``, for every AUTH;
* then the exchange (:mod:`kittiwake.auth.sasl`); the password is checked in a thread
  (argon2 takes tens of milliseconds) against a dummy hash when the user is unknown,
  so that timing tells nothing; an imported James hash is replaced by argon2id on
  success; an authorization identity other than the user needs ``administratorIds``;
* the user store failing: ``454 4.7.0`` (temporary);
* success: ``235 2.7.0``; failure: ``535 5.7.8``, logged with address and user name
  (never the password), counted for the address (shared by every worker through the
  :class:`~kittiwake.storage.base.AuthFailureStore`) and for the connection, whose
  third failure is ``421 4.7.0`` and the end.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from kittiwake.auth.passwords import hash_password, needs_rehash, verify_password
from kittiwake.auth.sasl import (
    MECHANISMS,
    Challenge,
    Credentials,
    Failure,
    Mechanism,
    Step,
    authorize,
    challenge_reply,
    new_mechanism,
)
from kittiwake.config.model import AuthAnnounce, AuthConfig, UsersRepositoryConfig
from kittiwake.hooks.api import SessionInfo
from kittiwake.policy.identity import IdentityMode, SenderFacts, sender_reply
from kittiwake.policy.names import InvalidName, canonical_address, canonical_domain
from kittiwake.policy.networks import client_is_trusted
from kittiwake.policy.relay import SessionTrust
from kittiwake.policy.rewrite import EMPTY_TABLE, RewriteTable, senders_for
from kittiwake.protocol import Auth, AuthResponse, Reply
from kittiwake.protocol import replies as R
from kittiwake.storage.base import AuthFailureStore, DomainStore, RewriteStore, UserStore
from kittiwake.storage.errors import STORE_ERRORS

from .recipients import domain_is_local

__all__ = ["Access", "Authenticator"]

log = logging.getLogger("kittiwake.auth")


@functools.cache
def _dummy_hash() -> str:
    """Verified when the user is unknown, so that an unknown name costs what a known
    one does (made once, on first use: hashing takes tens of milliseconds)."""
    return hash_password("kittiwake: no such user")


def _verify(stored: str | None, password: str) -> bool:
    """In a thread: argon2 (and the dummy hash's first making) take milliseconds."""
    return verify_password(stored or _dummy_hash(), password)


AuthHook = Callable[[str, str | None, bool], Awaitable[Reply | None]]


@dataclass(frozen=True, slots=True)
class Access:
    """What one listener's sessions share for AUTH and relay decisions."""

    config: AuthConfig
    domains: DomainStore
    users: UserStore
    rewrites: RewriteStore | None = None
    repository: UsersRepositoryConfig = field(default_factory=UsersRepositoryConfig)
    #: appended to a login name without "@" when virtual hosting is off
    default_domain: str = "localhost"
    #: the per-IP budget (None: no budget, e.g. in unit tests)
    failures: AuthFailureStore | None = None

    def table(self) -> RewriteTable:
        return self.rewrites.rewrite_table() if self.rewrites is not None else EMPTY_TABLE


class Authenticator:
    """One session's AUTH state and the trust that follows from it."""

    def __init__(self, access: Access, info: SessionInfo) -> None:
        self.access = access
        self.info = info
        #: the client address is in ``authorizedAddresses``
        self.trusted = client_is_trusted(info.client_ip, access.config.trusted_networks)
        info.trusted_network = self.trusted  # hooks see it (SessionInfo.relaying_allowed)
        self._mechanism: Mechanism | None = None
        self._failures = 0

    # ---- what the session asks --------------------------------------------------

    @property
    def user(self) -> str | None:
        return self.info.authenticated_user

    @property
    def relay_allowed(self) -> bool:
        """Authenticated, or from a trusted address (James ``isRelayingAllowed``)."""
        return self.user is not None or self.trusted

    def _mechanisms_offered(self) -> bool:
        cfg = self.access.config
        return cfg.command and cfg.plain_enabled and (self.info.tls or not cfg.require_ssl)

    def announced(self) -> bool:
        """AUTH is in the EHLO reply to this client now (James ``isAuthAnnounced``)."""
        announce = self.access.config.announce
        if announce is AuthAnnounce.NEVER or not self._mechanisms_offered():
            return False
        return announce is AuthAnnounce.ALWAYS or not self.trusted

    def ehlo_lines(self) -> list[str]:
        """EHLO keyword lines: ``AUTH PLAIN LOGIN`` when announced (not once logged in)."""
        if self.user is not None or not self.announced():
            return []
        return ["AUTH " + " ".join(MECHANISMS)]

    def trust(self) -> SessionTrust:
        return SessionTrust(relay_allowed=self.relay_allowed, auth_announced=self.announced())

    def reset(self) -> None:
        """STARTTLS's handshake: an exchange under way is forgotten (RFC 3207 4.2)."""
        self._mechanism = None

    # ---- sender identity (verifyIdentity) ---------------------------------------

    def _local_domain(self, address: str, table: RewriteTable) -> bool:
        domain = address.rpartition("@")[2]
        try:
            return domain_is_local(canonical_domain(domain), self.access.domains, table)
        except InvalidName:
            return False

    def may_send_as(self, address: str, table: RewriteTable | None = None) -> bool:
        """The authenticated user may use ``address`` (a local address of theirs)."""
        user = self.user
        if user is None:
            return False
        table = self.access.table() if table is None else table
        try:
            key = canonical_address(address)
        except InvalidName:
            return False
        return self._local_domain(key, table) and key in senders_for(user, table)

    def sender_refusal(self, sender: str) -> Reply | None:
        """``verifyIdentity`` for the envelope sender (at MAIL and at each RCPT)."""
        mode = IdentityMode(self.access.config.verify_identity)
        if mode is IdentityMode.DISABLED or not sender:
            return None
        table = self.access.table()
        facts = SenderFacts(
            sender=sender,
            domain_is_local=self._local_domain(sender, table),
            authenticated_user=self.user,
            trusted=self.trusted,
            owned=self.may_send_as(sender, table),
            helo=self.info.helo,
        )
        return sender_reply(mode, facts)

    # ---- the AUTH command --------------------------------------------------------

    async def start(self, event: Auth, hook: AuthHook) -> Reply:
        """The AUTH command (the core checked sequence and syntax)."""
        cfg = self.access.config
        self._mechanism = None
        mechanism = new_mechanism(event.mechanism)
        if mechanism is None:
            return R.AUTH_UNKNOWN_MECHANISM
        if not cfg.plain_enabled:
            return R.AUTH_TOO_WEAK
        if cfg.require_ssl and not self.info.tls:
            return R.AUTH_ENCRYPTION_REQUIRED
        budget = self.access.failures
        if budget is not None and cfg.ip_failure_limit:
            blocked = await asyncio.to_thread(budget.blocked, self.info.client_ip)
            if blocked:
                log.warning(
                    "%s: AUTH refused for [%s]: too many failures from this address",
                    self.info.session_id,
                    self.info.client_ip,
                )
                return R.AUTH_BLOCKED
        self._mechanism = mechanism
        return await self._step(mechanism.start(event.initial_response), hook)

    async def respond(self, event: AuthResponse, hook: AuthHook) -> Reply:
        """One line of the exchange."""
        mechanism = self._mechanism
        if mechanism is None:  # pragma: no cover - the core reads responses only after 334
            return R.AUTH_BAD_RESPONSE
        return await self._step(mechanism.respond(event.line), hook)

    async def _step(self, step: Step, hook: AuthHook) -> Reply:
        if isinstance(step, Challenge):
            return challenge_reply(step)
        mechanism = self._mechanism
        assert mechanism is not None
        self._mechanism = None
        if isinstance(step, Failure):
            return step.reply
        assert isinstance(step, Credentials)
        try:
            identity = await self._check(step)
        except STORE_ERRORS:
            log.exception("%s: AUTH: the user store failed", self.info.session_id)
            return R.AUTH_TEMPORARY  # 454 4.7.0: try again later (RFC 4954 6)
        refusal = await hook(mechanism.name, identity or step.authcid, identity is not None)
        if identity is not None and refusal is None:
            self.info.authenticated_user = identity
            log.info(
                "%s: AUTH %s as %s from [%s]",
                self.info.session_id,
                mechanism.name,
                identity,
                self.info.client_ip,
            )
            return R.AUTH_OK
        if identity is not None and refusal is not None:
            return refusal  # a hook refused a success: the client is not authenticated
        return await self._failed(mechanism.name, step.authcid, refusal)

    def _login_name(self, name: str) -> str | None:
        if "@" not in name and not self.access.repository.virtual_hosting:
            name = f"{name}@{self.access.default_domain}"
        try:
            return canonical_address(name)
        except InvalidName:
            return None

    async def _check(self, creds: Credentials) -> str | None:
        """The identity the credentials give, None if they are wrong."""
        users = self.access.users
        authcid = self._login_name(creds.authcid)
        stored = users.get_password_hash(authcid) if authcid is not None else None
        ok = await asyncio.to_thread(_verify, stored, creds.password)
        if not ok or stored is None or authcid is None:
            return None
        if needs_rehash(stored):
            # As James's DefaultUser does on login: the hash moves to today's algorithm.
            # A failure here costs nothing but the upgrade: the login stands.
            try:
                new_hash = await asyncio.to_thread(hash_password, creds.password)
                await asyncio.to_thread(users.set_password_hash, authcid, new_hash)
            except STORE_ERRORS as exc:
                log.warning("%s: cannot re-hash %s: %s", self.info.session_id, authcid, exc)
            else:
                log.info(
                    "%s: password hash of %s upgraded to argon2id", self.info.session_id, authcid
                )
        authzid = self._login_name(creds.authzid) if creds.authzid else ""
        if authzid is None:
            return None
        return authorize(authcid, authzid, self.access.repository.administrators)

    async def _failed(self, mechanism: str, name: str, refusal: Reply | None) -> Reply:
        info = self.info
        self._failures += 1
        # The user name as given (quoted, control characters escaped), never the password.
        log.warning(
            "%s: AUTH %s failed for user=%r from [%s] (%d on this connection)",
            info.session_id,
            mechanism,
            name,
            info.client_ip,
            self._failures,
        )
        cfg = self.access.config
        budget = self.access.failures
        if budget is not None and cfg.ip_failure_limit:
            blocked = await asyncio.to_thread(
                budget.record_failure,
                info.client_ip,
                limit=cfg.ip_failure_limit,
                window=cfg.ip_failure_window,
            )
            if blocked:
                log.warning(
                    "[%s] blocked from AUTH for %.0f s: %d failures",
                    info.client_ip,
                    cfg.ip_failure_window,
                    cfg.ip_failure_limit,
                )
        if self._failures >= cfg.connection_failure_limit:
            return R.AUTH_TOO_MANY_FAILURES  # 421: the core closes the connection
        return refusal or R.AUTH_FAILED
