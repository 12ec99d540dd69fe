"""DKIMSign and the key store (issue 8 point 4): signatures that dkimpy verifies against
the record ``kittiwake dkim keygen`` prints, RSA and Ed25519, James's parameters, and
the mails that are not signed."""

from __future__ import annotations

import base64
import os
import re
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from dkim.crypto import parse_public_key
from dkim.util import parse_tag_value

from kittiwake.cli import main
from kittiwake.mailet import parse_mailetcontainer_text
from kittiwake.mailet.api import Mail, MailetConfig, MailetError, MessagingError
from kittiwake.mailet.default import DEFAULT_MAILETCONTAINER
from kittiwake.mailet.dkim import DKIMSign, signature_tags, wire_form
from kittiwake.mailet.dkimkeys import DkimKeyError, KeyStore, load_private_key
from kittiwake.mailet.matchers import SENT_BY_MAILET
from kittiwake.mailet.message import Message
from kittiwake.policy.rewrite import EMPTY_TABLE, MappingKind, RewriteTable, normalize_mapping

from .helpers import Harness, processors

MESSAGE = (
    b"Received: from client.test by mx.a.test\r\n"
    b"From: Alice <alice@example.com>\r\n"
    b"To: bob@remote.test\r\n"
    b"Subject: dkim\r\n"
    b"Date: Sun, 22 Nov 2026 05:00:00 +0000\r\n"
    b"Message-ID: <1@example.com>\r\n"
    b"\r\n"
    b"hello\r\n"
    b".a line that SMTP dot-stuffs\r\n"
    b"..\r\n"
)


def record_of(output: str) -> tuple[str, str]:
    """(name, joined value) from what keygen / show printed."""
    name = re.search(r"^name:\s+(\S+)$", output, re.M)
    value = re.search(r"^value:\s+(.+)$", output, re.M)
    assert name and value, output
    strings = re.findall(r'"([^"]*)"', value.group(1))
    assert strings and all(len(s.encode()) <= 255 for s in strings)
    return name.group(1), "".join(strings)


def keygen(data: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["dkim", "keygen", *args, "--data", str(data)])
    out = capsys.readouterr()
    return code, out.out, out.err


def dns_of(records: dict[str, str]) -> Any:
    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        return records.get(name.decode().rstrip("."), "").encode()

    return dnsfunc


def verify_all(data: bytes, dnsfunc: Any) -> list[bool]:
    """Each DKIM-Signature of ``data``, verified."""
    count = len(re.findall(rb"^DKIM-Signature:", data, re.M | re.I))
    out = []
    for i in range(count):
        try:
            out.append(bool(dkim.DKIM(data).verify(idx=i, dnsfunc=dnsfunc)))
        except dkim.DKIMException:
            out.append(False)
    return out


def mailet(
    params: dict[str, str] | None = None,
    data_dir: Path | None = None,
    table: RewriteTable = EMPTY_TABLE,
) -> DKIMSign:
    context = SimpleNamespace(
        data_dir=data_dir,
        conf_dir=None,
        rewrite_table=lambda: table,
        postmaster="postmaster@example.com",
    )
    m = DKIMSign()
    m.init(MailetConfig("DKIMSign", params or {}, context))  # type: ignore[arg-type]
    return m


def mail_of(data: bytes, user: str | None = "alice@example.com") -> Mail:
    """A mail submitted by ``user`` (None: without AUTH)."""
    mail = Mail("Q1", "alice@example.com", ["bob@remote.test"], Message.from_bytes(data))
    mail.auth_user = user
    return mail


# -- keygen -------------------------------------------------------------------------


