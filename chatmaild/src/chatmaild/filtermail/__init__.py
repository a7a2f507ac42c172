"""filtermail: the encryption gate of the relay (reference-behaviour §3.2-3.4).

``gate`` is the pure policy (bytes + envelope -> verdict), ``mime`` and ``openpgp`` the
parsing it needs. The before-queue proxy around it: ``proxy`` starts the process
(``filtermail <ini> outgoing|incoming``), ``direction`` holds what differs between the two
(ports, MAIL FROM and rate-limit rule, RCPT rule, gate check, log prefix),
``smtpserver`` is the aiosmtpd server with the bulk DATA reader and the per-process
memory budget, ``handler`` applies the rules, ``reinject`` hands accepted mail to
Postfix, ``mxdeliv`` takes mail from other relays over HTTP (nginx's ``/mxdeliv``)
through the same handler, ``recipients`` says which addresses are accounts (failing
closed) and ``ratelimit`` is the per-sender GCRA limit.

Log lines on stderr (journald), kept stable for the mtail counters; one per message:

- ``entering serving loop`` once at start, when the port is listening
- ``Outgoing: Filtering encrypted mail.``
- ``Outgoing: Filtering unencrypted mail.`` (then accepted as securejoin or Autocrypt
  Setup Message, or followed by ``Outgoing: Rejected unencrypted mail.``)
- ``Outgoing: Rate limited <addr>``
- ``Incoming: Filtering encrypted mail.``
- ``Incoming: Rejected unknown recipient.`` (per refused RCPT; no address logged)
- ``Incoming: Filtering unencrypted mail.`` (possibly followed by
  ``Incoming: Filtering mailer-daemon message from <addr>`` or
  ``Incoming: Rejected unencrypted mail.``)
- ``Reinject refused: <postfix reply>`` / ``Reinject failed: <error class>``
- ``Refusing mail after an internal error`` (followed by a traceback)
- ``mxdeliv: <http status> <smtp code> from <client ip> rcpts=<n>`` per request to the
  ``/mxdeliv`` HTTP listener of the incoming process (:mod:`mxdeliv`)

So ``Rejected unencrypted mail`` counts rejections in both directions and the
``Outgoing:``/``Incoming:`` prefix splits them.
"""
