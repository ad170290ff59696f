"""nftproxy's test suite: one package, mirroring src/nftproxy; shared helpers in tests.support."""
