"""The mailet container: processors of matchers and mailets, compiled once at start,
run for every mail the spool hands over.

Theory of operation
-------------------
:class:`MailetDeliverer` is a :class:`~kittiwake.delivery.base.Deliverer`: the spool
runner hands it a batch of jobs in a worker thread, as it did the Maildir deliverer. For
each job it makes a :class:`~.api.Mail` (state ``root``) and runs it through the
processors (:meth:`Container.run`). A matcher that matches some recipients splits the
mail: the matched ones go through the mailet, the others go on down the processor.
A mailet may change the state (``ToProcessor``: the mail starts over in that
processor), end processing (``ghost``), or raise: then ``onMailetException`` decides
(``error`` processor by default, ``ignore``, ``propagate``); a matcher that raises is
handled by ``onMatchException`` (``error``, ``nomatch``, ``matchall``). A mail that
reaches the end of a processor is ghosted, as in James, and logged.

``LocalDelivery`` does not write at once: every local delivery of the batch is handed
to the :class:`~kittiwake.delivery.maildir.MaildirDeliverer` together at the end, so
the batch still costs one fsync per touched ``new/`` and one journal fsync, and an
unchanged message is still hard-linked from the spool file. A single-recipient mail's
spool file may start with that recipient's ``Delivered-To`` (written by the session;
:class:`~.message.Message` hides it), and is then linked too when that is the only
change. A changed message (a header added or removed, a per-recipient ``Delivered-To``)
is first written to ``DATA/mailet/`` and linked from there; two recipients with one
mailbox get one copy.

Exactly one place
-----------------
The spool entry is removed by the runner only once every envelope recipient has a final
outcome, and every outcome is durable before :meth:`MailetDeliverer.deliver` returns:
mailboxes and journal (Maildir deliverer), repositories (fsynced files). Every side
effect is idempotent, so a crash anywhere means the whole pipeline runs again for what
is left, with no duplicate: Maildir names and journal keys, repository keys and the
names of mails made by mailets (bounces: ``<queue id>-<hash>``) are functions of the
mail, and a job that may have run before is delivered in the Maildir deliverer's careful
mode. A new mail a mailet puts in the spool (a forward's remote copy) is made once
(:mod:`.enqueue`). A mail whose processing fails five times (James's
``MAXIMUM_FAILURE_COUNT``: raised out of the container, or the process died while it
was in it; counted on disk, :mod:`.failures`) is stored in the spooler's
``errorRepository`` instead of being retried for ever.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import threading
import zlib
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kittiwake._files import write_durably
from kittiwake.delivery.base import DeliveryJob, Outcome, Status, Target
from kittiwake.delivery.maildir import MaildirDeliverer
from kittiwake.delivery.quota import batch_memo as quota_batch_memo
from kittiwake.mailet.api import ERROR, GHOST, ROOT, Mail, Mailet, MessagingError
from kittiwake.mailet.config import ContainerSpec
from kittiwake.mailet.enqueue import Enqueuer, SpoolMail
from kittiwake.mailet.failures import FailureCounts
from kittiwake.mailet.loader import Step, compile_container
from kittiwake.mailet.matchers import SENT_BY_MAILET
from kittiwake.mailet.message import Message
from kittiwake.mailet.repository import RepositoryStore, deferred_sync
from kittiwake.policy.rewrite import EMPTY_TABLE, RewriteTable
from kittiwake.queue._envelope import Envelope
from kittiwake.queue.runner import Holds

__all__ = ["MAXIMUM_FAILURE_COUNT", "Container", "ContainerContext", "MailetDeliverer"]

log = logging.getLogger("kittiwake.mailet")

#: James ``JamesMailSpooler.MAXIMUM_FAILURE_COUNT``
MAXIMUM_FAILURE_COUNT = 5
#: mailet calls one mail may make before it is taken for a loop (ToProcessor cycles)
_STEP_BUDGET = 10_000
#: an RFC 3463 permanent status in an error message
_STATUS = re.compile(r"\b(5\.\d{1,3}\.\d{1,3})\b")
#: journal indexes of recipients that are not envelope recipients start here
_DERIVED_INDEX = 1 << 32


#: group key -> (message file, size, targets, recipients): one delivery job each
_Groups = dict[str, tuple[str, int, list[Target], list[str]]]


def _stable_index(address: str) -> int:
    return _DERIVED_INDEX + zlib.crc32(address.lower().encode("utf-8", "surrogateescape"))


@dataclass
class _Run:
    """One job's processing: the outcomes gathered per envelope recipient index."""

    job: DeliveryJob
    envelope: Envelope | None
    recovered: bool
    outcomes: dict[int, list[tuple[Status, str, str, str]]] = field(default_factory=dict)
    local: list[Mail] = field(default_factory=list)
    lineage: dict[str, tuple[int, ...]] = field(default_factory=dict)
    derived: int = 0

    def indexes(self, mail: Mail, rcpt: str) -> tuple[int, ...]:
        lineage = self.lineage.get(mail.name)
        if lineage is not None:
            return lineage
        origin = mail.origins.get(rcpt)
        if origin is not None:
            return (origin,)
        return tuple(t.index for t in self.job.targets)

    def record(
        self, mail: Mail, rcpts: Collection[str], outcome: tuple[Status, str, str, str]
    ) -> None:
        if mail.name in self.lineage and outcome[0] is not Status.DEFERRED:
            # a mail made by a mailet (a bounce): its final outcomes are its own; only
            # "not yet" keeps the mail that made it in the spool, to make it again
            return
        for rcpt in rcpts:
            for i in self.indexes(mail, rcpt):
                self.outcomes.setdefault(i, []).append(outcome)


