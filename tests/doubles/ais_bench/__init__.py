"""Test double of Huawei's ais_bench package (only `ais_bench.infer.interface.InferSession`): no NPU here."""
