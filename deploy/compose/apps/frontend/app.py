"""frontend: a plain service whose callers (here: the story container in its network namespace)
reach orders through the sidecar; the app itself only keeps the namespace alive."""

import signal

print("frontend: up; calls to orders go through the sidecar", flush=True)
signal.pause()
