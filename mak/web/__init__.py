"""The MAK service's HTTP layer: ``base`` (what every handler shares), the route
tables ``mak_routes`` and ``portal_routes``; ``mak.api`` builds the app from them."""