@pytest.mark.parametrize(("algorithm", "bits"), [("rsa", "2048"), ("ed25519", None)])
def test_keygen_prints_a_key_record_for_the_private_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], algorithm: str, bits: str | None
) -> None:
    args = ["example.com", "--selector", "s1", "--algorithm", algorithm]
    code, out, _ = keygen(tmp_path, capsys, *args, *(["--bits", bits] if bits else []))
    assert code == 0
    name, value = record_of(out)
    assert name == "s1._domainkey.example.com"
    tags = parse_tag_value(value.encode())  # RFC 6376 3.2 tag=value list
    assert tags[b"v"] == b"DKIM1" and tags[b"k"] == algorithm.encode()
    path = tmp_path / "dkim" / "example.com" / "s1.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    pem_body = b"".join(path.read_bytes().splitlines()[1:-1]).decode()
    assert pem_body[:40] not in out  # the private key is never printed
    public = base64.b64decode(tags[b"p"])
    if algorithm == "rsa":
        assert isinstance(private, rsa.RSAPrivateKey) and private.key_size == 2048
        assert len(value) > 255  # so the value is in two strings
        assert parse_public_key(public)["modulus"] == private.public_key().public_numbers().n
    else:
        assert isinstance(private, ed25519.Ed25519PrivateKey)
        raw = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        assert public == raw
    # the zone file line carries the same strings
    zone = re.search(r"^zone:\s+(\S+)\. \d+ IN TXT \( (.+) \)$", out, re.M)
    assert zone and zone.group(1) == name
    assert "".join(re.findall(r'"([^"]*)"', zone.group(2))) == value
    # show prints it again
    assert main(["dkim", "show", "example.com", "--data", str(tmp_path)]) == 0
    assert record_of(capsys.readouterr().out) == (name, value)


def test_keygen_refuses_to_overwrite_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert keygen(tmp_path, capsys, "example.com")[0] == 0
    path = tmp_path / "dkim" / "example.com" / "kittiwake.key"
    before = path.read_bytes()
    code, _, err = keygen(tmp_path, capsys, "example.com")
    assert code == 1 and "exists already (--force replaces it)" in err
    assert path.read_bytes() == before
    assert keygen(tmp_path, capsys, "example.com", "--force")[0] == 0
    assert path.read_bytes() != before
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    "args",
    [
        ["../../etc"],
        ["example.com", "--selector", "../x"],
        ["nodot"],
        ["example.com", "--bits", "512"],
        ["example.com", "--algorithm", "ed25519", "--bits", "2048"],
    ],
)
def test_keygen_refuses_bad_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    code, _, err = keygen(tmp_path, capsys, *args)
    assert code == 1 and err.startswith("kittiwake: ")
    assert not list(tmp_path.rglob("*.key"))


