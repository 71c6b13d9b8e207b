"""Locustfiles, one scenario each, every one bounded by its own ``LoadTestShape``.

Run from the repository root (so ``loadtests`` imports), e.g.::

    SOCKGATE_TOKENS=var/loadtest/tokens.json .venv/bin/python -m locust \
        -f loadtests/scenarios/storm.py --headless --processes 2 --host http://127.0.0.1:8001

or let ``python -m loadtests.loadtest`` (``make loadtest``) start a cluster, mint the tokens and
write the reports. Scenarios: ``storm`` (connection storm and thundering herd), ``broadcast``
(room fan-out latency), ``token_churn`` (short-lived tokens, refresh and ``reauth``),
``login_storm`` (the auth service's hashing limit).
"""
