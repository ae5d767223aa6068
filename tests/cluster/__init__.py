"""A small Teleport-compatible auth + proxy for tests and the demo (``python -m tests.cluster``).

Not installed with the client. It follows docs/protocol.md
wherever that covers a behaviour, because the client later meets real proxies.
"""
