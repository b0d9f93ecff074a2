#!/bin/bash
# session 8, call A: install; start the IP parity runs on CUDA (pinned away from the benchmark's core); AMX benchmarks on one idle core
export PYTHONUNBUFFERED=1; unset MUJOCO_GL
T0=$(date +%s); REPO=$(pwd)
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
lscpu | grep -E "Model name|^CPU\(s\)|Thread|Core|^Model:"
echo "bf16 flags: $(grep -o -w -E 'amx_bf16|amx_tile|avx512_bf16' /proc/cpuinfo | sort | uniq -c | tr '\n' ' ')"
python3 -m pip install -q --no-index --no-deps --no-compile .whl/*.whl 2>&1 | grep -v WARN | tail -3
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . 2>&1 | grep -v WARN | tail -3
python3 -c "import torch, sb3_diffusion, rl_zoo3.train, gymnasium as g; g.make('Hopper-v5'); print(torch.__version__, torch.cuda.get_device_name())" || exit 1
BENCH=1
SIB=$(cat /sys/devices/system/cpu/cpu$BENCH/topology/thread_siblings_list)
echo "benchmark CPU $BENCH, its core's CPUs: $SIB"
FREE=$(python3 -c "
import os
sib=set()
for part in '$SIB'.split(','):
    a,_,b=part.partition('-'); sib.update(range(int(a), int(b or a)+1))
print(' '.join(str(c) for c in range(os.cpu_count()) if c not in sib and c != 0))")
echo "run CPUs: $FREE"
mkdir -p /root/parity; cd /root/parity
set -- $FREE
for algo in qvpo sdac; do for prec in fp32 bf16; do for s in 0 1 2; do
  cpu=$1; shift
  steps=20000; [ $algo = sdac ] && steps=30000
  kw='{}'; [ $prec = bf16 ] && kw='{"policy_kwargs": {"precision": "bf16"}}'
  setsid nohup taskset -c $cpu python3 $REPO/benchmarks/diagnose_learning.py --algo $algo --env InvertedPendulum-v5 --steps $steps --seed $s --zoo --device cuda --kwargs "$kw" --out /root/parity/${algo}_ip_${prec}_s$s.csv > /root/parity/${algo}_ip_${prec}_s$s.log 2>&1 < /dev/null &
done; done; done
cd $REPO
echo "t=$(( $(date +%s) - T0 )) s: runs started"
B="taskset -c $BENCH"
$B timeout 100 python3 .dev8/probe_amx8.py > $OUT/probe_amx8.txt 2>&1; grep -v Warn $OUT/probe_amx8.txt
echo "t=$(( $(date +%s) - T0 )) s: bench_updates"
$B timeout 230 python3 benchmarks/bench_updates.py --threads 1 --envs Hopper-v5 --algos sdac qvpo --precisions fp32 bf16 --repeats 3 --action-repeats 20 --json $OUT/amx_hopper_idle.json > $OUT/amx_hopper_idle.txt 2>&1
grep -E "^\| Hopper|Mish elements|Load average" $OUT/amx_hopper_idle.txt
echo "t=$(( $(date +%s) - T0 )) s: chunk rows 8192"
SB3_DIFFUSION_CHUNK_ROWS=8192 $B timeout 100 python3 benchmarks/bench_updates.py --threads 1 --envs Hopper-v5 --algos sdac qvpo --precisions bf16 --repeats 3 --skip-actions > $OUT/amx_hopper_chunk8192.txt 2>&1
grep -E "^\| Hopper" $OUT/amx_hopper_chunk8192.txt
left=$(( 545 - ( $(date +%s) - T0 ) ))
echo "t=$(( $(date +%s) - T0 )) s: profile, $left s left"
[ $left -gt 30 ] && $B timeout $left python3 benchmarks/profile_update.py --algos sdac qvpo --env Hopper-v5 --precisions bf16 --rows 16 > $OUT/amx_profile_idle.txt 2>&1
uptime
cd /root/parity && for f in *.log; do echo "$f: $(tail -1 $f | cut -c1-60)"; done
tar czf $OUT/parity_partial.tar.gz *.csv *.log *.json 2>/dev/null
