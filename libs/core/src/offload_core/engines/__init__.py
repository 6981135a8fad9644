"""The work itself, shared by the services that do it: outbound HTTP safety, SMTP, signed
webhooks, the echo probe. (The report engine lives in the worker: the API image never carries it.)"""
