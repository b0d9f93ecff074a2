#!/bin/bash
# session 8, call B: let the parity runs finish (or stop at the limit), bring back their CSVs; the CUDA benchmark if time is left
export PYTHONUNBUFFERED=1
T0=$(date +%s); LIMIT=${1:-560}
cd /root/parity
while [ $(( $(date +%s) - T0 )) -lt $LIMIT ]; do
  n=$(pgrep -fc diagnose_learning.py); [ "$n" -eq 0 ] && break
  sleep 10
done
echo "t=$(( $(date +%s) - T0 )) s: $(pgrep -fc diagnose_learning.py) runs still going"
for f in *.log; do echo "$f: $(tail -1 $f | cut -c1-70)"; done
tar czf $OUT/parity.tar.gz *.csv *.log *.json 2>/dev/null
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader; uptime
