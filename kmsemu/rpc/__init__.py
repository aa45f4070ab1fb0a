"""DCE/RPC for KLP/1, pure: PDUs (``pdu``), NDR stubs (``ndr``) and the host side of a
connection as a state machine (``connection``)."""
