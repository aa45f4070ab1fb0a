"""The MAK service: counting rules, licensing portal, stores, HTTP API, server and client."""