class ContainerContext:
    """The :class:`~.api.MailetContext` of a running container."""

    def __init__(
        self,
        *,
        postmaster: str,
        hostname: str,
        repositories: RepositoryStore,
        is_local_domain: Callable[[str], bool] = lambda d: False,
        mailbox_of: Callable[[str], str | None] = lambda a: None,
        rewrite_table: Callable[[], RewriteTable] = lambda: EMPTY_TABLE,
        data_dir: Path | None = None,
        over_quota: Callable[[str, int], str | None] = lambda a, n: None,
        conf_dir: Path | None = None,
    ) -> None:
        self.postmaster = postmaster
        self._over_quota = over_quota
        #: DATA (DKIMSign's keys under DATA/dkim); None: not known (a bare test context)
        self.data_dir = data_dir
        #: the configuration directory (relative key paths); None: the embedded default
        self.conf_dir = conf_dir
        self.hostname = hostname
        self.repositories = repositories
        self._is_local_domain = is_local_domain
        self._mailbox_of = mailbox_of
        self._rewrite_table = rewrite_table
        self._current = threading.local()
        self.container: Container | None = None
        #: spools the new mails of :meth:`enqueue` (None: no spool, processed at once)
        self.enqueuer: Enqueuer | None = None
        #: the spool runner's holds (:meth:`hold`); None: no runner, nothing is held
        self.holds: Holds | None = None

    # -- MailetContext ---------------------------------------------------------

    def is_local_server(self, domain: str) -> bool:
        return bool(domain) and (
            self._is_local_domain(domain) or self._rewrite_table().is_alias_domain(domain)
        )

    def is_local_email(self, address: str) -> bool:
        return self.mailbox_of(address) is not None

    def mailbox_of(self, address: str) -> str | None:
        # Within a batch, answers are kept (and seeded with the mailboxes the spool
        # runner resolved moments before): the default flow asks for each recipient
        # twice (RecipientIsLocal, LocalDelivery), each a walk through the stores.
        cache: dict[str, str | None] | None = getattr(self._current, "mailboxes", None)
        if cache is None:
            return self._mailbox_of(address)
        try:
            return cache[address]
        except KeyError:
            box = cache[address] = self._mailbox_of(address)
            return box

    def rewrite_table(self) -> RewriteTable:
        return self._rewrite_table()

    def over_quota(self, address: str, size: int) -> str | None:
        """Why a message of ``size`` bytes does not fit in the mailbox of ``address``
        (Maildir++ quota, ``delivery/quota.py``); None if it fits or has no limit."""
        return self._over_quota(address, size)

    def repository(self, url: str):  # type: ignore[no-untyped-def]
        return self.repositories.get(url)

    def log(self, message: str) -> None:
        log.info("%s", message)

    def _run(self) -> _Run:
        run: _Run | None = getattr(self._current, "run", None)
        if run is None:
            raise MessagingError("no mail is being processed in this thread")
        return run

    def send_mail(self, mail: Mail, state: str = ROOT, *, derived: bool = True) -> None:
        run = self._run()
        if derived:
            run.derived += 1
            digest = hashlib.sha1(
                f"{mail.name}\0{run.derived}\0{','.join(mail.recipients)}".encode(
                    "utf-8", "surrogateescape"
                )
            ).hexdigest()[:8]
            parent_indexes = tuple(sorted({i for t in run.job.targets for i in (t.index,)}))
            lineage = run.lineage.get(mail.name, parent_indexes)
            mail.name = f"{run.job.queue_id}-{digest.upper()}"
            run.lineage[mail.name] = lineage
        mail.state = state
        assert self.container is not None
        self.container.run(mail, self)

    def enqueue(self, mail: Mail, key: str) -> str:
        run = self._run()
        mail.attributes[SENT_BY_MAILET] = True
        enqueuer = self.enqueuer
        if enqueuer is None:
            copy = mail.duplicate()
            self.send_mail(copy, ROOT)
            return copy.name
        return enqueuer.enqueue(run.job, run.recovered, mail, key)

    def deliver_local(self, mail: Mail) -> None:
        self._run().local.append(mail)

    def defer(self, mail: Mail, reason: str) -> None:
        self._run().record(mail, mail.recipients, (Status.DEFERRED, "4.3.0", "", reason))

    def finished(self, mail: Mail, detail: str, *, failed: bool = False) -> None:
        status = Status.FAILED if failed else Status.SENT
        dsn = "2.0.0"
        if failed:
            # the status of the error that sent it here (over quota: 5.2.2), else 5.0.0
            found = _STATUS.search(mail.error_message or "")
            dsn = found.group(1) if found else "5.0.0"
        self._run().record(mail, mail.recipients, (status, dsn, "", detail))

    def hold(self, mail: Mail, detail: str) -> Callable[[bool], None] | None:
        holds = self.holds
        run: _Run | None = getattr(self._current, "run", None)
        if holds is None or run is None:
            return None
        qid = run.job.queue_id
        if mail.name != qid or mail.name in run.lineage:
            return None  # a mail made by a mailet: its own outcomes, not the entry's
        indexes = {i for rcpt in mail.recipients for i in run.indexes(mail, rcpt)}
        holds.hold(qid)
        run.record(mail, mail.recipients, (Status.HELD, "", "", detail))

        def release(done: bool) -> None:
            holds.release(qid, indexes, done=done)

        return release


