#!/usr/bin/env bash
# Diagnostic: WeightStreamGemm under PDL after add_rmsnorm, per row.
set -u
source build/setup_gpu.sh
timeout 200 build/diag/ws_pdl > $OUT/diag.log 2>&1; echo "rc=$?" >> $OUT/diag.log
cat $OUT/gpu.txt; grep -v " 0 bad rows" $OUT/diag.log | cut -c1-400 | head -80; grep -c " 0 bad rows" $OUT/diag.log
