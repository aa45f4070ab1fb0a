"""The runtime layer: how every kmsemu server is assembled, started and stopped.

One owner for what used to live in the CLI, the lab, the pytest plugin and the
simulator, each with its own copy:

- ``loop``        the event loop choice (uvloop where installed);
- ``signals``     serve until SIGTERM/SIGINT, with the handlers in place *before*
                  readiness is announced (a signal right after ``ready`` is handled);
- ``host``        opening a KMS host with its state, binding and DNS publishing;
- ``mak``         the MAK service and licensing portal: store, service, app, HTTP server;
- ``background``  a real server on a background thread (tests, the simulator).

Layers above it (``kmsemu.cli``, ``kmsemu.lab``, ``kmsemu.sim``, ``kmsemu.testing``)
call it; nothing here imports them (``tests/test_layers.py``).
"""