def test_list_show_remove(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keygen(tmp_path, capsys, "Example.COM", "--selector", "r1")
    keygen(tmp_path, capsys, "example.com", "--selector", "e1", "--algorithm", "ed25519")
    keygen(tmp_path, capsys, "bücher.test", "--bits", "1024")
    assert main(["dkim", "list", "--data", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "example.com\te1\ted25519\te1._domainkey.example.com",
        "example.com\tr1\trsa-2048\tr1._domainkey.example.com",
        "xn--bcher-kva.test\tkittiwake\trsa-1024\tkittiwake._domainkey.xn--bcher-kva.test",
    ]
    (tmp_path / "dkim" / "example.com" / "junk.key").write_bytes(b"junk\n")
    assert main(["dkim", "list", "--data", str(tmp_path)]) == 1
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 4 and listed[1].startswith("example.com\tjunk\tUNUSABLE: ")
    (tmp_path / "dkim" / "example.com" / "junk.key").unlink()
    assert main(["dkim", "remove", "example.com", "r1", "--data", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["dkim", "show", "example.com", "--data", str(tmp_path)]) == 0
    assert record_of(capsys.readouterr().out)[0] == "e1._domainkey.example.com"
    assert main(["dkim", "show", "nokey.test", "--data", str(tmp_path)]) == 1
    assert "no DKIM key for nokey.test" in capsys.readouterr().err


# -- the mailet, per-domain keys ----------------------------------------------------


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, str]:
    """Two keys for example.com (RSA and Ed25519): name -> TXT value."""
    store = KeyStore(tmp_path / "dkim")
    out = {}
    for selector, kind in (("rsa1", "rsa"), ("ed1", "ed25519")):
        key = store.generate("example.com", selector, kind)
        out[key.record_name] = key.record
    return out


def test_signed_with_every_key_of_the_from_domain(tmp_path: Path, keys: dict[str, str]) -> None:
    mail = mail_of(MESSAGE)
    mailet(data_dir=tmp_path).service(mail)
    data = mail.message.as_bytes()
    assert data.endswith(MESSAGE)  # the fields go on top, nothing else changes
    assert verify_all(data, dns_of(keys)) == [True, True]
    fields = [f for f in re.split(rb"\r\n(?=\S)", data) if f.startswith(b"DKIM-Signature")]
    tags = [signature_tags(f) for f in fields]
    assert sorted(t["a"] for t in tags) == ["ed25519-sha256", "rsa-sha256"]
    for t in tags:
        assert t["d"] == "example.com" and t["c"] == "relaxed/relaxed"
        signed = t["h"].split(":")
        for name in ("from", "to", "subject", "date", "message-id"):
            assert signed.count(name) == 2  # once more than present: none can be added
        assert "received" not in signed and "cc" not in signed
    # each line of the fields is short and CRLF-ended (RFC 5322 2.1.1)
    head = data.split(b"\r\n\r\n")[0]
    assert all(len(line) <= 78 for line in head.split(b"\r\n"))
    # a change in the body or a signed field breaks them
    tampered = data.replace(b"hello", b"HELLO")
    assert verify_all(tampered, dns_of(keys)) == [False, False]
    added = data.replace(b"Subject: dkim\r\n", b"Subject: dkim\r\nSubject: other\r\n")
    assert verify_all(added, dns_of(keys)) == [False, False]


def test_no_key_for_the_from_domain_passes_unsigned(tmp_path: Path, keys: dict[str, str]) -> None:
    for data in (
        MESSAGE.replace(b"alice@example.com", b"alice@other.test"),
        MESSAGE.replace(b"alice@example.com", b"alice@sub.example.com"),
        # two From: fields (RFC 5322 allows one), or addresses of two domains
        MESSAGE.replace(b"To:", b"From: eve@example.com\r\nTo:"),
        MESSAGE.replace(b"<alice@example.com>", b"<alice@example.com>, eve@other.test"),
        MESSAGE.replace(b"From: Alice <alice@example.com>\r\n", b""),
    ):
        mail = mail_of(data)
        mailet(data_dir=tmp_path).service(mail)
        assert mail.message.as_bytes() == data


def test_an_authenticated_user_gets_signatures_for_own_addresses_only(
    tmp_path: Path, keys: dict[str, str]
) -> None:
    table = RewriteTable(
        [normalize_mapping(MappingKind.ADDRESS, "sales@example.com", "bob@example.com")]
    )
    m = mailet(data_dir=tmp_path, table=table)
    for user, from_header, signed in (
        ("alice@example.com", b"Alice <ALICE@Example.COM>", True),
        ("bob@example.com", b"Sales <sales@example.com>", True),  # bob's alias
        ("bob@example.com", b"Alice <alice@example.com>", False),  # not bob's
        ("bob@example.com", b"<sales@example.com>, <alice@example.com>", False),
    ):
        mail = mail_of(MESSAGE.replace(b"Alice <alice@example.com>", from_header))
        mail.auth_user = user
        # a null envelope sender: verifyIdentity did not look at From: at all
        mail.sender = None
        m.service(mail)
        data = mail.message.as_bytes()
        assert (b"DKIM-Signature" in data) is signed, (user, from_header)
        if signed:
            assert verify_all(data, dns_of(keys)) == [True, True]


def test_who_else_gets_a_signature(tmp_path: Path, keys: dict[str, str]) -> None:
    m = mailet(data_dir=tmp_path)
    # a client of authorizedAddresses: trusted with any From:, as with relaying
    mail = mail_of(MESSAGE, None)
    mail.auth_network = True
    m.service(mail)
    assert verify_all(mail.message.as_bytes(), dns_of(keys)) == [True, True]
    # mail from outside (a forward, say): its From: is whatever the outside wrote
    mail = mail_of(MESSAGE, None)
    m.service(mail)
    assert mail.message.as_bytes() == MESSAGE
    # a delivery report made here, From: the postmaster
    report = MESSAGE.replace(b"Alice <alice@example.com>", b"MDS <postmaster@example.com>")
    for from_postmaster, made_here in ((True, True), (False, True), (True, False)):
        data = report if from_postmaster else MESSAGE
        mail = mail_of(data, None)
        mail.sender = None
        if made_here:
            mail.attributes[SENT_BY_MAILET] = True
        m.service(mail)
        signed = b"DKIM-Signature" in mail.message.as_bytes()
        assert signed is (from_postmaster and made_here)


def test_utf8_from_of_an_idn_domain(tmp_path: Path) -> None:
    key = KeyStore(tmp_path / "dkim").generate("bücher.test", "s", "ed25519")
    assert key.domain == "xn--bcher-kva.test"
    data = MESSAGE.replace(b"Alice <alice@example.com>", "Jörg <jörg@Bücher.test>".encode())
    mail = mail_of(data, "jörg@bücher.test")
    mailet(data_dir=tmp_path).service(mail)
    signed = mail.message.as_bytes()
    assert b"d=xn--bcher-kva.test;" in signed
    assert verify_all(signed, dns_of({key.record_name: key.record})) == [True]


def test_lf_message_is_signed_as_sent(tmp_path: Path, keys: dict[str, str]) -> None:
    lf = MESSAGE.replace(b"\r\n", b"\n").rstrip(b"\n")  # no line end at the very end
    mail = mail_of(lf)
    mailet(data_dir=tmp_path).service(mail)
    data = mail.message.as_bytes()
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert data == wire_form(data) and data.endswith(b"..\r\n")
    assert verify_all(data, dns_of(keys)) == [True, True]


def test_a_key_file_that_cannot_be_used_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "dkim" / "example.com").mkdir(parents=True)
    (tmp_path / "dkim" / "example.com" / "bad.key").write_bytes(b"not a key\n")
    with pytest.raises(MessagingError, match=r"bad\.key"):
        mailet(data_dir=tmp_path).service(mail_of(MESSAGE))


def test_a_key_added_while_running_signs_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = mailet(data_dir=tmp_path)
    mail = mail_of(MESSAGE)
    m.service(mail)
    assert mail.message.as_bytes() == MESSAGE
    _, out, _ = keygen(tmp_path, capsys, "example.com", "--algorithm", "ed25519")
    mail = mail_of(MESSAGE)
    m.service(mail)
    assert verify_all(mail.message.as_bytes(), dns_of(dict([record_of(out)]))) == [True]


def test_the_container_passes_data_dir(tmp_path: Path, keys: dict[str, str]) -> None:
    xml = processors(
        """<processor state="root">
          <mailet match="All" class="org.apache.james.jdkim.mailets.DKIMSign"/>
          <mailet match="All" class="ToRepository">
            <repositoryPath>file://var/mail/signed/</repositoryPath>
          </mailet></processor>"""
    )
    h = Harness(tmp_path, xml)
    h.run(h.job(["bob@remote.test"], data=MESSAGE, auth="alice@example.com"))
    repo = h.deliverer.context.repositories.get("signed")
    (key,) = repo.keys()
    assert verify_all(repo.message_bytes(key), dns_of(keys)) == [True, True]


def test_the_default_flow_signs_before_remote_delivery() -> None:
    spec = parse_mailetcontainer_text(DEFAULT_MAILETCONTAINER)
    relay = spec.processor("relay")
    assert relay is not None
    assert [m.class_name for m in relay.mailets] == ["DKIMSign", "RemoteDelivery"]


# -- the mailet, James's parameters -------------------------------------------------


def _pem(password: bytes | None = None) -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, encryption
    ).decode()
    record = load_private_key(pem.encode(), password).record
    return pem, record


