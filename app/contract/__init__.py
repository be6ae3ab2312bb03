"""What the web and worker processes share: job kinds and reply targets, settings, messages, Redis
keys and scripts, the queue, logs, events and metrics. It imports neither process's code."""
