"""The gateway: REST + SSE over Litestar, commands to JetStream, events projected into Postgres."""
