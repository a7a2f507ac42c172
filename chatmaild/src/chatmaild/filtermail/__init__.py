"""filtermail: the encryption gate of the relay (reference-behaviour §3.2-3.4).

``gate`` is the pure policy (bytes + envelope -> verdict), ``mime`` and ``openpgp`` the
parsing it needs, ``ratelimit`` the per-sender GCRA limit and ``proxy`` the aiosmtpd
before-queue proxy that applies verdicts and re-injects into Postfix.

Log lines on stderr (journald), kept stable for the mtail counters; one per message:

- ``entering serving loop`` once at start, when the port is listening
- ``Outgoing: Filtering encrypted mail.``
- ``Outgoing: Filtering unencrypted mail.`` (then accepted as securejoin or Autocrypt
  Setup Message, or followed by ``Outgoing: Rejected unencrypted mail.``)
- ``Outgoing: Rate limited <addr>``
- ``Incoming: Filtering encrypted mail.``
- ``Incoming: Filtering unencrypted mail.`` (possibly followed by
  ``Incoming: Filtering mailer-daemon message from <addr>`` or
  ``Incoming: Rejected unencrypted mail.``)
- ``Reinject refused: <postfix reply>`` / ``Reinject failed: <error class>``
- ``Refusing mail after an internal error`` (followed by a traceback)

So ``Rejected unencrypted mail`` counts rejections in both directions and the
``Outgoing:``/``Incoming:`` prefix splits them.
"""