def test_james_template_with_inline_encrypted_key(tmp_path: Path) -> None:
    pem, record = _pem(b"pass phrase")
    indented = "\n".join("        " + line for line in pem.splitlines())  # as in an XML file
    m = mailet(
        {
            "signatureTemplate": "v=1; s=james; d=James.Example; "
            "h=from:to:received:received; a=rsa-sha256; bh=; b=;",
            "privateKey": indented,
            "privateKeyPassword": "pass phrase",
        }
    )
    # James signs every mail it is given with the template's domain, From: or not
    mail = mail_of(MESSAGE.replace(b"alice@example.com", b"alice@other.test"))
    m.service(mail)
    data = mail.message.as_bytes()
    assert verify_all(data, dns_of({"james._domainkey.james.example": record})) == [True]
    (field,) = [f for f in re.split(rb"\r\n(?=\S)", data) if f.startswith(b"DKIM-Signature")]
    tags = signature_tags(field)
    assert tags["d"] == "james.example" and tags["s"] == "james"
    assert tags["h"] == "from:to:received:received"
    assert tags["c"] == "simple/simple"  # RFC 6376 3.5: no c= in the template


def test_james_template_with_key_file(tmp_path: Path) -> None:
    pem, record = _pem()
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "dkim.pem").write_text(pem)
    context = SimpleNamespace(data_dir=tmp_path, conf_dir=conf)
    m = DKIMSign()
    params = {
        "signatureTemplate": "v=1; s=sel; d=example.com; c=relaxed; bh=; b=;",
        "privateKeyFilepath": "file://conf/dkim.pem",
    }
    m.init(MailetConfig("DKIMSign", params, context))  # type: ignore[arg-type]
    mail = mail_of(MESSAGE)
    m.service(mail)
    data = mail.message.as_bytes()
    assert verify_all(data, dns_of({"sel._domainkey.example.com": record})) == [True]
    assert b"c=relaxed/simple" in data


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"signatureTemplate": "v=1; s=a; bh=; b=;"}, "needs d="),
        ({"signatureTemplate": "v=1; d=a.test; s=a; a=rsa-sha1"}, "a=rsa-sha1"),
        ({"signatureTemplate": "v=1; d=a.test; s=a; x=123"}, "x= is not supported"),
        ({"signatureTemplate": "v=1; d=a.test; s=a; h=to:subject"}, "must name from"),
        ({"signatureTemplate": "v=1; d=a.test; s=a"}, "needs <privateKey>"),
        ({"signatureTemplate": "v=1; d=a.test; s=a", "privateKey": "junk"}, "privateKey"),
        ({"privateKey": "-----BEGIN PRIVATE KEY-----"}, "need a <signatureTemplate>"),
        ({"forceCRLF": "false"}, "forceCRLF"),
        (
            {"signatureTemplate": "d=a.test; s=a", "privateKeyFilepath": "/nonexistent/k.pem"},
            "cannot read",
        ),
    ],
)
def test_james_parameters_that_cannot_be_honoured(params: dict[str, str], reason: str) -> None:
    with pytest.raises(MailetError, match=re.escape(reason)):
        mailet(params)