class Container:
    """Compiled processors; :meth:`run` takes one mail through them."""

    def __init__(
        self,
        spec: ContainerSpec,
        context: ContainerContext,
        *,
        python_classes: bool = True,
    ) -> None:
        """Compile every processor (load classes, ``init`` every matcher and mailet).

        Raises:
            ConfigError: a class that cannot be loaded or a bad parameter.
        """
        self.spec = spec
        self.context = context
        context.container = self
        compiled = compile_container(spec, context, python_classes=python_classes)
        self.processors: dict[str, list[Step]] = compiled.processors
        #: James classes kittiwake does not have, parameters not read (named at start)
        self.notes: list[str] = compiled.notes
        self.error_repository = spec.error_repository

    def mailets(self) -> list[Mailet]:
        return [s.mailet for steps in self.processors.values() for s in steps]

    def run(self, mail: Mail, context: ContainerContext) -> None:
        """Process ``mail`` from ``mail.state`` until every part of it is ghosted.

        Raises:
            MessagingError: an exception propagated (``onMailetException=propagate``, or
                a failure within the error processor) or a processing loop.
        """
        work: list[tuple[Mail, int]] = [(mail, 0)]
        budget = _STEP_BUDGET
        while work:
            m, i = work.pop()
            state = m.state
            steps = self.processors.get(state)
            if steps is None:
                if state == ERROR:
                    raise MessagingError(f"{m.name}: there is no error processor")
                m.error_message = f"there is no processor {state!r}"
                m.state = ERROR
                work.append((m, 0))
                continue
            n = len(steps)
            moved = False
            while i < n:
                if not m.recipients:
                    m.state = GHOST
                    moved = True
                    break
                budget -= 1
                if budget < 0:
                    raise MessagingError(
                        f"{m.name}: processing loop (more than {_STEP_BUDGET} steps)"
                    )
                step = steps[i]
                i += 1
                if step.all:
                    matched: Collection[str] = m.recipients
                else:
                    try:
                        matched = step.match(m)
                    except Exception as exc:
                        handler = step.on_match
                        if handler == "nomatch":
                            matched = ()
                        elif handler == "matchall":
                            matched = m.recipients
                        elif state == ERROR:
                            raise MessagingError(f"{m.name}: {step.label}: {exc}") from exc
                        else:
                            log.warning("%s: matcher of %s failed: %s", m.name, step.label, exc)
                            m.error_message = f"{step.label}: {exc}"
                            m.state = handler
                            work.append((m, 0))
                            moved = True
                            break
                    if not matched:
                        continue
                    if len(matched) < len(m.recipients):
                        chosen = set(matched)
                        part = m.duplicate()
                        part.recipients = [r for r in m.recipients if r in chosen]
                        m.recipients = [r for r in m.recipients if r not in chosen]
                        work.append((m, i))  # the others go on down this processor
                        m = part
                try:
                    step.mailet.service(m)
                except Exception as exc:
                    handler = step.on_mailet
                    if handler == "ignore":
                        log.info("%s: %s failed (ignored): %s", m.name, step.label, exc)
                    elif handler == "propagate" or state == ERROR:
                        raise MessagingError(f"{m.name}: {step.label}: {exc}") from exc
                    else:
                        log.warning("%s: %s failed: %s", m.name, step.label, exc)
                        m.error_message = f"{step.label}: {exc}"
                        m.state = handler
                if m.state == GHOST or not m.recipients:
                    moved = True
                    break
                if m.state != state:
                    work.append((m, 0))
                    moved = True
                    break
            if not moved and m.recipients:
                log.info(
                    "%s: reached the end of processor %s; ghosted (to=%s)",
                    m.name,
                    state,
                    ",".join(m.recipients),
                )
                context.finished(m, f"end of processor {state}")
                m.state = GHOST


