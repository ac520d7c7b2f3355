#!/usr/bin/env bash
set -u
[[ -x build/l2kv_tests ]] || tar -xJf build/gpu_bundle.tar.xz -C build
mkdir -p /work; ln -sfn "$PWD" /work/main; export LD_LIBRARY_PATH=$PWD/build/lib
[[ -f tests/model/fixtures/qwen3-qknorm/model.safetensors ]] || timeout 70 python3 tests/model/make_fixtures.py --only qwen3-qknorm > $OUT/make_fixture.log 2>&1
tar -C tests/model/fixtures -cf $OUT/qwen3-qknorm.tar qwen3-qknorm; ls -la $OUT
L2KV_REQUIRE_GPU=1 timeout 140 build/l2kv_tests --gtest_filter='Dtypes/ModelOps.*:Dtypes/FusedGemv.*:Fixtures/CudaModelFixture.*:CudaModel.Qwen3*:Variants/CudaEngine.GreedyMatchesTransformers/*' > $OUT/gpu_tests_2.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests_2.log
grep -E "^\[  FAILED|rc=|PASSED|fused-layer|tests from .* ran" $OUT/gpu_tests_2.log | head -30
