"""Policy tooling for platform engineers: validate manifests offline, replay a cluster's own
power history through the operator's controller, and size an oversubscribed row from it."""
