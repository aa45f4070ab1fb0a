"""KLP/1 conformance checks (klp-v1.md section 8): impacket, an independent client, tshark."""
