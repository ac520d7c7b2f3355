#!/usr/bin/env bash
# Validation of the fp8 review fixes; fp8 fused GEMV diagnostics (dtype, L2, 32-feature blocks, ncu).
set -u
source build/setup_gpu.sh
cp build/run65.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 timeout 240 build/l2kv_tests --gtest_filter='*FusedGemv*:*Fp8FusedOps*:Fp8GemmSwitches.*:CudaModel.*:GemvFp8.*' > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests.log
grep -hE "^\[  FAILED|rc=|PASSED|Failure" $OUT/gpu_tests.log | head -20
G=build/exp_gemv
for d in bf16 fp16; do
  timeout 60 $G --models llama3-8b-fp8 --rows 1 2 8 --dtype $d >> $OUT/gemv.log 2>&1; echo "v0 $d rc=$?" >> $OUT/gemv.log
  L2KV_EXP_MT=1 timeout 60 $G --models llama3-8b-fp8 --rows 1 --dtype $d >> $OUT/gemv.log 2>&1; echo "mt $d rc=$?" >> $OUT/gemv.log
done
timeout 60 $G --models llama3-8b-fp8 --rows 1 --l2 warm >> $OUT/gemv.log 2>&1; echo "v0 warm rc=$?" >> $OUT/gemv.log
timeout 60 $G --models llama3-8b --rows 1 >> $OUT/gemv.log 2>&1; echo "bf16 model rc=$?" >> $OUT/gemv.log
grep -aE "^llama3|rc=|ceiling:" $OUT/gemv.log
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null || ls /opt/nvidia/nsight-compute/*/ncu | head -1)
timeout 150 $NCU --clock-control none --kernel-name regex:gemv_kernel --launch-count 8 --section SpeedOfLight --section WarpStateStats --section Occupancy --section MemoryWorkloadAnalysis --section SchedulerStats $G --models llama3-8b-fp8 --rows 1 --reps 2 --no-graph > $OUT/ncu.log 2>&1; echo "ncu rc=$?" >> $OUT/ncu.log
tail -5 $OUT/ncu.log
B=build/l2kv
timeout 100 $B bench --model synthetic:llama3-8b-fp8 --variants split --mode steady --steady-batch 1 64 --steady-context 1024 >> $OUT/bench.log 2>&1; echo "fp8 rc=$?" >> $OUT/bench.log
timeout 100 $B bench --model synthetic:llama3-8b --variants split --mode steady --steady-batch 1 64 --steady-context 1024 >> $OUT/bench.log 2>&1; echo "bf16 rc=$?" >> $OUT/bench.log
grep -aE "^steady|rc=|rror" $OUT/bench.log | sed 's/.*\r//'
