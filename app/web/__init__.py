"""The web process (``python -m app.web.serve``): it checks Slack's requests, acks, queues a job."""
