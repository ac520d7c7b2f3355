#!/usr/bin/env bash
# What grammar masks cost the decode step, offline (build before the mask upload moved to its own
# stream): l2kv bench --structured-regex, 64 concurrent, 256 x 128 -> 128, free then constrained, 3x.
set -u
source build/setup_gpu.sh
cp build/run35.sh $OUT/run.sh
tar -xJf build/tok.tar.xz -C build
for rep in 1 2 3; do
  timeout 150 build/l2kv bench --model synthetic:llama3-8b --tokenizer build/tok_llama3 --mode e2e --variants split --concurrency 64 --num-prompts 256 --input-len 128 --output-len 128 --structured-regex '[a-z ]*' --json $OUT/structured_$rep.json > $OUT/structured_$rep.log 2>&1
  echo "rc=$?" >> $OUT/structured_$rep.log
  grep -E "^e2e|per step|rc=|rror" $OUT/structured_$rep.log
done
echo "all done at $SECONDS s"
