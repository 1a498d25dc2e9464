"""Cold-start exploration: spend an exploration budget so fresh items become discoverable."""
