mkdir -p /work; ln -sfn "$PWD" /work/main
tar -xJf build/gpu_bundle.tar.xz -C build; export LD_LIBRARY_PATH=$PWD/build/lib
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv > $OUT/gpu.txt
date -u >> $OUT/gpu.txt
export L2KV_GPU_SETUP=1
