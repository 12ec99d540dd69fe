"""The repository's conf/: a real deployment in the shape of James's sample (issue 4)."""

from __future__ import annotations

from pathlib import Path

from kittiwake.config import Bind, HostLookup, load_config

CONF = Path(__file__).resolve().parents[2] / "conf"


def test_sample_conf_is_james_sample_deployment_on_the_real_ports(host: HostLookup) -> None:
    config = load_config(CONF, host=host)
    mx, smtps, submission = config.listeners
    assert mx.binds == (Bind("0.0.0.0", 25),)
    assert smtps.binds == (Bind("0.0.0.0", 465),)
    assert submission.binds == (Bind("0.0.0.0", 587),)
    assert not mx.auth_required and smtps.auth_required and submission.auth_required
    assert mx.tls is not None and mx.tls.starttls  # opportunistic STARTTLS for other MTAs
    assert smtps.tls is not None and smtps.tls.implicit
    assert submission.tls is not None and submission.tls.starttls
    for listener in config.listeners:
        assert listener.hello_name == "mail.example.com"
        assert listener.auth.trusted_networks == ()  # nobody relays without AUTH
        assert listener.tls is not None
        assert listener.tls.private_key == "/etc/kittiwake/tls/privkey.pem"
        assert listener.tls.certificates == "/etc/kittiwake/tls/fullchain.pem"
    assert config.domains.domain_names == ("example.com",)
    assert config.server.user == "kittiwake"
    assert config.unimplemented == ()
