"""asklane's web process, the contract it shares with the worker, the operator CLI and the sandbox.

    app/web/       the web process: gate, Bolt app, /ask, fair use, ASGI app, uvicorn entry point
    app/contract/  shared by the web and worker processes: job kinds, reply targets, settings,
                   messages, Redis keys and scripts, the queue, logs, events, metrics
    app/ops/       the operator CLI (``asklane``)
    app/sandbox/   the sandbox's Slack and Claude stand-ins
    workers/       the worker process (``arq workers.WorkerSettings``)

Dependencies point one way (tests/test_layout.py checks it): ``app.contract`` imports neither
side; ``app.web`` and ``workers`` import the contract and never each other; ``app.ops`` and
``app.sandbox`` sit on top, and neither process imports them.
"""
