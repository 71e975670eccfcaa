"""The smallest ASGI app for the 2-worker start-up stress (tests/test_instrumentation_startup_stress.py).

Plain ASGI, no framework: a worker's start-up is then mostly the interpreter,
``opentelemetry-instrument`` and stagetrace, which is what the test is about.
The stress names this module in deliberately broken stage entries, so its import
ends with stagetrace warnings from the post-import hook.
"""

import json
import logging
import os

import hooklock

# Only matters when stress_entry forces the interleaving. (No logging call here: with
# the interleaving forced, the app's own logging during its import would wait for the
# handler just as stagetrace's used to. The test is about stagetrace's.)
hooklock.inside_import()
log = logging.getLogger("stressapp")

LIMIT = 3


def score(x):
    return x


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    log.info("request")
    body = json.dumps({"pid": os.getpid(), "score": score(1)}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