def test_template_algorithm_must_match_the_key(tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    params = {"signatureTemplate": "d=a.test; s=a; a=rsa-sha256", "privateKey": pem}
    with pytest.raises(MailetError, match="the private key is ed25519"):
        mailet(params)
    params["signatureTemplate"] = "d=a.test; s=a; a=ed25519-sha256"
    mail = mail_of(MESSAGE)
    mailet(params).service(mail)
    record = load_private_key(pem.encode()).record
    assert verify_all(mail.message.as_bytes(), dns_of({"a._domainkey.a.test": record})) == [True]


def test_load_private_key_forms() -> None:
    seed = os.urandom(32)
    key = load_private_key(base64.b64encode(seed) + b"\n")  # dknewkey's Ed25519 form
    assert key.kind == "ed25519"
    with pytest.raises(DkimKeyError):
        load_private_key(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    pem, _ = _pem(b"pw")
    with pytest.raises(DkimKeyError):
        load_private_key(pem.encode(), None)  # encrypted, no password


def test_config_check_reads_james_key_file_from_the_conf_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pem, _ = _pem()
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "dkim.pem").write_text(pem)
    xml = processors(
        """<processor state="root">
          <mailet match="All" class="org.apache.james.jdkim.mailets.DKIMSign">
            <signatureTemplate>v=1; s=sel; d=example.com; h=from:to; bh=; b=;</signatureTemplate>
            <privateKeyFilepath>file://conf/dkim.pem</privateKeyFilepath>
          </mailet>
          <mailet match="All" class="Null"/></processor>"""
    )
    (conf / "mailetcontainer.xml").write_text(xml)
    assert main(["config", "check", "--conf", str(conf)]) == 0
    capsys.readouterr()
    (conf / "dkim.pem").unlink()
    assert main(["config", "check", "--conf", str(conf)]) == 2
    err = capsys.readouterr().err
    assert "DKIMSign" in err and f"cannot read {conf / 'dkim.pem'}" in err


def test_keygen_warns_when_the_configured_container_does_not_sign(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    xml = processors('<processor state="root"><mailet match="All" class="Null"/></processor>')
    (conf / "mailetcontainer.xml").write_text(xml)
    code = main(["dkim", "keygen", "example.com", "--conf", str(conf), "--data", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and "has no DKIMSign mailet, so nothing is signed" in out
    assert record_of(out)[0] == "kittiwake._domainkey.example.com"
    _, out, _ = keygen(tmp_path, capsys, "example.org")  # the built-in flow signs
    assert "is DKIM-signed with it from now on" in out and "warning" not in out
