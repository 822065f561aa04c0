"""PMG-mini: small models trained offline on the simulated sticker world, so the CPU demo shows the method."""
