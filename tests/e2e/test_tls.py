"""TLS (issue 4) with real clients: swaks, curl, msmtp, openssl s_client, Python's ssl;
the STARTTLS injection on a raw socket; handshakes that fail or stall; certificate
reload; the embedded default; the drop to an unprivileged user."""

from __future__ import annotations

import base64
import os
import pwd
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from kittiwake.tls import generate_self_signed

from .conftest import DOMAINLIST, KITTIWAKE, Kittiwake, free_port, wait_for_port
from .raw_smtp import RawSmtp

HELLO = "mx.kittiwake.test"
ALICE = "alice@kittiwake.test"


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (.ci/run installs it)")
    return path


@dataclass
class TlsServer:
    kw: Kittiwake
    mx: int  # clear text, no TLS
    starttls: int  # STARTTLS, PEM files
    smtps: int  # implicit TLS, PKCS#12 keystore (a certificate expiring in 5 days)
    lmtp: int  # LMTP with STARTTLS
    ca: Path  # both listeners' certificates, for clients that verify
    conf: Path

    def message(self, subject: str, timeout: float = 10.0) -> bytes:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for msg in self.kw.messages(ALICE):
                if f"Subject: {subject}".encode() in msg:
                    return msg
            time.sleep(0.02)
        raise AssertionError(f"no message with Subject: {subject}")


def write_pem_pair(directory: Path, name: str, days: int = 365) -> tuple[Path, Path]:
    """A self-signed pair named ``<name>.kittiwake.test`` (each its own subject, so that
    one CA file can hold them all), also valid for 127.0.0.1."""
    directory.mkdir(parents=True, exist_ok=True)
    key, cert = directory / f"{name}.key", directory / f"{name}.crt"
    generate_self_signed(key, cert, f"{name}.kittiwake.test", days=days)
    return key, cert


def write_p12(key: Path, cert: Path, out: Path, password: bytes) -> None:
    k = serialization.load_pem_private_key(key.read_bytes(), None)
    c = x509.load_pem_x509_certificate(cert.read_bytes())
    data = pkcs12.serialize_key_and_certificates(
        b"kittiwake",
        k,
        c,
        None,
        serialization.BestAvailableEncryption(password),  # type: ignore[arg-type]
    )
    out.write_bytes(data)


def tls_conf(base: Path, extra_kittiwake: str = "") -> TlsServer:
    conf = base / "conf"
    tls = conf / "tls"
    _, cert = write_pem_pair(tls, "starttls")
    key2, cert2 = write_pem_pair(tls, "smtps", days=5)
    write_p12(key2, cert2, tls / "smtps.p12", b"james72laBalle")
    ca = base / "ca.pem"
    ca.write_bytes(cert.read_bytes() + cert2.read_bytes())
    mx, starttls, smtps, lmtp = free_port(), free_port(), free_port(), free_port()
    (conf / "lmtpserver.xml").write_text(
        f"""<lmtpservers><lmtpserver><jmxName>lmtp</jmxName><bind>127.0.0.1:{lmtp}</bind>
    <helloName autodetect="false">{HELLO}</helloName>
    <tls startTLS="true"><privateKey>tls/starttls.key</privateKey>
      <certificates>tls/starttls.crt</certificates></tls></lmtpserver></lmtpservers>
"""
    )
    (conf / "smtpserver.xml").write_text(
        f"""<?xml version="1.0"?>
<smtpservers>
  <smtpserver><jmxName>mx</jmxName><bind>127.0.0.1:{mx}</bind>
    <helloName autodetect="false">{HELLO}</helloName></smtpserver>
  <smtpserver><jmxName>starttls</jmxName><bind>127.0.0.1:{starttls}</bind>
    <helloName autodetect="false">{HELLO}</helloName>
    <tls startTLS="true" socketTLS="false">
      <privateKey>file://conf/tls/starttls.key</privateKey>
      <certificates>file://conf/tls/starttls.crt</certificates>
    </tls>
    <auth><announce>always</announce><requireSSL>false</requireSSL></auth></smtpserver>
  <smtpserver><jmxName>smtps</jmxName><bind>127.0.0.1:{smtps}</bind>
    <helloName autodetect="false">{HELLO}</helloName>
    <tls socketTLS="true" startTLS="false">
      <keystore>file://conf/tls/smtps.p12</keystore>
      <keystoreType>PKCS12</keystoreType>
      <secret>james72laBalle</secret>
      <supportedProtocols><protocol>TLSv1.2</protocol><protocol>TLSv1.3</protocol>
      </supportedProtocols>
    </tls></smtpserver>
</smtpservers>
"""
    )
    (conf / "domainlist.xml").write_text(DOMAINLIST)
    (conf / "kittiwake.xml").write_text(
        f"<kittiwake><tlsHandshakeTimeout>2</tlsHandshakeTimeout>{extra_kittiwake}</kittiwake>"
    )
    kw = Kittiwake(conf=conf, data=base / "data", port=mx, log=base / "kittiwake.log")
    return TlsServer(kw, mx, starttls, smtps, lmtp, ca, conf)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    srv = tls_conf(tmp_path_factory.mktemp("tls"))
    srv.kw.add_user(ALICE)
    srv.kw.start()
    wait_for_port(srv.starttls, srv.kw.proc)  # type: ignore[arg-type]
    yield srv
    assert srv.kw.stop() == 0, srv.kw.log_text()[-3000:]


