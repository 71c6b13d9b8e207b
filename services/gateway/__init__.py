"""The Socket.IO gateway replica: authenticated sockets, rooms, fan-out through Redis.

Where things are: ``app`` (the factory that wires everything), ``handshake`` (token to
accepted socket), ``broadcast`` (a message to its room), ``events`` (the other client events),
``rooms`` (names and policy), ``limits``, ``revocations``, ``expiry``, ``drain``, ``fanout`` and
``subscriber`` (Redis), ``server`` (the hardened python-socketio server), ``metrics``,
``settings``. ``python -m services.gateway`` runs one replica.
"""
