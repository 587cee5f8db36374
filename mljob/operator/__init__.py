"""The operator: kopf handlers, the controller, its watches, the webhook, metrics, its command line."""
