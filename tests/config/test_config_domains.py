"""domainlist.xml and mailetcontainer.xml's <context><postmaster>."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from kw_config_helpers import FQDN, fake_resolve

from kittiwake.config import Config, ConfigError, HostLookup, load_config

LoadFiles = Callable[[dict[str, str]], Config]


def domainlist(body: str, attributes: str = "") -> dict[str, str]:
    return {"domainlist.xml": f"<domainlist{attributes}>{body}</domainlist>"}


def load_error(load_files: LoadFiles, files: dict[str, str]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_files(files)
    return info.value


def test_domainlist_as_james_reads_it(load_files: LoadFiles) -> None:
    config = load_files(
        domainlist(
            "<domainnames><domainname>Example.COM</domainname>"
            "<domainname>bücher.example</domainname><domainname></domainname>"
            "<domainname>example.com</domainname></domainnames>"
            "<autodetect>false</autodetect><autodetectIP>false</autodetectIP>"
            "<defaultDomain>example.com</defaultDomain>"
        )
    )
    domains = config.domains
    assert domains.domain_names == ("example.com", "xn--bcher-kva.example")
    assert domains.default_domain == "example.com"
    assert (domains.autodetect, domains.autodetect_ip) == (False, False)
    assert config.server.postmaster == "postmaster@example.com"
    assert config.unimplemented == ()


def test_default_domain_is_always_local(load_files: LoadFiles) -> None:
    config = load_files(
        domainlist(
            "<domainnames><domainname>example.com</domainname></domainnames>"
            "<autodetect>false</autodetect><autodetectIP>false</autodetectIP>"
        )
    )
    # No <defaultDomain>: James uses localhost and creates it in the list.
    assert config.domains.domain_names == ("example.com", "localhost")
    assert config.domains.default_domain == "localhost"


def test_autodetect_defaults_follow_james_code(load_files: LoadFiles) -> None:
    config = load_files(domainlist("<defaultDomain>example.com</defaultDomain>"))
    # Absent <autodetect> and <autodetectIP> are true in James's code.
    assert config.domains.domain_names == ("example.com", FQDN)
    assert (config.domains.autodetect, config.domains.autodetect_ip) == (True, True)
    assert config.unimplemented == (
        "domainlist.xml: <autodetectIP> (absent, and James's default is true: IP address "
        "literals are not local domains yet)",
    )


def test_autodetect_ip_true_is_named(load_files: LoadFiles) -> None:
    config = load_files(
        domainlist("<autodetect>false</autodetect><autodetectIP>TRUE</autodetectIP>")
    )
    assert config.domains.domain_names == ("localhost",)
    assert config.unimplemented == (
        "domainlist.xml: <autodetectIP> (true: IP address literals are not local domains yet)",
    )


@pytest.mark.parametrize(
    ("fqdn", "added"),
    [
        ("MX.Example.TEST", ("mx.example.test",)),
        ("localhost", ()),
        ("", ()),
        ("a1b2c3", ("a1b2c3",)),
    ],
)
def test_autodetect_adds_host_name_but_not_localhost(
    conf_dir: Callable[[dict[str, str]], object], fqdn: str, added: tuple[str, ...]
) -> None:
    directory = conf_dir(
        domainlist("<autodetect>true</autodetect><autodetectIP>false</autodetectIP>")
    )
    config = load_config(directory, host=HostLookup(lambda: fqdn, fake_resolve))  # type: ignore[arg-type]
    assert config.domains.domain_names == ("localhost", *added)


def test_autodetected_bad_host_name_is_named(conf_dir: Callable[[dict[str, str]], object]) -> None:
    directory = conf_dir(domainlist("<autodetectIP>false</autodetectIP>"))
    config = load_config(directory, host=HostLookup(lambda: "bad_name", fake_resolve))  # type: ignore[arg-type]
    assert config.domains.domain_names == ("localhost",)
    assert config.unimplemented == (
        "domainlist.xml: <autodetect> ('bad_name' is not a valid domain name; the host name "
        "is not added)",
    )


@pytest.mark.parametrize(
    ("body", "element", "reason"),
    [
        (
            "<domainnames><domainname>exa mple.com</domainname></domainnames>",
            "<domainnames>/<domainname>",
            "not a valid domain",
        ),
        (
            "<domainnames><domainname>-bad.com</domainname></domainnames>",
            "<domainnames>/<domainname>",
            "not a valid",
        ),
        (
            "<domainnames><domainname>example.com.</domainname></domainnames>",
            "<domainnames>/<domainname>",
            "ends with a dot",
        ),
        (
            "<domainnames><domainname>[192.0.2.1]</domainname></domainnames>",
            "<domainnames>/<domainname>",
            "not a valid",
        ),
        (
            "<domainnames><domainname>xn--zz.example</domainname></domainnames>",
            "<domainnames>/<domainname>",
            "not a valid",
        ),
        ("<defaultDomain>a@b</defaultDomain>", "<defaultDomain>", "not a valid domain"),
        ("<autodetect>yes</autodetect>", "<autodetect>", "not a boolean"),
        ("<autodetectIP>1</autodetectIP>", "<autodetectIP>", "not a boolean"),
        (
            "<defaultDomain>a.test</defaultDomain><defaultDomain>b.test</defaultDomain>",
            "<defaultDomain>",
            "more than once",
        ),
    ],
)
def test_domainlist_errors(load_files: LoadFiles, body: str, element: str, reason: str) -> None:
    error = load_error(load_files, domainlist(body + "<autodetectIP>false</autodetectIP>"))
    assert error.file == "domainlist.xml"
    assert error.element == element
    assert reason in error.reason


def test_domainlist_root_and_unknown_elements(load_files: LoadFiles) -> None:
    error = load_error(load_files, {"domainlist.xml": "<domains/>"})
    assert (error.file, error.element) == ("domainlist.xml", "<domains>")
    config = load_files(
        domainlist(
            "<autodetect>false</autodetect><autodetectIP>false</autodetectIP>"
            "<read><cache><enable>true</enable></cache></read>"
            "<domainnames><domain>x.test</domain></domainnames>",
            attributes=' class="org.apache.james.domainlist.jpa.JPADomainList"',
        )
    )
    assert config.unimplemented == (
        'domainlist.xml: <domainlist class="org.apache.james.domainlist.jpa.JPADomainList"> '
        "(kittiwake keeps domains in its own store)",
        "domainlist.xml: <read>",
        "domainlist.xml: <domainnames>/<domain>",
    )


def test_postmaster(load_files: LoadFiles) -> None:
    def postmaster(text: str, default: str = "example.com") -> str:
        return load_files(
            {
                "domainlist.xml": f"<domainlist><defaultDomain>{default}</defaultDomain>"
                "<autodetect>false</autodetect><autodetectIP>false</autodetectIP></domainlist>",
                "mailetcontainer.xml": f"<mailetcontainer><context>{text}</context>"
                "</mailetcontainer>",
            }
        ).server.postmaster

    assert postmaster("<postmaster>Admin@Example.COM</postmaster>") == "admin@example.com"
    assert postmaster("<postmaster>hostmaster@bücher.example</postmaster>") == (
        "hostmaster@xn--bcher-kva.example"
    )
    # No domain: James appends the default domain.
    assert postmaster("<postmaster>postmaster</postmaster>") == "postmaster@example.com"
    assert postmaster("") == "postmaster@example.com"
    assert postmaster("<postmaster></postmaster>", default="mail.test") == "postmaster@mail.test"


@pytest.mark.parametrize(
    ("context", "element", "reason"),
    [
        ("<postmaster>@example.com</postmaster>", "<context>/<postmaster>", "not an address"),
        ("<postmaster>a b@example.com</postmaster>", "<context>/<postmaster>", "not an address"),
        ("<postmaster>a@exa mple.com</postmaster>", "<context>/<postmaster>", "not an address"),
        ("<postmaster>a@exa_mple.com</postmaster>", "<context>/<postmaster>", "not an address"),
        (
            "<postmaster>a@x</postmaster><postmaster>b@x</postmaster>",
            "<context>/<postmaster>",
            "more",
        ),
        ("<postmaster><a/></postmaster>", "<context>/<postmaster>", "plain value"),
    ],
)
def test_postmaster_errors(load_files: LoadFiles, context: str, element: str, reason: str) -> None:
    error = load_error(
        load_files,
        {"mailetcontainer.xml": f"<mailetcontainer><context>{context}</context></mailetcontainer>"},
    )
    assert (error.file, error.element) == ("mailetcontainer.xml", element)
    assert reason in error.reason


def test_mailetcontainer_rest_is_named(load_files: LoadFiles) -> None:
    config = load_files(
        {
            "mailetcontainer.xml": '<mailetcontainer enableJmx="true"><context>'
            "<postmaster>pm@localhost</postmaster><lanes>2</lanes></context>"
            "<spooler><threads>20</threads></spooler>"
            '<processors><processor state="root"/></processors></mailetcontainer>'
        }
    )
    assert config.server.postmaster == "pm@localhost"
    assert config.unimplemented == (
        "mailetcontainer.xml: <mailetcontainer>/@enableJmx",
        "mailetcontainer.xml: <context>/<lanes>",
    )


def test_mailetcontainer_root(load_files: LoadFiles) -> None:
    error = load_error(load_files, {"mailetcontainer.xml": "<config/>"})
    assert (error.file, error.element, error.reason) == (
        "mailetcontainer.xml",
        "<config>",
        "the root must be <mailetcontainer>",
    )
