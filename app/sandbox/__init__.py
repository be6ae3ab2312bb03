"""The sandbox: local Slack and Claude stand-ins, so ``make run`` works without any account."""
