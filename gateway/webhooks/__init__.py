"""Webhooks: where a project's run events are POSTed (`urls`: which targets the operator allows; `signing`:
the signature headers; `deliverer`: the durable JetStream consumer that sends them)."""
