"""The built-in ``mailetcontainer.xml``: James's default flow (its distributed sample),
used when the configuration directory has none (or one without ``<processors>``).

Two differences from James's sample, both deliberate:

* ``relay`` signs with ``DKIMSign`` before ``RemoteDelivery``: mail whose From: domain
  has a key under ``DATA/dkim`` (``kittiwake dkim keygen``) leaves DKIM-signed, mail
  from any other domain leaves as it came. James's sample has no DKIM signing; its
  administrators add ``DKIMSign`` with a template and a key in their own file.
* Mailets kittiwake does not have (``MetricsMailet``, ``VacationMailet``, ``Sieve``,
  ``JMAPFiltering``) are left out rather than named at every start.

``local-delivery`` has James's ``AddDeliveredToHeader`` before ``LocalDelivery``. A
per-recipient header would mean a copy of the message per mailbox where an unchanged
message is hard-linked from the spool (about ten times cheaper); so for a mail with a
single recipient the session writes that ``Delivered-To`` into the spool file at
reception (``Envelope.delivered_to``), and the mailbox still gets a hard link. Several
local recipients get a file each. The mailet also refuses a recipient the message
already names in a ``Delivered-To`` (a forwarding loop, 5.4.6), as Postfix does.
"""

from __future__ import annotations

__all__ = ["DEFAULT_MAILETCONTAINER"]

DEFAULT_MAILETCONTAINER = """<?xml version="1.0"?>
<mailetcontainer>
  <context>
    <postmaster>postmaster</postmaster>
  </context>
  <spooler>
    <threads>20</threads>
    <errorRepository>file://var/mail/error/</errorRepository>
  </spooler>
  <processors>
    <processor state="root">
      <mailet match="All" class="PostmasterAlias"/>
      <mailet match="RelayLimit=30" class="ToRepository">
        <repositoryPath>file://var/mail/relay-limit-exceeded/</repositoryPath>
      </mailet>
      <mailet match="All" class="ToProcessor">
        <processor>transport</processor>
      </mailet>
    </processor>

    <processor state="error">
      <matcher name="not-reprocessed" match="Not">
        <matcher match="HasMailAttribute=mailRepository-reprocessing"/>
      </matcher>
      <mailet match="not-reprocessed" class="Bounce">
        <onMailetException>ignore</onMailetException>
      </mailet>
      <mailet match="All" class="ToRepository">
        <repositoryPath>file://var/mail/error/</repositoryPath>
        <onMailetException>propagate</onMailetException>
      </mailet>
    </processor>

    <processor state="transport">
      <matcher name="relay-allowed" match="Or">
        <matcher match="SMTPAuthSuccessful"/>
        <matcher match="SMTPIsAuthNetwork"/>
        <matcher match="SentByMailet"/>
      </matcher>
      <mailet match="All" class="RemoveMimeHeader">
        <name>bcc</name>
        <onMailetException>ignore</onMailetException>
      </mailet>
      <mailet match="All" class="RecipientRewriteTable">
        <errorProcessor>rrt-error</errorProcessor>
      </mailet>
      <mailet match="RecipientIsLocal" class="ToProcessor">
        <processor>local-delivery</processor>
      </mailet>
      <mailet match="HostIsLocal" class="ToProcessor">
        <processor>local-address-error</processor>
        <notice>550 - Requested action not taken: no such user here</notice>
      </mailet>
      <mailet match="relay-allowed" class="ToProcessor">
        <processor>relay</processor>
      </mailet>
      <mailet match="All" class="ToProcessor">
        <processor>relay-denied</processor>
      </mailet>
    </processor>

    <processor state="local-delivery">
      <mailet match="All" class="AddDeliveredToHeader"/>
      <mailet match="All" class="LocalDelivery"/>
    </processor>

    <processor state="relay">
      <!-- kittiwake: signs with DATA/dkim's keys for the From: domain, if it has any -->
      <mailet match="All" class="DKIMSign"/>
      <mailet match="All" class="RemoteDelivery">
        <outgoingQueue>outgoing</outgoingQueue>
        <delayTime>5000, 100000, 500000</delayTime>
        <maxRetries>3</maxRetries>
        <maxDnsProblemRetries>0</maxDnsProblemRetries>
        <deliveryThreads>10</deliveryThreads>
        <sendpartial>true</sendpartial>
        <bounceProcessor>bounces</bounceProcessor>
      </mailet>
    </processor>

    <processor state="local-address-error">
      <mailet match="All" class="Bounce">
        <attachment>none</attachment>
      </mailet>
      <mailet match="All" class="ToRepository">
        <repositoryPath>file://var/mail/address-error/</repositoryPath>
      </mailet>
    </processor>

    <processor state="relay-denied">
      <mailet match="All" class="Bounce">
        <attachment>none</attachment>
      </mailet>
      <mailet match="All" class="ToRepository">
        <repositoryPath>file://var/mail/relay-denied/</repositoryPath>
      </mailet>
    </processor>

    <processor state="bounces">
      <mailet match="All" class="DSNBounce">
        <passThrough>false</passThrough>
      </mailet>
    </processor>

    <processor state="rrt-error">
      <mailet match="All" class="ToRepository">
        <repositoryPath>file://var/mail/rrt-error/</repositoryPath>
        <passThrough>true</passThrough>
      </mailet>
      <mailet match="All" class="Bounce"/>
    </processor>
  </processors>
</mailetcontainer>
"""
