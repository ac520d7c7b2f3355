#!/usr/bin/env bash
# head_dim 256 (Gemma 3 1B-12B) in the split decode and warp-MMA prefill kernels: window tests
# at 64/128/256, a tiny head_dim-256 Gemma 3 against the CPU backend, the Gemma fixture again;
# synthetic gemma3-12b and gemma3-27b steady and end to end; register use of the kernels.
set -u
source build/setup_gpu.sh
cp build/run38.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 timeout 240 build/l2kv_tests --gtest_filter='CudaModel.Gemma3*:DecodeAttention.SplitSliding*:PrefillAttention.SlidingWindow*:Fixtures/CudaModelFixture.MatchesTransformers*' > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests.log
grep -hE "^\[  FAILED|rc=|PASSED|gemma3|rows_match|worst" $OUT/gpu_tests.log | head -30
for m in gemma3-12b gemma3-27b; do
  timeout 120 build/l2kv bench --model synthetic:$m --mode steady --variants split --steady-batch 1 16 64 --steady-context 1024 4096 --steady-reps 20 --json $OUT/steady_$m.json > $OUT/steady_$m.log 2>&1; echo "rc=$?" >> $OUT/steady_$m.log
  grep -E "^steady|rc=|rror|loaded" $OUT/steady_$m.log
done
timeout 100 build/l2kv bench --model synthetic:gemma3-12b --mode e2e --variants split --concurrency 1 16 64 --input-len 512 --output-len 128 --json $OUT/e2e_gemma3-12b.json > $OUT/e2e_gemma3-12b.log 2>&1; echo "rc=$?" >> $OUT/e2e_gemma3-12b.log
grep -E "tok/s|rc=|rror" $OUT/e2e_gemma3-12b.log | sed 's/.*\re2e/e2e/'
cuobjdump -res-usage build/l2kv_tests 2>/dev/null | grep -A1 "split_decode_kernel\|prefill_attention_kernel" | grep -v "^--" | paste - - | grep -o "Function [^:]*\|REG:[0-9]*\|STACK:[0-9]*\|LOCAL:[0-9]*" | paste - - - - > $OUT/res_usage.txt
cat $OUT/res_usage.txt | cut -c1-160
echo "all done at $SECONDS s"
