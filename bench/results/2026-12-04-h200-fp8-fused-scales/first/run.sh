#!/usr/bin/env bash
# fp8 scales fused into the norms, gated_mul and RoPE: tests, then llama3-8b-fp8 w8a8 against w8a8-separate and bf16.
set -u
source build/setup_gpu.sh
cp build/run57.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 timeout 280 build/l2kv_tests --gtest_filter='*Fp8FusedOps*:Fp8FusedOpsErrors.*:Fp8GemmSwitches.*:Fp8Activations.*:Fp8Gemm.*:GemvFp8.*:CudaModel.*:*ModelOps*:GpuSamplerGpuTest.*:TokenBitmaskGpu.*:CudaEngineSingle.*' > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests.log
grep -hE "^\[  FAILED|rc=|PASSED|w8a8\] largest|fp8-tiny|Failure|Expected|actual|Which is" $OUT/gpu_tests.log | head -40
B=build/l2kv
run() { # name, extra args
  local name=$1; shift
  timeout 170 $B bench --variants split --mode both --steady-batch 1 33 64 128 --steady-context 1024 --input-len 512 --output-len 256 --concurrency 64 --json $OUT/$name.json "$@" >> $OUT/bench.log 2>&1; echo "$name rc=$?" >> $OUT/bench.log
}
run fp8-fused --model synthetic:llama3-8b-fp8
run fp8-separate --model synthetic:llama3-8b-fp8 --fp8-activations w8a8-separate
run bf16 --model synthetic:llama3-8b
grep -aE "^steady|e2e  |rc=|rror|fp8 activations" $OUT/bench.log | sed 's/.*\r//'