class MailetDeliverer:
    """A Deliverer that runs the mailet container (see the module docstring)."""

    def __init__(self, container: Container, maildir: MaildirDeliverer, work_dir: Path) -> None:
        """Args:
        container: the compiled container (its context holds the services).
        maildir: LocalDelivery's deliverer (its journal is the delivery record).
        work_dir: ``DATA/mailet``: changed messages on their way into Maildirs.
        """
        self.container = container
        self.context = container.context
        self.maildir = maildir
        self.journal = maildir.journal
        self.work_dir = work_dir
        self.failures = FailureCounts(work_dir)
        self._attempted: set[str] = set()
        self._lock = threading.Lock()

    def attach_spool(self, spool_root: Path, spool_mail: SpoolMail) -> None:
        """Let mailets put new mails in the spool (``MailetContext.enqueue``); without
        this they are processed at once, within the attempt that made them."""
        self.context.enqueuer = Enqueuer(self.journal, spool_root, spool_mail)

    def close(self) -> None:
        for mailet in self.container.mailets():
            mailet.destroy()
        self.failures.close()

    def deliver(self, jobs: Sequence[DeliveryJob]) -> list[list[Outcome]]:
        current = self.context._current
        # None in a target means "not resolved" as well as "no mailbox": only known
        # mailboxes are seeded.
        current.mailboxes = {
            t.recipient: t.mailbox for job in jobs for t in job.targets if t.mailbox is not None
        }
        try:
            with quota_batch_memo():  # maildirsize read once per mailbox and batch
                return self._deliver_batch(jobs)
        finally:
            current.mailboxes = None

    def _deliver_batch(self, jobs: Sequence[DeliveryJob]) -> list[list[Outcome]]:
        runs: list[_Run] = []
        for_parent: dict[int, list[Outcome]] = {}  # job -> its deferral (not HELD)
        enqueuer = self.context.enqueuer
        # One group commit for every repository store of the batch (RemoteDelivery's
        # outgoing queue, for mails it cannot hold in the spool): the spool entries go
        # only after this returns.
        with deferred_sync():
            for n, job in enumerate(jobs):
                if enqueuer is not None and not enqueuer.may_process(job):
                    # a mailet's new mail whose parent may still run again (enqueue.py)
                    for_parent[n] = [
                        Outcome(
                            t.index,
                            t.recipient,
                            Status.DEFERRED,
                            "4.3.0",
                            "",
                            "held for its parent",
                        )
                        for t in job.targets
                    ]
                    continue
                with self._lock:
                    again = job.queue_id in self._attempted
                    self._attempted.add(job.queue_id)
                runs.append(_Run(job, job.envelope, job.recovered or again))
            failures = self.failures
            for run in runs:
                n = failures.count(run.job)
                if n >= MAXIMUM_FAILURE_COUNT:
                    self._give_up(run, n, "the process died while processing it")
                    continue
                # a death while this mail is in the container counts as its failure (not
                # the other mails' of the batch: one poisonous mail must not take them along)
                failures.begin(run.job)
                try:
                    self._process(run)
                finally:
                    failures.end(run.job)
            failures.flush()
        self._deliver_local(runs)
        done = iter([self._outcomes(run) for run in runs])
        results = [for_parent[n] if n in for_parent else next(done) for n in range(len(jobs))]
        with self._lock:
            for job, outcomes in zip(jobs, results, strict=True):
                if all(o.status is not Status.DEFERRED for o in outcomes):
                    self._attempted.discard(job.queue_id)
                    failures.clear(job.queue_id)
                    if enqueuer is not None:
                        enqueuer.finished(job.queue_id)
        return results

    # -- processing ------------------------------------------------------------

    def _mail(self, run: _Run) -> Mail:
        job, env = run.job, run.envelope
        targets = job.targets
        mail = Mail(
            name=job.queue_id,
            sender=(env.sender or None) if env is not None else None,
            recipients=[t.recipient for t in targets],
            message=Message(
                job.data_path,
                job.size,
                delivered_to=env.delivered_to if env is not None else "",
                head=job.head,
            ),
            received_at=job.received_at,
        )
        mail.origins = {t.recipient: t.index for t in targets}
        if env is not None:
            mail.remote_addr = env.client_address
            mail.remote_host = env.helo or env.client_address
            mail.auth_user = getattr(env, "auth_user", "") or None
            mail.auth_network = bool(getattr(env, "auth_network", False))
            state = getattr(env, "state", "") or ROOT
            mail.state = state
            if state != ROOT:
                mail.attributes["mailRepository-reprocessing"] = state
            mail.error_message = getattr(env, "error", "") or None
            if env.parent:
                mail.attributes[SENT_BY_MAILET] = True
        return mail

    def _process(self, run: _Run) -> None:
        ctx = self.context
        ctx._current.run = run
        try:
            mail = self._mail(run)
            try:
                self.container.run(mail, ctx)
            except Exception as exc:
                self._failed(run, mail, exc)
        finally:
            ctx._current.run = None

    def _failed(self, run: _Run, mail: Mail, exc: Exception) -> None:
        qid = run.job.queue_id
        run.outcomes.clear()
        run.local.clear()
        n = self.failures.add(qid)
        if n < MAXIMUM_FAILURE_COUNT:
            log.warning("%s: processing failed (%d of %d): %s", qid, n, MAXIMUM_FAILURE_COUNT, exc)
            for t in run.job.targets:
                run.outcomes[t.index] = [
                    (Status.DEFERRED, "4.3.0", "", f"processing failed: {exc}")
                ]
            return
        self._give_up(run, n, str(exc))

    def _give_up(self, run: _Run, n: int, reason: str) -> None:
        """Store the mail as received in the spooler's error repository."""
        qid = run.job.queue_id
        run.outcomes.clear()
        run.local.clear()
        fresh = self._mail(run)
        fresh.state = ERROR
        fresh.error_message = f"processing failed {n} times: {reason}"
        repo = self.context.repositories.get(self.container.error_repository)
        try:
            repo.store(fresh)
        except OSError as err:
            log.error("%s: cannot store in repository %s: %s", qid, repo.name, err)
            for t in run.job.targets:
                run.outcomes[t.index] = [(Status.DEFERRED, "4.3.0", "", str(err))]
            return
        log.error("%s: processing failed %d times; stored in repository %s", qid, n, repo.name)
        for t in run.job.targets:
            run.outcomes[t.index] = [
                (Status.FAILED, "5.3.0", "", f"stored in repository {repo.name}")
            ]

    # -- local delivery --------------------------------------------------------

    def _deliver_local(self, runs: list[_Run]) -> None:
        jobs: list[DeliveryJob] = []
        where: list[tuple[_Run, Mail, list[str]]] = []  # per job: run, mail, recipients
        temporary: list[str] = []
        mailbox_of = self.context.mailbox_of
        try:
            for run in runs:
                for mail in run.local:
                    groups: _Groups = {}
                    # two recipients with one mailbox get one copy (as Postfix), the
                    # first one's, whatever per-recipient fields (Delivered-To) differ
                    boxes: dict[str, str] = {}
                    for rcpt in mail.recipients:
                        box = mailbox_of(rcpt)
                        key = boxes.get(box, "\0") if box is not None else "\0"
                        if key == "\0":
                            key, path, size = self._message_file(mail, rcpt, groups, temporary)
                            if box is not None:
                                boxes[box] = key
                        group = groups.setdefault(key, (path, size, [], []))
                        index = mail.origins.get(rcpt)
                        if index is None or mail.name != run.job.queue_id:
                            index = _stable_index(rcpt)
                        group[2].append(Target(index, rcpt, box))
                        group[3].append(rcpt)
                    for path, size, targets, rcpts in groups.values():
                        jobs.append(
                            DeliveryJob(
                                mail.name,
                                path,
                                run.job.received_at,
                                size,
                                run.recovered or mail.name != run.job.queue_id,
                                tuple(targets),
                            )
                        )
                        where.append((run, mail, rcpts))
            if not jobs:
                return
            results = self.maildir.deliver(jobs)
        finally:
            for path in temporary:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        for (run, mail, rcpts), outcomes in zip(where, results, strict=True):
            for rcpt, o in zip(rcpts, outcomes, strict=True):
                run.record(mail, (rcpt,), (o.status, o.dsn, o.location, o.detail))

    def _message_file(
        self, mail: Mail, rcpt: str, groups: _Groups, temporary: list[str]
    ) -> tuple[str, str, int]:
        """The file ``rcpt``'s mailbox gets: (group key, path, size)."""
        extra = mail.per_recipient_headers.get(rcpt)
        msg = mail.message
        if msg.linkable(extra):  # the spool file is these very bytes
            assert msg.path is not None
            return "", msg.path, msg.file_size
        data = msg.as_bytes(extra)
        key = hashlib.sha1(data).hexdigest()[:16]
        path = os.path.join(self.work_dir, f"{mail.name}-{key}")
        if key not in groups:
            self.work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_durably(path, data)
            temporary.append(path)
        return key, path, len(data)

    def _outcomes(self, run: _Run) -> list[Outcome]:
        out: list[Outcome] = []
        for t in run.job.targets:
            found = run.outcomes.get(t.index)
            if not found:
                out.append(Outcome(t.index, t.recipient, Status.SENT, "2.0.0", "", "processed"))
                continue
            deferred = [f for f in found if f[0] is Status.DEFERRED]
            held = [f for f in found if f[0] is Status.HELD]
            sent = [f for f in found if f[0] is Status.SENT]
            pick = deferred[0] if deferred else held[0] if held else sent[0] if sent else found[0]
            locations = ",".join(sorted({f[2] for f in sent if f[2]}))
            out.append(
                Outcome(t.index, t.recipient, pick[0], pick[1], locations or pick[2], pick[3])
            )
        return out
