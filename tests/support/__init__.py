"""Plain helpers shared by the test suites; fixtures stay in conftest.py files. A test module
imports helpers from here only (tests/unit/test_test_layout.py checks it).

builders    config dicts, keys, Services on fakeredis, the app, abuse-limit settings
forms       POST /token forms (token exchange, jwt-bearer) spelled with the RFCs' URNs
jws         raw JWS signing (ES256/HS256/RS256, any bytes), key generation, token inspection
http        Flask test-client shortcuts and the RFC 6749 §5.2 error shape
logs        capturing log records and audit lines
clocks      FakeClock and Sleeper for code that waits; wait_until for real threads/processes
redis       reading what the broker wrote, snapshots, RedisDbs (database numbers), DurableRedis
domain      an exchange straight into the domain, RQ jobs drained in process
platforms   one issuer per platform (GitHub, GitLab, Kubernetes, SPIFFE, SSO) and its tokens
hostile     ObservedBroker: the broker in process with every write and log line in view
keyrecords  key records of the key ring, in memory and in the old format
fake_broker FakeBroker: the broker as resource servers and the CI client see it
servers     FaultIssuer (JWKS faults on demand) and CountingListener (proof of no egress)
stack       Stack: gunicorn + worker on 127.0.0.1, and HTTP helpers for it
dpop        DPoP proofs: honest (DpopKey) and hand-made with any header, claim or key
"""
