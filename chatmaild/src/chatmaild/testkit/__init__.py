"""The test kit: helpers shared by the unit tests, the lab and online tests, ``bench/`` and
``cmdeploy bench`` (mail generators, a local Dovecot, a push server, bounded waits, configs).

Not part of the relay: chatmaild's wheel leaves this package out, as it does the tests.
Only :mod:`chatmaild.testkit.plugin` imports pytest, so runtime code (``cmdeploy.loadgen``)
may import the other modules without it.
"""