def client_context(ca: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
    if ca is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Wire(RawSmtp):
    """A raw client: plain socket, wrapped in TLS on demand."""

    def __init__(self, port: int, *, tls: ssl.SSLContext | None = None) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        super().__init__(tls.wrap_socket(raw, server_hostname="127.0.0.1") if tls else raw)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> bytes:
        return self.read_reply()

    def starttls(self, ctx: ssl.SSLContext) -> None:
        assert not self.buf
        self.sock = ctx.wrap_socket(self.sock, server_hostname="127.0.0.1")

    def rest(self, timeout: float = 10.0) -> bytes:
        """Everything until the server closes (raises on a timeout)."""
        self.sock.settimeout(timeout)
        out = self.buf
        while True:
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                return out
            if not chunk:
                return out
            out += chunk


MESSAGE = "From: me@example.net\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nhello over TLS\r\n"


# ---- real clients ------------------------------------------------------------------


def test_swaks_starttls(server: TlsServer) -> None:
    swaks = need("swaks")
    result = subprocess.run(
        [swaks, "--server", f"127.0.0.1:{server.starttls}", "--tls", "--tls-verify",
         "--tls-ca-path", str(server.ca), "--to", ALICE, "--from", "me@example.net",
         "--header", "Subject: swaks-starttls"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<-  220 2.0.0 Ready to start TLS" in result.stdout
    assert "250 2.0.0 Ok: queued as" in result.stdout
    msg = server.message("swaks-starttls")
    head = msg.split(b"\r\n\r\n", 1)[0].decode()
    assert "\twith ESMTPS id" in head or " with ESMTPS id" in head, head
    assert "(using TLSv1.3 with cipher TLS_" in head, head


def test_swaks_tls_on_connect(server: TlsServer) -> None:
    swaks = need("swaks")
    result = subprocess.run(
        [swaks, "--server", f"127.0.0.1:{server.smtps}", "--tls-on-connect", "--tls-verify",
         "--tls-ca-path", str(server.ca), "--to", ALICE, "--from", "me@example.net",
         "--header", "Subject: swaks-smtps"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "250 2.0.0 Ok: queued as" in result.stdout
    assert " with ESMTPS id" in server.message("swaks-smtps").decode()


@pytest.mark.parametrize("mode", ["starttls", "smtps"])
def test_curl(server: TlsServer, tmp_path: Path, mode: str) -> None:
    curl = need("curl")
    body = tmp_path / "mail.txt"
    body.write_text(MESSAGE.format(to=ALICE, subject=f"curl-{mode}"))
    url = (
        ["--ssl-reqd", f"smtp://127.0.0.1:{server.starttls}"]
        if mode == "starttls"
        else [f"smtps://127.0.0.1:{server.smtps}"]
    )
    result = subprocess.run(
        [curl, "-sS", *url, "--cacert", str(server.ca), "--mail-from", "me@example.net",
         "--mail-rcpt", ALICE, "--upload-file", str(body)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert " with ESMTPS id" in server.message(f"curl-{mode}").decode()


@pytest.mark.parametrize("mode", ["starttls", "smtps"])
def test_msmtp(server: TlsServer, mode: str) -> None:
    msmtp = need("msmtp")
    port = server.starttls if mode == "starttls" else server.smtps
    result = subprocess.run(
        [msmtp, "--host=127.0.0.1", f"--port={port}", "--tls=on",
         f"--tls-starttls={'on' if mode == 'starttls' else 'off'}",
         f"--tls-trust-file={server.ca}", "--from=me@example.net", ALICE],
        input=MESSAGE.format(to=ALICE, subject=f"msmtp-{mode}"),
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert " with ESMTPS id" in server.message(f"msmtp-{mode}").decode()


def test_swaks_lmtp_starttls(server: TlsServer) -> None:
    """Every listener takes <tls>: LMTP with STARTTLS (RFC 2033 allows it)."""
    swaks = need("swaks")
    result = subprocess.run(
        [swaks, "--server", f"127.0.0.1:{server.lmtp}", "--protocol", "LMTP", "--tls",
         "--tls-verify", "--tls-ca-path", str(server.ca), "--to", ALICE,
         "--from", "me@example.net", "--header", "Subject: swaks-lmtp"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<-  220 2.0.0 Ready to start TLS" in result.stdout
    head = server.message("swaks-lmtp").split(b"\r\n\r\n", 1)[0].decode()
    assert " with LMTPS id" in head and "(using TLSv1.3 with cipher" in head, head


def test_openssl_s_client(server: TlsServer) -> None:
    openssl = need("openssl")
    for args in (
        ["-connect", f"127.0.0.1:{server.starttls}", "-starttls", "smtp"],
        ["-connect", f"127.0.0.1:{server.smtps}"],
    ):
        result = subprocess.run(
            [openssl, "s_client", *args, "-CAfile", str(server.ca), "-verify_return_error",
             "-brief"],
            input="QUIT\n", capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        out = result.stdout + result.stderr
        assert "CONNECTION ESTABLISHED" in out, out
        assert "Protocol version: TLSv1.3" in out, out
        assert "Verification: OK" in out, out


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_tls_1_2_works_and_older_versions_are_refused(server: TlsServer) -> None:
    ctx = client_context(server.ca)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    w = Wire(server.smtps, tls=ctx)
    assert w.reply().startswith(b"220 ")
    assert w.sock.version() == "TLSv1.2"  # type: ignore[attr-defined]
    w.close()
    old = client_context()
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("ALL:@SECLEVEL=0")
    for port in (server.smtps, server.starttls):
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        if port == server.starttls:
            f = raw.makefile("rb")
            f.readline()
            raw.sendall(b"EHLO old.test\r\nSTARTTLS\r\n")
            while not f.readline().startswith(b"250 "):
                pass
            assert f.readline().startswith(b"220 2.0.0")
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            old.wrap_socket(raw, server_hostname="127.0.0.1")
        raw.close()
    openssl = need("openssl")
    result = subprocess.run(
        [openssl, "s_client", "-connect", f"127.0.0.1:{server.smtps}", "-tls1_1",
         "-cipher", "ALL:@SECLEVEL=0", "-brief"],
        input="", capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert "CONNECTION ESTABLISHED" not in result.stdout + result.stderr


# ---- STARTTLS sequencing ----------------------------------------------------------


def ehlo(w: Wire) -> bytes:
    w.send(b"EHLO client.test\r\n")
    reply = w.reply()
    assert reply.startswith(b"250-"), reply
    return reply


def test_starttls_forgets_the_session(server: TlsServer) -> None:
    w = Wire(server.starttls)
    assert w.reply().startswith(b"220 ")
    assert b"250-STARTTLS" in ehlo(w) or b"250 STARTTLS" in ehlo(w)
    w.send(b"MAIL FROM:<a@example.net>\r\n")
    assert w.reply().startswith(b"250 ")
    w.send(b"STARTTLS\r\n")  # inside a transaction
    assert w.reply().startswith(b"503 5.5.1 STARTTLS not allowed during a mail transaction")
    w.send(b"RSET\r\nSTARTTLS now\r\n")
    assert w.reply().startswith(b"250 ")
    assert w.reply().startswith(b"501 5.5.4")  # no arguments (RFC 3207 4)
    w.send(b"STARTTLS\r\n")
    assert w.reply() == b"220 2.0.0 Ready to start TLS\r\n"
    w.starttls(client_context(server.ca))
    w.send(b"MAIL FROM:<a@example.net>\r\n")
    assert w.reply().startswith(b"503 5.5.1 Send HELO or EHLO first")
    features = ehlo(w)
    assert b"STARTTLS" not in features  # RFC 3207 4.2
    w.send(b"STARTTLS\r\n")
    assert w.reply().startswith(b"503 5.5.1 TLS already active")
    w.send(b"QUIT\r\n")
    assert w.reply().startswith(b"221 ")
    w.close()


def test_starttls_not_offered_on_a_listener_without_tls(server: TlsServer) -> None:
    w = Wire(server.mx)
    w.reply()
    assert b"STARTTLS" not in ehlo(w)
    w.send(b"STARTTLS\r\n")
    assert w.reply().startswith(b"502 5.5.1")
    w.close()


def auth_plain(w: Wire, user: str = ALICE, password: str = "secret") -> bytes:
    token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    w.send(f"AUTH PLAIN {token}\r\n".encode())
    return w.reply()


def test_starttls_refused_after_auth(server: TlsServer) -> None:
    """AUTH in clear text (requireSSL false here), then STARTTLS: refused (a man in the
    middle could otherwise hand over a session he authenticated); mail goes on as ESMTPA."""
    w = Wire(server.starttls)
    w.reply()
    ehlo(w)
    assert auth_plain(w).startswith(b"235 ")
    w.send(b"STARTTLS\r\n")
    assert w.reply().startswith(b"503 5.5.1 STARTTLS not allowed after AUTH")
    w.send(b"MAIL FROM:<alice@kittiwake.test>\r\nRCPT TO:<alice@kittiwake.test>\r\nDATA\r\n")
    assert w.reply().startswith(b"250 ")
    assert w.reply().startswith(b"250 ")
    assert w.reply().startswith(b"354")
    w.send(b"From: alice@kittiwake.test\r\nSubject: auth-clear\r\n\r\nhi\r\n.\r\nQUIT\r\n")
    assert w.reply().startswith(b"250 2.0.0")
    w.close()
    assert " with ESMTPA id" in server.message("auth-clear").decode()


def test_swaks_starttls_and_auth_is_esmtpsa(server: TlsServer) -> None:
    swaks = need("swaks")
    result = subprocess.run(
        [swaks, "--server", f"127.0.0.1:{server.starttls}", "--tls", "--tls-verify",
         "--tls-ca-path", str(server.ca), "--auth", "PLAIN", "--auth-user", ALICE,
         "--auth-password", "secret", "--to", ALICE, "--from", ALICE,
         "--header", "Subject: swaks-esmtpsa"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    head = server.message("swaks-esmtpsa").split(b"\r\n\r\n", 1)[0].decode()
    assert " with ESMTPSA id" in head and "(using TLSv1.3 with cipher" in head, head


# ---- the injection (CVE-2011-0411, CVE-2024-34083) ---------------------------------

INJECTED = b"MAIL FROM:<injected@example.net>\r\nRCPT TO:<alice@kittiwake.test>\r\n"


def test_injection_in_the_same_packet(server: TlsServer) -> None:
    w = Wire(server.starttls)
    w.reply()
    ehlo(w)
    w.send(b"STARTTLS\r\n" + INJECTED)  # one write, one segment on loopback
    rest = w.rest()
    assert rest.startswith(b"220 2.0.0 Ready to start TLS\r\n"), rest
    assert b"554 5.7.0" in rest and b"250" not in rest, rest
    w.close()


def test_injection_in_a_later_packet_before_the_handshake(server: TlsServer) -> None:
    """Sent after the 220 in clear text: the TLS layer takes it for a ClientHello and
    fails; nothing is executed, nothing is answered in clear text."""
    w = Wire(server.starttls)
    w.reply()
    ehlo(w)
    w.send(b"STARTTLS\r\n")
    assert w.reply() == b"220 2.0.0 Ready to start TLS\r\n"
    w.send(INJECTED)
    rest = w.rest()
    assert b"250" not in rest and b"MAIL" not in rest, rest
    assert rest == b"" or rest[:1] == b"\x15", rest  # nothing, or a TLS alert record
    w.close()
    log = server.kw.log_text()
    assert "STARTTLS handshake with [127.0.0.1] failed" in log


# ---- handshakes that fail or stall hurt no one else --------------------------------


def test_stalled_and_failed_handshakes_hurt_no_one(server: TlsServer) -> None:
    stalled = socket.create_connection(("127.0.0.1", server.smtps), timeout=10)
    stalled_starttls = Wire(server.starttls)
    stalled_starttls.reply()
    ehlo(stalled_starttls)
    stalled_starttls.send(b"STARTTLS\r\n")
    assert stalled_starttls.reply().startswith(b"220 ")
    garbage = socket.create_connection(("127.0.0.1", server.smtps), timeout=10)
    garbage.sendall(b"EHLO this is not a ClientHello\r\n" * 10)
    started = time.monotonic()
    # Meanwhile others are served at once.
    for port in (server.smtps, server.starttls):
        w = Wire(port, tls=client_context(server.ca) if port == server.smtps else None)
        assert w.reply().startswith(b"220 ")
        ehlo(w)
        w.close()
    assert time.monotonic() - started < 2
    assert garbage.recv(1024)[:1] in (b"", b"\x15")  # closed (or an alert, then closed)
    # The stalled ones are closed after kittiwake.xml's tlsHandshakeTimeout (2 s here).
    for sock in (stalled, stalled_starttls.sock):
        sock.settimeout(10)
        assert sock.recv(1024) == b""
    assert 1.5 < time.monotonic() - started < 8
    for sock in (stalled, stalled_starttls.sock, garbage):
        sock.close()


def test_expiring_certificate_is_a_warning_at_start(server: TlsServer) -> None:
    log = server.kw.log_text()
    assert "WARNING listener smtps: the certificate" in log
    assert "expires in 4 days" in log
    assert "listener starttls: the certificate" not in log


# ---- certificate reload -------------------------------------------------------------


def subject_of(port: int, implicit: bool) -> str:
    ctx = client_context()
    if implicit:
        w = Wire(port, tls=ctx)
        w.reply()
    else:
        w = Wire(port)
        w.reply()
        ehlo(w)
        w.send(b"STARTTLS\r\n")
        w.reply()
        w.starttls(ctx)
    der = w.sock.getpeercert(binary_form=True)  # type: ignore[attr-defined]
    w.close()
    cert = x509.load_der_x509_certificate(der)
    return cert.subject.rfc4514_string()


def test_reload_keeps_connections(tmp_path: Path) -> None:
    srv = tls_conf(tmp_path)
    srv.kw.start()
    try:
        assert subject_of(srv.starttls, implicit=False) == "CN=starttls.kittiwake.test"
        # a session open across the reload
        w = Wire(srv.starttls)
        w.reply()
        ehlo(w)
        w.send(b"STARTTLS\r\n")
        w.reply()
        w.starttls(client_context())
        ehlo(w)
        # a new certificate, then `kittiwake cert reload`
        tls = srv.conf / "tls"
        generate_self_signed(tls / "starttls.key", tls / "starttls.crt", "renewed.kittiwake.test")
        result = srv.kw.cli("cert", "reload")
        assert result.returncode == 0, result.stderr
        deadline = time.monotonic() + 10
        while "certificate reloaded from" not in srv.kw.log_text():
            assert time.monotonic() < deadline, srv.kw.log_text()
            time.sleep(0.05)
        assert subject_of(srv.starttls, implicit=False) == "CN=renewed.kittiwake.test"
        assert "listener smtps: the certificate" in srv.kw.log_text().split("SIGHUP")[-1]
        w.send(b"NOOP\r\n")  # the open session goes on, on its old certificate
        assert w.reply().startswith(b"250 ")
        # a broken file: logged, the running certificate stays
        (tls / "starttls.crt").write_text("not a certificate")
        assert srv.kw.proc is not None
        srv.kw.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "certificate reload failed" not in srv.kw.log_text():
            assert time.monotonic() < deadline, srv.kw.log_text()
            time.sleep(0.05)
        assert subject_of(srv.starttls, implicit=False) == "CN=renewed.kittiwake.test"
        w.send(b"QUIT\r\n")
        assert w.reply().startswith(b"221 ")
        w.close()
    finally:
        assert srv.kw.stop() == 0, srv.kw.log_text()[-3000:]
    assert not (srv.kw.data / "kittiwake.pid").exists()


def test_cert_selfsigned_command(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "smtpserver.xml").write_text(
        "<smtpservers><smtpserver><bind>127.0.0.1:2525</bind>"
        f'<helloName autodetect="false">{HELLO}</helloName></smtpserver></smtpservers>'
    )
    kw = Kittiwake(conf=conf, data=tmp_path / "data", port=0, log=tmp_path / "log")
    result = kw.cli("cert", "selfsigned")
    assert result.returncode == 0, result.stderr
    key, crt = kw.data / "tls" / f"{HELLO}.key", kw.data / "tls" / f"{HELLO}.crt"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(crt.read_bytes())
    assert cert.subject.rfc4514_string() == f"CN={HELLO}"
    again = kw.cli("cert", "selfsigned")
    assert again.returncode == 1 and "exists already" in again.stderr
    assert kw.cli("cert", "selfsigned", "--force", "--days", "30").returncode == 0


def test_cert_reload_without_a_server(tmp_path: Path) -> None:
    kw = Kittiwake(conf=tmp_path, data=tmp_path / "data", port=0, log=tmp_path / "log")
    (tmp_path / "smtpserver.xml").write_text(
        "<smtpservers><smtpserver><bind>127.0.0.1:2525</bind></smtpserver></smtpservers>"
    )
    result = kw.cli("cert", "reload")
    assert result.returncode == 1 and "is kittiwake running" in result.stderr


# ---- the embedded default ---------------------------------------------------------


def test_embedded_default(tmp_path: Path) -> None:
    """MX on 2525 for local mail (no relaying, loopback included); STARTTLS on 2587 and
    implicit TLS on 2465 with a self-signed certificate made on first start, AUTH
    required (530 until AUTH exists)."""
    for port in (2525, 2587, 2465):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                pytest.skip(f"port {port} is in use (a kittiwake on its default?)")
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if k not in ("KITTIWAKE_CONF",)}
    if os.geteuid() == 0:
        env["KITTIWAKE_USER"] = "root"
    add = subprocess.run(
        [*KITTIWAKE, "user", "add", "alice@localhost", "--data", str(data)],
        input="secret\n", capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert add.returncode == 0, add.stderr
    log = tmp_path / "log"
    with log.open("ab") as logf:
        proc = subprocess.Popen(
            [*KITTIWAKE, "serve", "--data", str(data)], stdout=logf, stderr=logf, env=env
        )
    try:
        wait_for_port(2525, proc)  # the listeners are bound together, TLS ones too
        text = log.read_text()
        assert "generated a self-signed certificate" in text
        # local mail through the MX listener; relaying refused
        w = Wire(2525)
        w.reply()
        assert b"STARTTLS" not in ehlo(w)
        w.send(b"MAIL FROM:<me@example.net>\r\nRCPT TO:<someone@example.org>\r\n")
        assert w.reply().startswith(b"250 ")
        assert w.reply().startswith(b"550 5.7.1")  # nobody relays without AUTH
        w.send(b"RCPT TO:<alice@localhost>\r\nDATA\r\n")
        assert w.reply().startswith(b"250 ")
        assert w.reply().startswith(b"354")
        w.send(b"Subject: embedded\r\n\r\nhi\r\n.\r\nQUIT\r\n")
        assert w.reply().startswith(b"250 2.0.0 Ok: queued")
        w.close()
        deadline = time.monotonic() + 10
        new = data / "mail" / "localhost" / "alice" / "new"
        while not (new.is_dir() and any(new.iterdir())):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # submission: STARTTLS, then MAIL needs AUTH
        w = Wire(2587)
        w.reply()
        assert b"STARTTLS" in ehlo(w)
        w.send(b"STARTTLS\r\n")
        assert w.reply().startswith(b"220 2.0.0")
        w.starttls(client_context())
        ehlo(w)
        w.send(b"MAIL FROM:<alice@localhost>\r\n")
        assert w.reply().startswith(b"530 5.7.0")
        w.close()
        # submissions: implicit TLS, MAIL needs AUTH
        w = Wire(2465, tls=client_context(next((data / "tls").glob("*.crt"))))
        assert w.reply().startswith(b"220 ")
        ehlo(w)
        w.send(b"MAIL FROM:<alice@localhost>\r\n")
        assert w.reply().startswith(b"530 5.7.0")
        w.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0, log.read_text()[-3000:]


# ---- client certificates ------------------------------------------------------------


def client_pair(directory: Path) -> tuple[Path, Path]:
    """A self-signed client certificate (clientAuth), its own CA."""
    from datetime import UTC, datetime, timedelta

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "client.kittiwake.test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / "client.key", directory / "client.crt"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def test_client_auth_requires_a_trusted_client_certificate(tmp_path: Path) -> None:
    srv = tls_conf(tmp_path)
    key, cert = client_pair(tmp_path)
    xml = srv.conf / "smtpserver.xml"
    xml.write_text(
        xml.read_text().replace(
            "<secret>james72laBalle</secret>",
            f"<secret>james72laBalle</secret><clientAuth><truststore>{cert}</truststore>"
            "</clientAuth>",
        )
    )
    srv.kw.start()
    try:
        anonymous = client_context(srv.ca)
        try:  # TLS 1.3: the refusal comes with the first read, as an alert or a bare close
            w = Wire(srv.smtps, tls=anonymous)
            assert w.reply() == b""
        except (ssl.SSLError, ConnectionResetError):
            pass
        with_cert = client_context(srv.ca)
        with_cert.load_cert_chain(cert, key)
        w = Wire(srv.smtps, tls=with_cert)
        assert w.reply().startswith(b"220 ")
        ehlo(w)
        w.close()
        assert subject_of(srv.starttls, implicit=False)  # the other listeners ask for none
    finally:
        assert srv.kw.stop() == 0, srv.kw.log_text()[-3000:]


# ---- the repository's conf/ ---------------------------------------------------------


def test_sample_conf_serves(tmp_path: Path) -> None:
    """conf/ as shipped (ports 25/465/587, certificates in /etc/kittiwake/tls) moved to
    free loopback ports and a fresh certificate: MX, submissions, submission all work."""
    conf = tmp_path / "conf"
    shutil.copytree(Path(__file__).resolve().parents[2] / "conf", conf)
    write_pem_pair(conf / "tls", "sample")
    ports = {25: free_port(), 465: free_port(), 587: free_port()}
    xml = (conf / "smtpserver.xml").read_text()
    for real, port in ports.items():
        xml = xml.replace(f"<bind>0.0.0.0:{real}</bind>", f"<bind>127.0.0.1:{port}</bind>")
    xml = xml.replace("/etc/kittiwake/tls/privkey.pem", str(conf / "tls" / "sample.key"))
    xml = xml.replace("/etc/kittiwake/tls/fullchain.pem", str(conf / "tls" / "sample.crt"))
    (conf / "smtpserver.xml").write_text(xml)
    kw = Kittiwake(conf=conf, data=tmp_path / "data", port=ports[25], log=tmp_path / "log")
    kw.add_user("you@example.com")
    if os.geteuid() != 0:
        kw.env = {"KITTIWAKE_USER": ""}
    kw.start()
    try:
        w = Wire(ports[25])
        w.reply()
        assert b"STARTTLS" in ehlo(w)
        w.send(b"MAIL FROM:<them@example.net>\r\nRCPT TO:<you@example.com>\r\nDATA\r\n")
        assert [w.reply()[:3] for _ in range(3)] == [b"250", b"250", b"354"]
        w.send(b"Subject: to the MX\r\n\r\nhi\r\n.\r\n")
        assert w.reply().startswith(b"250 2.0.0")
        w.close()
        kw.wait_messages("you@example.com", 1)
        w = Wire(ports[465], tls=client_context())
        w.reply()
        assert b"AUTH PLAIN LOGIN" in ehlo(w)
        w.send(b"MAIL FROM:<you@example.com>\r\n")
        assert w.reply().startswith(b"530 5.7.0")
        assert auth_plain(w, "you@example.com").startswith(b"235 ")
        w.close()
        w = Wire(ports[587])
        w.reply()
        assert b"AUTH" not in ehlo(w)  # requireSSL: not before STARTTLS
        w.send(b"STARTTLS\r\n")
        w.reply()
        w.starttls(client_context())
        assert b"AUTH PLAIN LOGIN" in ehlo(w)
        w.close()
    finally:
        assert kw.stop() == 0, kw.log_text()[-3000:]


# ---- privileges --------------------------------------------------------------------

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


@root_only
def test_a_user_that_does_not_exist_stops_the_start(tmp_path: Path) -> None:
    srv = tls_conf(tmp_path)
    result = subprocess.run(
        [*KITTIWAKE, "serve", "--conf", str(srv.conf), "--data", str(srv.kw.data),
         "--user", "no-such-user-kw"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert "'no-such-user-kw'" in result.stderr and "does not exist" in result.stderr
    assert "useradd --system" in result.stderr


def privileged_port() -> int:
    for port in range(600, 1000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free port below 1024")


@root_only
def test_root_binds_then_drops_to_nobody() -> None:
    nobody = pwd.getpwnam("nobody")
    # DATA must be reachable by nobody: not under root's private pytest directory.
    base = Path(tempfile.mkdtemp(prefix="kittiwake-drop-", dir="/tmp"))
    os.chmod(base, 0o755)
    try:
        srv = tls_conf(base, extra_kittiwake="<user>nobody</user>")
        port = privileged_port()
        xml = srv.conf / "smtpserver.xml"
        xml.write_text(xml.read_text().replace(f"127.0.0.1:{srv.mx}<", f"127.0.0.1:{port}<"))
        srv.kw.port = port
        srv.kw.add_user(ALICE)  # as root: kittiwake.db created by root, handed over at start
        srv.kw.env = {"KITTIWAKE_USER": ""}  # kittiwake.xml's <user> decides
        srv.kw.start()
        try:
            assert srv.kw.proc is not None
            status = Path(f"/proc/{srv.kw.proc.pid}/status").read_text()
            uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
            assert uid_line.split()[1:] == [str(nobody.pw_uid)] * 4, uid_line
            db = srv.kw.data / "kittiwake.db"
            assert db.stat().st_uid == nobody.pw_uid
            assert stat.S_IMODE(db.stat().st_mode) == 0o600
            w = Wire(port)
            w.reply()
            ehlo(w)
            w.send(b"MAIL FROM:<me@example.net>\r\nRCPT TO:<alice@kittiwake.test>\r\nDATA\r\n")
            w.reply(), w.reply(), w.reply()
            w.send(b"Subject: dropped\r\n\r\nhi\r\n.\r\n")
            assert w.reply().startswith(b"250 2.0.0")
            w.close()
            msg = srv.kw.wait_messages(ALICE, 1)
            assert b"Subject: dropped" in msg[0]
            box = srv.kw.maildir(ALICE) / "new"
            assert box.stat().st_uid == nobody.pw_uid
            assert all(p.stat().st_uid == nobody.pw_uid for p in box.iterdir())
            assert "dropped privileges: running as nobody" in srv.kw.log_text()
            # SIGHUP still works after the drop (the key files are readable by all here)
            srv.kw.proc.send_signal(signal.SIGHUP)
        finally:
            assert srv.kw.stop() == 0, srv.kw.log_text()[-3000:]
    finally:
        shutil.rmtree(base, ignore_errors=True)


@root_only
def test_maildir_group_and_mode_for_dovecot(tmp_path: Path) -> None:
    import grp

    mail = grp.getgrnam("mail") if "mail" in {g.gr_name for g in grp.getgrall()} else None
    if mail is None:
        pytest.skip("no group named mail")
    srv = tls_conf(tmp_path, extra_kittiwake='<maildir gid="mail" mode="0640"/>')
    srv.kw.add_user(ALICE)
    srv.kw.start()
    try:
        w = Wire(srv.mx)
        w.reply()
        ehlo(w)
        w.send(b"MAIL FROM:<me@example.net>\r\nRCPT TO:<alice@kittiwake.test>\r\nDATA\r\n")
        w.reply(), w.reply(), w.reply()
        w.send(b"Subject: group\r\n\r\nhi\r\n.\r\n")
        assert w.reply().startswith(b"250 2.0.0")
        w.close()
        srv.kw.wait_messages(ALICE, 1)
        box = srv.kw.maildir(ALICE)
        [msg] = list((box / "new").iterdir())
        assert msg.stat().st_gid == mail.gr_gid
        assert stat.S_IMODE(msg.stat().st_mode) == 0o640
        for d in (box, box / "new", box / "cur", box / "tmp", box.parent, box.parent.parent):
            assert d.stat().st_gid == mail.gr_gid, d
            assert stat.S_IMODE(d.stat().st_mode) == 0o2750, (d, oct(d.stat().st_mode))
        data = srv.kw.data.stat()
        assert data.st_gid == mail.gr_gid and data.st_mode & 0o010  # the group may reach mail/
        assert stat.S_IMODE((srv.kw.data / "kittiwake.db").stat().st_mode) == 0o600
    finally:
        assert srv.kw.stop() == 0, srv.kw.log_text()[-3000:]
