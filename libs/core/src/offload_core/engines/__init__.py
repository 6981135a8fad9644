"""The work itself, shared by the services that do it: outbound HTTP safety, SMTP, signed
webhooks, the echo probe, reports."""
