"""What several test modules share, imported as `tests.support.<module>`: builders of model
objects and rulesets, samples and strategies, real-kernel helpers (namespaces, nft), the
daemon runner, the end-to-end lab cluster, statistics. Not tests themselves; what benchmarks
share with tests (the real control plane, the probes) lives in nftproxy.lab instead."""
