"""The Socket.IO gateway replica: authenticated sockets, rooms, fan-out through Redis.

Where things are: ``app`` (the factory that wires everything), ``handshake`` (token to
accepted socket), ``broadcast`` (a message to its room), ``events`` (the other client events),
``rooms`` (names and policy), ``presence`` and ``presence_store`` (who is in a room,
cluster-wide), ``quota`` (connections per user, cluster-wide), ``liveness`` (the replica's
heartbeat in Redis and the clean-up after dead ones), ``publish`` (backend notifications),
``limits``, ``revocations``, ``expiry``, ``drain``, ``fanout`` and ``subscriber`` (Redis),
``server`` (the hardened python-socketio server), ``metrics``, ``settings``.
``python -m services.gateway`` runs one replica.
"""
